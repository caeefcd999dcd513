use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;
use crate::api::{IntervalSchedule, Schedule};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn meta() -> JobMeta<'static> {
    JobMeta {
        uid: "uid-1",
        namespace: "team-a",
        name: "sync",
        generation: 3,
        created: t("2026-01-01T00:00:00Z"),
        trigger: None,
    }
}

fn tf_spec() -> TaskFunctionSpec {
    TaskFunctionSpec {
        task: "tasks.ad_sync_tasks.sync_domain_users_task".into(),
        queue: "ad_queue".into(),
        priority: Some(5),
        expires_seconds: None,
        default_args: Some(json!(["default.example.com"])),
        default_kwargs: Some(json!({"mode": "full", "dry_run": false})),
        allowed_namespaces: vec![],
        allowed_queues: vec![],
        description: None,
        message: Default::default(),
        parameters: None,
    }
}

fn job_spec() -> ScheduledJobSpec {
    serde_json::from_value(json!({
        "taskFunction": "sync-users",
        "schedule": {"interval": {"minutes": 5}},
    }))
    .expect("spec")
}

fn build(spec: &ScheduledJobSpec, tf: &TaskFunctionSpec) -> Result<JobRow, Invalid> {
    let tf = task_function("sync-users", tf).expect("valid tf");
    scheduled_job(
        &meta(),
        spec,
        TaskFunctionRef::Valid(&tf),
        t("2026-01-01T00:12:00Z"),
    )
}

#[test]
fn builds_the_row_with_inheritance_and_merge() {
    let mut spec = job_spec();
    spec.kwargs = Some(json!({"dry_run": true, "extra": 1}));
    let row = build(&spec, &tf_spec()).expect("valid");
    assert_eq!(row.task_name, "tasks.ad_sync_tasks.sync_domain_users_task");
    assert_eq!(row.queue, "ad_queue");
    assert_eq!(row.priority, Some(5));
    assert_eq!(
        row.args,
        json!(["default.example.com"]),
        "args default from the TaskFunction"
    );
    assert_eq!(
        row.kwargs,
        json!({"mode": "full", "dry_run": true, "extra": 1}),
        "kwargs merged over defaults"
    );
    assert_eq!(row.job_type, JobType::Interval);
    assert_eq!(row.schedule_summary, "every 5m");
    assert_eq!(
        row.next_run_at,
        Some(t("2026-01-01T00:15:00Z")),
        "on the grid anchored at creation"
    );
    assert_eq!(row.generation, 3);
    assert_eq!(row.execution_timeout_seconds, 3600);
    assert_eq!(row.history_limit, 100);
    assert_eq!(
        row.schedule_config,
        json!({"interval": {"hours": 0, "minutes": 5, "seconds": 0}})
    );

    spec.args = Some(json!(["corp.example.com"]));
    spec.queue = Some("other".into());
    spec.priority = Some(0);
    let mut tf = tf_spec();
    tf.allowed_queues = vec!["ad_queue".into(), "other".into()];
    let row = build(&spec, &tf).expect("valid");
    assert_eq!(
        row.args,
        json!(["corp.example.com"]),
        "args replace the defaults"
    );
    assert_eq!(row.queue, "other");
    assert_eq!(row.priority, Some(0));
}

#[test]
fn suspended_jobs_have_no_next_run() {
    let mut spec = job_spec();
    spec.suspend = true;
    let row = build(&spec, &tf_spec()).expect("valid");
    assert!(row.suspended);
    assert_eq!(row.next_run_at, None);
}

#[test]
fn every_bad_input_has_a_reason_and_a_message() {
    type Edit = fn(&mut ScheduledJobSpec);
    let cases: Vec<(&str, Edit, Reason, &str)> = vec![
        (
            "bad cron",
            |s| {
                s.schedule = Some(Schedule {
                    cron: Some("61 * * * *".into()),
                    ..Default::default()
                })
            },
            Reason::InvalidSchedule,
            "above maximum (59)",
        ),
        (
            "unknown zone",
            |s| {
                s.schedule = Some(Schedule {
                    cron: Some("0 * * * *".into()),
                    ..Default::default()
                });
                s.time_zone = Some("Mars/Olympus".into());
            },
            Reason::InvalidSchedule,
            "unknown time zone",
        ),
        (
            "zero interval",
            |s| {
                s.schedule = Some(Schedule {
                    interval: Some(IntervalSchedule::default()),
                    ..Default::default()
                })
            },
            Reason::InvalidSchedule,
            "at least 1 second",
        ),
        (
            "at in the past",
            |s| {
                s.schedule = Some(Schedule {
                    at: Some("2025-06-01T00:00:00Z".into()),
                    ..Default::default()
                })
            },
            Reason::InvalidSchedule,
            "is in the past",
        ),
        (
            "two schedules",
            |s| {
                if let Some(one) = &mut s.schedule {
                    one.cron = Some("* * * * *".into())
                }
            },
            Reason::InvalidSchedule,
            "exactly one of",
        ),
        (
            "kwargs not object",
            |s| s.kwargs = Some(json!([1, 2])),
            Reason::InvalidSpec,
            "kwargs must be an object, got an array",
        ),
        (
            "args not array",
            |s| s.args = Some(json!({"a": 1})),
            Reason::InvalidSpec,
            "args must be an array, got an object",
        ),
        (
            "args a string",
            |s| s.args = Some(json!("x")),
            Reason::InvalidSpec,
            "args must be an array, got a string",
        ),
        (
            "NUL in a nested kwargs value",
            |s| s.kwargs = Some(json!({"a": {"b": ["ok", "x\u{0}y"]}})),
            Reason::InvalidSpec,
            "must not contain NUL characters",
        ),
        (
            "NUL in a kwargs key",
            |s| s.kwargs = Some(json!({"a\u{0}": 1})),
            Reason::InvalidSpec,
            "must not contain NUL characters",
        ),
        (
            "NUL in args",
            |s| s.args = Some(json!(["\u{0}"])),
            Reason::InvalidSpec,
            "must not contain NUL characters",
        ),
        (
            "oversized kwargs",
            |s| s.kwargs = Some(json!({"blob": "x".repeat(70_000)})),
            Reason::InvalidSpec,
            "the limit is 65536",
        ),
        (
            "priority 12",
            |s| s.priority = Some(12),
            Reason::InvalidSpec,
            "priority must be between 0 and 9",
        ),
        (
            "negative deadline",
            |s| s.starting_deadline_seconds = Some(-1),
            Reason::InvalidSpec,
            "startingDeadlineSeconds must be at least 0, got -1",
        ),
        (
            "zero timeout",
            |s| s.execution_timeout_seconds = Some(0),
            Reason::InvalidSpec,
            "executionTimeoutSeconds must be at least 1",
        ),
        (
            "queue with newline",
            |s| s.queue = Some("a\nb".into()),
            Reason::InvalidSpec,
            "control characters",
        ),
        (
            "empty queue",
            |s| s.queue = Some(" ".into()),
            Reason::InvalidSpec,
            "queue must not be empty",
        ),
        (
            "huge jitter",
            |s| s.jitter_seconds = Some(100_000),
            Reason::InvalidSpec,
            "jitterSeconds must be at most 86400",
        ),
        (
            "a deadline over a year",
            |s| s.starting_deadline_seconds = Some(i64::MAX),
            Reason::InvalidSpec,
            "startingDeadlineSeconds must be at most 31536000",
        ),
        (
            "a timeout over a year",
            |s| s.execution_timeout_seconds = Some(31_536_001),
            Reason::InvalidSpec,
            "executionTimeoutSeconds must be at most 31536000",
        ),
        (
            "an expiry over a year",
            |s| s.expires_seconds = Some(i64::MAX),
            Reason::InvalidSpec,
            "expiresSeconds must be at most 31536000",
        ),
        (
            "a description over 1 KiB",
            |s| s.description = Some("é".repeat(1025)),
            Reason::InvalidSpec,
            "description is 1025 characters; the limit is 1024",
        ),
        (
            "a huge historyLimit",
            |s| s.history_limit = Some(i64::MAX),
            Reason::InvalidSpec,
            "historyLimit must be at most 100000",
        ),
        (
            "a long time zone",
            |s| s.time_zone = Some("Europe/".repeat(20)),
            Reason::InvalidSchedule,
            "timeZone is longer than 64",
        ),
        (
            "a queue of kube-beat's own",
            |s| s.queue = Some("kubebeat.sent.kube-beat.kube-beat-leader:123".into()),
            Reason::InvalidSpec,
            "is reserved",
        ),
        (
            "a queue of RabbitMQ's own",
            |s| s.queue = Some("amq.gen-x".into()),
            Reason::InvalidSpec,
            "is reserved",
        ),
        (
            "a queue of kombu's own, any case",
            |s| s.queue = Some("UNACKED".into()),
            Reason::InvalidSpec,
            "is reserved",
        ),
        (
            "a queue the TaskFunction does not allow",
            |s| s.queue = Some("team-b-workers".into()),
            Reason::QueueNotAllowed,
            "queue \"team-b-workers\" is not allowed by TaskFunction \"sync-users\" (allowedQueues: [ad_queue])",
        ),
        (
            "bad start time",
            |s| s.start_time = Some("yesterday".into()),
            Reason::InvalidSchedule,
            "startTime",
        ),
    ];
    for (name, edit, reason, message) in cases {
        let mut spec = job_spec();
        edit(&mut spec);
        let err = build(&spec, &tf_spec()).expect_err(name);
        assert_eq!(err.reason, reason, "{name}: {err}");
        assert!(
            err.message.contains(message),
            "{name}: want {message:?} in {:?}",
            err.message
        );
    }
}

#[test]
fn limits_hold_at_the_boundary() {
    let mut spec = job_spec();
    spec.starting_deadline_seconds = Some(MAX_DURATION_SECONDS);
    spec.execution_timeout_seconds = Some(MAX_DURATION_SECONDS);
    spec.expires_seconds = Some(MAX_DURATION_SECONDS);
    spec.jitter_seconds = Some(MAX_JITTER_SECONDS);
    spec.history_limit = Some(MAX_HISTORY_LIMIT);
    spec.description = Some("é".repeat(MAX_DESCRIPTION_CHARS));
    let row = build(&spec, &tf_spec()).expect("every value at its limit is valid");
    assert_eq!(row.execution_timeout_seconds, MAX_DURATION_SECONDS);
    assert_eq!(row.history_limit, 100_000);
}

#[test]
fn trigger_values_are_bounded() {
    let spec = job_spec();
    let tf = task_function("sync-users", &tf_spec()).expect("valid tf");
    let now = t("2026-01-01T00:12:00Z");
    let ok = "x".repeat(MAX_TRIGGER_CHARS);
    let m = JobMeta {
        trigger: Some(&ok),
        ..meta()
    };
    assert!(scheduled_job(&m, &spec, TaskFunctionRef::Valid(&tf), now).is_ok());
    let long = "x".repeat(MAX_TRIGGER_CHARS + 1);
    let m = JobMeta {
        trigger: Some(&long),
        ..meta()
    };
    let err = scheduled_job(&m, &spec, TaskFunctionRef::Valid(&tf), now).expect_err("long");
    assert_eq!(err.reason, Reason::InvalidSpec);
    assert_eq!(
        err.message,
        "the kubebeat.io/trigger annotation is 254 characters; the limit is 253"
    );
}

#[test]
fn task_function_queue_policy() {
    let mut bad = tf_spec();
    bad.queue = "kubebeat:sent:x".into();
    assert!(
        task_function("x", &bad)
            .expect_err("reserved")
            .message
            .contains("is reserved")
    );
    let mut bad = tf_spec();
    bad.allowed_queues = vec!["ok".into(), "amq.direct".into()];
    assert!(
        task_function("x", &bad)
            .expect_err("reserved")
            .message
            .starts_with("allowedQueues: \"amq.direct\" is reserved")
    );
    let mut bad = tf_spec();
    bad.allowed_namespaces = vec!["a".into(); MAX_LIST_ITEMS + 1];
    assert!(
        task_function("x", &bad)
            .expect_err("too many")
            .message
            .contains("the limit is 256")
    );
    let mut bad = tf_spec();
    bad.expires_seconds = Some(MAX_DURATION_SECONDS + 1);
    assert!(task_function("x", &bad).is_err());
    // The default: the TaskFunction's own queue only; a job naming it explicitly is fine.
    let mut spec = job_spec();
    spec.queue = Some("ad_queue".into());
    assert_eq!(
        build(&spec, &tf_spec()).expect("own queue").queue,
        "ad_queue"
    );
}

#[test]
fn task_function_problems() {
    let spec = job_spec();
    let err = scheduled_job(
        &meta(),
        &spec,
        TaskFunctionRef::Missing,
        t("2026-01-01T00:00:00Z"),
    )
    .expect_err("missing");
    assert_eq!(err.reason, Reason::UnknownTaskFunction);
    assert!(
        err.message.contains("\"sync-users\" does not exist"),
        "{}",
        err.message
    );

    let mut tf = tf_spec();
    tf.allowed_namespaces = vec!["team-b".into(), "team-c".into()];
    let err = build(&spec, &tf).expect_err("not allowed");
    assert_eq!(err.reason, Reason::NamespaceNotAllowed);
    assert!(err.message.contains("[team-b, team-c]"), "{}", err.message);
    tf.allowed_namespaces.push("team-a".into());
    assert!(build(&spec, &tf).is_ok(), "allowed once listed");

    let mut bad = tf_spec();
    bad.default_kwargs = Some(json!("nope"));
    let tf_err = task_function("sync-users", &bad).expect_err("invalid tf");
    assert_eq!(tf_err.reason, Reason::InvalidSpec);
    let err = scheduled_job(
        &meta(),
        &spec,
        TaskFunctionRef::Invalid(&tf_err),
        t("2026-01-01T00:00:00Z"),
    )
    .expect_err("tf invalid");
    assert_eq!(err.reason, Reason::TaskFunctionNotReady);
    assert!(
        err.message.contains("defaultKwargs must be an object"),
        "{}",
        err.message
    );

    let mut bad = tf_spec();
    bad.task = "tasks.x\u{0}".into();
    assert!(
        task_function("x", &bad)
            .expect_err("NUL")
            .message
            .contains("control characters")
    );
    let mut bad = tf_spec();
    bad.allowed_namespaces = vec!["Not_A_Namespace".into()];
    assert!(
        task_function("x", &bad)
            .expect_err("ns")
            .message
            .contains("not a valid namespace")
    );
}

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
