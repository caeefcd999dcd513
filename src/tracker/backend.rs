//! Reading Celery's result backend: Redis (`celery-task-meta-<id>` keys; also behind Sentinel
//! and under Celery's `global_keyprefix`), the database backend in Postgres (`celery_taskmeta`)
//! or django-celery-results' table in Postgres (`django_celery_results_taskresult`). Batched: one round trip per batch of task ids (and
//! more only for the rare records larger than [`FIRST_READ_BYTES`]), every record size-capped
//! before it is decoded.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use sqlx::{PgPool, postgres::PgPoolOptions};

use super::decode::{self, Meta};
use crate::{
    redact::{self, RedactedUrl},
    redis_target::{RedisTarget, SharedConn, TargetError, TransportOptions},
    store::{
        StoreError,
        tracking::{self, ResultTable, TaskMetaRow},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "unsupported result backend (expected redis://, rediss://, sentinel://, db+postgresql://..., django-db+postgresql://... or none): {0}"
    )]
    Url(RedactedUrl),
    #[error("invalid result backend {url}: {reason}")]
    InvalidUrl { url: RedactedUrl, reason: String },
    #[error("redis result backend: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database result backend: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database result backend: {0}")]
    Query(#[from] StoreError),
    #[error("redis result backend: unexpected reply: {0}")]
    Reply(String),
    #[error("redis result backend: {0}")]
    Target(#[from] TargetError),
}

/// Where Celery stores results, as named by a Celery `result_backend` URL. Its `Debug` shows the
/// URL redacted.
#[derive(Clone, PartialEq, Eq)]
pub enum BackendUrl {
    /// No backend: states stop at DISPATCHED.
    None,
    Redis(String),
    /// A Postgres URL sqlx understands (the `db+` prefix and SQLAlchemy driver removed).
    Postgres(String),
    /// django-celery-results in Postgres (`django-db+postgresql://...`: the URL of the database
    /// Django's `DATABASES` names, which Celery's `django-db` backend writes to).
    Django(String),
}

impl std::fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendUrl::None => f.write_str("None"),
            BackendUrl::Redis(u) => f.debug_tuple("Redis").field(&redact::url(u)).finish(),
            BackendUrl::Postgres(u) => f.debug_tuple("Postgres").field(&redact::url(u)).finish(),
            BackendUrl::Django(u) => f.debug_tuple("Django").field(&redact::url(u)).finish(),
        }
    }
}

impl BackendUrl {
    /// Parsed as the client libraries will, without connecting: a URL that cannot work is an
    /// error at start, not a connection retried forever.
    pub fn parse(url: Option<&str>) -> Result<BackendUrl, BackendError> {
        BackendUrl::parse_with(url, &TransportOptions::default())
    }

    /// [`BackendUrl::parse`] with Celery's `result_backend_transport_options` (`master_name`
    /// for a `sentinel://` URL).
    pub fn parse_with(
        url: Option<&str>,
        options: &TransportOptions,
    ) -> Result<BackendUrl, BackendError> {
        let url = url.map(str::trim).unwrap_or("");
        if url.is_empty() || url == "none" {
            return Ok(BackendUrl::None);
        }
        // The libraries' parse errors are fixed phrases ("invalid port number"), never the URL.
        let invalid = |reason: String| BackendError::InvalidUrl {
            url: redact::url(url),
            reason,
        };
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            redis::Client::open(url).map_err(|e| invalid(e.to_string()))?;
            return Ok(BackendUrl::Redis(url.to_string()));
        }
        if url.starts_with("sentinel://") {
            RedisTarget::new(url, options)?;
            return Ok(BackendUrl::Redis(url.to_string()));
        }
        if let Some(tail) = url
            .strip_prefix("django-db+postgresql://")
            .or_else(|| url.strip_prefix("django-db+postgres://"))
        {
            let pg = format!("postgresql://{tail}");
            <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&pg)
                .map_err(|e| invalid(e.to_string()))?;
            return Ok(BackendUrl::Django(pg));
        }
        if let Some(rest) = url.strip_prefix("db+")
            && let Some((scheme, tail)) = rest.split_once("://")
        {
            // SQLAlchemy spells the driver into the scheme: postgresql+psycopg2://
            let dialect = scheme.split('+').next().unwrap_or(scheme);
            if dialect == "postgresql" || dialect == "postgres" {
                let pg = format!("postgresql://{tail}");
                <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&pg)
                    .map_err(|e| invalid(e.to_string()))?;
                return Ok(BackendUrl::Postgres(pg));
            }
        }
        Err(BackendError::Url(redact::url(url)))
    }
}

/// A connected result backend.
pub enum Backend {
    None,
    Redis {
        /// Behind a pointer: the Sentinel client inside is large, the other variants are a
        /// pointer. Shared with the result subscription ([`super::hints`]).
        conn: std::sync::Arc<SharedConn>,
        /// Before `celery-task-meta-` (Celery's `global_keyprefix`, as its backend spells it).
        keyprefix: String,
    },
    Postgres(PgPool, ResultTable),
}

impl Backend {
    pub async fn connect(url: &BackendUrl) -> Result<Backend, BackendError> {
        Backend::connect_with(url, &TransportOptions::default()).await
    }

    /// [`Backend::connect`] with Celery's `result_backend_transport_options`.
    pub async fn connect_with(
        url: &BackendUrl,
        options: &TransportOptions,
    ) -> Result<Backend, BackendError> {
        Ok(match url {
            BackendUrl::None => Backend::None,
            BackendUrl::Redis(u) => {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(std::time::Duration::from_secs(5)))
                    .set_connection_timeout(Some(std::time::Duration::from_secs(5)));
                Backend::Redis {
                    conn: std::sync::Arc::new(
                        SharedConn::connect(RedisTarget::new(u, options)?, cfg).await?,
                    ),
                    keyprefix: result_keyprefix(&options.global_keyprefix),
                }
            }
            BackendUrl::Postgres(u) => Backend::Postgres(pg_pool(u).await?, ResultTable::Celery),
            BackendUrl::Django(u) => Backend::Postgres(pg_pool(u).await?, ResultTable::Django),
        })
    }

    pub fn tracks(&self) -> bool {
        !matches!(self, Backend::None)
    }

    /// For a Redis backend, which announces every record it stores: its connection and key
    /// prefix, to subscribe with ([`super::hints::subscribe`]).
    pub fn announcements(&self) -> Option<(std::sync::Arc<SharedConn>, String)> {
        match self {
            Backend::Redis { conn, keyprefix } => Some((conn.clone(), keyprefix.clone())),
            _ => None,
        }
    }

    /// The records of these task ids; ids without one (PENDING, or unknown) are absent.
    /// A record that cannot be read is logged and treated as absent. Records are size-capped
    /// before they are decoded: one round trip reads every record's length and its first
    /// [`FIRST_READ_BYTES`]; the few larger ones within [`decode::RECORD_MAX_BYTES`] are read
    /// in further round trips of at most [`READ_BUDGET_BYTES`]; larger ones are never read whole.
    pub async fn fetch(&self, task_ids: &[String]) -> Result<HashMap<String, Meta>, BackendError> {
        let mut found = HashMap::new();
        if task_ids.is_empty() {
            return Ok(found);
        }
        match self {
            Backend::None => {}
            Backend::Redis { conn, keyprefix } => {
                let mut c = conn.get().await?;
                if let Err(e) = fetch_redis(&mut c, keyprefix, task_ids, &mut found).await {
                    if let BackendError::Redis(r) = &e {
                        conn.failed(r).await;
                    }
                    return Err(e);
                }
            }
            Backend::Postgres(pool, table) => {
                fetch_postgres(pool, *table, task_ids, &mut found).await?
            }
        }
        Ok(found)
    }
}

async fn pg_pool(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
}

/// Celery's result key prefix for a `global_keyprefix`: Celery appends `_` to one that does not
/// end in `:`, `_`, `-` or `.` (`KeyValueStoreBackend._add_global_keyprefix`).
pub fn result_keyprefix(global: &str) -> String {
    match global.chars().last() {
        None => String::new(),
        Some(':' | '_' | '-' | '.') => global.to_string(),
        Some(_) => format!("{global}_"),
    }
}

/// [`Backend::fetch`] from Redis: `<prefix>celery-task-meta-<id>` keys.
async fn fetch_redis(
    conn: &mut ConnectionManager,
    keyprefix: &str,
    task_ids: &[String],
    found: &mut HashMap<String, Meta>,
) -> Result<(), BackendError> {
    let keys: Vec<String> = task_ids
        .iter()
        .map(|id| format!("{keyprefix}celery-task-meta-{id}"))
        .collect();
    let first: Vec<(&str, usize)> = keys
        .iter()
        .map(|k| (k.as_str(), FIRST_READ_BYTES))
        .collect();
    let mut larger = Vec::new();
    for (i, read) in read_redis(conn, &first).await?.into_iter().enumerate() {
        if let Some(len) = keep_redis(found, &task_ids[i], read) {
            larger.push((i, len));
        }
    }
    for group in budget_groups(&larger, READ_BUDGET_BYTES) {
        let reads: Vec<(&str, usize)> = group
            .iter()
            .map(|&(i, len)| (keys[i].as_str(), len))
            .collect();
        let got = read_redis(conn, &reads).await?;
        for (&(i, _), read) in group.iter().zip(got) {
            if keep_redis(found, &task_ids[i], read).is_some() {
                // Rewritten between the two reads (e.g. STARTED, then SUCCESS): the next pass
                // reads it again.
                tracing::debug!(task_id = %task_ids[i], "result record changed while read");
            }
        }
    }
    Ok(())
}

/// [`Backend::fetch`] from Celery's database backend or django-celery-results: the result and
/// traceback only when small, the lengths always; the few larger records in further round trips
/// within the budget.
async fn fetch_postgres(
    pool: &PgPool,
    table: ResultTable,
    task_ids: &[String],
    found: &mut HashMap<String, Meta>,
) -> Result<(), BackendError> {
    let rows = tracking::taskmeta_first(pool, table, task_ids, FIRST_READ_BYTES as i32).await?;
    // (task id, result length, bytes this record costs to read again)
    let mut larger: Vec<(String, Option<usize>, usize)> = Vec::new();
    for row in rows {
        let rb = byte_len(row.result_bytes);
        let tb = byte_len(row.traceback_bytes);
        let result_later =
            rb.is_some_and(|n| n > FIRST_READ_BYTES && n <= decode::RECORD_MAX_BYTES);
        let traceback_later = tb.is_some_and(|n| n > FIRST_READ_BYTES);
        if row.status.is_some() && (result_later || traceback_later) {
            // A traceback is read as its last characters: up to 4 bytes each.
            let cost = if result_later { rb.unwrap_or(0) } else { 0 }
                + if traceback_later {
                    4 * TRACEBACK_READ_CHARS
                } else {
                    0
                };
            larger.push((row.task_id, rb, cost));
            continue;
        }
        keep_db(found, row);
    }
    let costs: Vec<(usize, usize)> = larger.iter().enumerate().map(|(i, l)| (i, l.2)).collect();
    for group in budget_groups(&costs, READ_BUDGET_BYTES) {
        let ids: Vec<&str> = group.iter().map(|&(i, _)| larger[i].0.as_str()).collect();
        // Each result no larger than it was in the first read (if it grew, it is read on the
        // next pass), so a round trip stays within its budget.
        let max: Vec<i32> = group
            .iter()
            .map(|&(i, _)| {
                larger[i]
                    .1
                    .filter(|&n| n <= decode::RECORD_MAX_BYTES)
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or(0)
            })
            .collect();
        let rows =
            tracking::taskmeta_rest(pool, table, &ids, &max, TRACEBACK_READ_CHARS as i32).await?;
        for row in rows {
            let rb = byte_len(row.result_bytes);
            if row.status.is_some()
                && row.result.is_none()
                && rb.is_some_and(|n| n <= decode::RECORD_MAX_BYTES)
            {
                tracing::debug!(task_id = %row.task_id, "result record changed while read");
                continue;
            }
            keep_db(found, row);
        }
    }
    Ok(())
}

fn byte_len(n: Option<i32>) -> Option<usize> {
    n.and_then(|n| usize::try_from(n).ok())
}

/// Decode one `celery_taskmeta` row into `found`; a row without a status is no record yet.
fn keep_db(found: &mut HashMap<String, Meta>, row: TaskMetaRow) {
    let Some(status) = row.status else { return };
    let meta = decode::db_meta(
        status,
        byte_len(row.result_bytes),
        row.result.as_deref(),
        row.traceback.as_deref(),
        row.date_done
            .map(|d| DateTime::<Utc>::from_naive_utc_and_offset(d, Utc)),
    );
    found.insert(row.task_id, meta);
}

/// Bytes of each Redis meta (and of each database result and traceback) read in a batch's
/// first round trip. Nearly every Celery record is smaller, so one round trip reads them all,
/// and a batch of 1,000 holds at most 16 MiB of them however large the values are.
pub const FIRST_READ_BYTES: usize = 16 * 1024;
/// Records larger than [`FIRST_READ_BYTES`] (up to [`decode::RECORD_MAX_BYTES`]) are read in
/// further round trips of at most this many bytes together.
pub const READ_BUDGET_BYTES: usize = 16 * 1024 * 1024;
/// A long database traceback is read as its last this-many characters (its end names the
/// error; one more than is kept, so the stored text says it was cut).
const TRACEBACK_READ_CHARS: usize = decode::TRACEBACK_MAX_BYTES + 1;

/// For each `(key, n)`: its STRLEN and GETRANGE 0 n-1, in one transaction (so the length and the
/// bytes are of the same value) and one round trip. A key that cannot be read (not a string)
/// gives its error alone.
async fn read_redis(
    conn: &mut ConnectionManager,
    reads: &[(&str, usize)],
) -> Result<Vec<Result<(usize, Vec<u8>), String>>, BackendError> {
    let mut pipe = redis::pipe();
    pipe.atomic().ignore_errors();
    for &(key, n) in reads {
        let end = n.max(1) - 1;
        pipe.cmd("STRLEN")
            .arg(key)
            .cmd("GETRANGE")
            .arg(key)
            .arg(0)
            .arg(end);
    }
    let values: Vec<redis::Value> = pipe.query_async(conn).await?;
    if values.len() != reads.len() * 2 {
        return Err(BackendError::Reply(format!(
            "{} replies to {} reads",
            values.len(),
            reads.len()
        )));
    }
    Ok(values
        .chunks_exact(2)
        .map(|pair| {
            let len = redis::from_redis_value_ref::<usize>(&pair[0]).map_err(|e| e.to_string())?;
            let bytes =
                redis::from_redis_value_ref::<Vec<u8>>(&pair[1]).map_err(|e| e.to_string())?;
            Ok((len, bytes))
        })
        .collect())
}

/// Decode one Redis read into `found`; returns the length to read when only a prefix was read.
fn keep_redis(
    found: &mut HashMap<String, Meta>,
    task_id: &str,
    read: Result<(usize, Vec<u8>), String>,
) -> Option<usize> {
    let (len, bytes) = match read {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(task_id = %task_id, error = %e, "unreadable result record");
            return None;
        }
    };
    match decode::redis_read(len, &bytes) {
        decode::RedisRead::Absent => None,
        decode::RedisRead::Record(Ok(meta)) => {
            found.insert(task_id.to_string(), meta);
            None
        }
        decode::RedisRead::Record(Err(e)) => {
            tracing::warn!(task_id = %task_id, error = %e, "unreadable result record");
            None
        }
        decode::RedisRead::Partial { len } => Some(len),
    }
}

/// Split `(index, cost)` items, in order, into groups whose costs add up to at most `budget`
/// (an item costlier than the budget alone in its group).
fn budget_groups(items: &[(usize, usize)], budget: usize) -> Vec<Vec<(usize, usize)>> {
    let mut groups: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut sum = 0usize;
    for &item in items {
        match groups.last_mut() {
            Some(g) if !g.is_empty() && sum.saturating_add(item.1) <= budget => {
                sum = sum.saturating_add(item.1);
                g.push(item);
            }
            _ => {
                sum = item.1;
                groups.push(vec![item]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_celery_spells_them() {
        assert_eq!(BackendUrl::parse(None).unwrap(), BackendUrl::None);
        assert_eq!(BackendUrl::parse(Some("none")).unwrap(), BackendUrl::None);
        assert_eq!(
            BackendUrl::parse(Some("redis://127.0.0.1:6379/1")).unwrap(),
            BackendUrl::Redis("redis://127.0.0.1:6379/1".into())
        );
        assert_eq!(
            BackendUrl::parse(Some("db+postgresql+psycopg2://u:p@h:5432/db")).unwrap(),
            BackendUrl::Postgres("postgresql://u:p@h:5432/db".into())
        );
        assert_eq!(
            BackendUrl::parse(Some("db+postgresql://h/db")).unwrap(),
            BackendUrl::Postgres("postgresql://h/db".into())
        );
        assert_eq!(
            BackendUrl::parse(Some("django-db+postgresql://u:p@h:5432/db")).unwrap(),
            BackendUrl::Django("postgresql://u:p@h:5432/db".into())
        );
        assert!(BackendUrl::parse(Some("django-db")).is_err());
        assert!(BackendUrl::parse(Some("sentinel://127.0.0.1:26379")).is_err());
        let master = TransportOptions {
            master_name: Some("mymaster".into()),
            ..Default::default()
        };
        assert_eq!(
            BackendUrl::parse_with(Some("sentinel://127.0.0.1:26379/1"), &master).unwrap(),
            BackendUrl::Redis("sentinel://127.0.0.1:26379/1".into())
        );
        assert!(BackendUrl::parse(Some("db+mysql://h/db")).is_err());
        assert!(BackendUrl::parse(Some("rpc://")).is_err());
    }

    #[test]
    fn result_key_prefix_as_celery_spells_it() {
        assert_eq!(result_keyprefix(""), "");
        assert_eq!(result_keyprefix("x:"), "x:");
        assert_eq!(result_keyprefix("app."), "app.");
        assert_eq!(result_keyprefix("app-"), "app-");
        assert_eq!(result_keyprefix("app_"), "app_");
        assert_eq!(result_keyprefix("app"), "app_");
    }

    #[test]
    fn backend_urls_shown_without_their_password() {
        for (bad, shown) in [
            (
                "rpc://u:s3cr3t@127.0.0.1/",
                "unsupported result backend (expected redis://, rediss://, sentinel://, db+postgresql://..., django-db+postgresql://... or none): rpc://u:***@127.0.0.1/",
            ),
            (
                "db+mysql://u:s3cr3t@127.0.0.1/db",
                "unsupported result backend (expected redis://, rediss://, sentinel://, db+postgresql://..., django-db+postgresql://... or none): db+mysql://u:***@127.0.0.1/db",
            ),
            (
                "db+postgresql://u:s3cr3t/x@127.0.0.1/db",
                "invalid result backend <unparseable URL: invalid port number>: ",
            ),
            (
                "redis://:s3cr3t@127.0.0.1/zero",
                "invalid result backend redis://:***@127.0.0.1/zero: ",
            ),
        ] {
            // Our words exactly; the library's reason after them without the password.
            let e = BackendUrl::parse(Some(bad)).expect_err(bad).to_string();
            assert!(e.starts_with(shown), "{bad}: {e}");
            assert!(!e.contains("s3cr3t"), "{bad}: {e}");
        }
        let ok = BackendUrl::parse(Some("redis://:s3cr3t@127.0.0.1/1")).unwrap();
        assert_eq!(format!("{ok:?}"), r#"Redis("redis://:***@127.0.0.1/1")"#);
    }

    #[test]
    fn larger_reads_are_grouped_within_the_budget() {
        let items = [(0, 6), (1, 5), (2, 20), (3, 1), (4, 9), (5, 1)];
        let groups = budget_groups(&items, 10);
        let ids: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.iter().map(|&(i, _)| i).collect())
            .collect();
        // In order; one over the budget alone; none over it otherwise.
        assert_eq!(ids, vec![vec![0], vec![1], vec![2], vec![3, 4], vec![5]]);
        for g in &groups {
            assert!(g.len() == 1 || g.iter().map(|&(_, c)| c).sum::<usize>() <= 10);
        }
        assert!(budget_groups(&[], 10).is_empty());
    }
}
