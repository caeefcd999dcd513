//! What to do with one due job: a pure function of (job, now). No clock reads.
//!
//! Every sum of a time and a duration here is checked: a stored row may carry values written
//! before today's bounds existed, and a panic in the claim loop would take down every leader
//! that reads the same row.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, TimeDelta, Utc};

use crate::{api::ConcurrencyPolicy, schedule::JobSchedule};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Claim and publish.
    Run,
    /// Too late for `startingDeadlineSeconds`.
    Missed,
    /// `concurrencyPolicy: Forbid` and the previous run is unfinished.
    Skipped,
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
    let next_slot = job.schedule.next_after(latest.max(now));
    // A slot so close to the end of time that its jitter overflows has no next run.
    let next_run = next_slot.and_then(|s| s.checked_add_signed(jitter(s)));
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
        Some(d) if late > deadline(d) => Outcome::Missed,
        _ if job.active && job.policy == ConcurrencyPolicy::Forbid => Outcome::Skipped,
        _ => Outcome::Run,
    };
    Plan {
        slot: latest,
        outcome,
        coalesced,
        next_slot,
        next_run,
        due_at,
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::api::{IntervalSchedule, Schedule};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn every(seconds: i64) -> JobSchedule {
        let s = Schedule {
            interval: Some(IntervalSchedule {
                hours: 0,
                minutes: 0,
                seconds,
            }),
            ..Default::default()
        };
        JobSchedule::from_spec(&s, None, None, t("2026-01-01T00:00:00Z")).expect("valid")
    }

    fn job(seconds: i64, slot: &str) -> DueJob {
        DueJob {
            uid: "u".into(),
            schedule: every(seconds),
            slot: t(slot),
            starting_deadline_seconds: None,
            jitter_seconds: 0,
            policy: ConcurrencyPolicy::Allow,
            active: false,
        }
    }

    #[test]
    fn on_time_run() {
        let p = plan(
            &job(10, "2026-01-01T00:00:10Z"),
            t("2026-01-01T00:00:10.050Z"),
        );
        assert_eq!(p.outcome, Outcome::Run);
        assert_eq!(
            (p.slot, p.coalesced, p.trigger()),
            (t("2026-01-01T00:00:10Z"), 1, "schedule")
        );
        assert_eq!(p.next_slot, Some(t("2026-01-01T00:00:20Z")));
        assert_eq!(p.next_run, p.next_slot);
    }

    #[test]
    fn downtime_coalesces_into_one_run() {
        // Down from 00:00:10 to 00:01:05: six slots due, one run for the latest.
        let p = plan(&job(10, "2026-01-01T00:00:10Z"), t("2026-01-01T00:01:05Z"));
        assert_eq!(p.outcome, Outcome::Run);
        assert_eq!(
            (p.slot, p.coalesced, p.trigger()),
            (t("2026-01-01T00:01:00Z"), 6, "catchup")
        );
        assert_eq!(p.next_slot, Some(t("2026-01-01T00:01:10Z")));
    }

    #[test]
    fn deadline_misses() {
        let mut j = job(60, "2026-01-01T00:01:00Z");
        j.starting_deadline_seconds = Some(5);
        assert_eq!(plan(&j, t("2026-01-01T00:01:04Z")).outcome, Outcome::Run);
        let p = plan(&j, t("2026-01-01T00:01:06Z"));
        assert_eq!(p.outcome, Outcome::Missed);
        assert_eq!(p.next_slot, Some(t("2026-01-01T00:02:00Z")));
        // After a long outage the latest slot decides: still within its deadline, it runs.
        let p = plan(&j, t("2026-01-01T00:10:03Z"));
        assert_eq!(
            (p.outcome, p.coalesced, p.slot),
            (Outcome::Run, 10, t("2026-01-01T00:10:00Z"))
        );
    }

    #[test]
    fn forbid_skips_while_active() {
        let mut j = job(10, "2026-01-01T00:00:10Z");
        j.policy = ConcurrencyPolicy::Forbid;
        j.active = true;
        assert_eq!(
            plan(&j, t("2026-01-01T00:00:10Z")).outcome,
            Outcome::Skipped
        );
        j.active = false;
        assert_eq!(plan(&j, t("2026-01-01T00:00:10Z")).outcome, Outcome::Run);
        j.policy = ConcurrencyPolicy::Allow;
        j.active = true;
        assert_eq!(plan(&j, t("2026-01-01T00:00:10Z")).outcome, Outcome::Run);
    }

    #[test]
    fn jitter_delays_the_next_run_only() {
        let mut j = job(60, "2026-01-01T00:01:00Z");
        j.jitter_seconds = 30;
        let p = plan(&j, t("2026-01-01T00:01:40Z"));
        let next_slot = p.next_slot.expect("next");
        let delay = p.next_run.expect("run") - next_slot;
        assert!(
            delay >= TimeDelta::zero() && delay < TimeDelta::seconds(30),
            "{delay:?}"
        );
        assert_eq!(
            delay,
            crate::schedule::jitter("u", next_slot, 30),
            "deterministic"
        );
    }

    #[test]
    fn extreme_values_plan_without_panicking() {
        // Values no longer accepted by validation, but possibly in rows stored before it.
        for deadline in [i64::MAX, i64::MIN, 0] {
            let mut j = job(1, "2026-01-01T00:00:10Z");
            j.starting_deadline_seconds = Some(deadline);
            let p = plan(&j, t("2026-01-01T00:00:12.500Z"));
            assert!(p.next_run.is_some(), "deadline {deadline}");
            let late = deadline == 0 || deadline == i64::MIN;
            assert_eq!(p.outcome == Outcome::Missed, late, "deadline {deadline}");
        }
        // A jitter of i64::MAX seconds: the run lands somewhere (or nowhere), never a panic.
        let mut j = job(1, "2026-01-01T00:00:10Z");
        j.jitter_seconds = i64::MAX;
        j.starting_deadline_seconds = Some(i64::MAX);
        let p = plan(&j, t("2026-01-01T00:00:12Z"));
        assert!(p.due_at >= p.slot);
        // A one-shot slot at the very end of chrono's range, with a day of jitter.
        let end = DateTime::<Utc>::MAX_UTC;
        let j = DueJob {
            jitter_seconds: 86_400,
            starting_deadline_seconds: Some(i64::MAX),
            slot: end,
            ..job(1, "2026-01-01T00:00:10Z")
        };
        let p = plan(&j, end);
        assert_eq!(
            p.due_at, end,
            "an overflowing jitter leaves the slot as it is"
        );
        assert_eq!(p.next_run, None);
    }

    #[test]
    fn one_shot_ends() {
        let s = Schedule {
            at: Some("2026-06-01T00:00:00Z".into()),
            ..Default::default()
        };
        let schedule =
            JobSchedule::from_spec(&s, None, None, t("2026-01-01T00:00:00Z")).expect("valid");
        let j = DueJob {
            schedule,
            ..job(1, "2026-06-01T00:00:00Z")
        };
        let p = plan(&j, t("2026-06-01T00:00:00.200Z"));
        assert_eq!(p.outcome, Outcome::Run);
        assert_eq!((p.next_slot, p.next_run), (None, None));
    }
}
