//! The management API's reads (`/api/v1/...`): every query behind it, each returning typed rows
//! that serialize as the API's JSON. `namespaces` is `None` for a caller who may read every
//! namespace, else the namespaces it may read (an empty list reads none). Every list is bounded.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use super::{StoreError, last_run_sql, visible_run_sql};

/// A job as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: i64,
    pub namespace: String,
    pub name: String,
    pub task_function: String,
    pub task: String,
    pub queue: String,
    pub job_type: String,
    pub schedule: String,
    pub time_zone: String,
    pub enabled: bool,
    pub suspended: bool,
    pub valid: bool,
    pub invalid_reason: Option<String>,
    pub invalid_message: Option<String>,
    pub next_run_time: Option<DateTime<Utc>>,
    pub last_run_time: Option<DateTime<Utc>>,
    pub last_success_time: Option<DateTime<Utc>>,
    pub last_status: Option<String>,
    pub total_runs: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub missed: i64,
    pub skipped: i64,
    pub description: Option<String>,
    /// The `Healthy` condition as last judged (`None` until the leader judged it).
    pub healthy: Option<String>,
    pub health_reason: Option<String>,
    pub health_message: Option<String>,
    pub health_since: Option<DateTime<Utc>>,
    pub consecutive_failures: i64,
    pub paused: bool,
    pub pause_reason: Option<String>,
    pub paused_since: Option<DateTime<Utc>>,
}

/// The columns of a [`JobView`] (a macro: `concat!` takes it where a `const` would not do).
macro_rules! job_columns {
    () => {
        concat!(
    "j.id, j.namespace, j.name, j.task_function, j.task_name AS task, j.queue,
    t.name AS job_type, j.schedule_summary AS schedule, j.time_zone, j.enabled, j.suspended, j.valid,
    j.invalid_reason, j.invalid_message, j.next_run_at AS next_run_time, ",
    last_run_sql!(),
    " AS last_run_time, j.last_success_at AS last_success_time,
    (SELECT e.state FROM job_executions e WHERE e.job_id = j.id AND ",
    visible_run_sql!(),
    " ORDER BY e.scheduled_for DESC, e.id DESC LIMIT 1) AS last_status,
    j.total_runs, j.succeeded, j.failed, j.missed, j.skipped, j.description,
    j.health_status AS healthy, j.health_reason, j.health_message, j.health_since,
    j.consecutive_failures, j.paused_at IS NOT NULL AS paused, j.pause_reason,
    j.paused_at AS paused_since"
)
    };
}
const JOB_COLUMNS: &str = job_columns!();

/// An execution as the API shows it (snake_case, as the migration plan's commands read it).
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct ExecutionView {
    pub id: i64,
    pub job_id: i64,
    pub namespace: String,
    pub job_name: String,
    pub task_id: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    pub status: String,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub result: Option<Value>,
    /// The arguments the run was sent with (`None`: claimed by an earlier release, or not a
    /// run: SKIPPED, MISSED).
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    /// Who asked for a manual run.
    pub requested_by: Option<String>,
    /// Who asked to cancel it, and when (its state says whether the worker stopped it).
    pub revoked_by: Option<String>,
    pub revoke_requested_at: Option<DateTime<Utc>>,
    /// Deliveries of this run the worker-side guard skipped as broker redeliveries (its claims
    /// in `guard_claims`, when the guard keeps them in this database), every attempt together.
    pub duplicates_suppressed: i64,
}

const EXECUTION_COLUMNS: &str = "e.id, e.job_id, j.namespace, j.name AS job_name, e.task_id,
    e.scheduled_for, e.trigger, e.state AS status, e.dispatched_at, e.started_at, e.finished_at,
    e.error, e.result, e.args, e.kwargs, e.requested_by, e.revoked_by, e.revoke_requested_at,
    COALESCE((SELECT sum(g.duplicates) FROM guard_claims g WHERE g.task_id = e.task_id), 0)::bigint
        AS duplicates_suppressed";

/// The filter of [`executions`] and [`count_executions`]: $1 namespaces, $2 job id, $3 state.
const EXECUTION_FILTER: &str =
    "($1::text[] IS NULL OR j.namespace = ANY($1)) AND ($2::bigint IS NULL OR e.job_id = $2)
                  AND ($3::text IS NULL OR e.state = $3)";

/// The namespaces that have live jobs, in order, at most `limit` of them.
pub async fn job_namespaces(pool: &PgPool, limit: i64) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT namespace FROM scheduled_jobs WHERE deleted_at IS NULL ORDER BY 1 LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Live jobs in `namespaces`: how many, enabled, suspended and invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct JobCounts {
    pub total: i64,
    pub enabled: i64,
    pub suspended: i64,
    pub invalid: i64,
}

pub async fn job_counts(
    pool: &PgPool,
    namespaces: Option<&[String]>,
) -> Result<JobCounts, StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*) AS total, count(*) FILTER (WHERE enabled) AS enabled,
                count(*) FILTER (WHERE suspended) AS suspended,
                count(*) FILTER (WHERE NOT valid) AS invalid
         FROM scheduled_jobs WHERE deleted_at IS NULL AND ($1::text[] IS NULL OR namespace = ANY($1))",
    )
    .bind(namespaces)
    .fetch_one(pool)
    .await?)
}

/// Executions claimed in the last 24 hours in `namespaces`, counted by state (in state order).
pub async fn executions_by_state_24h(
    pool: &PgPool,
    namespaces: Option<&[String]>,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT e.state, count(*) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE e.claimed_at > now() - interval '24 hours'
           AND ($1::text[] IS NULL OR j.namespace = ANY($1))
         GROUP BY 1 ORDER BY 1",
    )
    .bind(namespaces)
    .fetch_all(pool)
    .await?)
}

/// The fencing epoch: how many times leadership was taken.
pub async fn leader_epoch(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT epoch FROM scheduler_leader WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

/// A replica that reported itself in the last 30 seconds.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReplicaView {
    pub identity: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// The live replicas (seen in the last 30 seconds), by identity, at most 100.
pub async fn live_replicas(pool: &PgPool) -> Result<Vec<ReplicaView>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT identity, version, started_at, last_seen FROM scheduler_replicas
         WHERE last_seen > now() - interval '30 seconds' ORDER BY identity LIMIT 100",
    )
    .fetch_all(pool)
    .await?)
}

/// One page of the live jobs `filter` selects, in its order.
pub async fn jobs(
    pool: &PgPool,
    filter: &JobFilter<'_>,
    limit: i64,
    offset: i64,
) -> Result<Vec<JobView>, StoreError> {
    let order = filter.sort.order();
    let sql = format!(
        "SELECT * FROM ({JOBS_FILTERED}) v WHERE {LAST_STATUS_FILTER}
         ORDER BY {order}, v.namespace, v.name LIMIT $7 OFFSET $8"
    );
    Ok(filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await?)
}

/// How many live jobs `filter` selects.
pub async fn count_jobs(pool: &PgPool, filter: &JobFilter<'_>) -> Result<i64, StoreError> {
    let sql = format!("SELECT count(*) FROM ({JOBS_FILTERED}) v WHERE {LAST_STATUS_FILTER}");
    let (count,): (i64,) = filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_one(pool)
        .await?;
    Ok(count)
}

/// The live jobs narrowed by every filter but the last run's state (computed per job, so
/// applied outside): $1 namespaces, $2 text in the name, $3 TaskFunction, $4 health, $5
/// suspended.
const JOBS_FILTERED: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM scheduled_jobs j JOIN scheduler_job_types t ON t.id = j.job_type_id
     WHERE j.deleted_at IS NULL AND ($1::text[] IS NULL OR j.namespace = ANY($1))
       AND ($2::text IS NULL OR strpos(lower(j.name), lower($2)) > 0)
       AND ($3::text IS NULL OR j.task_function = $3)
       AND ($4::text IS NULL OR j.health_status = $4)
       AND ($5::boolean IS NULL OR j.suspended = $5)"
);
/// $6: the last run's state, or `NONE` for jobs that never ran.
/// (Named once: each mention of `v.last_status` runs its subquery per job. Filtering or sorting
/// by it reads every selected job's latest run, ~0.3 s at 100,000 jobs; the other filters and
/// sorts read the job rows only.)
const LAST_STATUS_FILTER: &str = "($6::text IS NULL OR COALESCE(v.last_status, 'NONE') = $6)";

/// Which jobs to list (each `None` does not narrow), and in what order.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobFilter<'a> {
    pub namespaces: Option<&'a [String]>,
    /// Text the name contains (any case).
    pub text: Option<&'a str>,
    pub task_function: Option<&'a str>,
    /// `True`, `False` or `Unknown` (the `Healthy` condition).
    pub health: Option<&'a str>,
    pub suspended: Option<bool>,
    /// A state, or `NONE` (never ran).
    pub last_status: Option<&'a str>,
    pub sort: JobSort,
}

impl<'a> JobFilter<'a> {
    fn bind<O>(
        &self,
        q: sqlx::query::QueryAs<'a, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'a, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        q.bind(self.namespaces)
            .bind(self.text)
            .bind(self.task_function)
            .bind(self.health)
            .bind(self.suspended)
            .bind(self.last_status)
    }
}

/// The jobs list's order: a column of the view, ascending or descending (then by namespace and
/// name). A closed set: the column named in SQL is one of these, never the caller's text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobSort {
    pub key: JobSortKey,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JobSortKey {
    #[default]
    Namespace,
    Name,
    Task,
    NextRunTime,
    LastRunTime,
    LastStatus,
    Health,
}

impl JobSort {
    /// From the API's `sort` value: a key as the API names the field, `-` first for descending.
    pub fn parse(value: &str) -> Option<JobSort> {
        let (descending, key) = match value.strip_prefix('-') {
            Some(k) => (true, k),
            None => (false, value),
        };
        let key = match key {
            "namespace" => JobSortKey::Namespace,
            "name" => JobSortKey::Name,
            "task" => JobSortKey::Task,
            "nextRunTime" => JobSortKey::NextRunTime,
            "lastRunTime" => JobSortKey::LastRunTime,
            "lastStatus" => JobSortKey::LastStatus,
            "health" => JobSortKey::Health,
            _ => return None,
        };
        Some(JobSort { key, descending })
    }

    pub const KEYS: &'static str =
        "namespace, name, task, nextRunTime, lastRunTime, lastStatus, health";

    /// The ORDER BY term: nullable columns put their NULLs last either way; the others say
    /// nothing of NULLs, so `(namespace, name)` in either direction reads the live-name index.
    fn order(&self) -> &'static str {
        match (self.key, self.descending) {
            (JobSortKey::Namespace, false) => "v.namespace",
            (JobSortKey::Namespace, true) => "v.namespace DESC",
            (JobSortKey::Name, false) => "v.name",
            (JobSortKey::Name, true) => "v.name DESC",
            (JobSortKey::Task, false) => "v.task",
            (JobSortKey::Task, true) => "v.task DESC",
            (JobSortKey::NextRunTime, false) => "v.next_run_time NULLS LAST",
            (JobSortKey::NextRunTime, true) => "v.next_run_time DESC NULLS LAST",
            (JobSortKey::LastRunTime, false) => "v.last_run_time NULLS LAST",
            (JobSortKey::LastRunTime, true) => "v.last_run_time DESC NULLS LAST",
            (JobSortKey::LastStatus, false) => "v.last_status NULLS LAST",
            (JobSortKey::LastStatus, true) => "v.last_status DESC NULLS LAST",
            (JobSortKey::Health, false) => "v.healthy NULLS LAST",
            (JobSortKey::Health, true) => "v.healthy DESC NULLS LAST",
        }
    }
}

/// The live job `namespace/name`, if there is one.
pub async fn job(
    pool: &PgPool,
    namespace: &str,
    name: &str,
) -> Result<Option<JobView>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM scheduled_jobs j JOIN scheduler_job_types t ON t.id = j.job_type_id
         WHERE j.deleted_at IS NULL AND j.namespace = $1 AND j.name = $2"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(namespace)
        .bind(name)
        .fetch_optional(pool)
        .await?)
}

/// A job's 50 latest executions, latest slot first.
pub async fn recent_executions(
    pool: &PgPool,
    job_id: i64,
) -> Result<Vec<ExecutionView>, StoreError> {
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE e.job_id = $1 ORDER BY e.scheduled_for DESC, e.id DESC LIMIT 50"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(job_id)
        .fetch_all(pool)
        .await?)
}

/// One execution with everything stored about it: the run page's story.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct ExecutionDetail {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub view: ExecutionView,
    /// The last 32 KiB of the worker's traceback (a failed or retried run).
    pub traceback: Option<String>,
    pub claimed_at: DateTime<Utc>,
    pub publish_attempts: i32,
    /// Slots this run stands for (more than 1 when missed slots were coalesced).
    pub coalesced_slots: i32,
    pub task_name: String,
    pub queue: String,
    /// The worker that ran it (`celery@host`), where the result backend named it.
    pub worker: Option<String>,
}

pub async fn execution(pool: &PgPool, id: i64) -> Result<Option<ExecutionDetail>, StoreError> {
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS}, e.traceback, e.claimed_at, e.publish_attempts,
                e.coalesced_slots, j.task_name, j.queue, e.worker
         FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id WHERE e.id = $1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// One minute of the front page's activity chart.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ActivityMinute {
    pub minute: DateTime<Utc>,
    pub succeeded: i64,
    /// FAILURE, LOST, REVOKED, DISPATCH_FAILED.
    pub failed: i64,
    /// Sent and not ended yet (PENDING, DISPATCHED, STARTED, RETRY).
    pub unfinished: i64,
    /// SKIPPED, MISSED, SHADOW.
    pub other: i64,
    /// Seconds from slot to publish of the minute's scheduled runs: p99 and max.
    pub lag_p99: Option<f64>,
    pub lag_max: Option<f64>,
}

/// Runs read at most for the activity chart: the newest ones (by id, from the primary key), so
/// the chart costs the same at 10 runs a minute as at 100,000 (where it covers less than the
/// hour; the answer says what it covers).
pub const ACTIVITY_MAX_RUNS: i64 = 20_000;

/// The runs of the last `minutes` minutes in `namespaces` by minute of their slot: outcomes and
/// dispatch lag, from the newest [`ACTIVITY_MAX_RUNS`] runs at most (and, for a caller limited to
/// some namespaces, among the newest 10x that many of all).
pub async fn activity(
    pool: &PgPool,
    namespaces: Option<&[String]>,
    minutes: i64,
) -> Result<Vec<ActivityMinute>, StoreError> {
    Ok(sqlx::query_as(
        "WITH recent AS (
             SELECT e.id, e.job_id, e.state, e.trigger, e.scheduled_for, e.dispatched_at
             FROM job_executions e ORDER BY e.id DESC LIMIT $3 * 10
         ), r AS (
             SELECT r.* FROM recent r JOIN scheduled_jobs j ON j.id = r.job_id
             WHERE ($1::text[] IS NULL OR j.namespace = ANY($1))
               AND r.scheduled_for >= date_trunc('minute', now())
                                      - make_interval(mins => $2::int - 1)
               AND r.scheduled_for <= now()
             ORDER BY r.id DESC LIMIT $3
         )
         SELECT date_trunc('minute', scheduled_for) AS minute,
                count(*) FILTER (WHERE state = 'SUCCESS') AS succeeded,
                count(*) FILTER (WHERE state IN ('FAILURE', 'LOST', 'REVOKED', 'DISPATCH_FAILED'))
                    AS failed,
                count(*) FILTER (WHERE state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY'))
                    AS unfinished,
                count(*) FILTER (WHERE state IN ('SKIPPED', 'MISSED', 'SHADOW')) AS other,
                percentile_cont(0.99) WITHIN GROUP (
                    ORDER BY extract(epoch FROM dispatched_at - scheduled_for)::float8)
                    FILTER (WHERE trigger = 'schedule' AND dispatched_at IS NOT NULL) AS lag_p99,
                max(extract(epoch FROM dispatched_at - scheduled_for)::float8)
                    FILTER (WHERE trigger = 'schedule' AND dispatched_at IS NOT NULL) AS lag_max
         FROM r GROUP BY 1 ORDER BY 1",
    )
    .bind(namespaces)
    .bind(minutes)
    .bind(ACTIVITY_MAX_RUNS)
    .fetch_all(pool)
    .await?)
}

/// Which executions to list: each `None` does not narrow.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecutionFilter<'a> {
    pub namespaces: Option<&'a [String]>,
    pub job_id: Option<i64>,
    pub state: Option<&'a str>,
}

/// One page of the executions `filter` selects, newest first.
pub async fn executions(
    pool: &PgPool,
    filter: ExecutionFilter<'_>,
    limit: i64,
    offset: i64,
) -> Result<Vec<ExecutionView>, StoreError> {
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE {EXECUTION_FILTER} ORDER BY e.id DESC LIMIT $4 OFFSET $5"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(filter.namespaces)
        .bind(filter.job_id)
        .bind(filter.state)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await?)
}

/// Counting executions stops past this many: "more than 10000" is an answer.
pub const EXECUTION_COUNT_CAP: i64 = 10_000;

/// How many executions `filter` selects, counted up to [`EXECUTION_COUNT_CAP`] + 1 (so the
/// count stays bounded and says whether there are more).
pub async fn count_executions(
    pool: &PgPool,
    filter: ExecutionFilter<'_>,
) -> Result<i64, StoreError> {
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE {EXECUTION_FILTER} LIMIT 10001) c"
    );
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(filter.namespaces)
        .bind(filter.job_id)
        .bind(filter.state)
        .fetch_one(pool)
        .await?)
}

/// A job type (interval, crontab, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct JobTypeView {
    pub id: i16,
    pub name: String,
    pub description: String,
}

/// Every job type, by id.
pub async fn job_types(pool: &PgPool) -> Result<Vec<JobTypeView>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, name, description FROM scheduler_job_types ORDER BY id")
            .fetch_all(pool)
            .await?,
    )
}

/// A TaskFunction as a caller reading `namespaces` sees it.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct TaskFunctionView {
    pub name: String,
    pub task: String,
    pub queue: String,
    pub priority: Option<i16>,
    pub expires_seconds: Option<i64>,
    pub allowed_namespaces: Vec<String>,
    pub description: Option<String>,
    pub job_count: i64,
}

/// The TaskFunctions usable from `namespaces` (`allowedNamespaces` empty, i.e. every namespace,
/// or naming one of them), by name, at most 1000: `allowedNamespaces` cut down to `namespaces`
/// and `jobCount` counting only their live jobs. `None` reads every one as stored.
pub async fn task_functions(
    pool: &PgPool,
    namespaces: Option<&[String]>,
) -> Result<Vec<TaskFunctionView>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT f.name, f.task, f.queue, f.priority, f.expires_seconds,
                CASE WHEN $1::text[] IS NULL THEN f.allowed_namespaces
                     ELSE ARRAY(SELECT n FROM unnest(f.allowed_namespaces) n WHERE n = ANY($1))
                END AS allowed_namespaces,
                f.description,
                (SELECT count(*) FROM scheduled_jobs j
                 WHERE j.task_function = f.name AND j.deleted_at IS NULL
                   AND ($1::text[] IS NULL OR j.namespace = ANY($1))) AS job_count
         FROM task_functions f
         WHERE $1::text[] IS NULL OR cardinality(f.allowed_namespaces) = 0
               OR f.allowed_namespaces && $1
         ORDER BY f.name LIMIT 1000",
    )
    .bind(namespaces)
    .fetch_all(pool)
    .await?)
}
