//! The schedule table. Non-DST cron cases come from robfig/cron v3 itself
//! (`tests/fixtures/cron_oracle.jsonl`, regenerated and drift-checked by `hack/cron-oracle.sh`);
//! DST cases follow SPEC §3 and are written out by hand, because there we deliberately differ
//! from CronJob.

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::api::IntervalSchedule;

/// SPEC §3's DST rules, as a table written out by hand.
mod dst;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test time")
        .with_timezone(&Utc)
}

fn next_n(s: &JobSchedule, from: DateTime<Utc>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = from;
    while out.len() < n {
        match s.next_after(cur) {
            Some(x) => {
                out.push(x.format("%Y-%m-%dT%H:%M:%SZ").to_string());
                cur = x;
            }
            None => break,
        }
    }
    out
}

/// The next `n` instants, unrounded.
fn next_n_exact(s: &JobSchedule, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    std::iter::successors(s.next_after(from), |x| s.next_after(*x))
        .take(n)
        .collect()
}

#[derive(serde::Deserialize)]
struct OracleCase {
    expr: String,
    tz: String,
    from: String,
    next: Vec<String>,
    error: Option<String>,
}

#[test]
fn matches_robfig_on_the_oracle_table() {
    let text = include_str!("../../../tests/fixtures/cron_oracle.jsonl");
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let case: OracleCase = serde_json::from_str(line).expect("fixture line");
        let ctx = format!("{:?} in {} from {}", case.expr, case.tz, case.from);
        if case.expr.starts_with("TZ=") || case.expr.starts_with("CRON_TZ=") {
            // Deliberate difference: the zone belongs in spec.timeZone, as Kubernetes requires.
            let err = cron::parse(&case.expr).expect_err(&ctx);
            assert!(err.contains("spec.timeZone"), "{ctx}: {err}");
            checked += 1;
            continue;
        }
        match (&case.error, cron::parse(&case.expr)) {
            (Some(want), Err(got)) => assert_eq!(&got, want, "{ctx}"),
            (Some(want), Ok(_)) => panic!("{ctx}: robfig rejects it ({want}), we accepted it"),
            (None, Err(got)) => panic!("{ctx}: robfig accepts it, we rejected it: {got}"),
            (None, Ok(_)) => {
                let from = t(&case.from);
                let s = JobSchedule::from_expression(&case.expr, &case.tz, from).expect(&ctx);
                // As instants, to the nanosecond: robfig prints RFC 3339 with as many fractional
                // digits as there are (none for whole seconds), so a slip below the second shows.
                let want: Vec<DateTime<Utc>> = case.next.iter().map(|x| t(x)).collect();
                assert_eq!(next_n_exact(&s, from, want.len().max(1)), want, "{ctx}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 150, "the table has {checked} cases");
}

#[test]
fn star_rule_quirk_of_day_fields() {
    // 2026-01-05 is a Monday. `*/1` counts as a star (AND), `*/2` and `1-31` do not (OR).
    let from = t("2026-01-01T00:00:00Z");
    let cases: &[(&str, &[&str])] = &[
        (
            "0 0 */1 * 1",
            &["2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z"],
        ),
        (
            "0 0 1-31 * 1",
            &["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"],
        ),
        (
            "0 0 */2 * 1",
            &["2026-01-03T00:00:00Z", "2026-01-05T00:00:00Z"],
        ),
        (
            "0 0 13 * 5",
            &[
                "2026-01-02T00:00:00Z",
                "2026-01-09T00:00:00Z",
                "2026-01-13T00:00:00Z",
            ],
        ),
        ("0 0 ? * 1", &["2026-01-05T00:00:00Z"]),
    ];
    for (expr, want) in cases {
        let s = JobSchedule::from_expression(expr, "UTC", from).expect(expr);
        assert_eq!(next_n(&s, from, want.len()), *want, "{expr}");
    }
}

fn interval(h: i64, m: i64, s: i64) -> Schedule {
    Schedule {
        interval: Some(IntervalSchedule {
            hours: h,
            minutes: m,
            seconds: s,
        }),
        ..Default::default()
    }
}

#[test]
fn intervals_are_anchored() {
    let anchor = t("2026-01-01T00:00:00Z");
    let s = JobSchedule::from_spec(&interval(1, 30, 0), None, None, anchor).expect("valid");
    assert_eq!(s.summary(), "every 1h30m");
    assert_eq!(s.job_type(), JobType::Interval);
    // Before the first slot: the first slot is one interval after the anchor.
    assert_eq!(s.next_after(anchor), Some(t("2026-01-01T01:30:00Z")));
    assert_eq!(
        s.next_after(t("2025-06-01T00:00:00Z")),
        Some(t("2026-01-01T01:30:00Z"))
    );
    // Exactly on a slot: the next one; between slots: the grid, not "now + interval".
    assert_eq!(
        s.next_after(t("2026-01-01T03:00:00Z")),
        Some(t("2026-01-01T04:30:00Z"))
    );
    assert_eq!(
        s.next_after(t("2026-01-01T03:00:01Z")),
        Some(t("2026-01-01T04:30:00Z"))
    );
    // startTime re-anchors.
    let s = JobSchedule::from_spec(
        &interval(0, 0, 30),
        None,
        Some("2026-02-01T10:00:00Z"),
        anchor,
    )
    .expect("valid");
    assert_eq!(s.next_after(anchor), Some(t("2026-02-01T10:00:30Z")));
    assert_eq!(
        s.next_after(t("2026-02-01T10:00:30Z")),
        Some(t("2026-02-01T10:01:00Z"))
    );
    let s = JobSchedule::from_spec(&interval(0, 0, 1), None, None, anchor).expect("valid");
    assert_eq!(s.summary(), "every 1s");
    assert_eq!(
        s.next_after(t("2026-01-01T00:00:00.500Z")),
        Some(t("2026-01-01T00:00:01Z"))
    );
}

#[test]
fn start_time_holds_back_cron() {
    let anchor = t("2026-01-01T00:00:00Z");
    let sched = Schedule {
        cron: Some("0 * * * *".into()),
        ..Default::default()
    };
    let s =
        JobSchedule::from_spec(&sched, None, Some("2026-03-01T05:30:00Z"), anchor).expect("valid");
    assert_eq!(s.next_after(anchor), Some(t("2026-03-01T06:00:00Z")));
    let s =
        JobSchedule::from_spec(&sched, None, Some("2026-03-01T05:00:00Z"), anchor).expect("valid");
    assert_eq!(
        s.next_after(anchor),
        Some(t("2026-03-01T05:00:00Z")),
        "a slot exactly at startTime runs"
    );
}

#[test]
fn at_runs_once() {
    let anchor = t("2026-01-01T00:00:00Z");
    let sched = Schedule {
        at: Some("2026-12-01T00:00:00Z".into()),
        ..Default::default()
    };
    let s = JobSchedule::from_spec(&sched, None, None, anchor).expect("valid");
    assert_eq!(s.summary(), "at 2026-12-01T00:00:00Z");
    assert_eq!(s.job_type(), JobType::Date);
    assert_eq!(s.next_after(anchor), Some(t("2026-12-01T00:00:00Z")));
    assert_eq!(s.next_after(t("2026-12-01T00:00:00Z")), None);
}

#[test]
fn every_starts_from_the_whole_second_as_robfig_does() {
    // robfig's ConstantDelaySchedule.Next: t + delay - t.Nanosecond().
    let cron = |e: &str| Schedule {
        cron: Some(e.into()),
        ..Default::default()
    };
    let from = t("2025-01-01T00:00:00.25Z");
    let s = JobSchedule::from_expression("@every 5m", "UTC", from).expect("valid");
    assert_eq!(
        next_n_exact(&s, from, 3),
        [
            t("2025-01-01T00:05:00Z"),
            t("2025-01-01T00:10:00Z"),
            t("2025-01-01T00:15:00Z")
        ]
    );
    // Asked from any instant, the slots stay on the anchor's whole seconds.
    assert_eq!(
        s.next_after(t("2025-01-01T00:07:59.999Z")),
        Some(t("2025-01-01T00:10:00Z"))
    );
    assert_eq!(
        s.next_after(t("2025-01-01T00:10:00Z")),
        Some(t("2025-01-01T00:15:00Z"))
    );
    // Just under a second past the anchor's second, with a period of one second: the first
    // slot is still after the anchor.
    let from = t("2025-01-01T00:00:00.999999Z");
    let s = JobSchedule::from_expression("@every 1s", "UTC", from).expect("valid");
    assert_eq!(s.next_after(from), Some(t("2025-01-01T00:00:01Z")));
    // A startTime anchors @every the same way.
    let s = JobSchedule::from_spec(
        &cron("@every 1m"),
        None,
        Some("2025-01-01T00:00:30.5Z"),
        t("2024-12-01T00:00:00Z"),
    )
    .expect("valid");
    assert_eq!(
        s.next_after(t("2024-12-31T00:00:00Z")),
        Some(t("2025-01-01T00:01:30Z"))
    );
    // What `kube-beat next '@every 5m' --from 2025-01-01T00:00:00.25Z` prints (it printed
    // 00:05:00.250Z before).
    assert_eq!(
        crate::cli::next_instants("@every 5m", "UTC", Some("2025-01-01T00:00:00.25Z"), 2)
            .expect("valid"),
        ["2025-01-01T00:05:00Z", "2025-01-01T00:10:00Z"]
    );
    // An `interval` is kube-beat's own: it keeps the anchor's sub-second part.
    let s = JobSchedule::from_expression("5m", "UTC", t("2025-01-01T00:00:00.25Z")).expect("valid");
    assert_eq!(
        s.next_after(t("2025-01-01T00:00:00.25Z")),
        Some(t("2025-01-01T00:05:00.25Z"))
    );
}

#[test]
fn summaries() {
    let anchor = t("2026-01-01T00:00:00Z");
    let cron = |e: &str| Schedule {
        cron: Some(e.into()),
        ..Default::default()
    };
    let s = JobSchedule::from_spec(&cron("*/5 * * * *"), Some("Europe/Berlin"), None, anchor)
        .expect("valid");
    assert_eq!(s.summary(), "*/5 * * * * (Europe/Berlin)");
    let s = JobSchedule::from_spec(&cron("@every 90s"), None, None, anchor).expect("valid");
    assert_eq!(s.summary(), "@every 90s");
    assert_eq!(s.next_after(anchor), Some(t("2026-01-01T00:01:30Z")));
    assert_eq!(s.job_type(), JobType::Cron);
    assert_eq!(human_duration(3600), "1h");
    assert_eq!(human_duration(0), "0s");
    assert_eq!(human_duration(3661), "1h1m1s");
}

#[test]
fn invalid_schedules_say_why() {
    let anchor = t("2026-01-01T00:00:00Z");
    let cron = |e: &str| Schedule {
        cron: Some(e.into()),
        ..Default::default()
    };
    let cases: Vec<(Schedule, Option<&str>, Option<&str>, &str)> = vec![
        (
            interval(0, 0, 0),
            None,
            None,
            "interval must be at least 1 second",
        ),
        (interval(0, -1, 0), None, None, "must not be negative"),
        (interval(i64::MAX, 0, 0), None, None, "interval is too long"),
        (
            cron("61 * * * *"),
            None,
            None,
            "invalid cron expression \"61 * * * *\": end of range (61) above maximum (59): 61",
        ),
        (
            cron("* * * *"),
            None,
            None,
            "expected exactly 5 fields, found 4",
        ),
        (
            cron("0 0 * * *"),
            Some("Mars/Olympus"),
            None,
            "unknown time zone \"Mars/Olympus\"",
        ),
        (
            Schedule {
                at: Some("tomorrow".into()),
                ..Default::default()
            },
            None,
            None,
            "at: \"tomorrow\" is not an RFC 3339 time",
        ),
        (
            cron("0 0 * * *"),
            None,
            Some("soon"),
            "startTime: \"soon\" is not an RFC 3339 time",
        ),
        (
            Schedule::default(),
            None,
            None,
            "exactly one of interval, cron or at",
        ),
        (
            Schedule {
                cron: Some("* * * * *".into()),
                interval: Some(IntervalSchedule {
                    hours: 0,
                    minutes: 0,
                    seconds: 5,
                }),
                ..Default::default()
            },
            None,
            None,
            "exactly one of interval, cron or at",
        ),
        (
            Schedule {
                at: Some("2026-01-01T00:00:00Z".into()),
                ..Default::default()
            },
            None,
            Some("2026-02-01T00:00:00Z"),
            "is before startTime",
        ),
    ];
    for (sched, tz, start, want) in cases {
        let err = JobSchedule::from_spec(&sched, tz, start, anchor).expect_err(want);
        assert!(err.0.contains(want), "want {want:?}, got {:?}", err.0);
    }
}

#[test]
fn next_command_parses_intervals_and_cron() {
    let from = t("2026-01-01T00:00:00Z");
    let s = JobSchedule::from_expression("1h30m", "UTC", from).expect("interval");
    assert_eq!(s.next_after(from), Some(t("2026-01-01T01:30:00Z")));
    let err = JobSchedule::from_expression("500ms", "UTC", from).expect_err("too short");
    assert!(err.0.contains("at least 1s"), "{}", err.0);
    let err = JobSchedule::from_expression("10x", "UTC", from).expect_err("bad unit");
    assert!(err.0.contains("unknown unit"), "{}", err.0);
    assert!(JobSchedule::from_expression("@hourly", "UTC", from).is_ok());
}

#[test]
fn never_matching_cron_has_no_next() {
    let from = t("2026-01-01T00:00:00Z");
    let s = JobSchedule::from_expression("0 0 30 2 *", "UTC", from).expect("robfig accepts Feb 30");
    assert_eq!(s.next_after(from), None);
}

#[test]
fn jitter_is_deterministic_and_bounded() {
    let slot = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let a = jitter("uid-a", slot, 30);
    assert_eq!(a, jitter("uid-a", slot, 30), "same input, same delay");
    assert_eq!(jitter("uid-a", slot, 0), Duration::zero());
    let mut distinct = std::collections::HashSet::new();
    for i in 0..200 {
        let d = jitter(&format!("uid-{i}"), slot, 30);
        assert!(d >= Duration::zero() && d < Duration::seconds(30), "{d:?}");
        distinct.insert(d.num_milliseconds());
    }
    assert!(
        distinct.len() > 150,
        "delays spread out: {} distinct of 200",
        distinct.len()
    );
}

#[test]
fn the_ends_of_time_have_no_next_slot_and_no_panic() {
    // Every kind of schedule asked for the slot after the last and before the first instant
    // chrono can represent: `None` or a slot, never an overflow.
    let anchor = t("2026-01-01T00:00:00Z");
    let specs = [
        Schedule {
            cron: Some("* * * * *".into()),
            ..Default::default()
        },
        Schedule {
            cron: Some("0 3 29 2 *".into()),
            ..Default::default()
        },
        Schedule {
            interval: Some(IntervalSchedule {
                hours: 876_000,
                minutes: 0,
                seconds: 0,
            }),
            ..Default::default()
        },
    ];
    for spec in &specs {
        for tz in [None, Some("Europe/Berlin"), Some("Pacific/Kiritimati")] {
            let s = JobSchedule::from_spec(spec, tz, None, anchor).expect("valid");
            assert_eq!(
                s.next_after(DateTime::<Utc>::MAX_UTC),
                None,
                "{spec:?} {tz:?}"
            );
            let _ = s.next_after(DateTime::<Utc>::MIN_UTC);
        }
    }
    let late_start = JobSchedule::from_spec(&specs[0], None, Some("9999-12-31T23:59:00Z"), anchor)
        .expect("valid");
    assert_eq!(
        late_start.next_after(anchor),
        Some(t("9999-12-31T23:59:00Z")),
        "the last representable RFC 3339 minute is still a slot"
    );
}
