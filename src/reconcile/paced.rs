//! The apiserver writes a job's reconcile asks for — kube-beat's finalizer and the status fields
//! the reconciler owns (`Ready`, `observedGeneration`, `schedule`, `lastTrigger`) — done by a few
//! writers of their own, apart from the reconcile queue.
//!
//! Why apart: storing a job in Postgres is what schedules it, and must never wait on the
//! apiserver. Measured at 100,000 new jobs, the finalizer PATCH and the status apply of each job
//! were most of the apiserver's CPU and held the reconcile rate at ~90 jobs/s (the apiserver
//! itself accepted ~500 creates/s). Now a reconcile stores the job and hands these writes over;
//! [`WRITERS`] of them run at once, so a GitOps sync of thousands of jobs is scheduled at the
//! rate Postgres takes them while its finalizers and conditions follow at the rate the
//! apiserver can spare.
//!
//! A job that goes away before its finalizer is written is still seen: the watch reports its
//! deletion and the job queue marks its row deleted (see [`super::scheduled_job::gone`]); a
//! deletion missed while no replica led is found by the orphan check ([`super::drift`]).
//!
//! One entry per job: a newer ask replaces the status an older one had not written yet, so a
//! job changed five times while its writes waited is written once, as it is now.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::channel::mpsc;
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    Context, Error,
    cached_job::{CachedJob, Uid, WatchedJob, reconciled_digest},
    finalizer::{Finalizing, add_finalizer},
};
use crate::{
    api::{Condition, ScheduledJob},
    store,
};

/// Writes to the apiserver in flight at once. Few on purpose: every one of them takes apiserver
/// CPU that creates of new objects (anyone's) also need.
pub const WRITERS: usize = 4;

/// The status fields the reconciler owns (the status writer owns the run fields, including
/// `nextScheduleTime`).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedStatus {
    pub observed_generation: i64,
    pub ready: Condition,
    pub schedule: Option<String>,
    pub last_trigger: Option<String>,
}

impl OwnedStatus {
    /// Whether `obj` already shows these fields (then there is nothing to write).
    pub fn shown_by(&self, obj: &CachedJob) -> bool {
        let shown = &obj.status;
        !shown.unreadable
            && shown.reconciled
                == reconciled_digest(
                    Some(self.observed_generation),
                    std::slice::from_ref(&self.ready),
                    self.schedule.as_deref(),
                    self.last_trigger.as_deref(),
                )
    }
}

/// What is still to be written for one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pending {
    /// Our finalizer is not on the object yet.
    pub finalizer: bool,
    /// The owned status to apply, if the object does not show it.
    pub status: Option<OwnedStatus>,
    /// The job's row, for the status writer to show `nextScheduleTime` once `Ready` is written.
    pub job_id: Option<i64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.finalizer && self.status.is_none()
    }

    /// `self` is newer than `older`: its status wins; a finalizer either still wants is kept.
    fn over(mut self, older: Pending) -> Pending {
        self.finalizer |= older.finalizer;
        if self.status.is_none() {
            self.status = older.status;
        }
        self.job_id = self.job_id.or(older.job_id);
        self
    }
}

/// The jobs with writes waiting, and the channel that asks the writers for them.
#[derive(Clone)]
pub struct ObjectWrites {
    inner: Arc<Mutex<Inner>>,
    asks: mpsc::UnboundedSender<Uid>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<Uid, Pending>,
    /// Taken by a writer and not finished: what the object shows may be about to change, so an
    /// ask for one of these is queued even when the object shows its status now.
    in_flight: HashSet<Uid>,
}

impl ObjectWrites {
    /// The handle, and the stream of jobs to write for (run by [`super::queue::run`]).
    pub fn new() -> (ObjectWrites, mpsc::UnboundedReceiver<Uid>) {
        let (asks, rx) = mpsc::unbounded();
        let writes = ObjectWrites {
            inner: Arc::default(),
            asks,
        };
        (writes, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(inner: &Inner) {
        crate::metrics::METRICS
            .reconcile_writes_waiting
            .set(i64::try_from(inner.pending.len()).unwrap_or(i64::MAX));
    }

    /// Ask for `write` on the job `key`, merged with what is still waiting for it. `shown`: the
    /// object already shows `write.status`; then nothing is queued for it, unless a status is
    /// still waiting (it is replaced: an older one must not be written over what the job is now)
    /// or being written (the object may not show it for long).
    pub fn ask(&self, key: Uid, write: Pending, shown: bool) {
        {
            let mut inner = self.lock();
            let older = inner.pending.remove(&key);
            let nothing =
                write.is_empty() || (shown && !write.finalizer && !inner.in_flight.contains(&key));
            let merged = match older {
                None if nothing => return,
                None => write,
                Some(older) => write.over(older),
            };
            inner.pending.insert(key.clone(), merged);
            Self::count(&inner);
        }
        // Closed only when the writers have stopped (shutdown): the next leader writes it.
        if self.asks.unbounded_send(key).is_err() {
            tracing::debug!("object writes stopped: shutting down");
        }
    }

    /// Drop what waits for `key` (the job is no longer this installation's to write).
    pub fn forget(&self, key: &Uid) {
        let mut inner = self.lock();
        if inner.pending.remove(key).is_some() {
            Self::count(&inner);
        }
    }

    /// Take what waits for `key`, marking it in flight until [`ObjectWrites::finish`].
    fn take(&self, key: &Uid) -> Option<Pending> {
        let mut inner = self.lock();
        let taken = inner.pending.remove(key)?;
        inner.in_flight.insert(key.clone());
        Self::count(&inner);
        Some(taken)
    }

    fn finish(&self, key: &Uid) {
        self.lock().in_flight.remove(key);
    }

    /// What a failed write left undone, unless a newer ask came meanwhile (it wins).
    fn put_back(&self, key: Uid, rest: Pending) {
        if rest.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let merged = match inner.pending.remove(&key) {
            Some(newer) => newer.over(rest),
            None => rest,
        };
        inner.pending.insert(key, merged);
        Self::count(&inner);
    }

    /// Jobs with writes waiting.
    pub fn waiting(&self) -> usize {
        self.lock().pending.len()
    }
}

/// One job's writes, as the queue runs them: the delay before a retry, if one failed.
pub async fn write_job(key: Uid, ctx: Arc<Context>) -> Option<Duration> {
    let pending = ctx.writes.take(&key)?;
    let retry = write_taken(&key, pending, &ctx).await;
    ctx.writes.finish(&key);
    retry
}

async fn write_taken(key: &Uid, pending: Pending, ctx: &Context) -> Option<Duration> {
    // Deleted (gone from the cache): nothing to write on.
    let job = ctx.jobs.get(key)?;
    if job.deleting() {
        // The reconcile's deletion stage owns it now.
        ctx.succeeded(&write_key(&job));
        return None;
    }
    let mut rest = pending;
    match write(ctx, &job, &mut rest).await {
        Ok(()) => {
            ctx.succeeded(&write_key(&job));
            None
        }
        Err(e) => {
            ctx.writes.put_back(key.clone(), rest);
            Some(ctx.retry_delay(write_key(&job), &e))
        }
    }
}

/// The key a job's write failures are counted under (apart from its reconcile's).
fn write_key(job: &CachedJob) -> String {
    format!("{} (status)", job.key_text())
}

/// Write what `rest` holds, clearing each part once written (what is left on error is retried).
async fn write(ctx: &Context, job: &CachedJob, rest: &mut Pending) -> Result<(), Error> {
    // A follower writes nothing: a new leader reconciles every job again.
    if !ctx.may_write().await? {
        *rest = Pending::default();
        return Ok(());
    }
    let api: Api<WatchedJob> = Api::namespaced(ctx.client.clone(), job.namespace());
    if rest.finalizer {
        if !job.finalized() {
            add_finalizer(&api, &Finalizing::of_job(job)).await?;
        }
        rest.finalizer = false;
    }
    if let Some(status) = rest.status.take() {
        match write_status(&api, job, &status).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                rest.status = Some(status);
                return Err(e);
            }
        }
        // `nextScheduleTime` is the status writer's field (one owner, so that it disappears
        // when there is no next run): ask it to show what was just stored.
        let job_id = match rest.job_id {
            Some(id) => Some(id),
            None => match job.uid() {
                Some(uid) => store::status::job_id(&ctx.pool, &uid).await?,
                None => None,
            },
        };
        if let Some(job_id) = job_id {
            ctx.feed.touch(job_id);
        }
    }
    Ok(())
}

/// Apply the fields the reconciler owns, only when the object does not show them already (a
/// resync writes nothing); whether it wrote.
///
/// Server-side apply under [`crate::api::FIELD_MANAGER`], with every field the reconciler owns
/// in each apply: a field it owned and leaves out is removed (no `schedule` for an invalid job).
/// The conditions list is a list-map keyed by `type`, so the apply carries `Ready` only and
/// other controllers' conditions stay as they are, without reading them first.
async fn write_status(
    api: &Api<WatchedJob>,
    obj: &CachedJob,
    new: &OwnedStatus,
) -> Result<bool, Error> {
    if new.shown_by(obj) {
        return Ok(false);
    }
    let mut status = json!({
        "observedGeneration": new.observed_generation,
        "conditions": [&new.ready],
    });
    if let Some(schedule) = &new.schedule {
        status["schedule"] = json!(schedule);
    }
    if let Some(last_trigger) = &new.last_trigger {
        status["lastTrigger"] = json!(last_trigger);
    }
    let apply = json!({
        "apiVersion": ScheduledJob::api_version(&()),
        "kind": ScheduledJob::kind(&()),
        "metadata": {"name": obj.name()},
        "status": status,
    });
    let params = PatchParams::apply(crate::api::FIELD_MANAGER).force();
    match api
        .patch_status(obj.name(), &params, &Patch::Apply(&apply))
        .await
    {
        Ok(_) => Ok(true),
        // Gone meanwhile: nothing to show it on.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(message: &str) -> OwnedStatus {
        OwnedStatus {
            observed_generation: 1,
            ready: super::super::conditions::ready_condition(
                &[],
                true,
                "Stored",
                message,
                Some(1),
                chrono::DateTime::UNIX_EPOCH,
            ),
            schedule: Some("every minute".into()),
            last_trigger: None,
        }
    }

    #[test]
    fn a_newer_ask_replaces_the_status_and_keeps_the_finalizer() {
        let (writes, _rx) = ObjectWrites::new();
        let key = Uid::parse("u1");
        writes.ask(
            key.clone(),
            Pending {
                finalizer: true,
                status: Some(status("old")),
                job_id: Some(7),
            },
            false,
        );
        writes.ask(
            key.clone(),
            Pending {
                finalizer: false,
                status: Some(status("new")),
                job_id: None,
            },
            false,
        );
        assert_eq!(writes.waiting(), 1, "one entry per job");
        assert_eq!(
            writes.take(&key),
            Some(Pending {
                finalizer: true,
                status: Some(status("new")),
                job_id: Some(7),
            })
        );
        assert_eq!(writes.take(&key), None);
    }

    #[test]
    fn what_a_failed_write_left_is_put_back_under_a_newer_ask() {
        let (writes, _rx) = ObjectWrites::new();
        let key = Uid::parse("u1");
        // Taken by a writer; meanwhile the job changed and asked again.
        writes.ask(
            key.clone(),
            Pending {
                finalizer: false,
                status: Some(status("newer")),
                job_id: None,
            },
            false,
        );
        writes.put_back(
            key.clone(),
            Pending {
                finalizer: true,
                status: Some(status("failed")),
                job_id: Some(3),
            },
        );
        assert_eq!(
            writes.take(&key),
            Some(Pending {
                finalizer: true,
                status: Some(status("newer")),
                job_id: Some(3),
            })
        );
        // Nothing left to write is not an entry.
        writes.put_back(key.clone(), Pending::default());
        writes.ask(key.clone(), Pending::default(), false);
        assert_eq!(writes.waiting(), 0);
    }

    #[test]
    fn a_status_already_shown_queues_nothing_but_replaces_an_older_one_waiting() {
        let (writes, _rx) = ObjectWrites::new();
        let key = Uid::parse("u1");
        let shown = Pending {
            finalizer: false,
            status: Some(status("A")),
            job_id: None,
        };
        writes.ask(key.clone(), shown.clone(), true);
        assert_eq!(writes.waiting(), 0, "nothing to write");
        // A → B (not yet written) → A again, which the object still shows: B must not be
        // written after all.
        let b = Pending {
            status: Some(status("B")),
            ..shown.clone()
        };
        writes.ask(key.clone(), b, false);
        writes.ask(key.clone(), shown.clone(), true);
        assert_eq!(writes.take(&key), Some(shown.clone()));
        // Being written: an ask is queued even when the object shows its status (the write in
        // flight may be an older status than the one shown).
        writes.ask(
            key.clone(),
            Pending {
                status: Some(status("B")),
                ..shown.clone()
            },
            false,
        );
        assert!(writes.take(&key).is_some(), "B taken by a writer");
        writes.ask(key.clone(), shown.clone(), true);
        assert_eq!(writes.waiting(), 1, "A queued behind B in flight");
        writes.finish(&key);
        assert_eq!(writes.take(&key), Some(shown.clone()));
        writes.finish(&key);
        writes.ask(key.clone(), shown.clone(), true);
        assert_eq!(writes.waiting(), 0, "nothing in flight: nothing queued");
        // A missing finalizer is queued even when the status is shown.
        let finalizer = Pending {
            finalizer: true,
            ..shown.clone()
        };
        writes.ask(key.clone(), finalizer.clone(), true);
        assert_eq!(writes.take(&key), Some(finalizer));
        // A job no longer ours: what waited is dropped.
        writes.finish(&key);
        writes.ask(key.clone(), shown.clone(), false);
        writes.forget(&key);
        assert_eq!(writes.waiting(), 0);
    }

    #[test]
    fn a_status_the_object_shows_is_not_written_again() {
        let s = status("valid and stored");
        let digest = reconciled_digest(
            Some(s.observed_generation),
            std::slice::from_ref(&s.ready),
            s.schedule.as_deref(),
            s.last_trigger.as_deref(),
        );
        let mut obj = CachedJob::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns", "uid": "u1"},
            "status": {"observedGeneration": 1, "conditions": [s.ready],
                       "schedule": "every minute"},
        }));
        assert_eq!(
            obj.status.reconciled, digest,
            "the cache digests what it shows"
        );
        assert!(s.shown_by(&obj));
        assert!(!status("other message").shown_by(&obj));
        obj.status.unreadable = true;
        assert!(!s.shown_by(&obj), "an unreadable status is written over");
    }
}
