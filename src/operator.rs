//! The `run` entry point: wires the controllers, the leader and the servers together.

use anyhow::{Context, Result};
use chrono::{Duration, Utc};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tracing::info;

use crate::{
    api::{ScheduledJob, TRIGGER_ANNOTATION},
    cli::RunArgs,
    reconcile, store,
};

/// Run the operator until SIGTERM / Ctrl-C.
pub async fn run(args: RunArgs) -> Result<()> {
    let url = args
        .database_url
        .as_deref()
        .context("--database-url (or DATABASE_URL) is required")?;
    let pool = store::connect(url, args.database_max_connections).await?;
    if args.migrate {
        store::migrate::up(&pool)
            .await
            .context("applying migrations")?;
        info!("database migrations applied");
    }
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
    let controllers = reconcile::run(
        client,
        pool.clone(),
        args.namespace.clone(),
        args.task_function_selector.clone(),
        futures::FutureExt::shared(Box::pin(stopped)),
    );
    let pruner = prune_deleted_jobs(pool, retention, stop_rx);
    tokio::select! {
        _ = async { tokio::join!(controllers, pruner) } => {}
        _ = async {
            shutdown_signal().await;
            info!("shutting down");
            let _ = stop_tx.send(true);
            // Give the controllers a moment to finish what they are doing.
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        } => {}
    }
    Ok(())
}

/// Remove deleted jobs (and their executions) once they are older than the retention.
async fn prune_deleted_jobs(
    pool: sqlx::PgPool,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match store::prune_deleted_jobs(&pool, Utc::now() - retention, 500).await {
            Ok(0) => {}
            Ok(n) => info!(jobs = n, "pruned deleted jobs past retention"),
            Err(e) => tracing::warn!(error = %e, "pruning deleted jobs failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
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
