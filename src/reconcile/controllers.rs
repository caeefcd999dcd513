//! The wiring: the watches, the job queue and the TaskFunction controller, built before they run
//! so other parts (the status writer) can read the ScheduledJob cache.
//!
//! TaskFunctions (few) go through kube's `Controller`; ScheduledJobs (up to 100,000s) through
//! our own watch (`job_watch`: the first list from the apiserver's watch cache), compact cache
//! ([`super::job_cache`]) and work queue ([`super::queue`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, channel::mpsc};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use sqlx::PgPool;

use super::{
    Guarded, RECONCILE_CONCURRENCY,
    cached_job::Uid,
    calendars,
    context::{Context, SeenTaskFunction},
    drift::drift_checks,
    error::Error,
    job_cache::{self, JobCache},
    job_watch, queue, scheduled_job,
    selector::LabelSelector,
    sweep, task_function,
    watch::{log_controller_error, on_becoming_leader, reflected, watch_backoff},
};
use crate::api::{ScheduleCalendar, TaskFunction};

/// What the controllers need besides the cluster and the database.
pub struct RunOptions {
    pub namespace: Option<String>,
    /// Checked when the arguments are parsed (`--task-function-selector`).
    pub task_function_selector: Option<String>,
    pub role: tokio::sync::watch::Receiver<crate::leader::Role>,
    pub wake: Arc<tokio::sync::Notify>,
    pub shadow: bool,
    pub feed: crate::status::Feed,
}

/// The two controllers with their caches.
pub struct Controllers {
    jobs: JobCache,
    listed: [Arc<AtomicBool>; 3],
    run: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Controllers {
    /// The ScheduledJob cache.
    pub fn jobs(&self) -> JobCache {
        self.jobs.clone()
    }

    /// Whether every cache holds its first list (shared flags: valid after `run` starts).
    pub fn synced(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let [a, b, c] = self.listed.clone();
        move || a.load(Ordering::Acquire) && b.load(Ordering::Acquire) && c.load(Ordering::Acquire)
    }

    /// Run both controllers until `shutdown` resolves.
    pub async fn run(self) {
        self.run.await
    }
}

/// Whether each cache holds its first list.
#[derive(Clone, Default)]
struct Listed {
    jobs: Arc<AtomicBool>,
    functions: Arc<AtomicBool>,
    calendars: Arc<AtomicBool>,
}

impl Listed {
    fn both(&self) -> impl Fn() -> bool + Clone + Send + Sync + use<> {
        let (a, b, c) = (
            self.jobs.clone(),
            self.functions.clone(),
            self.calendars.clone(),
        );
        move || a.load(Ordering::Acquire) && b.load(Ordering::Acquire) && c.load(Ordering::Acquire)
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
    let listed = Listed::default();
    let seen: Arc<Mutex<HashMap<String, SeenTaskFunction>>> = Arc::default();
    let sweeps = Arc::new(sweep::Sweeps::default());
    let (functions, functions_stream) =
        watch_task_functions(&client, &listed, seen.clone(), sweeps.clone());
    let (calendars, calendars_stream) = watch_calendars(&client, &listed, sweeps.clone());

    // One watch of the jobs feeds the cache, the job queue, and the TaskFunctions' job counts
    // (only a new job, a spec change or a deletion can change a count, not the status writes
    // every run causes).
    let jobs = JobCache::default();
    let (recount_tx, recount_rx) = mpsc::unbounded();
    let job_changes = job_cache::follow(
        job_watch::watch_jobs(client.clone(), namespace.as_deref()).backoff(watch_backoff()),
        job_cache::CacheFiller::new(jobs.clone(), listed.jobs.clone()),
        move |tf: String| {
            // Closed only once the TaskFunction controller has stopped (shutdown): no count
            // is left to update then.
            if recount_tx
                .unbounded_send(ObjectRef::<Guarded<TaskFunction>>::new(&tf))
                .is_err()
            {
                tracing::debug!(task_function = %tf, "job count not updated: shutting down");
            }
        },
    );

    let (writes, write_asks) = super::paced::ObjectWrites::new();
    let ctx = Arc::new(Context {
        writes,
        client,
        upserts: super::upserts::Upserts::start(pool.clone()),
        pool,
        jobs: jobs.clone(),
        functions,
        calendars,
        selector: selector_or_none(task_function_selector.as_deref()),
        role,
        wake,
        shadow,
        feed,
        jobs_listed: listed.jobs.clone(),
        functions_listed: listed.functions.clone(),
        calendars_listed: listed.calendars.clone(),
        seen_functions: seen,
        failures: Mutex::new(HashMap::new()),
        sweeps,
    });
    let write_ctx = ctx.clone();
    let orphans = super::drift::orphan_checks(ctx.clone(), namespace, shutdown.clone());
    let run = run_all(
        ctx,
        listed.clone(),
        functions_stream,
        calendars_stream,
        job_changes,
        recount_rx,
        shutdown.clone(),
    );
    // The finalizers and owned status the job reconciles ask for, a few at a time (see `paced`).
    let writers = queue::run(
        write_asks,
        super::paced::WRITERS,
        move |key| super::paced::write_job(key, write_ctx.clone()),
        shutdown,
    );
    let run = async move {
        futures::join!(run, writers, orphans);
    };
    Controllers {
        jobs,
        listed: [listed.jobs, listed.functions, listed.calendars],
        run: Box::pin(run),
    }
}

/// `--task-function-selector`, parsed. It was checked when the arguments were parsed, so an
/// error here means the options were built some other way: then this installation manages no
/// TaskFunction at all (never another installation's), and says so.
fn selector_or_none(text: Option<&str>) -> LabelSelector {
    match LabelSelector::parse(text.unwrap_or("")) {
        Ok(selector) => selector,
        Err(e) => {
            tracing::error!(error = %e, "managing no TaskFunctions");
            LabelSelector::nothing()
        }
    }
}

/// The TaskFunction cache and its watch. A TaskFunction change re-reconciles the jobs that use
/// it (its deletion shows first as a deletionTimestamp, thanks to our finalizer), as a sweep.
/// Only changes jobs depend on count: without this, every jobCount status update would re-run
/// all of its jobs (quadratic work while many jobs are created). Before both caches are
/// listed, the leader's sweep of every job covers them.
///
/// The selector is applied in the operator rather than in the watch, so the cache also answers
/// "exists but belongs to another installation" (treated as missing).
fn watch_task_functions(
    client: &Client,
    listed: &Listed,
    seen: Arc<Mutex<HashMap<String, SeenTaskFunction>>>,
    sweeps: Arc<sweep::Sweeps>,
) -> (
    Store<Guarded<TaskFunction>>,
    impl futures::Stream<Item = Result<Guarded<TaskFunction>, watcher::Error>> + Send + 'static,
) {
    let api: Api<Guarded<TaskFunction>> = Api::all(client.clone());
    let (functions, stream) = reflected(api, watcher::Config::default(), listed.functions.clone());
    let synced = listed.both();
    let stream = stream.inspect(move |tf| {
        let Ok(tf) = tf else { return };
        let now_seen = SeenTaskFunction::of(tf);
        let name = tf.name_any();
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(name.clone(), now_seen) != Some(now_seen) && synced() {
            sweeps.ask(sweep::Sweep::TaskFunction(name));
        }
    });
    (functions, stream)
}

/// The ScheduleCalendar cache and its watch. A change the jobs depend on (see
/// [`calendars::fingerprint`]: it appears, goes, turns (un)readable, a new generation) asks for
/// a sweep of the jobs naming it; status-only updates do not.
fn watch_calendars(
    client: &Client,
    listed: &Listed,
    sweeps: Arc<sweep::Sweeps>,
) -> (
    Store<Guarded<ScheduleCalendar>>,
    impl futures::Stream<Item = Result<Guarded<ScheduleCalendar>, watcher::Error>> + Send + 'static,
) {
    let api: Api<Guarded<ScheduleCalendar>> = Api::all(client.clone());
    let (store, stream) = reflected(api, watcher::Config::default(), listed.calendars.clone());
    let synced = listed.both();
    type Seen = (Option<String>, Option<i64>, bool, bool);
    let seen: Mutex<HashMap<String, Seen>> = Mutex::default();
    let stream = stream.inspect(move |cal| {
        let Ok(cal) = cal else { return };
        let now_seen = calendars::fingerprint(cal);
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(cal.name_any(), now_seen.clone()) != Some(now_seen) && synced() {
            sweeps.ask(calendars::sweep_for(cal));
        }
    });
    (store, stream)
}

/// Run the job queue (fed by job changes, sweeps and drift checks), the TaskFunction and
/// ScheduleCalendar controllers, and the leadership trigger, until `shutdown`.
// One argument per stream it runs.
#[allow(clippy::too_many_arguments)]
fn run_all(
    ctx: Arc<Context>,
    listed: Listed,
    functions_stream: impl futures::Stream<Item = Result<Guarded<TaskFunction>, watcher::Error>>
    + Send
    + 'static,
    calendars_stream: impl futures::Stream<Item = Result<Guarded<ScheduleCalendar>, watcher::Error>>
    + Send
    + 'static,
    job_changes: impl futures::Stream<Item = Uid> + Send + 'static,
    recount_rx: mpsc::UnboundedReceiver<ObjectRef<Guarded<TaskFunction>>>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let role = ctx.role.clone();
    // A new leader re-reconciles everything (followers did not write), as a sweep.
    let sweeps_by_leader = ctx.sweeps.clone();
    let becoming_leader = on_becoming_leader(role.clone())
        .take_until(shutdown.clone())
        .for_each(move |()| {
            sweeps_by_leader.ask(sweep::Sweep::All);
            futures::future::ready(())
        });
    // A sweep ends when this replica is a follower, not while a late renewal makes its lease
    // uncertain: its reconciles wait that out (`Error::LeaseUncertain`), and no new leadership
    // would come to ask for the rest of the sweep again.
    let leading = {
        let role = role.clone();
        move || role.borrow().is_leader()
    };
    let asks = futures::stream::select(
        futures::stream::select(
            job_changes,
            sweep::stream(ctx.sweeps.clone(), ctx.jobs.clone(), listed.both(), leading),
        ),
        drift_checks(ctx.pool.clone(), ctx.jobs.clone(), role.clone()),
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
    // Debounced: a burst of job changes becomes one jobCount update.
    let functions_done = Controller::for_stream(functions_stream, ctx.functions.clone())
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(Duration::from_millis(500))
                .concurrency(RECONCILE_CONCURRENCY),
        )
        .trigger_backoff(watch_backoff())
        .reconcile_on(recount_rx)
        .reconcile_all_on(on_becoming_leader(role.clone()))
        .graceful_shutdown_on(shutdown.clone())
        .run(task_function::reconcile, error_policy, ctx.clone())
        .for_each(log_controller_error);
    let calendars_done = Controller::for_stream(calendars_stream, ctx.calendars.clone())
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(Duration::from_millis(500))
                .concurrency(RECONCILE_CONCURRENCY),
        )
        .trigger_backoff(watch_backoff())
        .reconcile_all_on(on_becoming_leader(role))
        .graceful_shutdown_on(shutdown)
        .run(calendars::reconcile, calendar_error_policy, ctx)
        .for_each(log_controller_error);
    async move {
        futures::join!(jobs_done, functions_done, calendars_done, becoming_leader);
    }
}

fn calendar_error_policy(
    obj: Arc<Guarded<ScheduleCalendar>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    Action::requeue(ctx.retry_delay(format!("calendar/{}", obj.name_any()), err))
}

fn error_policy(obj: Arc<Guarded<TaskFunction>>, err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.retry_delay(obj.name_any(), err))
}

/// One job's reconcile, as the queue runs it: the delay before a retry, if it failed.
async fn reconcile_job(key: Uid, ctx: Arc<Context>) -> Option<Duration> {
    // Whatever asked for it, a sweep no longer waits for this job.
    ctx.sweeps.started(&key);
    // Not cached: deleted (see `scheduled_job::gone`).
    let Some(job) = ctx.jobs.get(&key) else {
        return match scheduled_job::gone(&key, &ctx).await {
            Ok(()) => None,
            Err(e) => Some(ctx.retry_delay(key.to_string(), &e)),
        };
    };
    match scheduled_job::reconcile(job.clone(), ctx.clone()).await {
        Ok(()) => None,
        Err(e) => Some(ctx.retry_delay(job.key_text(), &e)),
    }
}
