//! Validation of several schedules per job, `endTime` and `maxRuns`.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn meta() -> JobMeta<'static> {
    JobMeta {
        uid: "uid-1",
        namespace: "team-a",
        name: "report",
        generation: 1,
        created: t("2026-01-01T00:00:00Z"),
        trigger: None,
    }
}

/// Validate a job (spec fields over `taskFunction: echo`) at 2026-01-05T00:00:00Z (a Monday).
fn build(extra: serde_json::Value) -> Result<JobRow, Invalid> {
    let mut v = json!({"taskFunction": "echo"});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let spec: ScheduledJobSpec = serde_json::from_value(v).expect("spec");
    let tf = task_function(
        "echo",
        &serde_json::from_value(json!({"task": "kb.echo"})).expect("tf"),
    )
    .expect("valid tf");
    scheduled_job(
        &meta(),
        &spec,
        TaskFunctionRef::Valid(&tf),
        t("2026-01-05T00:00:00Z"),
    )
}

#[test]
fn several_schedules_make_one_row() {
    let row = build(json!({
        "timeZone": "Europe/Berlin",
        "schedules": [{"cron": "0 9 * * 1-5"}, {"cron": "0 12 * * 6", "timeZone": "UTC"}],
        "endTime": "2026-03-31T22:00:00Z",
        "maxRuns": 50
    }))
    .expect("valid");
    assert_eq!(
        row.schedule_summary,
        "0 9 * * 1-5 (Europe/Berlin); 0 12 * * 6"
    );
    assert_eq!(row.time_zone, "Europe/Berlin");
    // Every entry carries its zone in the row, whatever the row's own zone.
    assert_eq!(
        row.schedule_config,
        json!([
            {"cron": "0 9 * * 1-5", "timeZone": "Europe/Berlin"},
            {"cron": "0 12 * * 6", "timeZone": "UTC"}
        ])
    );
    assert_eq!(row.job_type, JobType::Cron);
    // Monday 09:00 in Berlin (CET).
    assert_eq!(row.next_slot_at, Some(t("2026-01-05T08:00:00Z")));
    assert_eq!(row.end_time, Some(t("2026-03-31T22:00:00Z")));
    assert_eq!(row.max_runs, Some(50));
}

#[test]
fn an_end_already_past_is_valid_with_no_next_run() {
    let row = build(json!({
        "schedule": {"interval": {"minutes": 5}},
        "endTime": "2026-01-02T00:00:00Z"
    }))
    .expect("valid");
    assert_eq!((row.next_slot_at, row.next_run_at), (None, None));
}

#[test]
fn bad_entries_and_bounds_are_refused_with_the_field() {
    let cases = [
        (
            json!({"schedules": [{"cron": "0 9 * * *"}, {"cron": "61 * * * *"}]}),
            Reason::InvalidSchedule,
            "schedules[1].cron: invalid cron expression \"61 * * * *\"",
        ),
        (
            json!({"schedules": [{"interval": {"hours": 1}}, {"at": "2025-12-01T00:00:00Z"}]}),
            Reason::InvalidSchedule,
            "schedules[1].at 2025-12-01T00:00:00Z is in the past",
        ),
        (
            json!({"schedules": [{"cron": "0 9 * * *", "timeZone": "X".repeat(65)}]}),
            Reason::InvalidSchedule,
            "schedules[0].timeZone is longer than 64 bytes",
        ),
        (
            json!({"schedules": vec![json!({"cron": "* * * * *"}); 17]}),
            Reason::InvalidSchedule,
            "schedules must have 1 to 16 entries, got 17",
        ),
        (
            json!({"schedule": {"cron": "* * * * *"}, "schedules": [{"cron": "* * * * *"}]}),
            Reason::InvalidSchedule,
            "set either schedule or schedules, not both",
        ),
        (
            json!({}),
            Reason::InvalidSchedule,
            "one of schedule or schedules must be set",
        ),
        (
            json!({"schedule": {"cron": "* * * * *"}, "endTime": "tomorrow"}),
            Reason::InvalidSchedule,
            "endTime: \"tomorrow\" is not an RFC 3339 time",
        ),
        (
            json!({"schedule": {"cron": "* * * * *"}, "maxRuns": 0}),
            Reason::InvalidSpec,
            "maxRuns must be between 1 and 1000000, got 0",
        ),
        (
            json!({"schedule": {"cron": "* * * * *"}, "maxRuns": 1_000_001}),
            Reason::InvalidSpec,
            "maxRuns must be between 1 and 1000000, got 1000001",
        ),
    ];
    for (extra, reason, message) in cases {
        let e = build(extra.clone()).expect_err("invalid");
        assert_eq!(e.reason, reason, "{extra}: {}", e.message);
        assert!(
            e.message.starts_with(message),
            "{extra}: got {:?}, want {message:?}",
            e.message
        );
    }
}

#[test]
fn job_calendar_names_are_bounded_dns_names() {
    assert!(check_names(&[]).is_ok());
    assert!(check_names(&["holidays".into(), "eu.business-days".into()]).is_ok());
    assert!(check_names(&vec!["a".to_string(); 17]).is_err_and(|e| e.contains("at most 16")));
    for bad in ["", "Holidays", "-x", "x-", "a b", &"a".repeat(254)] {
        assert!(check_names(&[bad.to_string()]).is_err(), "{bad:?}");
    }
    let e = check_names(&["X".repeat(10_000)]).expect_err("refused");
    assert!(e.len() < 300, "the message does not echo a huge name");
}
