//! Published runs recorded as DISPATCHED in the background, while the next runs go out.
//!
//! One writer at a time takes every batch published since its last write and records them in
//! one statement (up to [`MARK_MAX`] runs). A statement per published batch, one after another,
//! fell behind at 100,000 jobs a minute (1,667 runs/s, a few dozen per batch): each commit
//! waited for Postgres's WAL flush, the queue grew to seconds, and the publisher, which waits
//! for it before reading the outbox again, stopped publishing for that long.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::Notify;

/// Runs published together, and when.
pub(super) type Published = (Vec<i64>, DateTime<Utc>);

/// Runs recorded in one statement at most: what a burst's chunk is by default. A burst's
/// batches are still recorded a chunk at a time; a steady load's small ones together.
const MARK_MAX: usize = 5_000;

/// Records published batches; returns whether it succeeded.
pub(super) type Write = Arc<dyn Fn(Vec<Published>) -> BoxFuture<'static, bool> + Send + Sync>;

#[derive(Default)]
struct Queue {
    batches: Vec<Published>,
    /// A writer task is running (it takes what is queued until nothing is).
    writing: bool,
    /// A write failed since the last flush.
    failed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Told when a writer stops with nothing queued.
    idle: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is only pushed to and taken from: a panic elsewhere leaves it consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Published runs being recorded as DISPATCHED in the background. Until they are recorded
/// these runs are still PENDING, so the outbox is read again only after [`Recorder::flush`].
pub(super) struct Recorder {
    shared: Arc<Shared>,
    write: Write,
}

impl Recorder {
    pub(super) fn new(write: Write) -> Self {
        Recorder {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                idle: Notify::new(),
            }),
            write,
        }
    }

    /// Record a batch, with whatever else is waiting, after those being recorded now.
    pub(super) fn push(&mut self, batch: Published) {
        let start = {
            let mut q = self.shared.lock();
            q.batches.push(batch);
            !std::mem::replace(&mut q.writing, true)
        };
        if start {
            tokio::spawn(writer(self.shared.clone(), self.write.clone()));
        }
    }

    /// Wait until every batch pushed is recorded; false if any failed to be since the last
    /// flush (those runs are still PENDING, though published: the publish record settles them).
    pub(super) async fn flush(&mut self) -> bool {
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            // Registered before looking, so a writer stopping in between is not missed.
            idle.as_mut().enable();
            {
                let mut q = self.shared.lock();
                if !q.writing {
                    return !std::mem::take(&mut q.failed);
                }
            }
            idle.await;
        }
    }
}

/// Takes and records what is queued until nothing is. A write that panics is a failed write
/// (its runs stay PENDING for the publish record to settle); the batches after it are still
/// written, as when each batch had a task of its own.
async fn writer(shared: Arc<Shared>, write: Write) {
    use futures::FutureExt;
    loop {
        let batches = {
            let mut q = shared.lock();
            let take = take_upto(&q.batches, MARK_MAX);
            if take == 0 {
                // Cleared under the same lock a push looks at: a push after this starts a
                // writer of its own, and nothing pushed before it is left behind.
                q.writing = false;
                break;
            }
            q.batches.drain(..take).collect::<Vec<_>>()
        };
        let ok = std::panic::AssertUnwindSafe(write(batches))
            .catch_unwind()
            .await
            .unwrap_or(false);
        if !ok {
            shared.lock().failed = true;
        }
    }
    shared.idle.notify_waiters();
}

/// How many of the first batches go in one write: whole batches up to `max` runs, at least one.
fn take_upto(batches: &[Published], max: usize) -> usize {
    let mut runs = 0usize;
    for (i, (ids, _)) in batches.iter().enumerate() {
        runs = runs.saturating_add(ids.len());
        if runs > max && i > 0 {
            return i;
        }
    }
    batches.len()
}

/// Record published runs as DISPATCHED (each batch at the time it went out), log each and
/// report its job's status change. Returns whether they were recorded (if not, they stay
/// PENDING until the publish record settles them).
pub(super) async fn mark_published(
    pool: sqlx::PgPool,
    feed: crate::status::Feed,
    batches: Vec<Published>,
) -> bool {
    let runs: Vec<(i64, DateTime<Utc>)> = batches
        .into_iter()
        .flat_map(|(ids, at)| ids.into_iter().map(move |id| (id, at)))
        .collect();
    let marked = match crate::store::outbox::mark_dispatched(&pool, &runs).await {
        Ok(marked) => marked,
        Err(e) => {
            tracing::warn!(error = %e, "marking executions dispatched failed; the publish record settles them");
            return false;
        }
    };
    crate::metrics::METRICS.dispatched("published", runs.len() as u64);
    for p in &marked {
        feed.touch(p.job_id);
        tracing::info!(job = %format!("{}/{}", p.namespace, p.name), task = %p.task_name,
              task_id = %p.task_id, slot = %crate::schedule::rfc3339(p.scheduled_for),
              trigger = %p.trigger, "Dispatched job");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The ids each write got, in order.
    type Writes = Arc<Mutex<Vec<Vec<i64>>>>;

    /// A writer that records what each write got, waits `delay` each time, and fails a write
    /// that includes run `fail`.
    fn recording(delay: Duration, fail: i64) -> (Write, Writes, Arc<Notify>) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(Notify::new());
        let (w, s) = (writes.clone(), started.clone());
        let write: Write = Arc::new(move |batches: Vec<Published>| {
            let (w, s) = (w.clone(), s.clone());
            Box::pin(async move {
                s.notify_one();
                tokio::time::sleep(delay).await;
                let ids: Vec<i64> = batches.into_iter().flat_map(|(ids, _)| ids).collect();
                let ok = !ids.contains(&fail);
                w.lock().expect("lock").push(ids);
                ok
            })
        });
        (write, writes, started)
    }

    fn at() -> DateTime<Utc> {
        Utc::now()
    }

    #[tokio::test]
    async fn batches_pushed_while_one_is_recorded_go_together_in_order() {
        let (write, writes, started) = recording(Duration::from_millis(50), -1);
        let mut marks = Recorder::new(write);
        assert!(marks.flush().await, "nothing pushed");
        marks.push((vec![1, 2], at()));
        started.notified().await; // the first write is under way
        for i in 3..=6 {
            marks.push((vec![i], at()));
        }
        assert!(marks.flush().await);
        assert_eq!(
            *writes.lock().expect("lock"),
            vec![vec![1, 2], vec![3, 4, 5, 6]],
            "the four pushed during the first write in one, after it"
        );
        // Nothing is left behind once the writer has stopped: a later push starts another.
        marks.push((vec![7], at()));
        assert!(marks.flush().await);
        assert_eq!(writes.lock().expect("lock").last(), Some(&vec![7]));
    }

    #[tokio::test]
    async fn a_failure_is_reported_by_the_next_flush_once() {
        let (write, _, started) = recording(Duration::from_millis(20), 2);
        let mut marks = Recorder::new(write);
        marks.push((vec![1], at()));
        started.notified().await;
        marks.push((vec![2], at()));
        marks.push((vec![3], at()));
        assert!(!marks.flush().await, "the write with run 2 failed");
        marks.push((vec![4], at()));
        assert!(marks.flush().await, "a failure is reported once");
    }

    #[tokio::test]
    async fn a_write_that_panics_is_a_failure_and_the_batches_after_it_are_still_written() {
        let writes: Writes = Arc::new(Mutex::new(Vec::new()));
        let w = writes.clone();
        // Each batch on its own (one run each, more than MARK_MAX together is not needed:
        // the first write is under way when the rest are pushed).
        let write: Write = Arc::new(move |batches: Vec<Published>| {
            let w = w.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let ids: Vec<i64> = batches.into_iter().flat_map(|(ids, _)| ids).collect();
                if ids.contains(&1) {
                    panic!("boom");
                }
                w.lock().expect("lock").push(ids);
                true
            })
        });
        let mut marks = Recorder::new(write);
        marks.push((vec![1], at()));
        tokio::time::sleep(Duration::from_millis(5)).await; // the first write is under way
        marks.push((vec![2], at()));
        marks.push((vec![3], at()));
        let flushed = tokio::time::timeout(Duration::from_secs(5), marks.flush()).await;
        assert_eq!(
            flushed.ok(),
            Some(false),
            "the panic is a failure, not a hang"
        );
        assert_eq!(
            *writes.lock().expect("lock"),
            vec![vec![2, 3]],
            "what was queued behind it is written"
        );
        marks.push((vec![4], at()));
        assert!(marks.flush().await);
    }

    #[test]
    fn a_write_takes_whole_batches_up_to_the_most_runs() {
        let b = |n: usize| (vec![0i64; n], at());
        assert_eq!(take_upto(&[], 10), 0);
        assert_eq!(take_upto(&[b(3), b(3), b(3), b(3)], 10), 3);
        assert_eq!(take_upto(&[b(3), b(7), b(1)], 10), 2);
        // A batch larger than the most still goes, alone.
        assert_eq!(take_upto(&[b(12), b(1)], 10), 1);
        assert_eq!(take_upto(&[b(1), b(12)], 10), 1);
    }
}
