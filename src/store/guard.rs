//! What the worker-side guard (python/kube_beat_celery, its Postgres store) recorded in
//! `guard_claims`: read, never written, by kube-beat (each run's `duplicates_suppressed` is read
//! with the run in `views`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;

/// Deliveries the guard skipped, summed over the claims that had one since `since` (the
/// partial index on `last_duplicate_at` keeps this to those claims).
pub async fn duplicates_since(pool: &PgPool, since: DateTime<Utc>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(sum(duplicates), 0)::bigint FROM guard_claims
         WHERE last_duplicate_at IS NOT NULL AND last_duplicate_at >= $1",
    )
    .bind(since)
    .fetch_one(pool)
    .await?)
}
