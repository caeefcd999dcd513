//! `scheduled_jobs`: one row per ScheduledJob, keyed by its uid. The reconciler writes the
//! spec's side; the dispatcher owns `next_run_at` and the counters (see `claims`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::reconcile::validate::JobRow;

/// What the store holds for a job after an upsert.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredJob {
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_trigger: Option<String>,
}

/// Insert or update a valid job in one transaction. The dispatcher owns `next_run_at`; it is
/// replaced only when the schedule itself (or its `endTime`) changed or the job is (re)enabled —
/// resuming never replays the suspended period — and cleared while `maxRuns` is reached. Returns `None` if the job was already deleted.
/// `spec` is the ScheduledJob spec the row was built from (see [`stored_spec`]).
// Long because its SQL is: one upsert statement of every column, then one read-back.
pub async fn upsert_job(
    pool: &PgPool,
    row: &JobRow,
    spec: Option<&serde_json::Value>,
) -> Result<Option<StoredJob>, StoreError> {
    let mut tx = pool.begin().await?;
    // An object deleted behind our back (finalizer removed by hand) and recreated under the same
    // name has a new uid; retire the old row so the name is free.
    sqlx::query(
        "UPDATE scheduled_jobs SET deleted_at = now(), enabled = false, next_run_at = NULL
         WHERE namespace = $1 AND name = $2 AND uid <> $3 AND deleted_at IS NULL",
    )
    .bind(&row.namespace)
    .bind(&row.name)
    .bind(&row.uid)
    .execute(&mut *tx)
    .await?;
    let stored: Option<StoredJob> = sqlx::query_as(
        "INSERT INTO scheduled_jobs (
             uid, namespace, name, generation, task_function, task_function_id, task_name,
             job_type_id, schedule_config, schedule_summary, time_zone, start_time, anchor_time,
             args, kwargs, queue, priority, expires_seconds, enabled, suspended, valid,
             concurrency_policy, starting_deadline_seconds, jitter_seconds,
             execution_timeout_seconds, history_limit, description, next_run_at, next_slot_at,
             spec, spec_generation, message_options, health, end_time, max_runs)
         VALUES ($1, $2, $3, $4, $5, (SELECT id FROM task_functions WHERE name = $5), $6,
                 (SELECT id FROM scheduler_job_types WHERE name = $7), $8, $9, $10, $11, $12,
                 $13, $14, $15, $16, $17, NOT $18, $18, true,
                 $19, $20, $21, $22, $23, $24, $25, $26, $27, $4, $28, $29, $30, $31)
         ON CONFLICT (uid) DO UPDATE SET
             namespace = EXCLUDED.namespace, name = EXCLUDED.name,
             generation = EXCLUDED.generation, task_function = EXCLUDED.task_function,
             task_function_id = EXCLUDED.task_function_id, task_name = EXCLUDED.task_name,
             job_type_id = EXCLUDED.job_type_id, schedule_config = EXCLUDED.schedule_config,
             schedule_summary = EXCLUDED.schedule_summary, time_zone = EXCLUDED.time_zone,
             start_time = EXCLUDED.start_time, anchor_time = EXCLUDED.anchor_time,
             args = EXCLUDED.args, kwargs = EXCLUDED.kwargs, queue = EXCLUDED.queue,
             priority = EXCLUDED.priority, expires_seconds = EXCLUDED.expires_seconds,
             enabled = EXCLUDED.enabled, suspended = EXCLUDED.suspended, valid = true,
             invalid_reason = NULL, invalid_message = NULL,
             concurrency_policy = EXCLUDED.concurrency_policy,
             starting_deadline_seconds = EXCLUDED.starting_deadline_seconds,
             jitter_seconds = EXCLUDED.jitter_seconds,
             execution_timeout_seconds = EXCLUDED.execution_timeout_seconds,
             history_limit = EXCLUDED.history_limit, description = EXCLUDED.description,
             spec = EXCLUDED.spec, spec_generation = EXCLUDED.spec_generation,
             message_options = EXCLUDED.message_options, health = EXCLUDED.health,
             end_time = EXCLUDED.end_time, max_runs = EXCLUDED.max_runs,
             -- Staleness restarts when the job starts scheduling anew (re-enabled or
             -- rescheduled): the quiet time before was not the schedule's fault.
             health_baseline_at = CASE
                 WHEN EXCLUDED.enabled AND NOT (scheduled_jobs.enabled
                      AND scheduled_jobs.schedule_config = EXCLUDED.schedule_config
                      AND scheduled_jobs.time_zone = EXCLUDED.time_zone
                      AND scheduled_jobs.start_time IS NOT DISTINCT FROM EXCLUDED.start_time
                      AND scheduled_jobs.end_time IS NOT DISTINCT FROM EXCLUDED.end_time
                      AND scheduled_jobs.max_runs IS NOT DISTINCT FROM EXCLUDED.max_runs)
                     THEN now()
                 ELSE scheduled_jobs.health_baseline_at
             END,
             next_run_at = CASE
                 WHEN NOT EXCLUDED.enabled THEN NULL
                 -- maxRuns reached (and not raised): the job stays complete.
                 WHEN scheduled_jobs.scheduled_runs >= EXCLUDED.max_runs THEN NULL
                 WHEN scheduled_jobs.enabled
                      AND scheduled_jobs.schedule_config = EXCLUDED.schedule_config
                      AND scheduled_jobs.time_zone = EXCLUDED.time_zone
                      AND scheduled_jobs.start_time IS NOT DISTINCT FROM EXCLUDED.start_time
                      AND scheduled_jobs.jitter_seconds = EXCLUDED.jitter_seconds
                      AND scheduled_jobs.end_time IS NOT DISTINCT FROM EXCLUDED.end_time
                      AND scheduled_jobs.next_run_at IS NOT NULL
                     THEN scheduled_jobs.next_run_at
                 ELSE EXCLUDED.next_run_at
             END,
             next_slot_at = CASE
                 WHEN NOT EXCLUDED.enabled THEN NULL
                 -- maxRuns reached (and not raised): the job stays complete.
                 WHEN scheduled_jobs.scheduled_runs >= EXCLUDED.max_runs THEN NULL
                 WHEN scheduled_jobs.enabled
                      AND scheduled_jobs.schedule_config = EXCLUDED.schedule_config
                      AND scheduled_jobs.time_zone = EXCLUDED.time_zone
                      AND scheduled_jobs.start_time IS NOT DISTINCT FROM EXCLUDED.start_time
                      AND scheduled_jobs.jitter_seconds = EXCLUDED.jitter_seconds
                      AND scheduled_jobs.end_time IS NOT DISTINCT FROM EXCLUDED.end_time
                      AND scheduled_jobs.next_run_at IS NOT NULL
                     THEN scheduled_jobs.next_slot_at
                 ELSE EXCLUDED.next_slot_at
             END,
             updated_at = now()
         WHERE scheduled_jobs.deleted_at IS NULL
         RETURNING enabled, next_run_at, last_trigger",
    )
    .bind(&row.uid)
    .bind(&row.namespace)
    .bind(&row.name)
    .bind(row.generation)
    .bind(&row.task_function)
    .bind(&row.task_name)
    .bind(row.job_type.as_str())
    .bind(&row.schedule_config)
    .bind(&row.schedule_summary)
    .bind(&row.time_zone)
    .bind(row.start_time)
    .bind(row.anchor_time)
    .bind(&row.args)
    .bind(&row.kwargs)
    .bind(&row.queue)
    .bind(row.priority)
    .bind(row.expires_seconds)
    .bind(row.suspended)
    .bind(policy_str(row.concurrency_policy))
    .bind(row.starting_deadline_seconds)
    .bind(row.jitter_seconds)
    .bind(row.execution_timeout_seconds)
    .bind(row.history_limit)
    .bind(&row.description)
    .bind(row.next_run_at)
    .bind(row.next_slot_at)
    .bind(spec)
    .bind(sqlx::types::Json(&row.message_options))
    .bind(sqlx::types::Json(&row.health))
    .bind(row.end_time)
    .bind(row.max_runs)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(stored)
}

fn policy_str(p: crate::api::ConcurrencyPolicy) -> &'static str {
    match p {
        crate::api::ConcurrencyPolicy::Allow => "Allow",
        crate::api::ConcurrencyPolicy::Forbid => "Forbid",
        crate::api::ConcurrencyPolicy::Replace => "Replace",
    }
}

/// The spec a live job's row was built from, if it was built from `generation`.
pub async fn stored_spec(
    pool: &PgPool,
    uid: &str,
    generation: i64,
) -> Result<Option<serde_json::Value>, StoreError> {
    let spec: Option<Option<serde_json::Value>> = sqlx::query_scalar(
        "SELECT spec FROM scheduled_jobs
         WHERE uid = $1 AND spec_generation = $2 AND deleted_at IS NULL",
    )
    .bind(uid)
    .bind(generation)
    .fetch_optional(pool)
    .await?;
    Ok(spec.flatten())
}

/// Every live job's uid and the generation stored for it (the reconciler's drift check).
pub async fn stored_generations(
    pool: &PgPool,
) -> Result<std::collections::HashMap<String, i64>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT uid, generation FROM scheduled_jobs WHERE deleted_at IS NULL")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Stop an invalid job until it is fixed. Its last valid configuration stays as it was (nothing
/// half-written); only the flags change. Returns whether a row existed.
pub async fn disable_invalid_job(
    pool: &PgPool,
    uid: &str,
    generation: i64,
    reason: &str,
    message: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE scheduled_jobs SET enabled = false, valid = false, invalid_reason = $3,
                invalid_message = $4, next_run_at = NULL, next_slot_at = NULL, generation = $2,
                updated_at = now()
         WHERE uid = $1 AND deleted_at IS NULL",
    )
    .bind(uid)
    .bind(generation)
    .bind(reason)
    .bind(message)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The ScheduledJob is being deleted: stop scheduling now, keep the row and its executions
/// (soft delete) until retention prunes them.
pub async fn mark_job_deleted(pool: &PgPool, uid: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE scheduled_jobs SET deleted_at = now(), enabled = false, next_run_at = NULL,
                next_slot_at = NULL, updated_at = now()
         WHERE uid = $1 AND deleted_at IS NULL",
    )
    .bind(uid)
    .execute(pool)
    .await?;
    Ok(())
}
