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

/// kube-beat's `Ready` condition, the only condition it applies (conditions are a list-map keyed
/// by `type`: the server keeps other controllers' conditions). `lastTransitionTime` moves only
/// when the status flips, so a resync writes nothing new; of `previous`, only `Ready` is read.
pub fn ready_condition(
    previous: &[Condition],
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let old = previous.iter().find(|c| c.type_ == READY);
    let last_transition_time = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => k8s_time(now),
    };
    Condition {
        type_: READY.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
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

    #[test]
    fn transition_time_moves_only_on_flips() {
        let a = ready_condition(
            &[],
            true,
            "Stored",
            "ok",
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(a.last_transition_time, k8s_time(t("2026-01-01T00:00:00Z")));
        let b = ready_condition(
            std::slice::from_ref(&a),
            true,
            "Stored",
            "ok",
            Some(2),
            t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(
            b.last_transition_time,
            k8s_time(t("2026-01-01T00:00:00Z")),
            "no flip"
        );
        assert_eq!(b.observed_generation, Some(2));
        let c = ready_condition(
            std::slice::from_ref(&b),
            false,
            "InvalidSchedule",
            "bad",
            Some(3),
            t("2026-01-03T00:00:00Z"),
        );
        assert_eq!(
            c.last_transition_time,
            k8s_time(t("2026-01-03T00:00:00Z")),
            "flip"
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidSchedule")
        );
    }

    #[test]
    fn only_ready_is_read_and_returned() {
        let other = Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: "Fine".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_time(t("2026-01-01T00:00:00Z")),
        };
        // A True condition of another type is not a previous Ready: the flip time is now.
        let out = ready_condition(
            std::slice::from_ref(&other),
            true,
            "Stored",
            "ok",
            None,
            t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(out.type_, READY);
        assert_eq!(
            out.last_transition_time,
            k8s_time(t("2026-01-02T00:00:00Z"))
        );
    }
}
