//! Status and Events (leader only, never on the dispatch path).
//!
//! The dispatcher, the result tracker and the reconciler report which jobs changed through a
//! [`Feed`]: bounded channels written with `try_send`, so a slow apiserver can never hold up a
//! dispatch. A full channel drops the notice (counted) and asks the writer for a full resync
//! from Postgres, so nothing is lost for good.
//!
//! The writer coalesces per job (Postgres is read at write time, so the newest state wins; at most
//! one patch per job per `interval`) and paces all writes to `qps`. It skips patches that would
//! change nothing, comparing with what it wrote and with the informer cache. A new leader
//! rebuilds every status from Postgres.

pub mod events;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream::FuturesUnordered};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use events::{JobEvent, JobRef, Reason};

use crate::{
    api::ScheduledJob,
    leader::Role,
    reconcile::{cache::JobCache, cached::Uid},
    schedule::rfc3339,
    store::{last_run_sql, visible_run_sql},
};

/// Counters of the feed and the writer (exported as metrics).
#[derive(Debug, Default)]
pub struct FeedStats {
    pub status_dropped: AtomicU64,
    pub status_writes: AtomicU64,
    pub status_write_errors: AtomicU64,
    pub status_queue: AtomicU64,
    pub events_dropped: AtomicU64,
    pub events_folded: AtomicU64,
    pub events_published: AtomicU64,
    /// Set when a notice was dropped: the writer re-reads every job.
    resync: AtomicBool,
}

/// The producers' side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Feed {
    jobs: mpsc::Sender<i64>,
    events: mpsc::Sender<JobEvent>,
    pub stats: Arc<FeedStats>,
}

/// The consumers' side, handed to [`run`] and [`events::run`].
pub struct FeedReceivers {
    pub jobs: mpsc::Receiver<i64>,
    pub events: mpsc::Receiver<JobEvent>,
}

impl Feed {
    pub fn new(capacity: usize) -> (Feed, FeedReceivers) {
        let (jtx, jrx) = mpsc::channel(capacity.max(1));
        let (etx, erx) = mpsc::channel(capacity.clamp(1, 4096));
        (
            Feed {
                jobs: jtx,
                events: etx,
                stats: Arc::default(),
            },
            FeedReceivers {
                jobs: jrx,
                events: erx,
            },
        )
    }

    /// The job's status may have changed.
    pub fn touch(&self, job_id: i64) {
        if self.jobs.try_send(job_id).is_err() {
            self.stats.status_dropped.fetch_add(1, Ordering::Relaxed);
            self.stats.resync.store(true, Ordering::Relaxed);
        }
    }

    pub fn touch_all(&self, job_ids: impl IntoIterator<Item = i64>) {
        for id in job_ids {
            self.touch(id);
        }
    }

    /// Something worth a Kubernetes Event happened.
    pub fn event(&self, ev: JobEvent) {
        if self.events.try_send(ev).is_err() {
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Status patches per second at most (0 disables the writer).
    pub qps: u32,
    /// At most one patch per job per this interval.
    pub per_job_interval: Duration,
}

/// Patches in flight at once (each waits for the apiserver; the pace is set by `qps`).
const IN_FLIGHT: usize = 16;
/// Jobs read from Postgres per round trip.
const READ_BATCH: usize = 200;
/// Unfinished executions listed in `status.active`.
const ACTIVE_SHOWN: i64 = 10;

/// Which jobs wait for a write, in order, and which must wait out their per-job interval.
/// Pure bookkeeping (time is passed in) so it can be tested without a clock.
#[derive(Debug, Default)]
pub struct Pending {
    ready: VecDeque<i64>,
    queued: HashSet<i64>,
    cooling: BinaryHeap<Reverse<(Instant, i64)>>,
    last_write: HashMap<i64, Instant>,
}

impl Pending {
    pub fn touch(&mut self, id: i64, now: Instant, every: Duration) {
        if !self.queued.insert(id) {
            return; // already waiting: coalesced
        }
        match self.last_write.get(&id) {
            Some(t) if *t + every > now => self.cooling.push(Reverse((*t + every, id))),
            _ => self.ready.push_back(id),
        }
    }

    /// Up to `n` jobs that may be written now, oldest first.
    pub fn take(&mut self, n: usize, now: Instant) -> Vec<i64> {
        while let Some(Reverse((at, id))) = self.cooling.peek().copied() {
            if at > now {
                break;
            }
            self.cooling.pop();
            self.ready.push_back(id);
        }
        let n = n.min(self.ready.len());
        let out: Vec<i64> = self.ready.drain(..n).collect();
        for id in &out {
            self.queued.remove(id);
        }
        out
    }

    pub fn wrote(&mut self, id: i64, now: Instant) {
        self.last_write.insert(id, now);
    }

    /// When the next cooling job becomes writable.
    pub fn next_ready(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(Instant::now());
        }
        self.cooling.peek().map(|Reverse((at, _))| *at)
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Drop write times older than `every` (they no longer delay anything).
    pub fn forget(&mut self, now: Instant, every: Duration) {
        self.last_write.retain(|_, t| *t + every > now);
    }
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    id: i64,
    uid: String,
    namespace: String,
    name: String,
    enabled: bool,
    next_run_at: Option<DateTime<Utc>>,
    last_run_at: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    total_runs: i64,
    succeeded: i64,
    failed: i64,
    missed: i64,
    skipped: i64,
    task_id: Option<String>,
    scheduled_for: Option<DateTime<Utc>>,
    trigger: Option<String>,
    state: Option<String>,
    dispatched_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ActiveRow {
    job_id: i64,
    task_id: String,
    scheduled_for: DateTime<Utc>,
    state: String,
}

/// The status fields this writer owns, as a merge patch (`null` removes a field).
fn status_fields(r: &Row, active: &[&ActiveRow]) -> Value {
    let last_execution = r.task_id.as_ref().map(|task_id| {
        json!({
            "taskId": task_id,
            "scheduledFor": r.scheduled_for.map(rfc3339),
            "trigger": r.trigger,
            "state": r.state,
            "dispatchedAt": r.dispatched_at.map(rfc3339),
            "finishedAt": r.finished_at.map(rfc3339),
            "message": r.error.as_deref().map(|m| crate::tracker::decode::cut_front(m, 1024)),
        })
    });
    let active: Vec<Value> = active
        .iter()
        .map(|a| {
            json!({"taskId": a.task_id, "scheduledFor": rfc3339(a.scheduled_for), "state": a.state})
        })
        .collect();
    json!({
        "nextScheduleTime": r.next_run_at.filter(|_| r.enabled).map(rfc3339),
        "lastScheduleTime": r.last_run_at.map(rfc3339),
        "lastSuccessfulTime": r.last_success_at.map(rfc3339),
        "lastExecution": last_execution,
        "active": if active.is_empty() { Value::Null } else { Value::Array(active) },
        "totalRuns": r.total_runs,
        "succeeded": r.succeeded,
        "failed": r.failed,
        "missed": r.missed,
        "skipped": r.skipped,
    })
}

/// The status fields [`status_fields`] writes.
const WRITTEN_FIELDS: [&str; 10] = [
    "nextScheduleTime",
    "lastScheduleTime",
    "lastSuccessfulTime",
    "lastExecution",
    "active",
    "totalRuns",
    "succeeded",
    "failed",
    "missed",
    "skipped",
];

/// A digest of the status fields this writer owns, from a whole status as read back or from a
/// patch: absent and `null` agree (a `None` is written as `null` and read back as absent), and
/// key order does not matter. The informer cache keeps only this digest of a job's status.
pub fn written_digest(status: &Value) -> u64 {
    fn feed(v: &Value, h: &mut std::collections::hash_map::DefaultHasher) {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().filter(|(_, v)| !v.is_null()).collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                h.write_u8(b'{');
                for (k, v) in entries {
                    k.hash(h);
                    feed(v, h);
                }
                h.write_u8(b'}');
            }
            Value::Array(items) => {
                h.write_u8(b'[');
                items.iter().for_each(|item| feed(item, h));
                h.write_u8(b']');
            }
            scalar => scalar.to_string().hash(h),
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for key in WRITTEN_FIELDS {
        if let Some(v) = status.get(key).filter(|v| !v.is_null()) {
            key.hash(&mut h);
            feed(v, &mut h);
        }
    }
    h.finish()
}

/// What the status writer works with.
#[derive(Clone)]
pub struct WriterSetup {
    pub client: Client,
    pub pool: PgPool,
    /// The ScheduledJob cache, to skip writes the object already shows.
    pub cache: JobCache,
    pub cfg: WriterConfig,
    pub stats: Arc<FeedStats>,
}

/// Run the status writer until `stop` flips. Writes only while this replica leads.
pub async fn run(
    setup: WriterSetup,
    rx: &mut mpsc::Receiver<i64>,
    mut role: watch::Receiver<Role>,
    mut stop: watch::Receiver<bool>,
) {
    let WriterSetup {
        client,
        pool,
        cache,
        cfg,
        stats,
    } = setup;
    if cfg.qps == 0 {
        warn!("status writing is off (--status-qps 0): ScheduledJob status will not show runs");
    }
    loop {
        // Wait to lead, discarding notices: a new leader rebuilds everything anyway.
        let epoch = loop {
            if let Some(e) = role.borrow().epoch().filter(|_| cfg.qps > 0) {
                break e;
            }
            tokio::select! {
                n = rx.recv() => if n.is_none() { return },
                _ = role.changed() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let mut writer = Writer {
            client: client.clone(),
            pool: pool.clone(),
            cache: cache.clone(),
            cfg,
            stats: stats.clone(),
            pending: Pending::default(),
            written: HashMap::new(),
            last_warning: None,
        };
        info!(
            epoch,
            "status writer active: rebuilding status from Postgres"
        );
        stats.resync.store(true, Ordering::Relaxed);
        let leading = {
            let role = role.clone();
            move || role.borrow().epoch() == Some(epoch)
        };
        tokio::select! {
            _ = writer.lead(rx, &leading) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        stats.status_queue.store(0, Ordering::Relaxed);
    }
}

struct Writer {
    client: Client,
    pool: PgPool,
    cache: JobCache,
    cfg: WriterConfig,
    stats: Arc<FeedStats>,
    pending: Pending,
    /// A fingerprint of the last patch written per job, this leadership.
    written: HashMap<i64, u64>,
    last_warning: Option<Instant>,
}

impl Writer {
    async fn lead(&mut self, rx: &mut mpsc::Receiver<i64>, leading: &impl Fn() -> bool) {
        let every = self.cfg.per_job_interval;
        let mut pace = tokio::time::interval(Duration::from_secs(1) / self.cfg.qps.max(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_forget = Instant::now();
        while leading() {
            if self.stats.resync.swap(false, Ordering::Relaxed) {
                match all_jobs(&self.pool).await {
                    Ok(ids) => {
                        let now = Instant::now();
                        for id in ids {
                            self.pending.touch(id, now, every);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "status resync: reading jobs failed");
                        self.stats.resync.store(true, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            self.drain(rx);
            let batch = self.pending.take(READ_BATCH, Instant::now());
            if batch.is_empty() {
                let wake = self
                    .pending
                    .next_ready()
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(5));
                tokio::select! {
                    n = rx.recv() => match n {
                        Some(id) => self.pending.touch(id, Instant::now(), every),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
                continue;
            }
            if let Err(e) = self.write_batch(&batch, &mut pace, rx).await {
                warn!(error = %e, "status: reading jobs from Postgres failed; retrying");
                let now = Instant::now();
                for id in batch {
                    self.pending.touch(id, now, Duration::ZERO);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if last_forget.elapsed() > Duration::from_secs(60) {
                last_forget = Instant::now();
                self.pending.forget(Instant::now(), every);
            }
        }
    }

    fn drain(&mut self, rx: &mut mpsc::Receiver<i64>) {
        let now = Instant::now();
        while let Ok(id) = rx.try_recv() {
            self.pending.touch(id, now, self.cfg.per_job_interval);
        }
        self.stats
            .status_queue
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    async fn write_batch(
        &mut self,
        ids: &[i64],
        pace: &mut tokio::time::Interval,
        rx: &mut mpsc::Receiver<i64>,
    ) -> Result<(), sqlx::Error> {
        let (rows, active) = load(&self.pool, ids).await?;
        let mut in_flight = FuturesUnordered::new();
        for row in rows {
            let mine: Vec<&ActiveRow> = active.iter().filter(|a| a.job_id == row.id).collect();
            let fields = status_fields(&row, &mine);
            let print = written_digest(&fields);
            if self.written.get(&row.id) == Some(&print) || self.cached_has(&row, print) {
                continue;
            }
            pace.tick().await;
            let api: Api<ScheduledJob> = Api::namespaced(self.client.clone(), &row.namespace);
            let (id, ns, name) = (row.id, row.namespace, row.name);
            in_flight.push(async move {
                let patch = json!({ "status": fields });
                let r = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                (id, ns, name, print, r)
            });
            if in_flight.len() >= IN_FLIGHT
                && let Some(done) = in_flight.next().await
            {
                self.finish(done);
            }
            self.drain(rx);
        }
        while let Some(done) = in_flight.next().await {
            self.finish(done);
        }
        Ok(())
    }

    fn finish(
        &mut self,
        (id, ns, name, print, r): (i64, String, String, u64, Result<ScheduledJob, kube::Error>),
    ) {
        let now = Instant::now();
        match r {
            Ok(_) => {
                self.stats.status_writes.fetch_add(1, Ordering::Relaxed);
                self.written.insert(id, print);
                self.pending.wrote(id, now);
            }
            // Deleted meanwhile: nothing to write.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                self.written.insert(id, print);
            }
            Err(e) => {
                let failures = self
                    .stats
                    .status_write_errors
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                // A missing permission fails every write: say so, but not thousands of times.
                if self
                    .last_warning
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
                {
                    self.last_warning = Some(now);
                    warn!(job = %format!("{ns}/{name}"), error = %e, failures, "status write failed; will retry");
                } else {
                    debug!(job = %format!("{ns}/{name}"), error = %e, "status write failed; will retry");
                }
                self.pending.wrote(id, now);
                self.pending.touch(id, now, self.cfg.per_job_interval);
            }
        }
    }

    /// The informer cache already shows these values (e.g. right after a failover).
    fn cached_has(&self, row: &Row, digest: u64) -> bool {
        self.cache
            .get(&Uid::parse(&row.uid))
            .is_some_and(|job| !job.status.unreadable && job.status.written == digest)
    }
}

async fn all_jobs(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM scheduled_jobs WHERE deleted_at IS NULL ORDER BY id")
        .fetch_all(pool)
        .await
}

async fn load(pool: &PgPool, ids: &[i64]) -> Result<(Vec<Row>, Vec<ActiveRow>), sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT j.id, j.uid, j.namespace, j.name, j.enabled, j.next_run_at, ",
        last_run_sql!(),
        " AS last_run_at,
                j.last_success_at, j.total_runs, j.succeeded, j.failed, j.missed, j.skipped,
                e.task_id, e.scheduled_for, e.trigger, e.state, e.dispatched_at, e.finished_at,
                e.error
         FROM scheduled_jobs j
         LEFT JOIN LATERAL (
             SELECT task_id, scheduled_for, trigger, state, dispatched_at, finished_at, error
             FROM job_executions
             WHERE job_id = j.id AND ",
        visible_run_sql!(),
        " ORDER BY scheduled_for DESC, id DESC LIMIT 1
         ) e ON true
         WHERE j.id = ANY($1) AND j.deleted_at IS NULL",
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let active: Vec<ActiveRow> = sqlx::query_as(concat!(
        "SELECT job_id, task_id, scheduled_for, state FROM (
             SELECT job_id, task_id, scheduled_for, state,
                    row_number() OVER (PARTITION BY job_id ORDER BY id DESC) AS n
             FROM job_executions
             WHERE job_id = ANY($1) AND state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')
               AND ",
        visible_run_sql!(),
        "
         ) a WHERE n <= $2 ORDER BY job_id, scheduled_for",
    ))
    .bind(ids)
    .bind(ACTIVE_SHOWN)
    .fetch_all(pool)
    .await?;
    Ok((rows, active))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_coalesces_and_spaces_writes_per_job() {
        let every = Duration::from_secs(1);
        let t = Instant::now();
        let mut p = Pending::default();
        p.touch(1, t, every);
        p.touch(2, t, every);
        p.touch(1, t, every); // coalesced
        assert_eq!(p.len(), 2);
        assert_eq!(p.take(10, t), vec![1, 2]);
        p.wrote(1, t);
        // Job 1 changes again at once: it waits out its interval; job 3 does not wait.
        p.touch(1, t + Duration::from_millis(100), every);
        p.touch(3, t + Duration::from_millis(100), every);
        assert_eq!(p.take(10, t + Duration::from_millis(200)), vec![3]);
        assert_eq!(p.next_ready(), Some(t + every));
        assert!(p.take(10, t + Duration::from_millis(900)).is_empty());
        assert_eq!(p.take(10, t + every), vec![1]);
        assert!(p.is_empty());
        // Batches are bounded and FIFO.
        for id in 10..20 {
            p.touch(id, t, every);
        }
        assert_eq!(p.take(3, t), vec![10, 11, 12]);
        p.forget(t + Duration::from_secs(5), every);
        assert!(p.last_write.is_empty());
    }

    #[test]
    fn written_digest_treats_null_as_absent_and_ignores_key_order() {
        // What a status shows, read back through the typed status (as the cache does it).
        let status = crate::api::ScheduledJobStatus {
            total_runs: 3,
            last_execution: Some(crate::api::ExecutionSummary {
                task_id: "a".into(),
                state: "SUCCESS".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let current = serde_json::to_value(&status).expect("status");
        let wanted = json!({"skipped": 0, "missed": 0, "failed": 0, "succeeded": 0,
            "totalRuns": 3, "active": null, "nextScheduleTime": null,
            "lastExecution": {"state": "SUCCESS", "taskId": "a", "message": null,
                "scheduledFor": "", "trigger": ""}});
        assert_eq!(written_digest(&current), written_digest(&wanted));
        // The reconciler's fields are not the writer's business.
        let mut other = current.clone();
        other["observedGeneration"] = json!(7);
        assert_eq!(written_digest(&other), written_digest(&current));
        let mut changed = wanted.clone();
        changed["totalRuns"] = json!(4);
        assert_ne!(written_digest(&changed), written_digest(&current));
        let mut new_exec = wanted.clone();
        new_exec["lastExecution"]["taskId"] = json!("b");
        assert_ne!(written_digest(&new_exec), written_digest(&current));
        assert_ne!(
            written_digest(&json!({})),
            written_digest(&json!({"lastExecution": {"taskId": "a"}}))
        );
    }
}
