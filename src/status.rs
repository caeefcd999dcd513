//! The status writer (leader only, never on the dispatch path): copies what Postgres knows about
//! each job's runs into its status — `nextScheduleTime`, `lastScheduleTime`, `lastExecution`,
//! counters — so `kubectl get scheduledjobs` tells the truth.
//!
//! A first version: it polls Postgres, writes only what changed since its last write, and is
//! rate-limited overall. A new leader starts from an empty memory, so it rebuilds every status
//! from Postgres.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{api::ScheduledJob, leader::Role, schedule::rfc3339};

/// How often Postgres is compared with what was last written.
const SYNC_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    id: i64,
    namespace: String,
    name: String,
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

/// The status fields this writer owns, as a merge patch.
fn patch_for(r: &Row) -> serde_json::Value {
    let last_execution = r.task_id.as_ref().map(|task_id| {
        json!({
            "taskId": task_id,
            "scheduledFor": r.scheduled_for.map(rfc3339),
            "trigger": r.trigger,
            "state": r.state,
            "dispatchedAt": r.dispatched_at.map(rfc3339),
            "finishedAt": r.finished_at.map(rfc3339),
            "message": r.error,
        })
    });
    json!({"status": {
        "nextScheduleTime": r.next_run_at.map(rfc3339),
        "lastScheduleTime": r.last_run_at.map(rfc3339),
        "lastSuccessfulTime": r.last_success_at.map(rfc3339),
        "lastExecution": last_execution,
        "totalRuns": r.total_runs,
        "succeeded": r.succeeded,
        "failed": r.failed,
        "missed": r.missed,
        "skipped": r.skipped,
    }})
}

/// Run until `stop` flips. `qps` bounds status writes per second.
pub async fn run(
    client: Client,
    pool: PgPool,
    mut role: watch::Receiver<Role>,
    qps: u32,
    mut stop: watch::Receiver<bool>,
) {
    let mut written: HashMap<i64, Row> = HashMap::new();
    let mut last_epoch = None;
    let pause = Duration::from_secs(1) / qps.max(1);
    loop {
        let epoch = role.borrow().epoch();
        if epoch != last_epoch {
            // New leadership (or none): forget what was written; rebuild from Postgres.
            written.clear();
            last_epoch = epoch;
        }
        if epoch.is_some() {
            match sync(&client, &pool, &mut written, pause).await {
                Ok(n) if n > 0 => debug!(written = n, "status synced"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "status sync failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SYNC_EVERY) => {}
            _ = role.changed() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn sync(
    client: &Client,
    pool: &PgPool,
    written: &mut HashMap<i64, Row>,
    pause: Duration,
) -> Result<usize, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT j.id, j.namespace, j.name, j.next_run_at, j.last_run_at, j.last_success_at,
                j.total_runs, j.succeeded, j.failed, j.missed, j.skipped,
                e.task_id, e.scheduled_for, e.trigger, e.state, e.dispatched_at, e.finished_at, e.error
         FROM scheduled_jobs j
         LEFT JOIN LATERAL (
             SELECT task_id, scheduled_for, trigger, state, dispatched_at, finished_at, error
             FROM job_executions WHERE job_id = j.id ORDER BY id DESC LIMIT 1
         ) e ON true
         WHERE j.deleted_at IS NULL AND j.valid",
    )
    .fetch_all(pool)
    .await?;
    let mut n = 0;
    for row in rows {
        if written.get(&row.id) == Some(&row) {
            continue;
        }
        let api: Api<ScheduledJob> = Api::namespaced(client.clone(), &row.namespace);
        match api
            .patch_status(
                &row.name,
                &PatchParams::default(),
                &Patch::Merge(&patch_for(&row)),
            )
            .await
        {
            Ok(_) => {
                n += 1;
                written.insert(row.id, row);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                written.insert(row.id, row); // being deleted
            }
            Err(e) => {
                warn!(job = %format!("{}/{}", row.namespace, row.name), error = %e, "status write failed")
            }
        }
        tokio::time::sleep(pause).await;
    }
    Ok(n)
}
