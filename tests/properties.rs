//! Property tests (proptest) for the parsers and decoders that take user or worker input: the
//! cron and interval parsers, spec validation, `kube-beat import`, and the Celery result
//! decoders. None may panic on any input; accepted schedules must produce strictly increasing
//! instants through the same path as `kube-beat next`.

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use kube_beat::{
    api::ScheduledJobSpec,
    reconcile::validate::{self, JobMeta, TaskFunctionRef},
    schedule::JobSchedule,
    tracker::decode,
};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-29T00:30:00Z")
        .expect("instant")
        .with_timezone(&Utc)
}

/// One cron field from the grammar robfig accepts: `*`, `*/s`, `a`, `a-b`, `a-b/s`, lists.
fn field(lo: u32, hi: u32) -> impl Strategy<Value = String> {
    let one = prop_oneof![
        Just("*".to_string()),
        (1..=hi - lo + 1).prop_map(|s| format!("*/{s}")),
        (lo..=hi).prop_map(|a| a.to_string()),
        (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        (lo..=hi, lo..=hi, 1..=5u32).prop_map(|(a, b, s)| format!("{}-{}/{s}", a.min(b), a.max(b))),
    ];
    proptest::collection::vec(one, 1..3).prop_map(|parts| parts.join(","))
}

fn cron() -> impl Strategy<Value = String> {
    (
        field(0, 59),
        field(0, 23),
        field(1, 31),
        field(1, 12),
        field(0, 6),
    )
        .prop_map(|(m, h, dom, mon, dow)| format!("{m} {h} {dom} {mon} {dow}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_schedule_text_is_accepted_or_refused_never_a_panic(s in "\\PC{0,40}") {
        for tz in ["UTC", "Europe/Berlin"] {
            if let Ok(schedule) = JobSchedule::from_expression(&s, tz, t0()) {
                let mut at = t0();
                for _ in 0..3 {
                    match schedule.next_after(at) {
                        Some(next) => { prop_assert!(next > at, "{s:?}: {next} after {at}"); at = next; }
                        None => break,
                    }
                }
            }
        }
    }

    #[test]
    fn generated_cron_expressions_parse_and_step_forward(expr in cron(), tz in prop_oneof![Just("UTC"), Just("Europe/Berlin"), Just("America/New_York")]) {
        // Day-of-month/month combinations like 31 February never fire: robfig gives up after
        // five years, so does kube-beat (None); everything else yields increasing instants.
        let lines = kube_beat::cli::next_instants(&expr, tz, Some("2026-03-29T00:30:00Z"), 5);
        let lines = lines.map_err(|e| TestCaseError::fail(format!("{expr}: {e}")))?;
        let instants: Vec<DateTime<Utc>> = lines.iter()
            .map(|l| DateTime::parse_from_rfc3339(l).map(|d| d.with_timezone(&Utc)))
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(format!("{expr}: {e}")))?;
        prop_assert!(instants.windows(2).all(|w| w[0] < w[1]), "{expr} in {tz}: {lines:?}");
        prop_assert!(instants.iter().all(|t| *t > t0()));
    }

    #[test]
    fn intervals_parse_to_their_sum(parts in proptest::collection::vec((1u64..500, prop_oneof![Just("h"), Just("m"), Just("s")]), 1..4)) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        let want: u64 = parts.iter().map(|(n, u)| n * match *u { "h" => 3600, "m" => 60, _ => 1 }).sum();
        let schedule = JobSchedule::from_expression(&text, "UTC", t0())
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let first = schedule.next_after(t0()).expect("an interval always has a next run");
        prop_assert_eq!((first - t0()).num_seconds() as u64, want, "{}", text);
    }

    #[test]
    fn result_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode::redis_meta(&bytes);
        let v = decode::db_result(&bytes);
        prop_assert!(!v.is_null() || bytes == b"null");
        let mut pickled = vec![0x80];
        pickled.extend_from_slice(&bytes);
        let _ = decode::db_result(&pickled);
    }

    #[test]
    fn truncation_bounds_any_result(s in "\\PC{0,20000}") {
        let v = serde_json::json!({"s": s});
        let t = decode::truncate_result(&v);
        prop_assert!(t.to_string().len() <= decode::RESULT_MAX_BYTES.max(v.to_string().len()));
        prop_assert!(decode::truncate_traceback(&s).len() <= decode::TRACEBACK_MAX_BYTES + 40);
        prop_assert!(decode::error_message(&serde_json::json!(s)).len() <= decode::ERROR_MAX_BYTES);
    }

    #[test]
    fn any_spec_validates_or_is_refused(schedule in prop_oneof![cron().prop_map(|c| serde_json::json!({"cron": c})), "\\PC{0,30}".prop_map(|c| serde_json::json!({"cron": c})), (0i64..100, -5i64..100).prop_map(|(m, s)| serde_json::json!({"interval": {"minutes": m, "seconds": s}}))],
                                        tz in prop_oneof![Just(None), Just(Some("UTC")), Just(Some("Mars/Base")), Just(Some(""))],
                                        jitter in proptest::option::of(-5i64..100000),
                                        args in prop_oneof![Just(serde_json::json!([])), Just(serde_json::json!({"x": 1})), Just(serde_json::json!("text"))]) {
        let mut spec = serde_json::json!({"taskFunction": "f", "schedule": schedule, "args": args});
        if let Some(tz) = tz { spec["timeZone"] = serde_json::json!(tz); }
        if let Some(j) = jitter { spec["jitterSeconds"] = serde_json::json!(j); }
        let Ok(parsed) = serde_json::from_value::<ScheduledJobSpec>(spec) else { return Ok(()) };
        let tf_spec: kube_beat::api::TaskFunctionSpec =
            serde_json::from_value(serde_json::json!({"task": "kb.echo", "queue": "celery"})).expect("tf");
        let tf = validate::task_function("f", &tf_spec).expect("valid tf");
        let meta = JobMeta { uid: "u", namespace: "ns", name: "n", generation: 1, created: t0(), trigger: None };
        let _ = validate::scheduled_job(&meta, &parsed, TaskFunctionRef::Valid(&tf), t0());
    }

    #[test]
    fn import_never_panics(text in "\\PC{0,300}") {
        let _ = kube_beat::import::convert(&text, None, &kube_beat::import::Options::default(), t0());
    }
}
