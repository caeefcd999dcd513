//! Cancelling a run (`POST /api/v1/executions/{id}/revoke`): the run it names, and the request
//! recorded on it (migration 0014).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;

/// The run a revoke names: what the caller's access is checked against and what is broadcast.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RevokeTarget {
    pub id: i64,
    pub namespace: String,
    pub job_name: String,
    pub task_id: String,
    pub state: String,
}

/// The states a revoke applies to: sent to the broker and not ended. (A PENDING run has not
/// been sent: disabling its job is what stops it.)
pub const REVOCABLE: [&str; 3] = ["DISPATCHED", "STARTED", "RETRY"];

pub async fn revoke_target(pool: &PgPool, id: i64) -> Result<Option<RevokeTarget>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT e.id, j.namespace, j.name AS job_name, e.task_id, e.state
         FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id WHERE e.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Record that `by` asked at `now` to cancel run `id`, if it is still unfinished; returns its
/// state afterwards, or `None` when it ended meanwhile.
///
/// A run nobody follows (`tracked` false: no result backend; or its job's `ignoreResult`) ends
/// REVOKED at once and counts as failed on its job, as a run replaced by `concurrencyPolicy:
/// Replace` does: nothing else would ever record how it ended. A followed run keeps its state:
/// the worker's REVOKED (or its SUCCESS or FAILURE, when it ended before the revoke reached it)
/// comes through the tracker, so the record says what happened, not what was asked.
pub async fn record_revoke(
    pool: &PgPool,
    id: i64,
    by: &str,
    now: DateTime<Utc>,
    tracked: bool,
) -> Result<Option<String>, StoreError> {
    let mut tx = pool.begin().await?;
    // The job's row first, as every writer of a job and its runs locks them (the claim's
    // Replace, the tracker): a run locked before its job could close a circle with them.
    sqlx::query(
        "SELECT j.id FROM scheduled_jobs j
         WHERE j.id = (SELECT job_id FROM job_executions WHERE id = $1) FOR NO KEY UPDATE",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let state = sqlx::query_scalar(
        "WITH r AS (
             UPDATE job_executions e SET revoked_by = $2, revoke_requested_at = $3,
                    state = CASE WHEN u.untracked THEN 'REVOKED' ELSE e.state END,
                    finished_at = CASE WHEN u.untracked THEN $3 ELSE e.finished_at END,
                    error = CASE WHEN u.untracked THEN 'revoked by ' || $2 ELSE e.error END
             FROM (SELECT j.id, NOT $4 OR COALESCE((j.message_options->>'ignoreResult')::boolean,
                                                   false) AS untracked
                   FROM scheduled_jobs j) u
             WHERE e.id = $1 AND u.id = e.job_id AND e.state = ANY($5)
             RETURNING e.job_id, e.state
         ), c AS (
             UPDATE scheduled_jobs j SET failed = j.failed + 1
             FROM r WHERE j.id = r.job_id AND r.state = 'REVOKED'
         )
         SELECT state FROM r",
    )
    .bind(id)
    .bind(by)
    .bind(now)
    .bind(tracked)
    .bind(&REVOCABLE[..])
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(state)
}
