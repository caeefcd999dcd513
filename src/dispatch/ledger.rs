//! How publishing settles what is uncertain or failed: the broker's publish ledger (what an
//! earlier attempt or leader published but never recorded), runs the broker refused one by one,
//! and publishes that kept failing (DISPATCH_FAILED).

use chrono::Utc;
use tracing::{info, warn};

use super::{Dispatcher, RunAt, publisher::Publishing};
use crate::{
    celery::{PublishError, Rejected},
    metrics::METRICS,
    status::{JobEvent, JobRef, Reason},
    store::outbox::{self, Ended},
};

#[derive(Debug, thiserror::Error)]
pub(super) enum LedgerError {
    #[error("broker: {0}")]
    Broker(#[from] PublishError),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// PENDING executions checked against the broker per settle (Redis), oldest first.
const LEDGER_CANDIDATES: i64 = 20_000;
/// Longest error text stored on an execution.
const ERROR_MAX: usize = 2048;

impl Publishing<'_> {
    /// Record as DISPATCHED whatever the broker's ledger shows was published (by a leader that
    /// died before recording it, or by an attempt whose reply was lost), then drop the entries.
    pub(super) async fn settle_ledger(&self) -> Result<usize, LedgerError> {
        let (d, publisher) = (self.dispatcher, self.publisher);
        let candidates = if publisher.ledger_needs_candidates() {
            outbox::pending_task_ids(&d.pool, LEDGER_CANDIDATES).await?
        } else {
            Vec::new()
        };
        let read = publisher.read_ledger(&candidates, self.term.epoch).await?;
        let jobs = if read.task_ids.is_empty() {
            Vec::new()
        } else {
            match outbox::mark_dispatched_tasks(&d.pool, &read.task_ids, Utc::now()).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    publisher.return_ledger(read).await;
                    return Err(e.into());
                }
            }
        };
        publisher.ack_ledger(read).await?;
        if !jobs.is_empty() {
            METRICS.dispatched("published", jobs.len() as u64);
            info!(
                executions = jobs.len(),
                "already on the broker (publish ledger): recorded, not published again"
            );
            d.feed.touch_all(jobs.iter().copied());
        }
        Ok(jobs.len())
    }
}

impl Dispatcher {
    /// A publish of `ids` failed with `e`: record the attempt; those failing for longer than
    /// `publish_give_up` end as DISPATCH_FAILED, the rest are retried.
    pub(super) async fn publish_failed(&self, ids: &[i64], e: &PublishError) {
        let give_up_before = Utc::now() - self.publish_give_up;
        let why = e.to_string();
        let error = crate::tracker::decode::cut_front(&why, ERROR_MAX);
        warn!(error = %e, executions = ids.len(), "publish failed; will retry");
        match outbox::mark_publish_failed(&self.pool, ids, &error, give_up_before).await {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => {
                count_dispatch_failed(failed.len());
                warn!(
                    executions = failed.len(),
                    "publish kept failing: executions marked DISPATCH_FAILED"
                );
                self.report_ended(
                    &failed,
                    Reason::DispatchFailed,
                    &format!("not published: {e}"),
                );
            }
            // They stay PENDING and are tried again (and given up on then).
            Err(db) => warn!(error = %db, "recording the failed publish failed"),
        }
    }

    /// Runs the broker refused one by one (their queue cannot take a message) end here as
    /// DISPATCH_FAILED, with an Event and a metric; the rest of `batch` went out and is returned.
    pub(super) async fn reject(&self, batch: Vec<RunAt>, rejected: Vec<Rejected>) -> Vec<RunAt> {
        let mut why: std::collections::HashMap<usize, String> =
            rejected.into_iter().map(|r| (r.index, r.reason)).collect();
        let mut out = Vec::with_capacity(batch.len());
        let mut failed: Vec<(i64, String)> = Vec::new();
        for (i, run) in batch.into_iter().enumerate() {
            match why.remove(&i) {
                Some(reason) => failed.push((run.0, reason)),
                None => out.push(run),
            }
        }
        METRICS
            .job_failures
            .get_or_create(&crate::metrics::Category {
                category: "queue_rejected",
            })
            .inc_by(failed.len() as u64);
        // Grouped by reason (one per queue): one statement per bad queue, not per run.
        let mut by_reason: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for (id, reason) in failed {
            by_reason.entry(reason).or_default().push(id);
        }
        for (reason, ids) in by_reason {
            let error = crate::tracker::decode::cut_front(&reason, ERROR_MAX);
            match outbox::mark_dispatch_failed(&self.pool, &ids, &error).await {
                Ok(ended) => {
                    count_dispatch_failed(ended.len());
                    warn!(executions = ended.len(), error = %reason, "runs not published: marked DISPATCH_FAILED");
                    self.report_ended(
                        &ended,
                        Reason::DispatchFailed,
                        &format!("not published: {reason}"),
                    );
                }
                // Left PENDING: the next publish pass tries (and rejects) them again.
                Err(e) => warn!(error = %e, "recording rejected runs failed"),
            }
        }
        out
    }

    /// Status changes and an Event for each execution that ended in the dispatcher.
    pub(super) fn report_ended(&self, ended: &[Ended], reason: Reason, why: &str) {
        for x in ended {
            self.feed.touch(x.job_id);
            self.feed.event(JobEvent {
                job: JobRef {
                    namespace: x.namespace.clone(),
                    name: x.name.clone(),
                    uid: x.uid.clone(),
                },
                reason,
                message: format!(
                    "run {} (task {}): {why}",
                    crate::schedule::rfc3339(x.scheduled_for),
                    x.task_id
                ),
            });
        }
    }
}

fn count_dispatch_failed(n: usize) {
    METRICS.dispatched("dispatch_failed", n as u64);
    for _ in 0..n {
        METRICS.finished("DISPATCH_FAILED");
    }
}
