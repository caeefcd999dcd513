//! Sweeps: reconciles that concern many jobs at once, handed to the job queue a few at a time.
//!
//! A new leader reconciles every job (followers wrote nothing), and a TaskFunction change
//! reconciles the jobs that use it. Queued all at once, as kube's `reconcile_all_on` does, each
//! job waited in the controller's queue for its turn as two copies of its ObjectRef, a
//! DelayQueue slot and a map entry: ~60 MB at 100,000 jobs while the queue drained at a few
//! hundred reconciles a second, and its tables kept their size afterwards. A sweep keeps at most
//! [`HANDED_MAX`] jobs handed to the queue and not yet started; the rest wait as one
//! pointer each in a snapshot of the cache.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::{
    cached_job::{CachedJob, Uid},
    job_cache::JobCache,
};

/// Jobs handed to the queue and not yet started: twice its concurrency keeps it busy.
pub const HANDED_MAX: usize = 2 * super::RECONCILE_CONCURRENCY as usize;
/// A handed job whose reconcile has not started after this long no longer counts (deleted
/// meanwhile, the queue never runs it).
const HANDED_STALE: Duration = Duration::from_secs(60);
/// Longest wait between looks at the state, so a missed wake-up costs at most this.
const RECHECK: Duration = Duration::from_millis(500);

/// Which jobs a sweep reconciles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sweep {
    All,
    /// The jobs that name this TaskFunction.
    TaskFunction(String),
    /// The jobs that name this ScheduleCalendar in `spec.calendars`.
    Calendar(String),
}

impl Sweep {
    fn covers(&self, job: &CachedJob) -> bool {
        match self {
            Sweep::All => true,
            Sweep::TaskFunction(name) => job.task_function() == Some(name.as_str()),
            Sweep::Calendar(name) => job.calendars().iter().any(|c| c.as_ref() == name),
        }
    }
}

/// The sweeps asked for, and the jobs handed out.
#[derive(Default)]
pub struct Sweeps {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    queued: VecDeque<Sweep>,
    /// Each job handed out, and when.
    handed: HashMap<Uid, Instant>,
}

impl Sweeps {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask for a sweep. `All` replaces every sweep not yet started (it covers them); a sweep
    /// already queued is not queued twice.
    pub fn ask(&self, sweep: Sweep) {
        let mut state = self.state();
        if sweep == Sweep::All {
            state.queued.clear();
        } else if state.queued.contains(&Sweep::All) || state.queued.contains(&sweep) {
            return;
        }
        state.queued.push_back(sweep);
        drop(state);
        self.changed.notify_one();
    }

    /// A job's reconcile has started (whatever asked for it): it no longer counts as handed.
    pub fn started(&self, key: &Uid) {
        if self.state().handed.remove(key).is_some() {
            self.changed.notify_one();
        }
    }

    /// Drop every sweep not yet started (this replica is no longer the leader).
    fn drop_queued(&self) {
        self.state().queued.clear();
    }

    /// The next sweep asked for.
    async fn next_sweep(&self) -> Sweep {
        loop {
            if let Some(sweep) = self.state().queued.pop_front() {
                return sweep;
            }
            self.wait_for_change().await;
        }
    }

    /// Until the state changes, or [`RECHECK`] at most. Running out of time is not an error:
    /// it is the recheck that covers a missed wake-up.
    async fn wait_for_change(&self) {
        if tokio::time::timeout(RECHECK, self.changed.notified())
            .await
            .is_err()
        {
            tracing::trace!("sweeps: periodic recheck");
        }
    }

    /// Wait until fewer than [`HANDED_MAX`] jobs are handed out, then count `key` as handed.
    async fn hand(&self, key: Uid) {
        loop {
            {
                let mut state = self.state();
                let now = Instant::now();
                state
                    .handed
                    .retain(|_, since| now.duration_since(*since) < HANDED_STALE);
                if state.handed.len() < HANDED_MAX {
                    state.handed.insert(key, now);
                    return;
                }
            }
            self.wait_for_change().await;
        }
    }

    #[cfg(test)]
    fn handed(&self) -> usize {
        self.state().handed.len()
    }
}

/// The jobs of each sweep, as the queue may take them. A sweep starts once `synced` (the
/// caches hold their first list) and ends early when `leading` turns false.
pub fn stream(
    sweeps: Arc<Sweeps>,
    jobs: JobCache,
    synced: impl Fn() -> bool + Send + 'static,
    leading: impl Fn() -> bool + Send + 'static,
) -> impl futures::Stream<Item = Uid> + Send + 'static {
    let walk = Walk {
        sweeps,
        jobs,
        synced: Box::new(synced),
        leading: Box::new(leading),
        current: Vec::new().into_iter(),
    };
    futures::stream::unfold(walk, |mut walk| async move {
        let job = walk.next().await;
        Some((job.key(), walk))
    })
}

/// A sweep in progress: the jobs of its snapshot not yet handed out.
struct Walk {
    sweeps: Arc<Sweeps>,
    jobs: JobCache,
    synced: Box<dyn Fn() -> bool + Send>,
    leading: Box<dyn Fn() -> bool + Send>,
    current: std::vec::IntoIter<Arc<CachedJob>>,
}

impl Walk {
    async fn next(&mut self) -> Arc<CachedJob> {
        loop {
            if let Some(job) = self.current.next() {
                if !(self.leading)() {
                    self.current = Vec::new().into_iter();
                    self.sweeps.drop_queued();
                    waiting(0);
                    continue;
                }
                self.sweeps.hand(job.key()).await;
                waiting(self.current.len());
                return job;
            }
            let sweep = self.sweeps.next_sweep().await;
            while !(self.synced)() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !(self.leading)() {
                self.sweeps.drop_queued();
                continue;
            }
            let snapshot = self.jobs.snapshot(|j| sweep.covers(j));
            tracing::debug!(?sweep, jobs = snapshot.len(), "sweep started");
            waiting(snapshot.len());
            self.current = snapshot.into_iter();
        }
    }
}

/// How many jobs of the sweep in progress wait to be handed out (a metric: how far a new
/// leader's re-reconcile of every job has come).
fn waiting(jobs: usize) {
    crate::metrics::METRICS
        .sweep_jobs_waiting
        .set(i64::try_from(jobs).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn job(name: &str, tf: &str) -> CachedJob {
        CachedJob::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "resourceVersion": "1", "generation": 1},
            "spec": {"taskFunction": tf, "schedule": {"interval": {"hours": 1}}},
        }))
    }

    fn cache(jobs: Vec<CachedJob>) -> JobCache {
        let cache = JobCache::default();
        for j in jobs {
            cache.apply(j);
        }
        cache
    }

    fn name(cache: &JobCache, key: Option<Uid>) -> String {
        let key = key.expect("a job");
        cache.get(&key).expect("cached").name().to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_hands_out_a_bounded_number_of_jobs_until_they_start() {
        let n = HANDED_MAX + 10;
        let store = cache((0..n).map(|i| job(&format!("j{i}"), "tf")).collect());
        let sweeps = Arc::new(Sweeps::default());
        let mut refs = Box::pin(stream(sweeps.clone(), store.clone(), || true, || true));
        sweeps.ask(Sweep::All);
        let mut got = Vec::new();
        for _ in 0..HANDED_MAX {
            got.push(refs.next().await.expect("a job"));
        }
        assert_eq!(sweeps.handed(), HANDED_MAX);
        // Full: nothing more until a reconcile starts.
        let more = tokio::time::timeout(Duration::from_secs(5), refs.next()).await;
        assert!(more.is_err(), "handed out beyond the bound");
        sweeps.started(&got[0]);
        got.push(refs.next().await.expect("one more after a start"));
        // A job handed out and never started stops counting after a while.
        tokio::time::advance(HANDED_STALE).await;
        for _ in 0..9 {
            got.push(refs.next().await.expect("the rest"));
        }
        let mut names: Vec<String> = got.into_iter().map(|k| name(&store, Some(k))).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "every job once");
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_cover_their_jobs_wait_for_the_caches_and_stop_without_the_lease() {
        let store = cache(vec![job("a", "one"), job("b", "two"), job("c", "one")]);
        let sweeps = Arc::new(Sweeps::default());
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (s, l) = (synced.clone(), leading.clone());
        let mut refs = Box::pin(stream(
            sweeps.clone(),
            store.clone(),
            move || s.load(std::sync::atomic::Ordering::SeqCst),
            move || l.load(std::sync::atomic::Ordering::SeqCst),
        ));
        sweeps.ask(Sweep::TaskFunction("one".into()));
        sweeps.ask(Sweep::TaskFunction("one".into()));
        let early = tokio::time::timeout(Duration::from_secs(2), refs.next()).await;
        assert!(early.is_err(), "a sweep before the caches are listed");
        synced.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut names = vec![
            name(&store, refs.next().await),
            name(&store, refs.next().await),
        ];
        names.sort();
        assert_eq!(names, ["a", "c"]);
        // Asked twice, swept once.
        let again = tokio::time::timeout(Duration::from_secs(2), refs.next()).await;
        assert!(again.is_err(), "the same sweep twice");
        // Not the leader: a sweep asked for is dropped.
        leading.store(false, std::sync::atomic::Ordering::SeqCst);
        sweeps.ask(Sweep::All);
        let dropped = tokio::time::timeout(Duration::from_secs(2), refs.next()).await;
        assert!(dropped.is_err(), "a sweep without the lease");
        leading.store(true, std::sync::atomic::Ordering::SeqCst);
        sweeps.ask(Sweep::All);
        assert!(refs.next().await.is_some(), "a sweep as the leader");
    }
}
