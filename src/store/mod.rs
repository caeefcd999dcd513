//! Postgres: the scheduler's working state. Every write here is idempotent and keyed by the
//! Kubernetes object's identity, so replays and concurrent replicas converge.

pub mod arguments;
pub mod backfills;
pub mod calendars;
pub mod claims;
pub mod foreign;
pub mod guard;
pub mod health;
pub mod jobs;
pub mod leader;
pub mod migrate;
pub mod outbox;
pub mod queues;
pub mod replicas;
pub mod retention;
pub mod revoke;
pub mod status;
pub mod task_functions;
pub mod tracking;
pub mod views;

use std::time::Duration;

use std::str::FromStr;

use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

// The reconciler and the API call these by their old paths.
pub use jobs::{
    StoredJob, disable_invalid_job, mark_job_deleted, stored_generations, stored_spec, upsert_jobs,
};
pub use retention::{Pruned, prune_deleted_jobs, prune_history, prune_history_since};
pub use task_functions::{delete_task_function, upsert_task_function};

/// SQL, for readers of status and history: a run claimed ahead (see `dispatch::LOOKAHEAD`) is
/// not the last run before its time. `visible_run_sql!()` is true for an execution row that is
/// due (unqualified columns of `job_executions`); `last_run_sql!()` is the last run of the job
/// aliased `j` as of now.
macro_rules! visible_run_sql {
    () => {
        "(publish_after IS NULL OR publish_after <= now())"
    };
}
macro_rules! last_run_sql {
    () => {
        "CASE WHEN j.last_run_at > now() THEN
              (SELECT max(x.scheduled_for) FROM job_executions x
               WHERE x.job_id = j.id AND x.scheduled_for <= now())
              ELSE j.last_run_at END"
    };
}
pub(crate) use {last_run_sql, visible_run_sql};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connecting to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl {
        url: crate::redact::RedactedUrl,
        reason: String,
    },
    #[error("Postgres query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A connection pool with timeouts suited to an operator: fail fast, retry from the caller.
///
/// `idle_in_transaction_session_timeout`: a leader paused (SIGSTOP, VM freeze) in the middle of a
/// claim transaction would otherwise hold its lock on the fencing row until it wakes up, and the
/// next leader's epoch bump would wait for it. Postgres ends such a session after 5 s (claims take
/// milliseconds), which also rolls back whatever the paused leader had not committed.
///
/// `plan_cache_mode = force_custom_plan`: every statement is planned for the table as it is now.
/// A generic plan is cached per connection after five runs and replaced only when the table is
/// analyzed; one cached while `scheduled_jobs` was nearly empty (a seq scan) stayed in use as the
/// table grew, and without autovacuum (this machine's Postgres) each reconcile read the whole
/// table: 100,000 jobs reconciled at 47/s after 20,000, 10,000 at 135/s. Planning these short
/// statements costs well under a millisecond.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = connect_options(url)?;
    match pool_options(max_connections)
        .connect_with(options.clone())
        .await
    {
        Ok(pool) => Ok(pool),
        // The pool reports only that no connection came within its acquire timeout. One direct
        // attempt says why (refused, name not found, TLS, authentication): that is what a failed
        // migration hook Job shows in its Pod status, and what the operator logs while retrying.
        // Bounded: a host that drops packets would otherwise hold it for the OS's TCP timeout.
        Err(sqlx::Error::PoolTimedOut) => Err(StoreError::Connect(
            match tokio::time::timeout(Duration::from_secs(10), options.connect()).await {
                Ok(Err(cause)) => cause,
                Ok(Ok(_)) | Err(_) => sqlx::Error::PoolTimedOut,
            },
        )),
        Err(e) => Err(StoreError::Connect(e)),
    }
}

/// Whether the Postgres server vacuums on its own (`autovacuum`). Every run rewrites its job's
/// row and its own a few times; without autovacuum nothing reclaims the old versions, the tables
/// grow without end and every read slows (the 100,000-job sustained run, docs/capacity.md).
pub async fn autovacuum_on(pool: &PgPool) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT current_setting('autovacuum')::boolean")
            .fetch_one(pool)
            .await?,
    )
}

/// A second, small pool that keeps `connections` open (connecting in the background): the
/// dispatcher's own, so that a new leader's first claims and publishes never queue for a
/// connection behind its re-reconcile of every job (64 reconciles at once on a 10-connection
/// pool held a just-elected leader's first publish for over 300 ms in a rolling update), nor
/// behind API requests.
pub fn dedicated(url: &str, connections: u32) -> Result<PgPool, StoreError> {
    Ok(pool_options(connections)
        .min_connections(connections)
        .connect_lazy_with(connect_options(url)?))
}

/// Parse a connection URL without connecting: a URL that cannot work is an error at start, not
/// a connection retried forever. sqlx's parse errors are fixed phrases, never the URL.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    connect_options(url)
        .map(drop)
        .map_err(|e| StoreError::InvalidUrl {
            url: crate::redact::url(url),
            reason: e.to_string(),
        })
}

fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(StoreError::Connect)?
        .options([
            ("idle_in_transaction_session_timeout", "5000"),
            ("lock_timeout", "10000"),
            ("plan_cache_mode", "force_custom_plan"),
        ]))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(300))
}
