//! The ScheduledJob cache: every job this replica watches, keyed by uid, fed by one watch.
//!
//! Written here rather than kube's reflector `Store`, which needs a `Resource` with an inline
//! `ObjectMeta` per object and keys entries by an `ObjectRef` holding its own Strings: at 100,000
//! jobs that cache was ~100 MB, most of the operator's memory. A [`CachedJob`] keeps only the
//! fields the operator reads, keyed by its uid (16 bytes). The same pass over each watch event
//! decides what to reconcile ([`reconcile_worthy`]) and which TaskFunction's job count may have
//! changed, so jobs are watched once, not once per controller.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::StreamExt;
use kube::runtime::watcher;
use tracing::warn;

use super::cached_job::{CachedJob, Uid, WatchedJob};

/// The jobs as last seen by the watch. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct JobCache {
    jobs: Arc<RwLock<HashMap<Uid, Arc<CachedJob>>>>,
}

impl JobCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uid, Arc<CachedJob>>> {
        self.jobs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uid, Arc<CachedJob>>> {
        self.jobs.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &Uid) -> Option<Arc<CachedJob>> {
        self.read().get(key).cloned()
    }

    /// The jobs `keep` accepts, as of now.
    pub fn snapshot(&self, keep: impl Fn(&CachedJob) -> bool) -> Vec<Arc<CachedJob>> {
        self.read().values().filter(|j| keep(j)).cloned().collect()
    }

    /// How many jobs `count` accepts (without copying the entries).
    pub fn count(&self, count: impl Fn(&CachedJob) -> bool) -> usize {
        self.read().values().filter(|j| count(j)).count()
    }

    /// Store a job as seen; the entry it replaced, if any.
    pub fn apply(&self, job: CachedJob) -> Option<Arc<CachedJob>> {
        self.write().insert(job.key(), Arc::new(job))
    }

    pub fn remove(&self, key: &Uid) -> Option<Arc<CachedJob>> {
        self.write().remove(key)
    }

    /// Postgres holds this job's spec for `generation` (its row was just stored): the entry lets
    /// go of it, if it is still that generation. The status showing `Ready` would do the same on
    /// the next event, but that write is paced (see `super::paced`): at 100,000 new jobs, specs
    /// waiting for it were ~80 MB.
    pub fn spec_stored(&self, key: &Uid, generation: Option<i64>) {
        let mut jobs = self.write();
        if let Some(entry) = jobs.get_mut(key)
            && entry.generation() == generation
            && let Some(lean) = entry.without_spec()
        {
            *entry = Arc::new(lean);
        }
    }

    /// Drop the jobs a new list did not show (deleted while the watch was down).
    fn keep_only(&self, listed: &HashSet<Uid>) -> Vec<Arc<CachedJob>> {
        let mut jobs = self.write();
        let gone: Vec<Uid> = jobs
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        gone.iter().filter_map(|k| jobs.remove(k)).collect()
    }
}

/// The status writer skips writing what a job already shows (e.g. right after a failover).
impl crate::status::ShownStatus for JobCache {
    fn shows(&self, uid: &str, digest: u64) -> bool {
        self.get(&Uid::parse(uid))
            .is_some_and(|job| !job.status.unreadable && job.status.written == digest)
    }
}

/// What the job controllers need to hear about from the watch.
pub trait JobChanges {
    /// A job may need reconciling (what it depends on changed since it last passed).
    fn reconcile(&mut self, key: Uid);
    /// This TaskFunction's job count may have changed.
    fn recount(&mut self, task_function: &str);
}

/// Applies watch events to the cache, and tells what changed (comparing each job with its
/// cached entry: no map of its own).
pub struct CacheFiller {
    cache: JobCache,
    /// Jobs seen by the list in progress (after a watch restart), to drop the rest at its end.
    listing: Option<HashSet<Uid>>,
    /// Set once the first list is in the cache.
    listed: Arc<AtomicBool>,
}

impl CacheFiller {
    pub fn new(cache: JobCache, listed: Arc<AtomicBool>) -> CacheFiller {
        CacheFiller {
            cache,
            listing: None,
            listed,
        }
    }

    /// Apply one event. The first list passes no job to reconcile: the leader's sweep of every
    /// job covers it, a few at a time (see [`super::sweep`]), and a follower writes nothing.
    /// Later lists (after a watch expired) pass what changed. A deletion, or a job a new list no
    /// longer shows, is passed too: reconciled while not in the cache, its row is marked
    /// deleted.
    pub fn follow(&mut self, event: watcher::Event<WatchedJob>, changes: &mut impl JobChanges) {
        match event {
            watcher::Event::Init => self.listing = Some(HashSet::new()),
            watcher::Event::InitApply(w) => {
                if let Some(listing) = self.listing.as_mut() {
                    listing.insert(w.job.key());
                }
                self.applied(w.job, changes);
            }
            watcher::Event::Apply(w) => self.applied(w.job, changes),
            watcher::Event::Delete(w) => {
                // Reconciled as gone: its row stops being scheduled (it may have been deleted
                // before our finalizer was on it).
                changes.reconcile(w.job.key());
                if let Some(gone) = self.cache.remove(&w.job.key())
                    && let Some(tf) = gone.task_function()
                {
                    changes.recount(tf);
                }
                if let Some(tf) = w.job.task_function() {
                    changes.recount(tf);
                }
            }
            watcher::Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    for gone in self.cache.keep_only(&listing) {
                        changes.reconcile(gone.key());
                        if let Some(tf) = gone.task_function() {
                            changes.recount(tf);
                        }
                    }
                }
                self.listed.store(true, Ordering::Release);
            }
        }
    }

    fn applied(&mut self, job: CachedJob, changes: &mut impl JobChanges) {
        let key = job.key();
        let worthy = reconcile_worthy(&job);
        let new_tf = job.task_function().map(str::to_string);
        let old = self.cache.apply(job);
        // A new job, a spec change or a deletion: not the status writes every run causes.
        if old.as_deref().map(reconcile_worthy) == Some(worthy) {
            return;
        }
        let old_tf = old
            .as_ref()
            .and_then(|o| o.task_function().map(str::to_string));
        if old_tf != new_tf
            && let Some(tf) = &old_tf
        {
            changes.recount(tf);
        }
        if let Some(tf) = &new_tf {
            changes.recount(tf);
        }
        if self.listed.load(Ordering::Acquire) {
            changes.reconcile(key);
        }
    }
}

/// What a job reconcile depends on: the spec (generation), the trigger, resume and backfill
/// annotations, deletion and other controllers' finalizers. Status changes are not in it, and
/// neither is our own finalizer: its arrival (written apart, see `super::paced`) needs no second
/// pass, and a finalizer removed by hand stays removed until the job changes (its deletion is
/// still seen by the watch).
pub fn reconcile_worthy(job: &CachedJob) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    job.key().hash(&mut h);
    job.generation().hash(&mut h);
    job.trigger().hash(&mut h);
    job.resume().hash(&mut h);
    job.backfill().hash(&mut h);
    job.deleting().hash(&mut h);
    // Not `finalizers()`: that builds a Vec of Strings, once per watch event.
    job.other_finalizers().hash(&mut h);
    job.task_function().is_some().hash(&mut h);
    h.finish()
}

/// A [`JobChanges`] gathering what one event changed, for the stream below.
#[derive(Default)]
struct Gathered {
    reconcile: Vec<Uid>,
    recount: Vec<String>,
}

impl JobChanges for Gathered {
    fn reconcile(&mut self, key: Uid) {
        self.reconcile.push(key);
    }
    fn recount(&mut self, task_function: &str) {
        if !self.recount.iter().any(|t| t == task_function) {
            self.recount.push(task_function.to_string());
        }
    }
}

/// Follow a watch of jobs into `cache`: yields the jobs to reconcile, and calls `recount` with
/// each TaskFunction whose job count may have changed. Watch errors are logged (the watcher
/// retries with backoff).
pub fn follow<S>(
    events: S,
    mut follower: CacheFiller,
    recount: impl Fn(String) + Send + 'static,
) -> impl futures::Stream<Item = Uid> + Send + 'static
where
    S: futures::Stream<Item = Result<watcher::Event<WatchedJob>, watcher::Error>> + Send + 'static,
{
    events
        .map(move |event| {
            let mut gathered = Gathered::default();
            match event {
                Ok(event) => follower.follow(event, &mut gathered),
                Err(e) => warn!(error = %e, "ScheduledJob watch error (retrying with backoff)"),
            }
            for tf in gathered.recount {
                recount(tf);
            }
            futures::stream::iter(gathered.reconcile)
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn watched(name: &str, tf: &str, generation: i64) -> WatchedJob {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "resourceVersion": "1", "generation": generation},
            "spec": {"taskFunction": tf, "schedule": {"interval": {"hours": 1}}},
            "status": {"observedGeneration": generation},
        }))
        .expect("job")
    }

    fn with_status(mut w: WatchedJob, last_trigger: &str) -> WatchedJob {
        let mut v = json!({
            "metadata": {"name": w.job.name(), "namespace": "ns",
                         "uid": w.job.uid(), "resourceVersion": "2",
                         "generation": w.job.generation()},
            "spec": {"taskFunction": w.job.task_function(), "schedule": {"interval": {"hours": 1}}},
        });
        v["status"] = json!({"lastTrigger": last_trigger});
        w.job = CachedJob::from_value(v);
        w
    }

    fn names(cache: &JobCache) -> Vec<String> {
        let mut n: Vec<String> = cache
            .snapshot(|_| true)
            .iter()
            .map(|j| j.name().to_string())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn the_first_list_fills_the_cache_and_reconciles_nothing_later_changes_do() {
        let cache = JobCache::default();
        let listed = Arc::new(AtomicBool::new(false));
        let mut f = CacheFiller::new(cache.clone(), listed.clone());
        let mut g = Gathered::default();
        f.follow(watcher::Event::Init, &mut g);
        f.follow(watcher::Event::InitApply(watched("a", "one", 1)), &mut g);
        f.follow(watcher::Event::InitApply(watched("b", "two", 1)), &mut g);
        assert!(!listed.load(Ordering::Acquire));
        f.follow(watcher::Event::InitDone, &mut g);
        assert!(listed.load(Ordering::Acquire));
        assert_eq!(names(&cache), ["a", "b"]);
        assert!(g.reconcile.is_empty(), "the first list is the sweep's");
        assert_eq!(g.recount, ["one", "two"]);

        // A status write: cached, not reconciled, not recounted.
        let mut g = Gathered::default();
        f.follow(
            watcher::Event::Apply(with_status(watched("a", "one", 1), "x")),
            &mut g,
        );
        assert!(g.reconcile.is_empty() && g.recount.is_empty());
        let a = cache.get(&Uid::parse("uid-a")).expect("cached");
        assert_eq!(a.status.last_trigger.as_deref(), Some("x"));

        // A spec change moving the job to another TaskFunction: both recounted.
        let mut g = Gathered::default();
        f.follow(watcher::Event::Apply(watched("a", "two", 2)), &mut g);
        assert_eq!(g.reconcile, [Uid::parse("uid-a")]);
        assert_eq!(g.recount, ["one", "two"]);

        // A deletion: gone from the cache, recounted.
        let mut g = Gathered::default();
        f.follow(watcher::Event::Delete(watched("b", "two", 1)), &mut g);
        assert_eq!(names(&cache), ["a"]);
        assert_eq!(g.recount, ["two"]);
        assert_eq!(g.reconcile, [Uid::parse("uid-b")], "reconciled as gone");
    }

    #[test]
    fn a_new_list_drops_jobs_it_no_longer_shows_and_passes_what_changed() {
        let cache = JobCache::default();
        let listed = Arc::new(AtomicBool::new(false));
        let mut f = CacheFiller::new(cache.clone(), listed);
        let mut g = Gathered::default();
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply(watched("a", "one", 1)),
            watcher::Event::InitApply(watched("b", "one", 1)),
            watcher::Event::InitApply(watched("c", "one", 1)),
            watcher::Event::InitDone,
        ] {
            f.follow(e, &mut g);
        }
        // The watch expired; while it was down, b was deleted and c changed.
        let mut g = Gathered::default();
        f.follow(watcher::Event::Init, &mut g);
        f.follow(watcher::Event::InitApply(watched("a", "one", 1)), &mut g);
        f.follow(watcher::Event::InitApply(watched("c", "one", 2)), &mut g);
        assert_eq!(names(&cache), ["a", "b", "c"], "kept until the list ends");
        f.follow(watcher::Event::InitDone, &mut g);
        assert_eq!(names(&cache), ["a", "c"]);
        assert_eq!(
            g.reconcile,
            [Uid::parse("uid-c"), Uid::parse("uid-b")],
            "c changed; b gone"
        );
        assert_eq!(g.recount, ["one"]);
        assert_eq!(cache.count(|j| j.task_function() == Some("one")), 2);
    }

    #[test]
    fn a_stored_spec_is_let_go_of_for_its_generation_only() {
        let cache = JobCache::default();
        cache.apply(watched("a", "one", 2).job);
        let key = Uid::parse("uid-a");
        let spec_held = || cache.get(&key).expect("cached").spec().is_some();
        assert!(spec_held(), "not Ready yet: the cache holds the spec");
        cache.spec_stored(&key, Some(1));
        assert!(spec_held(), "another generation was stored");
        cache.spec_stored(&key, Some(2));
        assert!(!spec_held());
        let job = cache.get(&key).expect("cached");
        assert_eq!(job.task_function(), Some("one"), "the rest is kept");
        assert_eq!(job.generation(), Some(2));
        // A job not cached (deleted meanwhile) is no error.
        cache.spec_stored(&Uid::parse("uid-gone"), Some(1));
    }
}
