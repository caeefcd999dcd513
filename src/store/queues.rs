//! The Celery queues the jobs use (for the queue-depth metric).

use sqlx::PgPool;

/// The distinct queues of live jobs, by name, at most `limit` (a bounded label set).
pub async fn job_queues(pool: &PgPool, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT queue FROM scheduled_jobs WHERE deleted_at IS NULL ORDER BY queue LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
