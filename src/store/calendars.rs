//! `schedule_calendars`: one row per ScheduleCalendar (cluster-scoped: its name is its
//! identity). The claim reads them with each due job (`claims::ClaimTx::due_jobs`), so a
//! changed calendar applies to the next claim of every job that names it.

use sqlx::PgPool;

use super::StoreError;

/// Insert or update a calendar's row. An invalid calendar is stored too (`valid = false`): the
/// dispatcher skips the slots of jobs naming it rather than running them as if it did not
/// exclude anything.
pub async fn upsert_calendar(
    pool: &PgPool,
    name: &str,
    uid: &str,
    generation: i64,
    spec: &serde_json::Value,
    invalid_message: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO schedule_calendars (name, uid, generation, spec, valid, invalid_message)
         VALUES ($1, $2, $3, $4, $5 IS NULL, $5)
         ON CONFLICT (name) DO UPDATE SET
             uid = EXCLUDED.uid, generation = EXCLUDED.generation, spec = EXCLUDED.spec,
             valid = EXCLUDED.valid, invalid_message = EXCLUDED.invalid_message,
             updated_at = now()",
    )
    .bind(name)
    .bind(uid)
    .bind(generation)
    .bind(spec)
    .bind(invalid_message)
    .execute(pool)
    .await?;
    Ok(())
}

/// Store the calendars a job names that have no row yet (`(name, uid, generation, spec)`),
/// leaving existing rows alone: a job reconciled (and stored) before the calendar controller
/// stored its calendar must not have its first slots skipped as "calendar not found".
pub async fn insert_missing(
    pool: &PgPool,
    rows: &[(String, String, i64, serde_json::Value)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let uids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let generations: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let specs: Vec<&serde_json::Value> = rows.iter().map(|r| &r.3).collect();
    sqlx::query(
        "INSERT INTO schedule_calendars (name, uid, generation, spec, valid)
         SELECT u.name, u.uid, u.generation, u.spec, true
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::jsonb[]) AS u(name, uid, generation, spec)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&names)
    .bind(&uids)
    .bind(&generations)
    .bind(&specs)
    .execute(pool)
    .await?;
    Ok(())
}

/// The calendar is being deleted: the jobs naming it skip their slots from the next claim on
/// (`Calendar: <name>: calendar not found`) until they are reconciled as `CalendarNotFound`.
pub async fn delete_calendar(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM schedule_calendars WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}
