//! `spec.health` resolved: bounds checked and `staleAfterSeconds` given its default from the
//! schedule. Stored as JSON on the job's row (`scheduled_jobs.health`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    api::{HealthPolicy, OnBreach},
    schedule::JobSchedule,
};

/// Longest `staleAfterSeconds` and `maxDurationSeconds`: one year, like every duration field.
pub const MAX_HEALTH_SECONDS: i64 = 31_536_000;
/// Largest `maxConsecutiveFailures`.
pub const MAX_CONSECUTIVE_FAILURES: i64 = 10_000;
/// Cron slots looked at for the longest gap (a year of hourly slots is 8,760): enough for any
/// expression whose pattern repeats within a year, bounded for the ones that do not.
const GAP_SLOTS: usize = 10_000;

/// A job's health policy, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedHealth {
    /// `None`: never stale (a one-off job, or a schedule with no next slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_seconds: Option<i64>,
    /// Whether `stale_after_seconds` is the default (the condition's message says so).
    #[serde(default)]
    pub stale_default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consecutive_failures: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_seconds: Option<i64>,
    #[serde(default)]
    pub pause_on_breach: bool,
    #[serde(default)]
    pub metrics: bool,
}

/// A `spec.health` value out of bounds (the schema says the same; checked again for objects
/// that bypassed it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HealthPolicyError(pub String);

fn bounded(field: &str, v: Option<i64>, max: i64) -> Result<Option<i64>, HealthPolicyError> {
    match v {
        Some(x) if !(1..=max).contains(&x) => Err(HealthPolicyError(format!(
            "health.{field} must be between 1 and {max}, got {x}"
        ))),
        _ => Ok(v),
    }
}

/// Resolve a job's health policy. The default staleness: the schedule's period (3 × the
/// interval; the longest gap between the next cron slots) plus its deadline — the time a run
/// may take to start and to end (`startingDeadlineSeconds` + `executionTimeoutSeconds`), at most
/// one more period, so a slow daily job is not stale every day while it runs and a fast job is
/// not waited for an hour.
pub fn resolve(
    spec: Option<&HealthPolicy>,
    schedule: &JobSchedule,
    starting_deadline_seconds: Option<i64>,
    execution_timeout_seconds: i64,
    now: DateTime<Utc>,
) -> Result<ResolvedHealth, HealthPolicyError> {
    let default = HealthPolicy::default();
    let spec = spec.unwrap_or(&default);
    let stale = bounded(
        "staleAfterSeconds",
        spec.stale_after_seconds,
        MAX_HEALTH_SECONDS,
    )?;
    let max_failures = bounded(
        "maxConsecutiveFailures",
        spec.max_consecutive_failures,
        MAX_CONSECUTIVE_FAILURES,
    )?;
    let max_duration = bounded(
        "maxDurationSeconds",
        spec.max_duration_seconds,
        MAX_HEALTH_SECONDS,
    )?;
    let (stale_after_seconds, stale_default) = match stale {
        Some(s) => (Some(s), false),
        None => (
            default_stale_after(
                schedule,
                starting_deadline_seconds,
                execution_timeout_seconds,
                now,
            ),
            true,
        ),
    };
    Ok(ResolvedHealth {
        stale_after_seconds,
        stale_default,
        max_consecutive_failures: max_failures,
        max_duration_seconds: max_duration,
        pause_on_breach: spec.on_breach == OnBreach::Pause,
        metrics: spec.metrics,
    })
}

/// The default `staleAfterSeconds` (see [`resolve`]); `None` for a one-off job.
pub fn default_stale_after(
    schedule: &JobSchedule,
    starting_deadline_seconds: Option<i64>,
    execution_timeout_seconds: i64,
    now: DateTime<Utc>,
) -> Option<i64> {
    let period = if let Some(p) = schedule.period() {
        p.num_seconds().max(1).saturating_mul(3)
    } else if schedule.once_at().is_some() {
        return None;
    } else {
        schedule.longest_gap(now, GAP_SLOTS)?.num_seconds().max(1)
    };
    let deadline = starting_deadline_seconds
        .unwrap_or(0)
        .max(0)
        .saturating_add(execution_timeout_seconds.max(0))
        .min(period);
    Some(period.saturating_add(deadline).min(MAX_HEALTH_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Schedule;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn cron(expr: &str) -> JobSchedule {
        JobSchedule::from_expression(expr, "UTC", t("2026-01-01T00:00:00Z")).expect("cron")
    }

    fn every(seconds: i64) -> JobSchedule {
        let spec = Schedule {
            interval: Some(crate::api::IntervalSchedule {
                seconds,
                ..Default::default()
            }),
            ..Default::default()
        };
        JobSchedule::from_spec(&spec, None, None, t("2026-01-01T00:00:00Z")).expect("interval")
    }

    #[test]
    fn default_staleness_is_three_intervals_plus_a_bounded_deadline() {
        let now = t("2026-03-01T00:00:00Z");
        // 10 s interval: 30 s + min(0 + 3600, 30).
        assert_eq!(default_stale_after(&every(10), None, 3600, now), Some(60));
        // 1 h interval, 5 min deadline, 10 min timeout: 3 h + 15 min.
        assert_eq!(
            default_stale_after(&every(3600), Some(300), 600, now),
            Some(3 * 3600 + 900)
        );
    }

    #[test]
    fn default_staleness_of_cron_is_its_longest_gap_plus_the_deadline() {
        let now = t("2026-03-02T12:00:00Z");
        // Weekdays at 9:00: the longest gap is Friday → Monday, 72 h; + 1 h timeout.
        assert_eq!(
            default_stale_after(&cron("0 9 * * 1-5"), None, 3600, now),
            Some(72 * 3600 + 3600)
        );
        // Every minute: 60 s + min(3600, 60).
        assert_eq!(
            default_stale_after(&cron("* * * * *"), None, 3600, now),
            Some(120)
        );
    }

    #[test]
    fn bounds_are_checked_and_an_explicit_value_wins() {
        let now = t("2026-03-01T00:00:00Z");
        let spec = HealthPolicy {
            stale_after_seconds: Some(45),
            max_consecutive_failures: Some(3),
            on_breach: OnBreach::Pause,
            ..Default::default()
        };
        let r = resolve(Some(&spec), &every(10), None, 3600, now).expect("valid");
        assert_eq!(r.stale_after_seconds, Some(45));
        assert!(!r.stale_default && r.pause_on_breach);
        for bad in [
            HealthPolicy {
                max_consecutive_failures: Some(0),
                ..Default::default()
            },
            HealthPolicy {
                stale_after_seconds: Some(MAX_HEALTH_SECONDS + 1),
                ..Default::default()
            },
            HealthPolicy {
                max_duration_seconds: Some(-5),
                ..Default::default()
            },
        ] {
            let e = resolve(Some(&bad), &every(10), None, 3600, now).expect_err("out of bounds");
            assert!(e.0.starts_with("health."), "{e}");
        }
    }

    #[test]
    fn a_one_off_job_is_never_stale_by_default() {
        let spec = Schedule {
            at: Some("2026-05-01T00:00:00Z".into()),
            ..Default::default()
        };
        let once =
            JobSchedule::from_spec(&spec, None, None, t("2026-01-01T00:00:00Z")).expect("at");
        assert_eq!(
            default_stale_after(&once, None, 3600, t("2026-03-01T00:00:00Z")),
            None
        );
    }
}
