//! `POST /api/v1/jobs/{ns}/{name}/backfill` and `GET .../backfills`.
//!
//! A backfill asked for here goes through the same annotation as `kube-beat backfill`
//! (`kubebeat.io/backfill`), not straight into Postgres: every replica answers the API but only
//! the leader may write (its writes are fenced), there is then one way in with one set of checks
//! (the reconciler's), the request is visible on the object, and it needs the same RBAC (`patch`)
//! as a trigger. The range is checked here first against the job's stored schedule, so a bad or
//! too large range is refused with 400/422 before anything is written.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, bad_request};
use crate::{
    api::{BACKFILL_ANNOTATION, ScheduledJob},
    backfill::{BackfillError, Request, RequestValue, stored_slots},
    http::auth::Credentials,
    schedule::rfc3339,
    store::backfills,
};

/// A request body is a few short fields.
const MAX_BODY_BYTES: usize = 4096;
/// Backfills listed per job (the newest).
const LISTED: i64 = 50;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    from: String,
    to: String,
    #[serde(default)]
    max_parallel: Option<i64>,
    #[serde(default)]
    dry_run: bool,
    /// The request's id (default: a new UUID); the same id asks for the same backfill once.
    #[serde(default)]
    id: Option<String>,
}

fn refusal(e: BackfillError) -> ApiError {
    match e {
        BackfillError::Invalid(m) => bad_request(m),
        BackfillError::Refused(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
    }
}

fn no_job(namespace: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no scheduledjob {namespace}/{name}"),
    )
}

pub(super) async fn start(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    s.auth.require(&caller, "patch", &namespace, &name).await?;
    if body.len() > MAX_BODY_BYTES {
        return Err(bad_request(format!(
            "the body is {} bytes; the limit is {MAX_BODY_BYTES}",
            body.len()
        )));
    }
    let body: Body = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "the body must be {{\"from\", \"to\", \"maxParallel\", \"dryRun\"}} JSON: {e}"
        ))
    })?;
    let value = RequestValue {
        id: body.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        from: body.from,
        to: body.to,
        max_parallel: body.max_parallel,
        by: Some(
            caller
                .name()
                .chars()
                .take(crate::backfill::MAX_BY_CHARS)
                .collect(),
        ),
    };
    let request = Request::check(&value, chrono::Utc::now()).map_err(refusal)?;
    let stored = backfills::job_schedule_by_name(&s.pool, &namespace, &name)
        .await?
        .ok_or_else(|| no_job(&namespace, &name))?;
    let slots = stored_slots(&stored, request.from, request.to).map_err(refusal)?;
    if body.dry_run {
        let shown: Vec<String> = slots.iter().map(|t| rfc3339(*t)).collect();
        return Ok((
            StatusCode::OK,
            Json(json!({"namespace": namespace, "name": name, "dryRun": true,
                        "slots": shown.len(), "slotTimes": shown})),
        ));
    }
    let patch =
        json!({"metadata": {"annotations": {BACKFILL_ANNOTATION: request.annotation_value()}}});
    match Api::<ScheduledJob>::namespaced(s.client.clone(), &namespace)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(job = %format!("{namespace}/{name}"), by = caller.name(),
                           backfill = %request.id, slots = slots.len(), "backfill requested through the API");
            Ok((
                StatusCode::ACCEPTED,
                Json(
                    json!({"namespace": namespace, "name": name, "id": request.id,
                            "slots": slots.len(), "from": rfc3339(request.from),
                            "to": rfc3339(request.to), "maxParallel": request.max_parallel}),
                ),
            ))
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Err(no_job(&namespace, &name)),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("setting the {BACKFILL_ANNOTATION} annotation failed: {e}"),
        )),
    }
}

pub(super) async fn list(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    s.auth.require(&caller, "get", &namespace, &name).await?;
    let rows = backfills::for_job(&s.pool, &namespace, &name, LISTED)
        .await?
        .ok_or_else(|| no_job(&namespace, &name))?;
    Ok(Json(
        json!({"namespace": namespace, "name": name, "backfills": rows}),
    ))
}
