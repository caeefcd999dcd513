//! The `Ready` condition, computed purely from the previous conditions and the new verdict.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::Condition;

pub const READY: &str = "Ready";

/// A Kubernetes `Time`, whole seconds (what the apiserver stores, so comparisons stay stable).
pub fn k8s_time(t: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The new conditions list: `Ready` replaced, other types kept. `lastTransitionTime` moves only
/// when the status flips, so a resync writes nothing new.
pub fn set_ready(
    previous: &[Condition],
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let status = if ready { "True" } else { "False" };
    let old = previous.iter().find(|c| c.type_ == READY);
    let last_transition_time = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => k8s_time(now),
    };
    let ready = Condition {
        type_: READY.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    };
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .collect();
    out.push(ready);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn transition_time_moves_only_on_flips() {
        let a = set_ready(
            &[],
            true,
            "Stored",
            "ok",
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(a.len(), 1);
        assert_eq!(
            a[0].last_transition_time,
            k8s_time(t("2026-01-01T00:00:00Z"))
        );
        let b = set_ready(&a, true, "Stored", "ok", Some(2), t("2026-01-02T00:00:00Z"));
        assert_eq!(
            b[0].last_transition_time,
            k8s_time(t("2026-01-01T00:00:00Z")),
            "no flip"
        );
        assert_eq!(b[0].observed_generation, Some(2));
        let c = set_ready(
            &b,
            false,
            "InvalidSchedule",
            "bad",
            Some(3),
            t("2026-01-03T00:00:00Z"),
        );
        assert_eq!(
            c[0].last_transition_time,
            k8s_time(t("2026-01-03T00:00:00Z")),
            "flip"
        );
        assert_eq!(
            (c[0].status.as_str(), c[0].reason.as_str()),
            ("False", "InvalidSchedule")
        );
    }

    #[test]
    fn other_conditions_are_kept() {
        let other = Condition {
            type_: "Degraded".into(),
            status: "False".into(),
            reason: "Fine".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_time(t("2026-01-01T00:00:00Z")),
        };
        let out = set_ready(
            std::slice::from_ref(&other),
            true,
            "Stored",
            "ok",
            None,
            t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], other);
    }
}
