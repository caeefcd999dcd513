//! `kube-beat trigger` and `kube-beat resume`: a manual run or a resume, asked for through the
//! Kubernetes API (the caller's kubeconfig and RBAC) by setting an annotation to a fresh value.
//! A manual run may override the job's arguments (`--args`, `--kwargs`: the same annotations
//! the HTTP API sets) and be followed to its end (`--wait`, through `status.lastManualRun`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{
    api::{ManualRunSummary, ScheduledJob, TRIGGER_ANNOTATION, TaskFunction},
    arguments::{self, Overrides, TRIGGER_ARGS_ANNOTATION, TRIGGER_KWARGS_ANNOTATION},
    reconcile::validate,
};

/// What `kube-beat trigger` was asked for.
#[derive(Debug, Clone, Default)]
pub struct TriggerOptions {
    /// `--args`: a JSON array replacing the job's positional arguments.
    pub args: Option<String>,
    /// `--kwargs`: a JSON object merged over the job's keyword arguments.
    pub kwargs: Option<String>,
    /// `--wait`: follow the run until it ends, at most this long.
    pub wait: Option<Duration>,
}

/// How a followed run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not followed (no `--wait`): the request id.
    Requested(String),
    /// The run's final state (SUCCESS or not) and what it shows.
    Finished(ManualRunSummary),
}

/// States after which a run changes no more.
const FINAL_STATES: [&str; 8] = [
    "SUCCESS",
    "FAILURE",
    "REVOKED",
    "LOST",
    "DISPATCH_FAILED",
    "SKIPPED",
    "MISSED",
    "SHADOW",
];

/// Ask for a manual run (with overrides, checked here first when the TaskFunction can be read;
/// the reconciler checks them again) and, with `--wait`, follow it to its end.
pub async fn trigger(
    name: &str,
    namespace: Option<&str>,
    options: &TriggerOptions,
) -> Result<Outcome> {
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let api: Api<ScheduledJob> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::default_namespaced(client.clone()),
    };
    let parse = |flag: &str, text: &Option<String>| -> Result<Option<Value>> {
        text.as_deref()
            .map(|t| serde_json::from_str(t).with_context(|| format!("{flag} is not JSON")))
            .transpose()
    };
    let overrides = Overrides::from_values(
        parse("--args", &options.args)?,
        parse("--kwargs", &options.kwargs)?,
    )
    .map_err(anyhow::Error::msg)?;
    if !overrides.is_empty() {
        check_overrides(&client, &api, name, &overrides).await?;
    }
    let request_id = fresh_value();
    let value = arguments::trigger_value(&request_id, kubeconfig_user().as_deref());
    let (args, kwargs) = overrides.annotation_values();
    let patch = json!({"metadata": {"annotations": {
        TRIGGER_ANNOTATION: value,
        TRIGGER_ARGS_ANNOTATION: args,
        TRIGGER_KWARGS_ANNOTATION: kwargs,
    }}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {TRIGGER_ANNOTATION} on scheduledjob {name}"))?;
    match options.wait {
        None => Ok(Outcome::Requested(value)),
        Some(timeout) => follow(&api, name, &request_id, timeout).await,
    }
}

/// The overrides against the job and its TaskFunction as the apiserver has them, so a mistake
/// is reported here rather than as an Event. A TaskFunction the caller may not read is left to
/// the reconciler.
async fn check_overrides(
    client: &Client,
    api: &Api<ScheduledJob>,
    name: &str,
    overrides: &Overrides,
) -> Result<()> {
    let job = api
        .get(name)
        .await
        .with_context(|| format!("reading scheduledjob {name}"))?;
    let tf = match Api::<TaskFunction>::all(client.clone())
        .get_opt(&job.spec.task_function)
        .await
    {
        Ok(Some(tf)) => tf,
        Ok(None) => bail!("TaskFunction {:?} does not exist", job.spec.task_function),
        Err(e) => {
            eprintln!(
                "note: TaskFunction {:?} not readable ({e}); the operator checks the arguments",
                job.spec.task_function
            );
            return Ok(());
        }
    };
    let valid_tf = validate::task_function(&job.spec.task_function, &tf.spec)
        .map_err(|e| anyhow::anyhow!("TaskFunction {:?}: {e}", job.spec.task_function))?;
    let now = chrono::Utc::now();
    let meta = validate::JobMeta {
        uid: "",
        namespace: job.metadata.namespace.as_deref().unwrap_or_default(),
        name,
        generation: 0,
        created: job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| crate::reconcile::scheduled_job::to_chrono(t.0))
            .unwrap_or(now),
        trigger: None,
    };
    let row = validate::scheduled_job(
        &meta,
        &job.spec,
        validate::TaskFunctionRef::Valid(&valid_tf),
        now,
    )
    .map_err(|e| anyhow::anyhow!("scheduledjob {name} is not valid: {e}"))?;
    let (args, kwargs) = arguments::stored(&row.args, &row.kwargs);
    let (args, kwargs) = overrides
        .apply(&args, &kwargs)
        .map_err(anyhow::Error::msg)?;
    row.parameters
        .check(&args, &kwargs)
        .map_err(|e| anyhow::anyhow!("invalid arguments: {e}"))
}

/// Poll the job's `status.lastManualRun` until it shows this request in a final state.
async fn follow(
    api: &Api<ScheduledJob>,
    name: &str,
    request_id: &str,
    timeout: Duration,
) -> Result<Outcome> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let job = api
            .get_status(name)
            .await
            .with_context(|| format!("reading scheduledjob {name}"))?;
        if let Some(run) = job.status.and_then(|s| s.last_manual_run)
            && run.request_id == request_id
            && run
                .state
                .as_deref()
                .is_some_and(|s| FINAL_STATES.contains(&s))
        {
            return Ok(Outcome::Finished(run));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "run {request_id} of scheduledjob {name} did not finish within {}s (see `kubectl describe scheduledjob {name}`)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The kubeconfig's current user name (what `by=` records), if there is one.
fn kubeconfig_user() -> Option<String> {
    let config = kube::config::Kubeconfig::read().ok()?;
    let current = config.current_context.as_deref()?;
    config
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
        .filter(|u| !u.is_empty())
}

fn fresh_value() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
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
    let value = fresh_value();
    let patch = serde_json::json!({"metadata": {"annotations": {annotation: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {annotation} on scheduledjob {name}"))?;
    Ok(value)
}
