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
    http::auth::Credentials,
    store::{revoke::REVOCABLE, views},
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

pub(super) async fn execution(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    let id = execution_id(&id)?;
    let not_found = || no_execution(id);
    let run = views::execution(&s.pool, id).await?.ok_or_else(not_found)?;
    let (namespace, name) = (run.view.namespace.clone(), run.view.job_name.clone());
    if !s.auth.allowed(&caller, "get", &namespace, &name).await? {
        return Err(not_found());
    }
    let can_revoke = REVOCABLE.contains(&run.view.status.as_str())
        && s.auth.allowed(&caller, "patch", &namespace, &name).await?;
    Ok(Json(json!({"execution": run, "canRevoke": can_revoke})))
}
