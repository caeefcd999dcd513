//! Reconcile ScheduledJobs and TaskFunctions into Postgres, in stages: read related objects →
//! validate (pure) → build the row (pure) → upsert (idempotent, keyed by uid) → status.
//!
//! An object that does not even deserialize (stored against an older schema) is reported on the
//! object itself and never breaks the watch for the others: TaskFunctions are watched through
//! [`DeserializeGuard`], ScheduledJobs as [`CachedJob`]s, which record a spec that does not
//! deserialize instead of failing.
//!
//! TaskFunctions (few) go through kube's `Controller`; ScheduledJobs (up to 100,000s) through
//! our own compact cache ([`cache`]) and work queue ([`queue`]).

pub mod cached_job;
pub mod conditions;
pub mod job_cache;
pub mod queue;
pub mod scheduled_job;
pub mod sweep;
pub mod task_function;
pub mod validate;

use std::{
    collections::HashMap,
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use sqlx::PgPool;
use tracing::warn;

use crate::{
    api::{FINALIZER, TaskFunction},
    store::StoreError,
};
use cached_job::{CachedJob, Uid, WatchedJob};
use job_cache::JobCache;

/// Errors worth retrying. Invalid input is not an error here: it becomes a condition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
    #[error("cache not ready: {0}")]
    CacheNotReady(String),
}

impl Error {
    /// A static category for logs, metrics and Events (never the message: unbounded labels).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Store(_) => "database",
            Error::MissingMetadata(_) => "metadata",
            Error::CacheNotReady(_) => "cache",
        }
    }
}

pub type Guarded<K> = DeserializeGuard<K>;

/// Reconciles in flight per controller (the job queue and the TaskFunction controller).
const RECONCILE_CONCURRENCY: u16 = 64;

/// Shared by both controllers.
pub struct Context {
    pub client: Client,
    pub pool: PgPool,
    pub jobs: JobCache,
    pub functions: Store<Guarded<TaskFunction>>,
    /// Which TaskFunctions this installation manages.
    pub selector: LabelSelector,
    jobs_listed: Arc<AtomicBool>,
    functions_listed: Arc<AtomicBool>,
    /// Only the leader writes; followers keep their caches warm.
    pub role: tokio::sync::watch::Receiver<crate::leader::Role>,
    /// Tells the dispatcher that what is due may have changed.
    pub wake: Arc<tokio::sync::Notify>,
    /// Shadow mode: manual triggers record SHADOW executions.
    pub shadow: bool,
    /// Status notices and Events (manual triggers).
    pub feed: crate::status::Feed,
    /// Latest TaskFunction versions that triggered job reconciles.
    seen_functions: Arc<Mutex<HashMap<String, SeenTaskFunction>>>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Reconciles of many jobs at once, handed to the job queue a few at a time.
    pub sweeps: Arc<sweep::Sweeps>,
}

impl Context {
    fn failed(&self, key: String) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }

    /// The stage every reconcile starts with: caches listed, and this replica the leader.
    /// Followers keep their caches warm and write nothing (a new leader re-reconciles all).
    async fn may_write(&self) -> Result<bool, Error> {
        self.caches_ready().await?;
        Ok(self.epoch().is_some())
    }

    /// The leader's fencing epoch, or `None` on a follower (which must not write).
    pub fn epoch(&self) -> Option<i64> {
        self.role.borrow().epoch()
    }

    /// The TaskFunction `name` from the cache, once the cache has caught up with the newest
    /// change that triggered a job reconcile.
    async fn task_function(&self, name: &str) -> Option<Arc<Guarded<TaskFunction>>> {
        let key = ObjectRef::<Guarded<TaskFunction>>::new(name);
        for _ in 0..50 {
            let cached = self
                .functions
                .get(&key)
                .filter(|tf| self.selector.matches(tf.labels()));
            let wanted = self
                .seen_functions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied();
            if wanted.is_none_or(|w| w.satisfied_by(cached.as_deref())) {
                return cached;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.functions
            .get(&key)
            .filter(|tf| self.selector.matches(tf.labels()))
    }

    /// Whether TaskFunction `name` exists but is another installation's (outside our
    /// `--task-function-selector`): its jobs are that installation's to judge, not ours.
    fn belongs_elsewhere(&self, name: &str) -> bool {
        self.functions
            .get(&ObjectRef::<Guarded<TaskFunction>>::new(name))
            .is_some_and(|tf| !self.selector.matches(tf.labels()))
    }

    /// Wait until both caches have listed once: before that, a missing TaskFunction may only be
    /// one we have not seen yet. Polls flags rather than `Store::wait_until_ready`: that future
    /// wakes only its most recent poller, so waiting on it beside the controller's own runner
    /// can stall one of them for good.
    async fn caches_ready(&self) -> Result<(), Error> {
        let start = std::time::Instant::now();
        while !(self.jobs_listed.load(Ordering::Acquire)
            && self.functions_listed.load(Ordering::Acquire))
        {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(Error::CacheNotReady("no initial list within 60 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// A watch feeding a cache, flagging when the cache holds the initial list.
fn reflected<K>(
    api: Api<K>,
    cfg: watcher::Config,
    listed: Arc<AtomicBool>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // managedFields and kubectl's last-applied copy of the object are never read here and are
    // most of a cached object's memory (a parsed fieldsV1 tree per writer; the whole spec again
    // as a string): dropped before the cache keeps the object.
    let watch = watcher(api, cfg)
        .backoff(WatchBackoff::default())
        .modify(|obj| trim_for_cache(obj.meta_mut()));
    let stream = reflector::reflector(writer, watch)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                listed.store(true, Ordering::Release);
            }
        })
        .applied_objects();
    (reader, stream)
}

/// Longest wait between watch reconnects.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(4);
/// First wait before a watch reconnects.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);

/// Watch reconnects: 0.5 s, doubling up to [`WATCH_BACKOFF_MAX`], back to the start once a watch
/// delivers again. kube's default grows to 30 s, so after a 30 s apiserver outage a job created
/// next went unseen for 12-22 s (the fault suite); a handful of watches per replica retrying
/// every 4 s is no load for an apiserver. Written here because kube-runtime's exponential
/// backoff has no public constructor; no jitter, as only a few replicas ever retry together.
#[derive(Debug, Clone)]
struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: WATCH_BACKOFF_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (wait * 2).min(WATCH_BACKOFF_MAX);
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
}

/// Drop what the operator never reads from a cached object's metadata.
fn trim_for_cache(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// An equality-based label selector (`a=b,c=d`), matched in the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, String)>);

impl LabelSelector {
    pub fn parse(text: &str) -> LabelSelector {
        LabelSelector(
            text.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| {
                    (
                        k.trim().to_string(),
                        v.trim().trim_start_matches('=').to_string(),
                    )
                })
                .collect(),
        )
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// 2 s, 4 s, 8 s ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    Duration::from_secs((2u64 << exp).min(300))
}

/// How long to wait before retrying a failed reconcile of `key` (`namespace/name`, or a
/// TaskFunction's name). Counted and logged here.
fn retry_delay(key: String, err: &Error, ctx: &Context) -> Duration {
    if is_conflict(err) {
        tracing::debug!(object = %key, "conflict on a stale object; retrying shortly");
        return Duration::from_millis(500);
    }
    crate::metrics::METRICS
        .reconcile_errors
        .get_or_create(&crate::metrics::Category {
            category: err.category(),
        })
        .inc();
    let delay = ctx.failed(key.clone());
    warn!(object = %key, category = err.category(), error = %err, retry_in = ?delay, "reconcile failed");
    delay
}

fn error_policy(obj: Arc<Guarded<TaskFunction>>, err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(retry_delay(obj.name_any(), err, &ctx))
}

/// What the finalizer stage reads of an object.
struct Finalizing<'a> {
    name: &'a str,
    resource_version: Option<&'a str>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl<'a> Finalizing<'a> {
    fn of(meta: &'a kube::api::ObjectMeta) -> Finalizing<'a> {
        Finalizing {
            name: meta.name.as_deref().unwrap_or_default(),
            resource_version: meta.resource_version.as_deref(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        }
    }

    fn of_job(job: &'a CachedJob) -> Finalizing<'a> {
        Finalizing {
            name: job.name(),
            resource_version: job.resource_version(),
            deleting: job.deleting(),
            finalizers: job.finalizers(),
        }
    }
}

/// The finalizer stage both controllers share. Being deleted: run `cleanup` once, then let the
/// object go. Otherwise make sure our finalizer is on it. `true` ends this pass (the patch
/// produces a new event; the next pass continues from there).
async fn finalizer_stage<K>(
    api: &Api<K>,
    obj: Finalizing<'_>,
    cleanup: impl Future<Output = Result<(), Error>>,
) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let ours = obj.finalizers.iter().any(|f| f == FINALIZER);
    if obj.deleting {
        if ours {
            cleanup.await?;
            let rest: Vec<String> = obj
                .finalizers
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            match patch_finalizers(api, &obj, rest).await {
                // Already gone: nothing left to clean.
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {}
                other => other?,
            }
        }
        return Ok(true);
    }
    if !ours {
        let mut all = obj.finalizers.clone();
        all.push(FINALIZER.to_string());
        patch_finalizers(api, &obj, all).await?;
        return Ok(true);
    }
    Ok(false)
}

/// The metadata of a guarded object, and the object itself when it deserialized.
fn split<K: Resource>(obj: &Guarded<K>) -> (&kube::api::ObjectMeta, Option<&K>) {
    match &obj.0 {
        Ok(o) => (o.meta(), Some(o)),
        Err(invalid) => (&invalid.metadata, None),
    }
}

/// The condition for an object that does not even deserialize.
fn schema_mismatch(kind: &str, error: &str) -> validate::Invalid {
    validate::Invalid {
        reason: validate::Reason::InvalidSpec,
        message: format!("the object does not match the {kind} schema: {error}"),
    }
}

/// Replace the finalizer list, guarded by resourceVersion so a concurrent writer is not undone.
async fn patch_finalizers<K>(
    api: &Api<K>,
    obj: &Finalizing<'_>,
    finalizers: Vec<String>,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let rv = obj
        .resource_version
        .ok_or(Error::MissingMetadata("resourceVersion"))?;
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": rv}});
    api.patch(obj.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A 409 means we acted on a stale copy; the change that beat us is already on its way as an
/// event, so retry soon instead of backing off.
pub fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Kube(kube::Error::Api(s)) if s.code == 409)
}

/// Reconciler failures are logged by `error_policy`; this reports the rest (watch errors).
async fn log_controller_error<T, E: std::fmt::Display, Q: std::fmt::Display>(
    result: Result<T, kube::runtime::controller::Error<E, Q>>,
) {
    match result {
        Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
        // A job naming a TaskFunction that does not exist maps to nothing to reconcile.
        Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
            tracing::debug!(object = %obj, "trigger for an object not in the cache")
        }
        Err(e) => warn!(error = %e, "controller watch error (retrying with backoff)"),
    }
}

/// The version of a TaskFunction that last asked for a sweep of its jobs. A job reconciled
/// because of a TaskFunction change waits until the store shows that change (the sweep is asked
/// for after the store is updated, from the same watch, so this wait is a guard, not a delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenTaskFunction {
    /// A TaskFunction deleted and created again under the same name is a different object.
    uid: u64,
    generation: Option<i64>,
    deleting: bool,
    /// What else jobs depend on: uid, labels, whether it deserialized.
    fingerprint: u64,
}

impl SeenTaskFunction {
    fn of(tf: &Guarded<TaskFunction>) -> SeenTaskFunction {
        use std::hash::{Hash, Hasher};
        let meta = match &tf.0 {
            Ok(t) => &t.metadata,
            Err(e) => &e.metadata,
        };
        let mut uid = std::collections::hash_map::DefaultHasher::new();
        meta.uid.hash(&mut uid);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        meta.labels.hash(&mut h);
        tf.0.is_ok().hash(&mut h);
        SeenTaskFunction {
            uid: uid.finish(),
            generation: meta.generation,
            deleting: meta.deletion_timestamp.is_some(),
            fingerprint: h.finish(),
        }
    }

    /// Whether `cached` (from the store) is at least as new as this trigger.
    fn satisfied_by(&self, cached: Option<&Guarded<TaskFunction>>) -> bool {
        match cached {
            // Gone from the cache: expected if the trigger was its deletion; otherwise the
            // cache has not seen it yet.
            None => self.deleting,
            Some(c) => {
                let now = SeenTaskFunction::of(c);
                now.uid == self.uid
                    && (now.deleting || (!self.deleting && now.generation >= self.generation))
            }
        }
    }
}

/// What the controllers need besides the cluster and the database.
pub struct RunOptions {
    pub namespace: Option<String>,
    pub task_function_selector: Option<String>,
    pub role: tokio::sync::watch::Receiver<crate::leader::Role>,
    pub wake: Arc<tokio::sync::Notify>,
    pub shadow: bool,
    pub feed: crate::status::Feed,
}

/// A stream that fires each time this replica becomes the leader.
fn on_becoming_leader(
    role: tokio::sync::watch::Receiver<crate::leader::Role>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((role, false), |(mut role, mut was_leader)| async move {
        loop {
            // The role as it is first (leadership may have come before this stream started).
            let leader = matches!(
                *role.borrow_and_update(),
                crate::leader::Role::Leader { .. }
            );
            let became = leader && !was_leader;
            was_leader = leader;
            if became {
                return Some(((), (role, was_leader)));
            }
            role.changed().await.ok()?;
        }
    })
}

/// How often the leader compares Postgres with the cache (see [`drifted`]).
const DRIFT_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The safety net for a change that never reached Postgres (a missed event, a restored
/// database): every [`DRIFT_CHECK_EVERY`], the leader re-reconciles the jobs whose row is
/// missing or stored for another generation. This replaced a one-hour requeue of every job,
/// which kept an entry per job in the controller's queue for good (~60 MB at 100,000 jobs).
fn drift_checks(
    pool: PgPool,
    jobs: JobCache,
    role: tokio::sync::watch::Receiver<crate::leader::Role>,
) -> impl futures::Stream<Item = Uid> + Send + 'static {
    let mut every = tokio::time::interval(DRIFT_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (pool, jobs, role, every, true);
    futures::stream::unfold(
        state,
        |(pool, jobs, role, mut every, mut first)| async move {
            loop {
                every.tick().await;
                // The first tick is immediate: a new leader re-reconciles everything anyway.
                if std::mem::take(&mut first) || role.borrow().epoch().is_none() {
                    continue;
                }
                match crate::store::stored_generations(&pool).await {
                    Ok(stored) => {
                        let drifted = drifted(&jobs.snapshot(|j| !j.deleting()), &stored);
                        if !drifted.is_empty() {
                            tracing::info!(
                                jobs = drifted.len(),
                                "jobs differ from Postgres; reconciling them"
                            );
                        }
                        let state = (pool, jobs, role, every, first);
                        return Some((futures::stream::iter(drifted), state));
                    }
                    Err(e) => warn!(error = %e, "drift check: reading jobs failed"),
                }
            }
        },
    )
    .flatten()
}

/// The cached jobs (not being deleted) whose row is missing or for another generation.
fn drifted(cached: &[Arc<CachedJob>], stored: &HashMap<String, i64>) -> Vec<Uid> {
    cached
        .iter()
        .filter(|j| !j.deleting())
        .filter(|j| {
            let uid = j.uid().unwrap_or_default();
            stored.get(&uid).copied() != Some(j.generation().unwrap_or(0))
        })
        .map(|j| j.key())
        .collect()
}

/// The two controllers with their caches, built before they run so other parts (the status
/// writer) can read the ScheduledJob cache.
pub struct Controllers {
    jobs: JobCache,
    listed: [Arc<AtomicBool>; 2],
    run: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Controllers {
    /// The ScheduledJob cache.
    pub fn jobs(&self) -> JobCache {
        self.jobs.clone()
    }

    /// Whether both caches hold their first list (shared flags: valid after `run` starts).
    pub fn synced(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let [a, b] = self.listed.clone();
        move || a.load(Ordering::Acquire) && b.load(Ordering::Acquire)
    }

    /// Run both controllers until `shutdown` resolves.
    pub async fn run(self) {
        self.run.await
    }
}

pub fn controllers(
    client: Client,
    pool: PgPool,
    opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Controllers {
    let RunOptions {
        namespace,
        task_function_selector,
        role,
        wake,
        shadow,
        feed,
    } = opts;
    let jobs_api: Api<WatchedJob> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let functions_api: Api<Guarded<TaskFunction>> = Api::all(client.clone());
    // The selector is applied in the operator rather than in the watch, so the TaskFunction
    // cache also answers "exists but belongs to another installation" (treated as missing).
    let selector = LabelSelector::parse(task_function_selector.as_deref().unwrap_or(""));
    let tf_cfg = watcher::Config::default();

    let jobs_listed = Arc::new(AtomicBool::new(false));
    let functions_listed = Arc::new(AtomicBool::new(false));
    let synced = {
        let (a, b) = (jobs_listed.clone(), functions_listed.clone());
        move || a.load(Ordering::Acquire) && b.load(Ordering::Acquire)
    };
    let seen: Arc<Mutex<HashMap<String, SeenTaskFunction>>> = Arc::default();
    let sweeps = Arc::new(sweep::Sweeps::default());

    // A TaskFunction change re-reconciles the jobs that use it (its deletion shows first as a
    // deletionTimestamp, thanks to our finalizer), as a sweep. Only changes jobs depend on
    // count: without this, every jobCount status update would re-run all of its jobs (quadratic
    // work while many jobs are created). Before both caches are listed, the leader's sweep of
    // every job covers them.
    let (functions, functions_stream) = reflected(
        functions_api.clone(),
        tf_cfg.clone(),
        functions_listed.clone(),
    );
    let functions_stream = {
        let (sweeps, seen, synced) = (sweeps.clone(), seen.clone(), synced.clone());
        functions_stream.inspect(move |tf| {
            let Ok(tf) = tf else { return };
            let now_seen = SeenTaskFunction::of(tf);
            let name = tf.name_any();
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.insert(name.clone(), now_seen) != Some(now_seen) && synced() {
                sweeps.ask(sweep::Sweep::TaskFunction(name));
            }
        })
    };

    // One watch of the jobs feeds the cache, the job queue, and the TaskFunctions' job counts
    // (only a new job, a spec change or a deletion can change a count, not the status writes
    // every run causes).
    let jobs = JobCache::default();
    let (recount_tx, recount_rx) = futures::channel::mpsc::unbounded();
    let job_changes = job_cache::follow(
        watcher(jobs_api, watcher::Config::default()).backoff(WatchBackoff::default()),
        job_cache::Follower::new(jobs.clone(), jobs_listed.clone()),
        move |tf: String| {
            let _ = recount_tx.unbounded_send(ObjectRef::<Guarded<TaskFunction>>::new(&tf));
        },
    );
    // Debounced: a burst of job changes becomes one jobCount update.
    let function_ctrl = Controller::for_stream(functions_stream, functions.clone())
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(Duration::from_millis(500))
                .concurrency(RECONCILE_CONCURRENCY),
        )
        .trigger_backoff(WatchBackoff::default());

    let (listed_jobs, listed_functions) = (jobs_listed.clone(), functions_listed.clone());
    let ctx = Arc::new(Context {
        client,
        pool,
        jobs: jobs.clone(),
        functions,
        selector,
        role: role.clone(),
        wake,
        shadow,
        feed,
        jobs_listed,
        functions_listed,
        seen_functions: seen,
        failures: Mutex::new(HashMap::new()),
        sweeps: sweeps.clone(),
    });
    // A new leader re-reconciles everything (followers did not write), as a sweep.
    let sweeps_by_leader = sweeps.clone();
    let becoming_leader = on_becoming_leader(role.clone())
        .take_until(shutdown.clone())
        .for_each(move |()| {
            sweeps_by_leader.ask(sweep::Sweep::All);
            futures::future::ready(())
        });
    let leading = {
        let role = role.clone();
        move || role.borrow().epoch().is_some()
    };
    let asks = futures::stream::select(
        futures::stream::select(
            job_changes,
            sweep::stream(sweeps, jobs.clone(), synced, leading),
        ),
        drift_checks(ctx.pool.clone(), jobs.clone(), role.clone()),
    );
    // Bounded: each reconcile in flight holds an apiserver connection (HTTP/1.1), so an
    // unbounded controller opened one per job at start-up (1,079 connections and +40 MB for
    // 1,000 new jobs, measured by the benchmark).
    let jobs_done = {
        let ctx = ctx.clone();
        queue::run(
            asks,
            RECONCILE_CONCURRENCY as usize,
            move |key| reconcile_job(key, ctx.clone()),
            shutdown.clone(),
        )
    };
    let functions_done = function_ctrl
        .reconcile_on(recount_rx)
        .reconcile_all_on(on_becoming_leader(role))
        .graceful_shutdown_on(shutdown)
        .run(task_function::reconcile, error_policy, ctx)
        .for_each(log_controller_error);
    Controllers {
        jobs,
        listed: [listed_jobs, listed_functions],
        run: Box::pin(async move {
            futures::join!(jobs_done, functions_done, becoming_leader);
        }),
    }
}

/// One job's reconcile, as the queue runs it: the delay before a retry, if it failed.
async fn reconcile_job(key: Uid, ctx: Arc<Context>) -> Option<Duration> {
    // Whatever asked for it, a sweep no longer waits for this job.
    ctx.sweeps.started(&key);
    // Not cached: deleted since it was asked for.
    let job = ctx.jobs.get(&key)?;
    match scheduled_job::reconcile(job.clone(), ctx.clone()).await {
        Ok(()) => None,
        Err(e) => Some(retry_delay(job.key_text(), &e, &ctx)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn drifted_jobs_are_those_missing_or_stored_for_another_generation() {
        let job = |name: &str, uid: &str, generation: i64, deleting: bool| {
            let mut meta = serde_json::json!({"name": name, "namespace": "ns", "uid": uid,
                                              "generation": generation});
            if deleting {
                meta["deletionTimestamp"] = "2026-11-28T00:00:00Z".into();
            }
            Arc::new(CachedJob::from_value(serde_json::json!({"metadata": meta})))
        };
        let cached = [
            job("same", "u1", 2, false),
            job("newer", "u2", 3, false),
            job("missing", "u3", 1, false),
            job("going", "u4", 5, true),
        ];
        let stored: HashMap<String, i64> = [("u1".into(), 2), ("u2".into(), 2)].into();
        assert_eq!(
            drifted(&cached, &stored),
            [Uid::parse("u2"), Uid::parse("u3")]
        );
    }

    #[test]
    fn watch_reconnects_back_off_to_a_few_seconds_and_start_over() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let waits: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(WATCH_BACKOFF_MIN));
    }

    #[test]
    fn cached_metadata_keeps_what_reconcile_reads() {
        let mut meta = kube::api::ObjectMeta {
            name: Some("nightly".into()),
            generation: Some(3),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            annotations: Some(
                [
                    (
                        "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                        "{\"spec\":{}}".to_string(),
                    ),
                    (
                        crate::api::TRIGGER_ANNOTATION.to_string(),
                        "now".to_string(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        trim_for_cache(&mut meta);
        assert_eq!(meta.managed_fields, None);
        let annotations = meta.annotations.expect("annotations kept");
        assert_eq!(annotations.len(), 1);
        assert_eq!(
            annotations
                .get(crate::api::TRIGGER_ANNOTATION)
                .map(String::as_str),
            Some("now")
        );
        assert_eq!(meta.generation, Some(3));
    }
}
