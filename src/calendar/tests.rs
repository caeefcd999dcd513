use chrono::{DateTime, Utc};

use super::*;
use crate::api::schedule_calendar::{DateRange, TimeWindow};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

fn date(d: &str, reason: Option<&str>) -> CalendarEntry {
    CalendarEntry {
        date: Some(d.into()),
        reason: reason.map(Into::into),
        ..Default::default()
    }
}

fn weekdays(names: &[&str]) -> CalendarEntry {
    CalendarEntry {
        weekdays: Some(names.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

fn cal(name: &str, tz: Option<&str>, exclude: Vec<CalendarEntry>) -> Calendar {
    let spec = ScheduleCalendarSpec {
        time_zone: tz.map(Into::into),
        exclude,
        ..Default::default()
    };
    Calendar::from_spec(name, &spec).expect("valid calendar")
}

fn err(spec: ScheduleCalendarSpec) -> String {
    Calendar::from_spec("c", &spec)
        .expect_err("invalid calendar")
        .0
}

#[test]
fn holiday_with_and_without_reason() {
    let c = cal(
        "holidays",
        None,
        vec![
            date("2026-12-25", Some("Christmas")),
            date("2026-12-26", None),
        ],
    );
    assert_eq!(
        c.verdict(t("2026-12-25T00:00:00Z")).as_deref(),
        Some("Calendar: holidays: Christmas")
    );
    assert_eq!(
        c.verdict(t("2026-12-26T23:59:59Z")).as_deref(),
        Some("Calendar: holidays: excluded date 2026-12-26")
    );
    assert_eq!(c.verdict(t("2026-12-24T23:59:59Z")), None);
    assert_eq!(c.verdict(t("2026-12-27T00:00:00Z")), None);
}

#[test]
fn the_same_date_in_two_zones_is_two_different_spans_of_time() {
    // Kiritimati is UTC+14, Pago Pago UTC-11: at 2026-12-25T10:00Z it is already the 26th in
    // Kiritimati and still the 24th in Pago Pago.
    let kiri = cal(
        "kiri",
        Some("Pacific/Kiritimati"),
        vec![date("2026-12-25", None)],
    );
    let pago = cal(
        "pago",
        Some("Pacific/Pago_Pago"),
        vec![date("2026-12-25", None)],
    );
    let now = t("2026-12-25T10:00:00Z");
    assert_eq!(kiri.verdict(now), None);
    assert_eq!(pago.verdict(now), None);
    // The 25th in Kiritimati: 2026-12-24T10:00Z to 2026-12-25T10:00Z.
    assert!(kiri.verdict(t("2026-12-24T10:00:00Z")).is_some());
    assert!(kiri.verdict(t("2026-12-25T09:59:59Z")).is_some());
    assert_eq!(kiri.verdict(t("2026-12-24T09:59:59Z")), None);
    // The 25th in Pago Pago: 2026-12-25T11:00Z to 2026-12-26T11:00Z.
    assert_eq!(pago.verdict(t("2026-12-25T10:59:59Z")), None);
    assert!(pago.verdict(t("2026-12-25T11:00:00Z")).is_some());
    assert!(pago.verdict(t("2026-12-26T10:59:59Z")).is_some());
    assert_eq!(pago.verdict(t("2026-12-26T11:00:00Z")), None);
    // No instant is in both holidays: they are 25 hours apart.
    assert_eq!(
        excluded_by(&[kiri.clone(), pago.clone()], t("2026-12-25T10:30:00Z")),
        None
    );
    assert_eq!(
        excluded_by(&[kiri, pago], t("2026-12-25T12:00:00Z")).as_deref(),
        Some("Calendar: pago: excluded date 2026-12-25")
    );
}

#[test]
fn a_local_day_across_dst_is_23_or_25_hours() {
    let berlin = |d: &str| cal("b", Some("Europe/Berlin"), vec![date(d, None)]);
    // Spring forward 2026-03-29 (02:00 CET -> 03:00 CEST): the day is 23 hours long.
    let spring = berlin("2026-03-29");
    assert_eq!(spring.verdict(t("2026-03-28T22:59:59Z")), None);
    assert!(spring.verdict(t("2026-03-28T23:00:00Z")).is_some());
    assert!(spring.verdict(t("2026-03-29T21:59:59Z")).is_some());
    assert_eq!(spring.verdict(t("2026-03-29T22:00:00Z")), None);
    // Fall back 2026-10-25 (03:00 CEST -> 02:00 CET): 25 hours, both 02:30s included.
    let fall = berlin("2026-10-25");
    assert_eq!(fall.verdict(t("2026-10-24T21:59:59Z")), None);
    assert!(fall.verdict(t("2026-10-24T22:00:00Z")).is_some());
    assert!(fall.verdict(t("2026-10-25T00:30:00Z")).is_some()); // 02:30 CEST
    assert!(fall.verdict(t("2026-10-25T01:30:00Z")).is_some()); // 02:30 CET
    assert!(fall.verdict(t("2026-10-25T22:59:59Z")).is_some());
    assert_eq!(fall.verdict(t("2026-10-25T23:00:00Z")), None);
}

#[test]
fn date_ranges_include_both_ends() {
    let c = cal(
        "c",
        Some("America/New_York"),
        vec![CalendarEntry {
            dates: Some(DateRange {
                from: "2026-12-24".into(),
                to: "2026-12-26".into(),
            }),
            ..Default::default()
        }],
    );
    // 2026-12-24 00:00 EST = 05:00Z; 2026-12-27 00:00 EST = 2026-12-27T05:00Z.
    assert_eq!(c.verdict(t("2026-12-24T04:59:59Z")), None);
    assert_eq!(
        c.verdict(t("2026-12-24T05:00:00Z")).as_deref(),
        Some("Calendar: c: excluded dates 2026-12-24 to 2026-12-26")
    );
    assert!(c.verdict(t("2026-12-27T04:59:59Z")).is_some());
    assert_eq!(c.verdict(t("2026-12-27T05:00:00Z")), None);
}

#[test]
fn weekdays_any_case_full_or_short() {
    let c = cal(
        "weekend",
        Some("Asia/Tokyo"),
        vec![weekdays(&["saturday", "SUN"])],
    );
    // 2026-12-05 is a Saturday; Tokyo is UTC+9, so Saturday starts Friday 15:00Z.
    assert_eq!(c.verdict(t("2026-12-04T14:59:59Z")), None);
    assert_eq!(
        c.verdict(t("2026-12-04T15:00:00Z")).as_deref(),
        Some("Calendar: weekend: excluded weekday Saturday")
    );
    assert_eq!(
        c.verdict(t("2026-12-06T10:00:00Z")).as_deref(),
        Some("Calendar: weekend: excluded weekday Sunday")
    );
    assert_eq!(c.verdict(t("2026-12-06T15:00:00Z")), None);
    for ok in ["Mon", "mon", "MONDAY", "Wednesday", "thu"] {
        cal("c", None, vec![weekdays(&[ok])]);
    }
}

#[test]
fn windows_are_half_open() {
    let c = cal(
        "freeze",
        Some("Pacific/Kiritimati"),
        vec![CalendarEntry {
            window: Some(TimeWindow {
                from: "2026-12-20T00:00:00+01:00".into(),
                to: "2026-12-20T00:00:10+01:00".into(),
            }),
            reason: Some("change freeze".into()),
            ..Default::default()
        }],
    );
    assert_eq!(c.verdict(t("2026-12-19T22:59:59Z")), None);
    assert_eq!(
        c.verdict(t("2026-12-19T23:00:00Z")).as_deref(),
        Some("Calendar: freeze: change freeze")
    );
    assert!(c.verdict(t("2026-12-19T23:00:09.999Z")).is_some());
    assert_eq!(c.verdict(t("2026-12-19T23:00:10Z")), None);
    let unnamed = cal(
        "f",
        None,
        vec![CalendarEntry {
            window: Some(TimeWindow {
                from: "2026-12-20T00:00:00Z".into(),
                to: "2026-12-21T00:00:00Z".into(),
            }),
            ..Default::default()
        }],
    );
    assert_eq!(
        unnamed.verdict(t("2026-12-20T12:00:00Z")).as_deref(),
        Some("Calendar: f: excluded window 2026-12-20T00:00:00Z to 2026-12-21T00:00:00Z")
    );
}

#[test]
fn include_runs_only_listed_days_minus_exclusions() {
    let spec = ScheduleCalendarSpec {
        time_zone: Some("Europe/Berlin".into()),
        include: vec![weekdays(&["Mon", "Tue", "Wed", "Thu", "Fri"])],
        exclude: vec![date("2026-12-24", Some("Christmas Eve"))],
        description: None,
    };
    let c = Calendar::from_spec("business-days", &spec).expect("valid");
    // Wednesday 2026-12-23 runs; Thursday 24th is excluded; Saturday 26th is not listed.
    assert_eq!(c.verdict(t("2026-12-23T12:00:00Z")), None);
    assert_eq!(
        c.verdict(t("2026-12-24T12:00:00Z")).as_deref(),
        Some("Calendar: business-days: Christmas Eve")
    );
    assert_eq!(
        c.verdict(t("2026-12-26T12:00:00Z")).as_deref(),
        Some("Calendar: business-days: not a listed day")
    );
    // Saturday 00:30 in Berlin is still Friday in UTC: the calendar's zone decides.
    assert_eq!(
        c.verdict(t("2026-12-25T23:30:00Z")).as_deref(),
        Some("Calendar: business-days: not a listed day")
    );
}

#[test]
fn excluded_by_takes_the_first_calendar_in_order() {
    let a = cal("a", None, vec![date("2026-12-25", Some("A"))]);
    let b = cal(
        "b",
        None,
        vec![date("2026-12-25", Some("B")), date("2026-12-26", None)],
    );
    let both = [a, b];
    assert_eq!(
        excluded_by(&both, t("2026-12-25T08:00:00Z")).as_deref(),
        Some("Calendar: a: A")
    );
    assert_eq!(
        excluded_by(&both, t("2026-12-26T08:00:00Z")).as_deref(),
        Some("Calendar: b: excluded date 2026-12-26")
    );
    assert_eq!(excluded_by(&both, t("2026-12-27T08:00:00Z")), None);
    assert_eq!(excluded_by(&[], t("2026-12-25T08:00:00Z")), None);
}

#[test]
fn bad_specs_are_refused_with_the_entry_path() {
    let one = |e: CalendarEntry| ScheduleCalendarSpec {
        exclude: vec![date("2026-01-01", None), e],
        ..Default::default()
    };
    assert!(err(one(CalendarEntry::default())).starts_with("exclude[1]: set exactly one"));
    let mut two = date("2026-01-01", None);
    two.weekdays = Some(vec!["Mon".into()]);
    assert!(err(one(two)).contains("exactly one"));
    assert!(err(one(date("2026-02-30", None))).contains("exclude[1]: date: \"2026-02-30\""));
    assert!(err(one(date("2026-1-5", None))).contains("YYYY-MM-DD"));
    assert!(err(one(weekdays(&["Funday"]))).contains("not a weekday"));
    assert!(err(one(weekdays(&[]))).contains("1 to 7"));
    assert!(err(one(weekdays(&["x"; 8]))).contains("1 to 7"));
    assert!(err(one(weekdays(&["M".repeat(10_000).as_str()]))).contains("at most 9"));
    let range = |from: &str, to: &str| CalendarEntry {
        dates: Some(DateRange {
            from: from.into(),
            to: to.into(),
        }),
        ..Default::default()
    };
    assert!(err(one(range("2026-12-26", "2026-12-24"))).contains("before from"));
    assert!(err(one(range("1900-01-01", "2200-01-01"))).contains("100 years"));
    let window = |from: &str, to: &str| CalendarEntry {
        window: Some(TimeWindow {
            from: from.into(),
            to: to.into(),
        }),
        ..Default::default()
    };
    assert!(err(one(window("2026-12-20T00:00:00Z", "2026-12-20T00:00:00Z"))).contains("after"));
    assert!(err(one(window("2026-12-20", "2026-12-21T00:00:00Z"))).contains("RFC 3339"));
    assert!(err(one(window("0001-01-01T00:00:00Z", "9999-01-01T00:00:00Z"))).contains("100 years"));
    let mut long = date("2026-01-01", None);
    long.reason = Some("r".repeat(257));
    assert!(err(one(long)).contains("reason: at most 256"));
    assert!(
        err(ScheduleCalendarSpec {
            time_zone: Some("Mars/Olympus".into()),
            ..Default::default()
        })
        .contains("unknown time zone")
    );
    assert!(
        err(ScheduleCalendarSpec {
            include: vec![date("2026-01-01", None); 1001],
            ..Default::default()
        })
        .starts_with("include: at most 1000")
    );
}

#[test]
fn an_empty_calendar_excludes_nothing() {
    let c = cal("empty", None, vec![]);
    assert_eq!(c.verdict(t("2026-12-25T00:00:00Z")), None);
    assert_eq!(c.name(), "empty");
    assert_eq!(c.time_zone(), chrono_tz::UTC);
}
