//! The finalizer stage both controllers share: our finalizer on every object we manage, and a
//! cleanup before a managed object may go.

use std::future::Future;

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};

use super::{cached_job::CachedJob, error::Error};
use crate::api::FINALIZER;

/// What the finalizer stage reads of an object.
pub struct Finalizing<'a> {
    name: &'a str,
    resource_version: Option<&'a str>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl<'a> Finalizing<'a> {
    pub fn of(meta: &'a kube::api::ObjectMeta) -> Finalizing<'a> {
        Finalizing {
            name: meta.name.as_deref().unwrap_or_default(),
            resource_version: meta.resource_version.as_deref(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        }
    }

    pub fn of_job(job: &'a CachedJob) -> Finalizing<'a> {
        Finalizing {
            name: job.name(),
            resource_version: job.resource_version(),
            deleting: job.deleting(),
            finalizers: job.finalizers(),
        }
    }

    fn has_ours(&self) -> bool {
        self.finalizers.iter().any(|f| f == FINALIZER)
    }
}

/// Being deleted: run `cleanup` once, then let the object go. Otherwise make sure our finalizer
/// is on it. `true` ends this pass (the patch produces a new event; the next pass continues
/// from there).
pub async fn finalizer_stage<K>(
    api: &Api<K>,
    obj: Finalizing<'_>,
    cleanup: impl Future<Output = Result<(), Error>>,
) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if obj.deleting {
        return deletion_stage(api, obj, cleanup).await;
    }
    if !obj.has_ours() {
        add_finalizer(api, &obj).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Being deleted: run `cleanup` (idempotent), then let the object go by removing our finalizer
/// if it is on it; `true` then (this pass ends). Not being deleted: `false`, nothing written.
/// ScheduledJobs use this alone and have their finalizer added by [`super::paced`], apart from
/// the reconcile: a job being deleted before that (held by another controller's finalizer)
/// must stop all the same.
pub async fn deletion_stage<K>(
    api: &Api<K>,
    obj: Finalizing<'_>,
    cleanup: impl Future<Output = Result<(), Error>>,
) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if !obj.deleting {
        return Ok(false);
    }
    cleanup.await?;
    if obj.has_ours() {
        let rest: Vec<String> = obj
            .finalizers
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        match patch_finalizers(api, &obj, rest).await {
            // Already gone: nothing left to clean.
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {}
            other => other?,
        }
    }
    Ok(true)
}

/// Put our finalizer on the object (guarded by its resourceVersion). An object already gone
/// needs none: not an error.
pub async fn add_finalizer<K>(api: &Api<K>, obj: &Finalizing<'_>) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if obj.has_ours() {
        return Ok(());
    }
    let mut all = obj.finalizers.clone();
    all.push(FINALIZER.to_string());
    match patch_finalizers(api, obj, all).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        other => other,
    }
}

/// Replace the finalizer list, guarded by resourceVersion so a concurrent writer is not undone.
async fn patch_finalizers<K>(
    api: &Api<K>,
    obj: &Finalizing<'_>,
    finalizers: Vec<String>,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let rv = obj
        .resource_version
        .ok_or(Error::MissingMetadata("resourceVersion"))?;
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": rv}});
    api.patch(obj.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
