//! Claims: due slots become execution rows, exactly once per (job, slot), in transactions that
//! check the caller's fencing epoch. Only the SQL lives here; what each due job becomes is
//! planned by `dispatch::plan` (pure), between [`ClaimTx::due_jobs`] and the writes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("fenced: the leader epoch is now {current}, ours is {ours}")]
    Fenced { ours: i64, current: i64 },
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// Lock the leader row for the transaction and check the epoch is ours. A new leader's bump
/// waits for this transaction, so everything committed here happened before it.
async fn check_epoch(tx: &mut Transaction<'_, Postgres>, ours: i64) -> Result<(), ClaimError> {
    let current: i64 =
        sqlx::query_scalar("SELECT epoch FROM scheduler_leader WHERE id = 1 FOR SHARE")
            .fetch_one(&mut **tx)
            .await?;
    if current != ours {
        return Err(ClaimError::Fenced { ours, current });
    }
    Ok(())
}

/// Begin a transaction as the leader of `epoch` (the fencing row locked for it):
/// [`ClaimError::Fenced`] if a newer leader exists. For writes only the leader may make.
pub async fn begin_fenced(
    pool: &PgPool,
    epoch: i64,
) -> Result<Transaction<'static, Postgres>, ClaimError> {
    let mut tx = pool.begin().await?;
    check_epoch(&mut tx, epoch).await?;
    Ok(tx)
}

/// A due job, as the claim query returns it (the stored schedule still to be read).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueRow {
    pub id: i64,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub schedule_config: Value,
    pub time_zone: String,
    pub start_time: Option<DateTime<Utc>>,
    pub anchor_time: DateTime<Utc>,
    pub next_run_at: DateTime<Utc>,
    pub next_slot_at: Option<DateTime<Utc>>,
    pub concurrency_policy: String,
    pub starting_deadline_seconds: Option<i64>,
    pub jitter_seconds: i64,
    /// An earlier run is unfinished (only computed for Forbid and Replace jobs).
    pub active: bool,
    /// Paused by its health policy: its slots are recorded as SKIPPED (reason `Paused`).
    pub paused: bool,
    /// `endTime` and `maxRuns`, and the scheduled runs so far (what `maxRuns` counts).
    pub end_time: Option<DateTime<Utc>>,
    pub max_runs: Option<i64>,
    pub scheduled_runs: i64,
    /// The job's calendars, in its order, as read with the claim: a JSON array of
    /// `{"name", "spec", "invalid"}` (`spec` null for a calendar not stored, `invalid` the
    /// reconciler's message for an invalid one); `None` when it names none.
    pub calendars: Option<Value>,
}

#[cfg(test)]
impl DueRow {
    /// A due Allow job of team-a named `job-<id>` (the dispatch tests' common case; each
    /// test changes what it is about).
    pub(crate) fn for_test(
        id: i64,
        schedule_config: Value,
        anchor_time: DateTime<Utc>,
        next_run_at: DateTime<Utc>,
    ) -> DueRow {
        DueRow {
            id,
            uid: format!("uid-{id}"),
            namespace: "team-a".into(),
            name: format!("job-{id}"),
            schedule_config,
            time_zone: "UTC".into(),
            start_time: None,
            anchor_time,
            next_run_at,
            next_slot_at: None,
            concurrency_policy: "Allow".into(),
            starting_deadline_seconds: None,
            jitter_seconds: 0,
            active: false,
            paused: false,
            end_time: None,
            max_runs: None,
            scheduled_runs: 0,
            calendars: None,
        }
    }
}

/// One execution row a claim inserts (a run, or a MISSED / SKIPPED slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewExecution {
    pub job_id: i64,
    pub slot_key: String,
    pub task_id: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    /// PENDING, SHADOW, MISSED or SKIPPED.
    pub state: &'static str,
    pub coalesced: i32,
    pub publish_after: DateTime<Utc>,
    /// Why a slot was not run (`Paused`, `Calendar: <name>: <reason>`), shown as the
    /// execution's error.
    pub error: Option<String>,
}

/// How a claim moves a job on. All `None` and zero parks the job (its schedule is unreadable).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobAdvance {
    pub job_id: i64,
    pub next_run: Option<DateTime<Utc>>,
    pub next_slot: Option<DateTime<Utc>>,
    pub last_run: Option<DateTime<Utc>>,
    pub runs: i64,
    pub missed: i64,
    pub skipped: i64,
    pub claimed_until: Option<DateTime<Utc>>,
    /// 1 when this claim's row is a MISSED slot: it extends the job's failure streak.
    pub failed_run: i64,
    /// A slot a calendar excluded: the job was not due then, so its staleness counts from
    /// here (`health_baseline_at` moves forward to it).
    pub excused_at: Option<DateTime<Utc>>,
}

/// A claim transaction: the epoch is checked when it begins, and nothing is visible until
/// [`ClaimTx::commit`]. Dropped without a commit, it rolls back.
pub struct ClaimTx {
    tx: Transaction<'static, Postgres>,
    epoch: i64,
}

impl ClaimTx {
    /// Begin a claim as the leader of `epoch`; [`ClaimError::Fenced`] if a newer leader exists.
    pub async fn begin(pool: &PgPool, epoch: i64) -> Result<ClaimTx, ClaimError> {
        let tx = begin_fenced(pool, epoch).await?;
        Ok(ClaimTx { tx, epoch })
    }

    /// Lock up to `limit` enabled jobs due by `now`, or (under `concurrencyPolicy: Allow`, not
    /// claimed ahead yet, not paused) due by `horizon`, earliest first. A paused job is judged
    /// at its slot, so a resume just before the slot is in time for it. Locked rows other replicas hold are
    /// skipped.
    ///
    /// Durations from the row are clamped to their bounds (one year) inside the query: a row
    /// stored before the bounds existed must not make the statement fail ("interval out of
    /// range") for every job in the batch.
    pub async fn due_jobs(
        &mut self,
        now: DateTime<Utc>,
        limit: i64,
        horizon: DateTime<Utc>,
    ) -> Result<Vec<DueRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT j.id, j.uid, j.namespace, j.name, j.schedule_config, j.time_zone, j.start_time,
                    j.anchor_time, j.next_run_at, j.next_slot_at, j.concurrency_policy,
                    j.starting_deadline_seconds, j.jitter_seconds,
                    (j.concurrency_policy <> 'Allow' AND EXISTS (
                        SELECT 1 FROM job_executions e
                        WHERE e.job_id = j.id AND e.state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
                          AND e.claimed_at > $1 - make_interval(secs => LEAST(j.execution_timeout_seconds, 31536000)))) AS active,
                    j.paused_at IS NOT NULL AS paused, j.end_time, j.max_runs, j.scheduled_runs,
                    CASE WHEN cardinality(j.calendars) > 0 THEN
                        (SELECT jsonb_agg(jsonb_build_object('name', n.name, 'spec', c.spec,
                                                             'invalid', c.invalid_message)
                                          ORDER BY n.ord)
                         FROM unnest(j.calendars) WITH ORDINALITY AS n(name, ord)
                         LEFT JOIN schedule_calendars c ON c.name = n.name)
                    END AS calendars
             FROM scheduled_jobs j
             WHERE j.enabled AND j.next_run_at <= $3
               AND (j.next_run_at <= $1
                    OR (j.concurrency_policy = 'Allow' AND j.paused_at IS NULL
                        AND COALESCE(j.claimed_until, '-infinity') <= $1))
             ORDER BY j.next_run_at
             LIMIT $2
             FOR UPDATE OF j SKIP LOCKED",
        )
        .bind(now)
        .bind(limit)
        .bind(horizon)
        .fetch_all(&mut *self.tx)
        .await
    }

    /// `concurrencyPolicy: Replace`: the unfinished runs of these jobs end as REVOKED (counted as
    /// failed on their job). Returns their Celery task ids, for the caller to broadcast.
    pub async fn revoke_unfinished(
        &mut self,
        job_ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, sqlx::Error> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(
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
        .bind(job_ids)
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await
    }

    /// Insert the batch's executions in one statement (UNNEST of column arrays, not one
    /// statement per job). A (job, slot) that already has one keeps it. A run (PENDING,
    /// SHADOW) records its job's arguments as of its claim: what it is published with.
    pub async fn insert_executions(&mut self, rows: &[NewExecution]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&NewExecution) -> String| rows.iter().map(f).collect::<Vec<_>>();
        let times = |f: fn(&NewExecution) -> DateTime<Utc>| rows.iter().map(f).collect::<Vec<_>>();
        let job_ids: Vec<i64> = rows.iter().map(|r| r.job_id).collect();
        let coalesced: Vec<i32> = rows.iter().map(|r| r.coalesced).collect();
        sqlx::query(
            "INSERT INTO job_executions (job_id, slot_key, task_id, scheduled_for, trigger, state,
                                         coalesced_slots, leader_epoch, finished_at, publish_after,
                                         error, args, kwargs)
             SELECT u.job_id, u.slot_key, u.task_id, u.scheduled_for, u.trigger, u.state, u.coalesced, $8,
                    CASE WHEN u.state IN ('MISSED', 'SKIPPED') THEN now() END, u.publish_after,
                    u.error,
                    CASE WHEN u.state IN ('PENDING', 'SHADOW') THEN j.args END,
                    CASE WHEN u.state IN ('PENDING', 'SHADOW') THEN j.kwargs END
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                         $7::int[], $9::timestamptz[], $10::text[])
                  AS u(job_id, slot_key, task_id, scheduled_for, trigger, state, coalesced, publish_after,
                       error)
             JOIN scheduled_jobs j ON j.id = u.job_id
             WHERE true -- a JOIN's ON right before ON CONFLICT would read ambiguously
             ON CONFLICT (job_id, slot_key) DO NOTHING",
        )
        .bind(&job_ids)
        .bind(col(|r| r.slot_key.clone()))
        .bind(col(|r| r.task_id.clone()))
        .bind(times(|r| r.scheduled_for))
        .bind(col(|r| r.trigger.clone()))
        .bind(col(|r| r.state.to_string()))
        .bind(&coalesced)
        .bind(self.epoch)
        .bind(times(|r| r.publish_after))
        .bind(rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Move the batch's jobs on (next run, counters) in one statement.
    pub async fn advance_jobs(&mut self, rows: &[JobAdvance]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.job_id).collect();
        let times =
            |f: fn(&JobAdvance) -> Option<DateTime<Utc>>| rows.iter().map(f).collect::<Vec<_>>();
        let counts = |f: fn(&JobAdvance) -> i64| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "UPDATE scheduled_jobs j SET
                 next_run_at = u.next_run, next_slot_at = u.next_slot,
                 last_run_at = COALESCE(u.last_run, j.last_run_at),
                 total_runs = j.total_runs + u.runs, missed = j.missed + u.missed,
                 scheduled_runs = j.scheduled_runs + u.runs,
                 last_scheduled_run_at = CASE WHEN u.runs > 0 THEN u.last_run
                                              ELSE j.last_scheduled_run_at END,
                 skipped = j.skipped + u.skipped,
                 claimed_until = COALESCE(u.claimed_until, j.claimed_until),
                 consecutive_failures = j.consecutive_failures + u.failed_run,
                 health_baseline_at = GREATEST(j.health_baseline_at, u.excused_at)
             FROM UNNEST($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[],
                         $5::bigint[], $6::bigint[], $7::bigint[], $8::timestamptz[], $9::bigint[],
                         $10::timestamptz[])
                  AS u(id, next_run, next_slot, last_run, runs, missed, skipped, claimed_until,
                       failed_run, excused_at)
             WHERE j.id = u.id",
        )
        .bind(&ids)
        .bind(times(|r| r.next_run))
        .bind(times(|r| r.next_slot))
        .bind(times(|r| r.last_run))
        .bind(counts(|r| r.runs))
        .bind(counts(|r| r.missed))
        .bind(counts(|r| r.skipped))
        .bind(times(|r| r.claimed_until))
        .bind(counts(|r| r.failed_run))
        .bind(times(|r| r.excused_at))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// A manual run as asked for: its key (the trigger value without its `by=` part), who asked,
/// and its arguments when they differ from the job's (overrides applied and validated).
#[derive(Debug, Clone, Copy)]
pub struct ManualRun<'a> {
    /// The whole annotation value (recorded as the job's `last_trigger`).
    pub value: &'a str,
    pub request_id: &'a str,
    pub requested_by: Option<&'a str>,
    pub args: Option<&'a Value>,
    pub kwargs: Option<&'a Value>,
}

/// A manual run for a trigger value, exactly once per request id (the slot key is
/// `manual:<request id>`). Returns the job's id if a new execution was claimed.
pub async fn claim_manual(
    pool: &PgPool,
    epoch: i64,
    uid: &str,
    run: ManualRun<'_>,
    now: DateTime<Utc>,
    shadow: bool,
) -> Result<Option<i64>, ClaimError> {
    let mut tx = pool.begin().await?;
    check_epoch(&mut tx, epoch).await?;
    let job_id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO job_executions (job_id, slot_key, task_id, scheduled_for, trigger, state,
                                     leader_epoch, args, kwargs, requested_by)
         SELECT id, 'manual:' || $2, $3, $4, 'manual', $5, $6, COALESCE($7, args),
                COALESCE($8, kwargs), $9
         FROM scheduled_jobs
         WHERE uid = $1 AND deleted_at IS NULL
         ON CONFLICT (job_id, slot_key) DO NOTHING
         RETURNING job_id",
    )
    .bind(uid)
    .bind(run.request_id)
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(now)
    .bind(if shadow { "SHADOW" } else { "PENDING" })
    .bind(epoch)
    .bind(run.args)
    .bind(run.kwargs)
    .bind(run.requested_by)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE scheduled_jobs SET last_trigger = $2, total_runs = total_runs + $3,
                last_run_at = CASE WHEN $3 > 0 THEN GREATEST(last_run_at, $4) ELSE last_run_at END
         WHERE uid = $1",
    )
    .bind(uid)
    .bind(run.value)
    .bind(i64::from(job_id.is_some()))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(job_id)
}

/// A trigger value that asked for arguments its job may not run with: remembered as seen, so
/// it is not judged again, and nothing runs.
pub async fn refuse_manual(pool: &PgPool, uid: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE scheduled_jobs SET last_trigger = $2 WHERE uid = $1")
        .bind(uid)
        .bind(value)
        .execute(pool)
        .await?;
    Ok(())
}

/// When a claim next has something to claim, right after a pass that claimed everything it
/// could: the earliest job's due time, or for an Allow job `lookahead` before it (but not before
/// its previous run is due). Other jobs become claimable no earlier than the first one's due
/// time, so none is claimed late for waiting on this.
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
