//! `InvalidArguments`: a job's effective arguments against its TaskFunction's `parameters`.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:12:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

fn tf(parameters: Value) -> TaskFunctionSpec {
    serde_json::from_value(json!({
        "task": "tasks.export", "defaultKwargs": {"limit": 10, "mode": "full"},
        "parameters": parameters,
    }))
    .expect("tf spec")
}

fn job(extra: Value) -> ScheduledJobSpec {
    let mut v = json!({"taskFunction": "export", "schedule": {"interval": {"minutes": 5}}});
    if let (Some(o), Value::Object(extra)) = (v.as_object_mut(), extra) {
        o.extend(extra);
    }
    serde_json::from_value(v).expect("job spec")
}

fn judge(job: &ScheduledJobSpec, tf: &TaskFunctionSpec) -> Result<JobRow, Invalid> {
    let tf = task_function("export", tf)?;
    let meta = JobMeta {
        uid: "u",
        namespace: "ns",
        name: "j",
        generation: 1,
        created: now(),
        trigger: None,
    };
    scheduled_job(&meta, job, TaskFunctionRef::Valid(&tf), now())
}

fn limits() -> Value {
    json!({
        "kwargs": {"type": "object", "properties": {
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
            "mode": {"enum": ["full", "delta"]}
        }, "required": ["limit"]},
        "args": {"type": "array", "items": {"type": "string"}}
    })
}

#[test]
fn effective_arguments_are_checked_against_the_parameters() {
    // The defaults satisfy the schema; the job's kwargs are merged over them first.
    let row = judge(&job(json!({})), &tf(limits())).expect("defaults are valid");
    assert!(row.parameters.is_set());
    assert!(judge(&job(json!({"kwargs": {"limit": 500}})), &tf(limits())).is_ok());
    let e = judge(&job(json!({"kwargs": {"limit": 5000}})), &tf(limits())).expect_err("refused");
    assert_eq!(e.reason, Reason::InvalidArguments);
    assert_eq!(
        e.message,
        "kwargs.limit: 5000 is greater than the maximum 1000"
    );
    let e = judge(&job(json!({"args": [1]})), &tf(limits())).expect_err("refused");
    assert_eq!(
        (e.reason, e.message.as_str()),
        (Reason::InvalidArguments, "args[0]: 1 is not of type string")
    );
    let e = judge(&job(json!({"kwargs": {"mode": "x"}})), &tf(limits())).expect_err("refused");
    assert_eq!(
        e.message,
        "kwargs.mode: \"x\" is not one of [\"full\", \"delta\"]"
    );
}

#[test]
fn a_task_function_with_unsupported_parameters_is_invalid_spec_with_the_path() {
    let bad = tf(json!({"kwargs": {"properties": {"name": {"pattern": "^x"}}}}));
    let e = task_function("export", &bad).expect_err("refused");
    assert_eq!(e.reason, Reason::InvalidSpec);
    assert!(
        e.message
            .starts_with("parameters.kwargs.properties.name: keyword \"pattern\" is not supported"),
        "{}",
        e.message
    );
    // Its jobs are then not Ready either.
    let tf_invalid = e;
    let meta = JobMeta {
        uid: "u",
        namespace: "ns",
        name: "j",
        generation: 1,
        created: now(),
        trigger: None,
    };
    let e = scheduled_job(
        &meta,
        &job(json!({})),
        TaskFunctionRef::Invalid(&tf_invalid),
        now(),
    )
    .expect_err("tf invalid");
    assert_eq!(e.reason, Reason::TaskFunctionNotReady);
}

#[test]
fn no_parameters_accept_any_arguments() {
    let row = judge(
        &job(json!({"kwargs": {"anything": [1, {"x": null}]}})),
        &tf(Value::Null),
    )
    .expect("valid");
    assert!(!row.parameters.is_set());
}
