//! The publish loop: PENDING runs (the outbox) go to the broker when they are due, a burst in
//! chunks. What was published is recorded in the background (`recorder`); what failed is
//! retried, or given up on (`ledger`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use super::{
    Dispatcher, MAX_CLAIM_AHEAD, MAX_IDLE, PUBLISH_TIMEOUT, RunAt, Term,
    encode::{ChunkEncoder, Encoder, Reader},
    outbox::{Held, HeldRun, first_round, messages, read_ahead},
    recorder::{Recorder, mark_published},
};
use crate::{
    celery::{Prepared, PublishError, Publisher},
    metrics::METRICS,
    status::Reason,
    store::outbox,
};

/// Runs read from the outbox and held for their time at once. Beyond the earliest
/// [`CHUNKS_AHEAD`] chunks a held run is its id and time (an encoded one is ~1 KB):
/// everything claimed for 100,000 jobs due together fits.
const HOLD_MAX: i64 = 120_000;
/// Chunks encoded before their time, the earliest runs first: a burst starts going out at once,
/// while the rest are read and encoded. Two: a burst of 10,000 is then all encoded when due.
const CHUNKS_AHEAD: usize = 2;
/// Rows read at a time when reading ahead: each is encoded before the next are read, so their
/// rows (~600 bytes each) are never all in memory beside the messages. Small enough that a
/// batch never holds up runs coming due (see [`LOAD_MARGIN`]).
const READ_AHEAD_BATCH: usize = 250;
/// Reading ahead stops this long before the next runs are due: they go out on time, and what
/// was not read ahead is read when it goes out.
const LOAD_MARGIN: chrono::TimeDelta = chrono::TimeDelta::milliseconds(50);
/// How long before runs are due a reader starts on those not read ahead (see
/// [`Reader::start_early`]): the query's first rows took ~0.35 s at 100,000 runs.
const READER_EARLY: chrono::TimeDelta = chrono::TimeDelta::seconds(1);
/// While waiting for held runs to come due, newer claims are read too if the wait is longer.
const REFETCH_MIN: Duration = Duration::from_millis(100);
/// How often the publish ledger is drained even when nothing is uncertain (keeps it short, so
/// the read after a failover is quick).
const LEDGER_DRAIN: Duration = Duration::from_secs(60);

/// A term's publishing: what every step of it needs, instead of five arguments to each.
pub(super) struct Publishing<'a> {
    pub(super) dispatcher: &'a Dispatcher,
    pub(super) publisher: &'a Publisher,
    pub(super) term: &'a Term,
    encoder: Encoder,
    /// Some PENDING executions may be on the broker already (a new term, or after a failed
    /// publish or record): the ledger is settled before anything is published again.
    pub(super) uncertain: bool,
    /// Published runs being recorded as DISPATCHED.
    recorder: Recorder,
}

impl Dispatcher {
    /// Publish the outbox whenever claims arrive, retrying failures, until leadership ends.
    /// Starts with whatever an earlier leader left unpublished (same Celery task ids).
    pub(super) async fn publish_loop(&self, term: &Term) {
        let Some(publisher) = &self.publisher else {
            // Shadow mode publishes nothing: wait for the term to end with the claimer.
            while term.leading() {
                tokio::select! {
                    _ = term.claimed.notified() => {}
                    _ = tokio::time::sleep(MAX_IDLE) => {}
                }
            }
            return;
        };
        // A new term starts uncertain: the last leader may have published batches it never
        // recorded (on RabbitMQ, the ledger says which).
        let mut p = Publishing {
            dispatcher: self,
            publisher,
            term,
            encoder: Encoder {
                encoding: publisher.encoding(),
                origin: format!("kube-beat@{}", self.identity),
            },
            uncertain: true,
            recorder: {
                let (pool, feed) = (self.pool.clone(), self.feed.clone());
                Recorder::new(Arc::new(move |batches| {
                    Box::pin(mark_published(pool.clone(), feed.clone(), batches))
                }))
            },
        };
        let mut drained = Instant::now();
        while term.leading() {
            if drained.elapsed() > LEDGER_DRAIN {
                p.uncertain = true;
                drained = Instant::now();
            }
            let backlog = p.publish_pending().await;
            let wait = if backlog {
                Duration::from_secs(1)
            } else {
                self.until_next_read().await
            };
            tokio::select! {
                _ = term.claimed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long until the earliest PENDING run may be read into the outbox (it is read as soon
    /// as it is claimed; a claim wakes the publisher sooner).
    async fn until_next_read(&self) -> Duration {
        match outbox::next_pending(&self.pool).await {
            // Never a busy loop: at least a few milliseconds (a claim wakes it sooner).
            Ok(Some(t)) => (t - MAX_CLAIM_AHEAD - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(10), MAX_IDLE),
            Ok(None) => MAX_IDLE,
            Err(e) => {
                warn!(error = %e, "reading the next PENDING run failed");
                Duration::from_secs(1)
            }
        }
    }
}

impl Publishing<'_> {
    /// Publish every PENDING execution (ours and earlier leaders'), each when it is due: runs
    /// are read as soon as they are claimed (up to [`HOLD_MAX`]), the earliest encoded, and
    /// held until their time. Returns whether some are left (a failure to retry soon).
    async fn publish_pending(&mut self) -> bool {
        let d = self.dispatcher;
        loop {
            // Re-check before each batch: a paused process must not publish after waking up
            // past its lease, nor a fenced one (this narrows the publish window too).
            if !self.term.leading() {
                return false;
            }
            // Reads below must not see a published run still PENDING (its record in flight).
            if !self.recorder.flush().await {
                self.uncertain = true;
            }
            // Before anything is re-published, or expired as too late: what is already out?
            if self.uncertain
                && let Err(e) = self.settle_ledger().await
            {
                warn!(error = %e, "reading the publish ledger failed; will retry");
                return true;
            }
            self.uncertain = false;
            self.expire_late().await;
            let horizon = Utc::now() + MAX_CLAIM_AHEAD;
            let batch = match outbox::pending_ids(&d.pool, HOLD_MAX, horizon, None).await {
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
            // The runs due next that were not read ahead, being read before their time. Dropped
            // (which stops it) on any way out of this loop: they stay PENDING.
            let mut early: Option<Reader> = None;
            while let Some(first_due) = held.first_due() {
                self.load_ahead(&mut held, CHUNKS_AHEAD * d.publish_chunk, first_due)
                    .await;
                let now = Utc::now();
                if early.is_none() && first_due - now <= READER_EARLY {
                    let ids = held.hand_to_reader(first_due);
                    if !ids.is_empty() {
                        debug!(runs = ids.len(), due = %first_due, "reading runs ahead of their time");
                        early = Some(Reader::start_early(
                            &d.pool,
                            ids,
                            &self.encoder,
                            d.publish_chunk,
                        ));
                    }
                }
                // Woken early to start that reader, if there is something for it to read.
                let until = if early.is_none() && held.unread_by(first_due) {
                    first_due - READER_EARLY
                } else {
                    first_due
                };
                let wait = (until - now).to_std().unwrap_or(Duration::ZERO);
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // Newly claimed runs (maybe due sooner).
                        _ = self.term.claimed.notified(), if wait > REFETCH_MIN => {
                            if !self.recorder.flush().await {
                                self.uncertain = true;
                                break; // settle first
                            }
                            self.read_newer(&mut held).await;
                            continue;
                        }
                    }
                    if !self.term.leading() {
                        return false;
                    }
                }
                let woke = Utc::now();
                let due = held.take_due(woke);
                debug!(late = %(woke - first_due), runs = due.len(), held = held.len(), "runs due");
                if due.is_empty() {
                    continue; // woke a little early: never publish before the run's time
                }
                // The early reader goes with the runs handed to it (all due at its time).
                let reader = if due.iter().any(|r| r.reading) {
                    early.take()
                } else {
                    None
                };
                if !self.publish_stream(due, reader).await {
                    return true;
                }
            }
        }
    }

    /// Claimed executions that could not be published within their job's
    /// `startingDeadlineSeconds` are not sent late: they become MISSED.
    async fn expire_late(&self) {
        match outbox::expire_pending(&self.dispatcher.pool, Utc::now()).await {
            Ok(ended) if ended.is_empty() => {}
            Ok(ended) => {
                METRICS.dispatched("missed", ended.len() as u64);
                warn!(
                    executions = ended.len(),
                    "not published within startingDeadlineSeconds: recorded as MISSED"
                );
                self.dispatcher.report_ended(
                    &ended,
                    Reason::Missed,
                    "not published within startingDeadlineSeconds",
                );
            }
            Err(e) => warn!(error = %e, "expiring late executions failed"),
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
        let pool = &self.dispatcher.pool;
        match outbox::pending_ids(pool, room, now + MAX_CLAIM_AHEAD, after).await {
            Ok(newer) => held.add(newer),
            Err(e) => warn!(error = %e, "reading the outbox failed"),
        }
    }

    /// Read and encode the earliest `n` held runs, so they go out as soon as they are due; but
    /// never past [`LOAD_MARGIN`] before `next_due`: reading ahead must not delay what is due.
    async fn load_ahead(&self, held: &mut Held, n: usize, next_due: DateTime<Utc>) {
        let ids = held.unloaded(n);
        for batch in ids.chunks(READ_AHEAD_BATCH) {
            if Utc::now() + LOAD_MARGIN >= next_due {
                break;
            }
            match outbox::pending_by_ids(&self.dispatcher.pool, batch).await {
                Ok(rows) => held.attach(batch, rows),
                // They are read again when they go out.
                Err(e) => {
                    warn!(error = %e, "reading held runs failed");
                    break;
                }
            }
            held.encode_ahead(n, &self.encoder);
        }
        held.encode_ahead(n, &self.encoder);
    }

    /// Publish runs that are due, [`Dispatcher::publish_chunk`] at a time. Runs read ahead go
    /// first; the rest are read in one query, streamed, and encoded row by row by a [`Reader`]
    /// (started before they were due if they were known then, `early`), which hands chunks to
    /// the publisher through a channel of one: a burst holds at most those read ahead, one
    /// handed over and one being encoded. They are recorded as DISPATCHED in the background
    /// once the burst is out, so Postgres does not compete with it for the CPU. Returns whether
    /// all were published.
    ///
    /// One query rather than one per chunk: Postgres then spends ~3.7 µs a row instead of ~7
    /// (measured on 95,000 runs), and the chunk-by-chunk reads were what set a burst's pace.
    /// The rows come in Postgres's order, not by due time: everything in a burst is due already.
    async fn publish_stream(&mut self, due: Vec<HeldRun>, early: Option<Reader>) -> bool {
        let size = self.dispatcher.publish_chunk.max(1);
        let (ahead, to_read) = read_ahead(due, &self.encoder);
        // Every tenant's first run before any tenant's second (see `first_round`).
        let (first, ahead) = first_round(ahead);
        let (ahead_runs, ahead_prepared) =
            ChunkEncoder::new(&self.encoder, messages(ahead)).finish();
        let mut reader = match early {
            // What else is going out now, after what it was started for.
            Some(mut reader) => {
                if !to_read.is_empty() {
                    debug!(
                        runs = to_read.len(),
                        "runs claimed since, read after the others"
                    );
                }
                reader.more(to_read);
                reader
            }
            None => Reader::start(&self.dispatcher.pool, to_read, &self.encoder, size),
        };
        let mut first =
            (!first.is_empty()).then(|| ChunkEncoder::new(&self.encoder, messages(first)).finish());
        let mut ahead_runs = ahead_runs.into_iter();
        let mut ahead_prepared = ahead_prepared.into_iter();
        let mut published = Vec::new();
        let mut all = true;
        loop {
            // The first round, then what was read ahead (it is the earliest), then what the
            // reader hands over.
            let (batch, prepared) = if let Some(first) = first.take() {
                first
            } else {
                let batch: Vec<RunAt> = ahead_runs.by_ref().take(size).collect();
                if !batch.is_empty() {
                    let prepared = ahead_prepared.by_ref().take(size).collect::<Vec<_>>();
                    (batch, prepared)
                } else {
                    let waited = Instant::now();
                    let next = reader.chunks.recv().await;
                    // Non-zero only if reading and encoding a chunk took longer than
                    // publishing one.
                    debug!(wait = ?waited.elapsed(), "next chunk of the burst ready");
                    match next {
                        Some(chunk) => chunk,
                        None => break,
                    }
                }
            };
            // Between chunks too: a burst takes long enough for a lease to pass.
            if !self.term.leading() {
                all = false;
                break;
            }
            match self.publish_due(batch, &prepared).await {
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
        if let Err(e) = reader.finish().await {
            warn!(error = %e, "the burst's runs not read stay PENDING");
            all = false;
        }
        for batch in published {
            self.recorder.push(batch);
        }
        all
    }

    /// Publish runs that are due; on failure record that (and whether they have failed for too
    /// long). Returns the runs and when they went out if the publish succeeded.
    async fn publish_due(
        &mut self,
        batch: Vec<RunAt>,
        prepared: &[Prepared],
    ) -> Option<(Vec<RunAt>, DateTime<Utc>)> {
        let started = Instant::now();
        let publish = self.publisher.publish_prepared(prepared, self.term.epoch);
        let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, publish)
            .await
            .unwrap_or_else(|_| Err(PublishError::Timeout(PUBLISH_TIMEOUT)));
        debug!(took = ?started.elapsed(), runs = batch.len(), "published");
        METRICS
            .publish_duration
            .get_or_create(&crate::metrics::Broker {
                broker: self.publisher.kind(),
            })
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(rejected) => {
                let now = Utc::now();
                let batch = if rejected.is_empty() {
                    batch
                } else {
                    self.dispatcher.reject(batch, rejected).await
                };
                for (_, due) in &batch {
                    let lag = (now - *due).num_microseconds().unwrap_or(0);
                    METRICS.dispatch_lag.observe(lag.max(0) as f64 / 1e6);
                }
                Some((batch, now))
            }
            // A newer leader has read the record: these runs are its to publish or expire.
            Err(e @ PublishError::Fenced { .. }) => {
                warn!(error = %e, executions = batch.len(), "publish refused: no longer the leader");
                None
            }
            Err(e) => {
                self.uncertain = true;
                let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
                self.dispatcher.publish_failed(&ids, &e).await;
                None
            }
        }
    }
}
