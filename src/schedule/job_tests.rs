//! Several schedules per job, `endTime`, and the stored forms.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::*;
use crate::schedule::JobType;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test time")
        .with_timezone(&Utc)
}

fn spec(v: serde_json::Value) -> ScheduledJobSpec {
    let mut obj = json!({"taskFunction": "tf"});
    if let (Some(o), Some(extra)) = (obj.as_object_mut(), v.as_object()) {
        o.extend(extra.clone());
    }
    serde_json::from_value(obj).expect("spec")
}

fn slots(s: &JobSchedule, from: DateTime<Utc>, n: usize) -> Vec<String> {
    std::iter::successors(s.next_after(from), |x| s.next_after(*x))
        .take(n)
        .map(crate::schedule::rfc3339)
        .collect()
}

fn err(v: serde_json::Value) -> String {
    JobSchedule::from_job_spec(&spec(v), t("2026-01-01T00:00:00Z"))
        .expect_err("invalid")
        .0
}

#[test]
fn the_union_runs_a_shared_instant_once() {
    let s = JobSchedule::from_job_spec(
        &spec(json!({"schedules": [
            {"interval": {"seconds": 2}},
            {"cron": "@every 3s"}
        ]})),
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid");
    assert_eq!(
        slots(&s, t("2026-01-01T00:00:00Z"), 8),
        [
            "2026-01-01T00:00:02Z",
            "2026-01-01T00:00:03Z",
            "2026-01-01T00:00:04Z",
            "2026-01-01T00:00:06Z",
            "2026-01-01T00:00:08Z",
            "2026-01-01T00:00:09Z",
            "2026-01-01T00:00:10Z",
            "2026-01-01T00:00:12Z",
        ]
    );
    assert_eq!(s.summary(), "every 2s; @every 3s");
    assert_eq!(s.parts(), 2);
    // A union is not periodic; its gap is the union's.
    assert_eq!(s.period(), None);
    assert_eq!(
        s.longest_gap(t("2026-01-01T00:00:00Z"), 100),
        Some(Duration::seconds(2))
    );
    assert_eq!(s.job_type(), JobType::Cron);
}

#[test]
fn each_entry_has_its_zone_defaulting_to_the_jobs() {
    let s = JobSchedule::from_job_spec(
        &spec(json!({
            "timeZone": "Europe/Berlin",
            "schedules": [
                {"cron": "0 9 * * 1-5"},
                {"cron": "0 12 * * 6", "timeZone": "UTC"}
            ]
        })),
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid");
    assert_eq!(s.summary(), "0 9 * * 1-5 (Europe/Berlin); 0 12 * * 6");
    assert_eq!(s.time_zone(), chrono_tz::Tz::Europe__Berlin);
    // Fri 2026-01-09 09:00 CET = 08:00Z, Sat 12:00Z, Mon 08:00Z.
    assert_eq!(
        slots(&s, t("2026-01-09T00:00:00Z"), 3),
        [
            "2026-01-09T08:00:00Z",
            "2026-01-10T12:00:00Z",
            "2026-01-12T08:00:00Z",
        ]
    );
    // The longest gap is Saturday noon to Monday morning.
    assert_eq!(
        s.longest_gap(t("2026-01-05T00:00:00Z"), 50),
        Some(Duration::hours(44))
    );
}

#[test]
fn the_single_schedule_form_is_unchanged() {
    let one = JobSchedule::from_job_spec(
        &spec(json!({"schedule": {"cron": "*/5 * * * *"}, "timeZone": "Europe/Berlin"})),
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid");
    let old = JobSchedule::from_spec(
        &crate::api::Schedule {
            cron: Some("*/5 * * * *".into()),
            ..Default::default()
        },
        Some("Europe/Berlin"),
        None,
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid");
    assert_eq!(one, old);
    assert_eq!(one.summary(), "*/5 * * * * (Europe/Berlin)");
}

#[test]
fn no_slot_after_end_time() {
    let s = JobSchedule::from_job_spec(
        &spec(json!({
            "schedule": {"interval": {"seconds": 10}},
            "endTime": "2026-01-01T00:00:30Z"
        })),
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid");
    // A slot exactly at endTime still runs.
    assert_eq!(
        slots(&s, t("2026-01-01T00:00:00Z"), 10),
        [
            "2026-01-01T00:00:10Z",
            "2026-01-01T00:00:20Z",
            "2026-01-01T00:00:30Z"
        ]
    );
    assert_eq!(s.end(), Some(t("2026-01-01T00:00:30Z")));
    // Extended, it runs again.
    let later = s.with_end(Some(t("2026-01-01T00:00:50Z")));
    assert_eq!(
        later.next_after(t("2026-01-01T00:00:30Z")),
        Some(t("2026-01-01T00:00:40Z"))
    );
}

#[test]
fn bad_entries_are_named_by_index() {
    let cases = [
        (
            json!({"schedules": [{"cron": "* * * * *"}, {"cron": "61 * * * *"}]}),
            "schedules[1].cron: invalid cron expression \"61 * * * *\"",
        ),
        (
            json!({"schedules": [{"cron": "* * * * *", "timeZone": "Mars/Olympus"}]}),
            "schedules[0].timeZone: unknown time zone \"Mars/Olympus\"",
        ),
        (
            json!({"schedules": [{"interval": {"seconds": 1}}, {"at": "soon"}]}),
            "schedules[1].at: \"soon\" is not an RFC 3339 time",
        ),
        (
            json!({"schedules": [{"interval": {}}]}),
            "schedules[0].interval: interval must be at least 1 second",
        ),
        (
            json!({"schedules": [{"cron": "* * * * *", "at": "2026-02-01T00:00:00Z"}]}),
            "schedules[0]: must set exactly one of interval, cron or at",
        ),
        (
            json!({"schedules": []}),
            "schedules must have 1 to 16 entries, got 0",
        ),
        (
            json!({"schedules": vec![json!({"cron": "* * * * *"}); 17]}),
            "schedules must have 1 to 16 entries, got 17",
        ),
        (
            json!({"schedule": {"cron": "* * * * *"}, "schedules": [{"cron": "* * * * *"}]}),
            "set either schedule or schedules, not both",
        ),
        (json!({}), "one of schedule or schedules must be set"),
        (
            json!({"schedule": {"cron": "* * * * *"}, "endTime": "never"}),
            "endTime: \"never\" is not an RFC 3339 time",
        ),
        (
            json!({
                "schedule": {"cron": "* * * * *"},
                "startTime": "2026-03-01T00:00:00Z",
                "endTime": "2026-02-01T00:00:00Z"
            }),
            "endTime (2026-02-01T00:00:00Z) is before startTime (2026-03-01T00:00:00Z)",
        ),
        (
            json!({
                "schedules": [{"cron": "* * * * *"}, {"at": "2026-02-01T00:00:00Z"}],
                "startTime": "2026-03-01T00:00:00Z"
            }),
            "schedules[1].at (2026-02-01T00:00:00Z) is before startTime",
        ),
    ];
    for (v, want) in cases {
        let got = err(v.clone());
        assert!(got.starts_with(want), "{v}: got {got:?}, want {want:?}");
    }
}

#[test]
fn stored_forms_read_back_the_same_schedule() {
    let anchor = t("2026-01-01T00:00:00.250Z");
    for v in [
        json!({"schedule": {"interval": {"minutes": 5}}, "timeZone": "Europe/Berlin"}),
        json!({"schedules": [
            {"cron": "0 12 * * 6", "timeZone": "America/New_York"},
            {"cron": "0 9 * * 1-5"},
            {"interval": {"hours": 7}}
        ]}),
        json!({"timeZone": "Asia/Tokyo", "schedules": [
            {"cron": "30 2 * * *", "timeZone": "UTC"},
            {"cron": "30 2 * * *"},
            {"at": "2026-05-01T00:00:00Z"}
        ], "startTime": "2026-01-02T00:00:00Z"}),
    ] {
        let sp = spec(v.clone());
        let built = JobSchedule::from_job_spec(&sp, anchor).expect("valid");
        let config = stored_config(&sp).expect("config");
        let read =
            JobSchedule::from_stored(&config, built.time_zone().name(), built.start(), anchor)
                .expect("stored");
        assert_eq!(read, built, "{v}");
        assert_eq!(slots(&read, anchor, 20), slots(&built, anchor, 20), "{v}");
    }
    // Rows written before several schedules existed hold the object form.
    let old =
        JobSchedule::from_stored(&json!({"cron": "0 * * * *"}), "Europe/Berlin", None, anchor)
            .expect("old form");
    assert_eq!(old.summary(), "0 * * * * (Europe/Berlin)");
    // A stored list is checked like a spec's.
    let bad =
        JobSchedule::from_stored(&json!([{"cron": "nope"}]), "UTC", None, anchor).expect_err("bad");
    assert!(bad.0.starts_with("schedules[0].cron:"), "{}", bad.0);
}

#[test]
fn one_shots_end_when_their_last_instant_has_passed() {
    let s = JobSchedule::from_job_spec(
        &spec(json!({"schedules": [
            {"at": "2026-02-01T00:00:00Z"},
            {"at": "2026-03-01T00:00:00Z"}
        ]})),
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid");
    assert_eq!(s.once_at(), Some(t("2026-03-01T00:00:00Z")));
    assert_eq!(s.job_type(), JobType::Date);
    assert_eq!(
        s.one_shots(),
        [
            (0, t("2026-02-01T00:00:00Z")),
            (1, t("2026-03-01T00:00:00Z"))
        ]
    );
    let mixed = JobSchedule::from_job_spec(
        &spec(json!({"schedules": [
            {"at": "2026-02-01T00:00:00Z"},
            {"interval": {"hours": 1}}
        ]})),
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid");
    assert_eq!(mixed.once_at(), None);
    let intervals = JobSchedule::from_job_spec(
        &spec(json!({"schedules": [{"interval": {"hours": 1}}, {"interval": {"minutes": 45}}]})),
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid");
    assert_eq!(intervals.job_type(), JobType::Interval);
}
