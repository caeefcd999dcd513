//! The outbox: claimed executions (PENDING) waiting to be published, and how each publish
//! attempt ends (DISPATCHED, MISSED, DISPATCH_FAILED).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

/// A claimed execution waiting to be published, with what the message needs (and no more: a
/// burst decodes 100,000 of these while it goes out).
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub task_id: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    /// When it may be published: `publish_after`, or when it was claimed.
    pub due: DateTime<Utc>,
    pub namespace: String,
    pub name: String,
    pub task_name: String,
    pub args: Value,
    pub kwargs: Value,
    pub queue: String,
    pub priority: Option<i16>,
    pub expires_seconds: Option<i64>,
    /// Exchange, routing key, headers, time limits, ignore_result (`{}` when none).
    pub message_options: crate::celery::SendOptions,
}

/// By position, in [`PENDING_BY_IDS`]'s order: the derived `FromRow` finds each column by
/// name, hashing it, for every column of every row.
impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for OutboxRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(OutboxRow {
            id: row.try_get(0)?,
            task_id: row.try_get(1)?,
            scheduled_for: row.try_get(2)?,
            trigger: row.try_get(3)?,
            due: row.try_get(4)?,
            namespace: row.try_get(5)?,
            name: row.try_get(6)?,
            task_name: row.try_get(7)?,
            args: row.try_get(8)?,
            kwargs: row.try_get(9)?,
            queue: row.try_get(10)?,
            priority: row.try_get(11)?,
            expires_seconds: row.try_get(12)?,
            message_options: row
                .try_get::<sqlx::types::Json<crate::celery::SendOptions>, _>(13)?
                .0,
        })
    }
}

/// Claimed executions that could not be published within their job's `startingDeadlineSeconds`
/// (broker down, no leader) are not sent late: they become MISSED. Returns them, for Events.
pub async fn expire_pending(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<Ended>, sqlx::Error> {
    sqlx::query_as(
        "WITH m AS (
             UPDATE job_executions e SET state = 'MISSED', finished_at = $1,
                    error = 'not published within startingDeadlineSeconds'
             FROM scheduled_jobs j
             WHERE e.job_id = j.id AND e.state = 'PENDING' AND e.trigger NOT IN ('manual', 'backfill')
               AND j.starting_deadline_seconds IS NOT NULL
               AND e.scheduled_for + make_interval(secs => LEAST(j.starting_deadline_seconds, 31536000)
                                                            + LEAST(j.jitter_seconds, 86400)) < $1
             RETURNING e.job_id, j.namespace, j.name, j.uid, e.task_id, e.scheduled_for
         ), locked AS MATERIALIZED (
             -- In id order, as every writer of several job rows (health::record_verdicts).
             SELECT j.id FROM scheduled_jobs j WHERE j.id IN (SELECT job_id FROM m)
             ORDER BY j.id FOR NO KEY UPDATE
         ), c AS (
             UPDATE scheduled_jobs j SET missed = j.missed + n.n, total_runs = j.total_runs - n.n,
                    consecutive_failures = j.consecutive_failures + n.n
             FROM (SELECT job_id, count(*) AS n FROM m GROUP BY job_id) n
             JOIN locked l ON l.id = n.job_id
             WHERE j.id = n.job_id
         )
         SELECT * FROM m",
    )
    .bind(now)
    .fetch_all(pool)
    .await
}

/// An execution that ended in the dispatcher (MISSED, DISPATCH_FAILED).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ended {
    pub job_id: i64,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub task_id: String,
    pub scheduled_for: DateTime<Utc>,
}

/// The PENDING executions (the outbox), whoever claimed them, due by `horizon`, earliest first:
/// their ids and when each is due (a burst of 100,000 is held this way; its rows are read a
/// chunk at a time by [`pending_by_ids`] when it goes out). With `after`, only executions with
/// a higher id, or due already (a lower id can commit later: a manual trigger beside a claim).
pub async fn pending_ids(
    pool: &PgPool,
    limit: i64,
    horizon: DateTime<Utc>,
    after: Option<(i64, DateTime<Utc>)>,
) -> Result<Vec<(i64, DateTime<Utc>)>, sqlx::Error> {
    let (after_id, due_by) = after.unwrap_or((0, horizon));
    sqlx::query_as(
        "SELECT e.id, COALESCE(e.publish_after, e.claimed_at)
         FROM job_executions e
         WHERE e.state = 'PENDING' AND COALESCE(e.publish_after, e.claimed_at) <= $2
               AND (e.id > $3 OR COALESCE(e.publish_after, e.claimed_at) <= $4)
         ORDER BY COALESCE(e.publish_after, e.claimed_at), e.id
         LIMIT $1",
    )
    .bind(limit)
    .bind(horizon)
    .bind(after_id)
    .bind(due_by)
    .fetch_all(pool)
    .await
}

/// These executions, those still PENDING (one published or expired meanwhile is left out).
pub async fn pending_by_ids(pool: &PgPool, ids: &[i64]) -> Result<Vec<OutboxRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(PENDING_BY_IDS)
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// [`pending_by_ids`], row by row as Postgres sends them (a caller that turns each row into
/// something smaller never holds them all).
pub fn pending_by_ids_stream<'a>(
    pool: &'a PgPool,
    ids: &'a [i64],
) -> futures::stream::BoxStream<'a, Result<OutboxRow, sqlx::Error>> {
    sqlx::query_as(PENDING_BY_IDS).bind(ids).fetch(pool)
}

/// The columns in [`OutboxRow`]'s order (it is decoded by position).
const PENDING_BY_IDS: &str = "SELECT e.id, e.task_id, e.scheduled_for, e.trigger,
        COALESCE(e.publish_after, e.claimed_at), j.namespace, j.name,
        j.task_name, COALESCE(e.args, j.args), COALESCE(e.kwargs, j.kwargs), j.queue, j.priority, j.expires_seconds,
        j.message_options
    FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
    WHERE e.id = ANY($1) AND e.state = 'PENDING'";

/// When the earliest PENDING execution may be published (whoever claimed it).
pub async fn next_pending(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(COALESCE(publish_after, claimed_at)) FROM job_executions WHERE state = 'PENDING'",
    )
    .fetch_one(pool)
    .await
}

/// A run just recorded as DISPATCHED, with what its log line names.
#[derive(Debug, sqlx::FromRow)]
pub struct Dispatched {
    pub job_id: i64,
    pub namespace: String,
    pub name: String,
    pub task_name: String,
    pub task_id: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
}

/// Record published runs as DISPATCHED, each at the time it went out (the runs of several
/// publishes are recorded together). Returns those it changed (not those settled meanwhile
/// from the publish record), so a burst keeps only ids until it is recorded.
pub async fn mark_dispatched(
    pool: &PgPool,
    runs: &[(i64, DateTime<Utc>)],
) -> Result<Vec<Dispatched>, sqlx::Error> {
    // Two arrays of the same length, made here: UNNEST of arrays of different lengths pads
    // the shorter with NULLs.
    let (ids, at): (Vec<i64>, Vec<DateTime<Utc>>) = runs.iter().copied().unzip();
    sqlx::query_as(
        "UPDATE job_executions e SET state = 'DISPATCHED', dispatched_at = u.at,
                publish_attempts = e.publish_attempts + 1, error = NULL
         FROM UNNEST($1::bigint[], $2::timestamptz[]) AS u(id, at), scheduled_jobs j
         WHERE e.id = u.id AND e.state = 'PENDING' AND j.id = e.job_id
         RETURNING e.job_id, j.namespace, j.name, j.task_name, e.task_id, e.scheduled_for,
                   e.trigger",
    )
    .bind(&ids)
    .bind(&at)
    .fetch_all(pool)
    .await
}

/// The task ids of the oldest PENDING executions.
pub async fn pending_task_ids(pool: &PgPool, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT task_id FROM job_executions WHERE state = 'PENDING' ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// PENDING executions the broker's ledger shows as published: recorded as DISPATCHED (at `now`;
/// the real time is unknown). Returns their job ids.
pub async fn mark_dispatched_tasks(
    pool: &PgPool,
    task_ids: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE job_executions SET state = 'DISPATCHED', dispatched_at = $2,
                publish_attempts = publish_attempts + 1, error = NULL
         WHERE task_id = ANY($1) AND state = 'PENDING'
         RETURNING job_id",
    )
    .bind(task_ids)
    .bind(now)
    .fetch_all(pool)
    .await
}

/// Record a failed publish (`error`, already cut to size by the caller); executions claimed
/// before `give_up_before` become DISPATCH_FAILED (counted as failed on their job). Returns
/// those.
pub async fn mark_publish_failed(
    pool: &PgPool,
    ids: &[i64],
    error: &str,
    give_up_before: DateTime<Utc>,
) -> Result<Vec<Ended>, sqlx::Error> {
    sqlx::query_as(
        "WITH f AS (
             UPDATE job_executions SET publish_attempts = publish_attempts + 1, error = $2,
                    state = CASE WHEN claimed_at < $3 THEN 'DISPATCH_FAILED' ELSE state END,
                    finished_at = CASE WHEN claimed_at < $3 THEN now() ELSE finished_at END
             WHERE id = ANY($1) AND state = 'PENDING'
             RETURNING job_id, task_id, scheduled_for, state
         ), locked AS MATERIALIZED (
             -- In id order, as every writer of several job rows (health::record_verdicts).
             SELECT j.id FROM scheduled_jobs j
             WHERE j.id IN (SELECT job_id FROM f WHERE state = 'DISPATCH_FAILED')
             ORDER BY j.id FOR NO KEY UPDATE
         ), c AS (
             UPDATE scheduled_jobs j SET failed = j.failed + n.n,
                    consecutive_failures = j.consecutive_failures + n.n
             FROM (SELECT job_id, count(*) AS n FROM f WHERE state = 'DISPATCH_FAILED' GROUP BY job_id) n
             JOIN locked l ON l.id = n.job_id
             WHERE j.id = n.job_id
         )
         SELECT f.job_id, j.namespace, j.name, j.uid, f.task_id, f.scheduled_for
         FROM f JOIN scheduled_jobs j ON j.id = f.job_id WHERE f.state = 'DISPATCH_FAILED'",
    )
    .bind(ids)
    .bind(error)
    .bind(give_up_before)
    .fetch_all(pool)
    .await
}

/// Executions the broker refused one by one (their queue cannot take a message): they end as
/// DISPATCH_FAILED at once, since retrying cannot help until the queue is changed.
pub async fn mark_dispatch_failed(
    pool: &PgPool,
    ids: &[i64],
    error: &str,
) -> Result<Vec<Ended>, sqlx::Error> {
    // Everything claimed before the end of time has been tried long enough.
    mark_publish_failed(pool, ids, error, DateTime::<Utc>::MAX_UTC).await
}
