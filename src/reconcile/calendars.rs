//! The ScheduleCalendar controller, and what a ScheduledJob's `spec.calendars` must satisfy.
//!
//! A calendar is stored in Postgres (`schedule_calendars`) with its spec; the dispatcher reads
//! it with each claim, so an edit applies to the next claim of every job naming it without
//! touching the jobs. The jobs are re-reconciled only when a calendar appears, disappears or
//! turns (in)valid, which changes their `Ready` (`CalendarNotFound`, `CalendarInvalid`).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef},
};
use serde_json::json;
use tracing::info;

use super::{
    Context, Error, Finalizing, Guarded, conditions, finalizer_stage, schema_mismatch, split,
    sweep::Sweep,
    validate::{Invalid, Reason},
};
use crate::{
    api::ScheduleCalendar,
    calendar::{Calendar, CalendarError},
    store,
};

/// How often a calendar's `jobCount` is refreshed (jobs are not watched per calendar).
const RECOUNT_EVERY: Duration = Duration::from_secs(60);

/// A calendar as the job reconcile finds it.
pub enum CalendarRef {
    Missing,
    Invalid(CalendarError),
    Valid,
}

/// Whether a job's calendars all exist and are valid (pure): the first that does not, in the
/// job's order, is the reason the job is not Ready.
pub fn resolve(names: &[String], lookup: impl Fn(&str) -> CalendarRef) -> Result<(), Invalid> {
    for name in names {
        match lookup(name) {
            CalendarRef::Valid => {}
            CalendarRef::Missing => {
                return Err(Invalid {
                    reason: Reason::CalendarNotFound,
                    message: format!(
                        "ScheduleCalendar {name:?} does not exist; the job does not run until it does"
                    ),
                });
            }
            CalendarRef::Invalid(e) => {
                return Err(Invalid {
                    reason: Reason::CalendarInvalid,
                    message: format!("ScheduleCalendar {name:?} is not valid: {e}"),
                });
            }
        }
    }
    Ok(())
}

/// The job reconcile's lookup: the calendar cache (a calendar being deleted counts as gone).
pub(super) fn lookup(ctx: &Context, name: &str) -> CalendarRef {
    let Some(obj) = ctx
        .calendars
        .get(&ObjectRef::<Guarded<ScheduleCalendar>>::new(name))
    else {
        return CalendarRef::Missing;
    };
    match &obj.0 {
        Ok(cal) if cal.metadata.deletion_timestamp.is_some() => CalendarRef::Missing,
        Ok(cal) => match Calendar::from_spec(name, &cal.spec) {
            Ok(_) => CalendarRef::Valid,
            Err(e) => CalendarRef::Invalid(e),
        },
        Err(e) => CalendarRef::Invalid(CalendarError(format!(
            "does not match the ScheduleCalendar schema: {}",
            e.error
        ))),
    }
}

/// Make sure the (valid, cached) calendars a job names have their rows, before the job is
/// stored: the claim reads them from there.
pub(super) async fn store_missing(ctx: &Context, names: &[String]) -> Result<(), Error> {
    let mut rows = Vec::new();
    for name in names {
        let Some(obj) = ctx
            .calendars
            .get(&ObjectRef::<Guarded<ScheduleCalendar>>::new(name))
        else {
            continue;
        };
        if let Ok(cal) = &obj.0
            && let (Some(uid), Ok(spec)) =
                (cal.metadata.uid.clone(), serde_json::to_value(&cal.spec))
        {
            rows.push((
                name.clone(),
                uid,
                cal.metadata.generation.unwrap_or(0),
                spec,
            ));
        }
    }
    store::calendars::insert_missing(&ctx.pool, &rows).await?;
    Ok(())
}

/// Reconcile one calendar: finalizer → verdict → store → status. The jobs naming it are swept
/// (re-reconciled) by the watch when the calendar changes, not from here.
pub async fn reconcile(
    obj: Arc<Guarded<ScheduleCalendar>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !ctx.may_write().await? {
        return Ok(Action::await_change());
    }
    let (meta, cal) = split(obj.as_ref());
    let name = meta.name.clone().ok_or(Error::MissingMetadata("name"))?;
    let uid = meta.uid.clone().ok_or(Error::MissingMetadata("uid"))?;
    let api: Api<Guarded<ScheduleCalendar>> = Api::all(ctx.client.clone());

    let cleanup = async {
        // From the next claim on, the jobs naming it skip their slots ("calendar not found");
        // the watch's sweep then marks them CalendarNotFound.
        store::calendars::delete_calendar(&ctx.pool, &name).await?;
        info!(calendar = %name, "ScheduleCalendar deleted");
        Ok(())
    };
    if finalizer_stage(&api, Finalizing::of(meta), cleanup).await? {
        ctx.succeeded(&name);
        return Ok(Action::await_change());
    }

    let generation = meta.generation.unwrap_or(0);
    let verdict: Result<(), Invalid> = match cal {
        Some(c) => Calendar::from_spec(&name, &c.spec)
            .map(drop)
            .map_err(|e| Invalid {
                reason: Reason::InvalidSpec,
                message: e.0,
            }),
        None => Err(schema_mismatch(
            "ScheduleCalendar",
            obj.0
                .as_ref()
                .err()
                .map(|e| e.error.as_str())
                .unwrap_or_default(),
        )),
    };
    let spec = cal
        .and_then(|c| serde_json::to_value(&c.spec).ok())
        .unwrap_or_else(|| json!({}));
    let invalid_message = verdict.as_ref().err().map(|e| e.message.as_str());
    store::calendars::upsert_calendar(&ctx.pool, &name, &uid, generation, &spec, invalid_message)
        .await?;
    // The claim reads calendars with each job: wake it, so a change applies from the next slot.
    ctx.wake.notify_one();

    let previous = cal
        .and_then(|c| c.status.as_ref())
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Utc::now();
    let ready = match &verdict {
        Ok(()) => conditions::ready_condition(
            &previous,
            true,
            "Stored",
            "valid and stored",
            Some(generation),
            now,
        ),
        Err(invalid) => {
            info!(calendar = %name, message = %invalid.message, "ScheduleCalendar not ready");
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
    let job_count = ctx
        .jobs
        .count(|j| !j.deleting() && j.calendars().iter().any(|c| c.as_ref() == name.as_str()))
        as i64;
    let unchanged = cal.and_then(|c| c.status.as_ref()).is_some_and(|s| {
        s.observed_generation == Some(generation)
            && s.conditions.iter().find(|c| c.type_ == conditions::READY) == Some(&ready)
            && s.job_count == job_count
    });
    if !unchanged {
        // Server-side apply of the fields kube-beat owns; other controllers' conditions stay.
        let apply = json!({
            "apiVersion": ScheduleCalendar::api_version(&()),
            "kind": ScheduleCalendar::kind(&()),
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
    Ok(Action::requeue(RECOUNT_EVERY))
}

/// What the jobs naming a calendar depend on: whether it exists, its uid, whether it
/// deserializes, its generation. A change of any asks for a sweep of those jobs (a status-only
/// update does not).
pub fn fingerprint(obj: &Guarded<ScheduleCalendar>) -> (Option<String>, Option<i64>, bool, bool) {
    let (meta, cal) = split(obj);
    (
        meta.uid.clone(),
        meta.generation,
        cal.is_some(),
        meta.deletion_timestamp.is_some(),
    )
}

/// The sweep of the jobs naming `obj`.
pub fn sweep_for(obj: &Guarded<ScheduleCalendar>) -> Sweep {
    Sweep::Calendar(obj.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_missing_or_invalid_calendar_is_the_reason() {
        let lookup = |name: &str| match name {
            "ok" => CalendarRef::Valid,
            "bad" => CalendarRef::Invalid(CalendarError("timeZone: unknown".into())),
            _ => CalendarRef::Missing,
        };
        assert!(resolve(&["ok".into()], lookup).is_ok());
        let e = resolve(&["ok".into(), "gone".into(), "bad".into()], lookup).expect_err("missing");
        assert_eq!(e.reason, Reason::CalendarNotFound);
        assert!(
            e.message.contains("\"gone\" does not exist"),
            "{}",
            e.message
        );
        let e = resolve(&["bad".into(), "gone".into()], lookup).expect_err("invalid");
        assert_eq!(e.reason, Reason::CalendarInvalid);
        assert_eq!(
            e.message,
            "ScheduleCalendar \"bad\" is not valid: timeZone: unknown"
        );
    }
}
