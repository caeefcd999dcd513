//! `kube-beat backfill NAME -n NS --from T1 --to T2 [--max-parallel N] [--dry-run]`: through the
//! caller's kubeconfig (and RBAC), like `kube-beat trigger`. The job is read first and its slots
//! in the range computed here, so a range beyond the bound is refused before anything is
//! written; then the `kubebeat.io/backfill` annotation is set, which the leader turns into one
//! backfill. `--dry-run` prints the slots and changes nothing.

use anyhow::{Context, Result};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use super::{Request, RequestValue, slots_in_range};
use crate::{
    api::{BACKFILL_ANNOTATION, ScheduledJob},
    schedule::{JobSchedule, rfc3339},
};

/// `kube-beat backfill`'s arguments.
#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    /// The ScheduledJob's name.
    pub name: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The range's first instant (RFC 3339; included).
    #[arg(long)]
    pub from: String,
    /// The range's last instant (RFC 3339; included; not in the future).
    #[arg(long)]
    pub to: String,
    /// Runs of this backfill unfinished at once at most (1 to 100).
    #[arg(long, default_value_t = super::DEFAULT_MAX_PARALLEL,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(super::MAX_PARALLEL)))]
    pub max_parallel: u32,
    /// Print the slots that would run and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The request's id (default: a new UUID). The same id asks for the same backfill once.
    #[arg(long)]
    pub id: Option<String>,
}

pub async fn run(args: &BackfillArgs) -> Result<()> {
    let value = RequestValue {
        id: args
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        from: args.from.clone(),
        to: args.to.clone(),
        max_parallel: Some(i64::from(args.max_parallel)),
        by: None,
    };
    let request = Request::check(&value, chrono::Utc::now())?;
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let api: Api<ScheduledJob> = match args.namespace.as_deref() {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    };
    let name = &args.name;
    let job = api
        .get(name)
        .await
        .with_context(|| format!("reading scheduledjob {name}"))?;
    let created = job
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| crate::reconcile::scheduled_job::to_chrono(t.0))
        .context("the scheduledjob has no creationTimestamp")?;
    // The anchor the operator stores is the object's creation time (see `validate`).
    let schedule = JobSchedule::from_job_spec(&job.spec, created)
        .with_context(|| format!("scheduledjob {name}: its schedule"))?;
    let slots = slots_in_range(&schedule, request.from, request.to)
        .with_context(|| format!("scheduledjob {name}"))?;
    if args.dry_run {
        for slot in &slots {
            println!("{}", rfc3339(*slot));
        }
        eprintln!(
            "scheduledjob {name}: {} slot(s) from {} to {} (dry run: nothing changed; slots that \
             already ran are not run again)",
            slots.len(),
            rfc3339(request.from),
            rfc3339(request.to)
        );
        return Ok(());
    }
    let patch = serde_json::json!({
        "metadata": {"annotations": {BACKFILL_ANNOTATION: request.annotation_value()}}
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {BACKFILL_ANNOTATION} on scheduledjob {name}"))?;
    println!(
        "scheduledjob {name}: backfill {} requested: {} slot(s) from {} to {}, at most {} at once \
         ({BACKFILL_ANNOTATION})",
        request.id,
        slots.len(),
        rfc3339(request.from),
        rfc3339(request.to),
        request.max_parallel
    );
    Ok(())
}
