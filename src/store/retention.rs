//! Retention: deleted jobs past their retention, and history beyond each job's `historyLimit`
//! (run by the leader's housekeeping).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;

/// Remove jobs deleted before `before` together with their executions, a batch at a time so no
/// lock is held for long. Returns how many jobs were removed.
pub async fn prune_deleted_jobs(
    pool: &PgPool,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM scheduled_jobs WHERE id IN (
                 SELECT id FROM scheduled_jobs WHERE deleted_at < $1 ORDER BY deleted_at LIMIT $2)",
        )
        .bind(before)
        .bind(batch)
        .execute(pool)
        .await?;
        total += done.rows_affected();
        if done.rows_affected() < u64::try_from(batch).unwrap_or(0) {
            return Ok(total);
        }
    }
}

/// Keep at most `historyLimit` finished executions per job (unfinished ones are never pruned:
/// they are the outbox and the tracker's work). Walks the jobs in id ranges of `jobs_per_tx`,
/// one short transaction each, so no lock is held for long. Returns executions deleted.
pub async fn prune_history(pool: &PgPool, jobs_per_tx: i64) -> Result<u64, StoreError> {
    let max: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM scheduled_jobs")
        .fetch_one(pool)
        .await?;
    let Some(max) = max else { return Ok(0) };
    let mut total = 0;
    let mut after = 0i64;
    while after < max {
        let upto = after.saturating_add(jobs_per_tx.max(1));
        let done = sqlx::query(
            "DELETE FROM job_executions d USING (
                 SELECT x.id FROM scheduled_jobs j CROSS JOIN LATERAL (
                     SELECT e.id FROM job_executions e
                     WHERE e.job_id = j.id
                       AND e.state NOT IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
                     ORDER BY e.scheduled_for DESC, e.id DESC
                     OFFSET j.history_limit
                 ) x
                 WHERE j.id > $1 AND j.id <= $2
             ) old
             WHERE d.id = old.id",
        )
        .bind(after)
        .bind(upto)
        .execute(pool)
        .await?;
        total += done.rows_affected();
        after = upto;
    }
    Ok(total)
}
