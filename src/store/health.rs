//! Job health: what the health monitor reads about each job, the verdicts and pauses it
//! writes, and the resume the reconciler records.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::health::ResolvedHealth;

/// What the health monitor judges a job by.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HealthRow {
    pub id: i64,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub task_name: String,
    pub queue: String,
    pub task_function: String,
    pub enabled: bool,
    pub due: bool,
    pub health: sqlx::types::Json<ResolvedHealth>,
    pub consecutive_failures: i64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub health_baseline_at: DateTime<Utc>,
    pub paused_at: Option<DateTime<Utc>>,
    pub pause_reason: Option<String>,
    /// The oldest STARTED run (only for jobs with `maxDurationSeconds`).
    pub oldest_started: Option<DateTime<Utc>>,
    pub health_status: Option<String>,
    pub health_reason: Option<String>,
    pub health_message: Option<String>,
}

/// The live, valid jobs after id `after`, in id order, at most `limit` (a pass reads a page at
/// a time: all 100,000 rows at once held ~100 MB every few seconds). Invalid jobs are left out:
/// their `Ready=False` says what is wrong, and their health is not judged.
pub async fn health_rows(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<HealthRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT j.id, j.uid, j.namespace, j.name, j.task_name, j.queue, j.task_function,
                j.enabled,
                j.next_run_at IS NOT NULL AS due,
                j.health, j.consecutive_failures, j.last_success_at, j.health_baseline_at,
                j.paused_at, j.pause_reason,
                CASE WHEN j.health ? 'maxDurationSeconds' THEN
                    (SELECT min(e.started_at) FROM job_executions e
                     WHERE e.job_id = j.id AND e.state = 'STARTED')
                END AS oldest_started,
                j.health_status, j.health_reason, j.health_message
         FROM scheduled_jobs j
         WHERE j.deleted_at IS NULL AND j.valid AND j.id > $1
         ORDER BY j.id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A changed verdict to store; `pause` pauses the job too (only if it is not paused and was not
/// resumed since it was read: `baseline` is the `health_baseline_at` it was judged with).
#[derive(Debug, Clone)]
pub struct VerdictWrite {
    pub id: i64,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// The status flipped: `health_since` moves.
    pub flipped: bool,
    pub pause: Option<String>,
    pub baseline: DateTime<Utc>,
}

/// Store changed verdicts in one statement. Returns the ids of the jobs paused by it.
///
/// The rows are locked in id order before any is written, as every writer of several job rows
/// does ([`super::tracking::record_transitions`], [`super::jobs::upsert_jobs`], the outbox's
/// counters): they wait for each other but do not deadlock (in join order the verdicts and the
/// tracker's counters did, every ~20 s at 100,000 jobs each running every minute).
/// `NO KEY UPDATE`, the lock a plain UPDATE takes: it does not hold up a new run's insert.
pub async fn record_verdicts(
    pool: &PgPool,
    writes: &[VerdictWrite],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, StoreError> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = writes.iter().map(|w| w.id).collect();
    let status: Vec<&str> = writes.iter().map(|w| w.status).collect();
    let reason: Vec<&str> = writes.iter().map(|w| w.reason).collect();
    let message: Vec<&str> = writes.iter().map(|w| w.message.as_str()).collect();
    let flipped: Vec<bool> = writes.iter().map(|w| w.flipped).collect();
    let pause: Vec<Option<&str>> = writes.iter().map(|w| w.pause.as_deref()).collect();
    let baseline: Vec<DateTime<Utc>> = writes.iter().map(|w| w.baseline).collect();
    let paused: Vec<Option<i64>> = sqlx::query_scalar(
        "WITH u AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bool[],
                                  $6::text[], $7::timestamptz[])
                 AS u(id, status, reason, message, flipped, pause, baseline)
         ), locked AS MATERIALIZED (
             SELECT j.id FROM scheduled_jobs j
             WHERE j.id IN (SELECT id FROM u) AND j.deleted_at IS NULL
             ORDER BY j.id FOR NO KEY UPDATE
         )
         UPDATE scheduled_jobs j SET
             health_status = u.status, health_reason = u.reason, health_message = u.message,
             health_since = CASE WHEN u.flipped OR j.health_since IS NULL THEN $8 ELSE j.health_since END,
             paused_at = CASE WHEN u.pause IS NOT NULL AND j.paused_at IS NULL
                                   AND j.health_baseline_at = u.baseline THEN $8
                              ELSE j.paused_at END,
             pause_reason = CASE WHEN u.pause IS NOT NULL AND j.paused_at IS NULL
                                     AND j.health_baseline_at = u.baseline THEN u.pause
                                 ELSE j.pause_reason END
         FROM u JOIN locked l ON l.id = u.id WHERE j.id = u.id AND j.deleted_at IS NULL
         RETURNING CASE WHEN j.paused_at = $8 THEN j.id END",
    )
    .bind(&ids)
    .bind(&status)
    .bind(&reason)
    .bind(&message)
    .bind(&flipped)
    .bind(&pause)
    .bind(&baseline)
    .bind(now)
    .fetch_all(pool)
    .await?;
    Ok(paused.into_iter().flatten().collect())
}

/// What a resume did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// The job was paused and is not any more (its failure streak and staleness start anew).
    Resumed { job_id: i64 },
    /// A new value, but the job was not paused: recorded, nothing else.
    NotPaused,
    /// This value was acted on already (or the job is gone).
    Seen,
}

/// A new `kubebeat.io/resume` value: resume the job if it is paused. Each value acts once, so
/// an annotation left in place does not resume a later pause.
pub async fn resume(pool: &PgPool, uid: &str, token: &str) -> Result<Resumed, StoreError> {
    let row: Option<(i64, bool)> = sqlx::query_as(
        "WITH old AS (
             SELECT id, paused_at IS NOT NULL AS was_paused FROM scheduled_jobs
             WHERE uid = $1 AND deleted_at IS NULL AND resume_token IS DISTINCT FROM $2
             FOR UPDATE
         )
         UPDATE scheduled_jobs j SET resume_token = $2,
             paused_at = NULL, pause_reason = NULL,
             consecutive_failures = CASE WHEN old.was_paused THEN 0 ELSE j.consecutive_failures END,
             health_baseline_at = CASE WHEN old.was_paused THEN now() ELSE j.health_baseline_at END,
             -- Not `Paused` any more, and not judged yet: the monitor's next pass says.
             health_status = CASE WHEN old.was_paused THEN 'Unknown' ELSE j.health_status END,
             health_reason = CASE WHEN old.was_paused THEN 'Resumed' ELSE j.health_reason END,
             health_message = CASE WHEN old.was_paused
                 THEN 'resumed (kubebeat.io/resume = ' || left($2, 253) || '); judged again at the next health check'
                 ELSE j.health_message END,
             health_since = CASE WHEN old.was_paused THEN now() ELSE j.health_since END
         FROM old WHERE j.id = old.id
         RETURNING j.id, old.was_paused",
    )
    .bind(uid)
    .bind(token)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((job_id, true)) => Resumed::Resumed { job_id },
        Some((_, false)) => Resumed::NotPaused,
        None => Resumed::Seen,
    })
}
