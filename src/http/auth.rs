//! API authentication and authorization through the apiserver: a bearer token is checked with a
//! TokenReview, every access with a SubjectAccessReview on `scheduledjobs` (kubebeat.io) — the
//! same permissions `kubectl` needs.
//!
//! The apiserver is shared with every tenant, so what one API caller can make kube-beat ask of it
//! is bounded: valid tokens and access decisions are cached briefly, rejected tokens too (so a
//! replayed bad token costs nothing), and a source address whose tokens keep failing is answered
//! 429 without a review. Caches are keyed by a SHA-256 of the token, never the token, and all of
//! them have a hard size cap.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use sha2::{Digest, Sha256};

use super::limits::{FailureLimiter, Source, TtlCache};

/// How long a valid token's identity is reused (a revoked token keeps working this long at most).
const TOKEN_TTL: Duration = Duration::from_secs(10);
/// How long a rejected token is answered 401 without asking the apiserver again.
const REJECTED_TTL: Duration = Duration::from_secs(30);
/// How long an access decision is reused (an RBAC change applies within this).
const DECISION_TTL: Duration = Duration::from_secs(30);
/// Entries per cache at most (tokens, rejected tokens, decisions): a few MiB at worst.
const CACHE_CAP: usize = 10_000;
/// Unknown tokens that may fail from one source address per window before it gets 429.
pub const MAX_FAILURES: u32 = 10;
/// The failure-counting window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked at most; beyond, new addresses share one bucket.
const SOURCES_CAP: usize = 10_000;
/// Longer bearer tokens are refused without a review (service-account and OIDC tokens are a few
/// KiB at most).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Bearer tokens checked by the apiserver (TokenReview + SubjectAccessReview).
    Kubernetes,
    /// No checks: local use only.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "too many failed authentications from this address: retry in {} s",
        retry_after_secs(*.0)
    )]
    TooManyFailures(Duration),
    #[error("checking access with the apiserver failed: {0}")]
    Review(#[from] kube::Error),
}

/// Whole seconds to wait (at least 1), for `Retry-After`.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

/// What a request presents: its bearer token and the peer address it came from (the TCP peer:
/// forwarding headers are not trusted, since any client can set them).
#[derive(Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub peer: Option<IpAddr>,
}

/// Never the token itself, so a stray `{:?}` cannot log one.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("peer", &self.peer)
            .finish()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Credentials, Infallible> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Credentials { token, peer })
    }
}

/// Who is asking (from the TokenReview).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
}

/// The caller: anyone (auth none) or an authenticated user.
#[derive(Debug, Clone)]
pub enum Caller {
    Anyone,
    User(User),
}

impl Caller {
    pub fn name(&self) -> &str {
        match self {
            Caller::Anyone => "anonymous (--api-auth=none)",
            Caller::User(u) => &u.name,
        }
    }
}

type DecisionKey = (User, &'static str, String, String);
/// A token's SHA-256: what the caches keep instead of the token.
type TokenKey = [u8; 32];

pub struct Authenticator {
    mode: AuthMode,
    client: Client,
    /// Sent in every TokenReview; a token must be valid for one of them. Empty: the apiserver's.
    audiences: Vec<String>,
    tokens: Mutex<TtlCache<TokenKey, User>>,
    rejected: Mutex<TtlCache<TokenKey, String>>,
    decisions: Mutex<TtlCache<DecisionKey, bool>>,
    failures: Mutex<FailureLimiter>,
}

impl Authenticator {
    pub fn new(mode: AuthMode, client: Client, audiences: Vec<String>) -> Authenticator {
        Authenticator {
            mode,
            client,
            audiences: audiences
                .iter()
                .map(|a| a.trim())
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
            tokens: Mutex::new(TtlCache::new(TOKEN_TTL, CACHE_CAP)),
            rejected: Mutex::new(TtlCache::new(REJECTED_TTL, CACHE_CAP)),
            decisions: Mutex::new(TtlCache::new(DECISION_TTL, CACHE_CAP)),
            failures: Mutex::new(FailureLimiter::new(
                MAX_FAILURES,
                FAILURE_WINDOW,
                SOURCES_CAP,
            )),
        }
    }

    /// The caller behind the request's bearer token. A token not seen lately costs one
    /// TokenReview, unless its source has had too many failures lately (then 429).
    pub async fn authenticate(&self, creds: &Credentials) -> Result<Caller, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(Caller::Anyone);
        }
        let token = creds.token.as_deref().ok_or_else(|| {
            AuthError::Unauthenticated(
                "a bearer token is required (Authorization: Bearer <token>)".into(),
            )
        })?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Unauthenticated(format!(
                "the bearer token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let key: TokenKey = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(user) = lock(&self.tokens).get(&key, now) {
            return Ok(Caller::User(user.clone()));
        }
        // Counted before the review, so concurrent requests cannot all pass the limit before
        // the first failure is known; given back if the token is valid.
        let permit = lock(&self.failures)
            .try_acquire(Source::of(creds.peer), now)
            .map_err(AuthError::TooManyFailures)?;
        if let Some(why) = lock(&self.rejected).get(&key, now) {
            return Err(AuthError::Unauthenticated(why.clone()));
        }
        let done = match Api::<TokenReview>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &token_review(token, &self.audiences),
            )
            .await
        {
            Ok(done) => done,
            Err(e) => {
                // The apiserver's failure, not the caller's.
                lock(&self.failures).refund(permit);
                return Err(e.into());
            }
        };
        match accepted(done.status.unwrap_or_default(), &self.audiences) {
            Ok(user) => {
                lock(&self.failures).refund(permit);
                lock(&self.tokens).insert(key, user.clone(), Instant::now());
                Ok(Caller::User(user))
            }
            Err(why) => {
                tracing::debug!(peer = ?creds.peer, reason = %why, "API token rejected");
                lock(&self.rejected).insert(key, why.clone(), Instant::now());
                Err(AuthError::Unauthenticated(why))
            }
        }
    }

    /// The cached decision for [`Authenticator::allowed`], if there is one (no review).
    pub fn cached(
        &self,
        caller: &Caller,
        verb: &'static str,
        namespace: &str,
        name: &str,
    ) -> Option<bool> {
        let Caller::User(user) = caller else {
            return Some(true);
        };
        let key = (user.clone(), verb, namespace.to_string(), name.to_string());
        lock(&self.decisions).get(&key, Instant::now()).copied()
    }

    /// May `caller` do `verb` on scheduledjobs in `namespace` (`""`: all namespaces), optionally
    /// on the one named `name`?
    pub async fn allowed(
        &self,
        caller: &Caller,
        verb: &'static str,
        namespace: &str,
        name: &str,
    ) -> Result<bool, AuthError> {
        let Caller::User(user) = caller else {
            return Ok(true);
        };
        let key = (user.clone(), verb, namespace.to_string(), name.to_string());
        if let Some(ok) = lock(&self.decisions).get(&key, Instant::now()) {
            return Ok(*ok);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("kubebeat.io".into()),
                    resource: Some("scheduledjobs".into()),
                    verb: Some(verb.into()),
                    namespace: Some(namespace.to_string()).filter(|n| !n.is_empty()),
                    name: Some(name.to_string()).filter(|n| !n.is_empty()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let done = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let ok = done.status.is_some_and(|s| s.allowed);
        lock(&self.decisions).insert(key, ok, Instant::now());
        Ok(ok)
    }
}

impl Authenticator {
    /// Like [`Authenticator::allowed`], but a refusal is a `Forbidden` error naming who may not
    /// do what.
    pub async fn require(
        &self,
        caller: &Caller,
        verb: &'static str,
        namespace: &str,
        name: &str,
    ) -> Result<(), AuthError> {
        if self.allowed(caller, verb, namespace, name).await? {
            return Ok(());
        }
        let what = if name.is_empty() {
            format!("scheduledjobs in namespace {namespace}")
        } else {
            format!("scheduledjob {namespace}/{name}")
        };
        Err(AuthError::Forbidden(format!(
            "{} may not {verb} {what}",
            caller.name()
        )))
    }
}

/// The TokenReview for `token`, asking for `audiences` when there are any (none: the
/// apiserver's own).
fn token_review(token: &str, audiences: &[String]) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(audiences.to_vec()).filter(|a| !a.is_empty()),
        },
        ..Default::default()
    }
}

/// The user of an answered TokenReview, or why the token is refused: not authenticated, no
/// user name, or (when `audiences` were asked for) valid for none of them.
fn accepted(status: TokenReviewStatus, audiences: &[String]) -> Result<User, String> {
    if status.authenticated != Some(true) {
        return Err("the token was not accepted".into());
    }
    if !audiences.is_empty() {
        let theirs = status.audiences.unwrap_or_default();
        if !theirs.iter().any(|a| audiences.contains(a)) {
            return Err(format!(
                "the token is not valid for this API's audiences ({})",
                audiences.join(", ")
            ));
        }
    }
    status
        .user
        .and_then(|u| {
            Some(User {
                name: u.username?,
                uid: u.uid,
                groups: u.groups.unwrap_or_default(),
            })
        })
        .ok_or_else(|| "the token was not accepted".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, audiences: Option<&[&str]>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("alice".into()),
                uid: Some("u1".into()),
                groups: Some(vec!["team-a".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn auds(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_review_asks_for_the_configured_audiences_only_when_there_are_some() {
        let r = token_review("t0k", &auds(&["kube-beat", "other"]));
        assert_eq!(r.spec.token, "t0k");
        assert_eq!(r.spec.audiences, Some(auds(&["kube-beat", "other"])));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["spec"]["audiences"][0], "kube-beat");
        // None configured: no audiences field, so the apiserver uses its own.
        let r = token_review("t0k", &[]);
        assert_eq!(r.spec.audiences, None);
        let json = serde_json::to_value(&r).expect("json");
        assert!(json["spec"].get("audiences").is_none(), "{json}");
    }

    #[test]
    fn a_token_must_be_valid_for_one_of_the_audiences() {
        let wanted = auds(&["kube-beat", "backup"]);
        let user = accepted(status(true, Some(&["backup"])), &wanted).expect("intersects");
        assert_eq!(
            user,
            User {
                name: "alice".into(),
                uid: Some("u1".into()),
                groups: vec!["team-a".into()],
            }
        );
        for theirs in [
            None,
            Some(&[][..]),
            Some(&["https://kubernetes.default.svc"][..]),
        ] {
            let err = accepted(status(true, theirs), &wanted).expect_err("no intersection");
            assert!(err.contains("audiences (kube-beat, backup)"), "{err}");
        }
        // No audiences configured: whatever the apiserver returned is fine.
        assert!(accepted(status(true, None), &[]).is_ok());
        assert!(accepted(status(true, Some(&["x"])), &[]).is_ok());
    }

    #[test]
    fn unauthenticated_or_nameless_tokens_are_refused() {
        assert!(accepted(status(false, Some(&["kube-beat"])), &auds(&["kube-beat"])).is_err());
        assert!(accepted(TokenReviewStatus::default(), &[]).is_err());
        let mut nameless = status(true, None);
        if let Some(u) = nameless.user.as_mut() {
            u.username = None;
        }
        assert!(accepted(nameless, &[]).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_secs(50)), 50);
        assert_eq!(retry_after_secs(Duration::from_millis(49_001)), 50);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn credentials_take_the_bearer_token_and_the_peer_address() {
        let peer: SocketAddr = "10.1.2.3:4567".parse().expect("addr");
        let (mut parts, ()) = axum::http::Request::builder()
            .header("authorization", "Bearer  abc ")
            .extension(ConnectInfo(peer))
            .body(())
            .expect("request")
            .into_parts();
        let c = Credentials::from_request_parts(&mut parts, &())
            .await
            .expect("infallible");
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(c.peer, Some(peer.ip()));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("abc") && shown.contains("10.1.2.3"),
            "{shown}"
        );
        let (mut parts, ()) = axum::http::Request::builder()
            .header("authorization", "Basic abc")
            .body(())
            .expect("request")
            .into_parts();
        let c = Credentials::from_request_parts(&mut parts, &())
            .await
            .expect("infallible");
        assert_eq!((c.token, c.peer), (None, None));
    }

    /// A kube Client whose "apiserver" answers TokenReviews: `good` is the one valid token (user
    /// alice, audience `kube-beat`); every review is counted.
    fn fake_apiserver() -> (Client, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
        let reviews = Arc::new(AtomicUsize::new(0));
        let counted = reviews.clone();
        let svc = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = req.into_body().collect_bytes().await?;
                let review: TokenReview = serde_json::from_slice(&body)?;
                let good = review.spec.token == "good";
                let answer = TokenReview {
                    spec: review.spec,
                    status: Some(if good {
                        status(true, Some(&["kube-beat"]))
                    } else {
                        TokenReviewStatus {
                            authenticated: Some(false),
                            ..Default::default()
                        }
                    }),
                    ..Default::default()
                };
                let mut json = serde_json::to_value(&answer)?;
                json["apiVersion"] = "authentication.k8s.io/v1".into();
                json["kind"] = "TokenReview".into();
                let resp = axum::http::Response::builder()
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&json)?))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(resp)
            }
        });
        (Client::new(svc, "default"), reviews)
    }

    fn creds(token: &str, peer: &str) -> Credentials {
        Credentials {
            token: Some(token.to_string()),
            peer: Some(peer.parse().expect("ip")),
        }
    }

    #[tokio::test]
    async fn rejected_tokens_are_cached_and_a_failing_source_gets_429_without_reviews() {
        use std::sync::atomic::Ordering;
        let (client, reviews) = fake_apiserver();
        let auth = Authenticator::new(AuthMode::Kubernetes, client, vec![]);
        let n = || reviews.load(Ordering::SeqCst);
        // A valid token: one review, then cached.
        for _ in 0..3 {
            let c = auth.authenticate(&creds("good", "10.0.0.1")).await;
            assert!(
                matches!(c, Ok(Caller::User(ref u)) if u.name == "alice"),
                "{c:?}"
            );
        }
        assert_eq!(n(), 1);
        // The same bad token again and again: one review (then the negative cache), but each
        // is a failure of its source.
        for i in 0..MAX_FAILURES {
            let e = auth.authenticate(&creds("bad", "10.0.0.2")).await;
            assert!(
                matches!(e, Err(AuthError::Unauthenticated(_))),
                "{i}: {e:?}"
            );
        }
        assert_eq!(n(), 2);
        // Over the limit: 429 for unknown tokens, with no review.
        for t in ["bad", "other-bad", "good-but-unseen"] {
            let e = auth.authenticate(&creds(t, "10.0.0.2")).await;
            match e {
                Err(AuthError::TooManyFailures(wait)) => assert!(
                    wait <= FAILURE_WINDOW && wait > FAILURE_WINDOW / 2,
                    "{wait:?}"
                ),
                other => panic!("{t}: {other:?}"),
            }
        }
        assert_eq!(n(), 2);
        // A token already known valid still works from there (it costs nothing); other sources
        // are not affected.
        assert!(auth.authenticate(&creds("good", "10.0.0.2")).await.is_ok());
        let e = auth.authenticate(&creds("fresh-bad", "10.0.0.3")).await;
        assert!(matches!(e, Err(AuthError::Unauthenticated(_))), "{e:?}");
        assert_eq!(n(), 3);
        // The caches hold hashes, never the token.
        let rejected = lock(&auth.rejected);
        let key: TokenKey = Sha256::digest(b"bad").into();
        assert!(rejected.get(&key, Instant::now()).is_some());
    }

    #[tokio::test]
    async fn distinct_garbage_tokens_cost_at_most_the_limit_in_reviews() {
        use std::sync::atomic::Ordering;
        let (client, reviews) = fake_apiserver();
        let auth = Authenticator::new(AuthMode::Kubernetes, client, vec![]);
        let mut codes = Vec::new();
        for i in 0..100 {
            match auth
                .authenticate(&creds(&format!("junk-{i}"), "192.0.2.7"))
                .await
            {
                Err(AuthError::Unauthenticated(_)) => codes.push(401),
                Err(AuthError::TooManyFailures(_)) => codes.push(429),
                other => panic!("{other:?}"),
            }
        }
        let limit = MAX_FAILURES as usize;
        assert_eq!(reviews.load(Ordering::SeqCst), limit);
        assert!(codes[..limit].iter().all(|c| *c == 401));
        assert!(codes[limit..].iter().all(|c| *c == 429));
    }

    #[tokio::test]
    async fn a_valid_token_for_another_audience_is_refused_and_counted() {
        use std::sync::atomic::Ordering;
        let (client, reviews) = fake_apiserver();
        // The fake says the token is for `kube-beat`; this installation wants `backup`.
        let auth = Authenticator::new(AuthMode::Kubernetes, client, vec![" backup ".into()]);
        let e = auth.authenticate(&creds("good", "10.0.0.1")).await;
        assert!(
            matches!(e, Err(AuthError::Unauthenticated(ref m)) if m.contains("audiences (backup)")),
            "{e:?}"
        );
        let e = auth.authenticate(&creds("good", "10.0.0.1")).await;
        assert!(matches!(e, Err(AuthError::Unauthenticated(_))), "{e:?}");
        assert_eq!(reviews.load(Ordering::SeqCst), 1, "the refusal is cached");
        let (client, _) = fake_apiserver();
        let auth = Authenticator::new(AuthMode::Kubernetes, client, vec!["kube-beat".into()]);
        assert!(auth.authenticate(&creds("good", "10.0.0.1")).await.is_ok());
    }
}
