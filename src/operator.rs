//! The `run` entry point: wires the controllers, the leader and the servers together.

use anyhow::{Context, Result};
use chrono::{Duration, Utc};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tracing::info;

use std::sync::Arc;

use crate::{
    api::{ScheduledJob, TRIGGER_ANNOTATION},
    celery::Publisher,
    dispatch::Dispatcher,
    leader,
    options::{DispatchMode, RunArgs},
    reconcile, store,
    supervise::supervise,
};

/// Run the operator until SIGTERM / Ctrl-C.
pub async fn run(args: RunArgs) -> Result<()> {
    let url = args
        .database_url
        .as_deref()
        .context("--database-url (or DATABASE_URL) is required")?;
    // Every URL is checked before anything connects: a typo stops the process at once. Errors
    // and logs name a URL only redacted (`crate::redact`): they carry passwords.
    let shown_url = crate::redact::url(url);
    store::check_url(url).context("--database-url")?;
    let backend_url = crate::tracker::backend::BackendUrl::parse(Some(&args.result_backend))
        .context("--result-backend")?;
    let shadow = args.dispatch_mode == DispatchMode::Shadow;
    if let Some(broker) = args.broker_url.as_deref() {
        crate::celery::check_url(broker).context("--broker-url")?;
    } else if !shadow {
        anyhow::bail!("--broker-url (or BROKER_URL) is required in live mode");
    }
    // Postgres unreachable at start (a restart, a failover): keep trying rather than exit into
    // a crash loop. SIGTERM still ends the process here (no handler is installed yet).
    let mut delay = std::time::Duration::from_millis(500);
    let pool = loop {
        match connect_and_migrate(url, &args).await {
            Ok(pool) => break pool,
            // A database this binary cannot migrate (newer, edited or dirty) will not heal.
            Err(store::StoreError::Migrate(e))
                if !matches!(e, sqlx::migrate::MigrateError::Execute(_)) =>
            {
                return Err(e).context("applying migrations");
            }
            Err(e) => {
                tracing::warn!(error = %e, database = %shown_url, retry_in = ?delay, "Postgres not ready")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(15));
    };
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    info!(namespace = ?args.namespace, "kube-beat starting");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let rx = stop_rx.clone();
        async move {
            let mut rx = rx;
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let retention = Duration::hours(i64::from(args.deleted_job_retention_hours));
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(hostname)
        .unwrap_or_else(|| "kube-beat".to_string());
    let leader_cfg = leader::LeaderConfig {
        lease_name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: identity.clone(),
        lease_duration: std::time::Duration::from_secs(args.lease_duration_seconds),
        renew_deadline: std::time::Duration::from_secs(args.renew_deadline_seconds),
        retry_period: std::time::Duration::from_secs(args.retry_period_seconds),
    };
    let (role, election) = leader::spawn(client.clone(), pool.clone(), leader_cfg, stop_rx.clone());
    let (api_client, auth_client, api_identity, api_role) = (
        client.clone(),
        client.clone(),
        identity.clone(),
        role.clone(),
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    if shadow {
        tracing::warn!(
            "dispatch mode shadow: executions are recorded as SHADOW and nothing is published"
        );
    }
    let (feed, feed_rx) = crate::status::Feed::new(args.status_queue_capacity);
    let feed_stats = feed.stats.clone();
    let controllers = reconcile::controllers(
        client.clone(),
        pool.clone(),
        reconcile::RunOptions {
            namespace: args.namespace.clone(),
            task_function_selector: args.task_function_selector.clone(),
            role: role.clone(),
            wake: wake.clone(),
            shadow,
            feed: feed.clone(),
        },
        futures::FutureExt::shared(Box::pin(stopped)),
    );
    // The long-running parts restart after a panic instead of ending the process (see
    // `supervise`). The feed's receivers outlive a task that panicked: they are shared, and
    // each run of a task borrows its receiver for as long as it runs.
    let jobs_rx = Arc::new(tokio::sync::Mutex::new(feed_rx.jobs));
    let events_rx = Arc::new(tokio::sync::Mutex::new(feed_rx.events));
    let status_writer = {
        let setup = crate::status::WriterSetup {
            client: client.clone(),
            pool: pool.clone(),
            cache: Arc::new(controllers.jobs()),
            cfg: crate::status::WriterConfig {
                qps: args.status_qps,
                per_job_interval: std::time::Duration::from_secs_f64(
                    args.status_interval_seconds.clamp(0.0, 3600.0),
                ),
            },
            stats: feed.stats.clone(),
        };
        let (role, stop) = (role.clone(), stop_rx.clone());
        supervise("status_writer", stop_rx.clone(), move || {
            let (setup, rx, role, stop) =
                (setup.clone(), jobs_rx.clone(), role.clone(), stop.clone());
            async move {
                let mut rx = rx.lock_owned().await;
                crate::status::run(setup, &mut rx, role, stop).await
            }
        })
    };
    let events = {
        let (client, identity, stats, role, stop) = (
            client.clone(),
            identity.clone(),
            feed.stats.clone(),
            role.clone(),
            stop_rx.clone(),
        );
        let cfg = crate::status::events::EventsConfig {
            qps: args.event_qps,
            per_job_interval: std::time::Duration::from_secs(args.event_interval_seconds),
        };
        supervise("events", stop_rx.clone(), move || {
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
        })
    };
    let tracker = {
        let (pool, role, feed, stop) = (pool.clone(), role.clone(), feed.clone(), stop_rx.clone());
        let poll = std::time::Duration::from_millis(args.result_poll_ms.max(10));
        supervise("result_tracker", stop_rx.clone(), move || {
            run_tracker(
                pool.clone(),
                backend_url.clone(),
                role.clone(),
                feed.clone(),
                poll,
                stop.clone(),
            )
        })
    };
    let sampler_broker = args.broker_url.clone();
    let broker_url = if shadow {
        None
    } else {
        Some(
            args.broker_url
                .clone()
                .context("--broker-url (or BROKER_URL) is required in live mode")?,
        )
    };
    let dispatcher = {
        let pool = store::dedicated(url, crate::dispatch::CONNECTIONS)?;
        let role = role.clone();
        let publish_give_up = chrono::Duration::seconds(args.publish_give_up_seconds);
        let publish_chunk = args.publish_chunk.max(1);
        let dedupe_window =
            std::time::Duration::from_secs(args.publish_give_up_seconds.max(0) as u64 * 2 + 600);
        // One ledger per installation (its Lease), so installations sharing a vhost never
        // read each other's entries.
        let ledger = format!("kubebeat.sent.{}.{}", args.lease_namespace, args.lease_name);
        let stop = stop_rx.clone();
        supervise("dispatcher", stop_rx.clone(), move || {
            let (pool, identity, role, wake, feed) = (
                pool.clone(),
                identity.clone(),
                role.clone(),
                wake.clone(),
                feed.clone(),
            );
            run_dispatcher(
                broker_url.clone(),
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
        })
    };
    let housekeeping = {
        let (pool, role, stop) = (pool.clone(), role, stop_rx.clone());
        let every = std::time::Duration::from_secs(args.history_prune_seconds.max(1));
        supervise("housekeeping", stop_rx.clone(), move || {
            housekeeping(pool.clone(), retention, every, role.clone(), stop.clone())
        })
    };
    {
        let sampled = &crate::metrics::METRICS.sampled;
        *sampled.pool.lock().unwrap_or_else(|e| e.into_inner()) = Some(pool.clone());
        crate::metrics::METRICS.sample_feed(feed_stats.clone());
    }
    let heartbeat = heartbeat(pool.clone(), api_identity.clone(), stop_rx.clone());
    let queue_sampler = sample_queue_depths(
        pool.clone(),
        sampler_broker,
        format!("kubebeat.sent.{}.{}", args.lease_namespace, args.lease_name),
        stop_rx.clone(),
    );
    let health = crate::http::Health::default();
    let synced = controllers.synced();
    let ready_flag = health.ready.clone();
    let mut ready_stop = stop_rx.clone();
    // Ready once migrations ran (above) and the caches hold their first list.
    let readiness = async move {
        while !synced() {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = ready_stop.wait_for(|s| *s) => return,
            }
        }
        ready_flag.store(true, std::sync::atomic::Ordering::Release);
        info!("caches synced: ready");
    };
    if args.api_auth == crate::http::auth::AuthMode::None {
        tracing::warn!(
            "API AUTHENTICATION IS OFF (--api-auth=none): anyone who reaches {} can read every job and trigger runs. Use only on a workstation.",
            args.http_addr
        );
    }
    let api = crate::http::api::routes(Arc::new(crate::http::api::ApiState {
        pool: pool.clone(),
        client: api_client,
        auth: crate::http::auth::Authenticator::new(
            args.api_auth,
            auth_client,
            args.api_audiences.clone(),
        ),
        identity: api_identity,
        lease_name: args.lease_name.clone(),
        lease_namespace: args.lease_namespace.clone(),
        dispatch_mode: if shadow { "shadow" } else { "live" },
        role: api_role,
    }));
    let http = {
        let stop = stop_rx.clone();
        let addr = args.http_addr.clone();
        let app = crate::http::router(health).merge(api);
        async move {
            if let Err(e) = crate::http::serve(&addr, app, None, stop).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }
    };
    let mut work = Box::pin(async {
        tokio::join!(
            controllers.run(),
            housekeeping,
            dispatcher,
            status_writer,
            events,
            tracker,
            readiness,
            http,
            queue_sampler,
            heartbeat
        )
    });
    let finished = tokio::select! {
        _ = &mut work => true,
        _ = shutdown_signal() => false,
    };
    info!("shutting down");
    let _ = stop_tx.send(true);
    let grace = std::time::Duration::from_secs(5);
    if !finished {
        // Let the dispatcher and controllers finish what they are doing.
        let _ = tokio::time::timeout(grace, work).await;
    }
    // Release the lease so a successor takes over at once instead of waiting for it to expire.
    let _ = tokio::time::timeout(grace, election).await;
    Ok(())
}

/// Connect to the broker (retrying: it may start after us), then dispatch while leader.
async fn run_dispatcher(
    broker_url: Option<String>,
    dedupe_window: std::time::Duration,
    ledger: String,
    dispatcher: impl FnOnce(Option<Publisher>) -> Dispatcher,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let publisher = match broker_url {
        None => None,
        // Re-publishes happen until an execution is given up: remember sent ids a while longer.
        Some(url) => match retrying(
            "the broker",
            || Publisher::connect(&url, dedupe_window, &ledger),
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

/// Call `connect` until it succeeds (backing off up to 30 s: a dependency may start after us);
/// `None` if asked to stop first.
async fn retrying<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    connect: impl Fn() -> F,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<T> {
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        match connect().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "connecting to {what} failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

async fn connect_and_migrate(url: &str, args: &RunArgs) -> Result<sqlx::PgPool, store::StoreError> {
    let pool = store::connect(url, args.database_max_connections).await?;
    if args.migrate {
        store::migrate::up(&pool).await?;
        info!("database migrations applied");
    }
    Ok(pool)
}

/// Every 10 s this replica records that it is alive (`scheduler_replicas`, shown by the API and
/// the dashboard); it removes itself when it stops.
async fn heartbeat(
    pool: sqlx::PgPool,
    identity: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = sqlx::query(
            "INSERT INTO scheduler_replicas (identity, version) VALUES ($1, $2)
             ON CONFLICT (identity) DO UPDATE SET last_seen = now(), version = $2",
        )
        .bind(&identity)
        .bind(env!("CARGO_PKG_VERSION"))
        .execute(&pool)
        .await
        {
            tracing::debug!(error = %e, "replica heartbeat failed");
        }
        let _ = sqlx::query(
            "DELETE FROM scheduler_replicas WHERE last_seen < now() - interval '1 day'",
        )
        .execute(&pool)
        .await;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            _ = stop.wait_for(|s| *s) => {
                let _ = sqlx::query("DELETE FROM scheduler_replicas WHERE identity = $1")
                    .bind(&identity)
                    .execute(&pool)
                    .await;
                return;
            }
        }
    }
}

/// Every 15 s, the depth of each Celery queue the jobs use (for `kube_beat_celery_queue_depth`),
/// over a connection of its own. At most 50 queues: a bounded label set.
async fn sample_queue_depths(
    pool: sqlx::PgPool,
    broker_url: Option<String>,
    ledger: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(url) = broker_url else { return };
    let Some(publisher) = retrying(
        "the broker (queue depths)",
        || Publisher::connect(&url, std::time::Duration::from_secs(60), &ledger),
        &mut stop,
    )
    .await
    else {
        return;
    };
    loop {
        let queues: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT queue FROM scheduled_jobs WHERE deleted_at IS NULL ORDER BY queue LIMIT 50",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        let mut depths = Vec::with_capacity(queues.len());
        for q in queues {
            match publisher.queue_depth(&q).await {
                Ok(d) => depths.push((q, d)),
                Err(e) => tracing::debug!(queue = %q, error = %e, "sampling queue depth failed"),
            }
        }
        *crate::metrics::METRICS
            .sampled
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = depths;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Connect to the result backend (retrying: it may be down at start), then track results.
async fn run_tracker(
    pool: sqlx::PgPool,
    url: crate::tracker::backend::BackendUrl,
    role: tokio::sync::watch::Receiver<leader::Role>,
    feed: crate::status::Feed,
    poll: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let connect = || crate::tracker::backend::Backend::connect(&url);
    let Some(backend) = retrying("the result backend", connect, &mut stop).await else {
        return; // stopping
    };
    crate::tracker::Tracker {
        pool,
        backend,
        role,
        feed,
        poll,
    }
    .run(stop)
    .await;
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Retention, on the leader only: executions beyond each job's `historyLimit` every
/// `history_every`, and deleted jobs (with their executions) past `retention` every 10 minutes.
async fn housekeeping(
    pool: sqlx::PgPool,
    retention: Duration,
    history_every: std::time::Duration,
    role: tokio::sync::watch::Receiver<leader::Role>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let deleted_every = std::time::Duration::from_secs(600);
    let mut last_deleted: Option<std::time::Instant> = None;
    let mut last_history: Option<std::time::Instant> = None;
    loop {
        let leading = role.borrow().epoch().is_some();
        if leading && last_deleted.is_none_or(|t| t.elapsed() >= deleted_every) {
            last_deleted = Some(std::time::Instant::now());
            match store::prune_deleted_jobs(&pool, Utc::now() - retention, 500).await {
                Ok(0) => {}
                Ok(n) => info!(jobs = n, "pruned deleted jobs past retention"),
                Err(e) => tracing::warn!(error = %e, "pruning deleted jobs failed"),
            }
        }
        if leading && last_history.is_none_or(|t| t.elapsed() >= history_every) {
            last_history = Some(std::time::Instant::now());
            match store::prune_history(&pool, 500).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(
                    executions = n,
                    "pruned execution history beyond historyLimit"
                ),
                Err(e) => tracing::warn!(error = %e, "pruning execution history failed"),
            }
        }
        if !leading {
            last_deleted = None;
            last_history = None;
        }
        let tick = history_every.min(std::time::Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Set the trigger annotation to a fresh value; returns the value.
pub async fn trigger(name: &str, namespace: Option<&str>) -> Result<String> {
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let api: Api<ScheduledJob> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    };
    let value = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let patch = serde_json::json!({"metadata": {"annotations": {TRIGGER_ANNOTATION: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {TRIGGER_ANNOTATION} on scheduledjob {name}"))?;
    Ok(value)
}
