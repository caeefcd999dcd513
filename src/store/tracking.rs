//! The result tracker's queries: the unfinished executions it follows, the transitions it
//! writes, and its reads of Celery's database result backend (`celery_taskmeta`, in whatever
//! Postgres Celery writes to; the pool passed is that database's).

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::StoreError;

/// An execution the tracker follows (DISPATCHED, STARTED or RETRY), with its job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unfinished {
    pub id: i64,
    pub job_id: i64,
    pub task_id: String,
    pub state: String,
    /// When it was published (or claimed, if never marked dispatched).
    pub since: DateTime<Utc>,
    pub execution_timeout_seconds: i64,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub task_name: String,
    pub scheduled_for: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
}

/// An [`Unfinished`]'s columns (`e` the execution, `j` its job), for the `WHERE` to follow.
macro_rules! followed_sql {
    () => {
        "SELECT e.id, e.job_id, e.task_id, e.state,
                COALESCE(e.dispatched_at, e.claimed_at) AS since,
                j.execution_timeout_seconds, j.namespace, j.name, j.uid, j.task_name,
                e.scheduled_for, e.started_at
         FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id"
    };
}

/// Up to `limit` unfinished executions with ids above `after`, by id (a keyset page), and only
/// those published before `published_before` when given. Runs of jobs with `ignoreResult` are
/// not followed: the worker stores nothing to follow, so they stay DISPATCHED (as with no
/// result backend) instead of ending LOST.
pub async fn unfinished_after(
    pool: &PgPool,
    after: i64,
    published_before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Unfinished>, StoreError> {
    Ok(sqlx::query_as(concat!(
        followed_sql!(),
        " WHERE e.state IN ('DISPATCHED', 'STARTED', 'RETRY') AND e.id > $1
           AND ($3::timestamptz IS NULL OR COALESCE(e.dispatched_at, e.claimed_at) < $3)
           AND NOT COALESCE((j.message_options->>'ignoreResult')::boolean, false)
         ORDER BY e.id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .bind(published_before)
    .fetch_all(pool)
    .await?)
}

/// The unfinished executions (as [`unfinished_after`] reads them, and also those still
/// `PENDING`: claimed, not yet marked published) with these Celery task ids: the runs whose results the
/// Redis backend just announced. Ids of no such run (another app's, or a run already final)
/// are absent.
pub async fn unfinished_with_task_ids(
    pool: &PgPool,
    task_ids: &[String],
) -> Result<Vec<Unfinished>, StoreError> {
    Ok(sqlx::query_as(concat!(
        followed_sql!(),
        " WHERE e.task_id = ANY($1)
           AND e.state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
           AND NOT COALESCE((j.message_options->>'ignoreResult')::boolean, false)"
    ))
    .bind(task_ids)
    .fetch_all(pool)
    .await?)
}

/// One execution's change as written: its new state and times, and the text columns already
/// made safe for Postgres (see `tracker::decode::stored`).
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionWrite {
    pub id: i64,
    /// The state it was read in: the write applies only if it is still in it.
    pub old_state: String,
    pub state: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// JSON text.
    pub result: Option<String>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    /// The worker's node name, when the record named it.
    pub worker: Option<String>,
}

/// Write `writes` in one statement, each only if its row is still in `old_state` (a Replace
/// revocation may have ended it meanwhile), and count final outcomes (SUCCESS; FAILURE, LOST,
/// REVOKED), the latest success and the failure streak on their jobs. Run inside the caller's transaction, after
/// its fencing check. Returns the execution ids changed.
pub async fn record_transitions(
    conn: &mut PgConnection,
    writes: &[TransitionWrite],
) -> Result<Vec<i64>, StoreError> {
    let n = writes.len();
    let mut ids = Vec::with_capacity(n);
    let mut old = Vec::with_capacity(n);
    let mut state = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    let mut result = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut traceback = Vec::with_capacity(n);
    let mut worker = Vec::with_capacity(n);
    for w in writes {
        ids.push(w.id);
        old.push(w.old_state.as_str());
        state.push(w.state.as_str());
        started.push(w.started_at);
        finished.push(w.finished_at);
        result.push(w.result.as_deref());
        error.push(w.error.as_deref());
        traceback.push(w.traceback.as_deref());
        worker.push(w.worker.as_deref());
    }
    // The jobs' rows first, in id order, as every writer of several job rows locks them (see
    // `health::record_verdicts`), and before the runs: the claim locks a job, then revokes its
    // runs (Replace), so a run locked before its job could close a circle with it.
    sqlx::query(
        "SELECT j.id FROM scheduled_jobs j
         WHERE j.id IN (SELECT job_id FROM job_executions WHERE id = ANY($1))
         ORDER BY j.id FOR NO KEY UPDATE",
    )
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_scalar(
        "WITH u AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[],
                                  $5::timestamptz[], $6::text[], $7::text[], $8::text[],
                                  $9::text[])
                 AS u(id, old_state, state, started_at, finished_at, result, error, traceback,
                      worker)
         ), changed AS (
             UPDATE job_executions e SET
                 state = u.state,
                 started_at = COALESCE(e.started_at, u.started_at),
                 finished_at = COALESCE(u.finished_at, e.finished_at),
                 result = COALESCE(u.result::jsonb, e.result),
                 error = COALESCE(u.error, e.error),
                 traceback = COALESCE(u.traceback, e.traceback),
                 worker = COALESCE(u.worker, e.worker)
             FROM u WHERE e.id = u.id AND e.state = u.old_state
             RETURNING e.id, e.job_id, e.state, e.scheduled_for
         ), counted AS (
             UPDATE scheduled_jobs j SET
                 succeeded = j.succeeded + c.ok,
                 failed = j.failed + c.bad,
                 last_success_at = GREATEST(j.last_success_at, c.last_ok),
                 -- The failure streak, by slot: a success ends it (the failures of this batch
                 -- after the batch's latest success start the next one). REVOKED is someone's
                 -- decision, not a failure of the job.
                 consecutive_failures = CASE WHEN c.ok > 0 THEN c.streak_after_ok
                                             ELSE j.consecutive_failures + c.streak END
             FROM (SELECT job_id, ok, bad, last_ok, streak,
                          count(*) FILTER (WHERE failing AND scheduled_for > last_ok) AS streak_after_ok
                   FROM (SELECT job_id, scheduled_for,
                                state IN ('FAILURE', 'LOST') AS failing,
                                count(*) FILTER (WHERE state = 'SUCCESS') OVER w AS ok,
                                count(*) FILTER (WHERE state IN ('FAILURE', 'LOST', 'REVOKED')) OVER w AS bad,
                                max(scheduled_for) FILTER (WHERE state = 'SUCCESS') OVER w AS last_ok,
                                count(*) FILTER (WHERE state IN ('FAILURE', 'LOST')) OVER w AS streak
                         FROM changed WINDOW w AS (PARTITION BY job_id)) per_run
                   GROUP BY job_id, ok, bad, last_ok, streak) c
             WHERE j.id = c.job_id
         )
         SELECT id FROM changed",
    )
    .bind(&ids)
    .bind(&old)
    .bind(&state)
    .bind(&started)
    .bind(&finished)
    .bind(&result)
    .bind(&error)
    .bind(&traceback)
    .bind(&worker)
    .fetch_all(conn)
    .await?)
}

/// A `celery_taskmeta` row as the tracker reads it: the lengths always, the values only when
/// they were within what was asked for.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TaskMetaRow {
    pub task_id: String,
    pub status: Option<String>,
    pub result_bytes: Option<i32>,
    pub result: Option<Vec<u8>>,
    pub traceback_bytes: Option<i32>,
    pub traceback: Option<String>,
    /// Naive UTC in this table; `None` outside 1970-9999 (or 'infinity'): chrono cannot hold
    /// all of Postgres' range and sqlx would panic decoding it.
    pub date_done: Option<NaiveDateTime>,
}

/// Which table of results [`taskmeta_first`] and [`taskmeta_rest`] read: Celery's database
/// backend (`celery_taskmeta`, `result` bytea, `date_done` naive UTC) or django-celery-results
/// (`django_celery_results_taskresult`, `result` JSON text, `date_done` timestamptz).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultTable {
    Celery,
    Django,
}

/// The records of `task_ids`, each result and traceback only when at most `max_bytes` long.
/// Celery (and Django's migrations) create the tables on first use: until then there are no
/// records (an empty list).
pub async fn taskmeta_first(
    pool: &PgPool,
    table: ResultTable,
    task_ids: &[String],
    max_bytes: i32,
) -> Result<Vec<TaskMetaRow>, StoreError> {
    let sql = match table {
        ResultTable::Celery => {
            "SELECT task_id, status,
                octet_length(result) AS result_bytes,
                CASE WHEN octet_length(result) <= $2 THEN result END AS result,
                octet_length(traceback) AS traceback_bytes,
                CASE WHEN octet_length(traceback) <= $2 THEN traceback END AS traceback,
                CASE WHEN date_done >= '1970-01-01' AND date_done < '10000-01-01'
                     THEN date_done END AS date_done
         FROM celery_taskmeta WHERE task_id = ANY($1)"
        }
        ResultTable::Django => {
            "SELECT task_id, status,
                octet_length(result) AS result_bytes,
                CASE WHEN octet_length(result) <= $2 THEN convert_to(result, 'UTF8') END
                    AS result,
                octet_length(traceback) AS traceback_bytes,
                CASE WHEN octet_length(traceback) <= $2 THEN traceback END AS traceback,
                CASE WHEN date_done >= '1970-01-01 UTC' AND date_done < '10000-01-01 UTC'
                     THEN date_done AT TIME ZONE 'UTC' END AS date_done
         FROM django_celery_results_taskresult WHERE task_id = ANY($1)"
        }
    };
    let read = sqlx::query_as(sql)
        .bind(task_ids)
        .bind(max_bytes)
        .fetch_all(pool)
        .await;
    match read {
        Ok(rows) => Ok(rows),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// The records of `task_ids` again, each result only when at most its `max_bytes` (same order)
/// long and each traceback as its last `traceback_chars` characters.
pub async fn taskmeta_rest(
    pool: &PgPool,
    table: ResultTable,
    task_ids: &[&str],
    max_bytes: &[i32],
    traceback_chars: i32,
) -> Result<Vec<TaskMetaRow>, StoreError> {
    let sql = match table {
        ResultTable::Celery => {
            "SELECT m.task_id, m.status,
                octet_length(m.result) AS result_bytes,
                CASE WHEN octet_length(m.result) <= w.max_bytes THEN m.result END
                    AS result,
                octet_length(m.traceback) AS traceback_bytes,
                right(m.traceback, $3) AS traceback,
                CASE WHEN m.date_done >= '1970-01-01' AND m.date_done < '10000-01-01'
                     THEN m.date_done END AS date_done
         FROM celery_taskmeta m
         JOIN UNNEST($1::text[], $2::int[]) AS w(task_id, max_bytes)
           ON m.task_id = w.task_id"
        }
        ResultTable::Django => {
            "SELECT m.task_id, m.status,
                octet_length(m.result) AS result_bytes,
                CASE WHEN octet_length(m.result) <= w.max_bytes
                     THEN convert_to(m.result, 'UTF8') END AS result,
                octet_length(m.traceback) AS traceback_bytes,
                right(m.traceback, $3) AS traceback,
                CASE WHEN m.date_done >= '1970-01-01 UTC' AND m.date_done < '10000-01-01 UTC'
                     THEN m.date_done AT TIME ZONE 'UTC' END AS date_done
         FROM django_celery_results_taskresult m
         JOIN UNNEST($1::text[], $2::int[]) AS w(task_id, max_bytes)
           ON m.task_id = w.task_id"
        }
    };
    Ok(sqlx::query_as(sql)
        .bind(task_ids)
        .bind(max_bytes)
        .bind(traceback_chars)
        .fetch_all(pool)
        .await?)
}
