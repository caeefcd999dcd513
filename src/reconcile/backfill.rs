//! The backfill stage of a job reconcile (leader only): a new `id` in the `kubebeat.io/backfill`
//! annotation becomes exactly one `backfills` row (unique per job and id), which the backfill
//! runner then works through. A refused request with a readable id is recorded as Failed (so
//! `status.backfill` says why); one without a readable id only gets a Warning Event.

use chrono::Utc;
use tracing::{debug, info};

use super::{Context, Error, cached_job::CachedJob};
use crate::{
    backfill::{self, Request},
    schedule::rfc3339,
    status::Reason,
    store::{self, backfills::NewBackfill, claims::ClaimError},
};

pub(super) async fn backfill_stage(
    ctx: &Context,
    obj: &CachedJob,
    uid: &str,
    key: &str,
) -> Result<(), Error> {
    let Some(text) = obj.backfill() else {
        return Ok(());
    };
    let Some(epoch) = ctx.writing_epoch()? else {
        return Ok(());
    };
    let value = match backfill::parse_annotation(text).and_then(|v| {
        backfill::check_id(&v.id)?;
        Ok(v)
    }) {
        Ok(v) => v,
        Err(e) => {
            debug!(job = %key, error = %e, "backfill annotation refused");
            ctx.job_event(key, uid, Reason::BackfillRefused, e.to_string());
            return Ok(());
        }
    };
    let Some(stored) = store::backfills::job_schedule(&ctx.pool, uid).await? else {
        return Ok(());
    };
    if store::backfills::exists(&ctx.pool, stored.job_id, &value.id).await? {
        return Ok(()); // this request is recorded already
    }
    let planned = Request::check(&value, Utc::now()).and_then(|r| {
        let slots = backfill::stored_slots(&stored, r.from, r.to)?;
        Ok((r, i64::try_from(slots.len()).unwrap_or(i64::MAX)))
    });
    let (from, to, max_parallel, total, refused) = match &planned {
        Ok((r, total)) => (r.from, r.to, r.max_parallel, *total, None),
        Err(e) => {
            // Recorded with what could be read of it (a range that does not parse: empty).
            let t = |s: &str| backfill::parse_time(s).unwrap_or_default();
            let (from, to) = (t(&value.from), t(&value.to));
            (from, to.max(from), 1, 0, Some(e.to_string()))
        }
    };
    let new = NewBackfill {
        schedule: &stored,
        request_key: &value.id,
        from,
        to,
        max_parallel: i32::try_from(max_parallel).unwrap_or(1),
        total,
        // Bounded even on a refused request (its `by` is not checked then).
        requested_by: value.by.as_deref().filter(|b| {
            b.chars().count() <= backfill::MAX_BY_CHARS && !b.chars().any(char::is_control)
        }),
        refused: refused.as_deref(),
    };
    match store::backfills::create(&ctx.pool, epoch, &new).await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => {
            let (reason, message) = match &refused {
                None => (
                    Reason::BackfillStarted,
                    format!(
                        "backfill {}: {total} slot(s) from {} to {}, at most {max_parallel} at once",
                        value.id,
                        rfc3339(from),
                        rfc3339(to)
                    ),
                ),
                Some(why) => (
                    Reason::BackfillRefused,
                    format!("backfill {} refused: {why}", value.id),
                ),
            };
            info!(job = %key, backfill = %value.id, %message, "backfill requested");
            ctx.job_event(key, uid, reason, message);
            ctx.feed.touch(stored.job_id);
            Ok(())
        }
        Err(ClaimError::Fenced { .. }) => Ok(()),
        Err(ClaimError::Db(e)) => Err(Error::Store(store::StoreError::Query(e))),
    }
}
