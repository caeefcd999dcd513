//! Run arguments end to end (issue #27), with a real apiserver, Postgres, Redis as broker and
//! result backend, and a real Celery worker:
//! - a TaskFunction with `parameters`; a job whose kwargs break them is `Ready=False`
//!   `InvalidArguments` with the path, and becomes Ready when the TaskFunction's parameters
//!   change to allow them;
//! - `POST .../trigger` with a kwargs override: the worker receives exactly the merged kwargs,
//!   once per request id (the same request again runs nothing more); the execution row has
//!   trigger `manual`, the args and kwargs it was sent with and `requested_by` = the API user;
//!   the API's execution views and `status.lastManualRun` show it;
//! - an invalid override: 422 with the path, nothing written, no run; override annotations
//!   written by hand that break the parameters: no run, a `TriggerRefused` Warning Event;
//! - `kube-beat trigger --kwargs ... --wait` exits 0 on a succeeding task (printing its result)
//!   and 1 on a failing one.

mod common;

use std::{process::Command, time::Duration};

use common::{Fixture, Worker, eventually, fixture, wait_invocations};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_beat::api::{ScheduledJob, TaskFunction};
use serde_json::{Value, json};

const EDITOR: &str = "kbt-api-editor-token";

/// POST `body` with real `curl`; (HTTP status, JSON body).
fn post(addr: &str, path: &str, body: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {EDITOR}")])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    let text = common::ok(&out);
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("status code"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn get(addr: &str, path: &str) -> Value {
    let (code, body) = common::api_call(addr, "GET", path, Some(EDITOR));
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

/// The job's `Ready` condition: (status, reason, message).
async fn ready(f: &Fixture, job: &str) -> Option<(String, String, String)> {
    let status = f.status(job).await;
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

#[derive(Debug, sqlx::FromRow)]
struct ManualRow {
    slot_key: String,
    task_id: String,
    state: String,
    args: Option<Value>,
    kwargs: Option<Value>,
    requested_by: Option<String>,
}

async fn manual_runs(f: &Fixture, job: &str) -> Vec<ManualRow> {
    sqlx::query_as(
        "SELECT e.slot_key, e.task_id, e.state, e.args, e.kwargs, e.requested_by
         FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.namespace = $1 AND j.name = $2 AND e.trigger = 'manual' ORDER BY e.id",
    )
    .bind(&f.ns)
    .bind(job)
    .fetch_all(&f.pool)
    .await
    .unwrap_or_default()
}

/// `kube-beat trigger NAME -n NS ARGS...`: (exit success, stdout, stderr).
fn cli_trigger(f: &Fixture, job: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(["trigger", job, "-n", &f.ns])
        .args(extra)
        .output()
        .expect("kube-beat trigger");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn limits(maximum: i64) -> Value {
    json!({
        "defaultKwargs": {"limit": 10, "mode": "full"},
        "parameters": {
            "kwargs": {
                "type": "object",
                "properties": {
                    "limit": {"type": "integer", "minimum": 1, "maximum": maximum},
                    "mode": {"enum": ["full", "delta"]}
                },
                "required": ["limit"]
            },
            "args": {"type": "array", "items": {"type": "string"}}
        }
    })
}

#[tokio::test]
#[ignore = "needs a control plane, Postgres, Redis and a Celery worker: make test"]
async fn run_arguments_end_to_end() {
    let env = common::env();
    let backend = format!("{}/1", env.redis_url);
    let f = fixture("kbt-args", format!("{}/0", env.redis_url)).await;
    f.grant_api_users();
    f.task_function_with("export", "kb.echo", limits(1000))
        .await;
    f.task_function_with("failing", "kb.fail", limits(1000))
        .await;
    let hourly = json!({"interval": {"hours": 1}});
    f.job(
        "export",
        "export",
        json!({"schedule": hourly, "kwargs": {"mode": "delta"}}),
    )
    .await;
    f.job(
        "too-many",
        "export",
        json!({"schedule": hourly, "kwargs": {"limit": 5000}}),
    )
    .await;
    f.job("broken", "failing", json!({"schedule": hourly}))
        .await;
    let op = f.operator(&[
        "--result-backend",
        &backend,
        "--result-poll-ms",
        "300",
        "--status-interval-seconds",
        "0.5",
        "--event-interval-seconds",
        "1",
    ]);
    let _worker = Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;

    // The job whose kwargs break the parameters is not Ready, with the path.
    let (_, reason, message) =
        eventually("too-many: Ready=False", Duration::from_secs(60), || async {
            ready(&f, "too-many").await.filter(|(s, _, _)| s == "False")
        })
        .await;
    assert_eq!(reason, "InvalidArguments");
    assert_eq!(
        message,
        "kwargs.limit: 5000 is greater than the maximum 1000"
    );
    eventually("export: Ready=True", Duration::from_secs(60), || async {
        ready(&f, "export").await.filter(|(s, _, _)| s == "True")
    })
    .await;

    // A kwargs override through the API: the worker gets exactly the merged kwargs.
    let path = format!("/api/v1/jobs/{}/export/trigger", f.ns);
    let request = r#"{"kwargs": {"limit": 500}, "requestId": "req-1"}"#;
    let (code, body) = post(&addr, &path, request);
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["requestId"], "req-1");
    assert_eq!(body["trigger"], "req-1 by=kbt-api-editor");
    let record = wait_invocations(&f.pool, &f.queue, Duration::from_secs(60), |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(record.len(), 1, "{record:?}");
    assert_eq!(record[0].kwargs, json!({"limit": 500, "mode": "delta"}));
    assert_eq!(record[0].args, json!([]));
    assert_eq!(record[0].headers["kubebeat_trigger"], "manual");

    // The same request id again (through the /api/v1/scheduler alias): no second run.
    let (code, body) = post(
        &addr,
        &format!("/api/v1/scheduler/jobs/{}/export/trigger", f.ns),
        request,
    );
    assert_eq!(code, 202, "{body}");
    // A hand-written trigger with the same request id but another caller: still the same run.
    f.trigger("export", "req-1 by=someone-else").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let runs = manual_runs(&f, "export").await;
    assert_eq!(runs.len(), 1, "one run per request id: {runs:?}");
    let run = &runs[0];
    assert_eq!(run.slot_key, "manual:req-1");
    assert_eq!(run.task_id, record[0].task_id);
    assert_eq!(run.args, Some(json!([])));
    assert_eq!(run.kwargs, Some(json!({"limit": 500, "mode": "delta"})));
    assert_eq!(run.requested_by.as_deref(), Some("kbt-api-editor"));
    assert_eq!(
        wait_invocations(&f.pool, &f.queue, Duration::from_secs(1), |_| false)
            .await
            .len(),
        1,
        "the worker ran it once"
    );

    // The API's views and the status show it.
    let view = get(&addr, &format!("/api/v1/jobs/{}/export", f.ns));
    let exec = view["executions"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["trigger"] == "manual"))
        .cloned()
        .expect("the manual run in the job view");
    assert_eq!(exec["kwargs"], json!({"limit": 500, "mode": "delta"}));
    assert_eq!(exec["requested_by"], "kbt-api-editor");
    assert!(
        view["arguments"]["parameters"]["kwargs"].is_object(),
        "{view}"
    );
    let list = get(
        &addr,
        &format!("/api/v1/scheduler/executions?job_id={}", view["job"]["id"]),
    );
    assert!(
        list["executions"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["requested_by"] == "kbt-api-editor" && e["args"] == json!([]))),
        "{list}"
    );
    let shown = eventually("lastManualRun SUCCESS", Duration::from_secs(30), || async {
        let s = f.status("export").await;
        (s["lastManualRun"]["state"] == "SUCCESS").then_some(s["lastManualRun"].clone())
    })
    .await;
    assert_eq!(shown["requestId"], "req-1");
    assert_eq!(shown["requestedBy"], "kbt-api-editor");
    assert_eq!(shown["taskId"], json!(run.task_id));

    // An invalid override: 422 with the path, nothing written, no run.
    let (code, body) = post(
        &addr,
        &path,
        r#"{"kwargs": {"limit": 5000}, "requestId": "req-bad"}"#,
    );
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["error"],
        "kwargs.limit: 5000 is greater than the maximum 1000"
    );
    let (code, body) = post(&addr, &path, r#"{"args": [1], "requestId": "req-bad2"}"#);
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"], "args[0]: 1 is not of type string");
    let (code, _) = post(&addr, &path, r#"{"kwargs": [1]}"#);
    assert_eq!(code, 400);
    let job = Api::<ScheduledJob>::namespaced(f.client.clone(), &f.ns)
        .get("export")
        .await
        .expect("job");
    let annotations = job.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("kubebeat.io/trigger").map(String::as_str),
        Some("req-1 by=someone-else"),
        "a refused request writes nothing"
    );

    // Override annotations written by hand are checked again: no run, a Warning Event.
    let patch = json!({"metadata": {"annotations": {
        "kubebeat.io/trigger": "hand-1 by=ops",
        "kubebeat.io/trigger-kwargs": "{\"limit\": 0}",
    }}});
    Api::<ScheduledJob>::namespaced(f.client.clone(), &f.ns)
        .patch("export", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    let note = eventually(
        "a TriggerRefused Event",
        Duration::from_secs(30),
        || async {
            f.events()
                .into_iter()
                .find(|(name, reason, _, _)| name == "export" && reason == "TriggerRefused")
                .map(|(_, _, _, note)| note)
        },
    )
    .await;
    assert!(
        note.contains("kwargs.limit: 0 is less than the minimum 1"),
        "{note}"
    );
    assert_eq!(manual_runs(&f, "export").await.len(), 1, "nothing ran");

    // `kube-beat trigger --kwargs --wait`: exit 0 on success, with the result printed.
    let (success, stdout, stderr) = cli_trigger(
        &f,
        "export",
        &["--kwargs", r#"{"limit": 7}"#, "--wait", "--timeout", "90"],
    );
    assert!(success, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("state: SUCCESS"), "{stdout}");
    assert!(
        stdout.contains(r#""limit":7"#) || stdout.contains(r#""limit": 7"#),
        "{stdout}"
    );
    let runs = manual_runs(&f, "export").await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1].kwargs, Some(json!({"limit": 7, "mode": "delta"})));
    assert_eq!(runs[1].state, "SUCCESS");
    // ... exit 1 on a failing task; and an invalid override is refused before anything is set.
    let (success, stdout, stderr) = cli_trigger(&f, "broken", &["--wait", "--timeout", "90"]);
    assert!(!success, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("state: FAILURE"), "{stdout}");
    let (success, _, stderr) = cli_trigger(&f, "broken", &["--kwargs", r#"{"limit": "x"}"#]);
    assert!(!success);
    assert!(
        stderr.contains("kwargs.limit: \"x\" is not of type integer"),
        "{stderr}"
    );
    assert_eq!(manual_runs(&f, "broken").await.len(), 1);

    // Changing the TaskFunction's parameters re-judges its jobs.
    let tf_name = format!("{}-export", f.id);
    let patch = json!({"spec": limits(10_000)});
    Api::<TaskFunction>::all(f.client.clone())
        .patch(&tf_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch tf");
    eventually("too-many: Ready=True", Duration::from_secs(60), || async {
        ready(&f, "too-many").await.filter(|(s, _, _)| s == "True")
    })
    .await;

    drop(op);
    f.finish().await;
}

/// `examples/run-arguments/`: the TaskFunction's parameters compile and its job is valid
/// against them (what the README shows works).
#[test]
fn the_example_is_valid() {
    use kube_beat::reconcile::validate;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/run-arguments/export.yaml"
    ))
    .expect("example");
    let mut docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("yaml document"));
    let tf: TaskFunction =
        serde_json::from_value(docs.next().expect("tf")).expect("a TaskFunction");
    let job: ScheduledJob = serde_json::from_value(docs.next().expect("job")).expect("a job");
    let valid = validate::task_function("export-orders", &tf.spec).expect("valid TaskFunction");
    assert!(valid.parameters.is_set());
    let now = chrono::Utc::now();
    let meta = validate::JobMeta {
        uid: "u",
        namespace: "default",
        name: "nightly-export",
        generation: 1,
        created: now,
        trigger: None,
    };
    let row = validate::scheduled_job(
        &meta,
        &job.spec,
        validate::TaskFunctionRef::Valid(&valid),
        now,
    )
    .expect("valid job");
    assert_eq!(row.kwargs, json!({"limit": 100, "format": "json"}));
    let (args, kwargs) = kube_beat::arguments::stored(&row.args, &row.kwargs);
    let bad = kube_beat::arguments::Overrides::from_values(None, Some(json!({"limit": 5000})))
        .expect("overrides");
    let (args, kwargs) = bad.apply(&args, &kwargs).expect("applied");
    assert_eq!(
        row.parameters.check(&args, &kwargs),
        Err("kwargs.limit: 5000 is greater than the maximum 1000".into())
    );
}
