use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;
use crate::api::{IntervalSchedule, Schedule};

/// Message options (exchange, routing key, time limits, headers...): job over TaskFunction,
/// reserved names and bounds.
mod message_options;

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
