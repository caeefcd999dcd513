//! `POST /api/v1/jobs/{ns}/{name}/suspend` and `/unsuspend`: `spec.suspend` set by server-side
//! apply under the field manager `kube-beat-dashboard` (see [`crate::suspend`]), for a caller
//! allowed to `patch` the job. A job that a GitOps tool or another field manager also manages is
//! answered 409 with `managedBy` (who may set it back) until the request is repeated with
//! `?confirm=true`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{ApiError, ApiState, bad_request};
use crate::{
    http::auth::Credentials,
    suspend::{self, DASHBOARD_FIELD_MANAGER, SuspendError},
};

pub(super) async fn suspend(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    set(&s, creds, namespace, name, &q, true).await
}

pub(super) async fn unsuspend(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    set(&s, creds, namespace, name, &q, false).await
}

async fn set(
    s: &ApiState,
    creds: Credentials,
    namespace: String,
    name: String,
    q: &HashMap<String, String>,
    to: bool,
) -> Result<Response, ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    s.auth.require(&caller, "patch", &namespace, &name).await?;
    let confirmed = match q.get("confirm").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad_request("confirm must be true or false")),
    };
    let api = suspend::untyped(s.client.clone(), Some(&namespace));
    let job = format!("{namespace}/{name}");
    match suspend::set(&api, &name, to, DASHBOARD_FIELD_MANAGER, confirmed).await {
        Ok(done) => {
            if done.changed {
                tracing::info!(job = %job, by = caller.name(), suspend = to, overrode = ?done.overrode,
                               "spec.suspend set through the API");
            }
            Ok(Json(json!({
                "namespace": namespace, "name": name, "suspend": done.suspend,
                "changed": done.changed, "fieldManager": DASHBOARD_FIELD_MANAGER,
                "overrode": done.overrode,
            }))
            .into_response())
        }
        Err(SuspendError::NotFound(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no scheduledjob {job}"),
        )),
        Err(SuspendError::ManagedElsewhere { job, managers }) => {
            let message = SuspendError::ManagedElsewhere {
                job,
                managers: managers.clone(),
            }
            .to_string();
            Ok((
                StatusCode::CONFLICT,
                Json(json!({"error": message, "managedBy": managers})),
            )
                .into_response())
        }
        Err(SuspendError::Kube(e)) => {
            tracing::warn!(job = %job, by = caller.name(), error = %e, "setting spec.suspend failed");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("setting spec.suspend failed: {e}"),
            ))
        }
    }
}
