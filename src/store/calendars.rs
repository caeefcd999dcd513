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

/// The calendar is being deleted: the jobs naming it skip their slots from the next claim on
/// (`Calendar: <name>: calendar not found`) until they are reconciled as `CalendarNotFound`.
pub async fn delete_calendar(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM schedule_calendars WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}
