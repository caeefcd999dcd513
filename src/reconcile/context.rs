//! What both controllers share: the clients, the caches, the leader's role, and the per-object
//! failure counts behind retries.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Client, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use sqlx::PgPool;
use tracing::warn;

use super::{
    Guarded,
    error::{Error, backoff, quick_retry},
    job_cache::JobCache,
    selector::LabelSelector,
    sweep,
};
use crate::api::{ScheduleCalendar, TaskFunction};

/// Shared by both controllers.
pub struct Context {
    pub client: Client,
    pub pool: PgPool,
    pub jobs: JobCache,
    pub functions: Store<Guarded<TaskFunction>>,
    /// ScheduleCalendars, for the jobs' `spec.calendars` (`CalendarNotFound`).
    pub calendars: Store<Guarded<ScheduleCalendar>>,
    /// Which TaskFunctions this installation manages.
    pub selector: LabelSelector,
    pub(super) jobs_listed: Arc<AtomicBool>,
    pub(super) functions_listed: Arc<AtomicBool>,
    pub(super) calendars_listed: Arc<AtomicBool>,
    /// Only the leader writes; followers keep their caches warm.
    pub role: tokio::sync::watch::Receiver<crate::leader::Role>,
    /// Tells the dispatcher that what is due may have changed.
    pub wake: Arc<tokio::sync::Notify>,
    /// Shadow mode: manual triggers record SHADOW executions.
    pub shadow: bool,
    /// Status notices and Events (manual triggers).
    pub feed: crate::status::Feed,
    /// Latest TaskFunction versions that triggered job reconciles.
    pub(super) seen_functions: Arc<Mutex<HashMap<String, SeenTaskFunction>>>,
    /// Consecutive failures per object, for exponential backoff.
    pub(super) failures: Mutex<HashMap<String, u32>>,
    /// Reconciles of many jobs at once, handed to the job queue a few at a time.
    pub sweeps: Arc<sweep::Sweeps>,
    /// Where valid jobs are stored, in batches shared by concurrent reconciles.
    pub upserts: super::upserts::Upserts,
    /// The apiserver writes reconciles hand over (see [`super::paced`]).
    pub writes: super::paced::ObjectWrites,
}

impl Context {
    /// An Event on the job `key` (`namespace/name`).
    pub(super) fn job_event(
        &self,
        key: &str,
        uid: &str,
        reason: crate::status::Reason,
        message: String,
    ) {
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        self.feed.event(crate::status::JobEvent {
            job: crate::status::JobRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
            },
            reason,
            message,
        });
    }

    fn failed(&self, key: String) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    pub(super) fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }

    /// The stage every reconcile starts with: caches listed, and this replica the leader.
    /// Followers keep their caches warm and write nothing (a new leader re-reconciles all).
    pub(super) async fn may_write(&self) -> Result<bool, Error> {
        self.caches_ready().await?;
        Ok(self.writing_epoch()?.is_some())
    }

    /// The epoch to write under: `None` on a follower (its work is the next leader's), an
    /// error while the leader's lease is uncertain, so the reconcile is retried shortly
    /// instead of dropped: nothing else would ask for it again.
    pub(super) fn writing_epoch(&self) -> Result<Option<i64>, Error> {
        writing_epoch(&self.role.borrow())
    }

    /// The TaskFunction `name` from the cache, once the cache has caught up with the newest
    /// change that triggered a job reconcile.
    pub(super) async fn task_function(&self, name: &str) -> Option<Arc<Guarded<TaskFunction>>> {
        let key = ObjectRef::<Guarded<TaskFunction>>::new(name);
        for _ in 0..50 {
            let cached = self
                .functions
                .get(&key)
                .filter(|tf| self.selector.matches(tf.labels()));
            let wanted = self
                .seen_functions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied();
            if wanted.is_none_or(|w| w.satisfied_by(cached.as_deref())) {
                return cached;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.functions
            .get(&key)
            .filter(|tf| self.selector.matches(tf.labels()))
    }

    /// Whether TaskFunction `name` exists but is another installation's (outside our
    /// `--task-function-selector`): its jobs are that installation's to judge, not ours.
    pub(super) fn belongs_elsewhere(&self, name: &str) -> bool {
        self.functions
            .get(&ObjectRef::<Guarded<TaskFunction>>::new(name))
            .is_some_and(|tf| !self.selector.matches(tf.labels()))
    }

    /// Wait until every cache has listed once: before that, a missing TaskFunction (or
    /// calendar) may only be one we have not seen yet. Polls flags rather than `Store::wait_until_ready`: that future
    /// wakes only its most recent poller, so waiting on it beside the controller's own runner
    /// can stall one of them for good.
    async fn caches_ready(&self) -> Result<(), Error> {
        let start = std::time::Instant::now();
        while !(self.jobs_listed.load(Ordering::Acquire)
            && self.functions_listed.load(Ordering::Acquire)
            && self.calendars_listed.load(Ordering::Acquire))
        {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(Error::CacheNotReady("no initial list within 60 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// How long to wait before retrying a failed reconcile of `key` (`namespace/name`, or a
    /// TaskFunction's name). Counted and logged here.
    pub(super) fn retry_delay(&self, key: String, err: &Error) -> Duration {
        if let Some(soon) = quick_retry(err) {
            tracing::debug!(object = %key, error = %err, "retrying shortly");
            return soon;
        }
        crate::metrics::METRICS
            .reconcile_errors
            .get_or_create(&crate::metrics::Category {
                category: err.category(),
            })
            .inc();
        let delay = self.failed(key.clone());
        warn!(object = %key, category = err.category(), error = %err, retry_in = ?delay, "reconcile failed");
        delay
    }
}

/// The version of a TaskFunction that last asked for a sweep of its jobs. A job reconciled
/// because of a TaskFunction change waits until the store shows that change (the sweep is asked
/// for after the store is updated, from the same watch, so this wait is a guard, not a delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenTaskFunction {
    /// A TaskFunction deleted and created again under the same name is a different object.
    uid: u64,
    generation: Option<i64>,
    deleting: bool,
    /// What else jobs depend on: uid, labels, whether it deserialized.
    fingerprint: u64,
}

impl SeenTaskFunction {
    pub(super) fn of(tf: &Guarded<TaskFunction>) -> SeenTaskFunction {
        use std::hash::{Hash, Hasher};
        let meta = match &tf.0 {
            Ok(t) => &t.metadata,
            Err(e) => &e.metadata,
        };
        let mut uid = std::collections::hash_map::DefaultHasher::new();
        meta.uid.hash(&mut uid);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        meta.labels.hash(&mut h);
        tf.0.is_ok().hash(&mut h);
        SeenTaskFunction {
            uid: uid.finish(),
            generation: meta.generation,
            deleting: meta.deletion_timestamp.is_some(),
            fingerprint: h.finish(),
        }
    }

    /// Whether `cached` (from the store) is at least as new as this trigger.
    fn satisfied_by(&self, cached: Option<&Guarded<TaskFunction>>) -> bool {
        match cached {
            // Gone from the cache: expected if the trigger was its deletion; otherwise the
            // cache has not seen it yet.
            None => self.deleting,
            Some(c) => {
                let now = SeenTaskFunction::of(c);
                now.uid == self.uid
                    && (now.deleting || (!self.deleting && now.generation >= self.generation))
            }
        }
    }
}

/// [`Context::writing_epoch`] for a role.
pub(super) fn writing_epoch(role: &crate::leader::Role) -> Result<Option<i64>, Error> {
    match role.epoch() {
        Some(epoch) => Ok(Some(epoch)),
        None if role.lapsed() => Err(Error::LeaseUncertain),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::Role;
    use tokio::time::Instant;

    #[test]
    fn a_leader_writes_a_follower_skips_and_a_late_renewal_is_retried_not_dropped() {
        let now = Instant::now();
        let certain = Role::Leader {
            epoch: 7,
            valid_until: now + Duration::from_secs(5),
        };
        assert!(matches!(writing_epoch(&certain), Ok(Some(7))));
        assert!(matches!(writing_epoch(&Role::Follower), Ok(None)));
        // Still the leader by its last round, but that round's certainty ran out: the
        // reconcile must fail (and be retried), not succeed having written nothing.
        let lapsed = Role::Leader {
            epoch: 7,
            valid_until: now - Duration::from_millis(1),
        };
        assert!(lapsed.is_leader() && lapsed.lapsed());
        assert!(matches!(writing_epoch(&lapsed), Err(Error::LeaseUncertain)));
        assert!(!certain.lapsed() && !Role::Follower.lapsed() && !Role::Follower.is_leader());
    }
}
