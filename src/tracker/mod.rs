//! The result tracker (leader only): follows every unfinished execution through Celery's result
//! backend — STARTED, RETRY, SUCCESS, FAILURE, REVOKED — and records LOST when no final state
//! arrives within the job's `executionTimeoutSeconds`. Reads are batched (one backend round
//! trip and one Postgres transaction per batch) and never touch the dispatch path.

pub mod backend;
pub mod decode;
pub mod pickle;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{info, warn};

use backend::Backend;
use decode::{State, Tracked, Transition};

use crate::{
    leader::Role,
    status::{Feed, JobEvent, JobRef, Reason},
    store::claims::{ClaimError, check_epoch},
};

/// Executions read per batch.
const BATCH: i64 = 1000;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Unfinished {
    id: i64,
    job_id: i64,
    task_id: String,
    state: String,
    since: DateTime<Utc>,
    execution_timeout_seconds: i64,
    namespace: String,
    name: String,
    uid: String,
    task_name: String,
    scheduled_for: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
}

pub struct Tracker {
    pub pool: PgPool,
    pub backend: Backend,
    pub role: watch::Receiver<Role>,
    pub feed: Feed,
    /// Pause between passes over the unfinished executions.
    pub poll: Duration,
}

impl Tracker {
    /// Run until `stop` flips; works only while this replica leads.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if !self.backend.tracks() {
            info!("result backend none: executions stop at DISPATCHED");
            return;
        }
        loop {
            let epoch = self.role.borrow().epoch();
            if let Some(epoch) = epoch {
                match self.pass(epoch).await {
                    Ok(n) if n > 0 => tracing::debug!(updated = n, "result tracker pass"),
                    Ok(_) => {}
                    Err(TrackError::Claim(ClaimError::Fenced { .. })) => {}
                    Err(e) => warn!(error = %e, "result tracker pass failed; retrying"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = self.role.changed() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One pass over every unfinished execution, a batch at a time. Returns rows updated.
    async fn pass(&self, epoch: i64) -> Result<usize, TrackError> {
        let started = std::time::Instant::now();
        let mut seen = 0usize;
        let result = self.pass_batches(epoch, &mut seen).await;
        let m = &crate::metrics::METRICS;
        m.tracker_pass.observe(started.elapsed().as_secs_f64());
        m.tracker_unfinished.set(seen as i64);
        result
    }

    async fn pass_batches(&self, epoch: i64, seen: &mut usize) -> Result<usize, TrackError> {
        let mut after = 0i64;
        let mut updated = 0;
        loop {
            let batch: Vec<Unfinished> = sqlx::query_as(
                "SELECT e.id, e.job_id, e.task_id, e.state,
                        COALESCE(e.dispatched_at, e.claimed_at) AS since,
                        j.execution_timeout_seconds, j.namespace, j.name, j.uid, j.task_name,
                        e.scheduled_for, e.started_at
                 FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
                 WHERE e.state IN ('DISPATCHED', 'STARTED', 'RETRY') AND e.id > $1
                 ORDER BY e.id LIMIT $2",
            )
            .bind(after)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = batch.last() else {
                return Ok(updated);
            };
            after = last.id;
            *seen += batch.len();
            let full = batch.len() as i64 == BATCH;
            let ids: Vec<String> = batch.iter().map(|u| u.task_id.clone()).collect();
            let metas = self.backend.fetch(&ids).await?;
            let now = Utc::now();
            let changes: Vec<(&Unfinished, Transition)> = batch
                .iter()
                .filter_map(|u| {
                    let t = Tracked {
                        state: State::parse(&u.state)?,
                        since: u.since,
                        timeout_seconds: u.execution_timeout_seconds,
                    };
                    decode::transition(&t, metas.get(&u.task_id), now, true).map(|tr| (u, tr))
                })
                .collect();
            if !changes.is_empty() {
                let applied = apply(&self.pool, epoch, &changes).await?;
                updated += applied.len();
                self.report(&changes, &applied);
            }
            if !full {
                return Ok(updated);
            }
        }
    }

    /// Logs, status notices and Events for the changes that were applied.
    fn report(&self, changes: &[(&Unfinished, Transition)], applied: &[i64]) {
        let applied: std::collections::HashSet<i64> = applied.iter().copied().collect();
        let m = &crate::metrics::METRICS;
        for (u, tr) in changes.iter().filter(|(u, _)| applied.contains(&u.id)) {
            self.feed.touch(u.job_id);
            if tr.state.is_final() {
                m.finished(tr.state.as_str());
                let started = u.started_at.or(tr.started_at);
                if let (Some(s), Some(f)) = (started, tr.finished_at) {
                    let secs = (f - s).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    m.execution_duration.observe(secs);
                }
            }
            let job = format!("{}/{}", u.namespace, u.name);
            let slot = crate::schedule::rfc3339(u.scheduled_for);
            let error = tr.error.as_deref().unwrap_or("");
            let reason = match tr.state {
                State::Success => {
                    info!(job = %job, task = %u.task_name, task_id = %u.task_id, slot = %slot, "Job executed successfully");
                    None
                }
                State::Failure => {
                    warn!(job = %job, task = %u.task_name, task_id = %u.task_id, slot = %slot, error = %error, "Job failed");
                    Some(Reason::Failed)
                }
                State::Lost => {
                    warn!(job = %job, task = %u.task_name, task_id = %u.task_id, slot = %slot, error = %error, "Job failed: LOST");
                    Some(Reason::Lost)
                }
                State::Revoked => {
                    warn!(job = %job, task = %u.task_name, task_id = %u.task_id, slot = %slot, error = %error, "Job failed: REVOKED");
                    Some(Reason::Revoked)
                }
                _ => None,
            };
            if let Some(reason) = reason {
                self.feed.event(JobEvent {
                    job: JobRef {
                        namespace: u.namespace.clone(),
                        name: u.name.clone(),
                        uid: u.uid.clone(),
                    },
                    reason,
                    message: format!(
                        "run {} (task {}) {}: {}",
                        slot,
                        u.task_id,
                        tr.state.as_str(),
                        error
                    ),
                });
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
}

/// Write the transitions in one transaction under the fencing epoch, each only if the row is
/// still in the state it was read in (a Replace revocation may have ended it meanwhile), and
/// count final outcomes on their jobs. Returns the execution ids changed.
async fn apply(
    pool: &PgPool,
    epoch: i64,
    changes: &[(&Unfinished, Transition)],
) -> Result<Vec<i64>, TrackError> {
    let mut ids = Vec::with_capacity(changes.len());
    let mut old = Vec::with_capacity(changes.len());
    let mut state = Vec::with_capacity(changes.len());
    let mut started = Vec::with_capacity(changes.len());
    let mut finished = Vec::with_capacity(changes.len());
    let mut result = Vec::with_capacity(changes.len());
    let mut error = Vec::with_capacity(changes.len());
    let mut traceback = Vec::with_capacity(changes.len());
    for (u, tr) in changes {
        ids.push(u.id);
        old.push(u.state.clone());
        state.push(tr.state.as_str().to_string());
        started.push(tr.started_at);
        finished.push(tr.finished_at);
        let row = decode::stored(tr);
        result.push(row.result);
        error.push(row.error);
        traceback.push(row.traceback);
    }
    let mut tx = pool.begin().await?;
    check_epoch(&mut tx, epoch).await?;
    let changed: Vec<i64> = sqlx::query_scalar(
        "WITH u AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[],
                                  $5::timestamptz[], $6::text[], $7::text[], $8::text[])
                 AS u(id, old_state, state, started_at, finished_at, result, error, traceback)
         ), changed AS (
             UPDATE job_executions e SET
                 state = u.state,
                 started_at = COALESCE(e.started_at, u.started_at),
                 finished_at = COALESCE(u.finished_at, e.finished_at),
                 result = COALESCE(u.result::jsonb, e.result),
                 error = COALESCE(u.error, e.error),
                 traceback = COALESCE(u.traceback, e.traceback)
             FROM u WHERE e.id = u.id AND e.state = u.old_state
             RETURNING e.id, e.job_id, e.state, e.scheduled_for
         ), counted AS (
             UPDATE scheduled_jobs j SET
                 succeeded = j.succeeded + c.ok,
                 failed = j.failed + c.bad,
                 last_success_at = GREATEST(j.last_success_at, c.last_ok)
             FROM (SELECT job_id,
                          count(*) FILTER (WHERE state = 'SUCCESS') AS ok,
                          count(*) FILTER (WHERE state IN ('FAILURE', 'LOST', 'REVOKED')) AS bad,
                          max(scheduled_for) FILTER (WHERE state = 'SUCCESS') AS last_ok
                   FROM changed GROUP BY job_id) c
             WHERE j.id = c.job_id
         )
         SELECT id FROM changed",
    )
    .bind(&ids)
    .bind(&old)
    .bind(&state)
    .bind(&started)
    .bind(&finished)
    .bind(&result)
    .bind(&error)
    .bind(&traceback)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(changed)
}
