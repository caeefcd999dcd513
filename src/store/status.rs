//! What the status writer reads: each job's run counters, its last visible execution and its
//! unfinished executions, as typed rows.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{StoreError, last_run_sql, visible_run_sql};

/// One job's run status as stored, with its last visible execution (if any).
#[derive(Debug, Clone, PartialEq, Default, sqlx::FromRow)]
pub struct JobStatusRow {
    pub id: i64,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub total_runs: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub missed: i64,
    pub skipped: i64,
    /// The last visible execution's fields (all `None` when the job never ran).
    pub task_id: Option<String>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub trigger: Option<String>,
    pub state: Option<String>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// Health (see `store::health`).
    pub consecutive_failures: i64,
    pub paused_at: Option<DateTime<Utc>>,
    pub pause_reason: Option<String>,
    pub health_status: Option<String>,
    pub health_reason: Option<String>,
    pub health_message: Option<String>,
    pub health_since: Option<DateTime<Utc>>,
    /// The job's latest backfill (`status.backfill`), read by `store::backfills::latest`.
    #[sqlx(skip)]
    pub backfill: Option<super::backfills::BackfillView>,
    /// The job's end (see `claims`): `endTime`, `maxRuns`, the scheduled runs so far and the
    /// slot of the last one.
    pub end_time: Option<DateTime<Utc>>,
    pub max_runs: Option<i64>,
    pub scheduled_runs: i64,
    pub last_scheduled_run_at: Option<DateTime<Utc>>,
    /// The latest slot claimed is due (none is claimed ahead): a job is only shown complete
    /// once its last run has gone out.
    pub last_slot_due: bool,
    /// The latest manual run (`status.lastManualRun`): all `None` when the job has none.
    pub manual_request_id: Option<String>,
    pub manual_requested_by: Option<String>,
    pub manual_task_id: Option<String>,
    pub manual_state: Option<String>,
    pub manual_dispatched_at: Option<DateTime<Utc>>,
    pub manual_finished_at: Option<DateTime<Utc>>,
    /// Its error, or its result as JSON (cut to 1 KiB).
    pub manual_message: Option<String>,
}

/// An unfinished execution of a job.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ActiveRow {
    pub job_id: i64,
    pub task_id: String,
    pub scheduled_for: DateTime<Utc>,
    pub state: String,
}

/// Every live job's id, in id order (a new leader's full rebuild).
pub async fn live_job_ids(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM scheduled_jobs WHERE deleted_at IS NULL ORDER BY id")
            .fetch_all(pool)
            .await?,
    )
}

/// A live job's id by its uid (`None` once deleted).
pub async fn job_id(pool: &PgPool, uid: &str) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM scheduled_jobs WHERE uid = $1 AND deleted_at IS NULL")
            .bind(uid)
            .fetch_optional(pool)
            .await?,
    )
}

/// The run status of the live jobs among `ids` (deleted ones are left out).
pub async fn job_status_rows(pool: &PgPool, ids: &[i64]) -> Result<Vec<JobStatusRow>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT j.id, j.uid, j.namespace, j.name, j.enabled, j.next_run_at, ",
        last_run_sql!(),
        " AS last_run_at,
                j.last_success_at, j.total_runs, j.succeeded, j.failed, j.missed, j.skipped,
                e.task_id, e.scheduled_for, e.trigger, e.state, e.dispatched_at, e.finished_at,
                e.error, j.consecutive_failures, j.paused_at, j.pause_reason, j.health_status,
                j.health_reason, j.health_message, j.health_since, j.end_time, j.max_runs,
                j.scheduled_runs, j.last_scheduled_run_at,
                (j.last_run_at IS NULL OR j.last_run_at <= now()) AS last_slot_due,
                j.health_reason, j.health_message, j.health_since,
                m.request_id AS manual_request_id, m.requested_by AS manual_requested_by,
                m.task_id AS manual_task_id, m.state AS manual_state,
                m.dispatched_at AS manual_dispatched_at, m.finished_at AS manual_finished_at,
                m.message AS manual_message
         FROM scheduled_jobs j
         LEFT JOIN LATERAL (
             SELECT task_id, scheduled_for, trigger, state, dispatched_at, finished_at, error
             FROM job_executions
             WHERE job_id = j.id AND ",
        visible_run_sql!(),
        " ORDER BY scheduled_for DESC, id DESC LIMIT 1
         ) e ON true
         LEFT JOIN LATERAL (
             SELECT substr(slot_key, 8) AS request_id, requested_by, task_id, state,
                    dispatched_at, finished_at, COALESCE(error, left(result::text, 1024)) AS message
             FROM job_executions
             WHERE job_id = j.id AND trigger = 'manual'
             ORDER BY id DESC LIMIT 1
         ) m ON true
         WHERE j.id = ANY($1) AND j.deleted_at IS NULL",
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// The newest `per_job` unfinished, visible executions of each of `ids`, by job and then
/// scheduled time.
pub async fn active_executions(
    pool: &PgPool,
    ids: &[i64],
    per_job: i64,
) -> Result<Vec<ActiveRow>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT job_id, task_id, scheduled_for, state FROM (
             SELECT job_id, task_id, scheduled_for, state,
                    row_number() OVER (PARTITION BY job_id ORDER BY id DESC) AS n
             FROM job_executions
             WHERE job_id = ANY($1) AND state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
               AND ",
        visible_run_sql!(),
        "
         ) a WHERE n <= $2 ORDER BY job_id, scheduled_for",
    ))
    .bind(ids)
    .bind(per_job)
    .fetch_all(pool)
    .await?)
}
