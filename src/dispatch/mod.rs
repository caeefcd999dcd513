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

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::{
    celery::{Encoding, Prepared, Publisher, TaskMessage},
    leader::Role,
    status::{Feed, JobEvent, Reason},
};

/// Postgres connections of the dispatcher's own (`store::dedicated`): one each for the claim and
/// publish loops, one for a burst's reader, and one for recording published runs meanwhile.
pub const CONNECTIONS: u32 = 4;
/// Jobs claimed per transaction.
const CLAIM_BATCH: i64 = 1000;
/// How long before its time a run (of an Allow job) is claimed, and the publisher then reads
/// and encodes it: a burst due in the same second is then only published at its time. A run
/// is fixed this long ahead (a job suspended or deleted in these last seconds still runs
/// once), or up to [`MAX_CLAIM_AHEAD`] in a burst too large to claim in this time.
pub const LOOKAHEAD: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// How far ahead claims may reach when more runs come due together than [`LOOKAHEAD`] leaves
/// time to claim (see [`claim_horizon`]): 100,000 runs due together took 27 s to claim on 2
/// cores (274 µs each, beside the publisher).
pub const MAX_CLAIM_AHEAD: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Claim cost per job assumed until claims have been timed (measured ~100 µs on 2 cores).
const CLAIM_COST_GUESS: Duration = Duration::from_micros(200);
/// How often the runs coming due are counted to size the claim horizon.
const HORIZON_EVERY: Duration = Duration::from_secs(1);
/// Runs read from the outbox and held for their time at once. Beyond the earliest
/// [`CHUNKS_AHEAD`] chunks a held run is its id and time (an encoded one is ~1 KB):
/// everything claimed for 100,000 jobs due together fits.
const HOLD_MAX: i64 = 120_000;
/// Runs per publish in a burst (the default of [`Dispatcher::publish_chunk`]). A chunk in
/// memory is its envelopes (~5 MB for 5,000) while it is read, encoded and published; the
/// Redis client holds one LPUSH of them at a time (see `celery::redis_publish`). A burst holds
/// up to four chunks at once (see `publish_stream`), so the chunk sets its peak: chunks of
/// 10,000 took a 100,000-run burst to 158 MiB, of 5,000 to ~130 MiB.
pub const PUBLISH_CHUNK: usize = 5_000;
/// Chunks encoded before their time, the earliest runs first: a burst starts going out at once,
/// while the rest are read and encoded. Two: a burst of 10,000 is then all encoded when due.
const CHUNKS_AHEAD: usize = 2;
/// Rows read at a time when reading ahead: each is encoded before the next are read, so their
/// rows (~600 bytes each) are never all in memory beside the messages.
const READ_AHEAD_BATCH: usize = 1_000;
/// While waiting for held runs to come due, newer claims are read too if the wait is longer.
const REFETCH_MIN: Duration = Duration::from_millis(100);
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
    /// Runs per publish in a burst: one chunk is published while the next is encoded, and
    /// each is recorded in the background while the following ones go out.
    pub publish_chunk: usize,
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
                _ = self.publish_loop(epoch, &published, &leading) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            info!(identity = %self.identity, epoch, "dispatcher stopped: not the leader");
        }
    }

    /// Claim due slots until leadership ends.
    async fn claim_loop(&self, epoch: i64, published: &Notify, leading: &impl Fn() -> bool) {
        let mut role = self.role.clone();
        // Shadow mode claims nothing ahead: its SHADOW rows would take the next runs from the
        // live operator that replaces it at cutover.
        let mut ahead = if self.shadow() {
            chrono::Duration::zero()
        } else {
            LOOKAHEAD
        };
        let mut cost = CLAIM_COST_GUESS;
        let mut sized: Option<std::time::Instant> = None;
        while leading() {
            // A burst too large to claim within LOOKAHEAD starts being claimed earlier.
            if !self.shadow() && sized.is_none_or(|t| t.elapsed() >= HORIZON_EVERY) {
                sized = Some(std::time::Instant::now());
                match claim::coming_due(&self.pool, Utc::now() + MAX_CLAIM_AHEAD).await {
                    Ok(n) => ahead = claim_horizon(n, cost),
                    Err(e) => warn!(error = %e, "counting the runs coming due failed"),
                }
            }
            let started = std::time::Instant::now();
            match claim::claim_due(
                &self.pool,
                epoch,
                CLAIM_BATCH,
                Utc::now(),
                ahead,
                self.shadow(),
            )
            .await
            {
                Ok(stats) => {
                    let m = &crate::metrics::METRICS;
                    if stats.jobs > 0 {
                        m.claim_batch.observe(stats.jobs as f64);
                        m.claim_duration.observe(started.elapsed().as_secs_f64());
                    }
                    if stats.jobs >= 100 {
                        let per_job = started.elapsed() / stats.jobs as u32;
                        cost = cost.saturating_mul(3).saturating_add(per_job) / 4;
                    }
                    m.dispatched("missed", stats.missed as u64);
                    m.dispatched("skipped", stats.skipped as u64);
                    m.dispatched("replaced", stats.revoked.len() as u64);
                    // A run claimed ahead shows in status once it is published.
                    if stats.due_now > 0 {
                        self.feed.touch_all(stats.job_ids.iter().copied());
                    }
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
            let idle = match claim::next_claim(&self.pool, ahead).await {
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
    async fn publish_loop(&self, epoch: i64, published: &Notify, leading: &impl Fn() -> bool) {
        // A new term starts uncertain: the last leader may have published batches it never
        // recorded (on RabbitMQ, the ledger says which).
        let uncertain = AtomicBool::new(true);
        let mut marks = Marks::default();
        let mut drained = std::time::Instant::now();
        while leading() {
            if drained.elapsed() > LEDGER_DRAIN {
                uncertain.store(true, Ordering::Relaxed);
                drained = std::time::Instant::now();
            }
            let backlog = self
                .publish_pending(epoch, &uncertain, leading, published, &mut marks)
                .await;
            let wait = if backlog {
                Duration::from_secs(1)
            } else {
                self.until_next_read().await
            };
            tokio::select! {
                _ = published.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long until the earliest PENDING run may be read into the outbox (it is read as soon
    /// as it is claimed; a claim wakes the publisher sooner).
    async fn until_next_read(&self) -> Duration {
        if self.shadow() {
            return MAX_IDLE; // publishes nothing
        }
        match claim::next_pending(&self.pool).await {
            // Never a busy loop: at least a few milliseconds (a claim wakes it sooner).
            Ok(Some(t)) => (t - MAX_CLAIM_AHEAD - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(10), MAX_IDLE),
            Ok(None) => MAX_IDLE,
            Err(_) => Duration::from_secs(1),
        }
    }

    /// Publish every PENDING execution (ours and earlier leaders'), each when it is due: runs
    /// are read as soon as they are claimed (up to [`HOLD_MAX`]), the earliest encoded, and
    /// held until their time. Returns whether some are left (a failure to retry soon).
    /// `uncertain`: some PENDING executions may be on the broker already (set after a failed
    /// publish or record).
    async fn publish_pending(
        &self,
        epoch: i64,
        uncertain: &AtomicBool,
        leading: &impl Fn() -> bool,
        published: &Notify,
        marks: &mut Marks,
    ) -> bool {
        let Some(publisher) = &self.publisher else {
            return false;
        };
        let encoder = Encoder {
            encoding: publisher.encoding(),
            origin: format!("kube-beat@{}", self.identity),
        };
        loop {
            // Re-check before each batch: a paused process must not publish after waking up
            // past its lease, nor a fenced one (this narrows the publish window too).
            if !leading() {
                return false;
            }
            // Reads below must not see a published run still PENDING (its record in flight).
            if !marks.flush().await {
                uncertain.store(true, Ordering::Relaxed);
            }
            // Before anything is re-published, or expired as too late: what is already out?
            if uncertain.load(Ordering::Relaxed)
                && let Err(e) = self.settle_ledger(publisher, epoch).await
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
            let horizon = Utc::now() + MAX_CLAIM_AHEAD;
            let batch = match claim::pending_ids(&self.pool, HOLD_MAX, horizon, None).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "reading the outbox failed");
                    return true;
                }
            };
            if batch.is_empty() {
                return false;
            }
            let mut held = Held::new(batch);
            while let Some(first_due) = held.first_due() {
                self.load_ahead(&mut held, CHUNKS_AHEAD * self.publish_chunk, &encoder)
                    .await;
                let wait = (first_due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // Newly claimed runs (maybe due sooner).
                        _ = published.notified(), if wait > REFETCH_MIN => {
                            if !marks.flush().await {
                                uncertain.store(true, Ordering::Relaxed);
                                break; // settle first
                            }
                            self.read_newer(&mut held).await;
                            continue;
                        }
                    }
                    if !leading() {
                        return false;
                    }
                }
                let woke = Utc::now();
                let due = held.take_due(woke);
                debug!(late = %(woke - first_due), runs = due.len(), held = held.len(), "runs due");
                if due.is_empty() {
                    continue; // woke a little early: never publish before the run's time
                }
                if !self
                    .publish_stream(publisher, due, &encoder, uncertain, epoch, marks, leading)
                    .await
                {
                    return true;
                }
            }
        }
    }

    /// Add to `held` the runs claimed since it was read: only what it does not hold yet, within
    /// the outbox's memory bound.
    async fn read_newer(&self, held: &mut Held) {
        let room = HOLD_MAX - held.len() as i64;
        if room <= 0 {
            return;
        }
        let now = Utc::now();
        let after = Some((held.max_id(), now));
        match claim::pending_ids(&self.pool, room, now + MAX_CLAIM_AHEAD, after).await {
            Ok(newer) => held.add(newer),
            Err(e) => warn!(error = %e, "reading the outbox failed"),
        }
    }

    /// Read and encode the earliest `n` held runs, so they go out as soon as they are due.
    async fn load_ahead(&self, held: &mut Held, n: usize, encoder: &Encoder) {
        let ids = held.unloaded(n);
        for batch in ids.chunks(READ_AHEAD_BATCH) {
            match claim::pending_by_ids(&self.pool, batch).await {
                Ok(rows) => held.attach(batch, rows),
                // They are read again when they go out.
                Err(e) => {
                    warn!(error = %e, "reading held runs failed");
                    break;
                }
            }
            held.encode_ahead(n, encoder);
        }
        held.encode_ahead(n, encoder);
    }

    /// Publish runs that are due, [`Dispatcher::publish_chunk`] at a time. Runs read ahead go
    /// first; the rest are read in one query, streamed, and encoded row by row by a task of
    /// their own, which hands chunks to the publisher through a channel of one: a burst holds
    /// at most those read ahead, one handed over and one being encoded. They are
    /// recorded as DISPATCHED in the background once the burst is out, so Postgres does not
    /// compete with it for the CPU. Returns whether all were published.
    ///
    /// One query rather than one per chunk: Postgres then spends ~3.7 µs a row instead of ~7
    /// (measured on 95,000 runs), and the chunk-by-chunk reads were what set a burst's pace.
    /// The rows come in Postgres's order, not by due time: everything in a burst is due already.
    #[allow(clippy::too_many_arguments)]
    async fn publish_stream(
        &self,
        publisher: &Publisher,
        due: Vec<HeldRun>,
        encoder: &Encoder,
        uncertain: &AtomicBool,
        epoch: i64,
        marks: &mut Marks,
        leading: &impl Fn() -> bool,
    ) -> bool {
        let size = self.publish_chunk.max(1);
        let (ahead, to_read) = ChunkEncoder::new(encoder, due);
        let (ahead_sent, ahead_prepared) = ahead.finish();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let reader = {
            let (pool, encoder) = (self.pool.clone(), encoder.clone());
            tokio::spawn(async move { read_and_encode(&pool, to_read, &encoder, size, tx).await })
        };
        let mut ahead_sent = ahead_sent.into_iter();
        let mut ahead_prepared = ahead_prepared.into_iter();
        let mut published = Vec::new();
        let mut all = true;
        loop {
            // What was read ahead first (it is the earliest), then what the reader hands over.
            let batch: Vec<Sent> = ahead_sent.by_ref().take(size).collect();
            let (batch, prepared) = if !batch.is_empty() {
                (
                    batch,
                    ahead_prepared.by_ref().take(size).collect::<Vec<_>>(),
                )
            } else {
                let waited = std::time::Instant::now();
                let next = rx.recv().await;
                // Non-zero only if reading and encoding a chunk took longer than publishing one.
                debug!(wait = ?waited.elapsed(), "next chunk of the burst ready");
                match next {
                    Some(chunk) => chunk,
                    None => break,
                }
            };
            // Between chunks too: a burst takes long enough for a lease to pass.
            if !leading() {
                all = false;
                break;
            }
            match self
                .publish_due(publisher, batch, &prepared, uncertain, epoch)
                .await
            {
                // Kept until the burst is recorded: only the ids (recording reads back what
                // the log lines name). At 100,000 runs the whole rows were ~90 MB more.
                Some((batch, at)) => {
                    published.push((batch.iter().map(|(id, _)| *id).collect::<Vec<_>>(), at))
                }
                None => {
                    all = false;
                    break;
                }
            }
        }
        // Cut short: what is not published yet stays PENDING.
        if !all {
            reader.abort();
        }
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "reading a burst's runs failed; they stay PENDING");
                all = false;
            }
            Err(e) if e.is_cancelled() => {}
            Err(_) => all = false, // the reader panicked: its runs stay PENDING
        }
        for (batch, at) in published {
            self.record_published(batch, at, marks);
        }
        all
    }

    /// Record published runs as DISPATCHED (at `at`) in the background, after those before.
    fn record_published(&self, ids: Vec<i64>, at: DateTime<Utc>, marks: &mut Marks) {
        let (pool, feed) = (self.pool.clone(), self.feed.clone());
        marks.push(async move {
            let marked = match claim::mark_dispatched(&pool, &ids, at).await {
                Ok(marked) => marked,
                Err(e) => {
                    warn!(error = %e, "marking executions dispatched failed; the publish record settles them");
                    return false;
                }
            };
            crate::metrics::METRICS.dispatched("published", ids.len() as u64);
            for p in &marked {
                feed.touch(p.job_id);
                info!(job = %format!("{}/{}", p.namespace, p.name), task = %p.task_name,
                      task_id = %p.task_id, slot = %crate::schedule::rfc3339(p.scheduled_for),
                      trigger = %p.trigger, "Dispatched job");
            }
            true
        });
    }

    /// Publish runs that are due; on failure record that (and whether they have failed for too
    /// long). Returns the runs and when they went out if the publish succeeded.
    async fn publish_due(
        &self,
        publisher: &Publisher,
        batch: Vec<Sent>,
        prepared: &[Prepared],
        uncertain: &AtomicBool,
        epoch: i64,
    ) -> Option<(Vec<Sent>, DateTime<Utc>)> {
        let started = std::time::Instant::now();
        let publish = publisher.publish_prepared(prepared, epoch);
        let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, publish)
            .await
            .unwrap_or_else(|_| Err(crate::celery::PublishError::Timeout(PUBLISH_TIMEOUT)));
        debug!(took = ?started.elapsed(), runs = batch.len(), "published");
        crate::metrics::METRICS
            .publish_duration
            .get_or_create(&crate::metrics::Broker {
                broker: publisher.kind(),
            })
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(rejected) => {
                let now = Utc::now();
                let batch = if rejected.is_empty() {
                    batch
                } else {
                    self.reject(batch, rejected).await
                };
                for (_, due) in &batch {
                    let lag = (now - *due).num_microseconds().unwrap_or(0);
                    crate::metrics::METRICS
                        .dispatch_lag
                        .observe(lag.max(0) as f64 / 1e6);
                }
                Some((batch, now))
            }
            // A newer leader has read the record: these runs are its to publish or expire.
            Err(e @ crate::celery::PublishError::Fenced { .. }) => {
                warn!(error = %e, executions = batch.len(), "publish refused: no longer the leader");
                None
            }
            Err(e) => {
                uncertain.store(true, Ordering::Relaxed);
                let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
                let give_up_before = Utc::now() - self.publish_give_up;
                let failed =
                    claim::mark_publish_failed(&self.pool, &ids, &e.to_string(), give_up_before)
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
                None
            }
        }
    }

    /// Runs the broker refused one by one (their queue cannot take a message) end here as
    /// DISPATCH_FAILED, with an Event and a metric; the rest of `batch` went out and is returned.
    async fn reject(&self, batch: Vec<Sent>, rejected: Vec<crate::celery::Rejected>) -> Vec<Sent> {
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
        crate::metrics::METRICS
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
            // Given up at once: retrying cannot help until the queue is changed.
            let give_up_before = Utc::now() + chrono::TimeDelta::days(1);
            match claim::mark_publish_failed(&self.pool, &ids, &reason, give_up_before).await {
                Ok(ended) => {
                    let m = &crate::metrics::METRICS;
                    m.dispatched("dispatch_failed", ended.len() as u64);
                    for _ in &ended {
                        m.finished("DISPATCH_FAILED");
                    }
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

    /// Record as DISPATCHED whatever the broker's ledger shows was published (by a leader that
    /// died before recording it, or by an attempt whose reply was lost), then drop the entries.
    async fn settle_ledger(&self, publisher: &Publisher, epoch: i64) -> Result<usize, LedgerError> {
        let candidates = if publisher.ledger_needs_candidates() {
            claim::pending_task_ids(&self.pool, LEDGER_CANDIDATES).await?
        } else {
            Vec::new()
        };
        let read = publisher.read_ledger(&candidates, epoch).await?;
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
}

/// How far ahead to claim when `coming_due` runs come due within [`MAX_CLAIM_AHEAD`] and a claim
/// costs `per_job`: [`LOOKAHEAD`], plus twice the time claiming them all should take (claims
/// share the CPU with publishing), at most [`MAX_CLAIM_AHEAD`]. So 100,000 runs due in one second
/// start being claimed ~25 s before it: from 5 s before, about half of them would still be
/// waiting for their claim at their due time.
pub fn claim_horizon(coming_due: i64, per_job: Duration) -> chrono::TimeDelta {
    let claims_ms = per_job.as_secs_f64() * 2.0 * coming_due.max(0) as f64 * 1000.0;
    let room_ms = (MAX_CLAIM_AHEAD - LOOKAHEAD).num_milliseconds() as f64;
    if claims_ms.is_nan() || claims_ms >= room_ms {
        return MAX_CLAIM_AHEAD;
    }
    LOOKAHEAD + chrono::TimeDelta::milliseconds(claims_ms as i64)
}

/// When a message published at `from` expires, `seconds` later. Checked: an expiry too far away
/// to compute (a row stored before the one-year bound) is no expiry, not a panic in the
/// publisher.
pub fn expiry(from: DateTime<Utc>, seconds: i64) -> Option<DateTime<Utc>> {
    chrono::TimeDelta::try_seconds(seconds).and_then(|d| from.checked_add_signed(d))
}

/// Encodes held runs as Celery messages: owned, so it can run on a blocking thread.
#[derive(Clone)]
struct Encoder {
    encoding: Encoding,
    /// The messages' `origin`: `kube-beat@<identity>`.
    origin: String,
}

impl Encoder {
    /// The run's message, taking the row's strings rather than copying them.
    fn message(&self, p: claim::Pending) -> TaskMessage {
        // From the run's time (it may be encoded a little before it).
        let expires = p
            .expires_seconds
            .and_then(|s| expiry(p.due.max(Utc::now()), s));
        let args = match p.args {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        let kwargs = match p.kwargs {
            Value::Object(o) => o,
            _ => serde_json::Map::new(),
        };
        TaskMessage {
            id: p.task_id,
            task: p.task_name,
            args,
            kwargs,
            queue: p.queue,
            priority: p.priority.and_then(|v| u8::try_from(v).ok()),
            expires,
            origin: self.origin.clone(),
            extra_headers: vec![
                ("kubebeat_job", format!("{}/{}", p.namespace, p.name)),
                ("kubebeat_slot", crate::schedule::rfc3339(p.scheduled_for)),
                ("kubebeat_trigger", p.trigger),
            ],
        }
    }

    fn encode(&self, p: claim::Pending) -> Prepared {
        self.encoding.prepare(self.message(p))
    }
}

/// A chunk of a burst becoming messages. Of each run only its id and time are kept beside its
/// message: a row is ~600 bytes, and publishing needs neither.
struct ChunkEncoder<'a> {
    encoder: &'a Encoder,
    runs: Vec<(Sent, Prepared)>,
}

impl<'a> ChunkEncoder<'a> {
    /// Encode what was read ahead; returns the ids still to read.
    fn new(encoder: &'a Encoder, chunk: Vec<HeldRun>) -> (ChunkEncoder<'a>, Vec<i64>) {
        let mut to_read = Vec::new();
        // Sized for what was read ahead, not the whole burst (100,000 slots of ~100 bytes).
        let mut runs = Vec::with_capacity(chunk.iter().filter(|r| r.loaded.is_some()).count());
        for r in chunk {
            match r.loaded.map(|b| *b) {
                None => to_read.push(r.id),
                Some(Loaded::Row(p)) => runs.push(((p.id, p.due), encoder.encode(*p))),
                Some(Loaded::Encoded { id, due, message }) => runs.push(((id, due), message)),
            }
        }
        (ChunkEncoder { encoder, runs }, to_read)
    }

    fn empty(encoder: &'a Encoder, size: usize) -> ChunkEncoder<'a> {
        ChunkEncoder {
            encoder,
            runs: Vec::with_capacity(size),
        }
    }

    fn len(&self) -> usize {
        self.runs.len()
    }

    fn row(&mut self, p: claim::Pending) {
        let sent = (p.id, p.due);
        self.runs.push((sent, self.encoder.encode(p)));
    }

    /// The runs and their messages, in time order.
    fn finish(mut self) -> (Vec<Sent>, Vec<Prepared>) {
        self.runs.sort_by_key(|((id, due), _)| (*due, *id));
        self.runs.into_iter().unzip()
    }
}

/// Rows encoded between yields to the runtime (encoding is ~2 µs a run).
const ENCODE_YIELD_EVERY: usize = 500;

/// Read the runs `ids` (those still PENDING: a run expired or settled meanwhile is left out),
/// encode each as Postgres sends it, and hand them to `out` in chunks of `size`, in time order
/// within a chunk. Ends early, without error, once `out` is closed (the publisher stopped).
async fn read_and_encode(
    pool: &PgPool,
    ids: Vec<i64>,
    encoder: &Encoder,
    size: usize,
    out: tokio::sync::mpsc::Sender<(Vec<Sent>, Vec<Prepared>)>,
) -> Result<(), sqlx::Error> {
    use futures::TryStreamExt;
    if ids.is_empty() {
        return Ok(());
    }
    let mut rows = claim::pending_by_ids_stream(pool, &ids);
    let mut chunk = ChunkEncoder::empty(encoder, size);
    let mut n = 0usize;
    while let Some(p) = rows.try_next().await? {
        chunk.row(p);
        n += 1;
        if chunk.len() >= size {
            let full = std::mem::replace(&mut chunk, ChunkEncoder::empty(encoder, size));
            if out.send(full.finish()).await.is_err() {
                return Ok(());
            }
        } else if n.is_multiple_of(ENCODE_YIELD_EVERY) {
            tokio::task::yield_now().await;
        }
    }
    if chunk.len() > 0 {
        let _ = out.send(chunk.finish()).await;
    }
    Ok(())
}

/// Published runs being recorded as DISPATCHED in the background, one batch after another, so
/// a burst's next chunk goes out without waiting for Postgres. Until they are recorded these
/// runs are still PENDING, so the outbox is read again only after [`Marks::flush`].
#[derive(Default)]
struct Marks {
    /// The latest batch's task; it waits for the one before it.
    last: Option<tokio::task::JoinHandle<bool>>,
}

impl Marks {
    /// Record a batch after those pushed before it. `mark` returns whether it succeeded.
    fn push(&mut self, mark: impl std::future::Future<Output = bool> + Send + 'static) {
        let before = self.last.take();
        self.last = Some(tokio::spawn(async move {
            let earlier = match before {
                Some(task) => task.await.unwrap_or(false),
                None => true,
            };
            mark.await && earlier
        }));
    }

    /// Wait until every batch pushed is recorded; false if any failed to be (those runs are
    /// still PENDING, though published: the publish record settles them).
    async fn flush(&mut self) -> bool {
        match self.last.take() {
            Some(task) => task.await.unwrap_or(false),
            None => true,
        }
    }
}

/// A run held for its time: its row or message once read (the earliest chunks), else only
/// its id and time.
struct HeldRun {
    id: i64,
    due: DateTime<Utc>,
    loaded: Option<Box<Loaded>>,
}

/// A run once read: its row until it is encoded, then only its message.
enum Loaded {
    /// Boxed: a row is ~380 bytes inline, and a run's box keeps the size of the largest
    /// variant once it is encoded (~100 bytes).
    Row(Box<claim::Pending>),
    Encoded {
        id: i64,
        due: DateTime<Utc>,
        message: Prepared,
    },
}

/// A published run: its id and when it was due.
type Sent = (i64, DateTime<Utc>);

/// Runs read from the outbox, held until they are due, earliest first.
struct Held {
    runs: std::collections::VecDeque<HeldRun>,
    /// The highest execution id read so far: later reads ask only for newer ones.
    max_id: i64,
    /// Ids held, so a run read again is not held (and published) twice.
    ids: std::collections::HashSet<i64>,
}

impl Held {
    fn new(batch: Vec<(i64, DateTime<Utc>)>) -> Self {
        let mut held = Held {
            runs: std::collections::VecDeque::new(),
            max_id: 0,
            ids: std::collections::HashSet::new(),
        };
        held.add(batch);
        held
    }

    /// Merge newly read runs (they may be due before some held ones).
    fn add(&mut self, batch: Vec<(i64, DateTime<Utc>)>) {
        for (id, due) in batch {
            self.max_id = self.max_id.max(id);
            if !self.ids.insert(id) {
                continue;
            }
            self.runs.push_back(HeldRun {
                id,
                due,
                loaded: None,
            });
        }
        self.runs.make_contiguous().sort_by_key(|r| (r.due, r.id));
    }

    /// The ids among the first `n` runs whose rows are not read yet.
    fn unloaded(&self, n: usize) -> Vec<i64> {
        self.runs
            .iter()
            .take(n)
            .filter(|r| r.loaded.is_none())
            .map(|r| r.id)
            .collect()
    }

    /// Attach the rows read for `asked`; an asked run that did not come back is no longer
    /// PENDING and is let go.
    fn attach(&mut self, asked: &[i64], rows: Vec<claim::Pending>) {
        let mut rows: std::collections::HashMap<i64, claim::Pending> =
            rows.into_iter().map(|p| (p.id, p)).collect();
        let gone: std::collections::HashSet<i64> = asked
            .iter()
            .filter(|id| !rows.contains_key(id))
            .copied()
            .collect();
        for r in self.runs.iter_mut() {
            if let Some(p) = rows.remove(&r.id) {
                r.loaded = Some(Box::new(Loaded::Row(Box::new(p))));
            }
        }
        if !gone.is_empty() {
            self.runs.retain(|r| !gone.contains(&r.id));
            self.ids.retain(|id| !gone.contains(id));
        }
    }

    /// Encode the first `n` runs that are read and not encoded yet: a burst's first chunks then
    /// go out as soon as they are due. Only the first `n`, since an envelope is ~1 KB.
    fn encode_ahead(&mut self, n: usize, encoder: &Encoder) {
        for r in self.runs.iter_mut().take(n) {
            if !matches!(r.loaded.as_deref(), Some(Loaded::Row(_))) {
                continue;
            }
            if let Some(loaded) = r.loaded.take()
                && let Loaded::Row(p) = *loaded
            {
                r.loaded = Some(Box::new(Loaded::Encoded {
                    id: r.id,
                    due: r.due,
                    message: encoder.encode(*p),
                }));
            }
        }
    }

    fn len(&self) -> usize {
        self.runs.len()
    }

    fn max_id(&self) -> i64 {
        self.max_id
    }

    fn first_due(&self) -> Option<chrono::DateTime<Utc>> {
        self.runs.front().map(|r| r.due)
    }

    /// Remove and return the runs due by `now`.
    fn take_due(&mut self, now: chrono::DateTime<Utc>) -> Vec<HeldRun> {
        let n = self.runs.partition_point(|r| r.due <= now);
        let due: Vec<_> = self.runs.drain(..n).collect();
        for r in &due {
            self.ids.remove(&r.id);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeDelta};

    fn run(id: i64, due: DateTime<Utc>) -> claim::Pending {
        claim::Pending {
            id,
            task_id: format!("t{id}"),
            scheduled_for: due,
            trigger: "schedule".into(),
            due,
            namespace: "ns".into(),
            name: format!("j{id}"),
            task_name: "t".into(),
            args: Value::Null,
            kwargs: Value::Null,
            queue: "celery".into(),
            priority: None,
            expires_seconds: None,
        }
    }

    fn ids(due: &[HeldRun]) -> Vec<i64> {
        due.iter().map(|r| r.id).collect()
    }

    fn ids_of(sent: &[Sent]) -> Vec<i64> {
        sent.iter().map(|(id, _)| *id).collect()
    }

    fn times(runs: &[claim::Pending]) -> Vec<(i64, DateTime<Utc>)> {
        runs.iter().map(|p| (p.id, p.due)).collect()
    }

    fn encoder() -> Encoder {
        Encoder {
            encoding: Encoding::Redis,
            origin: "kube-beat@test".into(),
        }
    }

    #[test]
    fn an_expiry_past_the_end_of_time_encodes_without_one() {
        let now = Utc::now();
        for (secs, due, has_expiry) in [
            (i64::MAX, now, false),
            (i64::MIN, now, false),
            (31_536_000, DateTime::<Utc>::MAX_UTC, false),
            (31_536_000, now, true),
        ] {
            let mut p = run(1, due);
            p.expires_seconds = Some(secs);
            let m = encoder().message(p);
            assert_eq!(m.expires.is_some(), has_expiry, "{secs} s from {due}");
        }
    }

    #[test]
    fn claim_horizon_grows_with_the_burst_within_bounds() {
        let cost = Duration::from_micros(100);
        assert_eq!(claim_horizon(0, cost), LOOKAHEAD);
        assert_eq!(claim_horizon(-3, cost), LOOKAHEAD);
        // 10,000 due together: 2 s of claims ahead of the usual 5 s.
        assert_eq!(claim_horizon(10_000, cost), TimeDelta::seconds(7));
        assert_eq!(claim_horizon(100_000, cost), TimeDelta::seconds(25));
        assert_eq!(
            claim_horizon(300_000, Duration::from_micros(274)),
            MAX_CLAIM_AHEAD
        );
        assert_eq!(claim_horizon(1_000_000, cost), MAX_CLAIM_AHEAD);
        assert_eq!(claim_horizon(i64::MAX, Duration::MAX), MAX_CLAIM_AHEAD);
    }

    #[test]
    fn held_runs_come_out_by_time_once_each() {
        let t0 = Utc::now();
        let s = TimeDelta::seconds;
        let mut held = Held::new(times(&[run(1, t0 + s(2)), run(2, t0 + s(4))]));
        assert_eq!(held.max_id(), 2);
        // A newer claim due sooner, a late-committed lower id due now, and a run already held.
        held.add(times(&[run(5, t0 + s(1)), run(0, t0), run(2, t0 + s(4))]));
        assert_eq!(held.len(), 4, "the run read twice is held once");
        assert_eq!(held.max_id(), 5);
        assert_eq!(held.first_due(), Some(t0));
        assert_eq!(ids(&held.take_due(t0 + s(1))), vec![0, 5]);
        assert!(held.take_due(t0 + s(1)).is_empty(), "nothing twice");
        assert_eq!(ids(&held.take_due(t0 + s(3))), vec![1]);
        // Only what is held counts (a published run is no longer PENDING, so never read again).
        held.add(times(&[run(1, t0 + s(2))]));
        assert_eq!(ids(&held.take_due(t0 + s(10))), vec![1, 2]);
        assert_eq!(held.first_due(), None);
    }

    #[test]
    fn only_the_earliest_held_runs_are_encoded_ahead_and_the_rest_when_published() {
        let t0 = Utc::now();
        let s = TimeDelta::seconds;
        let rows: Vec<claim::Pending> = (1..=5).map(|i| run(i, t0 + s(i))).collect();
        let mut held = Held::new(times(&rows));
        // Read ahead: the rows of the first two (only those are asked for), run 2 no longer
        // PENDING (it did not come back), so it is let go.
        assert_eq!(held.unloaded(2), [1, 2]);
        held.attach(&[1, 2], vec![rows[0].clone()]);
        assert_eq!(held.len(), 4);
        assert_eq!(held.unloaded(2), [3]);
        held.attach(&[3], vec![rows[2].clone()]);
        held.encode_ahead(2, &encoder());
        let state = |held: &Held| -> Vec<(bool, bool)> {
            held.runs
                .iter()
                .map(|r| {
                    (
                        r.loaded.is_some(),
                        r.loaded
                            .as_ref()
                            .is_some_and(|l| matches!(**l, Loaded::Encoded { .. })),
                    )
                })
                .collect()
        };
        assert_eq!(
            state(&held),
            [(true, true), (true, true), (false, false), (false, false)]
        );
        // A run read later and due sooner is read and encoded next; the rest stay ids.
        held.add(vec![(9, t0)]);
        assert_eq!(held.unloaded(4), [9, 4]);
        held.attach(&[9], vec![run(9, t0)]);
        held.encode_ahead(2, &encoder());
        assert_eq!(
            state(&held),
            [
                (true, true),
                (true, true),
                (true, true),
                (false, false),
                (false, false)
            ]
        );
        let due = held.take_due(t0 + s(10));
        assert_eq!(ids(&due), [9, 1, 3, 4, 5]);
        // What a chunk's publish does with them: read the rest (here, as the query would
        // return them), then encode what is not encoded.
        let read: Vec<claim::Pending> = due
            .iter()
            .filter(|r| r.loaded.is_none())
            .map(|r| rows[r.id as usize - 1].clone())
            .collect();
        let encoder = encoder();
        let (mut encoding, to_read) = ChunkEncoder::new(&encoder, due);
        assert_eq!(to_read, [4, 5], "only what was not read ahead");
        for p in read {
            encoding.row(p);
        }
        let (runs, prepared) = encoding.finish();
        assert_eq!(runs.len(), 5);
        assert_eq!(ids_of(&runs), [9, 1, 3, 4, 5], "in time order");
        for ((run_id, due), m) in runs.iter().zip(&prepared) {
            let Prepared::Redis { id, envelope, .. } = m else {
                panic!("encoded for Redis")
            };
            assert_eq!(id, &format!("t{run_id}"), "each run keeps its own message");
            assert!(envelope.contains(&format!("\"kubebeat_job\":\"ns/j{run_id}\"")));
            assert_eq!(*due, if *run_id == 9 { t0 } else { t0 + s(*run_id) });
        }
    }

    #[tokio::test]
    async fn marks_are_recorded_in_order_and_a_failure_is_reported_by_flush() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut marks = Marks::default();
        assert!(marks.flush().await, "nothing pushed");
        for (i, ok, delay) in [(1, true, 30), (2, false, 0), (3, true, 10)] {
            let order = order.clone();
            marks.push(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                order.lock().map(|mut o| o.push(i)).ok();
                ok
            });
        }
        assert!(!marks.flush().await, "the second batch failed");
        assert_eq!(
            *order.lock().expect("lock"),
            vec![1, 2, 3],
            "one after another"
        );
        marks.push(async { true });
        assert!(marks.flush().await, "a failure is reported once");
    }
}
