//! The elector under a paused tokio clock, against an in-memory Lease (resourceVersion
//! conflicts, a watch that wakes other replicas) and an in-memory epoch. Paused time is exact:
//! a task woken by a timer sees `Instant::now()` equal to the timer's deadline, so the timings
//! below are asserted to the millisecond.

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::api::ObjectMeta;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout},
};

use super::{EpochFence, LeaderConfig, LeaseApi, LeaseError, Role, spawn_with};

const LEASE: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);
const MS: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Store {
    lease: Option<Lease>,
    version: u64,
    /// When each write landed (our clock) and who held the Lease after it.
    writes: Vec<(Instant, Option<String>)>,
    watchers: Vec<(String, Weak<Notify>)>,
    /// On the next replace, this holder writes the Lease first, and its watch event is not yet
    /// delivered: the replace must fail on its stale resourceVersion alone.
    race_next_replace: Option<String>,
}

impl Store {
    fn write(&mut self, mut lease: Lease, notify: bool) -> Lease {
        self.version += 1;
        lease.metadata.resource_version = Some(self.version.to_string());
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        self.writes.push((Instant::now(), holder.clone()));
        self.lease = Some(lease.clone());
        if notify {
            for (identity, changed) in &self.watchers {
                if holder.as_deref() != Some(identity.as_str())
                    && let Some(changed) = changed.upgrade()
                {
                    changed.notify_one();
                }
            }
        }
        lease
    }
}

/// One replica's connection to the shared in-memory Lease; `down` cuts this replica only.
#[derive(Clone, Default)]
struct FakeLeases {
    store: Arc<Mutex<Store>>,
    down: Arc<AtomicBool>,
}

fn unavailable() -> LeaseError {
    LeaseError::Kube(kube::Error::Api(Box::new(
        kube::core::Status::failure("apiserver unreachable", "ServiceUnavailable").with_code(503),
    )))
}

fn held_by(holder: &str, renew_second: i64, duration_secs: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.to_owned()),
        lease_duration_seconds: Some(duration_secs),
        renew_time: Some(MicroTime(
            Timestamp::from_second(renew_second).unwrap_or(Timestamp::UNIX_EPOCH),
        )),
        ..Default::default()
    }
}

impl FakeLeases {
    /// Another replica's connection to the same Lease.
    fn replica(&self) -> FakeLeases {
        FakeLeases {
            store: self.store.clone(),
            down: Arc::default(),
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// A writer outside the test's electors (a replica that renews and then dies).
    fn put(&self, spec: LeaseSpec) {
        let mut store = self.store.lock().unwrap();
        let metadata = ObjectMeta {
            name: Some("kube-beat".into()),
            ..Default::default()
        };
        store.write(
            Lease {
                metadata,
                spec: Some(spec),
            },
            true,
        );
    }

    fn spec(&self) -> LeaseSpec {
        let store = self.store.lock().unwrap();
        store.lease.as_ref().and_then(|l| l.spec.clone()).unwrap()
    }

    fn writes(&self) -> Vec<(Instant, Option<String>)> {
        self.store.lock().unwrap().writes.clone()
    }

    fn race_next_replace(&self, holder: &str) {
        self.store.lock().unwrap().race_next_replace = Some(holder.to_owned());
    }

    fn check(&self) -> Result<(), LeaseError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        Ok(())
    }
}

impl LeaseApi for FakeLeases {
    async fn get(&self) -> Result<Option<Lease>, LeaseError> {
        self.check()?;
        Ok(self.store.lock().unwrap().lease.clone())
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.check()?;
        let mut store = self.store.lock().unwrap();
        if store.lease.is_some() {
            return Err(LeaseError::Conflict);
        }
        Ok(store.write(lease.clone(), true))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.check()?;
        let mut store = self.store.lock().unwrap();
        if let Some(racer) = store.race_next_replace.take() {
            let mut theirs = store.lease.clone().unwrap_or_default();
            theirs.spec = Some(held_by(&racer, 1_000_000, 15));
            store.write(theirs, false);
        }
        let Some(current) = &store.lease else {
            return Err(LeaseError::Kube(kube::Error::Api(Box::new(
                kube::core::Status::failure("not found", "NotFound").with_code(404),
            ))));
        };
        if current.metadata.resource_version != lease.metadata.resource_version {
            return Err(LeaseError::Conflict);
        }
        Ok(store.write(lease.clone(), true))
    }

    fn watch_others(
        &self,
        identity: String,
        changed: Arc<Notify>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let store = self.store.clone();
        store
            .lock()
            .unwrap()
            .watchers
            .push((identity, Arc::downgrade(&changed)));
        std::future::pending()
    }
}

#[derive(Clone, Default)]
struct FakeFence {
    /// Who bumped, in order: the epoch is the length.
    bumps: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
}

impl FakeFence {
    fn bumps(&self) -> Vec<String> {
        self.bumps.lock().unwrap().clone()
    }
}

impl EpochFence for FakeFence {
    async fn bump(&self, holder: &str) -> Result<i64, sqlx::Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(sqlx::Error::PoolTimedOut);
        }
        let mut bumps = self.bumps.lock().unwrap();
        bumps.push(holder.to_owned());
        Ok(i64::try_from(bumps.len()).unwrap())
    }
}

struct Replica {
    role: watch::Receiver<Role>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

fn start(leases: &FakeLeases, fence: &FakeFence, identity: &str) -> Replica {
    let cfg = LeaderConfig {
        lease_name: "kube-beat".into(),
        namespace: "default".into(),
        identity: identity.into(),
        lease_duration: LEASE,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY,
    };
    let (stop, stop_rx) = watch::channel(false);
    let (role, handle) = spawn_with(leases.clone(), fence.clone(), cfg, stop_rx);
    Replica { role, stop, handle }
}

impl Replica {
    /// Waits (paused clock) until the published role is leader; returns when that happened.
    async fn leader_within(&mut self, limit: Duration) -> Option<Instant> {
        let became = self.role.wait_for(|r| matches!(r, Role::Leader { .. }));
        timeout(limit, became).await.ok()?.ok()?;
        Some(Instant::now())
    }

    async fn follower_within(&mut self, limit: Duration) -> Option<Instant> {
        let became = self.role.wait_for(|r| *r == Role::Follower);
        timeout(limit, became).await.ok()?.ok()?;
        Some(Instant::now())
    }

    fn valid_until(&self) -> Instant {
        match *self.role.borrow() {
            Role::Leader { valid_until, .. } => valid_until,
            Role::Follower => panic!("expected a leader"),
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        self.handle.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn acquire_creates_the_lease_and_bumps_the_epoch() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    let t0 = Instant::now();
    let mut a = start(&leases, &fence, "a");
    assert_eq!(
        a.leader_within(MS).await,
        Some(t0),
        "no lease: leader at once"
    );
    assert_eq!(a.role.borrow().epoch(), Some(1));
    assert_eq!(fence.bumps(), ["a"]);
    let spec = leases.spec();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(a.valid_until(), t0 + RENEW_DEADLINE);
}

#[tokio::test(start_paused = true)]
async fn leader_renews_every_retry_period_and_keeps_its_epoch() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    let mut a = start(&leases, &fence, "a");
    let t0 = a.leader_within(MS).await.unwrap();
    // Well past both the renew deadline and the lease duration.
    for k in 1..=15u32 {
        sleep_until(t0 + RETRY * k + MS).await;
        assert_eq!(
            a.valid_until(),
            t0 + RETRY * k + RENEW_DEADLINE,
            "round {k}"
        );
        assert_eq!(a.role.borrow().epoch(), Some(1), "round {k}");
        let writes = leases.writes();
        assert_eq!(writes.len(), k as usize + 1, "one write per retry period");
        assert_eq!(writes.last().unwrap().0, t0 + RETRY * k);
    }
    assert_eq!(fence.bumps(), ["a"], "renewals do not bump the epoch");
    assert_eq!(leases.spec().lease_transitions, Some(0));
}

#[tokio::test(start_paused = true)]
async fn leader_stops_acting_at_its_renew_deadline_before_a_successor_takes_over() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    let mut a = start(&leases, &fence, "a");
    a.leader_within(MS).await.unwrap();
    let b_leases = leases.replica();
    let mut b = start(&b_leases, &fence, "b");
    sleep(Duration::from_secs(5)).await;
    leases.set_down(true); // a's renewals fail from now on; b still reaches the apiserver
    let last_renewal = leases.writes().last().unwrap().0;
    let valid_until = a.valid_until();
    assert_eq!(valid_until, last_renewal + RENEW_DEADLINE);

    sleep_until(valid_until - MS).await;
    assert_eq!(
        a.role.borrow().epoch(),
        Some(1),
        "still certain just before"
    );
    sleep_until(valid_until).await;
    assert_eq!(a.role.borrow().epoch(), None, "not acting at the deadline");
    let stepped_down = a.follower_within(RETRY + MS).await;
    assert!(
        stepped_down.is_some(),
        "the failing round publishes Follower"
    );

    let b_acquired = b.leader_within(LEASE).await.unwrap();
    assert!(b_acquired >= last_renewal + LEASE, "b waited the lease out");
    assert!(stepped_down.unwrap() < b_acquired);
    assert_eq!(b.role.borrow().epoch(), Some(2));
    assert_eq!(a.role.borrow().epoch(), None);
}

#[tokio::test(start_paused = true)]
async fn release_on_stop_lets_a_successor_take_over_at_once() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    let mut a = start(&leases, &fence, "a");
    a.leader_within(MS).await.unwrap();
    let mut b = start(&leases.replica(), &fence, "b");
    sleep(Duration::from_secs(3) + Duration::from_millis(500)).await;
    assert_eq!(*b.role.borrow(), Role::Follower);

    let stopped = Instant::now();
    let mut a_role = a.role.clone();
    a.stop().await;
    assert_eq!(*a_role.borrow_and_update(), Role::Follower);
    assert!(
        leases.writes().contains(&(stopped, None)),
        "holder cleared on stop"
    );

    // Neither the lease duration nor the retry period: the watch wakes b.
    let b_acquired = b.leader_within(Duration::from_millis(100)).await;
    assert_eq!(b_acquired, Some(stopped));
    assert_eq!(b.role.borrow().epoch(), Some(2));
    assert_eq!(leases.spec().lease_transitions, Some(1));
}

#[tokio::test(start_paused = true)]
async fn takeover_waits_a_full_lease_duration_on_the_candidates_own_clock() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    // The record's renewTime is an hour-old wall-clock time: it must not shorten the wait.
    leases.put(held_by("old", 1_000_000, 15));
    let t0 = Instant::now();
    let mut a = start(&leases, &fence, "a");
    // "old" renews for a while, then dies.
    let mut last = t0;
    for k in 1..=10i64 {
        sleep_until(t0 + RETRY * k as u32).await;
        assert_eq!(*a.role.borrow(), Role::Follower, "old still renewing");
        leases.put(held_by("old", 1_000_000 + k, 15));
        last = Instant::now();
    }
    let acquired = a.leader_within(LEASE * 2).await.unwrap();
    assert!(
        acquired >= last + LEASE,
        "took over early: {:?}",
        acquired - last
    );
    assert!(
        acquired <= last + LEASE + Duration::from_millis(100),
        "took over late"
    );
    assert_eq!(fence.bumps(), ["a"]);
    assert_eq!(leases.spec().lease_transitions, Some(1));
}

#[tokio::test(start_paused = true)]
async fn takeover_honours_the_records_lease_duration() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    leases.put(held_by("old", 1_000_000, 40));
    let t0 = Instant::now();
    let mut a = start(&leases, &fence, "a");
    let acquired = a.leader_within(Duration::from_secs(60)).await.unwrap();
    assert!(
        acquired >= t0 + Duration::from_secs(40),
        "{:?}",
        acquired - t0
    );
}

#[tokio::test(start_paused = true)]
async fn each_acquisition_bumps_the_epoch() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    let mut a = start(&leases, &fence, "a");
    a.leader_within(MS).await.unwrap();
    assert_eq!(a.role.borrow().epoch(), Some(1));
    a.stop().await;
    let mut b = start(&leases, &fence, "b");
    b.leader_within(MS).await.unwrap();
    assert_eq!(b.role.borrow().epoch(), Some(2));
    b.stop().await;
    let mut a = start(&leases, &fence, "a");
    a.leader_within(MS).await.unwrap();
    assert_eq!(a.role.borrow().epoch(), Some(3));
    assert_eq!(fence.bumps(), ["a", "b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn no_leader_without_an_epoch_bump() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    fence.down.store(true, Ordering::SeqCst);
    let mut a = start(&leases, &fence, "a");
    assert_eq!(
        a.leader_within(RETRY * 3).await,
        None,
        "lease held, epoch not bumped"
    );
    fence.down.store(false, Ordering::SeqCst);
    a.leader_within(RETRY + MS).await.unwrap();
    assert_eq!(a.role.borrow().epoch(), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_renewal_means_not_leader_at_once() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    let mut a = start(&leases, &fence, "a");
    let t0 = a.leader_within(MS).await.unwrap();
    sleep_until(t0 + RETRY + MS).await;
    let valid_until = a.valid_until();
    leases.race_next_replace("x");
    // The next renewal (at 2 * RETRY) fails on its resourceVersion, long before valid_until.
    let lost = a.follower_within(RETRY).await;
    assert_eq!(lost, Some(t0 + RETRY * 2));
    assert!(lost.unwrap() < valid_until);
    assert_eq!(a.role.borrow().epoch(), None);
    assert_eq!(fence.bumps(), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_acquisition_means_not_leader() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    leases.put(LeaseSpec::default()); // released: no holder
    leases.race_next_replace("x");
    let t0 = Instant::now();
    let mut a = start(&leases, &fence, "a");
    sleep(RETRY / 2).await;
    assert_eq!(*a.role.borrow(), Role::Follower);
    assert!(fence.bumps().is_empty(), "no epoch for a lost race");
    // x never renews: a sees its record at the next round and waits it out from there.
    let acquired = a.leader_within(LEASE * 2).await.unwrap();
    assert!(acquired >= t0 + RETRY + LEASE, "{:?}", acquired - t0);
}

#[tokio::test(start_paused = true)]
async fn two_candidates_never_lead_at_once() {
    let (leases, fence) = (FakeLeases::default(), FakeFence::default());
    let a = start(&leases, &fence, "a");
    let b = start(&leases.replica(), &fence, "b");
    let t0 = Instant::now();
    for step in 1..=600u32 {
        sleep_until(t0 + Duration::from_millis(100) * step).await;
        let leading = [&a, &b]
            .iter()
            .filter(|r| r.role.borrow().epoch().is_some())
            .count();
        assert_eq!(leading, 1, "at {step}00 ms");
    }
    assert_eq!(fence.bumps().len(), 1);
}
