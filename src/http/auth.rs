//! API authentication and authorization through the apiserver: a bearer token is checked with a
//! TokenReview, every access with a SubjectAccessReview on `scheduledjobs` (kubebeat.io) — the
//! same permissions `kubectl` needs — and reading a job's Events with one on `events`
//! (events.k8s.io), as `kubectl get events` needs.
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

use moka::sync::Cache;

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

use super::limits::{FailureLimiter, Source};

/// How long a valid token's identity is reused (a revoked token keeps working this long at most).
const TOKEN_TTL: Duration = Duration::from_secs(10);
/// How long a rejected token is answered 401 without asking the apiserver again.
const REJECTED_TTL: Duration = Duration::from_secs(30);
/// How long an access decision is reused (an RBAC change applies within this).
const DECISION_TTL: Duration = Duration::from_secs(30);
/// Entries per cache at most (tokens, rejected tokens, decisions): a few MiB at worst.
const CACHE_CAP: u64 = 10_000;
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

/// What an access is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `scheduledjobs.kubebeat.io`: every API read and action.
    ScheduledJobs,
    /// `events.k8s.io` Events: a run page's Events of its job.
    Events,
}

impl Resource {
    /// (API group, resource) as a SubjectAccessReview names them.
    fn group_resource(self) -> (&'static str, &'static str) {
        match self {
            Resource::ScheduledJobs => ("kubebeat.io", "scheduledjobs"),
            Resource::Events => ("events.k8s.io", "events"),
        }
    }
}

type DecisionKey = (User, Resource, &'static str, String, String);
/// A token's SHA-256: what the caches keep instead of the token.
type TokenKey = [u8; 32];

pub struct Authenticator {
    mode: AuthMode,
    client: Client,
    /// Sent in every TokenReview; a token must be valid for one of them. Empty: the apiserver's.
    audiences: Vec<String>,
    tokens: Cache<TokenKey, User>,
    rejected: Cache<TokenKey, String>,
    decisions: Cache<DecisionKey, bool>,
    failures: Mutex<FailureLimiter>,
}

/// A cache whose entries live `ttl` after they are written, holding about `cap` of them (moka
/// evicts the least useful past the cap, and bounds memory, not an exact count).
fn ttl_cache<K, V>(ttl: Duration, cap: u64) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder().time_to_live(ttl).max_capacity(cap).build()
}

/// How long each cache keeps an entry.
#[derive(Debug, Clone, Copy)]
struct Ttls {
    token: Duration,
    rejected: Duration,
    decision: Duration,
}

const TTLS: Ttls = Ttls {
    token: TOKEN_TTL,
    rejected: REJECTED_TTL,
    decision: DECISION_TTL,
};

impl Authenticator {
    pub fn new(mode: AuthMode, client: Client, audiences: Vec<String>) -> Authenticator {
        Authenticator::with_ttls(mode, client, audiences, TTLS)
    }

    fn with_ttls(
        mode: AuthMode,
        client: Client,
        audiences: Vec<String>,
        ttls: Ttls,
    ) -> Authenticator {
        Authenticator {
            mode,
            client,
            audiences: audiences
                .iter()
                .map(|a| a.trim())
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
            tokens: ttl_cache(ttls.token, CACHE_CAP),
            rejected: ttl_cache(ttls.rejected, CACHE_CAP),
            decisions: ttl_cache(ttls.decision, CACHE_CAP),
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
        if let Some(user) = self.tokens.get(&key) {
            return Ok(Caller::User(user));
        }
        // Counted before the review, so concurrent requests cannot all pass the limit before
        // the first failure is known; given back if the token is valid.
        let permit = lock(&self.failures)
            .try_acquire(Source::of(creds.peer), now)
            .map_err(AuthError::TooManyFailures)?;
        if let Some(why) = self.rejected.get(&key) {
            return Err(AuthError::Unauthenticated(why));
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
                self.tokens.insert(key, user.clone());
                Ok(Caller::User(user))
            }
            Err(why) => {
                tracing::debug!(peer = ?creds.peer, reason = %why, "API token rejected");
                self.rejected.insert(key, why.clone());
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
        let key = (
            user.clone(),
            Resource::ScheduledJobs,
            verb,
            namespace.to_string(),
            name.to_string(),
        );
        self.decisions.get(&key)
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
        self.allowed_on(caller, Resource::ScheduledJobs, verb, namespace, name)
            .await
    }

    /// May `caller` do `verb` on `resource` in `namespace` (`""`: all namespaces), optionally on
    /// the one named `name`? One SubjectAccessReview, then the cached decision.
    pub async fn allowed_on(
        &self,
        caller: &Caller,
        resource: Resource,
        verb: &'static str,
        namespace: &str,
        name: &str,
    ) -> Result<bool, AuthError> {
        let Caller::User(user) = caller else {
            return Ok(true);
        };
        let key = (
            user.clone(),
            resource,
            verb,
            namespace.to_string(),
            name.to_string(),
        );
        let (group, plural) = resource.group_resource();
        if let Some(ok) = self.decisions.get(&key) {
            return Ok(ok);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(plural.into()),
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
        self.decisions.insert(key, ok);
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
mod tests;
