//! The management API (`/api/v1/...`, SPEC §8): read from Postgres on every replica, trigger
//! through the same annotation path as `kube-beat trigger`. Field names follow the migration
//! plan's commands (`.leaderInstance`, `.jobs[].lastRunTime`, `.executions[] | {job_id, status,
//! started_at}`). Every list is paged and bounded.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

mod backfill;
mod events;
mod jobs;
mod revoke;
mod run;
mod suspend;

pub use events::JobEvents;
pub use revoke::BrokerAccess;

use super::auth::{AuthError, Authenticator, Caller, Credentials};
use crate::{
    api::{RESUME_ANNOTATION, ScheduledJob, TRIGGER_ANNOTATION},
    arguments::{TRIGGER_ARGS_ANNOTATION, TRIGGER_KWARGS_ANNOTATION},
    leader::Role,
    store::{
        self, StoreError,
        views::{self, ExecutionFilter},
    },
};

const DEFAULT_PER_PAGE: i64 = 50;
/// Every state an execution can be in (the `status` filter of the executions list).
const EXECUTION_STATES: [&str; 12] = [
    "PENDING",
    "DISPATCHED",
    "STARTED",
    "RETRY",
    "SUCCESS",
    "FAILURE",
    "REVOKED",
    "LOST",
    "DISPATCH_FAILED",
    "SKIPPED",
    "MISSED",
    "SHADOW",
];
const MAX_PER_PAGE: i64 = 500;
const MAX_PAGE: i64 = 10_000;
/// Namespaces (those that have jobs) checked one by one for a caller without cluster-wide access.
const MAX_NAMESPACES: i64 = 200;
/// SubjectAccessReviews one request may send for those checks; decisions are cached, so the
/// next requests go on where this one stopped.
const MAX_REVIEWS_PER_REQUEST: usize = 50;

pub struct ApiState {
    pub pool: PgPool,
    pub client: Client,
    pub auth: Authenticator,
    pub identity: String,
    pub lease_name: String,
    pub lease_namespace: String,
    pub dispatch_mode: &'static str,
    pub role: watch::Receiver<Role>,
    /// The broker, for revokes (`None` without one, or in shadow mode).
    pub broker: Option<BrokerAccess>,
    /// Whether a result backend is configured: whether anything follows a run to its end.
    pub tracked: bool,
    /// Jobs' Events for run pages, listed from the apiserver and shared for a few seconds.
    pub events: JobEvents,
}

/// Where the migration plan's commands look (SPEC §8); the shorter paths the API had first stay
/// as aliases, so existing scripts and the dashboard keep working.
const PREFIXES: [&str; 2] = ["/api/v1/scheduler", "/api/v1"];

pub fn routes(state: Arc<ApiState>) -> Router {
    let mut router = Router::new().route("/api/v1/scheduler/status", get(status));
    for prefix in PREFIXES {
        router = router
            .route(&format!("{prefix}/jobs"), get(jobs::jobs))
            .route(&format!("{prefix}/jobs/{{namespace}}/{{name}}"), get(job))
            .route(
                &format!("{prefix}/jobs/{{namespace}}/{{name}}/trigger"),
                post(trigger),
            )
            .route(
                &format!("{prefix}/jobs/{{namespace}}/{{name}}/resume"),
                post(resume),
            )
            .route(
                &format!("{prefix}/jobs/{{namespace}}/{{name}}/suspend"),
                post(suspend::suspend),
            )
            .route(
                &format!("{prefix}/jobs/{{namespace}}/{{name}}/unsuspend"),
                post(suspend::unsuspend),
            )
            .route(
                &format!("{prefix}/jobs/{{namespace}}/{{name}}/backfill"),
                post(backfill::start),
            )
            .route(
                &format!("{prefix}/jobs/{{namespace}}/{{name}}/backfills"),
                get(backfill::list),
            )
            .route(&format!("{prefix}/executions"), get(executions))
            .route(&format!("{prefix}/executions/{{id}}"), get(run::execution))
            .route(
                &format!("{prefix}/executions/{{id}}/events"),
                get(events::events),
            )
            .route(
                &format!("{prefix}/executions/{{id}}/revoke"),
                post(revoke::revoke),
            )
            .route(&format!("{prefix}/activity"), get(jobs::activity))
            .route(&format!("{prefix}/job-types"), get(job_types))
            .route(&format!("{prefix}/task-functions"), get(task_functions));
    }
    // Conditional GETs (ETag / If-None-Match): the dashboard's live pages poll through them.
    router
        .with_state(state)
        .layer(axum::middleware::from_fn(super::etag::conditional_get))
}

/// An API error: a status and a clear message, as JSON (and when to come back, for 429).
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(code: StatusCode, message: String) -> ApiError {
        ApiError {
            code,
            message,
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.message}));
        match self.retry_after_secs {
            Some(secs) => (
                self.code,
                [(axum::http::header::RETRY_AFTER, secs.to_string())],
                body,
            )
                .into_response(),
            None => (self.code, body).into_response(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let (code, retry_after_secs) = match e {
            AuthError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, None),
            AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
            AuthError::TooManyFailures(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                Some(super::auth::retry_after_secs(wait)),
            ),
            AuthError::Review(_) => (StatusCode::BAD_GATEWAY, None),
        };
        ApiError {
            code,
            message: e.to_string(),
            retry_after_secs,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::warn!(error = %e, "API query failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database query failed".into(),
        )
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg.into())
}

/// `page` (from 1) and `per_page` (1..=500), validated.
fn paging(q: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let num = |k: &str, default: i64, max: i64| -> Result<i64, ApiError> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad_request(format!(
                    "{k} must be an integer from 1 to {max}, not {v:?}"
                ))),
            },
        }
    };
    Ok((
        num("page", 1, MAX_PAGE)?,
        num("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?,
    ))
}

/// The namespaces whose ScheduledJobs the caller may `verb`: `None` means all of them.
/// `wanted` narrows to one namespace (403 if it is not allowed).
async fn readable(
    s: &ApiState,
    caller: &Caller,
    wanted: Option<&str>,
) -> Result<Option<Vec<String>>, ApiError> {
    if let Some(ns) = wanted {
        s.auth.require(caller, "list", ns, "").await?;
        return Ok(Some(vec![ns.to_string()]));
    }
    if s.auth.allowed(caller, "list", "", "").await? {
        return Ok(None);
    }
    let candidates = views::job_namespaces(&s.pool, MAX_NAMESPACES).await?;
    let (allowed, unchecked) = visible_namespaces(
        candidates,
        MAX_REVIEWS_PER_REQUEST,
        |ns| s.auth.cached(caller, "list", ns, ""),
        |ns| async move { s.auth.allowed(caller, "list", &ns, "").await },
    )
    .await?;
    if unchecked > 0 {
        // Not a refusal: the next requests check them (what was checked is cached).
        tracing::debug!(
            caller = caller.name(),
            unchecked,
            "namespaces left unchecked this request (review budget spent): not shown"
        );
    }
    if allowed.is_empty() && unchecked == 0 {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not list scheduledjobs in any namespace",
                caller.name()
            ),
        ));
    }
    Ok(Some(allowed))
}

/// The `candidates` a check allows, asking `cached` first and `review` (which costs a
/// SubjectAccessReview) for at most `budget` of them; the rest are left out this time and
/// counted (the second value).
async fn visible_namespaces<E, F, Fut>(
    candidates: Vec<String>,
    budget: usize,
    cached: impl Fn(&str) -> Option<bool>,
    review: F,
) -> Result<(Vec<String>, usize), E>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
{
    let (mut allowed, mut reviews, mut unchecked) = (Vec::new(), 0usize, 0usize);
    for ns in candidates {
        let ok = match cached(&ns) {
            Some(ok) => ok,
            None if reviews < budget => {
                reviews = reviews.saturating_add(1);
                review(ns.clone()).await?
            }
            None => {
                unchecked = unchecked.saturating_add(1);
                false
            }
        };
        if ok {
            allowed.push(ns);
        }
    }
    Ok((allowed, unchecked))
}

async fn status(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    let namespaces = readable(&s, &caller, None).await?;
    let leader_instance = Api::<Lease>::namespaced(s.client.clone(), &s.lease_namespace)
        .get_opt(&s.lease_name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|spec| spec.holder_identity)
        .filter(|h| !h.is_empty());
    let counts = views::job_counts(&s.pool, namespaces.as_deref()).await?;
    let by_state = views::executions_by_state_24h(&s.pool, namespaces.as_deref()).await?;
    let epoch = views::leader_epoch(&s.pool).await?;
    let is_leader = s.role.borrow().epoch().is_some();
    let replicas: Vec<Value> = views::live_replicas(&s.pool)
        .await?
        .into_iter()
        .map(|r| {
            let is_leader = leader_instance.as_deref() == Some(r.identity.as_str());
            json!({
                "identity": r.identity,
                "version": r.version,
                "startedAt": r.started_at,
                "lastSeen": r.last_seen,
                "isLeader": is_leader,
            })
        })
        .collect();
    Ok(Json(json!({
        "leaderInstance": leader_instance,
        "instance": s.identity,
        "isLeader": is_leader,
        "replicas": replicas,
        "epoch": epoch,
        "dispatchMode": s.dispatch_mode,
        "version": env!("CARGO_PKG_VERSION"),
        "jobs": {
            "total": counts.total,
            "enabled": counts.enabled,
            "suspended": counts.suspended,
            "invalid": counts.invalid,
        },
        "executionsLast24h": by_state.into_iter().collect::<HashMap<_, _>>(),
    })))
}

async fn job(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    s.auth.require(&caller, "get", &namespace, &name).await?;
    let row = views::job(&s.pool, &namespace, &name).await?;
    let row = row.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no scheduledjob {namespace}/{name}"),
        )
    })?;
    let recent = views::recent_executions(&s.pool, row.id).await?;
    let can_patch = s.auth.allowed(&caller, "patch", &namespace, &name).await?;
    // The newest backfills, for the dashboard's progress line.
    let backfills = crate::store::backfills::for_job(&s.pool, &namespace, &name, 3)
        .await?
        .unwrap_or_default();
    // What "Run now" prefills and whether it asks for arguments (the TaskFunction has
    // parameters).
    let arguments = store::arguments::job_arguments(&s.pool, &namespace, &name)
        .await?
        .map(|a| json!({"args": a.args, "kwargs": a.kwargs, "parameters": a.parameters}));
    Ok(Json(
        json!({"job": row, "executions": recent, "arguments": arguments,
                    "backfills": backfills,
                   "canTrigger": can_patch, "canResume": can_patch, "canSuspend": can_patch,
                   "canRevoke": can_patch}),
    ))
}

async fn executions(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    let (page, per_page) = paging(&q)?;
    let job_id = match q.get("job_id") {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| bad_request(format!("job_id must be an integer, not {v:?}")))?,
        ),
    };
    let state = match q.get("status").or_else(|| q.get("state")) {
        None => None,
        Some(v) if EXECUTION_STATES.contains(&v.as_str()) => Some(v.clone()),
        Some(v) => {
            return Err(bad_request(format!(
                "unknown status {v:?} (one of {})",
                EXECUTION_STATES.join(", ")
            )));
        }
    };
    let namespaces = readable(&s, &caller, q.get("namespace").map(String::as_str)).await?;
    let filter = ExecutionFilter {
        namespaces: namespaces.as_deref(),
        job_id,
        state: state.as_deref(),
    };
    let rows = views::executions(&s.pool, filter, per_page, (page - 1) * per_page).await?;
    // Counting is bounded too: "more than 10000" is an answer.
    let total = views::count_executions(&s.pool, filter).await?;
    let cap = views::EXECUTION_COUNT_CAP;
    Ok(Json(json!({
        "executions": rows, "page": page, "per_page": per_page,
        "total": total.min(cap), "total_is_lower_bound": total > cap,
    })))
}

async fn job_types(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    readable(&s, &caller, None).await?;
    let types = views::job_types(&s.pool).await?;
    Ok(Json(json!({"job_types": types})))
}

/// TaskFunctions are cluster-scoped but say which namespaces may use them, so a caller sees
/// what concerns the namespaces it may read: one with cluster-wide list on scheduledjobs sees
/// every TaskFunction as stored; any other caller sees only those usable from one of its
/// namespaces (`allowedNamespaces` empty, i.e. every namespace, or naming one of them), with
/// `allowedNamespaces` cut down to its namespaces and `jobCount` counting only their jobs.
async fn task_functions(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    let namespaces = readable(&s, &caller, None).await?;
    let rows = views::task_functions(&s.pool, namespaces.as_deref()).await?;
    Ok(Json(json!({"task_functions": rows})))
}

/// A manual run: the same path as `kube-beat trigger` (a new value of the trigger annotation,
/// claimed exactly once per request id by the leader's reconciler and recorded as
/// `trigger=manual`). An optional JSON body `{"args": [...], "kwargs": {...}, "requestId": "..."}`
/// overrides the job's arguments (args replace, kwargs are merged over the job's); they are
/// checked against the TaskFunction's parameters first (422 with the path, nothing written).
async fn trigger(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path((namespace, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    s.auth.require(&caller, "patch", &namespace, &name).await?;
    let request = super::trigger_body::TriggerRequest::parse(&body)
        .map_err(|e| ApiError::new(e.status(), e.to_string()))?;
    if !request.overrides.is_empty() {
        let job = store::arguments::job_arguments(&s.pool, &namespace, &name)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no scheduledjob {namespace}/{name} (or it is not stored yet)"),
                )
            })?;
        super::trigger_body::check(&request.overrides, &job)
            .map_err(|e| ApiError::new(e.status(), e.to_string()))?;
    }
    let request_id = request.request_id.unwrap_or_else(fresh_value);
    let value = crate::arguments::trigger_value(&request_id, Some(caller.name()));
    let (args, kwargs) = request.overrides.annotation_values();
    let annotations = json!({
        TRIGGER_ANNOTATION: value,
        TRIGGER_ARGS_ANNOTATION: args,
        TRIGGER_KWARGS_ANNOTATION: kwargs,
    });
    annotate(&s, &caller, &namespace, &name, annotations).await?;
    tracing::info!(job = %format!("{namespace}/{name}"), by = caller.name(), request_id = %request_id,
                   overrides = !request.overrides.is_empty(), "manual run requested through the API");
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"namespace": namespace, "name": name, "trigger": value,
                    "requestId": request_id}),
        ),
    ))
}

/// Resume a job its health policy paused: the same path as `kube-beat resume` (a new value of
/// the resume annotation, acted on once by the reconciler).
async fn resume(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    s.auth.require(&caller, "patch", &namespace, &name).await?;
    let value = fresh_value();
    annotate(
        &s,
        &caller,
        &namespace,
        &name,
        json!({RESUME_ANNOTATION: value}),
    )
    .await?;
    tracing::info!(job = %format!("{namespace}/{name}"), by = caller.name(), %value, "resume requested through the API");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"namespace": namespace, "name": name, "resume": value})),
    ))
}

/// A fresh annotation value: the time, to the microsecond.
fn fresh_value() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Set `annotations` on a ScheduledJob in one merge patch as the API's own identity (the caller
/// was checked for `patch` on it); a `null` value removes an annotation.
async fn annotate(
    s: &ApiState,
    caller: &Caller,
    namespace: &str,
    name: &str,
    annotations: Value,
) -> Result<(), ApiError> {
    let patch = json!({"metadata": {"annotations": annotations}});
    match Api::<ScheduledJob>::namespaced(s.client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no scheduledjob {namespace}/{name}"),
        )),
        Err(e) => {
            tracing::warn!(job = %format!("{namespace}/{name}"), by = caller.name(), error = %e, "annotating failed");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("setting the annotation failed: {e}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ns-{i:03}")).collect()
    }

    #[tokio::test]
    async fn namespace_checks_stop_at_the_review_budget_and_use_the_cache() {
        // Even namespaces are allowed; 0..10 are already decided (cached).
        let reviewed = Mutex::new(Vec::new());
        let decide = |ns: &str| ns.trim_start_matches("ns-").parse::<usize>().unwrap_or(1) % 2 == 0;
        let (allowed, unchecked) = visible_namespaces(
            names(200),
            50,
            |ns| {
                let i: usize = ns.trim_start_matches("ns-").parse().unwrap_or(999);
                (i < 10).then(|| decide(ns))
            },
            |ns| {
                reviewed.lock().expect("lock").push(ns.clone());
                let ok = decide(&ns);
                async move { Ok::<_, ()>(ok) }
            },
        )
        .await
        .expect("no review error");
        let reviewed = reviewed.into_inner().expect("lock");
        assert_eq!(reviewed.len(), 50, "at most the budget is reviewed");
        assert_eq!(reviewed.first().map(String::as_str), Some("ns-010"));
        assert_eq!(reviewed.last().map(String::as_str), Some("ns-059"));
        assert_eq!(unchecked, 140);
        // 10 cached + 50 reviewed, half of them allowed; none past the budget.
        assert_eq!(allowed.len(), 30);
        assert!(allowed.iter().all(|ns| decide(ns)));
        assert_eq!(allowed.last().map(String::as_str), Some("ns-058"));
    }

    #[tokio::test]
    async fn a_review_error_fails_the_request() {
        let r =
            visible_namespaces(names(3), 50, |_| None, |_| async { Err::<bool, _>("down") }).await;
        assert_eq!(r, Err("down"));
    }
}
