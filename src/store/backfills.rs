//! Backfills (`backfills`, migration 0011): created once per request id by the leader's
//! reconciler, worked through by the leader's backfill runner in fenced transactions. Only the
//! SQL lives here; which slots to run is `crate::backfill` (pure).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::{
    StoreError,
    claims::{ClaimError, begin_fenced},
};

/// A live job's schedule as stored (what its slots are computed from).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSchedule {
    pub job_id: i64,
    pub schedule_config: Value,
    pub time_zone: String,
    pub start_time: Option<DateTime<Utc>>,
    pub anchor_time: DateTime<Utc>,
}

macro_rules! schedule_sql {
    () => {
        "SELECT id AS job_id, schedule_config, time_zone, start_time, anchor_time FROM scheduled_jobs"
    };
}

/// The stored schedule of the live job with this uid.
pub async fn job_schedule(pool: &PgPool, uid: &str) -> Result<Option<StoredSchedule>, StoreError> {
    Ok(sqlx::query_as(concat!(
        schedule_sql!(),
        " WHERE uid = $1 AND deleted_at IS NULL"
    ))
    .bind(uid)
    .fetch_optional(pool)
    .await?)
}

/// The stored schedule of the live job `namespace/name`.
pub async fn job_schedule_by_name(
    pool: &PgPool,
    namespace: &str,
    name: &str,
) -> Result<Option<StoredSchedule>, StoreError> {
    Ok(sqlx::query_as(concat!(
        schedule_sql!(),
        " WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL"
    ))
    .bind(namespace)
    .bind(name)
    .fetch_optional(pool)
    .await?)
}

/// Whether the job already has a backfill for this request id.
pub async fn exists(pool: &PgPool, job_id: i64, request_key: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM backfills WHERE job_id = $1 AND request_key = $2)",
    )
    .bind(job_id)
    .bind(request_key)
    .fetch_one(pool)
    .await?)
}

/// A backfill to record.
#[derive(Debug, Clone)]
pub struct NewBackfill<'a> {
    pub schedule: &'a StoredSchedule,
    pub request_key: &'a str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub max_parallel: i32,
    pub total: i64,
    pub requested_by: Option<&'a str>,
    /// `Some(why)`: recorded as Failed at once (a refused request, shown in status).
    pub refused: Option<&'a str>,
}

/// Record a backfill, once per (job, request id), as the leader of `epoch`. Returns its id if it
/// is new.
pub async fn create(
    pool: &PgPool,
    epoch: i64,
    b: &NewBackfill<'_>,
) -> Result<Option<i64>, ClaimError> {
    let mut tx = begin_fenced(pool, epoch).await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO backfills (job_id, request_key, from_time, to_time, max_parallel,
                                schedule_config, time_zone, start_time, anchor_time, total,
                                requested_by, state, message, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                 CASE WHEN $12::text IS NULL THEN 'Running' ELSE 'Failed' END, $12,
                 CASE WHEN $12::text IS NULL THEN NULL ELSE now() END)
         ON CONFLICT (job_id, request_key) DO NOTHING
         RETURNING id",
    )
    .bind(b.schedule.job_id)
    .bind(b.request_key)
    .bind(b.from)
    .bind(b.to)
    .bind(b.max_parallel)
    .bind(&b.schedule.schedule_config)
    .bind(&b.schedule.time_zone)
    .bind(b.schedule.start_time)
    .bind(b.schedule.anchor_time)
    .bind(b.total)
    .bind(b.requested_by)
    .bind(b.refused)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// A running backfill, with its job's state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunningBackfill {
    pub id: i64,
    pub job_id: i64,
    pub request_key: String,
    pub from_time: DateTime<Utc>,
    pub to_time: DateTime<Utc>,
    pub max_parallel: i32,
    pub schedule_config: Value,
    pub time_zone: String,
    pub start_time: Option<DateTime<Utc>>,
    pub anchor_time: DateTime<Utc>,
    pub cursor: Option<DateTime<Utc>>,
    /// The job was deleted (its backfill is cancelled).
    pub job_deleted: bool,
}

/// The running backfills, oldest first (at most `limit` per pass).
pub async fn running(pool: &PgPool, limit: i64) -> Result<Vec<RunningBackfill>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT b.id, b.job_id, b.request_key, b.from_time, b.to_time, b.max_parallel,
                b.schedule_config, b.time_zone, b.start_time, b.anchor_time, b.cursor,
                j.deleted_at IS NOT NULL AS job_deleted
         FROM backfills b JOIN scheduled_jobs j ON j.id = b.job_id
         WHERE b.state = 'Running' ORDER BY b.id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A backfill's runs, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct RunCounts {
    pub unfinished: i64,
    pub succeeded: i64,
    pub failed: i64,
}

/// One pass over one backfill, in a fenced transaction: the backfill row is locked, so a pass
/// of an older leader still finishing cannot interleave with a new one.
pub struct BackfillTx {
    tx: Transaction<'static, Postgres>,
    epoch: i64,
}

impl BackfillTx {
    pub async fn begin(pool: &PgPool, epoch: i64) -> Result<BackfillTx, ClaimError> {
        Ok(BackfillTx {
            tx: begin_fenced(pool, epoch).await?,
            epoch,
        })
    }

    /// Lock the backfill; its cursor as stored now (`None` inside: no slot handed out yet), or
    /// `None` if it is no longer running.
    pub async fn lock(&mut self, id: i64) -> Result<Option<Option<DateTime<Utc>>>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT cursor FROM backfills WHERE id = $1 AND state = 'Running' FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await
    }

    /// Its runs by outcome (from the executions: the tracker records outcomes there).
    pub async fn counts(&mut self, id: i64) -> Result<RunCounts, sqlx::Error> {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY'))
                        AS unfinished,
                    count(*) FILTER (WHERE state = 'SUCCESS') AS succeeded,
                    count(*) FILTER (WHERE state IN ('FAILURE', 'LOST', 'REVOKED',
                                                     'DISPATCH_FAILED', 'MISSED')) AS failed
             FROM job_executions WHERE backfill_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *self.tx)
        .await
    }

    /// The slot keys among `slots` the job has an execution for (a run of any trigger, or a
    /// MISSED / SKIPPED record): those slots are not run again.
    pub async fn recorded_slots(
        &mut self,
        job_id: i64,
        slots: &[DateTime<Utc>],
    ) -> Result<Vec<String>, sqlx::Error> {
        let keys: Vec<String> = slots.iter().map(|s| crate::schedule::rfc3339(*s)).collect();
        sqlx::query_scalar(
            "SELECT slot_key FROM job_executions WHERE job_id = $1 AND slot_key = ANY($2)",
        )
        .bind(job_id)
        .bind(&keys)
        .fetch_all(&mut *self.tx)
        .await
    }

    /// Insert one run per slot (PENDING, or SHADOW in shadow mode), keyed like a scheduled run
    /// of the slot: a slot that already has an execution keeps it. Returns how many were new.
    pub async fn insert_runs(
        &mut self,
        job_id: i64,
        backfill_id: i64,
        slots: &[DateTime<Utc>],
        shadow: bool,
    ) -> Result<u64, sqlx::Error> {
        if slots.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = slots.iter().map(|s| crate::schedule::rfc3339(*s)).collect();
        let task_ids: Vec<String> = slots
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let inserted = sqlx::query(
            "INSERT INTO job_executions (job_id, slot_key, task_id, scheduled_for, trigger, state,
                                         leader_epoch, backfill_id)
             SELECT $1, u.slot_key, u.task_id, u.scheduled_for, 'backfill', $5, $6, $7
             FROM UNNEST($2::text[], $3::text[], $4::timestamptz[])
                  AS u(slot_key, task_id, scheduled_for)
             ON CONFLICT (job_id, slot_key) DO NOTHING",
        )
        .bind(job_id)
        .bind(&keys)
        .bind(&task_ids)
        .bind(slots.to_vec())
        .bind(if shadow { "SHADOW" } else { "PENDING" })
        .bind(self.epoch)
        .bind(backfill_id)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            // Runs of the job, like a manual run's (not its last run: the slots are past ones).
            sqlx::query("UPDATE scheduled_jobs SET total_runs = total_runs + $2 WHERE id = $1")
                .bind(job_id)
                .bind(i64::try_from(inserted).unwrap_or(i64::MAX))
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(inserted)
    }

    /// Record a pass: the cursor, the new runs and slots found run already, the outcome counts
    /// (they never go down: history retention may prune finished runs), and the state.
    pub async fn record(&mut self, id: i64, pass: &Pass<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE backfills SET cursor = COALESCE($2, cursor),
                    dispatched = dispatched + $3, already_ran = already_ran + $4,
                    succeeded = GREATEST(succeeded, $5), failed = GREATEST(failed, $6),
                    state = $7, message = COALESCE($8, message), updated_at = now(),
                    finished_at = CASE WHEN $7 = 'Running' THEN NULL ELSE now() END,
                    total = CASE WHEN $7 = 'Complete' THEN dispatched + $3 + already_ran + $4
                                 ELSE total END
             WHERE id = $1",
        )
        .bind(id)
        .bind(pass.cursor)
        .bind(pass.dispatched)
        .bind(pass.already_ran)
        .bind(pass.counts.succeeded)
        .bind(pass.counts.failed)
        .bind(pass.state)
        .bind(pass.message)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// What one pass over a backfill changes.
#[derive(Debug, Clone, Default)]
pub struct Pass<'a> {
    pub cursor: Option<DateTime<Utc>>,
    pub dispatched: i64,
    pub already_ran: i64,
    pub counts: RunCounts,
    /// Running, Complete, Failed or Cancelled.
    pub state: &'a str,
    pub message: Option<&'a str>,
}

/// A backfill as the API and the status show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct BackfillView {
    pub id: String,
    #[serde(serialize_with = "rfc3339")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub to: DateTime<Utc>,
    pub max_parallel: i32,
    pub state: String,
    pub message: Option<String>,
    pub total: i64,
    pub dispatched: i64,
    pub already_ran: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub unfinished: i64,
    pub requested_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::schedule::rfc3339(*t))
}

/// The columns of a [`BackfillView`] of the backfill aliased `b` (unfinished counted live).
macro_rules! backfill_view_sql {
    () => {
        "b.request_key AS id, b.from_time AS \"from\", b.to_time AS \"to\", b.max_parallel,
         b.state, b.message, b.total, b.dispatched, b.already_ran, b.succeeded, b.failed,
         (SELECT count(*) FROM job_executions x WHERE x.backfill_id = b.id
             AND x.state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')) AS unfinished,
         b.requested_by, b.created_at, b.finished_at"
    };
}

/// The newest `limit` backfills of the live job `namespace/name`, newest first; `None` if there
/// is no such job.
pub async fn for_job(
    pool: &PgPool,
    namespace: &str,
    name: &str,
    limit: i64,
) -> Result<Option<Vec<BackfillView>>, StoreError> {
    let Some(job) = job_schedule_by_name(pool, namespace, name).await? else {
        return Ok(None);
    };
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        backfill_view_sql!(),
        " FROM backfills b WHERE b.job_id = $1 ORDER BY b.id DESC LIMIT $2"
    ))
    .bind(job.job_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Some(rows))
}

/// The latest backfill of each of `job_ids` (for `status.backfill`).
pub async fn latest(
    pool: &PgPool,
    job_ids: &[i64],
) -> Result<Vec<(i64, BackfillView)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        job_id: i64,
        #[sqlx(flatten)]
        view: BackfillView,
    }
    if job_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT DISTINCT ON (b.job_id) b.job_id, ",
        backfill_view_sql!(),
        " FROM backfills b WHERE b.job_id = ANY($1) ORDER BY b.job_id, b.id DESC"
    ))
    .bind(job_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.job_id, r.view)).collect())
}
