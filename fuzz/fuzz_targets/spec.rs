//! Any JSON as a ScheduledJob spec: validated into a row or refused with a reason, never a panic.
#![no_main]

use chrono::{DateTime, Utc};
use kube_beat::{
    api::{ScheduledJobSpec, TaskFunctionSpec},
    reconcile::validate::{self, JobMeta, TaskFunctionRef},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<ScheduledJobSpec>(data) else {
        return;
    };
    let t0: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-03-29T00:30:00Z")
        .expect("instant")
        .with_timezone(&Utc);
    let tf_spec: TaskFunctionSpec =
        serde_json::from_value(serde_json::json!({"task": "kb.echo", "queue": "celery"}))
            .expect("a task function");
    let tf = validate::task_function("f", &tf_spec).expect("a valid task function");
    let meta = JobMeta {
        uid: "u",
        namespace: "ns",
        name: "n",
        generation: 1,
        created: t0,
        trigger: None,
    };
    let _ = validate::scheduled_job(&meta, &spec, TaskFunctionRef::Valid(&tf), t0);
    // A TaskFunction spec from the same bytes, too.
    if let Ok(tf) = serde_json::from_slice::<TaskFunctionSpec>(data) {
        let _ = validate::task_function("g", &tf);
    }
});
