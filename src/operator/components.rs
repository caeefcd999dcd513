//! Building the operator's components from the command line: each is a named future that runs
//! until the process stops (see `super::run_until_stopped`). The long-running parts that could
//! meet a bug in some input run under `supervise`, which restarts them after a panic.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use kube::Client;
use tokio::sync::watch;
use tracing::info;

use super::{Part, tasks};
use crate::{
    dispatch::Dispatcher,
    leader::{self, Role},
    options::{DispatchMode, RunArgs},
    reconcile,
    redis_target::TransportOptions,
    status::{Feed, FeedReceivers},
    store,
    supervise::supervise,
    tracker::backend::BackendUrl,
};

/// The components, ready to run.
pub(super) struct Built {
    /// The leader election: ends after `stop`, once the lease is released.
    pub(super) election: tokio::task::JoinHandle<()>,
    pub(super) parts: Vec<Part>,
}

/// What every component is built from.
struct Shared {
    pool: sqlx::PgPool,
    client: Client,
    identity: String,
    role: watch::Receiver<Role>,
    feed: Feed,
    stop: watch::Receiver<bool>,
    shadow: bool,
    /// The worker probe's latest census; consumed by the health monitor (issue #26).
    census: crate::workers::CensusWatch,
}

// The wiring, in the order the parts depend on each other; each part is built by a function
// of its own below, what is left here is the shared state they are built from.
pub(super) fn build(
    args: &RunArgs,
    url: &str,
    backend_url: BackendUrl,
    pool: sqlx::PgPool,
    client: Client,
    stop: watch::Receiver<bool>,
) -> Result<Built> {
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(hostname)
        .unwrap_or_else(|| "kube-beat".to_string());
    let leader_cfg = leader::LeaderConfig {
        lease_name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
        retry_period: Duration::from_secs(args.retry_period_seconds),
    };
    let (role, election) = leader::spawn(client.clone(), pool.clone(), leader_cfg, stop.clone());
    let shadow = args.dispatch_mode == DispatchMode::Shadow;
    if shadow {
        tracing::warn!(
            "dispatch mode shadow: executions are recorded as SHADOW and nothing is published"
        );
    }
    let (feed, feed_rx) = Feed::new(args.status_queue_capacity);
    let (census_tx, census) = crate::workers::census_channel();
    let s = Shared {
        pool,
        client,
        identity,
        role,
        feed,
        stop,
        shadow,
        census,
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let controllers = reconcile::controllers(
        s.client.clone(),
        s.pool.clone(),
        reconcile::RunOptions {
            namespace: args.namespace.clone(),
            task_function_selector: args.task_function_selector.clone(),
            role: s.role.clone(),
            wake: wake.clone(),
            shadow,
            feed: s.feed.clone(),
        },
        stopped(s.stop.clone()),
    );
    {
        let sampled = &crate::metrics::METRICS.sampled;
        *sampled.pool.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.pool.clone());
        crate::metrics::METRICS.sample_feed(s.feed.stats.clone());
    }
    let ledger = format!("kubebeat.sent.{}.{}", args.lease_namespace, args.lease_name);
    let health = crate::http::Health::default();
    let readiness = readiness(controllers.synced(), health.clone(), s.stop.clone());
    let cache = controllers.jobs();
    let mut parts: Vec<Part> = vec![("controllers", Box::pin(controllers.run()))];
    parts.extend(status_parts(args, &s, feed_rx, cache));
    let (broker_options, backend_options) = super::transport_options(args)?;
    // The API's revokes: the broker, and whether a tracker follows runs to their end.
    let broker = (!s.shadow)
        .then(|| args.broker_url.clone())
        .flatten()
        .map(|url| crate::http::api::BrokerAccess {
            url,
            options: broker_options.clone(),
            ledger: ledger.clone(),
        });
    let tracked = !matches!(backend_url, BackendUrl::None);
    parts.push(tracker_part(args, &s, backend_url, backend_options));
    parts.push(backfill_part(&s, wake.clone()));
    parts.push(dispatcher_part(
        args,
        url,
        &s,
        wake,
        ledger.clone(),
        broker_options.clone(),
    )?);
    parts.push(housekeeping_part(args, &s));
    parts.push(health_part(args, &s));
    parts.push((
        "heartbeat",
        Box::pin(tasks::heartbeat(
            s.pool.clone(),
            s.identity.clone(),
            s.stop.clone(),
        )),
    ));
    // Ends at once without a broker (shadow mode): then it waits for the stop like the rest.
    let sampler = tasks::sample_queue_depths(
        s.pool.clone(),
        args.broker_url.clone(),
        broker_options.clone(),
        ledger.clone(),
        s.stop.clone(),
    );
    parts.push((
        "queue depth sampler",
        Box::pin(then_wait(sampler, s.stop.clone())),
    ));
    parts.push(worker_probe_part(
        args,
        &s,
        census_tx,
        broker_options,
        ledger,
    ));
    parts.push(("readiness", Box::pin(then_wait(readiness, s.stop.clone()))));
    parts.push(http_part(args, &s, health, broker, tracked));
    if let Some(webhook) = webhook_part(args, &s) {
        parts.push(webhook);
    }
    Ok(Built { election, parts })
}

/// The status writer and the Events writer (each restarts after a panic; the feed's receivers
/// outlive a run that panicked: they are shared, and each run borrows its receiver).
fn status_parts(
    args: &RunArgs,
    s: &Shared,
    feed_rx: FeedReceivers,
    cache: reconcile::job_cache::JobCache,
) -> [Part; 2] {
    let jobs_rx = Arc::new(tokio::sync::Mutex::new(feed_rx.jobs));
    let events_rx = Arc::new(tokio::sync::Mutex::new(feed_rx.events));
    let setup = crate::status::WriterSetup {
        client: s.client.clone(),
        pool: s.pool.clone(),
        cache: Arc::new(cache),
        cfg: crate::status::WriterConfig {
            qps: args.status_qps,
            per_job_interval: Duration::from_secs_f64(
                args.status_interval_seconds.clamp(0.0, 3600.0),
            ),
        },
        stats: s.feed.stats.clone(),
    };
    let (role, stop) = (s.role.clone(), s.stop.clone());
    let status_writer = supervise("status_writer", s.stop.clone(), move || {
        let (setup, rx, role, stop) = (setup.clone(), jobs_rx.clone(), role.clone(), stop.clone());
        async move {
            let mut rx = rx.lock_owned().await;
            crate::status::run(setup, &mut rx, role, stop).await
        }
    });
    let cfg = crate::status::events::EventsConfig {
        qps: args.event_qps,
        per_job_interval: Duration::from_secs(args.event_interval_seconds),
    };
    let (client, identity, stats, role, stop) = (
        s.client.clone(),
        s.identity.clone(),
        s.feed.stats.clone(),
        s.role.clone(),
        s.stop.clone(),
    );
    let events = supervise("events", s.stop.clone(), move || {
        let (client, identity, stats, role, stop, rx) = (
            client.clone(),
            identity.clone(),
            stats.clone(),
            role.clone(),
            stop.clone(),
            events_rx.clone(),
        );
        async move {
            let mut rx = rx.lock_owned().await;
            crate::status::events::run(client, identity, cfg, &mut rx, stats, role, stop).await
        }
    });
    [
        ("status writer", Box::pin(status_writer)),
        ("events writer", Box::pin(events)),
    ]
}

fn tracker_part(
    args: &RunArgs,
    s: &Shared,
    backend_url: BackendUrl,
    options: TransportOptions,
) -> Part {
    let (pool, role, feed, stop) = (
        s.pool.clone(),
        s.role.clone(),
        s.feed.clone(),
        s.stop.clone(),
    );
    let config = tasks::TrackerConfig {
        url: backend_url,
        options,
        poll: Duration::from_millis(args.result_poll_ms.max(10)),
        subscribe: args.result_subscribe,
    };
    let tracker = supervise("result_tracker", s.stop.clone(), move || {
        tasks::run_tracker(
            pool.clone(),
            config.clone(),
            role.clone(),
            feed.clone(),
            stop.clone(),
        )
    });
    ("result tracker", Box::pin(tracker))
}

/// The dispatcher, on a Postgres pool of its own (`store::dedicated`).
fn dispatcher_part(
    args: &RunArgs,
    url: &str,
    s: &Shared,
    wake: Arc<tokio::sync::Notify>,
    ledger: String,
    options: TransportOptions,
) -> Result<Part> {
    let broker_url = if s.shadow {
        None
    } else {
        Some(
            args.broker_url
                .clone()
                .context("--broker-url (or BROKER_URL) is required in live mode")?,
        )
    };
    let pool = store::dedicated(url, crate::dispatch::CONNECTIONS)?;
    let publish_give_up = chrono::Duration::seconds(args.publish_give_up_seconds);
    let publish_chunk = args.publish_chunk.max(1);
    let dedupe_window = Duration::from_secs(args.publish_give_up_seconds.max(0) as u64 * 2 + 600);
    // One ledger per installation (its Lease), so installations sharing a vhost never read each
    // other's entries.
    let (identity, role, feed, stop) = (
        s.identity.clone(),
        s.role.clone(),
        s.feed.clone(),
        s.stop.clone(),
    );
    let dispatcher = supervise("dispatcher", s.stop.clone(), move || {
        let (pool, identity, role, wake, feed) = (
            pool.clone(),
            identity.clone(),
            role.clone(),
            wake.clone(),
            feed.clone(),
        );
        tasks::run_dispatcher(
            broker_url.clone(),
            options.clone(),
            dedupe_window,
            ledger.clone(),
            move |publisher| Dispatcher {
                pool,
                publisher,
                identity,
                role,
                wake,
                publish_give_up,
                publish_chunk,
                feed,
            },
            stop.clone(),
        )
    });
    Ok(("dispatcher", Box::pin(dispatcher)))
}

/// The leader's Celery worker probe (`crate::workers`); ends at once in shadow mode or when
/// turned off (`--worker-probe-seconds 0`), then waits for the stop.
fn worker_probe_part(
    args: &RunArgs,
    s: &Shared,
    census: watch::Sender<Option<Arc<crate::workers::Census>>>,
    options: TransportOptions,
    ledger: String,
) -> Part {
    let cfg = crate::workers::ProbeConfig {
        pool: s.pool.clone(),
        client: s.client.clone(),
        period: Duration::from_secs(args.worker_probe_seconds.min(86_400)),
        role: s.role.clone(),
        census,
    };
    let broker_url = if s.shadow {
        None
    } else {
        args.broker_url.clone()
    };
    let stop = s.stop.clone();
    let probe = supervise("worker_probe", s.stop.clone(), move || {
        tasks::run_worker_probe(
            cfg.clone(),
            broker_url.clone(),
            options.clone(),
            ledger.clone(),
            stop.clone(),
        )
    });
    ("worker probe", Box::pin(then_wait(probe, s.stop.clone())))
}

/// The backfill runner (leader only; `crate::backfill::runner`).
fn backfill_part(s: &Shared, wake: Arc<tokio::sync::Notify>) -> Part {
    let (pool, role, feed, stop, shadow) = (
        s.pool.clone(),
        s.role.clone(),
        s.feed.clone(),
        s.stop.clone(),
        s.shadow,
    );
    let runner = supervise("backfill", s.stop.clone(), move || {
        crate::backfill::runner::Runner {
            pool: pool.clone(),
            role: role.clone(),
            feed: feed.clone(),
            wake: wake.clone(),
            shadow,
        }
        .run(stop.clone())
    });
    ("backfill", Box::pin(runner))
}

fn housekeeping_part(args: &RunArgs, s: &Shared) -> Part {
    let retention = chrono::Duration::hours(i64::from(args.deleted_job_retention_hours));
    let (pool, role, stop) = (s.pool.clone(), s.role.clone(), s.stop.clone());
    let every = Duration::from_secs(args.history_prune_seconds.max(1));
    let housekeeping = supervise("housekeeping", s.stop.clone(), move || {
        tasks::housekeeping(pool.clone(), retention, every, role.clone(), stop.clone())
    });
    ("housekeeping", Box::pin(housekeeping))
}

/// The health monitor (leader only): the `Healthy` condition, pauses, per-job series.
fn health_part(args: &RunArgs, s: &Shared) -> Part {
    let (pool, role, feed, stop) = (
        s.pool.clone(),
        s.role.clone(),
        s.feed.clone(),
        s.stop.clone(),
    );
    let every = Duration::from_secs(args.health_check_seconds.max(1));
    let metrics_limit = args.job_metrics_limit;
    // From the worker probe's latest census, trusted for three probe periods (and 30 s of
    // slack for its reply wait and a slow apiserver).
    let census = s.census.clone();
    let max_age =
        chrono::Duration::seconds((args.worker_probe_seconds.min(86_400) * 3 + 30) as i64);
    let workers: crate::status::health_monitor::WorkerSignals =
        Arc::new(move |task: &str, queue: &str| {
            let census = census.borrow().clone();
            crate::workers::worker_signal(
                census.as_deref(),
                task,
                queue,
                chrono::Utc::now(),
                max_age,
            )
        });
    let monitor = supervise("health monitor", s.stop.clone(), move || {
        crate::status::health_monitor::HealthMonitor {
            pool: pool.clone(),
            role: role.clone(),
            feed: feed.clone(),
            every,
            metrics_limit,
            workers: workers.clone(),
        }
        .run(stop.clone())
    });
    ("health monitor", Box::pin(monitor))
}

/// The HTTP server: health, metrics, the API and the dashboard.
fn http_part(
    args: &RunArgs,
    s: &Shared,
    health: crate::http::Health,
    broker: Option<crate::http::api::BrokerAccess>,
    tracked: bool,
) -> Part {
    if args.api_auth == crate::http::auth::AuthMode::None {
        tracing::warn!(
            "API AUTHENTICATION IS OFF (--api-auth=none): anyone who reaches {} can read every job and trigger runs. Use only on a workstation.",
            args.http_addr
        );
    }
    let api = crate::http::api::routes(Arc::new(crate::http::api::ApiState {
        pool: s.pool.clone(),
        client: s.client.clone(),
        auth: crate::http::auth::Authenticator::new(
            args.api_auth,
            s.client.clone(),
            args.api_audiences.clone(),
        ),
        identity: s.identity.clone(),
        lease_name: args.lease_name.clone(),
        lease_namespace: args.lease_namespace.clone(),
        dispatch_mode: if s.shadow { "shadow" } else { "live" },
        role: s.role.clone(),
        broker,
        tracked,
        events: crate::http::api::JobEvents::default(),
    }));
    let stop = s.stop.clone();
    let addr = args.http_addr.clone();
    let app = crate::http::router(health).merge(api);
    let http = async move {
        if let Err(e) = crate::http::serve(&addr, app, None, stop).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    };
    ("HTTP server", Box::pin(http))
}

/// The admission webhook (`--webhook-addr`), when asked for. It ends only with the process
/// (or on an error, such as its address taken, which stops the process like any part's end).
fn webhook_part(args: &RunArgs, s: &Shared) -> Option<Part> {
    let addr = args.webhook_addr.trim();
    if addr.is_empty() {
        return None;
    }
    let non_empty = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    let opts = crate::webhook::WebhookOptions {
        addr: addr.to_string(),
        cert_dir: args.webhook_cert_dir.clone(),
        service: args.webhook_service.clone(),
        extra_sans: args.webhook_extra_san.clone(),
        secret: args.webhook_secret.clone(),
        namespace: args.lease_namespace.clone(),
        configuration: non_empty(&args.webhook_configuration),
        refresh: Duration::from_secs(args.webhook_refresh_seconds.clamp(1, 3600)),
        selector: reconcile::LabelSelector::parse(
            args.task_function_selector.as_deref().unwrap_or(""),
        )
        .unwrap_or_else(|_| reconcile::LabelSelector::nothing()),
        watch_namespace: args.namespace.clone(),
        missing_task_function: args.webhook_missing_task_function,
    };
    let (client, stop) = (s.client.clone(), s.stop.clone());
    let webhook = async move {
        if let Err(e) = crate::webhook::run(opts, client, stop.clone()).await {
            tracing::error!(error = %e, "admission webhook failed");
            return;
        }
        // Stopped: wait like the other parts do (it returns only after the stop).
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
    };
    Some(("admission webhook", Box::pin(webhook)))
}

/// Ready once migrations ran (before this is built) and the caches hold their first list.
async fn readiness(
    synced: impl Fn() -> bool,
    health: crate::http::Health,
    mut stop: watch::Receiver<bool>,
) {
    while !synced() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    health
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    info!("caches synced: ready");
}

/// `part`, then wait for the stop: for a component whose work may be done before the process
/// stops (and whose ending is then no error).
async fn then_wait(part: impl std::future::Future<Output = ()>, mut stop: watch::Receiver<bool>) {
    part.await;
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves once `stop` flips (for the controllers' graceful shutdown).
fn stopped(
    stop: watch::Receiver<bool>,
) -> futures::future::Shared<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>
{
    let stopped: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>> =
        Box::pin(async move {
            let mut rx = stop;
            let _ = rx.wait_for(|stop| *stop).await;
        });
    futures::FutureExt::shared(stopped)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
