//! The leader's Celery worker probe (issue #26, "Celery-aware preflight") against the real
//! apiserver, broker and Celery workers, on Redis and RabbitMQ: TaskFunctions' `WorkersReady`
//! condition and `status.workers`, the `kube_beat_workers` / `kube_beat_task_registered` metrics,
//! and `Publisher::inspect` itself (Redis `global_keyprefix` and another database).
//!
//! One operator per broker (probing every 2 s) and four TaskFunctions, one per verdict:
//! `echo` (kb.echo on the worker's queue: True), `ghost` (a task no worker registers, on that
//! queue: False `TaskNotRegistered` until a worker that has it starts), `nowhere` (a queue no
//! worker consumes: False `NoConsumer`), `silent` (a queue only a worker with remote control
//! disabled consumes: `Unknown`, never False).

mod common;

use std::time::Duration;

use common::{Worker, env, eventually, fixture, unique};
use kube::Api;
use kube_beat::{api::TaskFunction, celery::Publisher};
use serde_json::json;

/// The probe period the operator runs with, and how long a verdict may take to show: the
/// reconcile that stores a new TaskFunction, the rest of the probe that listed the TaskFunctions
/// before it, one more period (its reply wait inside), and slack for a loaded machine.
const PERIOD: u64 = 2;
const WITHIN: Duration = Duration::from_secs(PERIOD * 2 + 6);

/// (status, reason, message, status.workers) of a TaskFunction's `WorkersReady`.
async fn workers_ready(client: &kube::Client, name: &str) -> Option<(String, String, String, i64)> {
    let tf = Api::<TaskFunction>::all(client.clone())
        .get(name)
        .await
        .ok()?;
    let status = tf.status?;
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "WorkersReady")?;
    Some((
        c.status.clone(),
        c.reason.clone(),
        c.message.clone(),
        status.workers.unwrap_or(-1),
    ))
}

async fn wait_for(
    client: &kube::Client,
    name: &str,
    status: &str,
    reason: &str,
) -> (String, String, String, i64) {
    eventually(
        &format!("{name}: WorkersReady={status} {reason}"),
        WITHIN,
        || async {
            workers_ready(client, name)
                .await
                .filter(|(s, r, ..)| s == status && r == reason)
        },
    )
    .await
}

/// A ScheduledJob's `Healthy` condition: (status, reason, message), once it is (status, reason).
async fn wait_healthy(f: &common::Fixture, job: &str, status: &str, reason: &str) -> String {
    eventually(
        &format!("{job}: Healthy={status} {reason}"),
        WITHIN,
        || async {
            let s = f.status(job).await;
            let c = s["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Healthy")?
                .clone();
            (c["status"] == status && c["reason"] == reason)
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
    )
    .await
}

async fn probe_on(broker: String) {
    let f = fixture("kbt-workers", broker.clone()).await;
    let ghost_task = format!("kbt.ghost_{}", f.id.replace('-', "_"));
    let (nowhere, silent) = (unique("kbt-q"), unique("kbt-q"));
    // Workers first: the probe's first census then has them (each takes a few seconds).
    let _plain = f.worker();
    let _deaf = Worker::start_env(
        &broker,
        None,
        &silent,
        &f.db.url,
        2,
        "threads",
        &[("KB_REMOTE_CONTROL", "0")],
    );
    let op = f.operator(&[
        "--worker-probe-seconds",
        &PERIOD.to_string(),
        "--health-check-seconds",
        "1",
    ]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let name = |n: &str| format!("{}-{n}", f.id);
    let created = std::time::Instant::now();
    f.task_function("echo", "kb.echo").await;
    f.task_function("ghost", &ghost_task).await;
    f.task_function_with("nowhere", "kb.echo", json!({"queue": nowhere}))
        .await;
    f.task_function_with("silent", "kb.echo", json!({"queue": silent}))
        .await;
    // Jobs of the unregistered task and of the deaf worker's queue (hourly: judged before a slot).
    let hourly = json!({"schedule": {"interval": {"seconds": 3600}}});
    f.job("ghost-job", "ghost", hourly.clone()).await;
    f.job("silent-job", "silent", hourly).await;

    let (_, _, message, workers) = wait_for(&f.client, &name("echo"), "True", "WorkersReady").await;
    assert_eq!(workers, 1, "{message}");
    let (_, _, message, workers) =
        wait_for(&f.client, &name("ghost"), "False", "TaskNotRegistered").await;
    assert!(
        message.contains(&ghost_task) && message.contains(&f.queue),
        "{message}"
    );
    assert_eq!(workers, 0);
    println!(
        "{broker}: TaskNotRegistered shown {:?} after the TaskFunctions were created",
        created.elapsed()
    );
    // The job of that TaskFunction: Healthy=False with the same reason (the lead's health monitor
    // reading the probe's census).
    let message = wait_healthy(&f, "ghost-job", "False", "TaskNotRegistered").await;
    assert!(message.contains(&ghost_task), "{message}");
    let (_, _, message, _) = wait_for(&f.client, &name("nowhere"), "False", "NoConsumer").await;
    assert!(message.contains(&nowhere), "{message}");
    let (_, _, message, _) = wait_for(
        &f.client,
        &name("silent"),
        "Unknown",
        "RemoteControlDisabled",
    )
    .await;
    assert!(message.contains(&silent), "{message}");
    // The Ready condition (the reconciler's, another field manager) is untouched.
    let tf = Api::<TaskFunction>::all(f.client.clone())
        .get(&name("ghost"))
        .await
        .expect("tf");
    let conditions = tf.status.expect("status").conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{conditions:?}"
    );
    let text = common::metrics_text(&addr);
    assert_eq!(
        common::series_value(
            &text,
            &format!("kube_beat_workers{{queue=\"{}\"}}", f.queue)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        common::series_value(&text, &format!("kube_beat_workers{{queue=\"{nowhere}\"}}")),
        Some(0.0)
    );
    let registered = |text: &str, tf: &str| {
        common::series_value(
            text,
            &format!(
                "kube_beat_task_registered{{task_function=\"{}\"}}",
                name(tf)
            ),
        )
    };
    assert_eq!(registered(&text, "echo"), Some(1.0));
    assert_eq!(registered(&text, "ghost"), Some(0.0));

    // A worker that registers the task: the condition clears within a probe period.
    let started = std::time::Instant::now();
    let _knows = Worker::start_env(
        &broker,
        None,
        &f.queue,
        &f.db.url,
        2,
        "threads",
        &[("KB_EXTRA_TASKS", &ghost_task)],
    );
    let (_, _, message, workers) =
        wait_for(&f.client, &name("ghost"), "True", "WorkersReady").await;
    assert!(workers >= 1, "{message}");
    println!(
        "{broker}: cleared {:?} after the worker was started (its start included)",
        started.elapsed()
    );
    wait_healthy(&f, "ghost-job", "True", "Healthy").await;
    eventually("kube_beat_task_registered of ghost 1", WITHIN, || async {
        (registered(&common::metrics_text(&addr), "ghost") == Some(1.0)).then_some(())
    })
    .await;
    let (_, _, _, workers) = wait_for(&f.client, &name("echo"), "True", "WorkersReady").await;
    assert_eq!(workers, 2, "both workers on the queue have kb.echo");
    // The deaf worker's queue never went False while all this happened.
    let (status, reason, ..) = workers_ready(&f.client, &name("silent"))
        .await
        .expect("silent");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "RemoteControlDisabled")
    );
    // Its job: Unknown workers are no alarm.
    wait_healthy(&f, "silent-job", "True", "Healthy").await;
    // A TaskFunction gone is a series gone.
    common::ok(&common::kubectl(&[
        "delete",
        "taskfunction",
        &name("nowhere"),
    ]));
    eventually("the deleted TaskFunction's series gone", WITHIN, || async {
        let text = common::metrics_text(&addr);
        (!text.contains(&nowhere)).then_some(())
    })
    .await;
    // Never a false alarm for the deaf worker's queue, at any probe.
    let log = op.log_text();
    assert!(log.contains("WorkersReady changed"), "{log}");
    let silent_false = format!("task_function={} status=\"False\"", name("silent"));
    assert!(!log.contains(&silent_false), "{log}");
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn workers_ready_on_redis() {
    probe_on(format!("{}/0", env().redis_url)).await;
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn workers_ready_on_rabbitmq() {
    probe_on(env().amqp_url).await;
}

/// `Publisher::inspect` on Redis with Celery's `global_keyprefix` and another database: the
/// worker answers, its tasks and queues come back, and the reply queue and its binding are gone
/// afterwards. A worker with remote control disabled is not in the census.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn inspect_with_redis_keyprefix_and_db() {
    let env = env();
    let db = common::TestDb::create().await;
    let queue = unique("kbt-q");
    let prefix = format!("{}:", unique("kbt-p"));
    let broker = format!("{}/3", env.redis_url);
    let options_json = json!({"global_keyprefix": prefix}).to_string();
    let _worker = Worker::start_env(
        &broker,
        None,
        &queue,
        &db.url,
        2,
        "threads",
        &[("KB_BROKER_TRANSPORT_OPTIONS", &options_json)],
    );
    let options =
        kube_beat::redis_target::TransportOptions::parse(Some(&options_json)).expect("options");
    let ledger = unique("kubebeat.sent.test");
    let publisher = Publisher::connect_with(&broker, &options, Duration::from_secs(60), &ledger)
        .await
        .expect("redis");
    let reports = publisher
        .inspect(Duration::from_secs(2))
        .await
        .expect("inspect");
    let mine: Vec<_> = reports
        .iter()
        .filter(|w| w.queues.contains(&queue))
        .collect();
    assert_eq!(mine.len(), 1, "{reports:?}");
    assert!(mine[0].registered.iter().any(|t| t == "kb.echo"));
    // kombu declared the queue under the prefix: not Some(0) (cannot count on Redis).
    assert_eq!(
        publisher.queue_consumers(&queue).await.expect("count"),
        None
    );
    assert_eq!(
        publisher
            .queue_consumers(&unique("kbt-q"))
            .await
            .expect("count"),
        Some(0),
        "a queue nobody declared"
    );
    // No queues to count (no TaskFunction stored yet): an empty answer, not an error.
    assert!(
        publisher
            .queue_consumers_many(&[])
            .await
            .expect("no queues")
            .is_empty()
    );
    let mut c = redis::Client::open(broker.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let binding: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{prefix}_kombu.binding.reply.celery.pidbox"))
        .query(&mut c)
        .expect("SMEMBERS");
    assert!(binding.is_empty(), "reply binding left: {binding:?}");
    let permanent: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!(
            "{prefix}_kombu.binding_permanent.reply.celery.pidbox"
        ))
        .query(&mut c)
        .expect("SMEMBERS");
    assert!(permanent.is_empty(), "permanent mark left: {permanent:?}");
    let replies: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*.reply.celery.pidbox"))
        .query(&mut c)
        .expect("KEYS");
    assert!(replies.is_empty(), "reply lists left: {replies:?}");
    let mine: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut c)
        .expect("KEYS");
    let _: i64 = redis::cmd("DEL").arg(&mine).query(&mut c).unwrap_or(0);
    db.drop_db().await;
}
