//! `kube-beat trigger`: a manual run, asked for through the Kubernetes API (the caller's
//! kubeconfig and RBAC) by setting the trigger annotation to a fresh value.

use anyhow::{Context, Result};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::api::{ScheduledJob, TRIGGER_ANNOTATION};

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
