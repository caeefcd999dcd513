//! Digests of the ScheduledJob status fields each of kube-beat's status writers owns.
//!
//! They live beside the API types because both sides compare with them: the writers (what they
//! are about to apply) and the job cache (what the object shows). Keeping them here lets the
//! cache and the writers depend on the API types only, not on each other.

use std::hash::{Hash, Hasher};

use serde_json::Value;

/// The condition the status writer owns (in `conditions`, a list-map keyed by type: the other
/// entries are the reconciler's or other controllers').
pub const HEALTHY: &str = "Healthy";
/// The status writer's other condition: the job's schedule has ended (`endTime`, `maxRuns`).
pub const COMPLETE: &str = "Complete";

/// The status fields the status writer (the run fields) owns and applies as a whole, besides
/// its [`HEALTHY`] and [`COMPLETE`] conditions.
pub const RUN_STATUS_FIELDS: [&str; 14] = [
    "nextScheduleTime",
    "lastScheduleTime",
    "lastSuccessfulTime",
    "lastExecution",
    "lastManualRun",
    "active",
    "totalRuns",
    "succeeded",
    "failed",
    "missed",
    "skipped",
    "consecutiveFailures",
    "pause",
    "backfill",
];

/// A digest of the run fields ([`RUN_STATUS_FIELDS`]), from a whole status as read back or from
/// what the writer applies: absent and `null` agree (a `None` is never sent and is read back as
/// absent), and key order does not matter. The informer cache keeps only this digest of a job's
/// status.
pub fn written_digest(status: &Value) -> u64 {
    fn feed(v: &Value, h: &mut std::collections::hash_map::DefaultHasher) {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().filter(|(_, v)| !v.is_null()).collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                h.write_u8(b'{');
                for (k, v) in entries {
                    k.hash(h);
                    feed(v, h);
                }
                h.write_u8(b'}');
            }
            Value::Array(items) => {
                h.write_u8(b'[');
                items.iter().for_each(|item| feed(item, h));
                h.write_u8(b']');
            }
            scalar => scalar.to_string().hash(h),
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for key in RUN_STATUS_FIELDS {
        if let Some(v) = status.get(key).filter(|v| !v.is_null()) {
            key.hash(&mut h);
            feed(v, &mut h);
        }
    }
    for kind in [HEALTHY, COMPLETE] {
        let condition = status
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind));
        if let Some(c) = condition {
            kind.hash(&mut h);
            feed(c, &mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn written_digest_treats_null_as_absent_and_ignores_key_order() {
        // What a status shows, read back through the typed status (as the cache does it).
        let status = crate::api::ScheduledJobStatus {
            total_runs: 3,
            last_execution: Some(crate::api::ExecutionSummary {
                task_id: "a".into(),
                state: "SUCCESS".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let current = serde_json::to_value(&status).expect("status");
        let wanted = json!({"skipped": 0, "missed": 0, "failed": 0, "succeeded": 0,
            "consecutiveFailures": 0,
            "totalRuns": 3, "active": null, "nextScheduleTime": null,
            "lastExecution": {"state": "SUCCESS", "taskId": "a", "message": null,
                "scheduledFor": "", "trigger": ""}});
        assert_eq!(written_digest(&current), written_digest(&wanted));
        // The reconciler's fields are not the writer's business.
        let mut other = current.clone();
        other["observedGeneration"] = json!(7);
        assert_eq!(written_digest(&other), written_digest(&current));
        let mut changed = wanted.clone();
        changed["totalRuns"] = json!(4);
        assert_ne!(written_digest(&changed), written_digest(&current));
        let mut new_exec = wanted.clone();
        new_exec["lastExecution"]["taskId"] = json!("b");
        assert_ne!(written_digest(&new_exec), written_digest(&current));
        assert_ne!(
            written_digest(&json!({})),
            written_digest(&json!({"lastExecution": {"taskId": "a"}}))
        );
    }

    #[test]
    fn only_the_healthy_condition_counts_among_the_conditions() {
        let healthy = json!({"type": "Healthy", "status": "True", "reason": "Healthy",
            "message": "m", "lastTransitionTime": "2026-03-01T12:00:00Z"});
        let ready = json!({"type": "Ready", "status": "True", "reason": "Stored",
            "message": "valid and stored", "lastTransitionTime": "2026-03-01T11:00:00Z"});
        let written = json!({"totalRuns": 1, "conditions": [healthy.clone()]});
        let shown = json!({"totalRuns": 1, "conditions": [ready, healthy]});
        assert_eq!(written_digest(&written), written_digest(&shown));
        let mut flipped = shown.clone();
        flipped["conditions"][1]["status"] = json!("False");
        assert_ne!(written_digest(&written), written_digest(&flipped));
        assert_ne!(
            written_digest(&written),
            written_digest(&json!({"totalRuns": 1}))
        );
    }
}
