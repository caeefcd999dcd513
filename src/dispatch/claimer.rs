//! The claim loop: due slots become execution rows in fenced transactions, as many per
//! transaction as [`CLAIM_BATCH`], claimed up to a horizon sized by the burst coming due.

use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{info, warn};

use super::{
    Dispatcher, LOOKAHEAD, MAX_CLAIM_AHEAD, MAX_IDLE, PUBLISH_TIMEOUT, Term,
    plan::{ClaimStats, plan_batch},
};
use crate::{
    failpoint,
    metrics::METRICS,
    store::claims::{self, ClaimError, ClaimTx},
};

/// Jobs claimed per transaction.
const CLAIM_BATCH: i64 = 1000;
/// Claim cost per job assumed until claims have been timed (measured ~100 µs on 2 cores).
const CLAIM_COST_GUESS: Duration = Duration::from_micros(200);
/// How often the runs coming due are counted to size the claim horizon, at most.
const HORIZON_EVERY: Duration = Duration::from_secs(1);
/// The count reads every job due within [`MAX_CLAIM_AHEAD`]: with 100,000 jobs each running
/// every minute, a scan of the whole table (120–370 ms of Postgres, measured under that load).
/// The next count starts no sooner than this many times the last one took, so counting keeps
/// to a twentieth of the time whatever the number of jobs.
const HORIZON_COUNT_SPACING: u32 = 20;
/// ... and no later than this after the last: a burst is still seen at least 50 s of the
/// [`MAX_CLAIM_AHEAD`] in which it is looked for before its due time.
const HORIZON_EVERY_MAX: Duration = Duration::from_secs(10);

/// When to count the runs coming due again, after a count that took `took`.
pub fn recount_after(took: Duration) -> Duration {
    took.saturating_mul(HORIZON_COUNT_SPACING)
        .clamp(HORIZON_EVERY, HORIZON_EVERY_MAX)
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

impl Dispatcher {
    /// Claim due slots until leadership ends.
    pub(super) async fn claim_loop(&self, term: &Term) {
        let mut role = self.role.clone();
        // Shadow mode claims nothing ahead: its SHADOW rows would take the next runs from the
        // live operator that replaces it at cutover.
        let mut ahead = if self.shadow() {
            chrono::Duration::zero()
        } else {
            LOOKAHEAD
        };
        let mut cost = CLAIM_COST_GUESS;
        // When the runs coming due were last counted, and when to count them again.
        let mut sized: Option<Instant> = None;
        let mut recount = HORIZON_EVERY;
        while term.leading() {
            // A burst too large to claim within LOOKAHEAD starts being claimed earlier.
            if !self.shadow() && sized.is_none_or(|t| t.elapsed() >= recount) {
                let counting = Instant::now();
                sized = Some(counting);
                match claims::coming_due(&self.pool, Utc::now() + MAX_CLAIM_AHEAD).await {
                    Ok(n) => ahead = claim_horizon(n, cost),
                    Err(e) => warn!(error = %e, "counting the runs coming due failed"),
                }
                recount = recount_after(counting.elapsed());
            }
            let started = Instant::now();
            match self.claim_batch(term.epoch, ahead).await {
                Ok(stats) => {
                    if stats.jobs > 0 {
                        METRICS.claim_batch.observe(stats.jobs as f64);
                        METRICS
                            .claim_duration
                            .observe(started.elapsed().as_secs_f64());
                    }
                    if stats.jobs >= 100 {
                        let per_job = started.elapsed() / stats.jobs as u32;
                        cost = cost.saturating_mul(3).saturating_add(per_job) / 4;
                    }
                    self.report_claimed(&stats).await;
                    if stats.jobs > 0 {
                        failpoint::hit(failpoint::Point::ClaimBeforePublish);
                        tracing::debug!(?stats, "claimed");
                        term.claimed.notify_one();
                    }
                    if stats.jobs as i64 == CLAIM_BATCH {
                        continue; // more are due right now
                    }
                }
                Err(ClaimError::Fenced { ours, current }) => {
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
            let idle = match claims::next_claim(&self.pool, ahead).await {
                Ok(Some(t)) => (t - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_IDLE),
                Ok(None) => MAX_IDLE,
                Err(e) => {
                    warn!(error = %e, "reading the next claim time failed");
                    Duration::from_secs(1)
                }
            };
            if idle.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = self.wake.notified() => term.claimed.notify_one(), // a manual trigger may wait
                _ = role.changed() => {}
            }
        }
    }

    /// Claim up to [`CLAIM_BATCH`] due jobs in one transaction (SHADOW instead of PENDING in
    /// shadow mode).
    ///
    /// Jobs under `concurrencyPolicy: Allow` are claimed up to `lookahead` before they are due,
    /// one slot ahead at most: their run does not depend on anything that happens until then,
    /// and a burst of runs due in the same second is then only published at its time, not
    /// claimed at it (the publisher holds each run until its `publish_after`). Forbid and
    /// Replace look at the previous run, so those jobs are claimed when due.
    async fn claim_batch(
        &self,
        epoch: i64,
        lookahead: chrono::Duration,
    ) -> Result<ClaimStats, ClaimError> {
        let now = Utc::now();
        let mut tx = ClaimTx::begin(&self.pool, epoch).await?;
        let rows = tx.due_jobs(now, CLAIM_BATCH, now + lookahead).await?;
        let mut batch = plan_batch(rows, now, self.shadow(), || {
            uuid::Uuid::new_v4().to_string()
        });
        // Replace: the unfinished runs end here; the caller broadcasts their revocation.
        batch.stats.revoked = tx.revoke_unfinished(&batch.replace, now).await?;
        tx.insert_executions(&batch.executions).await?;
        tx.advance_jobs(&batch.advances).await?;
        if batch.stats.jobs > 0 {
            failpoint::hit(failpoint::Point::ClaimBeforeCommit);
        }
        tx.commit().await?;
        Ok(batch.stats)
    }

    /// Metrics, status, Events and revocations for a committed claim batch.
    async fn report_claimed(&self, stats: &ClaimStats) {
        METRICS.dispatched("missed", stats.missed as u64);
        METRICS.dispatched("skipped", stats.skipped as u64);
        METRICS.dispatched("replaced", stats.revoked.len() as u64);
        if stats.unreadable > 0 {
            // Cannot happen for rows the reconciler wrote; the jobs are parked, not looped on.
            warn!(
                jobs = stats.unreadable,
                "unreadable stored schedules: jobs parked"
            );
            METRICS
                .job_failures
                .get_or_create(&crate::metrics::Category {
                    category: "unreadable_schedule",
                })
                .inc_by(stats.unreadable as u64);
        }
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
    }

    /// Broadcast Celery revocations for runs replaced under `concurrencyPolicy: Replace`.
    async fn revoke(&self, task_ids: &[String]) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.revoke(task_ids, true)).await {
            Ok(Ok(())) => info!(task_ids = ?task_ids, "revoked runs replaced by newer ones"),
            Ok(Err(e)) => warn!(error = %e, task_ids = ?task_ids, "revoke broadcast failed"),
            Err(_) => warn!(task_ids = ?task_ids, "revoke broadcast timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

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
    fn the_runs_coming_due_are_counted_within_a_share_of_the_time() {
        // A quick count: every second, as before.
        assert_eq!(recount_after(Duration::from_millis(3)), HORIZON_EVERY);
        // The scan of 100,000 jobs measured under load: every 2.4 s / 7.4 s.
        assert_eq!(
            recount_after(Duration::from_millis(120)),
            Duration::from_millis(2400)
        );
        assert_eq!(
            recount_after(Duration::from_millis(370)),
            Duration::from_millis(7400)
        );
        // A slow one still leaves 50 s of MAX_CLAIM_AHEAD to see a burst in.
        assert_eq!(recount_after(Duration::from_secs(3)), HORIZON_EVERY_MAX);
        assert_eq!(recount_after(Duration::MAX), HORIZON_EVERY_MAX);
        assert!(
            MAX_CLAIM_AHEAD.to_std().expect("positive") - HORIZON_EVERY_MAX
                >= Duration::from_secs(50)
        );
    }
}
