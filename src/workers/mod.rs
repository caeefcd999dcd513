//! Which Celery workers are there, and what they run: the leader's worker probe (issue #26,
//! "Celery-aware preflight"). Every `--worker-probe-seconds` it asks the workers through Celery's
//! remote control ([`crate::celery::inspect`]), asks the broker for each queue's consumers, and
//!
//! - publishes the result, a [`Census`], on a watch channel ([`CensusWatch`]) for other parts
//!   (the job health monitor);
//! - writes each TaskFunction's `status.workers` and condition `WorkersReady` ([`readiness`]),
//!   by server-side apply under its own field manager [`FIELD_MANAGER`];
//! - exports `kube_beat_workers{queue}` and `kube_beat_task_registered{task_function}`.

mod probe;
pub mod readiness;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};

pub use crate::celery::WorkerReport;
pub use probe::{ProbeConfig, run};
pub use readiness::{Readiness, WORKERS_READY, readiness};

/// The field manager of the probe's status applies (`status.workers`, the `WorkersReady`
/// condition): a manager of its own, so the reconciler's apply (`Ready`, `jobCount`) and this one
/// never drop each other's fields.
pub const FIELD_MANAGER: &str = "kube-beat-workers";

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    pub taken_at: DateTime<Utc>,
    /// The workers that answered both questions within the wait.
    pub workers: Vec<WorkerReport>,
    /// The broker's consumer count per queue asked about: RabbitMQ counts; on Redis `Some(0)`
    /// means no Celery worker ever declared the queue and `None` that consumers cannot be counted
    /// (see [`crate::celery::Publisher::queue_consumers`]).
    pub consumers: HashMap<String, Option<u32>>,
    /// `redis` or `amqp`.
    pub broker: &'static str,
}

/// The latest census (`None` until the first probe as leader, and again while not leading).
pub type CensusWatch = tokio::sync::watch::Receiver<Option<Arc<Census>>>;

/// The health monitor's view of the workers for a job's `task` on `queue`: the [`readiness`]
/// of the latest census, `Unknown` without one or when it is older than `max_age` (the probe has
/// been failing: stale knowledge is no reason for an alarm). `NoConsumer` is the job's
/// `NoWorkers`.
pub fn worker_signal(
    census: Option<&Census>,
    task: &str,
    queue: &str,
    now: DateTime<Utc>,
    max_age: chrono::Duration,
) -> crate::health::WorkerSignal {
    use crate::health::WorkerSignal;
    let Some(census) = census.filter(|c| now.signed_duration_since(c.taken_at) <= max_age) else {
        return WorkerSignal::Unknown;
    };
    match readiness(census, task, queue) {
        Readiness::Ready { .. } => WorkerSignal::Ready,
        Readiness::NoConsumer { message } => WorkerSignal::NoWorkers(message),
        Readiness::TaskNotRegistered { message } => WorkerSignal::TaskNotRegistered(message),
        Readiness::Unknown { .. } => WorkerSignal::Unknown,
    }
}

/// The channel the probe publishes on.
pub fn census_channel() -> (tokio::sync::watch::Sender<Option<Arc<Census>>>, CensusWatch) {
    tokio::sync::watch::channel(None)
}
