//! `scheduler_replicas`: which kube-beat processes are alive (shown by the API and the
//! dashboard), each recording itself every few seconds.

use sqlx::PgPool;

/// Record that replica `identity` (running `version`) is alive now.
pub async fn heartbeat(pool: &PgPool, identity: &str, version: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scheduler_replicas (identity, version) VALUES ($1, $2)
         ON CONFLICT (identity) DO UPDATE SET last_seen = now(), version = $2",
    )
    .bind(identity)
    .bind(version)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forget replicas not seen for a day (gone without removing themselves: SIGKILL, node loss).
pub async fn forget_stale(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM scheduler_replicas WHERE last_seen < now() - interval '1 day'")
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// A replica that stops removes itself.
pub async fn remove(pool: &PgPool, identity: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM scheduler_replicas WHERE identity = $1")
        .bind(identity)
        .execute(pool)
        .await?;
    Ok(())
}
