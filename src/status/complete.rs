//! The `Complete` condition: a job whose schedule has ended (`maxRuns` scheduled runs claimed,
//! or no slot left before `endTime`). The status writer owns it beside `Healthy`: both are
//! judged from the run data in Postgres. Like a Kubernetes Job's, it is only shown once true;
//! moving `endTime` later or raising `maxRuns` brings the next run back and the condition goes.

use serde_json::{Value, json};

use crate::{
    api::status_digest::COMPLETE,
    schedule::{rfc3339, rfc3339_seconds},
    store::status::JobStatusRow,
};

/// The `Complete` condition of a job, if its schedule has ended.
pub fn condition(r: &JobStatusRow) -> Option<Value> {
    // A last run claimed ahead of its time has not gone out yet: not complete before it has.
    if !r.last_slot_due {
        return None;
    }
    let (reason, message, since) = if let Some(max) = r.max_runs.filter(|m| r.scheduled_runs >= *m)
    {
        let last = r.last_scheduled_run_at.or(r.last_run_at);
        let when = last.map_or(String::new(), |t| format!(", the last for {}", rfc3339(t)));
        (
            "MaxRunsReached",
            format!(
                "maxRuns reached: {} scheduled runs of {max}{when}; raise maxRuns to run again",
                r.scheduled_runs
            ),
            last,
        )
    } else if let Some(end) = r.end_time.filter(|_| r.enabled && r.next_run_at.is_none()) {
        // Enabled without a next run: no slot is left at or before endTime.
        let since = r.last_scheduled_run_at.map_or(end, |l| l.min(end));
        (
            "EndTimeReached",
            format!(
                "endTime {} reached: no slot is left before it; move endTime later to run again",
                rfc3339(end)
            ),
            Some(since),
        )
    } else {
        return None;
    };
    Some(json!({
        "type": COMPLETE,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339_seconds(since.unwrap_or_default()),
    }))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn row() -> JobStatusRow {
        JobStatusRow {
            enabled: true,
            next_run_at: Some(t("2026-01-01T00:00:40Z")),
            last_slot_due: true,
            ..Default::default()
        }
    }

    #[test]
    fn max_runs_reached() {
        let mut r = JobStatusRow {
            max_runs: Some(3),
            scheduled_runs: 2,
            last_scheduled_run_at: Some(t("2026-01-01T00:00:20Z")),
            ..row()
        };
        assert_eq!(condition(&r), None, "two of three");
        r.scheduled_runs = 3;
        r.next_run_at = None;
        r.last_scheduled_run_at = Some(t("2026-01-01T00:00:30.500Z"));
        r.last_slot_due = false;
        assert_eq!(
            condition(&r),
            None,
            "the third run is claimed ahead, not out yet"
        );
        r.last_slot_due = true;
        // Manual runs after it do not move it.
        r.last_run_at = Some(t("2026-01-01T00:05:00Z"));
        assert_eq!(
            condition(&r),
            Some(json!({
                "type": "Complete", "status": "True", "reason": "MaxRunsReached",
                "message": "maxRuns reached: 3 scheduled runs of 3, the last for 2026-01-01T00:00:30.500Z; raise maxRuns to run again",
                "lastTransitionTime": "2026-01-01T00:00:30Z",
            }))
        );
        // Raised: gone.
        r.max_runs = Some(5);
        r.next_run_at = Some(t("2026-01-01T00:06:00Z"));
        assert_eq!(condition(&r), None);
    }

    #[test]
    fn end_time_reached() {
        let mut r = JobStatusRow {
            end_time: Some(t("2026-01-01T00:00:35Z")),
            ..row()
        };
        assert_eq!(condition(&r), None, "a next run before endTime");
        r.next_run_at = None;
        r.last_scheduled_run_at = Some(t("2026-01-01T00:00:30Z"));
        let c = condition(&r).expect("complete");
        assert_eq!(c["reason"], "EndTimeReached");
        assert_eq!(c["lastTransitionTime"], "2026-01-01T00:00:30Z");
        assert_eq!(
            c["message"],
            "endTime 2026-01-01T00:00:35Z reached: no slot is left before it; move endTime later to run again"
        );
        // Never ran (endTime already past when applied): since endTime.
        r.last_scheduled_run_at = None;
        assert_eq!(
            condition(&r).expect("complete")["lastTransitionTime"],
            "2026-01-01T00:00:35Z"
        );
        // Suspended or invalid (not enabled): not complete, just stopped.
        r.enabled = false;
        assert_eq!(condition(&r), None);
        // Without an end, no next run is not completion (a one-shot `at` that ran).
        let done = JobStatusRow {
            next_run_at: None,
            ..row()
        };
        assert_eq!(condition(&done), None);
    }
}
