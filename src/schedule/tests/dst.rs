//! SPEC §3's DST rules: where kube-beat deliberately differs from CronJob, so the cases are
//! written out by hand rather than taken from the robfig oracle.

use super::{next_n, t};
use crate::schedule::JobSchedule;

/// (expression, zone, from, expected next instants) — SPEC §3's DST rules.
const DST_CASES: &[(&str, &str, &str, &[&str])] = &[
    // America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z); 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
    // A fixed-hour slot in the gap runs once, at the first instant after it.
    (
        "30 2 * * *",
        "America/New_York",
        "2026-03-07T12:00:00Z",
        &[
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z",
            "2026-03-10T06:30:00Z",
        ],
    ),
    (
        "0 2 * * *",
        "America/New_York",
        "2026-03-07T12:00:00Z",
        &["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"],
    ),
    // Two slots in one gap: one run.
    (
        "0,30 2 * * *",
        "America/New_York",
        "2026-03-07T12:00:00Z",
        &[
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:00:00Z",
            "2026-03-09T06:30:00Z",
        ],
    ),
    // Every minute of a swallowed hour: one run.
    (
        "* 2 * * *",
        "America/New_York",
        "2026-03-08T06:00:00Z",
        &[
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:00:00Z",
            "2026-03-09T06:01:00Z",
        ],
    ),
    (
        "30 2 8 3 *",
        "America/New_York",
        "2026-01-01T00:00:00Z",
        &["2026-03-08T07:00:00Z", "2027-03-08T07:30:00Z"],
    ),
    // A fixed-hour slot in the overlap runs once, at its first occurrence.
    (
        "30 1 * * *",
        "America/New_York",
        "2026-10-31T12:00:00Z",
        &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
    ),
    (
        "15 1 * * *",
        "America/New_York",
        "2026-11-01T05:20:00Z",
        &["2026-11-02T06:15:00Z"],
    ),
    (
        "0 1 * * *",
        "America/New_York",
        "2026-11-01T04:00:00Z",
        &["2026-11-01T05:00:00Z", "2026-11-02T06:00:00Z"],
    ),
    // Hour `*`: real time. The overlap runs twice, the gap not at all.
    (
        "*/30 * * * *",
        "America/New_York",
        "2026-11-01T04:45:00Z",
        &[
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:00:00Z",
        ],
    ),
    (
        "*/30 * * * *",
        "America/New_York",
        "2026-03-08T06:15:00Z",
        &[
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:30:00Z",
        ],
    ),
    (
        "0 * * * *",
        "America/New_York",
        "2026-11-01T05:10:00Z",
        &["2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z"],
    ),
    (
        "0 * * * *",
        "America/New_York",
        "2026-11-01T06:10:00Z",
        &["2026-11-01T07:00:00Z", "2026-11-01T08:00:00Z"],
    ),
    (
        "*/1 * * * *",
        "America/New_York",
        "2026-11-01T05:58:30Z",
        &[
            "2026-11-01T05:59:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:01:00Z",
        ],
    ),
    // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z); 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T12:00:00Z",
        &["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
    ),
    (
        "0 2 * * *",
        "Europe/Berlin",
        "2026-03-28T12:00:00Z",
        &["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"],
    ),
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T12:00:00Z",
        &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
    ),
    (
        "0 3 * * *",
        "Europe/Berlin",
        "2026-10-24T12:00:00Z",
        &["2026-10-25T02:00:00Z", "2026-10-26T02:00:00Z"],
    ),
    (
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-10-25T00:10:00Z",
        &[
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:00:00Z",
        ],
    ),
    (
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-03-29T00:40:00Z",
        &["2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"],
    ),
    (
        "0 9 * * 1-5",
        "Europe/Berlin",
        "2026-03-27T12:00:00Z",
        &["2026-03-30T07:00:00Z", "2026-03-31T07:00:00Z"],
    ),
    // Australia/Lord_Howe shifts by 30 minutes: +10:30 standard, +11:00 summer.
    // 2026-10-04 02:00 LHST -> 02:30 LHDT (2026-10-03T15:30Z); 2026-04-05 02:00 LHDT -> 01:30 LHST (2026-04-04T15:00Z).
    (
        "15 2 * * *",
        "Australia/Lord_Howe",
        "2026-10-03T00:00:00Z",
        &["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"],
    ),
    (
        "*/15 * * * *",
        "Australia/Lord_Howe",
        "2026-10-03T15:20:00Z",
        &["2026-10-03T15:30:00Z", "2026-10-03T15:45:00Z"],
    ),
    (
        "45 1 * * *",
        "Australia/Lord_Howe",
        "2026-04-04T00:00:00Z",
        &["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"],
    ),
    (
        "*/15 * * * *",
        "Australia/Lord_Howe",
        "2026-04-04T14:20:00Z",
        &[
            "2026-04-04T14:30:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-04T15:00:00Z",
            "2026-04-04T15:15:00Z",
            "2026-04-04T15:30:00Z",
        ],
    ),
];

#[test]
fn dst_rules_of_the_spec() {
    for (expr, tz, from, want) in DST_CASES {
        let from = t(from);
        let s = JobSchedule::from_expression(expr, tz, from).expect(expr);
        assert_eq!(
            next_n(&s, from, want.len()),
            *want,
            "{expr:?} in {tz} from {from}"
        );
    }
}
