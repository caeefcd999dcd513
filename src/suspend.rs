//! `spec.suspend` set from outside the manifest: the dashboard and the API (`POST
//! /api/v1/jobs/{ns}/{name}/suspend` and `/unsuspend`) and `kube-beat suspend|unsuspend NAME`.
//!
//! Written by server-side apply under a field manager of our own, so the apiserver records who
//! set it, and the field's other managers are not overwritten silently: when a GitOps tool
//! (Argo CD, Flux, by their labels and annotations) or another field manager (a `kubectl apply`
//! of the manifest, a controller) manages the job, the caller is told who may set it back and
//! goes ahead only when it confirms (the apply takes the field over). Argo CD's older label
//! tracking (`app.kubernetes.io/instance` alone, which Helm sets too) is not taken for Argo CD;
//! its `managedFields` entry, when it owns the field, is. The
//! reconciler acts on the change like on any spec change: a suspended job's next slot is not
//! dispatched, and unsuspending does not replay the suspended period.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Resource,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use serde_json::json;

use crate::api::ScheduledJob;

/// The field manager of the dashboard and the API.
pub const DASHBOARD_FIELD_MANAGER: &str = "kube-beat-dashboard";
/// The field manager of `kube-beat suspend|unsuspend`.
pub const CLI_FIELD_MANAGER: &str = "kube-beat-cli";

#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    #[error("no scheduledjob {0}")]
    NotFound(String),
    #[error(
        "scheduledjob {job} is also managed by {}: it may set spec.suspend back; confirm to go ahead",
        .managers.join(", ")
    )]
    ManagedElsewhere { job: String, managers: Vec<String> },
    #[error("the apiserver refused: {0}")]
    Kube(#[from] kube::Error),
}

/// What a suspend or unsuspend did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `spec.suspend` now.
    pub suspend: bool,
    /// Whether it was changed (false: it already had that value, nothing was written).
    pub changed: bool,
    /// The other managers it was set over (confirmed by the caller).
    pub overrode: Vec<String>,
}

/// ScheduledJobs as untyped objects: a job whose spec does not match the schema can still be
/// suspended (that is one way to stop it while it is being fixed).
pub fn untyped(client: kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<ScheduledJob>(&());
    match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::default_namespaced_with(client, &resource),
    }
}

/// Set `spec.suspend` of job `name` to `suspend` as `manager`. Without `confirmed`, a job that
/// others manage is left alone ([`SuspendError::ManagedElsewhere`]); a job that already has the
/// value is not written at all.
pub async fn set(
    api: &Api<DynamicObject>,
    name: &str,
    suspend: bool,
    manager: &str,
    confirmed: bool,
) -> Result<Outcome, SuspendError> {
    let job = api
        .get_opt(name)
        .await?
        .ok_or_else(|| SuspendError::NotFound(name.to_string()))?;
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let full_name = format!("{namespace}/{name}");
    let current = job
        .data
        .get("spec")
        .and_then(|s| s.get("suspend"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if current == suspend {
        return Ok(Outcome {
            suspend,
            changed: false,
            overrode: Vec::new(),
        });
    }
    let managers = other_managers(&job.metadata);
    if !managers.is_empty() && !confirmed {
        return Err(SuspendError::ManagedElsewhere {
            job: full_name,
            managers,
        });
    }
    let patch = json!({
        "apiVersion": ScheduledJob::api_version(&()),
        "kind": ScheduledJob::kind(&()),
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"suspend": suspend},
    });
    // Forced: the check above is the guard (no manager but ours owns the field, or the caller
    // confirmed). Unforced, the apiserver would refuse the dashboard's change of a value the
    // CLI set (and the other way round) as a conflict between two managers. A manager that
    // takes the field between the read and the apply is overridden: the window is one round
    // trip, and its next sync sets the field again.
    let params = PatchParams::apply(manager).force();
    match api.patch(name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => Ok(Outcome {
            suspend,
            changed: true,
            overrode: managers,
        }),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(SuspendError::NotFound(full_name)),
        Err(e) => Err(e.into()),
    }
}

/// Who else may set a job's `spec.suspend` back: GitOps tools, by their labels and annotations
/// on the object (a sync reapplies the manifest), and every other field manager that owns the
/// field. Sorted, each once.
pub fn other_managers(meta: &ObjectMeta) -> Vec<String> {
    let mut found = Vec::new();
    let keys = meta
        .labels
        .iter()
        .flatten()
        .chain(meta.annotations.iter().flatten())
        .map(|(k, _)| k.as_str());
    for key in keys {
        if key.starts_with("argocd.argoproj.io/") {
            found.push("Argo CD".to_string());
        } else if key.contains(".toolkit.fluxcd.io/") {
            found.push("Flux".to_string());
        }
    }
    for entry in meta.managed_fields.iter().flatten() {
        let Some(manager) = entry.manager.as_deref() else {
            continue;
        };
        if manager == DASHBOARD_FIELD_MANAGER || manager == CLI_FIELD_MANAGER {
            continue;
        }
        let owns_suspend = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:spec"))
            .and_then(|spec| spec.get("f:suspend"))
            .is_some();
        if owns_suspend {
            found.push(format!("field manager {manager}"));
        }
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn entry(manager: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn gitops_labels_and_other_owners_of_suspend_are_named_ours_are_not() {
        let mut meta = ObjectMeta::default();
        assert!(other_managers(&meta).is_empty(), "nobody");
        meta.managed_fields = Some(vec![
            // Owns other spec fields only: it would not set suspend back.
            entry(
                "kubectl-create",
                json!({"f:spec": {"f:schedule": {}, "f:taskFunction": {}}}),
            ),
            entry(
                DASHBOARD_FIELD_MANAGER,
                json!({"f:spec": {"f:suspend": {}}}),
            ),
            entry(CLI_FIELD_MANAGER, json!({"f:spec": {"f:suspend": {}}})),
            entry("kube-beat", json!({"f:status": {"f:conditions": {}}})),
        ]);
        assert!(
            other_managers(&meta).is_empty(),
            "{:?}",
            other_managers(&meta)
        );
        meta.managed_fields.get_or_insert_with(Vec::new).push(entry(
            "kubectl-client-side-apply",
            json!({"f:spec": {"f:suspend": {}, "f:schedule": {}}}),
        ));
        meta.labels = Some(
            [(
                "kustomize.toolkit.fluxcd.io/name".to_string(),
                "apps".to_string(),
            )]
            .into(),
        );
        meta.annotations = Some(
            [
                (
                    "argocd.argoproj.io/tracking-id".to_string(),
                    "app:kubebeat.io/ScheduledJob:team/job".to_string(),
                ),
                ("argocd.argoproj.io/sync-wave".to_string(), "1".to_string()),
                ("unrelated.example.com/x".to_string(), "y".to_string()),
            ]
            .into(),
        );
        assert_eq!(
            other_managers(&meta),
            ["Argo CD", "Flux", "field manager kubectl-client-side-apply"]
        );
    }

    #[test]
    fn the_conflict_message_names_the_managers() {
        let e = SuspendError::ManagedElsewhere {
            job: "team/job".into(),
            managers: vec!["Argo CD".into(), "field manager kubectl".into()],
        };
        assert_eq!(
            e.to_string(),
            "scheduledjob team/job is also managed by Argo CD, field manager kubectl: it may set \
             spec.suspend back; confirm to go ahead"
        );
    }
}
