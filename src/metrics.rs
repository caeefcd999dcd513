//! Prometheus metrics (`/metrics`, Prometheus text format). Label sets are small and fixed: no
//! job names, no error strings (unbounded cardinality), only static categories and the queues the
//! jobs use.
//!
//! One process-wide set, like Prometheus client libraries' default registry: the dispatcher, the
//! tracker, the leader and the reconcilers count into it without threading a handle through every
//! constructor. Values sampled from elsewhere (the status feed, the Postgres pool, Celery queue
//! depths) are read at scrape time by a collector.
//!
//! A leaf: it imports no other kube-beat module. Parts that keep their own numbers hand it a
//! [`Sampler`] instead of being read from here.

use std::sync::{
    Arc, LazyLock, Mutex,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Broker {
    pub broker: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecState {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Category {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Task {
    pub task: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn duration_histogram() -> Histogram {
    // 10 ms .. ~2.9 h
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

/// Every metric kube-beat exports.
pub struct Metrics {
    pub dispatches: Family<Outcome, Counter>,
    pub dispatch_lag: Histogram,
    pub claim_batch: Histogram,
    pub claim_duration: Histogram,
    pub publish_duration: Family<Broker, Histogram, fn() -> Histogram>,
    pub executions: Family<ExecState, Counter>,
    pub execution_duration: Histogram,
    pub leader: Gauge,
    pub leader_transitions: Counter,
    pub reconcile_errors: Family<Category, Counter>,
    /// One job's run taken out of its batch (the rest went on), by category.
    pub job_failures: Family<Category, Counter>,
    /// Background tasks restarted by the supervisor after a panic or an unexpected end.
    pub task_restarts: Family<Task, Counter>,
    pub tracker_pass: Histogram,
    pub tracker_unfinished: Gauge,
    /// One health monitor pass over every job.
    pub health_pass: Histogram,
    /// Deliveries the worker-side guard skipped as duplicates lately (the leader reads its
    /// claims from Postgres).
    pub guard_duplicates: Gauge,
    /// Jobs whose finalizer or `Ready` status waits for the paced apiserver writers.
    pub reconcile_writes_waiting: Gauge,
    /// Jobs of the sweep in progress (a new leader's, a TaskFunction's or a calendar's) not yet
    /// handed to the reconcile queue.
    pub sweep_jobs_waiting: Gauge,
    /// From a run's publish to its final state recorded in Postgres (how late outcomes are).
    pub result_recorded: Histogram,
    /// Result records the Redis backend announced (PUBLISH) that the tracker was told of.
    pub result_hints: Counter,
    /// Of those, dropped because the tracker was behind (the next pass reads those runs).
    pub result_hints_dropped: Counter,
    /// Admission webhook decisions, by kind and result.
    pub admissions: Family<Admission, Counter>,
    /// Sampled from outside: the status feed, the pool, queue depths.
    pub sampled: Arc<Sampled>,
    registry: Registry,
}

/// Whether a sampled value only grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    Counter,
    Gauge,
}

/// One value read at scrape time from a part that keeps its own numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The metric's name, without the `kube_beat_` prefix.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: SampleKind,
    pub value: u64,
}

/// A part whose numbers are read at scrape time (the status feed: see `status::FeedStats`).
pub trait Sampler: Send + Sync + std::fmt::Debug {
    fn samples(&self) -> Vec<Sample>;
}

/// Values the collector reads at scrape time.
#[derive(Debug, Default)]
pub struct Sampled {
    /// The status feed's counters (set once the operator has built the feed).
    pub feed: Mutex<Option<Arc<dyn Sampler>>>,
    pub pool: Mutex<Option<sqlx::PgPool>>,
    /// (queue, depth) as last sampled.
    pub queues: Mutex<Vec<(String, u64)>>,
    /// The worker probe's last census (`kube_beat_workers`, `kube_beat_task_registered`): set
    /// whole each probe, so a TaskFunction gone is a series gone.
    pub workers: Mutex<WorkerSeries>,
    pub finished_ok: AtomicU64,
    pub finished_bad: AtomicU64,
    /// The per-job series of jobs with `health.metrics: true` (capped by the health monitor).
    pub jobs: Mutex<Vec<JobSeries>>,
}

/// One job's opt-in series: the only metrics labelled by job, so only for jobs that ask and at
/// most `--job-metrics-limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSeries {
    pub namespace: String,
    pub name: String,
    /// 1 when the `Healthy` condition is True.
    pub healthy: i64,
    pub consecutive_failures: i64,
    /// Unix seconds of the last successful run's slot.
    pub last_success: Option<i64>,
}

/// Series of the worker probe, at most [`MAX_WORKER_SERIES`] of each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerSeries {
    /// (queue, live workers consuming it).
    pub queues: Vec<(String, u64)>,
    /// (TaskFunction, whether a live worker consuming its queue registered its task).
    pub registered: Vec<(String, bool)>,
}

/// Series kept of each worker-probe metric; the rest are dropped with a warning.
pub const MAX_WORKER_SERIES: usize = 1_000;

impl Sampled {
    /// Replace the worker probe's series (bounded: beyond [`MAX_WORKER_SERIES`] of either, the
    /// rest are dropped with a warning).
    pub fn set_workers(&self, mut series: WorkerSeries) {
        let (queues, registered) = (series.queues.len(), series.registered.len());
        if queues > MAX_WORKER_SERIES || registered > MAX_WORKER_SERIES {
            tracing::warn!(
                queues,
                task_functions = registered,
                "more than {MAX_WORKER_SERIES} worker series: the rest are not exported"
            );
            series.queues.truncate(MAX_WORKER_SERIES);
            series.registered.truncate(MAX_WORKER_SERIES);
        }
        *self.workers.lock().unwrap_or_else(|e| e.into_inner()) = series;
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    // The registration of every metric, one after another: long, but a list.
    fn new() -> Metrics {
        let mut m = Metrics {
            dispatches: Family::default(),
            dispatch_lag: latency_histogram(),
            claim_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            claim_duration: latency_histogram(),
            publish_duration: Family::new_with_constructor(latency_histogram),
            executions: Family::default(),
            execution_duration: duration_histogram(),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
            reconcile_errors: Family::default(),
            job_failures: Family::default(),
            task_restarts: Family::default(),
            tracker_pass: latency_histogram(),
            health_pass: latency_histogram(),
            result_recorded: latency_histogram(),
            result_hints: Counter::default(),
            result_hints_dropped: Counter::default(),
            tracker_unfinished: Gauge::default(),
            guard_duplicates: Gauge::default(),
            reconcile_writes_waiting: Gauge::default(),
            sweep_jobs_waiting: Gauge::default(),
            admissions: Family::default(),
            sampled: Arc::default(),
            registry: Registry::with_prefix("kube_beat"),
        };
        let mut r = Registry::with_prefix("kube_beat");
        r.register(
            "dispatches",
            "Runs by dispatch outcome (published, missed, skipped, dispatch_failed, replaced)",
            m.dispatches.clone(),
        );
        r.register(
            "dispatch_lag_seconds",
            "Time from a slot being due to its message being published",
            m.dispatch_lag.clone(),
        );
        r.register(
            "claim_batch_size",
            "Jobs claimed per claim transaction",
            m.claim_batch.clone(),
        );
        r.register(
            "claim_duration_seconds",
            "Time for one claim transaction",
            m.claim_duration.clone(),
        );
        r.register(
            "publish_duration_seconds",
            "Time to publish one batch to the broker",
            m.publish_duration.clone(),
        );
        r.register(
            "executions",
            "Executions that reached a final state, by state",
            m.executions.clone(),
        );
        r.register(
            "execution_duration_seconds",
            "Execution time from STARTED to the final state, from the result backend",
            m.execution_duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the Lease",
            m.leader.clone(),
        );
        r.register(
            "leader_transitions",
            "Times this replica became or stopped being the leader",
            m.leader_transitions.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile failures by category",
            m.reconcile_errors.clone(),
        );
        r.register(
            "job_failures",
            "Runs of one job taken out of a batch while the rest went on, by category \
             (unreadable_schedule, queue_rejected)",
            m.job_failures.clone(),
        );
        r.register(
            "task_restarts",
            "Background tasks restarted by the supervisor after a panic or an unexpected end",
            m.task_restarts.clone(),
        );
        r.register(
            "result_tracker_pass_seconds",
            "Time for one pass over the unfinished executions (how stale outcomes can be)",
            m.tracker_pass.clone(),
        );
        r.register(
            "health_pass_seconds",
            "Time for one health monitor pass over every job (the pause after it grows with it)",
            m.health_pass.clone(),
        );
        r.register(
            "result_tracker_unfinished",
            "Unfinished executions seen by the last tracker pass",
            m.tracker_unfinished.clone(),
        );
        r.register(
            "guard_duplicates_suppressed",
            "Deliveries the worker-side guard (kube_beat_celery) skipped as broker redeliveries, \
             summed over its claims with one in the last hour (leader only; 0 elsewhere)",
            m.guard_duplicates.clone(),
        );
        r.register(
            "reconcile_writes_waiting",
            "Jobs stored in Postgres whose finalizer or Ready status is still to be written to the apiserver",
            m.reconcile_writes_waiting.clone(),
        );
        r.register(
            "sweep_jobs_waiting",
            "Jobs of the sweep in progress (a new leader reconciles every job) not yet handed to the reconcile queue",
            m.sweep_jobs_waiting.clone(),
        );
        r.register(
            "result_recorded_seconds",
            "Time from a run's publish to its final state being recorded by the result tracker",
            m.result_recorded.clone(),
        );
        r.register(
            "result_hints",
            "Result records the Redis result backend announced while this replica led (each read at once instead of at the next tracker pass)",
            m.result_hints.clone(),
        );
        r.register(
            "result_hints_dropped",
            "Announced result records not handed to the tracker because it was behind (read by its next pass)",
            m.result_hints_dropped.clone(),
        );
        register_admissions(&mut r, &m);
        r.register_collector(Box::new(SampledCollector(m.sampled.clone())));
        register_build_info(&mut r);
        zero_alerted_series(&m);
        m.registry = r;
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    pub fn dispatched(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.dispatches
                .get_or_create(&Outcome { outcome })
                .inc_by(n);
        }
    }

    /// A final state seen by the tracker (or DISPATCH_FAILED).
    pub fn finished(&self, state: &'static str) {
        self.executions.get_or_create(&ExecState { state }).inc();
        let which = if state == "SUCCESS" {
            &self.sampled.finished_ok
        } else {
            &self.sampled.finished_bad
        };
        which.fetch_add(1, Ordering::Relaxed);
    }

    /// Report the status feed's numbers (read at every scrape).
    pub fn sample_feed(&self, feed: Arc<dyn Sampler>) {
        *self.sampled.feed.lock().unwrap_or_else(|e| e.into_inner()) = Some(feed);
    }

    /// Replace the per-job series (the health monitor, each pass).
    pub fn set_job_series(&self, series: Vec<JobSeries>) {
        *self.sampled.jobs.lock().unwrap_or_else(|e| e.into_inner()) = series;
    }

    pub fn set_leader(&self, leading: bool) {
        let was = self.leader.set(i64::from(leading)) == 1;
        if was != leading {
            self.leader_transitions.inc();
        }
    }
}

// The admission webhook's metric (`crate::webhook`).

/// An admission decision: `kind` ScheduledJob, TaskFunction or other; `result` allowed,
/// refused, skipped (not this installation's, or no change to judge), error, or finalizer (a
/// create given kube-beat's finalizer by the mutating webhook).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Admission {
    pub kind: &'static str,
    pub result: &'static str,
}

fn register_admissions(r: &mut Registry, m: &Metrics) {
    r.register(
        "admission_reviews",
        "Admission webhook decisions by kind and result (allowed, refused, skipped, error, finalizer)",
        m.admissions.clone(),
    );
}

// Build info: which kube-beat is running, the usual `_build_info` gauge fixed at 1, so that
// dashboards and alerts can join on `version` and a mixed-version rollout is visible.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfo {
    version: &'static str,
}

fn register_build_info(r: &mut Registry) {
    let info: Family<BuildInfo, Gauge> = Family::default();
    info.get_or_create(&BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    r.register(
        "build_info",
        "Always 1; the kube-beat version in the `version` label",
        info,
    );
}

/// The outcome and state series exist from the start, at 0. The alerts compute `increase()` over
/// them, and a counter series that first appears at 3 has no earlier sample: `increase()` would
/// miss the first failures after every restart. (A family only exports the label sets created.)
fn zero_alerted_series(m: &Metrics) {
    for outcome in [
        "published",
        "missed",
        "skipped",
        "dispatch_failed",
        "replaced",
    ] {
        let _ = m.dispatches.get_or_create(&Outcome { outcome });
    }
    for state in ["SUCCESS", "FAILURE", "REVOKED", "LOST", "DISPATCH_FAILED"] {
        let _ = m.executions.get_or_create(&ExecState { state });
    }
}

#[derive(Debug)]
struct SampledCollector(Arc<Sampled>);

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for SampledCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        encode_worker_series(&mut encoder, s)?;
        let feed = s.feed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for sample in feed.iter().flat_map(|f| f.samples()) {
            match sample.kind {
                SampleKind::Gauge => gauge(
                    &mut encoder,
                    sample.name,
                    sample.help,
                    i64::try_from(sample.value).unwrap_or(i64::MAX),
                )?,
                SampleKind::Counter => {
                    counter(&mut encoder, sample.name, sample.help, sample.value)?
                }
            }
        }
        if let Some(pool) = s.pool.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let idle = pool.num_idle() as i64;
            let size = i64::from(pool.size());
            let mut family = encoder.encode_descriptor(
                "db_pool_connections",
                "Postgres connections of this replica, by state",
                None,
                MetricType::Gauge,
            )?;
            for (state, v) in [("in_use", size - idle), ("idle", idle)] {
                let labels = [("state", state)];
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let queues = s.queues.lock().unwrap_or_else(|e| e.into_inner());
            if !queues.is_empty() {
                let mut family = encoder.encode_descriptor(
                    "celery_queue_depth",
                    "Messages waiting in the Celery queues the jobs use (all priorities)",
                    None,
                    MetricType::Gauge,
                )?;
                for (queue, depth) in queues.iter() {
                    let labels = [("queue", queue.as_str())];
                    ConstGauge::new(*depth as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        encode_job_series(
            &mut encoder,
            &s.jobs.lock().unwrap_or_else(|e| e.into_inner()),
        )?;
        let ok = s.finished_ok.load(Ordering::Relaxed);
        let bad = s.finished_bad.load(Ordering::Relaxed);
        let ratio = if ok + bad == 0 {
            0.0
        } else {
            bad as f64 / (ok + bad) as f64
        };
        let g = ConstGauge::new(ratio);
        g.encode(encoder.encode_descriptor(
            "execution_error_ratio",
            "Share of finished executions (seen by this replica) that did not succeed",
            None,
            MetricType::Gauge,
        )?)
    }
}

/// The opt-in per-job families (nothing when no job asks).
fn encode_job_series(
    encoder: &mut DescriptorEncoder,
    jobs: &[JobSeries],
) -> Result<(), std::fmt::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    type Value = fn(&JobSeries) -> Option<i64>;
    let families: [(&str, &str, Value); 3] = [
        (
            "job_healthy",
            "1 while the job's Healthy condition is True (jobs with health.metrics: true)",
            |j| Some(j.healthy),
        ),
        (
            "job_consecutive_failures",
            "Runs in a row that failed (jobs with health.metrics: true)",
            |j| Some(j.consecutive_failures),
        ),
        (
            "job_last_success_timestamp_seconds",
            "Slot time of the job's last successful run (jobs with health.metrics: true)",
            |j| j.last_success,
        ),
    ];
    for (name, help, value) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for j in jobs {
            if let Some(v) = value(j) {
                let labels = [
                    ("namespace", j.namespace.as_str()),
                    ("name", j.name.as_str()),
                ];
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod build_info_tests {
    use super::METRICS;

    #[test]
    fn build_info_and_the_alerted_series_are_there_from_the_start() {
        let text = METRICS.render();
        assert!(
            text.contains(&format!(
                "kube_beat_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for series in [
            "kube_beat_dispatches_total{outcome=\"dispatch_failed\"} ",
            "kube_beat_executions_total{state=\"LOST\"} ",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }
}

fn encode_worker_series(
    encoder: &mut DescriptorEncoder,
    s: &Sampled,
) -> Result<(), std::fmt::Error> {
    let series = s.workers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !series.queues.is_empty() {
        let mut family = encoder.encode_descriptor(
            "workers",
            "Live Celery workers (answering remote control) consuming each TaskFunction queue",
            None,
            MetricType::Gauge,
        )?;
        for (queue, n) in &series.queues {
            let labels = [("queue", queue.as_str())];
            ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
    }
    if !series.registered.is_empty() {
        let mut family = encoder.encode_descriptor(
            "task_registered",
            "1 if a live Celery worker consuming the TaskFunction's queue registered its task",
            None,
            MetricType::Gauge,
        )?;
        for (tf, registered) in &series.registered {
            let labels = [("task_function", tf.as_str())];
            ConstGauge::new(i64::from(*registered)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod worker_series_tests {
    use super::*;

    #[test]
    fn worker_series_are_bounded_and_replaced_whole() {
        let sampled = Sampled::default();
        let many = WorkerSeries {
            queues: (0..MAX_WORKER_SERIES + 5)
                .map(|i| (format!("q{i}"), 1))
                .collect(),
            registered: vec![("tf-a".into(), true), ("tf-b".into(), false)],
        };
        sampled.set_workers(many);
        let kept = sampled.workers.lock().expect("lock").clone();
        assert_eq!(kept.queues.len(), MAX_WORKER_SERIES);
        assert_eq!(kept.registered.len(), 2);
        let mut registry = Registry::with_prefix("kube_beat");
        registry.register_collector(Box::new(SampledCollector(Arc::new(sampled))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("kube_beat_workers{queue=\"q0\"} 1"), "{text}");
        assert!(!text.contains(&format!("queue=\"q{MAX_WORKER_SERIES}\"")));
        assert!(text.contains("kube_beat_task_registered{task_function=\"tf-a\"} 1"));
        assert!(text.contains("kube_beat_task_registered{task_function=\"tf-b\"} 0"));
    }
}
