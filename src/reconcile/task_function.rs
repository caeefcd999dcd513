//! The TaskFunction controller.

use std::sync::Arc;

use chrono::Utc;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::info;

use super::{
    Context, Error, Finalizing, Guarded, conditions, finalizer_stage, schema_mismatch, split,
    validate,
};
use crate::{api::TaskFunction, store};

// The same stages as `scheduled_job::reconcile` (finalizer → verdict → store → status).
pub async fn reconcile(
    obj: Arc<Guarded<TaskFunction>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !ctx.may_write().await? {
        return Ok(Action::await_change());
    }
    let (meta, tf) = split(obj.as_ref());
    let name = meta.name.clone().ok_or(Error::MissingMetadata("name"))?;
    let uid = meta.uid.clone().ok_or(Error::MissingMetadata("uid"))?;
    let api: Api<Guarded<TaskFunction>> = Api::all(ctx.client.clone());
    if !ctx.selector.matches(obj.labels()) {
        return Ok(Action::await_change()); // another installation's
    }

    let cleanup = async {
        store::delete_task_function(&ctx.pool, &name).await?;
        info!(task_function = %name, "TaskFunction deleted");
        Ok(())
    };
    if finalizer_stage(&api, Finalizing::of(meta), cleanup).await? {
        ctx.succeeded(&name);
        return Ok(Action::await_change());
    }

    let generation = meta.generation.unwrap_or(0);
    let verdict = match tf {
        Some(tf) => validate::task_function(&name, &tf.spec),
        None => Err(schema_mismatch(
            "TaskFunction",
            obj.0
                .as_ref()
                .err()
                .map(|e| e.error.as_str())
                .unwrap_or_default(),
        )),
    };
    let previous = tf
        .and_then(|t| t.status.as_ref())
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Utc::now();
    let ready = match &verdict {
        Ok(valid) => {
            store::upsert_task_function(&ctx.pool, valid, &uid, generation).await?;
            conditions::ready_condition(
                &previous,
                true,
                "Stored",
                "valid and stored",
                Some(generation),
                now,
            )
        }
        Err(invalid) => {
            info!(task_function = %name, reason = %invalid.reason, message = %invalid.message, "TaskFunction not ready");
            conditions::ready_condition(
                &previous,
                false,
                invalid.reason.as_str(),
                &invalid.message,
                Some(generation),
                now,
            )
        }
    };

    let job_count =
        ctx.jobs
            .count(|j| j.task_function() == Some(name.as_str()) && !j.deleting()) as i64;
    // Only `Ready` is kube-beat's: another controller's conditions are no reason to write.
    let unchanged = tf.and_then(|t| t.status.as_ref()).is_some_and(|s| {
        s.observed_generation == Some(generation)
            && s.conditions.iter().find(|c| c.type_ == conditions::READY) == Some(&ready)
            && s.job_count == job_count
    });
    if !unchanged {
        // Server-side apply of every field kube-beat owns here; the list-map of conditions keeps
        // other controllers' conditions without reading them.
        let apply = json!({
            "apiVersion": TaskFunction::api_version(&()),
            "kind": TaskFunction::kind(&()),
            "metadata": {"name": name},
            "status": {
                "observedGeneration": generation,
                "conditions": [ready],
                "jobCount": job_count,
            },
        });
        let params = PatchParams::apply(crate::api::FIELD_MANAGER).force();
        api.patch_status(&name, &params, &Patch::Apply(&apply))
            .await?;
    }
    ctx.succeeded(&name);
    Ok(Action::await_change())
}
