//! The operator's long-running parts that are not a module of their own: connecting to a
//! dependency that may start after us, the replica heartbeat, the queue-depth sampler and the
//! leader's housekeeping.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    celery::Publisher,
    dispatch::Dispatcher,
    leader::Role,
    metrics::METRICS,
    redis_target::TransportOptions,
    status::Feed,
    store,
    tracker::backend::{Backend, BackendUrl},
};

/// Queues whose depth is sampled at most: a bounded label set.
const SAMPLED_QUEUES: i64 = 50;

/// Call `connect` until it succeeds (backing off up to 30 s: a dependency may start after us);
/// `None` if asked to stop first.
pub(super) async fn retrying<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    what: &str,
    connect: impl Fn() -> F,
    stop: &mut watch::Receiver<bool>,
) -> Option<T> {
    let mut delay = Duration::from_millis(500);
    loop {
        match connect().await {
            Ok(v) => return Some(v),
            Err(e) => warn!(error = %e, retry_in = ?delay, "connecting to {what} failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Connect to the broker (retrying: it may start after us), then dispatch while leader.
pub(super) async fn run_dispatcher(
    broker_url: Option<String>,
    options: TransportOptions,
    dedupe_window: Duration,
    ledger: String,
    dispatcher: impl FnOnce(Option<Publisher>) -> Dispatcher,
    mut stop: watch::Receiver<bool>,
) {
    let publisher = match broker_url {
        None => None,
        // Re-publishes happen until an execution is given up: remember sent ids a while longer.
        Some(url) => match retrying(
            "the broker",
            || Publisher::connect_with(&url, &options, dedupe_window, &ledger),
            &mut stop,
        )
        .await
        {
            Some(p) => Some(p),
            None => return, // stopping
        },
    };
    dispatcher(publisher).run(stop).await;
}

/// Where results are and how they are read.
#[derive(Clone)]
pub(super) struct TrackerConfig {
    pub url: BackendUrl,
    pub options: TransportOptions,
    /// Between passes over the unfinished runs.
    pub poll: Duration,
    /// Also subscribe to a Redis backend's announcements (`--result-subscribe`).
    pub subscribe: bool,
}

/// Connect to the result backend (retrying: it may be down at start), then track results.
pub(super) async fn run_tracker(
    pool: sqlx::PgPool,
    config: TrackerConfig,
    role: watch::Receiver<Role>,
    feed: Feed,
    mut stop: watch::Receiver<bool>,
) {
    let TrackerConfig {
        url,
        options,
        poll,
        subscribe,
    } = config;
    let connect = || Backend::connect_with(&url, &options);
    let Some(backend) = retrying("the result backend", connect, &mut stop).await else {
        return; // stopping
    };
    // The subscriber is a task of its own, so the tracker's work never delays taking messages
    // off the connection; it ends with this function (stopping, or a panic the supervisor
    // restarts from here).
    let mut subscriber = None;
    let mut hints = None;
    let subscribed = crate::tracker::hints::Live::default();
    if let Some((conn, keyprefix)) = backend.announcements().filter(|_| subscribe) {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::tracker::hints::QUEUE);
        let task = crate::tracker::hints::subscribe(
            conn,
            keyprefix,
            role.clone(),
            tx,
            subscribed.clone(),
            stop.clone(),
        );
        subscriber = Some(AbortOnDrop(tokio::spawn(task)));
        hints = Some(rx);
    }
    crate::tracker::Tracker {
        pool,
        backend,
        role,
        feed,
        poll,
        hints,
        subscribed,
    }
    .run(stop)
    .await;
    drop(subscriber);
}

/// A spawned task, aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every 10 s this replica records that it is alive (`scheduler_replicas`, shown by the API and
/// the dashboard); it removes itself when it stops.
pub(super) async fn heartbeat(
    pool: sqlx::PgPool,
    identity: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) =
            store::replicas::heartbeat(&pool, &identity, env!("CARGO_PKG_VERSION")).await
        {
            debug!(error = %e, "replica heartbeat failed");
        }
        if let Err(e) = store::replicas::forget_stale(&pool).await {
            debug!(error = %e, "forgetting replicas not seen for a day failed");
        }
        let stopping = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            if let Err(e) = store::replicas::remove(&pool, &identity).await {
                debug!(error = %e, "removing this replica's heartbeat failed");
            }
            return;
        }
    }
}

/// Every 15 s, the depth of each Celery queue the jobs use (for `kube_beat_celery_queue_depth`),
/// over a connection of its own. At most [`SAMPLED_QUEUES`] queues.
pub(super) async fn sample_queue_depths(
    pool: sqlx::PgPool,
    broker_url: Option<String>,
    options: TransportOptions,
    ledger: String,
    mut stop: watch::Receiver<bool>,
) {
    let Some(publisher) =
        side_publisher("queue depths", broker_url, &options, &ledger, &mut stop).await
    else {
        return;
    };
    loop {
        let queues = match store::queues::job_queues(&pool, SAMPLED_QUEUES).await {
            Ok(q) => q,
            Err(e) => {
                debug!(error = %e, "listing the jobs' queues failed");
                Vec::new()
            }
        };
        let mut depths = Vec::with_capacity(queues.len());
        for q in queues {
            match publisher.queue_depth(&q).await {
                Ok(d) => depths.push((q, d)),
                Err(e) => debug!(queue = %q, error = %e, "sampling queue depth failed"),
            }
        }
        *METRICS
            .sampled
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = depths;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Connect to the broker (retrying), then probe the workers while leader (`crate::workers`).
/// Ends at once in shadow mode (no broker) or with the probe turned off (a zero period).
pub(super) async fn run_worker_probe(
    cfg: crate::workers::ProbeConfig,
    broker_url: Option<String>,
    options: TransportOptions,
    ledger: String,
    mut stop: watch::Receiver<bool>,
) {
    let broker_url = broker_url.filter(|_| !cfg.period.is_zero());
    let Some(publisher) =
        side_publisher("worker probe", broker_url, &options, &ledger, &mut stop).await
    else {
        return;
    };
    crate::workers::run(cfg, publisher, stop).await;
}

/// A broker connection of a part's own, beside the dispatcher's (retrying: the broker may start
/// after us); `None` without a broker URL or when stopped first.
async fn side_publisher(
    part: &str,
    broker_url: Option<String>,
    options: &TransportOptions,
    ledger: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<Publisher> {
    let url = broker_url?;
    retrying(
        &format!("the broker ({part})"),
        || Publisher::connect_with(&url, options, Duration::from_secs(60), ledger),
        stop,
    )
    .await
}

/// Retention, on the leader only: executions beyond each job's `historyLimit` every
/// `history_every`, and deleted jobs (with their executions) past `retention` every 10 minutes;
/// and every 30 s the worker-side guard's suppressed duplicates of the last hour (a gauge).
/// The history prune visits every job at each new leadership and hourly
/// ([`store::prune_history`]); in between only the jobs that ran since the last pass
/// ([`store::prune_history_since`]), so its cost follows the runs, not the jobs.
pub(super) async fn housekeeping(
    pool: sqlx::PgPool,
    retention: chrono::Duration,
    history_every: Duration,
    role: watch::Receiver<Role>,
    mut stop: watch::Receiver<bool>,
) {
    let deleted_every = Duration::from_secs(600);
    let full_every = Duration::from_secs(3600);
    let mut last_deleted: Option<Instant> = None;
    let mut last_history: Option<Instant> = None;
    // The worker-side guard's duplicates of the last hour, for the gauge.
    let guard_every = Duration::from_secs(30);
    let mut last_guard: Option<Instant> = None;
    // The last full history pass, and the newest execution id the last pass of either kind saw.
    let mut last_full: Option<Instant> = None;
    let mut pruned_upto: Option<i64> = None;
    loop {
        let leading = role.borrow().epoch().is_some();
        if leading && last_deleted.is_none_or(|t| t.elapsed() >= deleted_every) {
            last_deleted = Some(Instant::now());
            match store::prune_deleted_jobs(&pool, chrono::Utc::now() - retention, 500).await {
                Ok(0) => {}
                Ok(n) => info!(jobs = n, "pruned deleted jobs past retention"),
                Err(e) => warn!(error = %e, "pruning deleted jobs failed"),
            }
        }
        if leading && last_history.is_none_or(|t| t.elapsed() >= history_every) {
            last_history = Some(Instant::now());
            let full = last_full.is_none_or(|t| t.elapsed() >= full_every);
            let pass = match pruned_upto.filter(|_| !full) {
                Some(after) => store::prune_history_since(&pool, after, 5_000).await,
                None => store::prune_history(&pool, 500).await,
            };
            match pass {
                Ok(p) => {
                    if full {
                        last_full = Some(Instant::now());
                    }
                    pruned_upto = Some(p.upto);
                    if p.deleted > 0 {
                        debug!(
                            executions = p.deleted,
                            full, "pruned execution history beyond historyLimit"
                        );
                    }
                }
                Err(e) => warn!(error = %e, "pruning execution history failed"),
            }
        }
        if leading && last_guard.is_none_or(|t| t.elapsed() >= guard_every) {
            last_guard = Some(Instant::now());
            let since = chrono::Utc::now() - chrono::Duration::hours(1);
            match store::guard::duplicates_since(&pool, since).await {
                Ok(n) => {
                    crate::metrics::METRICS.guard_duplicates.set(n);
                }
                Err(e) => warn!(error = %e, "reading the guard's suppressed duplicates failed"),
            }
        }
        if !leading {
            crate::metrics::METRICS.guard_duplicates.set(0);
            last_guard = None;
            last_deleted = None;
            last_history = None;
            last_full = None;
            pruned_upto = None;
        }
        let tick = history_every.min(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
