//! The reversible migrations in `migrations/`, embedded in the binary.
//!
//! sqlx takes a Postgres advisory lock around `run` and `undo`, so replicas that start together
//! (or a Helm hook racing a pod) apply each migration once.

use sqlx::{
    Acquire, PgPool,
    migrate::{Migrate, Migrator},
};

use super::StoreError;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Apply every pending migration.
pub async fn up(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Revert the newest `steps` applied migrations.
pub async fn down(pool: &PgPool, steps: usize) -> Result<Vec<i64>, StoreError> {
    let applied = applied_versions(pool).await?;
    let keep = applied.len().saturating_sub(steps);
    let target = if keep == 0 { 0 } else { applied[keep - 1] };
    MIGRATOR.undo(pool, target).await?;
    Ok(applied[keep..].to_vec())
}

/// Each known migration and whether it is applied.
pub async fn status(pool: &PgPool) -> Result<Vec<(i64, String, bool)>, StoreError> {
    let applied = applied_versions(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| {
            (
                m.version,
                m.description.to_string(),
                applied.contains(&m.version),
            )
        })
        .collect())
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    let mut conn = pool.acquire().await?;
    let conn = conn.acquire().await?;
    conn.ensure_migrations_table("_sqlx_migrations").await?;
    let mut versions: Vec<i64> = conn
        .list_applied_migrations("_sqlx_migrations")
        .await?
        .into_iter()
        .map(|m| m.version)
        .collect();
    versions.sort_unstable();
    Ok(versions)
}
