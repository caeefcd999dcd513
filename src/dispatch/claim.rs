//! Claims: due slots become execution rows, exactly once per (job, slot), in transactions that
//! check the caller's fencing epoch. The outbox: claimed rows waiting to be published.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::plan::{DueJob, Outcome, plan};
use crate::{
    api::ConcurrencyPolicy,
    schedule::{JobSchedule, rfc3339},
    status::{JobEvent, JobRef, Reason},
};

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("fenced: the leader epoch is now {current}, ours is {ours}")]
    Fenced { ours: i64, current: i64 },
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// Lock the leader row for the transaction and check the epoch is ours. A new leader's bump
/// waits for this transaction, so everything committed here happened before it.
pub async fn check_epoch(tx: &mut Transaction<'_, Postgres>, ours: i64) -> Result<(), ClaimError> {
    let current: i64 =
        sqlx::query_scalar("SELECT epoch FROM scheduler_leader WHERE id = 1 FOR SHARE")
            .fetch_one(&mut **tx)
            .await?;
    if current != ours {
        return Err(ClaimError::Fenced { ours, current });
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct DueRow {
    id: i64,
    uid: String,
    namespace: String,
    name: String,
    schedule_config: Value,
    time_zone: String,
    start_time: Option<DateTime<Utc>>,
    anchor_time: DateTime<Utc>,
    next_run_at: DateTime<Utc>,
    next_slot_at: Option<DateTime<Utc>>,
    concurrency_policy: String,
    starting_deadline_seconds: Option<i64>,
    jitter_seconds: i64,
    active: bool,
}

/// What one claim batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClaimStats {
    pub jobs: usize,
    pub runs: usize,
    pub missed: usize,
    pub skipped: usize,
    /// Celery task ids replaced under `concurrencyPolicy: Replace`, to revoke.
    pub revoked: Vec<String>,
    /// Jobs whose status changed.
    pub job_ids: Vec<i64>,
    /// Runs (or MISSED/SKIPPED slots) already due; the rest were claimed ahead of their time.
    pub due_now: usize,
    /// MISSED and SKIPPED slots, for Events.
    pub events: Vec<JobEvent>,
}

// Column vectors bound as arrays.
type Ids = Vec<i64>;
type Texts = Vec<String>;
type Times = Vec<DateTime<Utc>>;
type MaybeTimes = Vec<Option<DateTime<Utc>>>;

/// Claim up to `limit` due jobs in one transaction. `shadow` records SHADOW instead of PENDING.
///
/// Jobs under `concurrencyPolicy: Allow` are claimed up to `lookahead` before they are due, one
/// slot ahead at most: their run does not depend on anything that happens until then, and a
/// burst of runs due in the same second is then only published at its time, not claimed at it
/// (the publisher holds each run until its `publish_after`). Forbid and Replace look at the
/// previous run, so those jobs are claimed when due.
///
/// Durations from the row are clamped to their bounds (one year; a day of jitter) inside the
/// query: a row stored before the bounds existed must not make the statement fail ("interval out
/// of range") for every job in the batch.
pub async fn claim_due(
    pool: &PgPool,
    epoch: i64,
    limit: i64,
    now: DateTime<Utc>,
    lookahead: chrono::Duration,
    shadow: bool,
) -> Result<ClaimStats, ClaimError> {
    let mut tx = pool.begin().await?;
    check_epoch(&mut tx, epoch).await?;
    let rows: Vec<DueRow> = sqlx::query_as(
        "SELECT j.id, j.uid, j.namespace, j.name, j.schedule_config, j.time_zone, j.start_time,
                j.anchor_time, j.next_run_at, j.next_slot_at, j.concurrency_policy,
                j.starting_deadline_seconds, j.jitter_seconds,
                (j.concurrency_policy <> 'Allow' AND EXISTS (
                    SELECT 1 FROM job_executions e
                    WHERE e.job_id = j.id AND e.state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
                      AND e.claimed_at > $1 - make_interval(secs => LEAST(j.execution_timeout_seconds, 31536000)))) AS active
         FROM scheduled_jobs j
         WHERE j.enabled AND j.next_run_at <= $3
           AND (j.next_run_at <= $1
                OR (j.concurrency_policy = 'Allow' AND COALESCE(j.claimed_until, '-infinity') <= $1))
         ORDER BY j.next_run_at
         LIMIT $2
         FOR UPDATE OF j SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .bind(now + lookahead)
    .fetch_all(&mut *tx)
    .await?;

    let mut replace_jobs: Vec<i64> = Vec::new();
    let mut stats = ClaimStats {
        jobs: rows.len(),
        ..Default::default()
    };
    // Column vectors for one INSERT and one UPDATE per batch (UNNEST), not one statement per job.
    let (
        mut e_job,
        mut e_slot_key,
        mut e_task,
        mut e_for,
        mut e_trigger,
        mut e_state,
        mut e_coalesced,
        mut e_publish_after,
    ): (Ids, Texts, Texts, Times, Texts, Texts, Vec<i32>, Times) = Default::default();
    let (
        mut u_id,
        mut u_next_run,
        mut u_next_slot,
        mut u_last,
        mut u_runs,
        mut u_missed,
        mut u_skipped,
        mut u_claimed_until,
    ): (
        Ids,
        MaybeTimes,
        MaybeTimes,
        MaybeTimes,
        Ids,
        Ids,
        Ids,
        MaybeTimes,
    ) = Default::default();
    for row in rows {
        let schedule = match JobSchedule::from_stored(
            &row.schedule_config,
            &row.time_zone,
            row.start_time,
            row.anchor_time,
        ) {
            Ok(s) => s,
            Err(e) => {
                // Cannot happen for rows the reconciler wrote; park the job rather than loop.
                tracing::error!(job = %format!("{}/{}", row.namespace, row.name), error = %e, "unreadable stored schedule");
                crate::metrics::METRICS
                    .job_failures
                    .get_or_create(&crate::metrics::Category {
                        category: "unreadable_schedule",
                    })
                    .inc();
                stats.events.push(JobEvent {
                    job: JobRef {
                        namespace: row.namespace.clone(),
                        name: row.name.clone(),
                        uid: row.uid.clone(),
                    },
                    reason: Reason::DispatchFailed,
                    message: format!(
                        "not scheduled: its stored schedule cannot be read ({e}); re-apply the job"
                    ),
                });
                u_id.push(row.id);
                u_next_run.push(None);
                u_next_slot.push(None);
                u_last.push(None);
                u_runs.push(0i64);
                u_missed.push(0i64);
                u_skipped.push(0i64);
                u_claimed_until.push(None);
                continue;
            }
        };
        let due = DueJob {
            uid: row.uid.clone(),
            schedule,
            slot: row.next_slot_at.unwrap_or(row.next_run_at),
            starting_deadline_seconds: row.starting_deadline_seconds,
            jitter_seconds: row.jitter_seconds,
            policy: match row.concurrency_policy.as_str() {
                "Forbid" => ConcurrencyPolicy::Forbid,
                "Replace" => ConcurrencyPolicy::Replace,
                _ => ConcurrencyPolicy::Allow,
            },
            active: row.active,
        };
        // A job claimed ahead is planned as at its due time (it is not late, nothing coalesces).
        let p = plan(&due, now.max(row.next_run_at));
        if p.due_at <= now {
            stats.due_now += 1;
        }
        stats.job_ids.push(row.id);
        let job_ref = || JobRef {
            namespace: row.namespace.clone(),
            name: row.name.clone(),
            uid: row.uid.clone(),
        };
        match p.outcome {
            Outcome::Missed => stats.events.push(JobEvent {
                job: job_ref(),
                reason: Reason::Missed,
                message: format!(
                    "run {} not dispatched: later than startingDeadlineSeconds ({} slot(s))",
                    rfc3339(p.slot),
                    p.coalesced
                ),
            }),
            Outcome::Skipped => stats.events.push(JobEvent {
                job: job_ref(),
                reason: Reason::Skipped,
                message: format!(
                    "run {} skipped: the previous run is unfinished (concurrencyPolicy: Forbid)",
                    rfc3339(p.slot)
                ),
            }),
            Outcome::Run => {}
        }
        if p.outcome == Outcome::Run && due.active && due.policy == ConcurrencyPolicy::Replace {
            replace_jobs.push(row.id);
        }
        let state = match p.outcome {
            Outcome::Run if shadow => "SHADOW",
            Outcome::Run => "PENDING",
            Outcome::Missed => "MISSED",
            Outcome::Skipped => "SKIPPED",
        };
        e_job.push(row.id);
        e_slot_key.push(rfc3339(p.slot));
        e_task.push(uuid::Uuid::new_v4().to_string());
        e_for.push(p.slot);
        e_trigger.push(p.trigger().to_string());
        e_state.push(state.to_string());
        e_coalesced.push(i32::try_from(p.coalesced).unwrap_or(i32::MAX));
        e_publish_after.push(p.due_at);
        let (runs, missed, skipped) = match p.outcome {
            Outcome::Run => (1, p.coalesced - 1, 0),
            Outcome::Missed => (0, p.coalesced, 0),
            Outcome::Skipped => (0, p.coalesced - 1, 1),
        };
        stats.runs += usize::from(runs == 1);
        stats.missed += usize::try_from(missed).unwrap_or(0);
        stats.skipped += usize::try_from(skipped).unwrap_or(0);
        u_id.push(row.id);
        u_next_run.push(p.next_run);
        u_next_slot.push(p.next_slot);
        u_last.push(Some(p.slot));
        u_runs.push(runs);
        u_missed.push(missed);
        u_skipped.push(skipped);
        u_claimed_until.push(Some(p.due_at));
    }
    if !replace_jobs.is_empty() {
        // Replace: the unfinished runs end here; the caller broadcasts their revocation.
        stats.revoked = sqlx::query_scalar(
            "WITH r AS (
                 UPDATE job_executions SET state = 'REVOKED', finished_at = $2,
                        error = 'replaced by a newer run (concurrencyPolicy: Replace)'
                 WHERE job_id = ANY($1) AND state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
                 RETURNING task_id, job_id
             ), c AS (
                 UPDATE scheduled_jobs j SET failed = j.failed + n.n
                 FROM (SELECT job_id, count(*) AS n FROM r GROUP BY job_id) n WHERE j.id = n.job_id
             )
             SELECT task_id FROM r",
        )
        .bind(&replace_jobs)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO job_executions (job_id, slot_key, task_id, scheduled_for, trigger, state,
                                     coalesced_slots, leader_epoch, finished_at, publish_after)
         SELECT u.job_id, u.slot_key, u.task_id, u.scheduled_for, u.trigger, u.state, u.coalesced, $8,
                CASE WHEN u.state IN ('MISSED', 'SKIPPED') THEN now() END, u.publish_after
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                     $7::int[], $9::timestamptz[])
              AS u(job_id, slot_key, task_id, scheduled_for, trigger, state, coalesced, publish_after)
         ON CONFLICT (job_id, slot_key) DO NOTHING",
    )
    .bind(&e_job)
    .bind(&e_slot_key)
    .bind(&e_task)
    .bind(&e_for)
    .bind(&e_trigger)
    .bind(&e_state)
    .bind(&e_coalesced)
    .bind(epoch)
    .bind(&e_publish_after)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE scheduled_jobs j SET
             next_run_at = u.next_run, next_slot_at = u.next_slot,
             last_run_at = COALESCE(u.last_run, j.last_run_at),
             total_runs = j.total_runs + u.runs, missed = j.missed + u.missed,
             skipped = j.skipped + u.skipped,
             claimed_until = COALESCE(u.claimed_until, j.claimed_until)
         FROM UNNEST($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[],
                     $5::bigint[], $6::bigint[], $7::bigint[], $8::timestamptz[])
              AS u(id, next_run, next_slot, last_run, runs, missed, skipped, claimed_until)
         WHERE j.id = u.id",
    )
    .bind(&u_id)
    .bind(&u_next_run)
    .bind(&u_next_slot)
    .bind(&u_last)
    .bind(&u_runs)
    .bind(&u_missed)
    .bind(&u_skipped)
    .bind(&u_claimed_until)
    .execute(&mut *tx)
    .await?;
    if stats.jobs > 0 {
        crate::failpoint::hit(crate::failpoint::Point::ClaimBeforeCommit);
    }
    tx.commit().await?;
    Ok(stats)
}

/// A claimed execution waiting to be published, with what the message needs (and no more: a
/// burst decodes 100,000 of these while it goes out).
#[derive(Debug, Clone)]
pub struct Pending {
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
}

/// By position, in [`PENDING_BY_IDS`]'s order: the derived `FromRow` finds each column by
/// name, hashing it, for every column of every row.
impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Pending {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Pending {
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
             WHERE e.job_id = j.id AND e.state = 'PENDING' AND e.trigger <> 'manual'
               AND j.starting_deadline_seconds IS NOT NULL
               AND e.scheduled_for + make_interval(secs => LEAST(j.starting_deadline_seconds, 31536000)
                                                            + LEAST(j.jitter_seconds, 86400)) < $1
             RETURNING e.job_id, j.namespace, j.name, j.uid, e.task_id, e.scheduled_for
         ), c AS (
             UPDATE scheduled_jobs j SET missed = j.missed + n.n, total_runs = j.total_runs - n.n
             FROM (SELECT job_id, count(*) AS n FROM m GROUP BY job_id) n WHERE j.id = n.job_id
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

impl Ended {
    pub fn job(&self) -> JobRef {
        JobRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
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
pub async fn pending_by_ids(pool: &PgPool, ids: &[i64]) -> Result<Vec<Pending>, sqlx::Error> {
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
) -> futures::stream::BoxStream<'a, Result<Pending, sqlx::Error>> {
    sqlx::query_as(PENDING_BY_IDS).bind(ids).fetch(pool)
}

/// The columns in [`Pending`]'s order (it is decoded by position).
const PENDING_BY_IDS: &str = "SELECT e.id, e.task_id, e.scheduled_for, e.trigger,
        COALESCE(e.publish_after, e.claimed_at), j.namespace, j.name,
        j.task_name, j.args, j.kwargs, j.queue, j.priority, j.expires_seconds
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

/// Record published runs as DISPATCHED. Returns those it changed (not those settled meanwhile
/// from the publish record), so a burst keeps only ids until it is recorded.
pub async fn mark_dispatched(
    pool: &PgPool,
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<Vec<Dispatched>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE job_executions e SET state = 'DISPATCHED', dispatched_at = $2,
                publish_attempts = e.publish_attempts + 1, error = NULL
         FROM scheduled_jobs j
         WHERE e.id = ANY($1) AND e.state = 'PENDING' AND j.id = e.job_id
         RETURNING e.job_id, j.namespace, j.name, j.task_name, e.task_id, e.scheduled_for,
                   e.trigger",
    )
    .bind(ids)
    .bind(now)
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

/// Record a failed publish; executions claimed before `give_up_before` become DISPATCH_FAILED
/// (counted as failed on their job). Returns those.
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
         ), c AS (
             UPDATE scheduled_jobs j SET failed = j.failed + n.n
             FROM (SELECT job_id, count(*) AS n FROM f WHERE state = 'DISPATCH_FAILED' GROUP BY job_id) n
             WHERE j.id = n.job_id
         )
         SELECT f.job_id, j.namespace, j.name, j.uid, f.task_id, f.scheduled_for
         FROM f JOIN scheduled_jobs j ON j.id = f.job_id WHERE f.state = 'DISPATCH_FAILED'",
    )
    .bind(ids)
    .bind(crate::tracker::decode::cut_front(error, 2048))
    .bind(give_up_before)
    .fetch_all(pool)
    .await
}

/// When [`claim_due`] next has something to claim, right after a pass that claimed everything
/// it could: the earliest job's due time, or for an Allow job `lookahead` before it (but not
/// before its previous run is due). Other jobs become claimable no earlier than the first one's
/// due time, so none is claimed late for waiting on this.
///
/// The result column is named: unnamed, Postgres names a CASE after its ELSE branch
/// (`next_run_at`), and ORDER BY then sorted by the CASE, reading every enabled job (29 ms at
/// 20,000 jobs, once per reconcile during a large set-up) instead of one index entry.
pub async fn next_claim(
    pool: &PgPool,
    lookahead: chrono::Duration,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CASE WHEN concurrency_policy = 'Allow'
                     THEN LEAST(next_run_at, GREATEST(next_run_at - make_interval(secs => $1),
                                                       COALESCE(claimed_until, '-infinity')))
                     ELSE next_run_at END AS claim_at
         FROM scheduled_jobs WHERE enabled ORDER BY next_run_at LIMIT 1",
    )
    .bind(lookahead.num_milliseconds() as f64 / 1000.0)
    .fetch_optional(pool)
    .await
}

/// How many enabled jobs come due by `horizon` (claimed ahead or not): what the claims ahead
/// will have to get through. An index range scan (`scheduled_jobs_due`).
pub async fn coming_due(pool: &PgPool, horizon: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM scheduled_jobs WHERE enabled AND next_run_at <= $1")
        .bind(horizon)
        .fetch_one(pool)
        .await
}

/// A manual run for a trigger value, exactly once per value (the slot key is the value).
/// Returns the job's id if a new execution was claimed.
pub async fn claim_manual(
    pool: &PgPool,
    epoch: i64,
    uid: &str,
    value: &str,
    now: DateTime<Utc>,
    shadow: bool,
) -> Result<Option<i64>, ClaimError> {
    let mut tx = pool.begin().await?;
    check_epoch(&mut tx, epoch).await?;
    let job_id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO job_executions (job_id, slot_key, task_id, scheduled_for, trigger, state, leader_epoch)
         SELECT id, 'manual:' || $2, $3, $4, 'manual', $5, $6 FROM scheduled_jobs
         WHERE uid = $1 AND deleted_at IS NULL
         ON CONFLICT (job_id, slot_key) DO NOTHING
         RETURNING job_id",
    )
    .bind(uid)
    .bind(value)
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(now)
    .bind(if shadow { "SHADOW" } else { "PENDING" })
    .bind(epoch)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE scheduled_jobs SET last_trigger = $2, total_runs = total_runs + $3,
                last_run_at = CASE WHEN $3 > 0 THEN GREATEST(last_run_at, $4) ELSE last_run_at END
         WHERE uid = $1",
    )
    .bind(uid)
    .bind(value)
    .bind(i64::from(job_id.is_some()))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(job_id)
}
