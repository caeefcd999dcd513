//! Hostile and malformed input, end to end: objects that bypass client-side validation, names at
//! the limits, oversized and NUL-carrying arguments, and a task name, queue and kwargs built to
//! break a Celery message or an SQL statement. Each is refused with a clear reason or carried
//! exactly; a normal job beside them keeps running.

mod common;

use std::time::Duration;

use common::{Fixture, Worker, create_unvalidated, eventually, fixture};
use serde_json::{Value, json};

/// The task name `tests/celery_app/kb_worker.py` registers as `HOSTILE_TASK`.
const HOSTILE_TASK: &str = "kb.hostile'\"; DROP TABLE celery_invocations; -- \\ ünï ✓";

/// (status, reason, message) of the job's Ready condition, once it has one.
async fn ready(f: &Fixture, job: &str) -> (String, String, String) {
    eventually(
        &format!("a Ready condition on {job}"),
        Duration::from_secs(30),
        || async {
            let status = f.status(job).await;
            let c = status["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            Some((s("status"), s("reason"), s("message")))
        },
    )
    .await
}

async fn row_exists(f: &Fixture, job: &str) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM scheduled_jobs WHERE name = $1")
        .bind(job)
        .fetch_one(&f.pool)
        .await
        .unwrap_or(0)
        > 0
}

fn manifest(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
           "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn hostile_input_is_refused_or_carried_exactly() {
    let env = common::env();
    let f = fixture("kbt-hostile", format!("{}/0", env.redis_url)).await;
    // A queue name with quotes, a semicolon and non-ASCII letters (no comma: Celery's -Q list).
    let hostile_queue = format!("{}'\"; ü", f.queue);
    let _worker = Worker::start(
        &f.broker,
        None,
        &format!("{},{hostile_queue}", f.queue),
        &f.db.url,
    );
    f.task_function("echo", "kb.echo").await;
    f.task_function_with("hostile", HOSTILE_TASK, json!({"queue": hostile_queue}))
        .await;
    let op = f.operator(&[]);
    let tf = |name: &str| format!("{}-{name}", f.id);

    // 1. Wrong types and bad names through the raw API: the apiserver's structural schema and
    //    name rules refuse them with the field named; nothing reaches the operator.
    let refused = [
        (
            "wrong-type",
            json!({"taskFunction": tf("echo"), "schedule": {"interval": {"seconds": "five"}}}),
            "spec.schedule.interval.seconds",
        ),
        (
            "wrong-priority",
            json!({"taskFunction": tf("echo"), "schedule": {"cron": "* * * * *"}, "priority": "high"}),
            "spec.priority",
        ),
        (
            "jöb-ünicode",
            json!({"taskFunction": tf("echo"), "schedule": {"cron": "* * * * *"}}),
            "RFC 1123",
        ),
        (
            &"x".repeat(254),
            json!({"taskFunction": tf("echo"), "schedule": {"cron": "* * * * *"}}),
            "must be no more than 253 characters",
        ),
    ];
    for (name, spec, why) in &refused {
        let (created, stderr) = create_unvalidated(&f.ns, &manifest(name, spec.clone()));
        assert!(!created, "{name} was accepted");
        assert!(stderr.contains(why), "{name}: want {why:?} in {stderr}");
    }

    // 2. Objects the schema lets through (args and kwargs are free-form JSON): each gets a
    //    Ready condition with the reason, and no row.
    let megabyte = "x".repeat(1_000_000);
    let stored_but_invalid = [
        (
            "megabyte-kwargs",
            json!({"taskFunction": tf("echo"), "schedule": {"interval": {"seconds": 1}}, "kwargs": {"blob": megabyte}}),
            "the limit is 65536",
        ),
        (
            "nul-kwargs",
            json!({"taskFunction": tf("echo"), "schedule": {"interval": {"seconds": 1}}, "kwargs": {"a": "x\u{0}y"}}),
            "must not contain NUL characters",
        ),
        (
            "nul-args",
            json!({"taskFunction": tf("echo"), "schedule": {"interval": {"seconds": 1}}, "args": [{"k\u{0}": 1}]}),
            "must not contain NUL characters",
        ),
    ];
    for (name, spec, _) in &stored_but_invalid {
        let (created, stderr) = create_unvalidated(&f.ns, &manifest(name, spec.clone()));
        assert!(created, "{name} was refused by the apiserver: {stderr}");
    }

    // 3. Carried exactly: a 253-character name, kwargs built to break JSON/SQL/shell quoting,
    //    and the hostile task name on the hostile queue.
    let long_name = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(long_name.len(), 253);
    let nasty_kwargs = json!({
        "sql": "'); DROP TABLE scheduled_jobs; --",
        "quotes": "\"'`\\",
        "lines": "one\ntwo\r\n\tthree",
        "unicode": "ünïcødé ✓ 𝄞 \u{202e}rtl \u{1}\u{7f}",
        "numbers": [12_345_678_901_234_567_u64, -1, 1.5, 0],
        "nested": {"a": [1, null, true, {"b": "}{\"]"}]},
        "ключ 🔑": "value",
    });
    let nasty_args = json!(["'", "\"", "\\", "\n", "%s", "$1", "{}"]);
    f.job(
        "normal",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}}),
    )
    .await;
    f.job(
        &long_name,
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}}),
    )
    .await;
    f.job(
        "nasty-kwargs",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}, "args": nasty_args, "kwargs": nasty_kwargs}),
    )
    .await;
    f.job(
        "nasty-task",
        "hostile",
        json!({"schedule": {"interval": {"seconds": 1}}, "kwargs": {"why": "'\"; --"}}),
    )
    .await;

    for (name, _, message) in &stored_but_invalid {
        let (status, reason, got) = ready(&f, name).await;
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "InvalidSpec"),
            "{name}: {got}"
        );
        assert!(got.contains(message), "{name}: want {message:?} in {got:?}");
        assert!(!row_exists(&f, name).await, "{name}: nothing written");
    }
    for name in ["normal", long_name.as_str(), "nasty-kwargs", "nasty-task"] {
        let (status, reason, message) = ready(&f, name).await;
        assert_eq!(status, "True", "{name}: {reason}: {message}");
    }

    let hostile_runs = |pool: sqlx::PgPool, queue: String| async move {
        common::wait_invocations(&pool, &queue, Duration::from_secs(60), |r| !r.is_empty()).await
    };
    let on_hostile_queue = hostile_runs(f.pool.clone(), hostile_queue.clone()).await;
    let run = on_hostile_queue.first().expect("the hostile task ran");
    assert_eq!(run.task_name, HOSTILE_TASK, "task name carried exactly");
    assert_eq!(run.queue.as_deref(), Some(hostile_queue.as_str()));
    assert_eq!(run.kwargs, json!({"why": "'\"; --"}));

    let record = eventually(
        "runs of the normal, long-named and nasty jobs",
        Duration::from_secs(60),
        || async {
            let r = f.record().await;
            let ran = |job: &str| r.iter().any(|i| i.job() == format!("{}/{job}", f.ns));
            let normal = r.iter().filter(|i| i.job().ends_with("/normal")).count();
            (normal >= 3 && ran(&long_name) && ran("nasty-kwargs")).then_some(r)
        },
    )
    .await;
    let nasty = record
        .iter()
        .find(|i| i.job().ends_with("/nasty-kwargs"))
        .expect("nasty-kwargs ran");
    assert_eq!(nasty.kwargs, nasty_kwargs, "kwargs carried exactly");
    assert_eq!(nasty.args, nasty_args, "args carried exactly");

    // Parameters stayed parameters: the rows hold the text, every table is still there.
    let stored: String = sqlx::query_scalar("SELECT task FROM task_functions WHERE name = $1")
        .bind(tf("hostile"))
        .fetch_one(&f.pool)
        .await
        .expect("the hostile TaskFunction's row");
    assert_eq!(stored, HOSTILE_TASK);
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_name IN ('scheduled_jobs', 'celery_invocations', 'job_executions')",
    )
    .fetch_one(&f.pool)
    .await
    .expect("tables");
    assert_eq!(tables, 3);

    let log = op.log_text();
    assert!(!log.contains("panicked"), "the operator panicked:\n{log}");
    drop(op);
    f.finish().await;
}
