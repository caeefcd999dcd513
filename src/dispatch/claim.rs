//! Claims: due slots become execution rows, exactly once per (job, slot), in transactions that
//! check the caller's fencing epoch. The outbox: claimed rows waiting to be published.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::plan::{DueJob, Outcome, plan};
use crate::{api::ConcurrencyPolicy, schedule::JobSchedule};

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
}

/// Claim up to `limit` due jobs in one transaction. `shadow` records SHADOW instead of PENDING.
pub async fn claim_due(
    pool: &PgPool,
    epoch: i64,
    limit: i64,
    now: DateTime<Utc>,
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
                      AND e.claimed_at > $1 - make_interval(secs => j.execution_timeout_seconds))) AS active
         FROM scheduled_jobs j
         WHERE j.enabled AND j.next_run_at <= $1
         ORDER BY j.next_run_at
         LIMIT $2
         FOR UPDATE OF j SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
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
    ) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (
        mut u_id,
        mut u_next_run,
        mut u_next_slot,
        mut u_last,
        mut u_runs,
        mut u_missed,
        mut u_skipped,
    ) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
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
                u_id.push(row.id);
                u_next_run.push(None);
                u_next_slot.push(None);
                u_last.push(None);
                u_runs.push(0i64);
                u_missed.push(0i64);
                u_skipped.push(0i64);
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
        let p = plan(&due, now);
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
        e_slot_key.push(crate::schedule::rfc3339(p.slot));
        e_task.push(uuid::Uuid::new_v4().to_string());
        e_for.push(p.slot);
        e_trigger.push(p.trigger().to_string());
        e_state.push(state.to_string());
        e_coalesced.push(i32::try_from(p.coalesced).unwrap_or(i32::MAX));
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
    }
    if !replace_jobs.is_empty() {
        // Replace: the unfinished runs end here; the caller broadcasts their revocation.
        stats.revoked = sqlx::query_scalar(
            "UPDATE job_executions SET state = 'REVOKED', finished_at = $2,
                    error = 'replaced by a newer run (concurrencyPolicy: Replace)'
             WHERE job_id = ANY($1) AND state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
             RETURNING task_id",
        )
        .bind(&replace_jobs)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO job_executions (job_id, slot_key, task_id, scheduled_for, trigger, state,
                                     coalesced_slots, leader_epoch, finished_at)
         SELECT u.job_id, u.slot_key, u.task_id, u.scheduled_for, u.trigger, u.state, u.coalesced, $8,
                CASE WHEN u.state IN ('MISSED', 'SKIPPED') THEN now() END
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::int[])
              AS u(job_id, slot_key, task_id, scheduled_for, trigger, state, coalesced)
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
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE scheduled_jobs j SET
             next_run_at = u.next_run, next_slot_at = u.next_slot,
             last_run_at = COALESCE(u.last_run, j.last_run_at),
             total_runs = j.total_runs + u.runs, missed = j.missed + u.missed,
             skipped = j.skipped + u.skipped
         FROM UNNEST($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[],
                     $5::bigint[], $6::bigint[], $7::bigint[])
              AS u(id, next_run, next_slot, last_run, runs, missed, skipped)
         WHERE j.id = u.id",
    )
    .bind(&u_id)
    .bind(&u_next_run)
    .bind(&u_next_slot)
    .bind(&u_last)
    .bind(&u_runs)
    .bind(&u_missed)
    .bind(&u_skipped)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(stats)
}

/// A claimed execution waiting to be published, with what the message needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub task_id: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    pub claimed_at: DateTime<Utc>,
    pub namespace: String,
    pub name: String,
    pub task_name: String,
    pub args: Value,
    pub kwargs: Value,
    pub queue: String,
    pub priority: Option<i16>,
    pub expires_seconds: Option<i64>,
}

/// Claimed executions that could not be published within their job's `startingDeadlineSeconds`
/// (broker down, no leader) are not sent late: they become MISSED.
pub async fn expire_pending(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE job_executions e SET state = 'MISSED', finished_at = $1,
                error = 'not published within startingDeadlineSeconds'
         FROM scheduled_jobs j
         WHERE e.job_id = j.id AND e.state = 'PENDING' AND e.trigger <> 'manual'
           AND j.starting_deadline_seconds IS NOT NULL
           AND e.scheduled_for + make_interval(secs => j.starting_deadline_seconds + j.jitter_seconds) < $1",
    )
    .bind(now)
    .execute(pool)
    .await?;
    if done.rows_affected() > 0 {
        sqlx::query(
            "UPDATE scheduled_jobs j SET missed = j.missed + m.n, total_runs = j.total_runs - m.n
             FROM (SELECT job_id, count(*) AS n FROM job_executions
                   WHERE state = 'MISSED' AND finished_at = $1 AND claimed_at < $1 GROUP BY job_id) m
             WHERE j.id = m.job_id",
        )
        .bind(now)
        .execute(pool)
        .await?;
    }
    Ok(done.rows_affected())
}

/// The oldest PENDING executions (the outbox), whoever claimed them.
pub async fn pending(pool: &PgPool, limit: i64) -> Result<Vec<Pending>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.task_id, e.scheduled_for, e.trigger, e.claimed_at, j.namespace, j.name,
                j.task_name, j.args, j.kwargs, j.queue, j.priority, j.expires_seconds
         FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE e.state = 'PENDING'
         ORDER BY e.id
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn mark_dispatched(
    pool: &PgPool,
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job_executions SET state = 'DISPATCHED', dispatched_at = $2,
                publish_attempts = publish_attempts + 1, error = NULL
         WHERE id = ANY($1) AND state = 'PENDING'",
    )
    .bind(ids)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// Record a failed publish; executions claimed before `give_up_before` become DISPATCH_FAILED.
pub async fn mark_publish_failed(
    pool: &PgPool,
    ids: &[i64],
    error: &str,
    give_up_before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let states: Vec<String> = sqlx::query_scalar(
        "UPDATE job_executions SET publish_attempts = publish_attempts + 1, error = $2,
                state = CASE WHEN claimed_at < $3 THEN 'DISPATCH_FAILED' ELSE state END,
                finished_at = CASE WHEN claimed_at < $3 THEN now() ELSE finished_at END
         WHERE id = ANY($1) AND state = 'PENDING'
         RETURNING state",
    )
    .bind(ids)
    .bind(error)
    .bind(give_up_before)
    .fetch_all(pool)
    .await?;
    Ok(states.iter().filter(|s| *s == "DISPATCH_FAILED").count() as u64)
}

/// When the next enabled job is due.
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(next_run_at) FROM scheduled_jobs WHERE enabled")
        .fetch_one(pool)
        .await
}

/// A manual run for a trigger value, exactly once per value (the slot key is the value).
/// Returns whether a new execution was claimed.
pub async fn claim_manual(
    pool: &PgPool,
    epoch: i64,
    uid: &str,
    value: &str,
    now: DateTime<Utc>,
    shadow: bool,
) -> Result<bool, ClaimError> {
    let mut tx = pool.begin().await?;
    check_epoch(&mut tx, epoch).await?;
    let inserted = sqlx::query(
        "INSERT INTO job_executions (job_id, slot_key, task_id, scheduled_for, trigger, state, leader_epoch)
         SELECT id, 'manual:' || $2, $3, $4, 'manual', $5, $6 FROM scheduled_jobs
         WHERE uid = $1 AND deleted_at IS NULL
         ON CONFLICT (job_id, slot_key) DO NOTHING",
    )
    .bind(uid)
    .bind(value)
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(now)
    .bind(if shadow { "SHADOW" } else { "PENDING" })
    .bind(epoch)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE scheduled_jobs SET last_trigger = $2, total_runs = total_runs + $3 WHERE uid = $1",
    )
    .bind(uid)
    .bind(value)
    .bind(i64::try_from(inserted).unwrap_or(0))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(inserted > 0)
}
