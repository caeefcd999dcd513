//! The reader against job states pickled by APScheduler itself ([`fixtures`]).

#[rustfmt::skip]
mod fixtures;

use super::*;
use crate::tracker::pickle::data::decode;

fn now() -> DateTime<Utc> {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

fn state(hex_text: &str) -> Data {
    let bytes: Vec<u8> = (0..hex_text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_text[i..i + 2], 16).unwrap())
        .collect();
    decode(&bytes, BUDGET).unwrap()
}

fn ids(c: &Candidate) -> Vec<&'static str> {
    c.differences.iter().map(|d| d.id).collect()
}

#[test]
fn cron_trigger_with_every_option() {
    let c = convert("cron", &state(fixtures::CRON), false, now()).unwrap();
    assert_eq!(c.task, "logging.log");
    // APScheduler mon-fri,sun (Monday = 0) is cron 1-5 and 0.
    assert_eq!(
        Value::Object(c.spec.clone()),
        json!({
            "schedule": {"cron": "0,15,30,45 2,3 * * 0-5"},
            "timeZone": "Europe/Berlin",
            "startTime": "2025-12-31T23:00:00Z",
            "jitterSeconds": 5,
            "args": [20, "msg"],
            "startingDeadlineSeconds": 30,
            "concurrencyPolicy": "Allow",
            "description": "Nightly report",
        })
    );
    assert_eq!(
        ids(&c),
        [
            "in-process-callable",
            "jitter-deterministic",
            "end-date",
            "coalesce",
            "max-instances"
        ]
    );
}

#[test]
fn interval_and_date_triggers() {
    let c = convert("every", &state(fixtures::INTERVAL), false, now()).unwrap();
    // start_date 2026-01-01 00:00 New York (05:00Z) is the first run: startTime one interval
    // (2 h 30 min) before it.
    assert_eq!(
        Value::Object(c.spec.clone()),
        json!({
            "schedule": {"interval": {"hours": 2, "minutes": 30, "seconds": 0}},
            "startTime": "2026-01-01T02:30:00Z",
            "args": [20, "msg"],
            "kwargs": {"extra": {"a": [1, 2.5, null, true]}},
            "concurrencyPolicy": "Forbid",
        })
    );
    let c = convert("once", &state(fixtures::DATE), true, now()).unwrap();
    assert_eq!(c.spec["schedule"], json!({"at": "2026-05-01T10:00:00Z"}));
    assert_eq!(c.spec["suspend"], true);
}

#[test]
fn what_a_five_field_cron_cannot_express_is_refused() {
    for (fixture, words) in [
        (fixtures::LAST, "LastDayOfMonthExpression"),
        (fixtures::SECOND, "second"),
        (fixtures::YEAR, "year"),
        (fixtures::BOTHDAYS, "both"),
    ] {
        let e = convert("x", &state(fixture), false, now()).unwrap_err();
        assert!(e.contains(words), "{e}");
    }
    let c = convert("dowstep", &state(fixtures::DOWSTEP), false, now()).unwrap();
    // */2 over Monday = 0: Mon, Wed, Fri, Sun.
    assert_eq!(c.spec["schedule"]["cron"], "0 5,10,15,20 * * 0,1,3,5");
}

#[test]
fn datetimes_keep_their_fold() {
    let first = datetime(&state(fixtures::NOFOLD)).unwrap().unwrap();
    let second = datetime(&state(fixtures::FOLD)).unwrap().unwrap();
    assert_eq!(rfc3339(first), "2026-10-25T00:30:00Z");
    assert_eq!(rfc3339(second), "2026-10-25T01:30:00Z");
}

#[test]
fn a_pickle_that_would_run_code_is_only_data() {
    let s = state(fixtures::EVIL);
    let e = convert("evil", &s, false, now()).unwrap_err();
    assert!(e.contains("posix.system") || e.contains("os.system"), "{e}");
    assert!(!std::path::Path::new("/tmp/kbt-pwned").exists());
}

#[test]
fn protocol_0_and_hostile_pickles() {
    let d = state(fixtures::PROTO0);
    assert_eq!(
        to_json(&d).unwrap(),
        json!({"a": [1, 2], "b": ["x", 3.5], "c": null})
    );
    // A list nested 100 levels deep: refused at the depth budget, without recursion.
    let mut deep = vec![0x80, 4];
    deep.extend(std::iter::repeat_n(b']', 100));
    deep.extend(std::iter::repeat_n(b'a', 99));
    deep.push(b'.');
    assert!(matches!(
        decode(&deep, BUDGET),
        Err(crate::tracker::pickle::Refused::TooDeep(64))
    ));
    // A billion laughs: each list holds the previous one twice, by memo reference (25
    // levels: 2^25 values, within the depth budget).
    let mut laughs = vec![0x80, 4, b']', 0x94];
    for i in 0..25u8 {
        laughs.extend([b']', b'h', i, b'a', b'h', i, b'a', 0x94]);
    }
    laughs.push(b'.');
    assert!(matches!(
        decode(&laughs, BUDGET),
        Err(crate::tracker::pickle::Refused::TooManyValues(_))
    ));
    // A reference cycle (a list that contains itself).
    let cycle = [0x80, 4, b']', 0x94, b'h', 0, b'a', b'.'];
    assert!(decode(&cycle, BUDGET).is_err());
    assert!(decode(b"\x80\x04garbage", BUDGET).is_err());
}

#[test]
fn oversized_state_is_refused_by_row() {
    let row = ApschedulerRow {
        id: "big".into(),
        next_run_time: Some(0.0),
        job_state: None,
        state_len: MAX_STATE_BYTES + 1,
    };
    let e = convert_row(&row, now()).unwrap_err();
    assert!(e.reason.contains("larger"), "{e}");
}
