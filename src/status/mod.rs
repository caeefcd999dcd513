//! Status and Events (leader only, never on the dispatch path).
//!
//! The dispatcher, the result tracker and the reconciler report which jobs changed through a
//! [`Feed`]: bounded channels written with `try_send`, so a slow apiserver can never hold up a
//! dispatch. A full channel drops the notice (counted) and asks the writer for a full resync
//! from Postgres, so nothing is lost for good.
//!
//! The writer ([`writer`]) coalesces per job, paces its writes and skips what would change
//! nothing; the Events publisher ([`events`]) folds repeats. Their counters are reported to
//! [`crate::metrics`] by sampling ([`FeedStats`] is a [`crate::metrics::Sampler`]).

mod complete;
pub mod events;
pub mod health_monitor;
mod write_queue;
pub mod writer;

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::sync::mpsc;

pub use events::{JobEvent, JobRef, Reason};
pub use writer::{ShownStatus, WriterConfig, WriterSetup, run};

use crate::metrics::{Sample, SampleKind, Sampler};

/// Counters of the feed and the writer (exported as metrics).
#[derive(Debug, Default)]
pub struct FeedStats {
    pub status_dropped: AtomicU64,
    pub status_writes: AtomicU64,
    pub status_write_errors: AtomicU64,
    pub status_queue: AtomicU64,
    pub events_dropped: AtomicU64,
    pub events_folded: AtomicU64,
    pub events_published: AtomicU64,
    /// Set when a notice was dropped: the writer re-reads every job.
    resync: AtomicBool,
}

/// The producers' side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Feed {
    jobs: mpsc::Sender<i64>,
    events: mpsc::Sender<JobEvent>,
    pub stats: Arc<FeedStats>,
}

/// The consumers' side, handed to [`run`] and [`events::run`].
pub struct FeedReceivers {
    pub jobs: mpsc::Receiver<i64>,
    pub events: mpsc::Receiver<JobEvent>,
}

impl Feed {
    pub fn new(capacity: usize) -> (Feed, FeedReceivers) {
        let (jtx, jrx) = mpsc::channel(capacity.max(1));
        let (etx, erx) = mpsc::channel(capacity.clamp(1, 4096));
        (
            Feed {
                jobs: jtx,
                events: etx,
                stats: Arc::default(),
            },
            FeedReceivers {
                jobs: jrx,
                events: erx,
            },
        )
    }

    /// The job's status may have changed.
    pub fn touch(&self, job_id: i64) {
        if self.jobs.try_send(job_id).is_err() {
            self.stats.status_dropped.fetch_add(1, Ordering::Relaxed);
            self.stats.resync.store(true, Ordering::Relaxed);
        }
    }

    pub fn touch_all(&self, job_ids: impl IntoIterator<Item = i64>) {
        for id in job_ids {
            self.touch(id);
        }
    }

    /// Something worth a Kubernetes Event happened.
    pub fn event(&self, ev: JobEvent) {
        if self.events.try_send(ev).is_err() {
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Sampler for FeedStats {
    fn samples(&self) -> Vec<Sample> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (gauge, counter) = (SampleKind::Gauge, SampleKind::Counter);
        vec![
            Sample {
                name: "status_queue_depth",
                help: "Jobs waiting for a status write",
                kind: gauge,
                value: load(&self.status_queue),
            },
            Sample {
                name: "status_writes",
                help: "Status patches written",
                kind: counter,
                value: load(&self.status_writes),
            },
            Sample {
                name: "status_write_errors",
                help: "Status patches that failed (retried)",
                kind: counter,
                value: load(&self.status_write_errors),
            },
            Sample {
                name: "status_notices_dropped",
                help: "Status notices dropped because the queue was full (a full resync follows)",
                kind: counter,
                value: load(&self.status_dropped),
            },
            Sample {
                name: "events_published",
                help: "Kubernetes Events published",
                kind: counter,
                value: load(&self.events_published),
            },
            Sample {
                name: "events_folded",
                help: "Events folded into a later one (per job and reason interval)",
                kind: counter,
                value: load(&self.events_folded),
            },
            Sample {
                name: "events_dropped",
                help: "Events dropped (queue full or the apiserver refused them)",
                kind: counter,
                value: load(&self.events_dropped),
            },
        ]
    }
}
