//! The fencing row (`scheduler_leader`, one row, `id = 1`): its epoch rises with every leader
//! acquisition, and every claim transaction checks it, so a deposed leader that wakes up late
//! cannot claim.

use sqlx::PgPool;

/// Bump the fencing epoch for a new leader `holder` and return the new epoch; every later claim
/// by an older leader fails.
pub async fn bump_epoch(pool: &PgPool, holder: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE scheduler_leader SET epoch = epoch + 1, holder = $1, acquired_at = now(), renewed_at = now()
         WHERE id = 1 RETURNING epoch",
    )
    .bind(holder)
    .fetch_one(pool)
    .await
}
