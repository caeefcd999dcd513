//! `/metrics` of a running operator parses as Prometheus text, and its counters move when jobs
//! run on a real worker.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{Worker, eventually, fixture};
use serde_json::json;

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let text = common::metrics_text(addr);
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format")
}

/// Sum of a metric's samples whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn metrics_parse_and_move_when_jobs_run() {
    let env = common::env();
    let f = fixture("kbt-metrics", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    f.task_function("echo", "kb.echo").await;
    f.task_function_with("fail", "kb.fail", json!({"defaultArgs": ["metrics"]}))
        .await;
    f.job(
        "ok",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}}),
    )
    .await;
    f.job(
        "bad",
        "fail",
        json!({"schedule": {"interval": {"seconds": 2}}}),
    )
    .await;
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let first = scrape(&addr);
    // Runs are published while no worker listens: the queue has depth.
    eventually("queue depth sampled", Duration::from_secs(40), || async {
        (value(
            &scrape(&addr),
            "kube_beat_celery_queue_depth",
            &[("queue", &f.queue)],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    let _worker = Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);
    let later = eventually("outcomes counted", Duration::from_secs(60), || async {
        let s = scrape(&addr);
        (value(&s, "kube_beat_executions_total", &[("state", "SUCCESS")]) >= 3.0
            && value(&s, "kube_beat_executions_total", &[("state", "FAILURE")]) >= 1.0)
            .then_some(s)
    })
    .await;
    let published = |s: &prometheus_parse::Scrape| {
        value(s, "kube_beat_dispatches_total", &[("outcome", "published")])
    };
    assert!(published(&later) > published(&first), "dispatches counted");
    assert_eq!(value(&later, "kube_beat_leader", &[]), 1.0);
    assert!(value(&later, "kube_beat_leader_transitions_total", &[]) >= 1.0);
    assert!(value(&later, "kube_beat_dispatch_lag_seconds_count", &[]) >= 3.0);
    assert!(value(&later, "kube_beat_claim_batch_size_count", &[]) >= 1.0);
    assert!(
        value(
            &later,
            "kube_beat_publish_duration_seconds_count",
            &[("broker", "redis")]
        ) >= 1.0
    );
    assert!(value(&later, "kube_beat_execution_duration_seconds_count", &[]) >= 1.0);
    assert!(value(&later, "kube_beat_status_writes_total", &[]) >= 1.0);
    assert!(value(&later, "kube_beat_db_pool_connections", &[]) >= 1.0);
    let ratio = value(&later, "kube_beat_execution_error_ratio", &[]);
    assert!(ratio > 0.0 && ratio < 1.0, "error ratio {ratio}");
    // Bounded labels: no job names anywhere.
    let mut label_values: HashMap<String, usize> = HashMap::new();
    for s in &later.samples {
        for v in s.labels.values() {
            *label_values.entry(v.to_string()).or_default() += 1;
        }
    }
    assert!(
        !label_values
            .keys()
            .any(|v| v == "ok" || v.contains("/ok") || v == "bad"),
        "job names leaked into labels: {label_values:?}"
    );
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn build_info_names_the_running_version() {
    let env = common::env();
    let f = fixture("kbt-buildinfo", format!("{}/0", env.redis_url)).await;
    let op = f.operator(&[]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let s = scrape(&addr);
    let info: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == "kube_beat_build_info")
        .collect();
    assert_eq!(info.len(), 1, "one build_info sample: {info:?}");
    assert_eq!(
        info[0].labels.get("version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(matches!(
        info[0].value,
        prometheus_parse::Value::Gauge(v) if v == 1.0
    ));
    drop(op);
    f.finish().await;
}
