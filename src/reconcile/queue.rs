//! The ScheduledJob work queue: which jobs to reconcile, at most one reconcile per job at a time
//! and a bounded number in all, with retries after a delay.
//!
//! Written here because kube's `Controller` looks objects up in its reflector `Store`, which the
//! job cache no longer is (see [`super::job_cache`]). It keeps kube's semantics: a job asked for
//! while queued is queued once; asked for while its reconcile runs, it runs again afterwards; a
//! retry waits its delay unless the job is asked for sooner; shutdown lets reconciles in flight
//! finish.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    future::Future,
    hash::Hash,
    time::Duration,
};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::time::Instant;
use tracing::warn;

/// Wait before retrying a reconcile that panicked.
const AFTER_PANIC: Duration = Duration::from_secs(5);

/// The queue's bookkeeping, apart from running anything (pure, so it is tested alone).
#[derive(Debug)]
pub struct Queue<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    running: HashSet<K>,
    /// Asked for while running: queued again when the reconcile ends.
    again: HashSet<K>,
    /// Retries by due time (a sequence number keeps equal times apart), and each key's entry.
    delayed: BTreeSet<(Instant, u64, K)>,
    delay_of: HashMap<K, (Instant, u64)>,
    seq: u64,
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Queue {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            running: HashSet::new(),
            again: HashSet::new(),
            delayed: BTreeSet::new(),
            delay_of: HashMap::new(),
            seq: 0,
        }
    }
}

impl<K: Hash + Eq + Ord + Clone> Queue<K> {
    /// Ask for a reconcile now (an earlier retry of the same key is superseded).
    pub fn push(&mut self, key: K) {
        if let Some((at, seq)) = self.delay_of.remove(&key) {
            self.delayed.remove(&(at, seq, key.clone()));
        }
        if self.running.contains(&key) {
            self.again.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// Ask for a reconcile at `at`, unless one is already due sooner.
    pub fn push_at(&mut self, key: K, at: Instant) {
        if self.queued.contains(&key) || self.again.contains(&key) {
            return;
        }
        if let Some(&(due, seq)) = self.delay_of.get(&key) {
            if due <= at {
                return;
            }
            self.delayed.remove(&(due, seq, key.clone()));
        }
        self.seq += 1;
        self.delayed.insert((at, self.seq, key.clone()));
        self.delay_of.insert(key, (at, self.seq));
    }

    /// The next key to reconcile, now: marked running until [`Queue::done`].
    pub fn pop(&mut self, now: Instant) -> Option<K> {
        while let Some(first) = self.delayed.first().cloned() {
            if first.0 > now {
                break;
            }
            self.delayed.remove(&first);
            self.delay_of.remove(&first.2);
            self.push(first.2);
        }
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// A reconcile ended; `retry_after` asks for another after that long.
    pub fn done(&mut self, key: K, retry_after: Option<Duration>, now: Instant) {
        self.running.remove(&key);
        if self.again.remove(&key) {
            self.push(key);
        } else if let Some(after) = retry_after {
            self.push_at(key, now + after);
        }
    }

    /// When the earliest retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|(at, _, _)| *at)
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Keys waiting (ready or for a retry).
    pub fn waiting(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }
}

/// Run `work` for each key `asks` yields, as the queue allows, at most `concurrency` at once,
/// until `shutdown` resolves (or `asks` ends); then wait for the reconciles in flight. `work`
/// returns the delay before a retry, if one is wanted. Each reconcile is its own task.
pub async fn run<K, A, W, F>(
    asks: A,
    concurrency: usize,
    work: W,
    shutdown: impl Future<Output = ()>,
) where
    K: Hash + Eq + Ord + Clone + Send + std::fmt::Debug + 'static,
    A: futures::Stream<Item = K>,
    W: Fn(K) -> F,
    F: Future<Output = Option<Duration>> + Send + 'static,
{
    let mut queue: Queue<K> = Queue::default();
    let mut inflight = FuturesUnordered::new();
    let asks = asks.fuse();
    let shutdown = shutdown.fuse();
    futures::pin_mut!(asks, shutdown);
    let mut stopping = false;
    loop {
        while !stopping && inflight.len() < concurrency {
            let Some(key) = queue.pop(Instant::now()) else {
                break;
            };
            let task = tokio::spawn(work(key.clone()));
            inflight.push(task.map(move |r| (key, r)));
        }
        if stopping && inflight.is_empty() {
            return;
        }
        let due = queue.next_due();
        tokio::select! {
            biased;
            _ = &mut shutdown, if !stopping => stopping = true,
            Some((key, result)) = inflight.next(), if !inflight.is_empty() => {
                let retry = result.unwrap_or_else(|e| {
                    warn!(job = ?key, error = %e, "reconcile panicked; retrying");
                    Some(AFTER_PANIC)
                });
                queue.done(key, retry, Instant::now());
            }
            ask = asks.next(), if !stopping => match ask {
                Some(key) => queue.push(key),
                None => stopping = true,
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() && !stopping => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    #[test]
    fn a_key_is_queued_once_and_runs_again_if_asked_for_while_running() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.push("a");
        q.push("a");
        q.push("b");
        assert_eq!(q.pop(now), Some("a"));
        q.push("a"); // while running
        assert_eq!(q.pop(now), Some("b"));
        assert_eq!(q.pop(now), None, "a is running: not twice at once");
        q.done("a", None, now);
        assert_eq!(q.pop(now), Some("a"), "asked for while running: runs again");
        q.done("a", None, now);
        q.done("b", None, now);
        assert_eq!(q.pop(now), None);
        assert_eq!(q.running(), 0);
    }

    #[test]
    fn a_retry_waits_its_delay_unless_asked_for_sooner() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.push("a");
        q.push("b");
        let a = q.pop(now).expect("a");
        let b = q.pop(now).expect("b");
        q.done(a, Some(Duration::from_secs(10)), now);
        q.done(b, Some(Duration::from_secs(5)), now);
        assert_eq!(q.pop(now), None);
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(5)));
        assert_eq!(q.pop(now + Duration::from_secs(5)), Some("b"));
        // Asked for now: the retry in 10 s is superseded, and does not run again later.
        q.push("a");
        assert_eq!(q.pop(now + Duration::from_secs(6)), Some("a"));
        q.done("a", None, now);
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.pop(now + Duration::from_secs(60)), None);
        // A later retry does not postpone an earlier one.
        q.push_at("c", now + Duration::from_secs(1));
        q.push_at("c", now + Duration::from_secs(30));
        assert_eq!(q.pop(now + Duration::from_secs(2)), Some("c"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_runner_bounds_concurrency_retries_and_finishes_work_on_shutdown() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let runs: Arc<Mutex<Vec<u32>>> = Arc::default();
        let (tx, rx) = futures::channel::mpsc::unbounded::<u32>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let work = {
            let (running, most, runs) = (running.clone(), most.clone(), runs.clone());
            move |key: u32| {
                let (running, most, runs) = (running.clone(), most.clone(), runs.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    let mut runs = runs.lock().expect("runs");
                    runs.push(key);
                    // Key 0 fails once: retried after a second.
                    (key == 0 && runs.iter().filter(|k| **k == 0).count() == 1)
                        .then_some(Duration::from_secs(1))
                }
            }
        };
        let runner = tokio::spawn(run(rx, 3, work, stop_rx.map(|_| ())));
        for k in 0..10 {
            tx.unbounded_send(k).expect("send");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(most.load(Ordering::SeqCst), 3, "at most 3 at once");
        {
            let runs = runs.lock().expect("runs");
            assert_eq!(runs.len(), 11, "ten keys, one retried: {runs:?}");
            assert_eq!(runs.iter().filter(|k| **k == 0).count(), 2);
        }
        // Shutdown while one runs: it finishes, nothing new starts.
        tx.unbounded_send(42).expect("send");
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop_tx.send(()).expect("stop");
        tx.unbounded_send(43).expect("send");
        runner.await.expect("runner");
        let runs = runs.lock().expect("runs");
        assert!(runs.contains(&42), "in flight at shutdown: finished");
        assert!(!runs.contains(&43), "asked for after shutdown: not started");
    }
}
