//! Postgres: the scheduler's working state. Every write here is idempotent and keyed by the
//! Kubernetes object's identity, so replays and concurrent replicas converge.

pub mod migrate;
pub mod status;

use std::time::Duration;

use chrono::{DateTime, Utc};
use std::str::FromStr;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::reconcile::validate::{JobRow, ValidTaskFunction};

/// SQL, for readers of status and history: a run claimed ahead (see `dispatch::LOOKAHEAD`) is
/// not the last run before its time. `visible_run_sql!()` is true for an execution row that is
/// due (unqualified columns of `job_executions`); `last_run_sql!()` is the last run of the job
/// aliased `j` as of now.
macro_rules! visible_run_sql {
    () => {
        "(publish_after IS NULL OR publish_after <= now())"
    };
}
macro_rules! last_run_sql {
    () => {
        "CASE WHEN j.last_run_at > now() THEN
              (SELECT max(x.scheduled_for) FROM job_executions x
               WHERE x.job_id = j.id AND x.scheduled_for <= now())
              ELSE j.last_run_at END"
    };
}
pub(crate) use {last_run_sql, visible_run_sql};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connecting to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl {
        url: crate::redact::RedactedUrl,
        reason: String,
    },
    #[error("Postgres query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A connection pool with timeouts suited to an operator: fail fast, retry from the caller.
///
/// `idle_in_transaction_session_timeout`: a leader paused (SIGSTOP, VM freeze) in the middle of a
/// claim transaction would otherwise hold its lock on the fencing row until it wakes up, and the
/// next leader's epoch bump would wait for it. Postgres ends such a session after 5 s (claims take
/// milliseconds), which also rolls back whatever the paused leader had not committed.
///
/// `plan_cache_mode = force_custom_plan`: every statement is planned for the table as it is now.
/// A generic plan is cached per connection after five runs and replaced only when the table is
/// analyzed; one cached while `scheduled_jobs` was nearly empty (a seq scan) stayed in use as the
/// table grew, and without autovacuum (this machine's Postgres) each reconcile read the whole
/// table: 100,000 jobs reconciled at 47/s after 20,000, 10,000 at 135/s. Planning these short
/// statements costs well under a millisecond.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    pool_options(max_connections)
        .connect_with(connect_options(url)?)
        .await
        .map_err(StoreError::Connect)
}

/// A second, small pool that keeps `connections` open (connecting in the background): the
/// dispatcher's own, so that a new leader's first claims and publishes never queue for a
/// connection behind its re-reconcile of every job (64 reconciles at once on a 10-connection
/// pool held a just-elected leader's first publish for over 300 ms in a rolling update), nor
/// behind API requests.
pub fn dedicated(url: &str, connections: u32) -> Result<PgPool, StoreError> {
    Ok(pool_options(connections)
        .min_connections(connections)
        .connect_lazy_with(connect_options(url)?))
}

/// Parse a connection URL without connecting: a URL that cannot work is an error at start, not
/// a connection retried forever. sqlx's parse errors are fixed phrases, never the URL.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    connect_options(url)
        .map(drop)
        .map_err(|e| StoreError::InvalidUrl {
            url: crate::redact::url(url),
            reason: e.to_string(),
        })
}

fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(StoreError::Connect)?
        .options([
            ("idle_in_transaction_session_timeout", "5000"),
            ("lock_timeout", "10000"),
            ("plan_cache_mode", "force_custom_plan"),
        ]))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(300))
}

/// Insert or update a TaskFunction's row (its name is its identity: it is cluster-scoped).
pub async fn upsert_task_function(
    pool: &PgPool,
    tf: &ValidTaskFunction,
    uid: &str,
    generation: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO task_functions (name, uid, generation, task, queue, priority, expires_seconds,
                                     default_args, default_kwargs, allowed_namespaces, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (name) DO UPDATE SET
             uid = EXCLUDED.uid, generation = EXCLUDED.generation, task = EXCLUDED.task,
             queue = EXCLUDED.queue, priority = EXCLUDED.priority,
             expires_seconds = EXCLUDED.expires_seconds, default_args = EXCLUDED.default_args,
             default_kwargs = EXCLUDED.default_kwargs,
             allowed_namespaces = EXCLUDED.allowed_namespaces,
             description = EXCLUDED.description, updated_at = now()",
    )
    .bind(&tf.name)
    .bind(uid)
    .bind(generation)
    .bind(&tf.task)
    .bind(&tf.queue)
    .bind(tf.priority)
    .bind(tf.expires_seconds)
    .bind(serde_json::Value::Array(tf.default_args.clone()))
    .bind(serde_json::Value::Object(tf.default_kwargs.clone()))
    .bind(&tf.allowed_namespaces)
    .bind(&tf.description)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn delete_task_function(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM task_functions WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// What the store holds for a job after an upsert.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredJob {
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_trigger: Option<String>,
}

/// Insert or update a valid job in one transaction. The dispatcher owns `next_run_at`; it is
/// replaced only when the schedule itself changed or the job is (re)enabled — resuming never
/// replays the suspended period. Returns `None` if the job was already deleted.
/// `spec` is the ScheduledJob spec the row was built from (see [`stored_spec`]).
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
             spec, spec_generation)
         VALUES ($1, $2, $3, $4, $5, (SELECT id FROM task_functions WHERE name = $5), $6,
                 (SELECT id FROM scheduler_job_types WHERE name = $7), $8, $9, $10, $11, $12,
                 $13, $14, $15, $16, $17, NOT $18, $18, true,
                 $19, $20, $21, $22, $23, $24, $25, $26, $27, $4)
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
             next_run_at = CASE
                 WHEN NOT EXCLUDED.enabled THEN NULL
                 WHEN scheduled_jobs.enabled
                      AND scheduled_jobs.schedule_config = EXCLUDED.schedule_config
                      AND scheduled_jobs.time_zone = EXCLUDED.time_zone
                      AND scheduled_jobs.start_time IS NOT DISTINCT FROM EXCLUDED.start_time
                      AND scheduled_jobs.jitter_seconds = EXCLUDED.jitter_seconds
                      AND scheduled_jobs.next_run_at IS NOT NULL
                     THEN scheduled_jobs.next_run_at
                 ELSE EXCLUDED.next_run_at
             END,
             next_slot_at = CASE
                 WHEN NOT EXCLUDED.enabled THEN NULL
                 WHEN scheduled_jobs.enabled
                      AND scheduled_jobs.schedule_config = EXCLUDED.schedule_config
                      AND scheduled_jobs.time_zone = EXCLUDED.time_zone
                      AND scheduled_jobs.start_time IS NOT DISTINCT FROM EXCLUDED.start_time
                      AND scheduled_jobs.jitter_seconds = EXCLUDED.jitter_seconds
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
