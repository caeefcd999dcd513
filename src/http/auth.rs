//! API authentication and authorization through the apiserver: a bearer token is checked with a
//! TokenReview, every access with a SubjectAccessReview on `scheduledjobs` (kubebeat.io) — the
//! same permissions `kubectl` needs. Decisions are cached briefly so a page load costs a few
//! reviews, not one per request.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

/// How long a token's identity and an access decision are reused.
const CACHE_FOR: Duration = Duration::from_secs(10);

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
    #[error("checking access with the apiserver failed: {0}")]
    Review(#[from] kube::Error),
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

pub struct Authenticator {
    mode: AuthMode,
    client: Client,
    tokens: Mutex<HashMap<u64, (User, Instant)>>,
    decisions: Mutex<HashMap<DecisionKey, (bool, Instant)>>,
}

impl Authenticator {
    pub fn new(mode: AuthMode, client: Client) -> Authenticator {
        Authenticator {
            mode,
            client,
            tokens: Mutex::default(),
            decisions: Mutex::default(),
        }
    }

    /// The caller behind the request's bearer token.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(Caller::Anyone);
        }
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::Unauthenticated(
                    "a bearer token is required (Authorization: Bearer <token>)".into(),
                )
            })?;
        let key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            token.hash(&mut h);
            h.finish()
        };
        if let Some((user, at)) = lock(&self.tokens).get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(Caller::User(user.clone()));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let done = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = done.status.unwrap_or_default();
        let user = status
            .user
            .filter(|_| status.authenticated == Some(true))
            .and_then(|u| {
                Some(User {
                    name: u.username?,
                    uid: u.uid,
                    groups: u.groups.unwrap_or_default(),
                })
            })
            .ok_or_else(|| AuthError::Unauthenticated("the token was not accepted".into()))?;
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
        tokens.insert(key, (user.clone(), Instant::now()));
        Ok(Caller::User(user))
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
        if let Some((ok, at)) = lock(&self.decisions).get(&key)
            && at.elapsed() < CACHE_FOR
        {
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
        let mut decisions = lock(&self.decisions);
        decisions.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
        decisions.insert(key, (ok, Instant::now()));
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
