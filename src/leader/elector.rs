//! The election rounds: acquire or renew the Lease, time another holder's record on our own
//! clock, bump the epoch on each acquisition, release on stop. Talks only to [`LeaseApi`] and
//! [`EpochFence`], so the timings are tested with fakes under a paused clock (`super::tests`).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::api::ObjectMeta;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tracing::{info, warn};

use super::{EpochFence, LeaderConfig, LeaderError, LeaseApi, LeaseError, Role};

/// Slack after another holder's lease would expire before trying (and the shortest wait, so a
/// failing round does not spin).
pub(super) const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

fn micro_now() -> MicroTime {
    let now = Utc::now();
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(now.timestamp_micros())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The election loop behind [`super::spawn`]: rounds until `stop` flips, then releases.
pub(super) async fn run<L: LeaseApi, F: EpochFence>(
    leases: L,
    fence: F,
    cfg: LeaderConfig,
    tx: watch::Sender<Role>,
    mut stop: watch::Receiver<bool>,
) {
    // A released lease (graceful shutdown, rolling update) is taken at once instead of at the
    // next retry period, and another holder's renewal is seen when it happens (so a lease that
    // stops moving is timed from its last renewal, not from a later poll): the watch wakes the
    // round loop.
    let changed = Arc::new(Notify::new());
    let watch_task = tokio::spawn(leases.watch_others(cfg.identity.clone(), changed.clone()));
    let mut elector = Elector {
        leases,
        fence,
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
}

struct Elector<L, F> {
    leases: L,
    fence: F,
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

impl<L: LeaseApi, F: EpochFence> Elector<L, F> {
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

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(15)
    }

    /// `Ok(true)` while we hold the lease.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let attempt_started = Instant::now();
        let Some(mut lease) = self.leases.get().await? else {
            return self.create(attempt_started).await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.cfg.identity;
        if !ours && !holder.is_empty() && self.other_still_holds(&spec, holder) {
            return Ok(false);
        }

        let was_leader = matches!(*self.tx.borrow(), Role::Leader { .. });
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(self.cfg.identity.clone());
        new_spec.lease_duration_seconds = Some(self.duration_secs());
        new_spec.renew_time = Some(micro_now());
        if !ours || !was_leader {
            new_spec.acquire_time = Some(micro_now());
            new_spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours));
        }
        lease.spec = Some(new_spec);
        // replace() sends our resourceVersion: a concurrent writer makes this fail with 409.
        match self
            .leases
            .replace(&lease)
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
            Err(LeaseError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// No Lease yet: create it held by us. Losing the race to create it is not an error.
    async fn create(&mut self, attempt_started: Instant) -> Result<bool, LeaderError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.cfg.lease_name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.cfg.identity.clone()),
                lease_duration_seconds: Some(self.duration_secs()),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match self.leases.create(&lease).await {
            Ok(_) => self.became_leader(attempt_started).await,
            Err(LeaseError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Someone else holds the lease: is the record still moving? True until we have seen the
    /// same (holder, renewTime) for the lease duration on our own clock; the record's own
    /// timestamps are another machine's wall clock and are never trusted.
    fn other_still_holds(&mut self, spec: &LeaseSpec, holder: String) -> bool {
        let now = Instant::now();
        let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let first_seen = match &self.observed {
            Some((h, r, seen)) if (h, r) == (&holder, &renew) => *seen,
            _ => {
                self.observed = Some((holder, renew, now));
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
            return true;
        }
        false
    }

    async fn became_leader(&mut self, attempt_started: Instant) -> Result<bool, LeaderError> {
        let epoch = self.fence.bump(&self.cfg.identity).await?;
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
        let first = match self.written.take().and_then(release) {
            Some(lease) => Some(self.leases.replace(&lease).await),
            None => None,
        };
        let result = match first {
            Some(Ok(lease)) => Ok(Some(lease)),
            // Written by someone since (or not known): read it and try once more.
            _ => match self.leases.get().await {
                Ok(Some(lease)) => match release(lease) {
                    Some(lease) => self.leases.replace(&lease).await.map(Some),
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
