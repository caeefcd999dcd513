//! The dispatcher (leader only): claim due slots in batches, then publish them (transactional
//! outbox). It sleeps until the earliest due time or until something changes, never on a tick,
//! and nothing here waits for the Kubernetes API.

pub mod claim;
pub mod plan;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::{
    celery::{Publisher, TaskMessage},
    leader::Role,
    status::{Feed, JobEvent, Reason},
};

/// Jobs claimed per transaction.
const CLAIM_BATCH: i64 = 1000;
/// Executions published per round trip.
const PUBLISH_BATCH: i64 = 1000;
/// A publish that takes longer than this is treated as failed (and retried).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sleep between checks, so a missed wake-up costs at most this.
const MAX_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum LedgerError {
    #[error("broker: {0}")]
    Broker(#[from] crate::celery::PublishError),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// PENDING executions checked against the broker per settle (Redis), oldest first.
const LEDGER_CANDIDATES: i64 = 20_000;

/// How often the publish ledger is drained even when nothing is uncertain (keeps it short, so
/// the read after a failover is quick).
const LEDGER_DRAIN: Duration = Duration::from_secs(60);

pub struct Dispatcher {
    pub pool: PgPool,
    /// `None` in shadow mode: SHADOW executions are recorded, nothing is published.
    pub publisher: Option<Publisher>,
    pub identity: String,
    pub role: watch::Receiver<Role>,
    /// Poked by the reconciler when a job or a manual trigger changes what is due.
    pub wake: Arc<Notify>,
    /// How long a claimed execution may keep failing to publish before DISPATCH_FAILED.
    pub publish_give_up: chrono::Duration,
    /// Where status changes and Events are reported (never blocks).
    pub feed: Feed,
}

impl Dispatcher {
    pub fn shadow(&self) -> bool {
        self.publisher.is_none()
    }

    /// Run until `stop` flips.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            // Wait to lead.
            let epoch = loop {
                if let Some(e) = self.role.borrow().epoch() {
                    break e;
                }
                tokio::select! {
                    _ = self.role.changed() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            };
            info!(identity = %self.identity, epoch, "dispatcher active");
            // Claiming and publishing run side by side: a slow or unreachable broker must not
            // delay claims (slots keep their own execution, published when the broker is back).
            // The term ends for both loops when either ends. A claim cut off mid-transaction
            // is rolled back by Postgres within idle_in_transaction_session_timeout (5 s).
            let published = Notify::new();
            let role = self.role.clone();
            let leading = move || role.borrow().epoch() == Some(epoch);
            tokio::select! {
                _ = self.claim_loop(epoch, &published, &leading) => {}
                _ = self.publish_loop(&published, &leading) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            info!(identity = %self.identity, epoch, "dispatcher stopped: not the leader");
        }
    }

    /// Claim due slots until leadership ends.
    async fn claim_loop(&self, epoch: i64, published: &Notify, leading: &impl Fn() -> bool) {
        let mut role = self.role.clone();
        while leading() {
            match claim::claim_due(&self.pool, epoch, CLAIM_BATCH, Utc::now(), self.shadow()).await
            {
                Ok(stats) => {
                    let m = &crate::metrics::METRICS;
                    if stats.jobs > 0 {
                        m.claim_batch.observe(stats.jobs as f64);
                    }
                    m.dispatched("missed", stats.missed as u64);
                    m.dispatched("skipped", stats.skipped as u64);
                    m.dispatched("replaced", stats.revoked.len() as u64);
                    self.feed.touch_all(stats.job_ids.iter().copied());
                    for ev in &stats.events {
                        self.feed.event(ev.clone());
                    }
                    if !stats.revoked.is_empty() {
                        self.revoke(&stats.revoked).await;
                    }
                    if stats.jobs > 0 {
                        crate::failpoint::hit(crate::failpoint::Point::ClaimBeforePublish);
                        tracing::debug!(?stats, "claimed");
                        published.notify_one();
                    }
                    if stats.jobs as i64 == CLAIM_BATCH {
                        continue; // more are due right now
                    }
                }
                Err(claim::ClaimError::Fenced { ours, current }) => {
                    warn!(
                        ours,
                        current, "claim rejected by fencing: no longer the leader"
                    );
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "claim failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            let idle = match claim::next_due(&self.pool).await {
                Ok(Some(t)) => (t - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_IDLE),
                Ok(None) => MAX_IDLE,
                Err(_) => Duration::from_secs(1),
            };
            if idle.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = self.wake.notified() => published.notify_one(), // a manual trigger may wait
                _ = role.changed() => {}
            }
        }
    }

    /// Broadcast Celery revocations for runs replaced under `concurrencyPolicy: Replace`.
    async fn revoke(&self, task_ids: &[String]) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.revoke(task_ids)).await {
            Ok(Ok(())) => info!(task_ids = ?task_ids, "revoked runs replaced by newer ones"),
            Ok(Err(e)) => warn!(error = %e, task_ids = ?task_ids, "revoke broadcast failed"),
            Err(_) => warn!(task_ids = ?task_ids, "revoke broadcast timed out"),
        }
    }

    /// Publish the outbox whenever claims arrive, retrying failures, until leadership ends.
    /// Starts with whatever an earlier leader left unpublished (same Celery task ids).
    async fn publish_loop(&self, published: &Notify, leading: &impl Fn() -> bool) {
        // A new term starts uncertain: the last leader may have published batches it never
        // recorded (on RabbitMQ, the ledger says which).
        let uncertain = AtomicBool::new(true);
        let mut drained = std::time::Instant::now();
        while leading() {
            if drained.elapsed() > LEDGER_DRAIN {
                uncertain.store(true, Ordering::Relaxed);
                drained = std::time::Instant::now();
            }
            let backlog = self.publish_pending(&uncertain, leading).await;
            let wait = if backlog {
                Duration::from_secs(1)
            } else {
                MAX_IDLE
            };
            tokio::select! {
                _ = published.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publish every PENDING execution (ours and earlier leaders'), a batch per round trip.
    /// Returns whether some are left (a failure to retry soon). `uncertain`: some PENDING
    /// executions may be on the broker already (set after a failed publish).
    async fn publish_pending(&self, uncertain: &AtomicBool, leading: &impl Fn() -> bool) -> bool {
        let Some(publisher) = &self.publisher else {
            return false;
        };
        loop {
            // Re-check before each batch: a paused process must not publish after waking up
            // past its lease, nor a fenced one (this narrows the publish window too).
            if !leading() {
                return false;
            }
            // Before anything is re-published, or expired as too late: what is already out?
            if uncertain.load(Ordering::Relaxed)
                && let Err(e) = self.settle_ledger(publisher).await
            {
                warn!(error = %e, "reading the publish ledger failed; will retry");
                return true;
            }
            uncertain.store(false, Ordering::Relaxed);
            match claim::expire_pending(&self.pool, Utc::now()).await {
                Ok(ended) if ended.is_empty() => {}
                Ok(ended) => {
                    crate::metrics::METRICS.dispatched("missed", ended.len() as u64);
                    warn!(
                        executions = ended.len(),
                        "not published within startingDeadlineSeconds: recorded as MISSED"
                    );
                    self.report_ended(
                        &ended,
                        Reason::Missed,
                        "not published within startingDeadlineSeconds",
                    );
                }
                Err(e) => warn!(error = %e, "expiring late executions failed"),
            }
            let batch = match claim::pending(&self.pool, PUBLISH_BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "reading the outbox failed");
                    return true;
                }
            };
            if batch.is_empty() {
                return false;
            }
            let messages: Vec<TaskMessage> = batch.iter().map(|p| self.message(p)).collect();
            let ids: Vec<i64> = batch.iter().map(|p| p.id).collect();
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(&messages))
                .await
                .unwrap_or_else(|_| Err(crate::celery::PublishError::Timeout(PUBLISH_TIMEOUT)));
            crate::metrics::METRICS
                .publish_duration
                .get_or_create(&crate::metrics::Broker {
                    broker: publisher.kind(),
                })
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                Ok(()) => {
                    if let Err(e) = claim::mark_dispatched(&self.pool, &ids, Utc::now()).await {
                        uncertain.store(true, Ordering::Relaxed);
                        warn!(error = %e, "marking executions dispatched failed; they will be re-published");
                        return true;
                    }
                    let m = &crate::metrics::METRICS;
                    m.dispatched("published", batch.len() as u64);
                    let now = Utc::now();
                    for p in &batch {
                        let lag = (now - p.scheduled_for).num_microseconds().unwrap_or(0);
                        m.dispatch_lag.observe(lag.max(0) as f64 / 1e6);
                        self.feed.touch(p.job_id);
                        info!(job = %format!("{}/{}", p.namespace, p.name), task = %p.task_name,
                              task_id = %p.task_id, slot = %crate::schedule::rfc3339(p.scheduled_for),
                              trigger = %p.trigger, "Dispatched job");
                    }
                    if (batch.len() as i64) < PUBLISH_BATCH {
                        return false;
                    }
                }
                Err(e) => {
                    uncertain.store(true, Ordering::Relaxed);
                    let give_up_before = Utc::now() - self.publish_give_up;
                    let failed = claim::mark_publish_failed(
                        &self.pool,
                        &ids,
                        &e.to_string(),
                        give_up_before,
                    )
                    .await
                    .unwrap_or_default();
                    warn!(error = %e, executions = ids.len(), "publish failed; will retry");
                    if !failed.is_empty() {
                        let m = &crate::metrics::METRICS;
                        m.dispatched("dispatch_failed", failed.len() as u64);
                        for _ in &failed {
                            m.finished("DISPATCH_FAILED");
                        }
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
                    return true;
                }
            }
        }
    }

    /// Record as DISPATCHED whatever the broker's ledger shows was published (by a leader that
    /// died before recording it, or by an attempt whose reply was lost), then drop the entries.
    async fn settle_ledger(&self, publisher: &Publisher) -> Result<usize, LedgerError> {
        let candidates = if publisher.ledger_needs_candidates() {
            claim::pending_task_ids(&self.pool, LEDGER_CANDIDATES).await?
        } else {
            Vec::new()
        };
        let read = publisher.read_ledger(&candidates).await?;
        let jobs = if read.task_ids.is_empty() {
            Vec::new()
        } else {
            match claim::mark_dispatched_tasks(&self.pool, &read.task_ids, Utc::now()).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    publisher.return_ledger(read).await;
                    return Err(e.into());
                }
            }
        };
        publisher.ack_ledger(read).await?;
        if !jobs.is_empty() {
            crate::metrics::METRICS.dispatched("published", jobs.len() as u64);
            info!(
                executions = jobs.len(),
                "already on the broker (publish ledger): recorded, not published again"
            );
            self.feed.touch_all(jobs.iter().copied());
        }
        Ok(jobs.len())
    }

    fn report_ended(&self, ended: &[claim::Ended], reason: Reason, why: &str) {
        for x in ended {
            self.feed.touch(x.job_id);
            self.feed.event(JobEvent {
                job: x.job(),
                reason,
                message: format!(
                    "run {} (task {}): {why}",
                    crate::schedule::rfc3339(x.scheduled_for),
                    x.task_id
                ),
            });
        }
    }

    fn message(&self, p: &claim::Pending) -> TaskMessage {
        let args = match &p.args {
            Value::Array(a) => a.clone(),
            _ => Vec::new(),
        };
        let kwargs = match &p.kwargs {
            Value::Object(o) => o.clone(),
            _ => serde_json::Map::new(),
        };
        TaskMessage {
            id: p.task_id.clone(),
            task: p.task_name.clone(),
            args,
            kwargs,
            queue: p.queue.clone(),
            priority: p.priority.and_then(|v| u8::try_from(v).ok()),
            expires: p
                .expires_seconds
                .map(|s| Utc::now() + chrono::Duration::seconds(s)),
            origin: format!("kube-beat@{}", self.identity),
            extra_headers: vec![
                ("kubebeat_job".into(), format!("{}/{}", p.namespace, p.name)),
                (
                    "kubebeat_slot".into(),
                    crate::schedule::rfc3339(p.scheduled_for),
                ),
                ("kubebeat_trigger".into(), p.trigger.clone()),
            ],
        }
    }
}
