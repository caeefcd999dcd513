//! `scheduled_jobs`: one row per ScheduledJob, keyed by its uid. The reconciler writes the
//! spec's side; the dispatcher owns `next_run_at` and the counters (see `claims`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::reconcile::validate::JobRow;

/// What the store holds for a job after an upsert.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredJob {
    /// Its row's id (for the status feed: no second read).
    pub id: i64,
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_trigger: Option<String>,
}

/// Insert or update valid jobs, all in one transaction of two statements (the reconciler batches
/// what concurrent reconciles store: one commit for hundreds of jobs, not one each). The
/// dispatcher owns `next_run_at`; it is replaced only when the schedule itself (or its
/// `endTime`) changed or the job is (re)enabled — resuming never replays the suspended period —
/// and cleared while `maxRuns` is reached. Returns, in `rows`' order, what the store holds for
/// each, `None` for a job already deleted. `spec` is the ScheduledJob spec the row was built
/// from (see [`stored_spec`]).
///
/// A row that already holds what this one would write (same [`row_digest`], valid, live, with
/// its next run in place) is only read: a new leader re-storing 100,000 unchanged jobs then
/// takes no row lock the dispatcher's claims would have to skip, and writes nothing.
///
/// The rows must have distinct uids and distinct (namespace, name): one statement cannot
/// update a row twice.
pub async fn upsert_jobs(
    pool: &PgPool,
    rows: &[(&JobRow, Option<&serde_json::Value>)],
) -> Result<Vec<Option<StoredJob>>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let digests: Vec<Vec<u8>> = rows.iter().map(|(r, s)| row_digest(r, *s)).collect();
    let uids = col(rows, |r| r.uid.clone());
    // Not locked: a row that changes after this read changes only in what the dispatcher,
    // tracker and health monitor own (the next run, counters, verdicts), never in the digest's
    // columns, which only this job's own reconcile writes (one at a time per job).
    let current: Vec<StoredRow> = sqlx::query_as(
        "SELECT s.uid, s.id, s.enabled, s.next_run_at, s.last_trigger
         FROM UNNEST($1::text[], $2::bytea[], $3::timestamptz[]) AS u(uid, digest, next_run)
         JOIN scheduled_jobs s ON s.uid = u.uid
         WHERE s.deleted_at IS NULL AND s.valid AND s.row_digest = u.digest
           -- A row that lost its spec (restored from an older backup) is rebuilt whole.
           AND s.spec IS NOT NULL AND s.spec_generation = s.generation
           -- The upsert would store a new next run for an enabled job without one, unless
           -- there is none to store (an end reached, a one-off run).
           AND (s.next_run_at IS NOT NULL OR NOT s.enabled OR s.scheduled_runs >= s.max_runs
                OR u.next_run IS NULL)
           -- Ids looked up by name when written: a TaskFunction recreated since has a new one.
           AND s.task_function_id IS NOT DISTINCT FROM
               (SELECT id FROM task_functions t WHERE t.name = s.task_function)",
    )
    .bind(&uids)
    .bind(&digests)
    .bind(col(rows, |r| r.next_run_at))
    .fetch_all(pool)
    .await?;
    let mut by_uid: std::collections::HashMap<String, StoredJob> =
        current.into_iter().map(|r| (r.uid, r.stored)).collect();
    let (changed, changed_digests): (Vec<_>, Vec<_>) = rows
        .iter()
        .zip(digests)
        .filter(|((r, _), _)| !by_uid.contains_key(&r.uid))
        .map(|(row, digest)| (*row, digest))
        .unzip();
    if !changed.is_empty() {
        by_uid.extend(write_jobs(pool, &changed, &changed_digests).await?);
    }
    Ok(uids.iter().map(|uid| by_uid.remove(uid)).collect())
}

/// Everything [`upsert_jobs`] stores for a job but its next run (computed from the time of each
/// reconcile, and the dispatcher's once stored): equal digests, equal rows. Serialized as one
/// JSON array, so each value's boundaries are part of what is hashed, with every object's keys
/// sorted: a spec read back from Postgres (jsonb orders keys by length) and the same spec from
/// the apiserver give one digest. The leading version changes whenever what is hashed changes,
/// so rows stored before are rewritten once.
pub fn row_digest(r: &JobRow, spec: Option<&serde_json::Value>) -> Vec<u8> {
    use serde_json::Value;
    use sha2::{Digest, Sha256};
    // Every field named, so a field added to `JobRow` does not compile until it is hashed here
    // or said not to be stored.
    let JobRow {
        uid,
        namespace,
        name,
        generation,
        task_function,
        task_name,
        job_type,
        schedule_config,
        schedule_summary,
        time_zone,
        start_time,
        anchor_time,
        args,
        kwargs,
        queue,
        priority,
        expires_seconds,
        message_options,
        suspended,
        concurrency_policy,
        starting_deadline_seconds,
        jitter_seconds,
        execution_timeout_seconds,
        history_limit,
        description,
        end_time,
        max_runs,
        health,
        calendars,
        // Not hashed: the next run (see above); the parameters are not stored in the row.
        next_slot_at: _,
        next_run_at: _,
        parameters: _,
    } = r;
    // These types always serialize (no map has non-string keys); a failure would only make
    // the digest differ, i.e. the row be rewritten.
    let v = |x: serde_json::Result<Value>| canonical(x.unwrap_or(Value::Null));
    let fields = Value::Array(vec![
        Value::from(2),
        v(serde_json::to_value(uid)),
        v(serde_json::to_value(namespace)),
        v(serde_json::to_value(name)),
        v(serde_json::to_value(generation)),
        v(serde_json::to_value(task_function)),
        v(serde_json::to_value(task_name)),
        v(serde_json::to_value(job_type.as_str())),
        v(serde_json::to_value(schedule_config)),
        v(serde_json::to_value(schedule_summary)),
        v(serde_json::to_value(time_zone)),
        v(serde_json::to_value(start_time)),
        v(serde_json::to_value(anchor_time)),
        v(serde_json::to_value(args)),
        v(serde_json::to_value(kwargs)),
        v(serde_json::to_value(queue)),
        v(serde_json::to_value(priority)),
        v(serde_json::to_value(expires_seconds)),
        v(serde_json::to_value(suspended)),
        v(serde_json::to_value(policy_str(*concurrency_policy))),
        v(serde_json::to_value(starting_deadline_seconds)),
        v(serde_json::to_value(jitter_seconds)),
        v(serde_json::to_value(execution_timeout_seconds)),
        v(serde_json::to_value(history_limit)),
        v(serde_json::to_value(description)),
        v(serde_json::to_value(spec)),
        v(serde_json::to_value(message_options)),
        v(serde_json::to_value(health)),
        v(serde_json::to_value(end_time)),
        v(serde_json::to_value(max_runs)),
        v(serde_json::to_value(calendars)),
    ]);
    Sha256::digest(fields.to_string().as_bytes()).to_vec()
}

/// `value` with every object's keys in sorted order (serde_json keeps insertion order here, as
/// the crate is built with `preserve_order`).
fn canonical(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Insert or rewrite `rows` (see [`upsert_jobs`]), each with its digest: what the store holds
/// for each, by uid.
// Long because its SQL is: one upsert statement of every column, its arrays bound one by one.
async fn write_jobs(
    pool: &PgPool,
    rows: &[(&JobRow, Option<&serde_json::Value>)],
    digests: &[Vec<u8>],
) -> Result<Vec<(String, StoredJob)>, StoreError> {
    let uids = col(rows, |r| r.uid.clone());
    let namespaces = col(rows, |r| r.namespace.clone());
    let names = col(rows, |r| r.name.clone());
    let mut tx = pool.begin().await?;
    // The rows this batch rewrites, locked first in id order, as every writer of several job
    // rows does (see `health::record_verdicts`): batches stored at once, the tracker's counters
    // and the health verdicts then wait for each other instead of deadlocking. (A row retired
    // below, a name reused under a new uid, is rare and not locked here.)
    sqlx::query("SELECT id FROM scheduled_jobs WHERE uid = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(&uids)
        .execute(&mut *tx)
        .await?;
    // An object deleted behind our back (finalizer removed by hand) and recreated under the same
    // name has a new uid; retire the old row so the name is free.
    sqlx::query(
        "UPDATE scheduled_jobs s SET deleted_at = now(), enabled = false, next_run_at = NULL
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(namespace, name, uid)
         WHERE s.namespace = u.namespace AND s.name = u.name AND s.uid <> u.uid
           AND s.deleted_at IS NULL",
    )
    .bind(&namespaces)
    .bind(&names)
    .bind(&uids)
    .execute(&mut *tx)
    .await?;
    let json = |v: serde_json::Result<serde_json::Value>| v.unwrap_or(serde_json::Value::Null);
    let stored: Vec<(String, StoredJob)> = sqlx::query_as::<_, StoredRow>(
        "INSERT INTO scheduled_jobs (
             uid, namespace, name, generation, task_function, task_function_id, task_name,
             job_type_id, schedule_config, schedule_summary, time_zone, start_time, anchor_time,
             args, kwargs, queue, priority, expires_seconds, enabled, suspended, valid,
             concurrency_policy, starting_deadline_seconds, jitter_seconds,
             execution_timeout_seconds, history_limit, description, next_run_at, next_slot_at,
             spec, spec_generation, message_options, health, end_time, max_runs, calendars,
             row_digest)
         SELECT u.uid, u.namespace, u.name, u.generation, u.task_function,
                (SELECT id FROM task_functions WHERE name = u.task_function), u.task_name,
                (SELECT id FROM scheduler_job_types WHERE name = u.job_type), u.schedule_config,
                u.schedule_summary, u.time_zone, u.start_time, u.anchor_time, u.args, u.kwargs,
                u.queue, u.priority, u.expires_seconds, NOT u.suspended, u.suspended, true,
                u.concurrency_policy, u.starting_deadline_seconds, u.jitter_seconds,
                u.execution_timeout_seconds, u.history_limit, u.description, u.next_run_at,
                u.next_slot_at, u.spec, u.generation, u.message_options, u.health, u.end_time,
                u.max_runs, ARRAY(SELECT jsonb_array_elements_text(u.calendars)), u.row_digest
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
                     $7::text[], $8::jsonb[], $9::text[], $10::text[], $11::timestamptz[],
                     $12::timestamptz[], $13::jsonb[], $14::jsonb[], $15::text[], $16::int2[],
                     $17::int8[], $18::bool[], $19::text[], $20::int8[], $21::int8[],
                     $22::int8[], $23::int4[], $24::text[], $25::timestamptz[],
                     $26::timestamptz[], $27::jsonb[], $28::jsonb[], $29::jsonb[],
                     $30::timestamptz[], $31::int8[], $32::jsonb[], $33::bytea[])
              AS u(uid, namespace, name, generation, task_function, task_name, job_type,
                   schedule_config, schedule_summary, time_zone, start_time, anchor_time, args,
                   kwargs, queue, priority, expires_seconds, suspended, concurrency_policy,
                   starting_deadline_seconds, jitter_seconds, execution_timeout_seconds,
                   history_limit, description, next_run_at, next_slot_at, spec,
                   message_options, health, end_time, max_runs, calendars, row_digest)
         ON CONFLICT (uid) DO UPDATE SET
             namespace = EXCLUDED.namespace, name = EXCLUDED.name,
             generation = EXCLUDED.generation, task_function = EXCLUDED.task_function,
             task_function_id = EXCLUDED.task_function_id, task_name = EXCLUDED.task_name,
             job_type_id = EXCLUDED.job_type_id, schedule_config = EXCLUDED.schedule_config,
             schedule_summary = EXCLUDED.schedule_summary, time_zone = EXCLUDED.time_zone,
             start_time = EXCLUDED.start_time, anchor_time = EXCLUDED.anchor_time,
             args = EXCLUDED.args, kwargs = EXCLUDED.kwargs, queue = EXCLUDED.queue,
             priority = EXCLUDED.priority, expires_seconds = EXCLUDED.expires_seconds,
             enabled = EXCLUDED.enabled, suspended = EXCLUDED.suspended, valid = true,
             invalid_reason = NULL, invalid_message = NULL,
             concurrency_policy = EXCLUDED.concurrency_policy,
             starting_deadline_seconds = EXCLUDED.starting_deadline_seconds,
             jitter_seconds = EXCLUDED.jitter_seconds,
             execution_timeout_seconds = EXCLUDED.execution_timeout_seconds,
             history_limit = EXCLUDED.history_limit, description = EXCLUDED.description,
             spec = EXCLUDED.spec, spec_generation = EXCLUDED.spec_generation,
             message_options = EXCLUDED.message_options, health = EXCLUDED.health,
             end_time = EXCLUDED.end_time, max_runs = EXCLUDED.max_runs,
             calendars = EXCLUDED.calendars, row_digest = EXCLUDED.row_digest,
             -- Staleness restarts when the job starts scheduling anew (re-enabled or
             -- rescheduled): the quiet time before was not the schedule's fault.
             health_baseline_at = CASE
                 WHEN EXCLUDED.enabled AND NOT (scheduled_jobs.enabled
                      AND scheduled_jobs.schedule_config = EXCLUDED.schedule_config
                      AND scheduled_jobs.time_zone = EXCLUDED.time_zone
                      AND scheduled_jobs.start_time IS NOT DISTINCT FROM EXCLUDED.start_time
                      AND scheduled_jobs.end_time IS NOT DISTINCT FROM EXCLUDED.end_time
                      AND scheduled_jobs.max_runs IS NOT DISTINCT FROM EXCLUDED.max_runs)
                     THEN now()
                 ELSE scheduled_jobs.health_baseline_at
             END,
             next_run_at = CASE
                 WHEN NOT EXCLUDED.enabled THEN NULL
                 -- maxRuns reached (and not raised): the job stays complete.
                 WHEN scheduled_jobs.scheduled_runs >= EXCLUDED.max_runs THEN NULL
                 WHEN scheduled_jobs.enabled
                      AND scheduled_jobs.schedule_config = EXCLUDED.schedule_config
                      AND scheduled_jobs.time_zone = EXCLUDED.time_zone
                      AND scheduled_jobs.start_time IS NOT DISTINCT FROM EXCLUDED.start_time
                      AND scheduled_jobs.jitter_seconds = EXCLUDED.jitter_seconds
                      AND scheduled_jobs.end_time IS NOT DISTINCT FROM EXCLUDED.end_time
                      AND scheduled_jobs.next_run_at IS NOT NULL
                     THEN scheduled_jobs.next_run_at
                 ELSE EXCLUDED.next_run_at
             END,
             next_slot_at = CASE
                 WHEN NOT EXCLUDED.enabled THEN NULL
                 -- maxRuns reached (and not raised): the job stays complete.
                 WHEN scheduled_jobs.scheduled_runs >= EXCLUDED.max_runs THEN NULL
                 WHEN scheduled_jobs.enabled
                      AND scheduled_jobs.schedule_config = EXCLUDED.schedule_config
                      AND scheduled_jobs.time_zone = EXCLUDED.time_zone
                      AND scheduled_jobs.start_time IS NOT DISTINCT FROM EXCLUDED.start_time
                      AND scheduled_jobs.jitter_seconds = EXCLUDED.jitter_seconds
                      AND scheduled_jobs.end_time IS NOT DISTINCT FROM EXCLUDED.end_time
                      AND scheduled_jobs.next_run_at IS NOT NULL
                     THEN scheduled_jobs.next_slot_at
                 ELSE EXCLUDED.next_slot_at
             END,
             updated_at = now()
         WHERE scheduled_jobs.deleted_at IS NULL
         RETURNING uid, id, enabled, next_run_at, last_trigger",
    )
    .bind(&uids)
    .bind(&namespaces)
    .bind(&names)
    .bind(col(rows, |r| r.generation))
    .bind(col(rows, |r| r.task_function.clone()))
    .bind(col(rows, |r| r.task_name.clone()))
    .bind(col(rows, |r| r.job_type.as_str()))
    .bind(col(rows, |r| r.schedule_config.clone()))
    .bind(col(rows, |r| r.schedule_summary.clone()))
    .bind(col(rows, |r| r.time_zone.clone()))
    .bind(col(rows, |r| r.start_time))
    .bind(col(rows, |r| r.anchor_time))
    .bind(col(rows, |r| r.args.clone()))
    .bind(col(rows, |r| r.kwargs.clone()))
    .bind(col(rows, |r| r.queue.clone()))
    .bind(col(rows, |r| r.priority))
    .bind(col(rows, |r| r.expires_seconds))
    .bind(col(rows, |r| r.suspended))
    .bind(col(rows, |r| policy_str(r.concurrency_policy)))
    .bind(col(rows, |r| r.starting_deadline_seconds))
    .bind(col(rows, |r| r.jitter_seconds))
    .bind(col(rows, |r| r.execution_timeout_seconds))
    .bind(col(rows, |r| r.history_limit))
    .bind(col(rows, |r| r.description.clone()))
    .bind(col(rows, |r| r.next_run_at))
    .bind(col(rows, |r| r.next_slot_at))
    .bind(
        rows.iter()
            .map(|(_, spec)| spec.cloned())
            .collect::<Vec<_>>(),
    )
    .bind(col(rows, |r| {
        json(serde_json::to_value(&r.message_options))
    }))
    .bind(col(rows, |r| json(serde_json::to_value(&r.health))))
    .bind(col(rows, |r| r.end_time))
    .bind(col(rows, |r| r.max_runs))
    .bind(col(rows, |r| json(serde_json::to_value(&r.calendars))))
    .bind(digests)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.uid, r.stored))
    .collect();
    tx.commit().await?;
    Ok(stored)
}

/// One column of `rows`, as the array [`upsert_jobs`] binds for it.
fn col<T>(rows: &[(&JobRow, Option<&serde_json::Value>)], f: impl Fn(&JobRow) -> T) -> Vec<T> {
    rows.iter().map(|(r, _)| f(r)).collect()
}

/// A row of [`upsert_jobs`]'s RETURNING: whose it is, and what is stored.
#[derive(sqlx::FromRow)]
struct StoredRow {
    uid: String,
    #[sqlx(flatten)]
    stored: StoredJob,
}

fn policy_str(p: crate::api::ConcurrencyPolicy) -> &'static str {
    match p {
        crate::api::ConcurrencyPolicy::Allow => "Allow",
        crate::api::ConcurrencyPolicy::Forbid => "Forbid",
        crate::api::ConcurrencyPolicy::Replace => "Replace",
    }
}

/// The spec a live job's row was built from, if it was built from `generation`.
pub async fn stored_spec(
    pool: &PgPool,
    uid: &str,
    generation: i64,
) -> Result<Option<serde_json::Value>, StoreError> {
    let spec: Option<Option<serde_json::Value>> = sqlx::query_scalar(
        "SELECT spec FROM scheduled_jobs
         WHERE uid = $1 AND spec_generation = $2 AND deleted_at IS NULL",
    )
    .bind(uid)
    .bind(generation)
    .fetch_optional(pool)
    .await?;
    Ok(spec.flatten())
}

/// Every live job's uid and the generation stored for it (the reconciler's drift check).
pub async fn stored_generations(
    pool: &PgPool,
) -> Result<std::collections::HashMap<String, i64>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT uid, generation FROM scheduled_jobs WHERE deleted_at IS NULL")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// The uids of the live jobs (in `namespace`, when one is given): the orphan check compares
/// them with the jobs the watch shows.
pub async fn live_uids(pool: &PgPool, namespace: Option<&str>) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT uid FROM scheduled_jobs
         WHERE deleted_at IS NULL AND ($1::text IS NULL OR namespace = $1)",
    )
    .bind(namespace)
    .fetch_all(pool)
    .await?)
}

/// (uid, namespace, name) of these live jobs.
pub async fn live_names(
    pool: &PgPool,
    uids: &[String],
) -> Result<Vec<(String, String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT uid, namespace, name FROM scheduled_jobs
         WHERE uid = ANY($1) AND deleted_at IS NULL",
    )
    .bind(uids)
    .fetch_all(pool)
    .await?)
}

/// Stop an invalid job until it is fixed. Its last valid configuration stays as it was (nothing
/// half-written); only the flags change. Returns whether a row existed.
pub async fn disable_invalid_job(
    pool: &PgPool,
    uid: &str,
    generation: i64,
    reason: &str,
    message: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE scheduled_jobs SET enabled = false, valid = false, invalid_reason = $3,
                invalid_message = $4, next_run_at = NULL, next_slot_at = NULL, generation = $2,
                updated_at = now()
         WHERE uid = $1 AND deleted_at IS NULL",
    )
    .bind(uid)
    .bind(generation)
    .bind(reason)
    .bind(message)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The ScheduledJob is being deleted: stop scheduling now, keep the row and its executions
/// (soft delete) until retention prunes them.
pub async fn mark_job_deleted(pool: &PgPool, uid: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE scheduled_jobs SET deleted_at = now(), enabled = false, next_run_at = NULL,
                next_slot_at = NULL, updated_at = now()
         WHERE uid = $1 AND deleted_at IS NULL",
    )
    .bind(uid)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};
    use serde_json::json;

    use super::row_digest;
    use crate::reconcile::validate::{self, JobMeta, JobRow, TaskFunctionRef};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn row(now: DateTime<Utc>) -> JobRow {
        let tf = serde_json::from_value(json!({"task": "app.sync", "queue": "q"})).expect("tf");
        let tf = validate::task_function("sync", &tf).expect("valid tf");
        let spec = serde_json::from_value(json!({
            "taskFunction": "sync", "schedule": {"cron": "*/5 * * * *"},
            "endTime": "2030-01-01T00:00:00Z", "maxRuns": 9,
        }))
        .expect("spec");
        let meta = JobMeta {
            uid: "uid-1",
            namespace: "team-a",
            name: "sync",
            generation: 2,
            created: at("2026-01-01T00:00:00Z"),
            trigger: None,
        };
        validate::scheduled_job(&meta, &spec, TaskFunctionRef::Valid(&tf), now).expect("valid")
    }

    /// One edit of a stored column.
    type Change = fn(&mut JobRow);

    #[test]
    fn the_digest_ignores_the_next_run_and_sees_every_stored_column() {
        let t0 = at("2026-01-01T00:12:00Z");
        let base = row(t0);
        let later = row(t0 + Duration::minutes(30));
        assert_ne!(base.next_run_at, later.next_run_at);
        let digest = row_digest(&base, None);
        assert_eq!(
            digest,
            row_digest(&later, None),
            "a later reconcile, same row"
        );
        assert_eq!(digest.len(), 32);
        let spec = json!({"taskFunction": "sync"});
        assert_ne!(digest, row_digest(&base, Some(&spec)), "the stored spec");
        let changes: Vec<(&str, Change)> = vec![
            ("uid", |r| r.uid.push('x')),
            ("namespace", |r| r.namespace.push('x')),
            ("name", |r| r.name.push('x')),
            ("generation", |r| r.generation += 1),
            ("task_function", |r| r.task_function.push('x')),
            ("task_name", |r| r.task_name.push('x')),
            ("job_type", |r| {
                r.job_type = crate::schedule::JobType::Interval
            }),
            ("schedule_config", |r| r.schedule_config = json!({"x": 1})),
            ("schedule_summary", |r| r.schedule_summary.push('x')),
            ("time_zone", |r| r.time_zone = "Europe/Paris".into()),
            ("start_time", |r| {
                r.start_time = Some(at("2026-02-01T00:00:00Z"))
            }),
            ("anchor_time", |r| r.anchor_time += Duration::seconds(1)),
            ("args", |r| r.args = json!([1])),
            ("kwargs", |r| r.kwargs = json!({"a": 1})),
            ("queue", |r| r.queue.push('x')),
            ("priority", |r| r.priority = Some(3)),
            ("expires_seconds", |r| r.expires_seconds = Some(60)),
            ("suspended", |r| r.suspended = !r.suspended),
            ("concurrency_policy", |r| {
                r.concurrency_policy = crate::api::ConcurrencyPolicy::Replace
            }),
            ("starting_deadline_seconds", |r| {
                r.starting_deadline_seconds = Some(7)
            }),
            ("jitter_seconds", |r| r.jitter_seconds += 1),
            ("execution_timeout_seconds", |r| {
                r.execution_timeout_seconds += 1
            }),
            ("history_limit", |r| r.history_limit += 1),
            ("description", |r| r.description = Some("d".into())),
            ("message_options", |r| {
                r.message_options.routing_key = Some("rk".into())
            }),
            ("health", |r| r.health.max_consecutive_failures = Some(4)),
            ("end_time", |r| r.end_time = None),
            ("max_runs", |r| r.max_runs = None),
            ("calendars", |r| r.calendars.push("holidays".into())),
        ];
        // Key order is not content: a spec read back from Postgres' jsonb (keys by length)
        // digests as the same spec from the apiserver (keys sorted).
        let sorted = json!({"a_long_key": 1, "b": {"zz": 1, "y": [{"bb": 1, "a": 2}]}});
        let jsonb: serde_json::Value =
            serde_json::from_str(r#"{"b": {"y": [{"a": 2, "bb": 1}], "zz": 1}, "a_long_key": 1}"#)
                .expect("json");
        assert_eq!(
            row_digest(&base, Some(&sorted)),
            row_digest(&base, Some(&jsonb))
        );
        let mut reordered = base.clone();
        reordered.kwargs = json!({"dry_run": false, "batch_size": 10});
        let mut other_order = base.clone();
        other_order.kwargs =
            serde_json::from_str(r#"{"batch_size": 10, "dry_run": false}"#).expect("json");
        assert_eq!(row_digest(&reordered, None), row_digest(&other_order, None));
        for (field, change) in changes {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(
                digest,
                row_digest(&changed, None),
                "{field} not in the digest"
            );
        }
    }
}
