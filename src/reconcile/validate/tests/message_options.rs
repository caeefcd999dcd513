//! Message options: resolved job over TaskFunction, reserved header names, and the bounds of
//! each option.

use serde_json::json;

use super::*;

/// A job's message options from JSON (the fields as a manifest spells them).
fn job_with(options: serde_json::Value) -> ScheduledJobSpec {
    let mut v = json!({"taskFunction": "sync-users", "schedule": {"interval": {"minutes": 5}}});
    if let (Some(o), serde_json::Value::Object(extra)) = (v.as_object_mut(), options) {
        o.extend(extra);
    }
    serde_json::from_value(v).expect("spec")
}

fn tf_with(options: serde_json::Value) -> TaskFunctionSpec {
    let mut v = serde_json::to_value(tf_spec()).expect("tf json");
    if let (Some(o), serde_json::Value::Object(extra)) = (v.as_object_mut(), options) {
        o.extend(extra);
    }
    serde_json::from_value(v).expect("tf spec")
}

#[test]
fn message_options_resolve_job_over_task_function() {
    let tf = tf_with(json!({
        "exchange": "tf-x", "routingKey": "tf-rk", "timeLimit": 600, "softTimeLimit": 300,
        "ignoreResult": true, "headers": {"tenant": "tf", "tf_only": 1, "shared": "tf"},
    }));
    let job = job_with(json!({
        "routingKey": "job-rk", "softTimeLimit": 100, "ignoreResult": false,
        "headers": {"shared": "job", "job_only": [1, "x"]},
    }));
    let o = build(&job, &tf).expect("valid").message_options;
    assert_eq!(o.exchange.as_deref(), Some("tf-x"), "inherited");
    assert_eq!(o.routing_key.as_deref(), Some("job-rk"), "overridden");
    assert_eq!((o.time_limit, o.soft_time_limit), (Some(600), Some(100)));
    assert!(
        !o.ignore_result,
        "the job's false overrides the TaskFunction's true"
    );
    // TaskFunction's first, the job's replacing in place, then the job's new ones.
    assert_eq!(
        o.headers,
        vec![
            ("tenant".to_string(), json!("tf")),
            ("tf_only".to_string(), json!(1)),
            ("shared".to_string(), json!("job")),
            ("job_only".to_string(), json!([1, "x"])),
        ]
    );
    // Nothing set anywhere: Celery's defaults.
    let plain = build(&job_spec(), &tf_spec())
        .expect("valid")
        .message_options;
    assert_eq!(plain, crate::celery::SendOptions::default());
    // The stored form keeps the header order (a list of pairs, not a jsonb object).
    let stored = serde_json::to_value(&o).expect("json");
    assert_eq!(stored["headers"][0], json!(["tenant", "tf"]));
    let back: crate::celery::SendOptions = serde_json::from_value(stored).expect("round trip");
    assert_eq!(back, o);
}

#[test]
fn reserved_header_names_are_refused_on_jobs_and_task_functions() {
    for name in RESERVED_HEADERS.iter().copied().chain([
        "kubebeat_job",
        "kubebeat_slot",
        "kubebeat_trigger",
        "KubeBeat_x",
    ]) {
        let job = job_with(json!({"headers": {"ok": 1, name: "x"}}));
        let e = build(&job, &tf_spec()).expect_err(name);
        assert_eq!(e.reason, Reason::InvalidSpec, "{name}");
        assert!(
            e.message.contains(&format!("{name:?} is reserved")),
            "{name}: {}",
            e.message
        );
        let e = task_function("tf", &tf_with(json!({"headers": {name: 1}}))).expect_err(name);
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert!(e.message.contains("is reserved"), "{}", e.message);
    }
    // Near misses are free: only the exact names (and the kubebeat prefix) are Celery's/ours.
    let job = job_with(json!({"headers": {"Task": 1, "task_kind": 2, "x-kubebeat": 3}}));
    assert!(build(&job, &tf_spec()).is_ok());
}

#[test]
fn message_option_bounds() {
    let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_HEADERS)
        .map(|i| (format!("h{i}"), json!(i)))
        .collect();
    let exactly: serde_json::Map<String, serde_json::Value> = (0..MAX_HEADERS)
        .map(|i| (format!("h{i}"), json!(i)))
        .collect();
    let cases: Vec<(serde_json::Value, serde_json::Value, Option<&str>)> = vec![
        (json!({}), json!({"headers": exactly.clone()}), None),
        (
            json!({}),
            json!({"headers": many}),
            Some("headers has 33 entries; the limit is 32"),
        ),
        // 16 from each side: 32 merged is fine; one more on the job's side is not.
        (
            json!({"headers": (0..16).map(|i| (format!("t{i}"), json!(i))).collect::<serde_json::Map<_, _>>()}),
            json!({"headers": (0..17).map(|i| (format!("j{i}"), json!(i))).collect::<serde_json::Map<_, _>>()}),
            Some("headers has 33 entries"),
        ),
        (
            json!({}),
            json!({"headers": {"big": "x".repeat(MAX_HEADERS_BYTES)}}),
            Some("bytes of JSON; the limit is 8192"),
        ),
        (
            json!({}),
            json!({"headers": {"big": "x".repeat(MAX_HEADERS_BYTES - 12)}}),
            None,
        ),
        (
            json!({}),
            json!({"headers": {"x".repeat(256): 1}}),
            Some("longer than 255 bytes"),
        ),
        (json!({}), json!({"headers": {"x".repeat(255): 1}}), None),
        (
            json!({}),
            json!({"headers": {"": 1}}),
            Some("must not be empty"),
        ),
        (
            json!({}),
            json!({"headers": {"a\nb": 1}}),
            Some("control characters"),
        ),
        (
            json!({}),
            json!({"headers": {"a": "nul\u{0}"}}),
            Some("NUL"),
        ),
        (
            json!({}),
            json!({"timeLimit": 0}),
            Some("timeLimit must be at least 1, got 0"),
        ),
        (
            json!({}),
            json!({"timeLimit": MAX_DURATION_SECONDS + 1}),
            Some("timeLimit must be at most 31536000"),
        ),
        (
            json!({}),
            json!({"timeLimit": MAX_DURATION_SECONDS, "softTimeLimit": MAX_DURATION_SECONDS}),
            None,
        ),
        (
            json!({}),
            json!({"softTimeLimit": 0}),
            Some("softTimeLimit must be at least 1"),
        ),
        (
            json!({}),
            json!({"timeLimit": 10, "softTimeLimit": 11}),
            Some("softTimeLimit (11) must not be greater than timeLimit (10)"),
        ),
        (
            json!({}),
            json!({"timeLimit": 10, "softTimeLimit": 10}),
            None,
        ),
        (json!({}), json!({"softTimeLimit": 999}), None),
        // Valid halves, invalid whole: the TaskFunction's hard limit under the job's soft one.
        (
            json!({"timeLimit": 10}),
            json!({"softTimeLimit": 20}),
            Some("after taking the TaskFunction's values"),
        ),
        (
            json!({}),
            json!({"exchange": "x".repeat(256)}),
            Some("exchange is longer than 255 bytes"),
        ),
        (
            json!({}),
            json!({"exchange": "x".repeat(255), "routingKey": "r".repeat(255)}),
            None,
        ),
        (
            json!({}),
            json!({"exchange": "x", "routingKey": "r".repeat(256)}),
            Some("routingKey is longer than 255 bytes"),
        ),
        (
            json!({}),
            json!({"exchange": "a\u{0}b"}),
            Some("control characters"),
        ),
        (
            json!({}),
            json!({"exchange": "celeryev"}),
            Some("is reserved"),
        ),
        (
            json!({}),
            json!({"exchange": "celery.pidbox"}),
            Some("is reserved"),
        ),
        (
            json!({}),
            json!({"exchange": "KubeBeat.x"}),
            Some("is reserved"),
        ),
        // The default exchange routes by queue name: another key would escape allowedQueues.
        (
            json!({}),
            json!({"routingKey": "other_queue"}),
            Some("with the default exchange would publish to queue \"other_queue\""),
        ),
        (
            json!({}),
            json!({"exchange": "", "routingKey": "other_queue"}),
            Some("with the default exchange"),
        ),
        (json!({}), json!({"routingKey": "ad_queue"}), None),
        (
            json!({}),
            json!({"exchange": "", "ignoreResult": true}),
            None,
        ),
    ];
    for (tf, job, want) in cases {
        let tf_spec = tf_with(tf.clone());
        let got = build(&job_with(job.clone()), &tf_spec);
        match (want, got) {
            (None, Ok(_)) => {}
            (Some(w), Err(e)) => {
                assert_eq!(e.reason, Reason::InvalidSpec, "{job}");
                assert!(e.message.contains(w), "{job}: {} (wanted {w:?})", e.message);
            }
            (w, got) => panic!("tf {tf} job {job}: wanted {w:?}, got {got:?}"),
        }
    }
    // The TaskFunction's own options are checked on their own, too.
    let e = task_function("tf", &tf_with(json!({"timeLimit": 5, "softTimeLimit": 6})))
        .expect_err("soft over hard");
    assert!(e.message.contains("softTimeLimit (6)"), "{}", e.message);
}

#[test]
fn ignore_result_needs_concurrency_allow() {
    for policy in ["Forbid", "Replace"] {
        let job = job_with(json!({"ignoreResult": true, "concurrencyPolicy": policy}));
        let e = build(&job, &tf_spec()).expect_err(policy);
        assert!(
            e.message.contains("ignoreResult") && e.message.contains(policy),
            "{}",
            e.message
        );
    }
    // Inherited from the TaskFunction too.
    let tf = tf_with(json!({"ignoreResult": true}));
    let job = job_with(json!({"concurrencyPolicy": "Forbid"}));
    assert!(build(&job, &tf).is_err());
    let allowed = job_with(json!({"ignoreResult": true, "concurrencyPolicy": "Allow"}));
    assert!(build(&allowed, &tf_spec()).is_ok());
}
