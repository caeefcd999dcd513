//! The `run` entry point: wires the controllers, the leader and the servers together.

use anyhow::{Context, Result};
use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use tracing::info;

use crate::{
    api::{ScheduledJob, TRIGGER_ANNOTATION},
    cli::RunArgs,
};

/// Run the operator until SIGTERM / Ctrl-C.
pub async fn run(args: RunArgs) -> Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let jobs: Api<ScheduledJob> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    info!(namespace = ?args.namespace, "kube-beat starting; watching ScheduledJobs");
    let watch = watcher(jobs, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .for_each(|ev| async move {
            match ev {
                Ok(job) => {
                    info!(job = %job.name_any(), ns = ?job.namespace(), "observed ScheduledJob")
                }
                Err(e) => tracing::warn!(error = %e, "watch error"),
            }
        });
    tokio::select! {
        _ = watch => {}
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
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
