use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::*;
use crate::api::{IntervalSchedule, Schedule};

fn t(s: &str) -> DateTime<Utc> {
    parse_time(s).expect("time")
}

fn every_minute(anchor: &str) -> JobSchedule {
    let schedule = Schedule {
        interval: Some(IntervalSchedule {
            hours: 0,
            minutes: 1,
            seconds: 0,
        }),
        ..Default::default()
    };
    JobSchedule::from_spec(&schedule, None, None, t(anchor)).expect("schedule")
}

fn cron(expr: &str, tz: &str) -> JobSchedule {
    let schedule = Schedule {
        cron: Some(expr.into()),
        ..Default::default()
    };
    JobSchedule::from_spec(&schedule, Some(tz), None, t("2026-01-01T00:00:00Z")).expect("cron")
}

fn value(from: &str, to: &str, max_parallel: Option<i64>) -> RequestValue {
    RequestValue {
        id: "bf-1".into(),
        from: from.into(),
        to: to.into(),
        max_parallel,
        by: None,
    }
}

const NOW: &str = "2026-06-01T00:00:00Z";

#[test]
fn a_range_includes_both_ends_and_follows_the_anchor() {
    // Anchored at :30 past each minute.
    let s = every_minute("2026-03-01T00:00:30Z");
    let slots =
        slots_in_range(&s, t("2026-03-01T10:00:30Z"), t("2026-03-01T10:03:30Z")).expect("slots");
    let shown: Vec<String> = slots.iter().map(|s| rfc3339(*s)).collect();
    assert_eq!(
        shown,
        [
            "2026-03-01T10:00:30Z",
            "2026-03-01T10:01:30Z",
            "2026-03-01T10:02:30Z",
            "2026-03-01T10:03:30Z"
        ]
    );
    // A range between slots starts at the next one.
    let slots =
        slots_in_range(&s, t("2026-03-01T10:00:31Z"), t("2026-03-01T10:01:30Z")).expect("slots");
    assert_eq!(slots, [t("2026-03-01T10:01:30Z")]);
}

#[test]
fn cron_slots_across_a_dst_change_are_the_schedules_own() {
    // 02:30 daily in New York: the spring-forward day runs once, at 03:00 local (07:00Z).
    let s = cron("30 2 * * *", "America/New_York");
    let slots =
        slots_in_range(&s, t("2026-03-07T00:00:00Z"), t("2026-03-09T23:59:59Z")).expect("slots");
    let shown: Vec<String> = slots.iter().map(|s| rfc3339(*s)).collect();
    assert_eq!(
        shown,
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
}

#[test]
fn more_than_ten_thousand_slots_or_none_are_refused() {
    let s = every_minute("2026-01-01T00:00:00Z");
    // 10,000 slots exactly: minutes 1..=10000 (an interval's first slot is one period after
    // its anchor).
    let to = t("2026-01-01T00:00:00Z") + chrono::TimeDelta::minutes(10_000);
    assert_eq!(
        slots_in_range(&s, t("2026-01-01T00:00:00Z"), to)
            .expect("at the bound")
            .len(),
        MAX_SLOTS
    );
    let to = to + chrono::TimeDelta::minutes(1);
    match slots_in_range(&s, t("2026-01-01T00:00:00Z"), to) {
        Err(BackfillError::Refused(m)) => assert!(m.contains("more than 10000 slots"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match slots_in_range(&s, t("2026-01-01T00:00:10Z"), t("2026-01-01T00:00:50Z")) {
        Err(BackfillError::Refused(m)) => assert!(m.contains("no slot"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn requests_are_bounded() {
    let now = t(NOW);
    let ok = Request::check(
        &value("2026-04-30T00:00:00Z", "2026-05-01T01:00:00+02:00", None),
        now,
    )
    .expect("valid");
    assert_eq!(ok.max_parallel, DEFAULT_MAX_PARALLEL);
    assert_eq!(ok.to, t("2026-04-30T23:00:00Z"));
    let invalid =
        |v: RequestValue| matches!(Request::check(&v, now), Err(BackfillError::Invalid(_)));
    let refused =
        |v: RequestValue| matches!(Request::check(&v, now), Err(BackfillError::Refused(_)));
    assert!(invalid(value("yesterday", "2026-05-01T00:00:00Z", None)));
    assert!(invalid(value("2026-05-01T00:00:00Z", "2026-05-02", None)));
    assert!(invalid(value(
        "2026-05-01T00:00:00Z",
        "2026-05-02T00:00:00Z",
        Some(0)
    )));
    assert!(invalid(value(
        "2026-05-01T00:00:00Z",
        "2026-05-02T00:00:00Z",
        Some(101)
    )));
    assert!(invalid(value(
        "2026-05-01T00:00:00Z",
        "2026-05-02T00:00:00Z",
        Some(-1)
    )));
    assert!(!invalid(value(
        "2026-05-01T00:00:00Z",
        "2026-05-02T00:00:00Z",
        Some(100)
    )));
    // from after to; to in the future (refused, not clamped).
    assert!(refused(value(
        "2026-05-02T00:00:00Z",
        "2026-05-01T00:00:00Z",
        None
    )));
    assert!(refused(value(
        "2026-05-01T00:00:00Z",
        "2026-06-01T00:00:01Z",
        None
    )));
    assert!(!refused(value("2026-05-01T00:00:00Z", NOW, None)));
    let mut bad_id = value("2026-05-01T00:00:00Z", NOW, None);
    bad_id.id = "a b".into();
    assert!(invalid(bad_id.clone()));
    bad_id.id = "x".repeat(65);
    assert!(invalid(bad_id.clone()));
    bad_id.id = String::new();
    assert!(invalid(bad_id));
    let mut by = value("2026-05-01T00:00:00Z", NOW, None);
    by.by = Some("eve\nadmin".into());
    assert!(invalid(by));
}

#[test]
fn the_annotation_round_trips_and_refuses_junk() {
    let now = t(NOW);
    let r = Request::check(
        &value("2026-05-01T00:00:00Z", "2026-05-01T00:10:00Z", Some(3)),
        now,
    )
    .expect("valid");
    let text = r.annotation_value();
    assert_eq!(
        text,
        r#"{"id":"bf-1","from":"2026-05-01T00:00:00Z","to":"2026-05-01T00:10:00Z","maxParallel":3}"#
    );
    assert_eq!(Request::from_annotation(&text, now), Ok(r));
    for junk in [
        "now",
        "{}",
        r#"{"id":"a","from":"2026-05-01T00:00:00Z","to":"2026-05-01T00:10:00Z","extra":1}"#,
        r#"{"id":"a","from":"2026-05-01T00:00:00Z","to":"2026-05-01T00:10:00Z","maxParallel":"3"}"#,
    ] {
        assert!(
            matches!(
                Request::from_annotation(junk, now),
                Err(BackfillError::Invalid(_))
            ),
            "{junk}"
        );
    }
    let long = format!(r#"{{"id":"a","from":"{}"}}"#, "x".repeat(2000));
    match Request::from_annotation(&long, now) {
        Err(BackfillError::Invalid(m)) => assert!(m.contains("limit is 1024"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn next_slots_continue_from_the_cursor_within_the_range() {
    let s = every_minute("2026-03-01T00:00:00Z");
    let (from, to) = (t("2026-03-01T10:00:00Z"), t("2026-03-01T10:04:00Z"));
    let first = next_slots(&s, from, to, None, 2);
    assert_eq!(
        first,
        [t("2026-03-01T10:00:00Z"), t("2026-03-01T10:01:00Z")]
    );
    let next = next_slots(&s, from, to, first.last().copied(), 10);
    assert_eq!(
        next,
        [
            t("2026-03-01T10:02:00Z"),
            t("2026-03-01T10:03:00Z"),
            t("2026-03-01T10:04:00Z")
        ]
    );
    assert!(next_slots(&s, from, to, next.last().copied(), 10).is_empty());
    assert!(next_slots(&s, from, to, None, 0).is_empty());
}

#[test]
fn slots_that_ran_are_passed_over_without_using_up_the_room() {
    let s = every_minute("2026-03-01T00:00:00Z");
    let (from, to) = (t("2026-03-01T10:00:00Z"), t("2026-03-01T10:09:00Z"));
    let candidates = next_slots(&s, from, to, None, 10);
    let recorded: HashSet<String> = ["2026-03-01T10:00:00Z", "2026-03-01T10:02:00Z"]
        .into_iter()
        .map(String::from)
        .collect();
    let take = take_slots(&candidates, &recorded, 2);
    assert_eq!(
        take.run,
        [t("2026-03-01T10:01:00Z"), t("2026-03-01T10:03:00Z")]
    );
    assert_eq!(take.already_ran, 2);
    // The cursor stops at the last slot dealt with, not at the first one without room.
    assert_eq!(take.cursor, Some(t("2026-03-01T10:03:00Z")));
    // No room: slots that ran are still passed over, up to the first that would run.
    let take = take_slots(&candidates, &recorded, 0);
    assert!(take.run.is_empty());
    assert_eq!(take.already_ran, 1);
    assert_eq!(take.cursor, Some(t("2026-03-01T10:00:00Z")));
    let take = take_slots(&[], &recorded, 5);
    assert_eq!(take, Take::default());
}

#[test]
fn room_is_max_parallel_minus_unfinished_never_negative() {
    assert_eq!(room(3, 0), 3);
    assert_eq!(room(3, 2), 1);
    assert_eq!(room(3, 3), 0);
    assert_eq!(room(3, 7), 0);
    // A stored value out of bounds is clamped, not trusted.
    assert_eq!(room(0, 0), 1);
    assert_eq!(room(1_000_000, 0), 100);
}
