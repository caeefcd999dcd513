//! A claim batch's calendars, pure: the JSON the claim query returns with each job (its
//! calendars as stored now) becomes [`Calendar`]s, each parsed once per batch, and a slot's
//! verdict. A calendar that is missing or cannot be read skips the slot: a job must not run
//! through a holiday because its calendar was deleted or broken a moment ago (the reconciler
//! then marks it `CalendarNotFound` / `CalendarInvalid` and stops it).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{api::ScheduleCalendarSpec, calendar::Calendar};

/// The calendars seen in one claim batch, by name (one statement: one version of each).
#[derive(Default)]
pub struct BatchCalendars {
    parsed: HashMap<String, Result<Calendar, String>>,
}

impl BatchCalendars {
    /// Why the slot at `t` of a job whose claim row carried `calendars` is not run, if it is
    /// not: `Calendar: <name>: <reason>` of the first of its calendars that excludes it.
    pub fn verdict(&mut self, calendars: Option<&Value>, t: DateTime<Utc>) -> Option<String> {
        let Some(Value::Array(list)) = calendars else {
            return None;
        };
        for item in list {
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
            let parsed = self
                .parsed
                .entry(name.to_string())
                .or_insert_with(|| parse(name, item));
            // The first of the job's calendars (in its order) that excludes the slot names it;
            // one that cannot be used excludes every slot.
            let verdict = match parsed {
                Ok(calendar) => calendar.verdict(t),
                Err(why) => Some(format!("Calendar: {name}: {why}")),
            };
            if verdict.is_some() {
                return verdict;
            }
        }
        None
    }
}

fn parse(name: &str, item: &Value) -> Result<Calendar, String> {
    if let Some(why) = item.get("invalid").and_then(Value::as_str) {
        return Err(format!("invalid calendar ({why})"));
    }
    let spec = match item.get("spec") {
        None | Some(Value::Null) => return Err("calendar not found".into()),
        Some(spec) => spec,
    };
    let spec: ScheduleCalendarSpec = serde_json::from_value(spec.clone())
        .map_err(|e| format!("invalid calendar (stored spec unreadable: {e})"))?;
    Calendar::from_spec(name, &spec).map_err(|e| format!("invalid calendar ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn verdicts_from_the_claim_rows_json() {
        let mut cals = BatchCalendars::default();
        let row = json!([
            {"name": "holidays", "spec": {"exclude": [{"date": "2026-12-25", "reason": "Christmas"}]}},
            {"name": "weekends", "spec": {"timeZone": "Europe/Berlin",
                                           "exclude": [{"weekdays": ["Sat", "Sun"]}]}}
        ]);
        assert_eq!(
            cals.verdict(Some(&row), t("2026-12-25T09:00:00Z"))
                .as_deref(),
            Some("Calendar: holidays: Christmas")
        );
        assert_eq!(
            cals.verdict(Some(&row), t("2026-12-26T09:00:00Z"))
                .as_deref(),
            Some("Calendar: weekends: excluded weekday Saturday")
        );
        assert_eq!(cals.verdict(Some(&row), t("2026-12-28T09:00:00Z")), None);
        assert_eq!(cals.verdict(None, t("2026-12-25T09:00:00Z")), None);
    }

    #[test]
    fn a_missing_or_broken_calendar_skips_the_slot() {
        let mut cals = BatchCalendars::default();
        let missing = json!([{"name": "gone", "spec": null}]);
        assert_eq!(
            cals.verdict(Some(&missing), t("2026-12-28T09:00:00Z"))
                .as_deref(),
            Some("Calendar: gone: calendar not found")
        );
        let broken = json!([
            {"name": "ok", "spec": {}},
            {"name": "bad", "spec": {"timeZone": "Mars/Base"}}
        ]);
        let why = cals
            .verdict(Some(&broken), t("2026-12-28T09:00:00Z"))
            .expect("skipped");
        assert!(
            why.starts_with("Calendar: bad: invalid calendar (timeZone: unknown time zone"),
            "{why}"
        );
        let flagged = json!([{"name": "flagged", "spec": {}, "invalid": "exclude[0]: bad"}]);
        assert_eq!(
            cals.verdict(Some(&flagged), t("2026-12-28T09:00:00Z"))
                .as_deref(),
            Some("Calendar: flagged: invalid calendar (exclude[0]: bad)")
        );
        let unreadable = json!([{"name": "odd", "spec": {"exclude": "yes"}}]);
        assert!(
            cals.verdict(Some(&unreadable), t("2026-12-28T09:00:00Z"))
                .is_some_and(|w| w.starts_with("Calendar: odd: invalid calendar"))
        );
    }

    fn row(id: i64, next_run: &str, calendars: Option<Value>) -> crate::store::claims::DueRow {
        let every = json!({"interval": {"seconds": 10}});
        let anchor = t("2026-12-24T00:00:00Z");
        crate::store::claims::DueRow {
            starting_deadline_seconds: Some(1),
            calendars,
            ..crate::store::claims::DueRow::for_test(id, every, anchor, t(next_run))
        }
    }

    #[test]
    fn a_batch_skips_excluded_slots_as_calendar_not_as_failures() {
        use crate::dispatch::plan::plan_batch;
        let holidays = json!([{"name": "holidays",
                               "spec": {"exclude": [{"date": "2026-12-25", "reason": "Christmas"}]}}]);
        let now = t("2026-12-25T00:00:08Z");
        let mut n = 0;
        let ids = move || {
            n += 1;
            format!("task-{n}")
        };
        // 1: excluded, and late beyond its deadline: still a calendar skip, not MISSED.
        // 2: the same slot without calendars runs; 3: excluded, claimed ahead; 4: paused.
        let mut paused = row(4, "2026-12-25T00:00:00Z", Some(holidays.clone()));
        let mut no_deadline = row(2, "2026-12-25T00:00:00Z", None);
        no_deadline.starting_deadline_seconds = None;
        paused.paused = true;
        let b = plan_batch(
            vec![
                row(1, "2026-12-25T00:00:00Z", Some(holidays.clone())),
                no_deadline,
                row(3, "2026-12-25T00:00:10Z", Some(holidays)),
                paused,
            ],
            now,
            false,
            ids,
        );
        let e: Vec<_> = b
            .executions
            .iter()
            .map(|e| (e.job_id, e.state, e.error.as_deref()))
            .collect();
        assert_eq!(
            e,
            [
                (1, "SKIPPED", Some("Calendar: holidays: Christmas")),
                (2, "PENDING", None),
                (3, "SKIPPED", Some("Calendar: holidays: Christmas")),
                (4, "SKIPPED", Some("Paused")),
            ]
        );
        let a = &b.advances;
        assert_eq!((a[0].failed_run, a[0].missed, a[0].skipped), (0, 0, 1));
        assert_eq!(a[0].excused_at, Some(t("2026-12-25T00:00:00Z")));
        assert_eq!(a[1].excused_at, None);
        assert_eq!(a[2].excused_at, Some(t("2026-12-25T00:00:10Z")));
        assert_eq!(a[2].next_run, Some(t("2026-12-25T00:00:20Z")));
        assert_eq!(a[3].excused_at, None, "paused is not excused by a calendar");
        assert_eq!((b.stats.runs, b.stats.skipped, b.stats.missed), (1, 3, 0));
        let messages: Vec<_> = b.stats.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages[..2],
            [
                "run 2026-12-25T00:00:00Z skipped: Calendar: holidays: Christmas",
                "run 2026-12-25T00:00:10Z skipped: Calendar: holidays: Christmas",
            ]
        );
    }
}
