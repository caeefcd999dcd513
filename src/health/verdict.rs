//! The verdict on one job's health: a pure function of its policy, what is stored about its
//! runs, its pause, what the worker probe saw, and the time.

use chrono::{DateTime, Utc};

use super::ResolvedHealth;
use crate::schedule::{human_duration, rfc3339};

/// The reason of a paused job's condition.
pub const PAUSED: &str = "Paused";

/// The `Healthy` condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    True,
    False,
    Unknown,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::True => "True",
            Condition::False => "False",
            Condition::Unknown => "Unknown",
        }
    }
}

/// What the worker probe says about the job's task on the job's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSignal {
    /// No probe (disabled, not run yet) or it could not tell (remote control disabled): never
    /// an alarm.
    Unknown,
    Ready,
    /// No live worker consumes the queue.
    NoWorkers(String),
    /// Workers consume the queue but none registered the task.
    TaskNotRegistered(String),
}

/// Everything the verdict depends on.
#[derive(Debug, Clone)]
pub struct HealthInput<'a> {
    pub policy: &'a ResolvedHealth,
    /// Scheduling (not suspended, valid).
    pub enabled: bool,
    /// The job has a next run (a finished one-off job is not due).
    pub due: bool,
    pub paused: Option<(DateTime<Utc>, &'a str)>,
    pub consecutive_failures: i64,
    pub last_success_at: Option<DateTime<Utc>>,
    /// Staleness is measured from the later of this and the last success.
    pub baseline: DateTime<Utc>,
    /// The oldest run still STARTED (only asked for when `maxDurationSeconds` is set).
    pub oldest_started: Option<DateTime<Utc>>,
    pub workers: WorkerSignal,
    pub now: DateTime<Utc>,
}

/// The verdict: the condition to show, and whether it is a breach the policy acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Condition,
    /// `Healthy`, `Suspended`, `Stale`, `ConsecutiveFailures`, `TooSlow`, `NoWorkers`,
    /// `TaskNotRegistered`, `Paused`.
    pub reason: &'static str,
    pub message: String,
    /// A breach: with `onBreach: Pause` the job is paused.
    pub breach: bool,
}

fn breach(reason: &'static str, message: String) -> Verdict {
    Verdict {
        status: Condition::False,
        reason,
        message,
        breach: true,
    }
}

fn secs(d: chrono::TimeDelta) -> i64 {
    d.num_seconds().max(0)
}

/// Judge one job. The first breach found wins, in this order: the pause, the failure streak, a
/// run taking too long, staleness, then the workers (run history is evidence; the probe is a
/// forecast).
pub fn judge(input: &HealthInput<'_>) -> Verdict {
    let p = input.policy;
    if let Some((since, reason)) = input.paused {
        return Verdict {
            status: Condition::False,
            reason: PAUSED,
            message: format!(
                "paused since {} by its health policy ({reason}); no run is dispatched until it is resumed (annotation kubebeat.io/resume, kube-beat resume)",
                rfc3339(since)
            ),
            breach: false,
        };
    }
    if !input.enabled {
        return Verdict {
            status: Condition::True,
            reason: "Suspended",
            message: "suspended: not judged".into(),
            breach: false,
        };
    }
    if let Some(max) = p.max_consecutive_failures
        && input.consecutive_failures >= max
    {
        return breach(
            "ConsecutiveFailures",
            format!(
                "{} runs in a row failed (maxConsecutiveFailures: {max})",
                input.consecutive_failures
            ),
        );
    }
    if let (Some(max), Some(started)) = (p.max_duration_seconds, input.oldest_started) {
        // The message names the start, not the time running: it stays the same pass after
        // pass, so the condition (and the status) is written once per breach.
        if secs(input.now.signed_duration_since(started)) > max {
            return breach(
                "TooSlow",
                format!(
                    "a run STARTED at {} has been running for longer than {} (maxDurationSeconds: {max})",
                    rfc3339(started),
                    human_duration(max)
                ),
            );
        }
    }
    if let Some(stale) = p.stale_after_seconds.filter(|_| input.due) {
        let from = input
            .last_success_at
            .map_or(input.baseline, |s| s.max(input.baseline));
        if secs(input.now.signed_duration_since(from)) > stale {
            let since = match input.last_success_at {
                Some(t) if t >= input.baseline => {
                    format!("since its last success at {}", rfc3339(t))
                }
                Some(_) | None => format!(
                    "since {} (stored, rescheduled, resumed or skipped by a calendar)",
                    rfc3339(input.baseline)
                ),
            };
            let default = if p.stale_default { ", the default" } else { "" };
            return breach(
                "Stale",
                format!(
                    "no successful run for longer than {} {since} (staleAfterSeconds: {stale}{default})",
                    human_duration(stale)
                ),
            );
        }
    }
    match &input.workers {
        WorkerSignal::NoWorkers(m) => return breach("NoWorkers", m.clone()),
        WorkerSignal::TaskNotRegistered(m) => return breach("TaskNotRegistered", m.clone()),
        WorkerSignal::Unknown | WorkerSignal::Ready => {}
    }
    let mut parts = Vec::new();
    if let Some(s) = p.stale_after_seconds {
        parts.push(format!("staleAfterSeconds: {s}"));
    }
    if let Some(m) = p.max_consecutive_failures {
        parts.push(format!("maxConsecutiveFailures: {m}"));
    }
    if let Some(m) = p.max_duration_seconds {
        parts.push(format!("maxDurationSeconds: {m}"));
    }
    let message = if parts.is_empty() {
        "meets its health policy".to_string()
    } else {
        format!("meets its health policy ({})", parts.join(", "))
    };
    Verdict {
        status: Condition::True,
        reason: "Healthy",
        message,
        breach: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn input(policy: &ResolvedHealth) -> HealthInput<'_> {
        HealthInput {
            policy,
            enabled: true,
            due: true,
            paused: None,
            consecutive_failures: 0,
            last_success_at: Some(t("2026-03-01T11:59:50Z")),
            baseline: t("2026-03-01T00:00:00Z"),
            oldest_started: None,
            workers: WorkerSignal::Ready,
            now: t("2026-03-01T12:00:00Z"),
        }
    }

    fn policy() -> ResolvedHealth {
        ResolvedHealth {
            stale_after_seconds: Some(60),
            max_consecutive_failures: Some(3),
            max_duration_seconds: Some(120),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_within_its_policy_is_healthy_with_a_stable_message() {
        let p = policy();
        let v = judge(&input(&p));
        assert_eq!(
            (v.status, v.reason, v.breach),
            (Condition::True, "Healthy", false)
        );
        assert_eq!(
            v.message,
            "meets its health policy (staleAfterSeconds: 60, maxConsecutiveFailures: 3, maxDurationSeconds: 120)"
        );
    }

    #[test]
    fn the_failure_streak_breaches_at_the_limit() {
        let p = policy();
        let mut i = input(&p);
        i.consecutive_failures = 2;
        assert_eq!(judge(&i).reason, "Healthy");
        i.consecutive_failures = 3;
        let v = judge(&i);
        assert_eq!(
            (v.status, v.reason, v.breach),
            (Condition::False, "ConsecutiveFailures", true)
        );
        assert_eq!(
            v.message,
            "3 runs in a row failed (maxConsecutiveFailures: 3)"
        );
    }

    #[test]
    fn staleness_counts_from_the_later_of_last_success_and_baseline() {
        let p = policy();
        let mut i = input(&p);
        i.last_success_at = Some(t("2026-03-01T11:58:00Z"));
        let v = judge(&i);
        assert_eq!(v.reason, "Stale");
        assert_eq!(
            v.message,
            "no successful run for longer than 1m since its last success at 2026-03-01T11:58:00Z (staleAfterSeconds: 60)"
        );
        // Resumed (or re-enabled) 30 s ago: not stale yet.
        i.baseline = t("2026-03-01T11:59:30Z");
        assert_eq!(judge(&i).reason, "Healthy");
        // Never succeeded, stored 2 minutes ago.
        i.last_success_at = None;
        i.baseline = t("2026-03-01T11:58:00Z");
        assert!(
            judge(&i)
                .message
                .contains("since 2026-03-01T11:58:00Z (stored"),
            "{}",
            judge(&i).message
        );
        // A job with no next run is not due: never stale.
        i.due = false;
        assert_eq!(judge(&i).reason, "Healthy");
    }

    #[test]
    fn a_run_started_too_long_ago_is_too_slow() {
        let p = policy();
        let mut i = input(&p);
        i.oldest_started = Some(t("2026-03-01T11:59:00Z"));
        assert_eq!(judge(&i).reason, "Healthy");
        i.oldest_started = Some(t("2026-03-01T11:57:00Z"));
        let v = judge(&i);
        assert_eq!((v.reason, v.breach), ("TooSlow", true));
        assert!(
            v.message.contains("maxDurationSeconds: 120"),
            "{}",
            v.message
        );
    }

    #[test]
    fn workers_breach_only_when_the_probe_is_sure() {
        let p = policy();
        let mut i = input(&p);
        i.workers = WorkerSignal::Unknown;
        assert_eq!(judge(&i).status, Condition::True);
        i.workers = WorkerSignal::TaskNotRegistered("no worker registered x".into());
        assert_eq!(judge(&i).reason, "TaskNotRegistered");
        i.workers = WorkerSignal::NoWorkers("no consumer".into());
        assert_eq!(judge(&i).reason, "NoWorkers");
        // Run history goes first.
        i.consecutive_failures = 5;
        assert_eq!(judge(&i).reason, "ConsecutiveFailures");
    }

    #[test]
    fn paused_and_suspended_jobs() {
        let p = policy();
        let mut i = input(&p);
        i.consecutive_failures = 9;
        i.paused = Some((
            t("2026-03-01T11:00:00Z"),
            "ConsecutiveFailures: 3 runs in a row failed",
        ));
        let v = judge(&i);
        assert_eq!(
            (v.status, v.reason, v.breach),
            (Condition::False, "Paused", false)
        );
        assert!(v.message.contains("kubebeat.io/resume"));
        i.paused = None;
        i.enabled = false;
        assert_eq!(judge(&i).reason, "Suspended");
    }
}
