//! `POST /api/v1/executions/{id}/revoke[?terminate=true]`: cancel a run. Celery's
//! remote-control `revoke` goes to every live worker over the broker (as `celery -A app control
//! revoke <id> [--terminate]`), and the request is recorded on the run: who asked and when. The
//! caller needs `patch` on the run's ScheduledJob; one who may not even read it gets 404, as if
//! the run did not exist.
//!
//! What the run then shows comes from the worker, through the result backend: REVOKED when the
//! revoke reached it in time, SUCCESS or FAILURE when the run ended first. A run nothing follows
//! (no result backend, or `ignoreResult`) is recorded REVOKED at once.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use chrono::Utc;
use serde_json::{Value, json};

use super::{ApiError, ApiState, bad_request};
use crate::{
    celery::Publisher,
    http::auth::Credentials,
    redis_target::TransportOptions,
    store::revoke::{self as store, REVOCABLE},
};

/// How this replica reaches the workers for a revoke: a broker connection opened per request.
/// Revokes are rare, and any replica may serve one: a connection held open on every replica for
/// them would be mostly idle.
#[derive(Clone)]
pub struct BrokerAccess {
    pub url: String,
    pub options: TransportOptions,
    /// The installation's publish ledger (connecting names it; a revoke writes nothing there).
    pub ledger: String,
}

impl std::fmt::Debug for BrokerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAccess")
            .field("url", &crate::redact::url(&self.url))
            .finish_non_exhaustive()
    }
}

/// Connecting and broadcasting, together, at most this long.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn revoke(
    State(s): State<Arc<ApiState>>,
    creds: Credentials,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.auth.authenticate(&creds).await?;
    let id = super::run::execution_id(&id)?;
    let terminate = match q.get("terminate").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad_request("terminate must be true or false")),
    };
    let not_found = || super::run::no_execution(id);
    let run = store::revoke_target(&s.pool, id)
        .await?
        .ok_or_else(not_found)?;
    if !s
        .auth
        .allowed(&caller, "get", &run.namespace, &run.job_name)
        .await?
    {
        return Err(not_found());
    }
    s.auth
        .require(&caller, "patch", &run.namespace, &run.job_name)
        .await?;
    if !REVOCABLE.contains(&run.state.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "execution {id} is {}: only a run sent to the broker and not ended ({}) can be revoked",
                run.state,
                REVOCABLE.join(", ")
            ),
        ));
    }
    let broker = s.broker.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this kube-beat has no broker (--broker-url) to reach the workers".into(),
        )
    })?;
    // Broadcast first: a request recorded but never sent would claim a cancel that did not
    // happen.
    let sent = tokio::time::timeout(BROKER_TIMEOUT, async {
        let publisher = Publisher::connect_with(
            &broker.url,
            &broker.options,
            Duration::from_secs(60),
            &broker.ledger,
        )
        .await?;
        publisher
            .revoke(std::slice::from_ref(&run.task_id), terminate)
            .await
    })
    .await;
    let failed = match sent {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer in {BROKER_TIMEOUT:?}")),
    };
    if let Some(error) = failed {
        // The broker's errors are redacted (crate::celery); the caller gets none of it.
        tracing::warn!(execution = id, %error, "revoke broadcast failed");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the revoke could not be sent to the broker (the operator's log says why); nothing was recorded".into(),
        ));
    }
    let by = caller.name();
    let state = store::record_revoke(&s.pool, id, by, Utc::now(), s.tracked).await?;
    let Some(state) = state else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "execution {id} ended before the revoke was recorded (it was sent; it changes nothing)"
            ),
        ));
    };
    tracing::info!(execution = id, task_id = %run.task_id, job = %format!("{}/{}", run.namespace, run.job_name),
                   by, terminate, "run revoked through the API");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": id,
            "taskId": run.task_id,
            "namespace": run.namespace,
            "name": run.job_name,
            "terminate": terminate,
            "revokedBy": by,
            "state": state,
        })),
    ))
}
