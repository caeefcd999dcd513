//! The status writer: the run fields of each ScheduledJob's status, rebuilt from Postgres.
//!
//! It coalesces per job (Postgres is read at write time, so the newest state wins; at most one
//! write per job per `interval`) and paces all writes to `qps`. It skips writes that would change
//! nothing, comparing with what it wrote and with the informer cache. A new leader rebuilds every
//! status from Postgres.
//!
//! Where it reads ([`StatusSource`]), where it writes ([`StatusSink`]) and what the objects show
//! ([`ShownStatus`]) are traits, so the writer's pacing is tested against fakes on a paused
//! clock; production reads Postgres and applies to the apiserver.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{StreamExt, stream::FuturesUnordered};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{FeedStats, write_queue::WriteQueue};
use crate::{
    api::{RUN_STATUS_FIELD_MANAGER, ScheduledJob, status_digest::written_digest},
    leader::Role,
    schedule::rfc3339,
    store::{
        StoreError,
        status::{ActiveRow, JobStatusRow},
    },
};

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Status writes per second at most (0 disables the writer).
    pub qps: u32,
    /// At most one write per job per this interval.
    pub per_job_interval: Duration,
}

/// Writes in flight at once (each waits for the apiserver; the pace is set by `qps`).
const IN_FLIGHT: usize = 16;
/// Jobs read from Postgres per round trip.
const READ_BATCH: usize = 200;
/// Unfinished executions listed in `status.active`.
const ACTIVE_SHOWN: i64 = 10;

/// Where the run status is read from (production: Postgres, see [`crate::store::status`]).
pub trait StatusSource: Send + Sync {
    /// Every live job (a full rebuild).
    fn live_job_ids(&self) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;
    /// The live jobs among `ids`, and their unfinished executions (at most `ACTIVE_SHOWN` each).
    fn load(
        &self,
        ids: &[i64],
    ) -> impl Future<Output = Result<(Vec<JobStatusRow>, Vec<ActiveRow>), StoreError>> + Send;
}

impl StatusSource for PgPool {
    async fn live_job_ids(&self) -> Result<Vec<i64>, StoreError> {
        crate::store::status::live_job_ids(self).await
    }

    async fn load(&self, ids: &[i64]) -> Result<(Vec<JobStatusRow>, Vec<ActiveRow>), StoreError> {
        let mut rows = crate::store::status::job_status_rows(self, ids).await?;
        for (job_id, view) in crate::store::backfills::latest(self, ids).await? {
            if let Some(row) = rows.iter_mut().find(|r| r.id == job_id) {
                row.backfill = Some(view);
            }
        }
        let active = crate::store::status::active_executions(self, ids, ACTIVE_SHOWN).await?;
        Ok((rows, active))
    }
}

/// A status write failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The object is gone (deleted meanwhile): nothing to write.
    #[error("the ScheduledJob is gone")]
    Gone,
    #[error("writing status: {0}")]
    Kube(#[source] kube::Error),
}

/// Where the run fields are written (production: [`KubeSink`]).
pub trait StatusSink: Send + Sync {
    /// Write one job's run fields, all of them (a field left out is removed). The future owns
    /// what it needs: many are in flight while the writer goes on.
    fn apply(
        &self,
        namespace: &str,
        name: &str,
        fields: Value,
    ) -> impl Future<Output = Result<(), SinkError>> + Send + 'static;
}

/// Server-side apply of the run fields on the status subresource, under
/// [`RUN_STATUS_FIELD_MANAGER`]: the reconciler's fields and other controllers' are left alone.
pub struct KubeSink {
    pub client: Client,
}

impl StatusSink for KubeSink {
    fn apply(
        &self,
        namespace: &str,
        name: &str,
        fields: Value,
    ) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
        // Untyped: a job whose spec no longer matches the schema still gets its status.
        let resource = ApiResource::erase::<ScheduledJob>(&());
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let name = name.to_string();
        async move {
            let body = json!({
                "apiVersion": ScheduledJob::api_version(&()),
                "kind": ScheduledJob::kind(&()),
                "metadata": {"name": name},
                "status": fields,
            });
            let params = PatchParams::apply(RUN_STATUS_FIELD_MANAGER).force();
            match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Err(SinkError::Gone),
                Err(e) => Err(SinkError::Kube(e)),
            }
        }
    }
}

/// What the objects show, as far as the writer needs to know (production: the job cache).
pub trait ShownStatus: Send + Sync {
    /// The job with this uid shows run fields with this [`written_digest`].
    fn shows(&self, uid: &str, digest: u64) -> bool;
}

/// An object without its `null` members (in an apply, a field left out is one removed).
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(mut o) => {
            o.retain(|_, v| !v.is_null());
            Value::Object(o)
        }
        other => other,
    }
}

/// The run fields of one job, as applied: every field the writer owns that has a value, and no
/// `null` (in an apply, leaving a field out is what removes it).
pub fn status_fields(r: &JobStatusRow, active: &[&ActiveRow]) -> Value {
    let mut fields = serde_json::Map::new();
    let mut put = |key: &str, v: Value| {
        if !v.is_null() {
            fields.insert(key.to_string(), v);
        }
    };
    put(
        "nextScheduleTime",
        json!(r.next_run_at.filter(|_| r.enabled).map(rfc3339)),
    );
    put("lastScheduleTime", json!(r.last_run_at.map(rfc3339)));
    put("lastSuccessfulTime", json!(r.last_success_at.map(rfc3339)));
    if let Some(task_id) = &r.task_id {
        let exec = json!({
            "taskId": task_id,
            "scheduledFor": r.scheduled_for.map(rfc3339),
            "trigger": r.trigger,
            "state": r.state,
            "dispatchedAt": r.dispatched_at.map(rfc3339),
            "finishedAt": r.finished_at.map(rfc3339),
            "message": r.error.as_deref().map(|m| crate::tracker::decode::cut_front(m, 1024)),
        });
        put("lastExecution", without_nulls(exec));
    }
    if let Some(request_id) = &r.manual_request_id {
        let run = json!({
            "requestId": request_id,
            "requestedBy": r.manual_requested_by,
            "taskId": r.manual_task_id,
            "state": r.manual_state,
            "dispatchedAt": r.manual_dispatched_at.map(rfc3339),
            "finishedAt": r.manual_finished_at.map(rfc3339),
            "message": r.manual_message.as_deref().map(|m| crate::tracker::decode::cut_front(m, 1024)),
        });
        put("lastManualRun", without_nulls(run));
    }
    if !active.is_empty() {
        let active: Vec<Value> = active
            .iter()
            .map(|a| {
                json!({"taskId": a.task_id, "scheduledFor": rfc3339(a.scheduled_for),
                       "state": a.state})
            })
            .collect();
        put("active", Value::Array(active));
    }
    for (key, n) in [
        ("totalRuns", r.total_runs),
        ("succeeded", r.succeeded),
        ("failed", r.failed),
        ("missed", r.missed),
        ("skipped", r.skipped),
        ("consecutiveFailures", r.consecutive_failures),
    ] {
        put(key, json!(n));
    }
    if let Some(since) = r.paused_at {
        put(
            "pause",
            json!({"reason": r.pause_reason.as_deref().unwrap_or_default(), "since": rfc3339(since)}),
        );
    }
    if let Some(b) = &r.backfill {
        put("backfill", backfill_fields(b));
    }
    // The `Healthy` and `Complete` conditions: this manager's (list-map entries keyed by type,
    // so the reconciler's `Ready` and other controllers' conditions stay theirs).
    let mut conditions = Vec::new();
    if let (Some(status), Some(since)) = (&r.health_status, r.health_since) {
        conditions.push(json!({
            "type": HEALTHY,
            "status": status,
            "reason": r.health_reason.as_deref().unwrap_or_default(),
            "message": r.health_message.as_deref().unwrap_or_default(),
            "lastTransitionTime": crate::schedule::rfc3339_seconds(since),
        }));
    }
    conditions.extend(super::complete::condition(r));
    if !conditions.is_empty() {
        put("conditions", Value::Array(conditions));
    }
    Value::Object(fields)
}

/// `status.backfill`: the latest backfill's progress.
fn backfill_fields(b: &crate::store::backfills::BackfillView) -> Value {
    let mut v = json!({
        "id": b.id, "from": rfc3339(b.from), "to": rfc3339(b.to), "state": b.state,
        "total": b.total, "dispatched": b.dispatched, "alreadyRan": b.already_ran,
        "succeeded": b.succeeded, "failed": b.failed, "unfinished": b.unfinished,
    });
    if let Some(m) = &b.message {
        v["message"] = json!(crate::tracker::decode::cut_front(m, 1024));
    }
    v
}

/// The condition type the status writer owns.
pub const HEALTHY: &str = crate::api::status_digest::HEALTHY;

/// What the status writer works with.
#[derive(Clone)]
pub struct WriterSetup {
    pub client: Client,
    pub pool: PgPool,
    /// What the objects show (the ScheduledJob cache), to skip writes they already show.
    pub cache: Arc<dyn ShownStatus>,
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
    let sink = Arc::new(KubeSink { client });
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
        let mut writer = Writer::new(
            pool.clone(),
            sink.clone(),
            cache.clone(),
            cfg,
            stats.clone(),
        );
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

impl<S: StatusSink + ?Sized> StatusSink for Arc<S> {
    fn apply(
        &self,
        namespace: &str,
        name: &str,
        fields: Value,
    ) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
        S::apply(self, namespace, name, fields)
    }
}

/// One write's outcome: job id, namespace, name, digest written, result.
type Done = (i64, String, String, u64, Result<(), SinkError>);

/// The writer of one leadership term.
pub struct Writer<Src, Snk> {
    source: Src,
    sink: Snk,
    shown: Arc<dyn ShownStatus>,
    cfg: WriterConfig,
    stats: Arc<FeedStats>,
    pending: WriteQueue,
    /// A fingerprint of the last fields written per job, this leadership.
    written: HashMap<i64, u64>,
    last_warning: Option<Instant>,
}

impl<Src: StatusSource, Snk: StatusSink> Writer<Src, Snk> {
    pub fn new(
        source: Src,
        sink: Snk,
        shown: Arc<dyn ShownStatus>,
        cfg: WriterConfig,
        stats: Arc<FeedStats>,
    ) -> Self {
        Writer {
            source,
            sink,
            shown,
            cfg,
            stats,
            pending: WriteQueue::default(),
            written: HashMap::new(),
            last_warning: None,
        }
    }

    /// Write while `leading()` holds (or until the feed closes).
    pub async fn lead(&mut self, rx: &mut mpsc::Receiver<i64>, leading: &impl Fn() -> bool) {
        let every = self.cfg.per_job_interval;
        let mut pace = tokio::time::interval(Duration::from_secs(1) / self.cfg.qps.max(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_forget = Instant::now();
        while leading() {
            if self.stats.resync.swap(false, Ordering::Relaxed) {
                self.resync().await;
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
                    _ = tokio::time::sleep_until(wake) => {}
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

    /// Queue every live job (a new leader, or a notice was dropped).
    async fn resync(&mut self) {
        match self.source.live_job_ids().await {
            Ok(ids) => {
                let now = Instant::now();
                for id in ids {
                    self.pending.touch(id, now, self.cfg.per_job_interval);
                }
            }
            Err(e) => {
                warn!(error = %e, "status resync: reading jobs failed");
                self.stats.resync.store(true, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
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
    ) -> Result<(), StoreError> {
        let (rows, active) = self.source.load(ids).await?;
        let mut in_flight = FuturesUnordered::new();
        for row in rows {
            let mine: Vec<&ActiveRow> = active.iter().filter(|a| a.job_id == row.id).collect();
            let fields = status_fields(&row, &mine);
            let print = written_digest(&fields);
            if self.written.get(&row.id) == Some(&print) || self.shown.shows(&row.uid, print) {
                continue;
            }
            pace.tick().await;
            let write = self.sink.apply(&row.namespace, &row.name, fields);
            let (id, ns, name) = (row.id, row.namespace, row.name);
            in_flight.push(async move { (id, ns, name, print, write.await) });
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

    fn finish(&mut self, (id, ns, name, print, r): Done) {
        let now = Instant::now();
        match r {
            Ok(()) => {
                self.stats.status_writes.fetch_add(1, Ordering::Relaxed);
                self.written.insert(id, print);
                self.pending.wrote(id, now);
            }
            // Deleted meanwhile: nothing to write.
            Err(SinkError::Gone) => {
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
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
