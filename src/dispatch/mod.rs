//! The dispatcher (leader only): claim due slots in batches, then publish them (transactional
//! outbox). It sleeps until the earliest due time or until something changes, never on a tick,
//! and nothing here waits for the Kubernetes API.
//!
//! The rooms, in the order a run goes through them: `claimer` (due slots → execution rows, in
//! fenced transactions, planned by the pure `plan`), `outbox` (PENDING runs held until due),
//! `encode` (runs → Celery messages), `publisher` (messages → broker, failures, the publish
//! ledger) and `recorder` (published runs → DISPATCHED, in the background).

mod calendars;
mod claimer;
mod encode;
mod ledger;
mod outbox;
pub mod plan;
mod publisher;
mod recorder;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tracing::info;

pub use claimer::claim_horizon;
pub use encode::expiry;

use crate::{celery::Publisher, leader::Role, status::Feed};

/// Postgres connections of the dispatcher's own (`store::dedicated`): one each for the claim and
/// publish loops, one for recording published runs meanwhile, and two for the readers of
/// bursts (one started ahead of its runs' time, one for runs due sooner that were claimed
/// after it started).
pub const CONNECTIONS: u32 = 5;
/// How long before its time a run (of an Allow job) is claimed, and the publisher then reads
/// and encodes it: a burst due in the same second is then only published at its time. A run
/// is fixed this long ahead (a job suspended or deleted in these last seconds still runs
/// once), or up to [`MAX_CLAIM_AHEAD`] in a burst too large to claim in this time.
pub const LOOKAHEAD: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// How far ahead claims may reach when more runs come due together than [`LOOKAHEAD`] leaves
/// time to claim (see [`claim_horizon`]): 100,000 runs due together took 27 s to claim on 2
/// cores (274 µs each, beside the publisher).
pub const MAX_CLAIM_AHEAD: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Runs per publish in a burst (the default of [`Dispatcher::publish_chunk`]). A chunk in
/// memory is its envelopes (~5 MB for 5,000) while it is read, encoded and published; the
/// Redis client holds one LPUSH of them at a time (see `celery::redis_publish`). A burst holds
/// up to four chunks at once (see `publisher`), so the chunk sets its peak: chunks of
/// 10,000 took a 100,000-run burst to 158 MiB, of 5,000 to ~130 MiB.
pub const PUBLISH_CHUNK: usize = 5_000;
/// A publish that takes longer than this is treated as failed (and retried).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sleep between checks, so a missed wake-up costs at most this.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// A run in the outbox or on its way out: its execution id and when it is due.
type RunAt = (i64, DateTime<Utc>);

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

/// One term of leadership, shared by the claim and publish loops: the epoch every claim is
/// fenced with, whether it still holds, and the claimer's signal that runs were claimed.
struct Term {
    epoch: i64,
    role: watch::Receiver<Role>,
    claimed: Notify,
}

impl Term {
    /// Still the leader of this term (a paused process must not act after waking up past its
    /// lease, nor a fenced one).
    fn leading(&self) -> bool {
        self.role.borrow().epoch() == Some(self.epoch)
    }
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
            let term = Term {
                epoch,
                role: self.role.clone(),
                claimed: Notify::new(),
            };
            tokio::select! {
                _ = self.claim_loop(&term) => {}
                _ = self.publish_loop(&term) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            info!(identity = %self.identity, epoch, "dispatcher stopped: not the leader");
        }
    }
}
