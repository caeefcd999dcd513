//! What to do with due jobs: [`plan`] for one job, a pure function of (job, now), and
//! [`plan_batch`] for a claim batch (what its transaction writes). No clock reads, no I/O.
//!
//! Every sum of a time and a duration here is checked: a stored row may carry values written
//! before today's bounds existed, and a panic in the claim loop would take down every leader
//! that reads the same row.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    api::ConcurrencyPolicy,
    schedule::{JobSchedule, rfc3339},
    status::{JobEvent, JobRef, Reason},
    store::claims::{DueRow, JobAdvance, NewExecution},
};

/// Slots coalesced in one pass at most (the rest are skipped arithmetically).
const MAX_COALESCE_STEPS: usize = 100_000;

/// A due job, as the claim query returns it.
#[derive(Debug, Clone)]
pub struct DueJob {
    pub uid: String,
    pub schedule: JobSchedule,
    /// The slot `next_run_at` was computed for.
    pub slot: DateTime<Utc>,
    pub starting_deadline_seconds: Option<i64>,
    pub jitter_seconds: i64,
    pub policy: ConcurrencyPolicy,
    /// Whether an earlier execution is still unfinished (for Forbid/Replace).
    pub active: bool,
    /// Paused by its health policy.
    pub paused: bool,
    /// `maxRuns`, and the scheduled runs so far (`endTime` is in `schedule`).
    pub max_runs: Option<i64>,
    pub scheduled_runs: i64,
}

impl DueJob {
    /// Scheduled runs left before `maxRuns` (`None`: no limit).
    fn runs_left(&self) -> Option<i64> {
        self.max_runs
            .map(|m| m.saturating_sub(self.scheduled_runs).max(0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Claim and publish.
    Run,
    /// Too late for `startingDeadlineSeconds`.
    Missed,
    /// `concurrencyPolicy: Forbid` and the previous run is unfinished.
    Skipped,
    /// Paused by its health policy (recorded as SKIPPED, reason `Paused`).
    Paused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The slot the execution row is for (the latest due slot when several were missed).
    pub slot: DateTime<Utc>,
    pub outcome: Outcome,
    /// How many slots this one execution stands for (> 1 after downtime).
    pub coalesced: i64,
    /// The following slot and when to dispatch it (slot + jitter); `None` when the schedule ends.
    pub next_slot: Option<DateTime<Utc>>,
    pub next_run: Option<DateTime<Utc>>,
    /// When this run is due: its slot plus the job's jitter.
    pub due_at: DateTime<Utc>,
}

impl Plan {
    pub fn trigger(&self) -> &'static str {
        if self.coalesced > 1 {
            "catchup"
        } else {
            "schedule"
        }
    }
}

pub fn plan(job: &DueJob, now: DateTime<Utc>) -> Plan {
    // Coalesce every slot that is already due into the latest one.
    let mut latest = job.slot;
    let mut coalesced: i64 = 1;
    let mut steps: usize = 0;
    while let Some(s) = job.schedule.next_after(latest) {
        if s > now || steps >= MAX_COALESCE_STEPS {
            break;
        }
        latest = s;
        coalesced = coalesced.saturating_add(1);
        steps = steps.saturating_add(1);
    }
    let jitter = |s: DateTime<Utc>| crate::schedule::jitter(&job.uid, s, job.jitter_seconds);
    let mut next_slot = job.schedule.next_after(latest.max(now));
    let due_at = latest.checked_add_signed(jitter(latest)).unwrap_or(latest);
    let late = now.signed_duration_since(due_at);
    // A deadline too large for a TimeDelta never passes (one too negative always has).
    let deadline = |d: i64| {
        TimeDelta::try_seconds(d).unwrap_or(if d < 0 {
            TimeDelta::MIN
        } else {
            TimeDelta::MAX
        })
    };
    let outcome = match job.starting_deadline_seconds {
        // First: a paused job's slot is not a failure, however late.
        _ if job.paused => Outcome::Paused,
        Some(d) if late > deadline(d) => Outcome::Missed,
        _ if job.active && job.policy == ConcurrencyPolicy::Forbid => Outcome::Skipped,
        _ => Outcome::Run,
    };
    // maxRuns: after the last run there is no next slot (SKIPPED and MISSED slots do not count).
    if outcome == Outcome::Run && job.runs_left().is_some_and(|left| left <= 1) {
        next_slot = None;
    }
    // A slot so close to the end of time that its jitter overflows has no next run.
    let next_run = next_slot.and_then(|s| s.checked_add_signed(jitter(s)));
    Plan {
        slot: latest,
        outcome,
        coalesced,
        next_slot,
        next_run,
        due_at,
    }
}

/// What one claim batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClaimStats {
    pub jobs: usize,
    pub runs: usize,
    pub missed: usize,
    pub skipped: usize,
    /// Jobs parked because their stored schedule cannot be read.
    pub unreadable: usize,
    /// Celery task ids replaced under `concurrencyPolicy: Replace`, to revoke.
    pub revoked: Vec<String>,
    /// Jobs whose status changed.
    pub job_ids: Vec<i64>,
    /// Runs (or MISSED/SKIPPED slots) already due; the rest were claimed ahead of their time.
    pub due_now: usize,
    /// MISSED and SKIPPED slots, and parked jobs, for Events.
    pub events: Vec<JobEvent>,
}

/// What a claim transaction writes for a batch of due jobs, planned without Postgres.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// One row per job: its run, or its MISSED / SKIPPED slot (none for a parked job).
    pub executions: Vec<NewExecution>,
    /// How each job moves on (a parked job: no next run).
    pub advances: Vec<JobAdvance>,
    /// Jobs under `concurrencyPolicy: Replace` whose unfinished runs this batch's runs replace.
    pub replace: Vec<i64>,
    pub stats: ClaimStats,
}

/// Plan a claim batch: each due row becomes an execution row and a job update. `shadow` records
/// runs as SHADOW instead of PENDING; `task_id` names each new execution (a random UUID in
/// production). A row whose stored schedule cannot be read parks its job with an Event rather
/// than failing the batch (it cannot happen for rows the reconciler wrote).
pub fn plan_batch(
    rows: Vec<DueRow>,
    now: DateTime<Utc>,
    shadow: bool,
    mut task_id: impl FnMut() -> String,
) -> BatchPlan {
    let mut out = BatchPlan::default();
    out.stats.jobs = rows.len();
    for row in rows {
        let job = JobRef {
            namespace: row.namespace.clone(),
            name: row.name.clone(),
            uid: row.uid.clone(),
        };
        let schedule = match JobSchedule::from_stored(
            &row.schedule_config,
            &row.time_zone,
            row.start_time,
            row.anchor_time,
        ) {
            Ok(s) => s.with_end(row.end_time),
            Err(e) => {
                out.stats.unreadable = out.stats.unreadable.saturating_add(1);
                out.stats.events.push(JobEvent {
                    job,
                    reason: Reason::DispatchFailed,
                    message: format!(
                        "not scheduled: its stored schedule cannot be read ({e}); re-apply the job"
                    ),
                });
                out.advances.push(JobAdvance {
                    job_id: row.id,
                    ..Default::default()
                });
                continue;
            }
        };
        let due = DueJob {
            uid: row.uid,
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
            paused: row.paused,
            max_runs: row.max_runs,
            scheduled_runs: row.scheduled_runs,
        };
        // maxRuns already reached, or the slot past endTime (either lowered after this slot was
        // planned): nothing runs, the job stops, and its status shows it complete.
        if due.runs_left() == Some(0) || due.schedule.end().is_some_and(|end| due.slot > end) {
            out.stats.job_ids.push(row.id);
            out.advances.push(JobAdvance {
                job_id: row.id,
                ..Default::default()
            });
            continue;
        }
        // A job claimed ahead is planned as at its due time (it is not late, nothing coalesces).
        let p = plan(&due, now.max(row.next_run_at));
        if p.due_at <= now {
            out.stats.due_now = out.stats.due_now.saturating_add(1);
        }
        let run_state = if shadow { "SHADOW" } else { "PENDING" };
        out.add(row.id, job, &due, &p, run_state, task_id());
    }
    out
}

impl BatchPlan {
    /// Record one planned job; `run_state` is what a run is recorded as (PENDING or SHADOW).
    fn add(
        &mut self,
        job_id: i64,
        job: JobRef,
        due: &DueJob,
        p: &Plan,
        run_state: &'static str,
        task_id: String,
    ) {
        let stats = &mut self.stats;
        stats.job_ids.push(job_id);
        let (state, runs, missed, skipped) = match p.outcome {
            Outcome::Run => (run_state, 1, p.coalesced.saturating_sub(1), 0),
            Outcome::Missed => ("MISSED", 0, p.coalesced, 0),
            Outcome::Skipped | Outcome::Paused => ("SKIPPED", 0, p.coalesced.saturating_sub(1), 1),
        };
        match p.outcome {
            Outcome::Missed => stats.events.push(JobEvent {
                job,
                reason: Reason::Missed,
                message: format!(
                    "run {} not dispatched: later than startingDeadlineSeconds ({} slot(s))",
                    rfc3339(p.slot),
                    p.coalesced
                ),
            }),
            Outcome::Skipped => stats.events.push(JobEvent {
                job,
                reason: Reason::Skipped,
                message: format!(
                    "run {} skipped: the previous run is unfinished (concurrencyPolicy: Forbid)",
                    rfc3339(p.slot)
                ),
            }),
            Outcome::Paused => stats.events.push(JobEvent {
                job,
                reason: Reason::Skipped,
                message: format!(
                    "run {} skipped: the job is paused by its health policy (resume with the kubebeat.io/resume annotation)",
                    rfc3339(p.slot)
                ),
            }),
            Outcome::Run if due.active && due.policy == ConcurrencyPolicy::Replace => {
                self.replace.push(job_id)
            }
            Outcome::Run => {}
        }
        stats.runs = stats.runs.saturating_add(usize::from(runs == 1));
        stats.missed = stats
            .missed
            .saturating_add(usize::try_from(missed).unwrap_or(0));
        stats.skipped = stats
            .skipped
            .saturating_add(usize::try_from(skipped).unwrap_or(0));
        self.executions.push(NewExecution {
            job_id,
            slot_key: rfc3339(p.slot),
            task_id,
            scheduled_for: p.slot,
            trigger: p.trigger().to_string(),
            state,
            coalesced: i32::try_from(p.coalesced).unwrap_or(i32::MAX),
            publish_after: p.due_at,
            error: (p.outcome == Outcome::Paused).then_some("Paused"),
        });
        self.advances.push(JobAdvance {
            job_id,
            next_run: p.next_run,
            next_slot: p.next_slot,
            last_run: Some(p.slot),
            runs,
            missed,
            skipped,
            claimed_until: Some(p.due_at),
            failed_run: i64::from(p.outcome == Outcome::Missed),
        });
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "plan_end_tests.rs"]
mod end_tests;
