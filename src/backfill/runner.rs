//! The backfill runner (leader only): about once a second it works through the running
//! backfills. For each, in one fenced transaction: lock the backfill, count its unfinished runs,
//! insert PENDING executions for its next slots up to `maxParallel` unfinished (a slot that has
//! an execution already is counted as `alreadyRan`), move the cursor on, and record the outcome
//! counts. The dispatcher's publisher sends PENDING executions as for a manual run.
//!
//! Failover: everything a pass does commits together with the cursor, fenced by the leader's
//! epoch, so a new leader continues from the stored cursor and no slot gets two runs (the
//! `(job_id, slot_key)` unique index would refuse the second anyway).

use std::{sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::{
    leader::Role,
    schedule::JobSchedule,
    status::Feed,
    store::{
        backfills::{BackfillTx, Pass, RunCounts, RunningBackfill},
        claims::ClaimError,
    },
};

/// Running backfills worked through per pass at most (the oldest first; the rest next pass).
const PER_PASS: i64 = 100;
/// Slots looked at per round (those that ran already are passed over without using up
/// `maxParallel`), and rounds per backfill per pass: a range of 10,000 slots that all ran
/// already is gone through in one pass.
const ROUND_SLOTS: usize = 500;
const ROUNDS: usize = 20;
/// Between passes.
const EVERY: Duration = Duration::from_secs(1);

pub struct Runner {
    pub pool: sqlx::PgPool,
    pub role: watch::Receiver<Role>,
    pub feed: Feed,
    /// The dispatcher's wake-up: new PENDING runs are published at once, not at its next check.
    pub wake: Arc<Notify>,
    /// Shadow mode: runs are recorded as SHADOW, nothing is published.
    pub shadow: bool,
}

/// What one pass did to one backfill.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    dispatched: i64,
    finished: bool,
}

impl Runner {
    /// Run until `stop` flips; passes only while this replica leads.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let epoch = self.role.borrow().epoch();
            if let Some(epoch) = epoch {
                self.pass(epoch).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn pass(&self, epoch: i64) {
        let running = match crate::store::backfills::running(&self.pool, PER_PASS).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "reading the running backfills failed");
                return;
            }
        };
        for b in running {
            match self.step(epoch, &b).await {
                Ok(outcome) => {
                    if outcome.dispatched > 0 {
                        self.wake.notify_one();
                    }
                    if outcome.finished {
                        info!(backfill = %b.request_key, job_id = b.job_id, "backfill finished");
                    }
                    // The status writer skips a write that changes nothing.
                    self.feed.touch(b.job_id);
                }
                // A newer leader exists: it carries on from the stored cursor.
                Err(ClaimError::Fenced { .. }) => return,
                // One backfill's failure does not hold up the others.
                Err(ClaimError::Db(e)) => {
                    warn!(backfill = %b.request_key, job_id = b.job_id, error = %e, "backfill pass failed; retrying")
                }
            }
        }
    }

    /// One pass over one backfill, in one fenced transaction.
    async fn step(&self, epoch: i64, b: &RunningBackfill) -> Result<Outcome, ClaimError> {
        let mut tx = BackfillTx::begin(&self.pool, epoch).await?;
        let Some(cursor) = tx.lock(b.id).await? else {
            return Ok(Outcome::default()); // finished meanwhile
        };
        let counts = tx.counts(b.id).await?;
        if b.job_deleted {
            tx.record(b.id, &stopped(counts, "Cancelled", "the job was deleted"))
                .await?;
            tx.commit().await?;
            return Ok(Outcome {
                finished: true,
                ..Outcome::default()
            });
        }
        let schedule = match JobSchedule::from_stored(
            &b.schedule_config,
            &b.time_zone,
            b.start_time,
            b.anchor_time,
        ) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("the stored schedule cannot be read: {e}");
                tx.record(b.id, &stopped(counts, "Failed", &why)).await?;
                tx.commit().await?;
                return Ok(Outcome {
                    finished: true,
                    ..Outcome::default()
                });
            }
        };
        let mut room = super::room(b.max_parallel, counts.unfinished);
        let mut pass = Pass {
            cursor,
            counts,
            state: "Running",
            ..Pass::default()
        };
        let mut exhausted = false;
        for _ in 0..ROUNDS {
            if room == 0 {
                break;
            }
            let candidates =
                super::next_slots(&schedule, b.from_time, b.to_time, pass.cursor, ROUND_SLOTS);
            if candidates.is_empty() {
                exhausted = true;
                break;
            }
            let recorded: std::collections::HashSet<String> = tx
                .recorded_slots(b.job_id, &candidates)
                .await?
                .into_iter()
                .collect();
            let take = super::take_slots(&candidates, &recorded, room);
            let inserted = tx
                .insert_runs(b.job_id, b.id, &take.run, self.shadow)
                .await?;
            let inserted_i = i64::try_from(inserted).unwrap_or(i64::MAX);
            let raced = i64::try_from(take.run.len()).unwrap_or(0) - inserted_i;
            pass.dispatched += inserted_i;
            pass.already_ran += take.already_ran + raced;
            room = room.saturating_sub(usize::try_from(inserted).unwrap_or(usize::MAX));
            pass.cursor = take.cursor.or(pass.cursor);
        }
        if !exhausted {
            exhausted =
                super::next_slots(&schedule, b.from_time, b.to_time, pass.cursor, 1).is_empty();
        }
        let finished = exhausted && counts.unfinished == 0 && pass.dispatched == 0;
        if finished {
            pass.state = "Complete";
        }
        tx.record(b.id, &pass).await?;
        tx.commit().await?;
        debug!(backfill = %b.request_key, job_id = b.job_id, dispatched = pass.dispatched,
               already_ran = pass.already_ran, unfinished = counts.unfinished, "backfill pass");
        Ok(Outcome {
            dispatched: pass.dispatched,
            finished,
        })
    }
}

/// A pass that ends a backfill (`state`, and why).
fn stopped<'a>(counts: RunCounts, state: &'a str, message: &'a str) -> Pass<'a> {
    Pass {
        counts,
        state,
        message: Some(message),
        ..Pass::default()
    }
}
