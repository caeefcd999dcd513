//! The fault-injection suite: three real replicas under a steady load (interval jobs with every
//! policy, cron jobs), one fault at a time, then an audit of the Celery worker's durable record
//! and of Postgres.
//!
//! Every connection of the operator goes through a loopback TCP proxy the suite can cut
//! (Postgres, broker, result backend, kube-apiserver); restarts are real restarts (Postgres by
//! `pg_ctlcluster`, the suite's own Redis, RabbitMQ's app, the apiserver by
//! `hack/control-plane.sh restart-apiserver`). Crash points (`KUBE_BEAT_CRASH_AT`) kill leaders
//! inside a claim transaction and between a claim and its publish.
//!
//! `make test` runs the short variant; `make chaos` (`KB_CHAOS=full`) the full matrix, and writes
//! the results table into `docs/reliability.md` (`KB_CHAOS_REPORT`).
//!
//! The suite is split by concern: `harness` (processes, proxies, the fault machinery and the
//! gathering of what is audited), `scenarios` (the load and the faults), `audit` (the verdict, a
//! pure function with unit tests that run in a plain `cargo test --test chaos`) and `report`
//! (the results table).

// A test target in a directory: the shared harness is one level up.
#[path = "../common/mod.rs"]
mod common;

mod audit;
mod harness;
mod report;
mod scenarios;

use std::time::Duration;

use harness::{BrokerKind, Harness, plan};

/// Tests in this binary restart shared services: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// Multi-threaded: the proxies must keep forwarding while the test thread waits on a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the real services: make test / make chaos"]
async fn fault_matrix_redis() {
    let _serial = SERIAL.lock().await;
    let plan = plan();
    let mut h = Harness::new(BrokerKind::Redis, plan).await;
    h.create_load().await;
    for _ in 0..3 {
        h.start_replica(None);
    }
    h.row(); // the steady-load window starts now
    h.leader().await;
    h.settle(plan.steady).await;
    h.leader_deaths().await;
    h.paused_leader().await;
    h.postgres().await;
    h.broker_faults().await;
    h.apiserver().await;
    h.result_backend().await;
    h.slow_worker().await;
    h.rolling_update().await;
    // The broker faults again, on workers with the worker-side guard: no body runs twice.
    h.guard_workers().await;
    h.broker_faults().await;
    h.settle(Duration::from_secs(12)).await;
    h.finish().await;
}

// Multi-threaded: the proxies must keep forwarding while the test thread waits on a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the real services: make test / make chaos"]
async fn fault_matrix_rabbitmq() {
    let _serial = SERIAL.lock().await;
    let mut plan = plan();
    plan.kills = plan.kills.min(6);
    let mut h = Harness::new(BrokerKind::Amqp, plan).await;
    h.create_load().await;
    for _ in 0..3 {
        h.start_replica(None);
    }
    h.row();
    h.leader().await;
    h.settle(plan.steady).await;
    h.leader_deaths().await;
    h.broker_faults().await;
    // The broker faults again, on workers with the worker-side guard: no body runs twice.
    h.guard_workers().await;
    h.broker_faults().await;
    h.settle(Duration::from_secs(12)).await;
    h.finish().await;
}
