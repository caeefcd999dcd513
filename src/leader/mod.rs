//! Leader election on a `coordination.k8s.io/v1` Lease, with a fencing epoch in Postgres.
//!
//! Written here rather than taken from `kube-lease-manager`: we need client-go's three timings
//! (lease duration, renew deadline, retry period), a local deadline after which a leader stops
//! acting *before* anyone else can take over, and the epoch bump tied to each acquisition.
//!
//! Safety argument: a leader acts only until `last successful renewal + renew_deadline`, measured
//! on its own monotonic clock (which keeps running while the process is paused). A candidate takes
//! over only after it has seen the same record unchanged for `lease_duration` on *its* clock,
//! which is longer. And every claim transaction checks the epoch, which each new leader bumps:
//! a deposed leader that wakes up late cannot claim.
//!
//! Rooms: [`elector`] holds the round logic and talks only to two small abstractions, a
//! [`LeaseApi`] (the Lease object: get, create, replace with resourceVersion conflicts, and a
//! change notification) and an [`EpochFence`] (bump the epoch). [`spawn`] wires in the
//! production ones, the kube `Api<Lease>` ([`KubeLeases`]) and Postgres ([`PgFence`]); the tests
//! use in-memory fakes under a paused tokio clock.
//!
//! Time is `tokio::time::Instant`: monotonic like `std::time::Instant` in production, and it
//! follows a paused test clock, so the timings can be tested without sleeping.

mod elector;
mod lease;
#[cfg(test)]
mod tests;

use std::time::Duration;

use kube::Client;
use sqlx::PgPool;
use tokio::{sync::watch, time::Instant};

pub use lease::{EpochFence, KubeLeases, LeaseApi, LeaseError, PgFence};

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What this replica may do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    Leader { epoch: i64, valid_until: Instant },
}

impl Role {
    /// The epoch, if this replica is the leader and its lease is certainly still held.
    pub fn epoch(&self) -> Option<i64> {
        match self {
            Role::Leader { epoch, valid_until } if Instant::now() < *valid_until => Some(*epoch),
            _ => None,
        }
    }

    /// The leader by its last round, but that round's certainty has run out (a renewal is
    /// late): not allowed to write now, yet no new leadership will come to redo what it puts
    /// off. Work meeting a lapsed leader waits and retries; a follower's is dropped (the next
    /// leader re-reconciles everything).
    pub fn lapsed(&self) -> bool {
        matches!(self, Role::Leader { valid_until, .. } if Instant::now() >= *valid_until)
    }

    /// The leader by its last round, certain or not.
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Kubernetes API: {0}")]
    Lease(#[from] LeaseError),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// Runs the election until `stop` flips; publishes the role on the returned channel. On stop,
/// a held lease is released so a successor takes over at once.
pub fn spawn(
    client: Client,
    pool: PgPool,
    cfg: LeaderConfig,
    stop: watch::Receiver<bool>,
) -> (watch::Receiver<Role>, tokio::task::JoinHandle<()>) {
    let leases = KubeLeases::new(client, &cfg.namespace, &cfg.lease_name);
    spawn_with(leases, PgFence::new(pool), cfg, stop)
}

/// [`spawn`] over any Lease API and epoch fence (the tests pass in-memory ones).
pub fn spawn_with<L: LeaseApi, F: EpochFence>(
    leases: L,
    fence: F,
    cfg: LeaderConfig,
    stop: watch::Receiver<bool>,
) -> (watch::Receiver<Role>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Role::Follower);
    let handle = tokio::spawn(elector::run(leases, fence, cfg, tx, stop));
    (rx, handle)
}
