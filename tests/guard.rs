//! kube-beat's worker-side guard (python/kube_beat_celery): its own tests on the oldest and the
//! newest Celery the project supports, and end to end: a real operator dispatches to a real
//! Celery worker with the guard installed, the same message arrives again (what a broker
//! redelivery does), the body does not run twice, and kube-beat shows the suppressed delivery on
//! the run (API, dashboard) and in its metrics.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{
    Worker, api_call,
    browser::{browser, sign_in, wait_for},
    eventually, fixture,
};
use fantoccini::Locator;
use serde_json::json;

/// The guard's Python tests (real in-process worker, real Redis broker, claims in real Redis and
/// Postgres) in the virtualenv `venv`.
fn python_tests(venv: &std::path::Path) {
    let env = common::env();
    let out = Command::new(venv.join("bin/python"))
        .arg(env.repo.join("python/tests/run_each.py"))
        .env("KB_REDIS_URL", &env.redis_url)
        .env("KB_PG_BASE", &env.pg_base)
        .output()
        .expect("running the guard's tests");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "the guard's tests failed in {}:\n{text}\n{}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" tests, 0 failed"), "{text}");
}

/// The guard makes `guard_claims` itself in a database kube-beat does not manage: its
/// definition must stay the one of kube-beat's migration 0015 (statements compared with
/// comments and blank space left out).
#[test]
fn the_guards_table_is_the_migrations_table() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let statements = |text: &str| -> String {
        text.lines()
            .map(|l| l.split("--").next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let migration =
        std::fs::read_to_string(repo.join("migrations/0015_guard.up.sql")).expect("migration");
    let stores =
        std::fs::read_to_string(repo.join("python/kube_beat_celery/stores.py")).expect("stores.py");
    let schema = stores
        .split("SCHEMA = \"\"\"")
        .nth(1)
        .and_then(|rest| rest.split("\"\"\"").next())
        .expect("SCHEMA in stores.py");
    assert_eq!(statements(schema), statements(&migration));
}

#[test]
#[ignore = "needs Redis, Postgres and the Celery virtualenvs (make test)"]
fn the_guards_tests_pass_on_the_oldest_and_newest_celery() {
    let env = common::env();
    // The newest: the tests' own virtualenv (Celery 5.7).
    python_tests(&env.celery_venv);
    // The oldest series the project supports (Celery 4.4, CPython 3.8–3.10), when this machine
    // has such an interpreter; if it has one, the virtualenv must build and the tests pass.
    let interpreter = Command::new(env.repo.join("hack/celery-venv.sh"))
        .args(["--interpreter", "4.4"])
        .output()
        .expect("hack/celery-venv.sh --interpreter 4.4");
    if !interpreter.status.success() {
        println!(
            "SKIPPED Celery 4.4: no interpreter for it here: {}",
            String::from_utf8_lossy(&interpreter.stderr)
        );
        return;
    }
    let venv = common::ok(
        &Command::new(env.repo.join("hack/celery-venv.sh"))
            .arg("4.4")
            .output()
            .expect("hack/celery-venv.sh 4.4"),
    );
    python_tests(&PathBuf::from(venv.trim()));
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn a_redelivered_run_does_not_run_twice_and_kube_beat_shows_it() {
    let env = common::env();
    let f = fixture("kbt-guard", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    // The guard keeps its claims in kube-beat's own database.
    let worker = Worker::start_env(
        &f.broker,
        Some(&backend),
        &f.queue,
        &f.db.url,
        2,
        "prefork",
        &[("KB_GUARD_URL", &f.db.url)],
    );
    f.task_function("echo", "kb.echo").await;
    f.job(
        "nightly",
        "echo",
        json!({"schedule": {"interval": {"hours": 24}}}),
    )
    .await;
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    f.trigger("nightly", "guard-1").await;
    let (id, task_id): (i64, String) =
        eventually("the run's success", Duration::from_secs(60), || async {
            sqlx::query_as(
                "SELECT e.id, e.task_id FROM job_executions e JOIN scheduled_jobs j
                 ON j.id = e.job_id WHERE j.name = 'nightly' AND e.state = 'SUCCESS'",
            )
            .fetch_optional(&f.pool)
            .await
            .ok()?
        })
        .await;
    let runs = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM celery_invocations WHERE task_id = $1")
            .bind(&task_id)
            .fetch_one(&f.pool)
            .await
            .expect("invocations")
    };
    assert_eq!(runs().await, 1);
    // The worker saw kube-beat's headers: the same message again, as a redelivery brings it.
    let record = f.record().await;
    let first = record
        .iter()
        .find(|r| r.task_id == task_id)
        .expect("the run's record");
    let headers = json!({
        "kubebeat_job": first.headers["kubebeat_job"],
        "kubebeat_slot": first.headers["kubebeat_slot"],
        "kubebeat_trigger": first.headers["kubebeat_trigger"],
    });
    assert_eq!(headers["kubebeat_job"], format!("{}/nightly", f.ns));
    let sent = common::celery_send_as(
        &f.broker,
        "kb.echo",
        &f.queue,
        "[]",
        "{}",
        &[&task_id, &headers.to_string()],
    );
    assert_eq!(sent, task_id);
    let suppressed = eventually(
        "the guard's suppression",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i32>(
                "SELECT duplicates FROM guard_claims WHERE task_id = $1 AND attempt = 0",
            )
            .bind(&task_id)
            .fetch_optional(&f.pool)
            .await
            .ok()
            .flatten()
            .filter(|n| *n > 0)
        },
    )
    .await;
    assert_eq!(suppressed, 1);
    // A message kube-beat did not send (no kubebeat headers) after it: once it ran, the
    // duplicate was handled before it; the body still ran once.
    let marker = common::celery_send(&f.broker, "kb.echo", &f.queue, "[\"marker\"]", "{}");
    eventually("the marker", Duration::from_secs(30), || async {
        f.record()
            .await
            .iter()
            .any(|r| r.task_id == marker)
            .then_some(())
    })
    .await;
    assert_eq!(runs().await, 1, "the body ran once");
    assert!(
        worker.log_text().contains("is skipped"),
        "the worker logged the suppression"
    );
    // kube-beat shows it on the run, and in its metrics.
    let (code, body) = api_call(
        &addr,
        "GET",
        &format!("/api/v1/executions/{id}"),
        Some("kbt-api-admin-token"),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["execution"]["duplicates_suppressed"], 1, "{body}");
    assert_eq!(body["execution"]["status"], "SUCCESS", "{body}");
    eventually(
        "kube_beat_guard_duplicates_suppressed",
        Duration::from_secs(60),
        || async {
            let out = Command::new("curl")
                .args(["-sSf", &format!("http://{addr}/metrics")])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == "kube_beat_guard_duplicates_suppressed 1")
                .then_some(())
        },
    )
    .await;
    // And on the dashboard: the run's page and the job's history say so.
    let (_driver, c) = browser().await;
    c.goto(&format!("http://{addr}/#/run/{id}"))
        .await
        .expect("the run's page");
    sign_in(&c, "kbt-api-admin-token").await;
    let shown = wait_for(&c, Locator::Id("run-duplicates"), "the duplicates row")
        .await
        .text()
        .await
        .expect("text");
    assert!(
        shown.starts_with('1') && shown.contains("broker redeliveries"),
        "{shown}"
    );
    c.goto(&format!("http://{addr}/#/job/{}/nightly", f.ns))
        .await
        .expect("the job's page");
    let shown = wait_for(
        &c,
        Locator::Css(&format!("tr[data-id='{id}'] .duplicates")),
        "the history's mark",
    )
    .await
    .text()
    .await
    .expect("text");
    assert_eq!(shown, "1 duplicate suppressed");
    let _ = c.close().await;
    drop(worker);
    drop(op);
    f.finish().await;
}
