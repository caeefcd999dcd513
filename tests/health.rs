//! Job health end to end (issue #26), on Redis and on RabbitMQ, with a real apiserver, Postgres,
//! a real Celery worker and the Redis result backend:
//! - a job whose runs fail 3 times in a row under `maxConsecutiveFailures: 3, onBreach: Pause`
//!   is paused (condition, `status.pause`, Event, its slots recorded SKIPPED with reason
//!   `Paused`, nothing sent to the worker), and resumes by the `kubebeat.io/resume` annotation:
//!   the next slot is dispatched once and its failure streak starts from zero;
//! - a job whose worker is stopped goes `Healthy=False` `Stale` after `staleAfterSeconds`, and
//!   recovers when the worker is back.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Fixture, Worker, eventually, fixture, kubectl, ok};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_beat::api::ScheduledJob;
use serde_json::json;

/// The job's `Healthy` condition: (status, reason, message).
async fn healthy(f: &Fixture, job: &str) -> Option<(String, String, String)> {
    let status = f.status(job).await;
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Healthy")?
        .clone();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

async fn wait_healthy(f: &Fixture, job: &str, status: &str, reason: &str, within: Duration) {
    eventually(
        &format!("{job}: Healthy={status} {reason}"),
        within,
        || async {
            healthy(f, job)
                .await
                .filter(|(s, r, _)| s == status && r == reason)
        },
    )
    .await;
}

#[derive(Debug, sqlx::FromRow)]
struct Run {
    state: String,
    error: Option<String>,
    scheduled_for: DateTime<Utc>,
    task_id: String,
}

async fn runs(f: &Fixture, job: &str) -> Vec<Run> {
    sqlx::query_as(
        "SELECT e.state, e.error, e.scheduled_for, e.task_id
         FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.namespace = $1 AND j.name = $2 AND e.scheduled_for <= now()
         ORDER BY e.scheduled_for",
    )
    .bind(&f.ns)
    .bind(job)
    .fetch_all(&f.pool)
    .await
    .unwrap_or_default()
}

/// How many times the worker ran each of these Celery task ids.
async fn executed(f: &Fixture, task_ids: &[String]) -> usize {
    let record = f.record().await;
    record
        .iter()
        .filter(|i| task_ids.contains(&i.task_id))
        .count()
}

async fn health_end_to_end(broker: String, prefix: &str) {
    let env = common::env();
    let backend = format!("{}/1", env.redis_url);
    let f = fixture(prefix, broker).await;
    f.task_function("fail", "kb.fail").await;
    f.task_function("echo", "kb.echo").await;
    f.job(
        "flaky",
        "fail",
        json!({"schedule": {"interval": {"seconds": 3}},
               "health": {"maxConsecutiveFailures": 3, "onBreach": "Pause"}}),
    )
    .await;
    f.job(
        "steady",
        "echo",
        json!({"schedule": {"interval": {"seconds": 2}},
               "health": {"staleAfterSeconds": 8, "metrics": true}}),
    )
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
        "--health-check-seconds",
        "1",
    ]);
    let mut worker = Some(Worker::start(
        &f.broker,
        Some(&backend),
        &f.queue,
        &f.db.url,
    ));

    // Healthy at first, with the HEALTHY printer column.
    wait_healthy(&f, "steady", "True", "Healthy", Duration::from_secs(60)).await;
    let table = ok(&kubectl(&["get", "scheduledjobs", "-n", &f.ns]));
    assert!(
        table.lines().next().unwrap_or("").contains("HEALTHY"),
        "{table}"
    );

    // Three failures in a row pause `flaky`.
    wait_healthy(&f, "flaky", "False", "Paused", Duration::from_secs(60)).await;
    let status = f.status("flaky").await;
    let reason = status["pause"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("ConsecutiveFailures: ") && reason.contains("maxConsecutiveFailures: 3"),
        "{status}"
    );
    assert!(status["pause"]["since"].is_string(), "{status}");
    assert!(
        status["consecutiveFailures"].as_i64().unwrap_or(0) >= 3,
        "{status}"
    );
    eventually("a Paused Event", Duration::from_secs(30), || async {
        f.events()
            .into_iter()
            .find(|(name, reason, _, _)| name == "flaky" && reason == "Paused")
    })
    .await;
    // Paused slots are SKIPPED with reason Paused, and the worker gets nothing for them.
    let skipped = eventually("two Paused slots", Duration::from_secs(30), || async {
        let r = runs(&f, "flaky").await;
        let paused: Vec<String> = r
            .iter()
            .filter(|r| r.state == "SKIPPED" && r.error.as_deref() == Some("Paused"))
            .map(|r| r.task_id.clone())
            .collect();
        (paused.len() >= 2).then_some(paused)
    })
    .await;
    assert_eq!(
        executed(&f, &skipped).await,
        0,
        "a paused slot reached the worker"
    );
    let failed_before = runs(&f, "flaky")
        .await
        .iter()
        .filter(|r| r.state == "FAILURE")
        .count();
    assert!(
        (3..=4).contains(&failed_before),
        "{failed_before} failures before the pause"
    );

    // The worker stops: `steady` goes Stale after staleAfterSeconds (8 s), with an Event.
    worker.take();
    wait_healthy(&f, "steady", "False", "Stale", Duration::from_secs(40)).await;
    let (_, _, message) = healthy(&f, "steady").await.unwrap_or_default();
    assert!(message.contains("staleAfterSeconds: 8"), "{message}");
    eventually("an Unhealthy Event", Duration::from_secs(30), || async {
        f.events().into_iter().find(|(name, reason, _, note)| {
            name == "steady" && reason == "Unhealthy" && note.starts_with("Stale: ")
        })
    })
    .await;
    // Per-job series, opted in by `steady` only.
    let metrics = eventually("per-job series", Duration::from_secs(20), || async {
        let addr = op.http_addr()?;
        let out = std::process::Command::new("curl")
            .args(["-sSf", &format!("http://{addr}/metrics")])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let series = format!(
            "kube_beat_job_healthy{{namespace=\"{}\",name=\"steady\"}} 0",
            f.ns
        );
        text.contains(&series).then_some(text)
    })
    .await;
    assert!(!metrics.contains("name=\"flaky\""), "flaky did not opt in");

    // The worker is back: `steady` recovers.
    worker = Some(Worker::start(
        &f.broker,
        Some(&backend),
        &f.queue,
        &f.db.url,
    ));
    wait_healthy(&f, "steady", "True", "Healthy", Duration::from_secs(60)).await;
    eventually("a Recovered Event", Duration::from_secs(30), || async {
        f.events()
            .into_iter()
            .find(|(name, reason, _, _)| name == "steady" && reason == "Recovered")
    })
    .await;

    // Resume `flaky` by annotation (the spec is untouched): the pause goes, the next slot is
    // dispatched once, and the streak starts from zero (three new failures to pause again).
    let generation = Api::<ScheduledJob>::namespaced(f.client.clone(), &f.ns)
        .get("flaky")
        .await
        .expect("flaky")
        .metadata
        .generation;
    let resumed_at = Utc::now();
    let patch = json!({"metadata": {"annotations": {"kubebeat.io/resume": "r1"}}});
    Api::<ScheduledJob>::namespaced(f.client.clone(), &f.ns)
        .patch("flaky", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("resume");
    eventually("status.pause gone", Duration::from_secs(20), || async {
        let s = f.status("flaky").await;
        s["pause"].is_null().then_some(())
    })
    .await;
    eventually("a Resumed Event", Duration::from_secs(30), || async {
        f.events()
            .into_iter()
            .find(|(name, reason, _, _)| name == "flaky" && reason == "Resumed")
    })
    .await;
    let first = eventually(
        "the next slot dispatched",
        Duration::from_secs(20),
        || async {
            runs(&f, "flaky").await.into_iter().find(|r| {
                r.scheduled_for > resumed_at && r.state != "SKIPPED" && r.state != "PENDING"
            })
        },
    )
    .await;
    eventually(
        "the resumed slot ran once",
        Duration::from_secs(30),
        || async { (executed(&f, std::slice::from_ref(&first.task_id)).await == 1).then_some(()) },
    )
    .await;
    // Healthy again, and it pauses again only after three new failures.
    wait_healthy(&f, "flaky", "True", "Healthy", Duration::from_secs(20)).await;
    wait_healthy(&f, "flaky", "False", "Paused", Duration::from_secs(60)).await;
    let after: Vec<Run> = runs(&f, "flaky")
        .await
        .into_iter()
        .filter(|r| r.scheduled_for > resumed_at && r.state == "FAILURE")
        .collect();
    assert!(
        after.len() >= 3,
        "paused again after {} failures",
        after.len()
    );
    let spec_generation = Api::<ScheduledJob>::namespaced(f.client.clone(), &f.ns)
        .get("flaky")
        .await
        .expect("flaky")
        .metadata
        .generation;
    assert_eq!(
        generation, spec_generation,
        "pause and resume never touch the spec"
    );

    // Every slot of `flaky` ran at most once on the worker.
    let record = f.record().await;
    let mut ids: Vec<&str> = record.iter().map(|i| i.task_id.as_str()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "a task id ran twice");
    drop(worker);
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real stack: make test"]
async fn pause_resume_and_staleness_on_redis() {
    let env = common::env();
    health_end_to_end(format!("{}/0", env.redis_url), "kbt-health-redis").await;
}

#[tokio::test]
#[ignore = "needs the real stack: make test"]
async fn pause_resume_and_staleness_on_rabbitmq() {
    let env = common::env();
    health_end_to_end(env.amqp_url.clone(), "kbt-health-amqp").await;
}
