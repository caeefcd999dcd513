//! `kube-beat trigger` and `kube-beat resume`: a manual run or a resume, asked for through the
//! Kubernetes API (the caller's kubeconfig and RBAC) by setting an annotation to a fresh value.

use anyhow::{Context, Result};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::api::{ScheduledJob, TRIGGER_ANNOTATION};

/// Set the trigger annotation to a fresh value; returns the value.
pub async fn trigger(name: &str, namespace: Option<&str>) -> Result<String> {
    annotate(name, namespace, TRIGGER_ANNOTATION).await
}

/// Set `annotation` on the ScheduledJob to a fresh value; returns the value.
pub async fn annotate(name: &str, namespace: Option<&str>, annotation: &str) -> Result<String> {
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let api: Api<ScheduledJob> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    };
    let value = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let patch = serde_json::json!({"metadata": {"annotations": {annotation: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {annotation} on scheduledjob {name}"))?;
    Ok(value)
}
