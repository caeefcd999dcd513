//! The result tracker (leader only): follows every unfinished execution through Celery's result
//! backend — STARTED, RETRY, SUCCESS, FAILURE, REVOKED — and records LOST when no final state
//! arrives within the job's `executionTimeoutSeconds`. Reads are batched (one backend round
//! trip and one Postgres transaction per batch) and never touch the dispatch path.

pub mod backend;
pub mod decode;
pub mod hints;
pub mod pickle;

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use backend::Backend;
use decode::{State, Tracked, Transition};

use crate::{
    leader::Role,
    status::{Feed, JobEvent, JobRef, Reason},
    store::claims::{ClaimError, begin_fenced},
    store::{
        StoreError,
        tracking::{self, TransitionWrite, Unfinished},
    },
};

/// Executions read per batch.
const BATCH: i64 = 1000;

pub struct Tracker {
    pub pool: PgPool,
    pub backend: Backend,
    pub role: watch::Receiver<Role>,
    pub feed: Feed,
    /// Pause between passes over the unfinished executions.
    pub poll: Duration,
    /// Task ids whose results the Redis backend announced ([`hints`]), read at once in a loop
    /// beside the passes; `None` without a subscription.
    pub hints: Option<mpsc::Receiver<String>>,
    /// On while subscribed: the passes then leave the runs published within
    /// [`hints::KEEP`] to the announcements.
    pub subscribed: hints::Live,
}

/// Announced results read together: one Postgres read, one backend read and one transaction
/// for up to this many.
const HINT_BATCH: usize = 1000;
/// How long the first announced result waits for others to share its reads; it bounds how
/// late a result is recorded and how many small transactions a busy minute costs (at most
/// 1 / this per second beside the passes).
const HINT_GATHER: Duration = Duration::from_millis(50);

impl Tracker {
    /// Run until `stop` flips; works only while this replica leads.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if !self.backend.tracks() {
            info!("result backend none: executions stop at DISPATCHED");
            // Nothing to track, but the tracker is one of the operator's parts: it ends with
            // the process (a part that ends early stops the process, see `operator`).
            let _ = stop.wait_for(|s| *s).await;
            return;
        }
        // Two loops of one task, taking turns at their awaits: a pass over 100,000 runs takes
        // a second, and announced results are read meanwhile (a run both read is written once:
        // each write applies only to the state it was read in).
        let hints = self.hints.take();
        let passes = self.passes(self.role.clone(), stop.clone());
        let announced = self.announcements(hints, self.role.clone(), stop);
        tokio::join!(passes, announced);
    }

    /// A pass over every unfinished run each poll interval (longer after a long pass), and at
    /// once when this replica becomes the leader.
    async fn passes(&self, mut role: watch::Receiver<Role>, mut stop: watch::Receiver<bool>) {
        loop {
            let epoch = role.borrow().epoch();
            let started = tokio::time::Instant::now();
            if let Some(epoch) = epoch {
                match self.pass(epoch).await {
                    Ok(n) if n > 0 => tracing::debug!(updated = n, "result tracker pass"),
                    Ok(_) => {}
                    Err(e) => self.failed(&e, "result tracker pass failed; retrying"),
                }
            }
            let next_pass = started + pause(self.poll, started.elapsed());
            loop {
                // Some(true): pass now; Some(false): wait on; None: stop.
                let woke = tokio::select! {
                    _ = tokio::time::sleep_until(next_pass) => Some(true),
                    // Every renewal changes the role; only a new (or lost) leadership calls
                    // for a pass now. An error: the election is gone, the process stopping.
                    changed = role.changed() => match changed {
                        Ok(()) => Some(role.borrow().epoch() != epoch),
                        Err(_) => None,
                    },
                    _ = stop.wait_for(|s| *s) => None,
                };
                match woke {
                    Some(true) => break,
                    Some(false) => {}
                    None => {
                        let _ = stop.wait_for(|s| *s).await;
                        return;
                    }
                }
            }
        }
    }

    /// The runs whose results the Redis backend announced ([`hints`]), read as they come.
    async fn announcements(
        &self,
        hints: Option<mpsc::Receiver<String>>,
        role: watch::Receiver<Role>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(mut hints) = hints else {
            return;
        };
        let mut waiting = hints::Waiting::default();
        let mut batch = Vec::with_capacity(HINT_BATCH);
        loop {
            let retry = !waiting.is_empty();
            // Some(n): n ids announced (0: the subscriber has ended); None: time to try the
            // waiting ones again.
            let announced = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                n = hints.recv_many(&mut batch, HINT_BATCH) => Some(n),
                _ = tokio::time::sleep(hints::RETRY), if retry => None,
            };
            if announced == Some(0) {
                return; // the subscriber ended: passes only
            }
            if announced.is_some() && batch.len() < HINT_BATCH {
                // Let the ids announced within HINT_GATHER share the reads.
                tokio::time::sleep(HINT_GATHER).await;
                while batch.len() < HINT_BATCH
                    && let Ok(id) = hints.try_recv()
                {
                    batch.push(id);
                }
            }
            let Some(epoch) = role.borrow().epoch() else {
                // A follower reads no results; the next leader's passes read these.
                batch.clear();
                waiting = hints::Waiting::default();
                continue;
            };
            let ids = std::mem::take(&mut batch);
            if let Err(e) = self.announced(epoch, ids, &mut waiting).await {
                self.failed(
                    &e,
                    "reading announced results failed; the next pass reads them",
                );
            }
        }
    }

    fn failed(&self, e: &TrackError, what: &str) {
        if !matches!(e, TrackError::Claim(ClaimError::Fenced { .. })) {
            warn!(error = %e, "{what}");
        }
    }

    /// Read the runs of these announced task ids (and of those kept from earlier announcements)
    /// now. An id of a run not yet marked published is kept for another try; an id of no
    /// unfinished run of ours is dropped.
    async fn announced(
        &self,
        epoch: i64,
        ids: Vec<String>,
        waiting: &mut hints::Waiting,
    ) -> Result<usize, TrackError> {
        let now = tokio::time::Instant::now();
        let mut first_seen: std::collections::HashMap<String, tokio::time::Instant> =
            ids.into_iter().map(|id| (id, now)).collect();
        for (id, at) in waiting.take(now) {
            first_seen.entry(id).or_insert(at);
        }
        if first_seen.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = first_seen.keys().cloned().collect();
        let runs = tracking::unfinished_with_task_ids(&self.pool, &ids).await?;
        let (published, claimed): (Vec<Unfinished>, Vec<Unfinished>) =
            runs.into_iter().partition(|u| u.state != "PENDING");
        for u in claimed {
            if let Some(at) = first_seen.remove(&u.task_id) {
                waiting.keep(u.task_id, at);
            }
        }
        self.follow(epoch, &published).await
    }
    /// One pass over every unfinished execution, a batch at a time. Returns rows updated.
    async fn pass(&self, epoch: i64) -> Result<usize, TrackError> {
        let started = std::time::Instant::now();
        let mut seen = 0usize;
        let result = self.pass_batches(epoch, &mut seen).await;
        let m = &crate::metrics::METRICS;
        m.tracker_pass.observe(started.elapsed().as_secs_f64());
        m.tracker_unfinished.set(seen as i64);
        result
    }

    async fn pass_batches(&self, epoch: i64, seen: &mut usize) -> Result<usize, TrackError> {
        let mut after = 0i64;
        let mut updated = 0;
        // A run whose announcement is missed (sent while reconnecting, dropped, or kept past
        // KEEP waiting for its DISPATCHED mark) is read by the first pass after KEEP.
        let published_before = if self.subscribed.is_on() {
            chrono::TimeDelta::from_std(hints::KEEP)
                .ok()
                .map(|keep| Utc::now() - keep)
        } else {
            None
        };
        loop {
            let batch =
                tracking::unfinished_after(&self.pool, after, published_before, BATCH).await?;
            let Some(last) = batch.last() else {
                return Ok(updated);
            };
            after = last.id;
            *seen += batch.len();
            let full = batch.len() as i64 == BATCH;
            updated += self.follow(epoch, &batch).await?;
            if !full {
                return Ok(updated);
            }
        }
    }

    /// Read these runs' records from the backend and write what changed. Returns rows updated.
    async fn follow(&self, epoch: i64, batch: &[Unfinished]) -> Result<usize, TrackError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = batch.iter().map(|u| u.task_id.clone()).collect();
        let metas = self.backend.fetch(&ids).await?;
        let now = Utc::now();
        let changes: Vec<(&Unfinished, Transition)> = batch
            .iter()
            .filter_map(|u| {
                let t = Tracked {
                    state: State::parse(&u.state)?,
                    since: u.since,
                    timeout_seconds: u.execution_timeout_seconds,
                };
                decode::transition(&t, metas.get(&u.task_id), now, true).map(|tr| (u, tr))
            })
            .collect();
        if changes.is_empty() {
            return Ok(0);
        }
        let applied = apply(&self.pool, epoch, &changes).await?;
        self.report(&changes, &applied);
        Ok(applied.len())
    }

    /// Logs, status notices and Events for the changes that were applied.
    fn report(&self, changes: &[(&Unfinished, Transition)], applied: &[i64]) {
        let applied: std::collections::HashSet<i64> = applied.iter().copied().collect();
        let m = &crate::metrics::METRICS;
        for (u, tr) in changes.iter().filter(|(u, _)| applied.contains(&u.id)) {
            self.feed.touch(u.job_id);
            if tr.state.is_final() {
                m.finished(tr.state.as_str());
                let late = (Utc::now() - u.since)
                    .num_microseconds()
                    .unwrap_or(0)
                    .max(0);
                m.result_recorded.observe(late as f64 / 1e6);
                let started = u.started_at.or(tr.started_at);
                if let (Some(s), Some(f)) = (started, tr.finished_at) {
                    let secs = (f - s).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    m.execution_duration.observe(secs);
                }
            }
            let job = format!("{}/{}", u.namespace, u.name);
            let slot = crate::schedule::rfc3339(u.scheduled_for);
            let error = tr.error.as_deref().unwrap_or("");
            let reason = match tr.state {
                State::Success => {
                    info!(job = %job, task = %u.task_name, task_id = %u.task_id, slot = %slot, "Job executed successfully");
                    None
                }
                State::Failure => {
                    warn!(job = %job, task = %u.task_name, task_id = %u.task_id, slot = %slot, error = %error, "Job failed");
                    Some(Reason::Failed)
                }
                State::Lost => {
                    warn!(job = %job, task = %u.task_name, task_id = %u.task_id, slot = %slot, error = %error, "Job failed: LOST");
                    Some(Reason::Lost)
                }
                State::Revoked => {
                    warn!(job = %job, task = %u.task_name, task_id = %u.task_id, slot = %slot, error = %error, "Job failed: REVOKED");
                    Some(Reason::Revoked)
                }
                _ => None,
            };
            if let Some(reason) = reason {
                self.feed.event(JobEvent {
                    job: JobRef {
                        namespace: u.namespace.clone(),
                        name: u.name.clone(),
                        uid: u.uid.clone(),
                    },
                    reason,
                    message: format!(
                        "run {} (task {}) {}: {}",
                        slot,
                        u.task_id,
                        tr.state.as_str(),
                        error
                    ),
                });
            }
        }
    }
}

/// Share of the time a pass may take at most: the tracker shares the process (and often the
/// machine) with dispatch, so it never takes more than this of a core. Past that, results are
/// recorded later (a pass over 50,000 runs nobody consumes was taking a core of a debug build
/// and delaying other tenants' dispatch), never runs.
const DUTY: u32 = 4;

/// The pause after a pass that took `took`: the poll interval, or longer after a long pass, so
/// passes take at most 1/[`DUTY`] of the time.
fn pause(poll: Duration, took: Duration) -> Duration {
    poll.max(took.saturating_mul(DUTY - 1))
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
}

/// Write the transitions in one transaction under the fencing epoch, each only if the row is
/// still in the state it was read in (a Replace revocation may have ended it meanwhile), and
/// count final outcomes on their jobs. Returns the execution ids changed.
async fn apply(
    pool: &PgPool,
    epoch: i64,
    changes: &[(&Unfinished, Transition)],
) -> Result<Vec<i64>, TrackError> {
    let writes: Vec<TransitionWrite> = changes
        .iter()
        .map(|(u, tr)| {
            let row = decode::stored(tr);
            TransitionWrite {
                id: u.id,
                old_state: u.state.clone(),
                state: tr.state.as_str().to_string(),
                started_at: tr.started_at,
                finished_at: tr.finished_at,
                result: row.result,
                error: row.error,
                traceback: row.traceback,
                worker: row.worker,
            }
        })
        .collect();
    let mut tx = begin_fenced(pool, epoch).await?;
    let changed = tracking::record_transitions(&mut tx, &writes).await?;
    tx.commit().await?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_pass_is_followed_by_a_pause_three_times_as_long() {
        let ms = Duration::from_millis;
        assert_eq!(
            pause(ms(300), ms(20)),
            ms(300),
            "a short pass: the poll interval"
        );
        assert_eq!(pause(ms(300), ms(100)), ms(300));
        assert_eq!(
            pause(ms(300), ms(400)),
            ms(1200),
            "passes take a quarter of the time"
        );
        assert_eq!(pause(ms(300), Duration::MAX), Duration::MAX, "no overflow");
    }
}
