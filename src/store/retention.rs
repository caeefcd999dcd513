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

/// What a history prune did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Executions deleted.
    pub deleted: u64,
    /// The newest execution id when the prune began: the next [`prune_history_since`] starts
    /// after it.
    pub upto: i64,
}

/// The newest execution's id (0 with none).
async fn newest_execution(pool: &PgPool) -> Result<i64, StoreError> {
    let max: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM job_executions")
        .fetch_one(pool)
        .await?;
    Ok(max.unwrap_or(0))
}

/// The runs of the jobs `j` (a `FROM` item named `j` in the caller's statement) beyond each
/// one's `historyLimit`, newest kept. Only finished runs count and go (unfinished ones are the
/// outbox and the tracker's work); the partial index `job_executions_finished` holds only
/// finished runs, in the order kept (an index-only scan once vacuum has visited the pages).
/// A macro, so that the statements stay `&'static str`.
macro_rules! beyond_limit {
    () => {
        "CROSS JOIN LATERAL (
             SELECT e.id FROM job_executions e
             WHERE e.job_id = j.id
               AND e.state NOT IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
             ORDER BY e.scheduled_for DESC, e.id DESC
             OFFSET j.history_limit
         ) x"
    };
}

/// Keep at most `historyLimit` finished executions per job, for every job: walks the jobs in
/// id ranges of `jobs_per_tx`, one short transaction each, so no lock is held for long. The
/// full pass, at each new leadership and hourly; between them [`prune_history_since`].
pub async fn prune_history(pool: &PgPool, jobs_per_tx: i64) -> Result<Pruned, StoreError> {
    let upto = newest_execution(pool).await?;
    let max: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM scheduled_jobs")
        .fetch_one(pool)
        .await?;
    let Some(max) = max else {
        return Ok(Pruned { deleted: 0, upto });
    };
    let sql = concat!(
        "DELETE FROM job_executions d USING (SELECT x.id FROM scheduled_jobs j ",
        beyond_limit!(),
        " WHERE j.id > $1 AND j.id <= $2) old WHERE d.id = old.id"
    );
    let mut deleted = 0;
    let mut after = 0i64;
    while after < max {
        let to = after.saturating_add(jobs_per_tx.max(1));
        let done = sqlx::query(sql).bind(after).bind(to).execute(pool).await?;
        deleted += done.rows_affected();
        after = to;
    }
    Ok(Pruned { deleted, upto })
}

/// [`prune_history`] for only the jobs that ran since execution `after`: a job goes over its
/// limit when a new run finishes, so the cost follows the runs since the last pass, not the
/// number of jobs (every job each minute at 100,000 jobs was the slowest statement of the
/// sustained run). Walks the new executions in id windows of `ids_per_tx`. Left to the job's
/// next run or the next full pass (delayed, never kept for good): a run that finishes after the
/// pass that followed its start, and one whose claim committed after a pass read a higher id
/// (ids are handed out at insert, commits land in any order).
pub async fn prune_history_since(
    pool: &PgPool,
    after: i64,
    ids_per_tx: i64,
) -> Result<Pruned, StoreError> {
    let upto = newest_execution(pool).await?;
    let sql = concat!(
        "DELETE FROM job_executions d USING (SELECT x.id FROM scheduled_jobs j ",
        beyond_limit!(),
        " WHERE j.id IN (SELECT job_id FROM job_executions WHERE id > $1 AND id <= $2)) old
          WHERE d.id = old.id"
    );
    let mut deleted = 0;
    let mut from = after;
    while from < upto {
        let to = from.saturating_add(ids_per_tx.max(1)).min(upto);
        let done = sqlx::query(sql).bind(from).bind(to).execute(pool).await?;
        deleted += done.rows_affected();
        from = to;
    }
    Ok(Pruned { deleted, upto })
}
