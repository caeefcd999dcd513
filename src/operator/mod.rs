//! `kube-beat run`: check the configuration, connect, build the components
//! ([`components`]) and run them until SIGTERM. Every component is essential: if one ends
//! while the process is not stopping, the whole process stops with an error (and a non-zero
//! exit), so Kubernetes restarts it, instead of living on as a half-alive replica (say, a
//! follower forever that still reports ready).

mod components;
mod tasks;

use std::{future::Future, pin::Pin, time::Duration};

use anyhow::{Context, Result};
use futures::{StreamExt, stream::FuturesUnordered};
use kube::Client;
use tracing::{debug, error, info, warn};

use crate::{
    options::{DispatchMode, RunArgs},
    store,
};

/// How long the components get to finish what they are doing once asked to stop.
const GRACE: Duration = Duration::from_secs(5);

/// A component: its name (for the log line if it ends) and what it runs.
type Part = (&'static str, Pin<Box<dyn Future<Output = ()> + Send>>);

/// Run the operator until SIGTERM / Ctrl-C.
pub async fn run(args: RunArgs) -> Result<()> {
    let url = args
        .database_url
        .as_deref()
        .context("--database-url (or DATABASE_URL) is required")?;
    // Every URL is checked before anything connects: a typo stops the process at once. Errors
    // and logs name a URL only redacted (`crate::redact`): they carry passwords.
    store::check_url(url).context("--database-url")?;
    let (broker_options, backend_options) = transport_options(&args)?;
    let backend_url = crate::tracker::backend::BackendUrl::parse_with(
        Some(&args.result_backend),
        &backend_options,
    )
    .context("--result-backend")?;
    let shadow = args.dispatch_mode == DispatchMode::Shadow;
    if let Some(broker) = args.broker_url.as_deref() {
        crate::celery::check_url_with(broker, &broker_options).context("--broker-url")?;
    } else if !shadow {
        anyhow::bail!("--broker-url (or BROKER_URL) is required in live mode");
    }
    let Some(pool) = connect(url, &args).await? else {
        return Ok(()); // asked to stop while Postgres was unreachable
    };
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    info!(namespace = ?args.namespace, "kube-beat starting");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let built = components::build(&args, url, backend_url, pool, client, stop_rx)?;
    run_until_stopped(built, stop_tx).await
}

/// `--broker-transport-options` and `--result-backend-transport-options`, parsed and bounded
/// (errors name the option, never its value).
pub(super) fn transport_options(
    args: &RunArgs,
) -> Result<(
    crate::redis_target::TransportOptions,
    crate::redis_target::TransportOptions,
)> {
    use crate::redis_target::TransportOptions;
    Ok((
        TransportOptions::parse(args.broker_transport_options.as_deref())
            .context("--broker-transport-options")?,
        TransportOptions::parse(args.result_backend_transport_options.as_deref())
            .context("--result-backend-transport-options")?,
    ))
}

/// Connect to Postgres and apply the migrations. Postgres unreachable at start (a restart, a
/// failover): keep trying rather than exit into a crash loop. `None` on SIGTERM meanwhile.
async fn connect(url: &str, args: &RunArgs) -> Result<Option<sqlx::PgPool>> {
    let shown_url = crate::redact::url(url);
    let mut delay = Duration::from_millis(500);
    let mut signal = Box::pin(shutdown_signal());
    loop {
        match connect_and_migrate(url, args).await {
            Ok(pool) => return Ok(Some(pool)),
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
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut signal => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

async fn connect_and_migrate(url: &str, args: &RunArgs) -> Result<sqlx::PgPool, store::StoreError> {
    let pool = store::connect(url, args.database_max_connections).await?;
    if args.migrate {
        store::migrate::up(&pool).await?;
        info!("database migrations applied");
    }
    match store::autovacuum_on(&pool).await {
        Ok(true) => {}
        Ok(false) => warn!(
            "Postgres runs with autovacuum off: scheduled_jobs and job_executions are rewritten \
             by every run and will grow and slow without it; turn it on \
             (docs/operations.md#postgres)"
        ),
        Err(e) => debug!(error = %e, "reading the autovacuum setting failed"),
    }
    Ok(pool)
}

/// Run every component until SIGTERM, or until one ends on its own (an error: the process
/// stops). Then ask all to stop, give them [`GRACE`] to finish, and let the election release
/// the lease so a successor takes over at once.
async fn run_until_stopped(
    built: components::Built,
    stop_tx: tokio::sync::watch::Sender<bool>,
) -> Result<()> {
    let components::Built {
        mut election,
        parts,
    } = built;
    let mut running: FuturesUnordered<_> = parts
        .into_iter()
        .map(|(name, part)| async move {
            part.await;
            name
        })
        .collect();
    let mut election_done = false;
    let outcome = tokio::select! {
        Some(name) = running.next() => Err(anyhow::anyhow!("{name} ended unexpectedly")),
        _ = &mut election => {
            election_done = true;
            Err(anyhow::anyhow!("the leader election ended unexpectedly"))
        }
        _ = shutdown_signal() => Ok(()),
    };
    if let Err(e) = &outcome {
        error!(error = %e, "an essential part of kube-beat stopped: shutting the replica down");
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    // Let the dispatcher and controllers finish what they are doing.
    if tokio::time::timeout(GRACE, async { while running.next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("some components did not stop within {GRACE:?}");
    }
    // Release the lease so a successor takes over at once instead of waiting for it to expire.
    if !election_done && tokio::time::timeout(GRACE, election).await.is_err() {
        tracing::warn!("the lease was not released within {GRACE:?}");
    }
    outcome
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
    if let Err(e) = tokio::signal::ctrl_c().await {
        // No way to hear a signal: run until killed rather than stop at once.
        tracing::warn!(error = %e, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
