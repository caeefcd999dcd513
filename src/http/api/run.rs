//! `GET /api/v1/executions/{id}`: one run with everything stored about it (the dashboard's run
//! page): its slot, trigger and requester, the arguments it was sent with, its times, result,
//! error and full stored traceback, and whether the caller may revoke it. A caller who may not
//! read the run's job gets 404, as for a run that does not exist.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde_json::{Value, json};

use super::{ApiError, ApiState, bad_request};
use crate::{
    http::auth::{Caller, Credentials},
    store::{
        revoke::REVOCABLE,
        views::{self, ExecutionDetail},
    },
};

/// An execution id from the path: an integer, else 400.
pub(super) fn execution_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| bad_request(format!("an execution id is an integer, not {id:?}")))
}

/// The answer for a run that does not exist, or whose job the caller may not read.
pub(super) fn no_execution(id: i64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no execution {id}"))
}

/// The caller and the run `id` (from the path), when the caller may read the run's job; 404 as
/// for a missing run otherwise.
pub(super) async fn readable_execution(
    s: &ApiState,
    creds: &Credentials,
    id: &str,
) -> Result<(Caller, ExecutionDetail), ApiError> {
    let caller = s.auth.authenticate(creds).await?;
    let id = execution_id(id)?;
    let run = views::execution(&s.pool, id)
        .await?
        .ok_or_else(|| no_execution(id))?;
    let (namespace, name) = (&run.view.namespace, &run.view.job_name);
    if !s.auth.allowed(&caller, "get", namespace, name).await? {
        return Err(no_execution(id));
    }
    Ok((caller, run))
}

pub(super) async fn execution(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (caller, run) = readable_execution(&s, &creds, &id).await?;
    let (namespace, name) = (run.view.namespace.clone(), run.view.job_name.clone());
    let can_revoke = REVOCABLE.contains(&run.view.status.as_str())
        && s.auth.allowed(&caller, "patch", &namespace, &name).await?;
    Ok(Json(json!({"execution": run, "canRevoke": can_revoke})))
}
