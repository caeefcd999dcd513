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

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

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
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// Bump the fencing epoch; every later claim by an older leader fails.
pub async fn bump_epoch(pool: &PgPool, holder: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE scheduler_leader SET epoch = epoch + 1, holder = $1, acquired_at = now(), renewed_at = now()
         WHERE id = 1 RETURNING epoch",
    )
    .bind(holder)
    .fetch_one(pool)
    .await
}

fn micro_now() -> MicroTime {
    let now = Utc::now();
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(now.timestamp_micros())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Runs the election until `stop` flips; publishes the role on the returned channel. On stop,
/// a held lease is released so a successor takes over at once.
pub fn spawn(
    client: Client,
    pool: PgPool,
    cfg: LeaderConfig,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<Role>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Role::Follower);
    let handle = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        // A released lease (graceful shutdown, rolling update) is taken at once instead of at
        // the next retry period, and another holder's renewal is seen when it happens (so a
        // lease that stops moving is timed from its last renewal, not from a later poll): the
        // watch wakes the round loop.
        let changed = Arc::new(Notify::new());
        let watch_task = tokio::spawn(watch_lease(
            api.clone(),
            cfg.lease_name.clone(),
            cfg.identity.clone(),
            changed.clone(),
        ));
        let mut elector = Elector {
            api,
            pool,
            cfg,
            observed: None,
            expires: None,
            written: None,
            tx,
        };
        loop {
            elector.round().await;
            // A candidate tries again the moment another holder's lease would expire.
            let wait = match elector.expires {
                Some(at) => (at.saturating_duration_since(Instant::now()) + EXPIRY_MARGIN)
                    .min(elector.cfg.retry_period),
                None => elector.cfg.retry_period,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        watch_task.abort();
        elector.release().await;
    });
    (rx, handle)
}

/// Slack after another holder's lease would expire before trying (and the shortest wait, so a
/// failing round does not spin).
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// Notify when the Lease is written by anyone but us (released, renewed by another holder,
/// taken). Best effort: the retry period still bounds takeover.
async fn watch_lease(api: Api<Lease>, name: String, identity: String, changed: Arc<Notify>) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
    while let Some(event) = events.next().await {
        if let Ok(lease) = event {
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            if holder != identity {
                changed.notify_one();
            }
        }
    }
}

struct Elector {
    api: Api<Lease>,
    pool: PgPool,
    cfg: LeaderConfig,
    /// The last lease record seen (holder, renewTime) and when we first saw it, on our clock.
    observed: Option<(String, Option<String>, Instant)>,
    /// When the lease another replica holds expires, if it is not renewed before (our clock).
    expires: Option<Instant>,
    /// The Lease as we last wrote it: releasing it is then one request (a rolling update waits
    /// on it), with a fresh read only if someone wrote it since.
    written: Option<Lease>,
    tx: watch::Sender<Role>,
}

impl Elector {
    async fn round(&mut self) {
        self.expires = None;
        match self.try_acquire_or_renew().await {
            Ok(true) => {}
            Ok(false) => self.set(Role::Follower),
            Err(e) => {
                let role = *self.tx.borrow();
                if let Role::Leader { valid_until, .. } = role
                    && Instant::now() >= valid_until
                {
                    warn!(identity = %self.cfg.identity, error = %e, "lost leader: lease renewal not certain");
                    self.set(Role::Follower);
                } else {
                    warn!(error = %e, "lease round failed");
                }
            }
        }
    }

    fn set(&self, role: Role) {
        let was_leader = matches!(*self.tx.borrow(), Role::Leader { .. });
        if was_leader && role == Role::Follower {
            info!(identity = %self.cfg.identity, "lost leader");
        }
        crate::metrics::METRICS.set_leader(matches!(role, Role::Leader { .. }));
        self.tx.send_replace(role);
    }

    /// `Ok(true)` while we hold the lease.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let attempt_started = Instant::now();
        let duration_secs = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(15);
        let existing = self.api.get_opt(&self.cfg.lease_name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.lease_name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => return self.became_leader(attempt_started).await,
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let ours = holder == self.cfg.identity;

        if !ours && !holder.is_empty() {
            // Someone else holds it: is the record still moving?
            let now = Instant::now();
            let record = (holder.clone(), renew.clone());
            let first_seen = match &self.observed {
                Some((h, r, seen)) if (h, r) == (&record.0, &record.1) => *seen,
                _ => {
                    self.observed = Some((record.0, record.1, now));
                    now
                }
            };
            let lease_secs = spec
                .lease_duration_seconds
                .map_or(self.cfg.lease_duration, |s| {
                    Duration::from_secs(u64::try_from(s).unwrap_or(15))
                });
            if now.duration_since(first_seen) < lease_secs {
                self.expires = Some(first_seen + lease_secs);
                return Ok(false);
            }
        }

        let was_leader = matches!(*self.tx.borrow(), Role::Leader { .. });
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(self.cfg.identity.clone());
        new_spec.lease_duration_seconds = Some(duration_secs);
        new_spec.renew_time = Some(micro_now());
        if !ours || !was_leader {
            new_spec.acquire_time = Some(micro_now());
            new_spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours));
        }
        lease.spec = Some(new_spec);
        // replace() sends our resourceVersion: a concurrent writer makes this fail with 409.
        match self
            .api
            .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
            .await
            .inspect(|written| self.written = Some(written.clone()))
        {
            Ok(_) if ours && was_leader => {
                let epoch = self.tx.borrow().epoch_unchecked();
                self.set(Role::Leader {
                    epoch,
                    valid_until: attempt_started + self.cfg.renew_deadline,
                });
                Ok(true)
            }
            Ok(_) => self.became_leader(attempt_started).await,
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn became_leader(&mut self, attempt_started: Instant) -> Result<bool, LeaderError> {
        let epoch = bump_epoch(&self.pool, &self.cfg.identity).await?;
        info!(identity = %self.cfg.identity, epoch, "acquired leader");
        self.set(Role::Leader {
            epoch,
            valid_until: attempt_started + self.cfg.renew_deadline,
        });
        Ok(true)
    }

    /// Give the lease up so a successor does not wait for it to expire.
    async fn release(&mut self) {
        let was_leader = matches!(*self.tx.borrow(), Role::Leader { .. });
        self.tx.send_replace(Role::Follower);
        if !was_leader {
            return;
        }
        let release = |mut lease: Lease| {
            let mine = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.cfg.identity.as_str());
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(micro_now());
            }
            mine.then_some(lease)
        };
        let params = PostParams::default();
        let first = match self.written.take().and_then(release) {
            Some(lease) => Some(
                self.api
                    .replace(&self.cfg.lease_name, &params, &lease)
                    .await,
            ),
            None => None,
        };
        let result = match first {
            Some(Ok(lease)) => Ok(Some(lease)),
            // Written by someone since (or not known): read it and try once more.
            _ => match self.api.get_opt(&self.cfg.lease_name).await {
                Ok(Some(lease)) => match release(lease) {
                    Some(lease) => self
                        .api
                        .replace(&self.cfg.lease_name, &params, &lease)
                        .await
                        .map(Some),
                    None => Ok(None), // no longer ours
                },
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(Some(_)) => info!(identity = %self.cfg.identity, "released leader lease"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "releasing the lease failed; it will expire"),
        }
    }
}

impl Role {
    fn epoch_unchecked(&self) -> i64 {
        match self {
            Role::Leader { epoch, .. } => *epoch,
            Role::Follower => 0,
        }
    }
}
