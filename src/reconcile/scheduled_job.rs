//! The ScheduledJob controller.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kube::Api;
use tracing::{debug, info};

use super::{
    Context, Error, Finalizing, Guarded,
    cached_job::{CachedJob, Uid, WatchedJob},
    conditions,
    finalizer::deletion_stage,
    paced::{OwnedStatus, Pending},
    schema_mismatch, validate,
};
use crate::{
    api::{ScheduledJob, ScheduledJobSpec, TaskFunction},
    store,
};

/// The verdict on a job, before it is written anywhere.
enum Verdict {
    Valid(Box<validate::JobRow>),
    Invalid(validate::Invalid),
}

// The stages of one reconcile, in order (deletion → verdict → store → status and finalizer,
// handed to the paced writers); ~140 lines.
// To be split into a function per stage when the next stage (job health) lands here.
pub async fn reconcile(obj: Arc<CachedJob>, ctx: Arc<Context>) -> Result<(), Error> {
    if !ctx.may_write().await? {
        return Ok(());
    }
    let (ns, name) = (obj.namespace().to_string(), obj.name().to_string());
    if ns.is_empty() || name.is_empty() {
        return Err(Error::MissingMetadata("namespace or name"));
    }
    let uid = obj.uid().ok_or(Error::MissingMetadata("uid"))?;
    let key = obj.key_text();
    let api: Api<WatchedJob> = Api::namespaced(ctx.client.clone(), &ns);

    let cleanup = async {
        // Stop scheduling before the object disappears; executions are kept.
        store::mark_job_deleted(&ctx.pool, &uid).await?;
        info!(job = %key, "ScheduledJob deleted: scheduling stopped");
        Ok(())
    };
    // Our finalizer, if missing, is added with the status (see `paced`): storing the job first.
    if deletion_stage(&api, Finalizing::of_job(&obj), cleanup).await? {
        ctx.succeeded(&key);
        return Ok(());
    }

    let now = Utc::now();
    let generation = obj.generation().unwrap_or(0);
    let spec = match obj.spec() {
        Some(spec) => spec,
        None => stored_spec(&ctx, &uid, generation, &ns, &name).await?,
    };
    // The spec goes into Postgres with the row, for the cache to let go of it.
    let row_spec = spec
        .as_ref()
        .ok()
        .and_then(|s| serde_json::to_value(s).ok());
    let verdict = match spec {
        Err(why) => Verdict::Invalid(schema_mismatch("ScheduledJob", &why)),
        Ok(spec) => {
            let tf = ctx.task_function(&spec.task_function).await;
            if tf.is_none() && ctx.belongs_elsewhere(&spec.task_function) {
                // Another installation's job (its TaskFunction is outside our selector): no
                // row, no status. Judging it "UnknownTaskFunction" here would fight that
                // installation's operator over the job's status. A job that moved away stops
                // here.
                store::mark_job_deleted(&ctx.pool, &uid).await?;
                ctx.writes.forget(&obj.key());
                debug!(job = %key, task_function = %spec.task_function, "another installation's job");
                ctx.succeeded(&key);
                return Ok(());
            }
            let created = obj
                .creation_timestamp()
                .map(|t| to_chrono(t.0))
                .unwrap_or(now);
            let meta = validate::JobMeta {
                uid: &uid,
                namespace: &ns,
                name: &name,
                generation,
                created,
                trigger: obj.trigger(),
            };
            match judge(&meta, &spec, tf.as_deref(), now) {
                // A missing or invalid calendar stops the job like a missing TaskFunction.
                Verdict::Valid(row) => {
                    match super::calendars::resolve(&row.calendars, |c| {
                        super::calendars::lookup(&ctx, c)
                    }) {
                        Ok(()) => Verdict::Valid(row),
                        Err(invalid) => Verdict::Invalid(invalid),
                    }
                }
                invalid => invalid,
            }
        }
    };
    // Only `Ready` is read: other conditions are other controllers', left alone by the apply.
    let previous = obj.previous_conditions();

    // The row's id when the upsert returned it (an invalid job's row, if any, is looked up).
    let (ready, summary, last_trigger, job_id) = match verdict {
        Verdict::Valid(row) => {
            super::calendars::store_missing(&ctx, &row.calendars).await?;
            let stored_with_spec = row_spec.is_some();
            let stored = ctx.upserts.upsert((*row).clone(), row_spec).await?;
            let Some(stored) = stored else {
                // Deleted in Postgres already (we are racing our own deletion).
                ctx.writes.forget(&obj.key());
                return Ok(());
            };
            if stored_with_spec {
                ctx.jobs.spec_stored(&obj.key(), obj.generation());
            }
            ctx.wake.notify_one();
            let last_trigger = manual_trigger(
                &ctx,
                obj.as_ref(),
                &row,
                &key,
                stored.last_trigger.as_deref(),
            )
            .await?
            .or(stored.last_trigger.clone());
            resume_stage(&ctx, obj.as_ref(), &uid, &key).await?;
            super::backfill::backfill_stage(&ctx, obj.as_ref(), &uid, &key).await?;
            let message = if row.suspended {
                "valid and stored; suspended"
            } else if stored.next_run_at.is_none() {
                "valid and stored; no further runs"
            } else {
                "valid and stored"
            };
            debug!(job = %key, next = ?stored.next_run_at, "stored");
            let ready = conditions::ready_condition(
                &previous,
                true,
                "Stored",
                message,
                Some(generation),
                now,
            );
            (
                ready,
                Some(row.schedule_summary.clone()),
                last_trigger,
                Some(stored.id),
            )
        }
        Verdict::Invalid(invalid) => {
            // Stop it: an invalid job must not keep running an outdated schedule silently.
            store::disable_invalid_job(
                &ctx.pool,
                &uid,
                generation,
                invalid.reason.as_str(),
                &invalid.message,
            )
            .await?;
            info!(job = %key, reason = %invalid.reason, message = %invalid.message, "ScheduledJob not ready");
            let ready = conditions::ready_condition(
                &previous,
                false,
                invalid.reason.as_str(),
                &invalid.message,
                Some(generation),
                now,
            );
            (
                ready,
                None,
                obj.status.last_trigger.as_deref().map(String::from),
                None,
            )
        }
    };
    let owned = OwnedStatus {
        observed_generation: generation,
        ready,
        schedule: summary,
        last_trigger,
    };
    let shown = owned.shown_by(&obj);
    ctx.writes.ask(
        obj.key(),
        Pending {
            finalizer: !obj.finalized(),
            status: Some(owned),
            job_id,
        },
        shown,
    );
    ctx.succeeded(&key);
    // No periodic requeue: the drift check is the safety net (see `drift_checks`).
    Ok(())
}

/// A job asked for that is no longer in the cache: the watch saw it deleted (perhaps before our
/// finalizer was on it, or after someone removed the finalizer), or a new list no longer showed
/// it. Scheduling stops, as the deletion stage would have done; executions are kept.
pub async fn gone(key: &Uid, ctx: &Context) -> Result<(), Error> {
    if !ctx.may_write().await? {
        return Ok(());
    }
    store::mark_job_deleted(&ctx.pool, &key.to_string()).await?;
    ctx.writes.forget(key);
    ctx.succeeded(&key.to_string());
    debug!(uid = %key, "ScheduledJob gone: scheduling stopped");
    Ok(())
}

fn judge(
    meta: &validate::JobMeta,
    spec: &ScheduledJobSpec,
    tf_obj: Option<&Guarded<TaskFunction>>,
    now: DateTime<Utc>,
) -> Verdict {
    // Shared with the admission webhook and `kube-beat validate`: one verdict everywhere.
    match validate::scheduled_job_with(meta, spec, tf_obj, now) {
        Ok(row) => Verdict::Valid(Box::new(row)),
        Err(e) => Verdict::Invalid(e),
    }
}

/// A new value of the trigger annotation asks for one run now: claimed once per request id
/// (the value without its `by=` part is the slot key), so applying the same value twice runs
/// once. The override annotations that came with it are checked again here (whoever wrote
/// them): arguments the TaskFunction's parameters refuse run nothing, with a Warning Event.
async fn manual_trigger(
    ctx: &Context,
    obj: &CachedJob,
    row: &validate::JobRow,
    key: &str,
    last: Option<&str>,
) -> Result<Option<String>, Error> {
    let Some(value) = obj.trigger() else {
        return Ok(None);
    };
    if Some(value) == last {
        return Ok(None);
    }
    let Some(epoch) = ctx.writing_epoch()? else {
        return Ok(None);
    };
    let uid = row.uid.as_str();
    let parsed = crate::arguments::parse_trigger(value);
    let arguments = match run_arguments(obj, row) {
        Ok(arguments) => arguments,
        Err(why) => {
            store::claims::refuse_manual(&ctx.pool, uid, value)
                .await
                .map_err(|e| Error::Store(store::StoreError::Query(e)))?;
            info!(job = %key, trigger = %value, %why, "manual trigger refused");
            ctx.job_event(
                key,
                uid,
                crate::status::Reason::TriggerRefused,
                format!(
                    "manual run not started ({} = {value}): {why}",
                    crate::api::TRIGGER_ANNOTATION
                ),
            );
            return Ok(Some(value.to_string()));
        }
    };
    let run = store::claims::ManualRun {
        value,
        request_id: parsed.request_id,
        requested_by: parsed.requested_by,
        args: arguments.as_ref().map(|a| &a.0),
        kwargs: arguments.as_ref().map(|a| &a.1),
    };
    match store::claims::claim_manual(&ctx.pool, epoch, uid, run, Utc::now(), ctx.shadow).await {
        Ok(claimed) => {
            if let Some(job_id) = claimed {
                info!(job = %key, trigger = %value, "manual trigger: one run claimed");
                ctx.wake.notify_one();
                ctx.feed.touch(job_id);
                ctx.job_event(
                    key,
                    uid,
                    crate::status::Reason::Triggered,
                    format!(
                        "manual run requested ({} = {value})",
                        crate::api::TRIGGER_ANNOTATION
                    ),
                );
            }
            Ok(Some(value.to_string()))
        }
        Err(store::claims::ClaimError::Fenced { .. }) => Ok(None),
        Err(store::claims::ClaimError::Db(e)) => Err(Error::Store(store::StoreError::Query(e))),
    }
}

/// The arguments a manual run is sent with when its annotations override the job's (`None`:
/// the job's own), or why it may not run.
fn run_arguments(
    obj: &CachedJob,
    row: &validate::JobRow,
) -> Result<Option<(serde_json::Value, serde_json::Value)>, String> {
    let (args, kwargs) = obj.trigger_overrides();
    let overrides = crate::arguments::Overrides::from_annotations(args, kwargs)?;
    if overrides.is_empty() {
        return Ok(None);
    }
    let (job_args, job_kwargs) = crate::arguments::stored(&row.args, &row.kwargs);
    let (args, kwargs) = overrides.apply(&job_args, &job_kwargs)?;
    row.parameters.check(&args, &kwargs)?;
    Ok(Some((
        serde_json::Value::Array(args),
        serde_json::Value::Object(kwargs),
    )))
}

/// A new value of the resume annotation resumes a job its health policy paused (each value
/// once: see [`store::health::resume`]). The status writer then drops `status.pause`, and the
/// health monitor judges the job afresh (its failure streak and staleness start anew).
async fn resume_stage(ctx: &Context, obj: &CachedJob, uid: &str, key: &str) -> Result<(), Error> {
    let Some(value) = obj.resume() else {
        return Ok(());
    };
    if value.chars().count() > validate::MAX_TRIGGER_CHARS {
        debug!(job = %key, "resume annotation too long: ignored");
        return Ok(());
    }
    if let store::health::Resumed::Resumed { job_id } =
        store::health::resume(&ctx.pool, uid, value).await?
    {
        info!(job = %key, resume = %value, "resumed: dispatching again");
        ctx.wake.notify_one();
        ctx.feed.touch(job_id);
        ctx.job_event(
            key,
            uid,
            crate::status::Reason::Resumed,
            format!(
                "resumed ({} = {value}): the next slot is dispatched",
                crate::api::RESUME_ANNOTATION
            ),
        );
    }
    Ok(())
}

/// ScheduledJobs as untyped objects: read this way, an object whose spec does not match the
/// schema still gives its fields.
fn untyped(ctx: &Context, ns: &str) -> Api<kube::api::DynamicObject> {
    let resource = kube::api::ApiResource::erase::<ScheduledJob>(&());
    Api::namespaced_with(ctx.client.clone(), ns, &resource)
}

/// The spec of a job the cache keeps no spec for: from Postgres, where its row was stored with
/// it, or (a row stored by an older release, a database restored from a backup) from the
/// apiserver, untyped so a spec that does not match the schema is reported, not an error.
async fn stored_spec(
    ctx: &Context,
    uid: &str,
    generation: i64,
    ns: &str,
    name: &str,
) -> Result<Result<ScheduledJobSpec, String>, Error> {
    let json = match store::stored_spec(&ctx.pool, uid, generation).await? {
        Some(json) => json,
        None => {
            debug!(job = %format!("{ns}/{name}"), "spec not in Postgres; reading the object");
            untyped(ctx, ns)
                .get(name)
                .await?
                .data
                .get("spec")
                .cloned()
                .unwrap_or_default()
        }
    };
    Ok(serde_json::from_value(json).map_err(|e| e.to_string()))
}

/// A Kubernetes timestamp as chrono.
pub fn to_chrono(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0).unsigned_abs())
        .unwrap_or_default()
}
