//! Reading Celery's result backend: Redis (`celery-task-meta-<id>` keys) or the database
//! backend in Postgres (`celery_taskmeta`). Batched: one round trip per batch of task ids.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use sqlx::{PgPool, postgres::PgPoolOptions};

use super::decode::{self, Meta};
use crate::redact::{self, RedactedUrl};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "unsupported result backend (expected redis://, rediss://, db+postgresql://... or none): {0}"
    )]
    Url(RedactedUrl),
    #[error("invalid result backend {url}: {reason}")]
    InvalidUrl { url: RedactedUrl, reason: String },
    #[error("redis result backend: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database result backend: {0}")]
    Db(#[from] sqlx::Error),
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
}

impl std::fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendUrl::None => f.write_str("None"),
            BackendUrl::Redis(u) => f.debug_tuple("Redis").field(&redact::url(u)).finish(),
            BackendUrl::Postgres(u) => f.debug_tuple("Postgres").field(&redact::url(u)).finish(),
        }
    }
}

impl BackendUrl {
    /// Parsed as the client libraries will, without connecting: a URL that cannot work is an
    /// error at start, not a connection retried forever.
    pub fn parse(url: Option<&str>) -> Result<BackendUrl, BackendError> {
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
    Redis(ConnectionManager),
    Postgres(PgPool),
}

impl Backend {
    pub async fn connect(url: &BackendUrl) -> Result<Backend, BackendError> {
        Ok(match url {
            BackendUrl::None => Backend::None,
            BackendUrl::Redis(u) => {
                let client = redis::Client::open(u.as_str())?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(std::time::Duration::from_secs(5)))
                    .set_connection_timeout(Some(std::time::Duration::from_secs(5)));
                Backend::Redis(ConnectionManager::new_with_config(client, cfg).await?)
            }
            BackendUrl::Postgres(u) => Backend::Postgres(
                PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .connect(u)
                    .await?,
            ),
        })
    }

    pub fn tracks(&self) -> bool {
        !matches!(self, Backend::None)
    }

    /// The records of these task ids; ids without one (PENDING, or unknown) are absent.
    /// A record that cannot be read is logged and treated as absent.
    pub async fn fetch(&self, task_ids: &[String]) -> Result<HashMap<String, Meta>, BackendError> {
        let mut found = HashMap::new();
        if task_ids.is_empty() {
            return Ok(found);
        }
        match self {
            Backend::None => {}
            Backend::Redis(conn) => {
                let keys: Vec<String> = task_ids
                    .iter()
                    .map(|id| format!("celery-task-meta-{id}"))
                    .collect();
                let mut conn = conn.clone();
                let values: Vec<Option<Vec<u8>>> =
                    redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
                for (id, value) in task_ids.iter().zip(values) {
                    let Some(bytes) = value else { continue };
                    match decode::redis_meta(&bytes) {
                        Ok(meta) => {
                            found.insert(id.clone(), meta);
                        }
                        Err(e) => {
                            tracing::warn!(task_id = %id, error = %e, "unreadable result record")
                        }
                    }
                }
            }
            Backend::Postgres(pool) => {
                type Row = (
                    String,
                    Option<String>,
                    Option<Vec<u8>>,
                    Option<String>,
                    Option<chrono::NaiveDateTime>,
                );
                let rows: Vec<Row> = match sqlx::query_as(
                    "SELECT task_id, status, result, traceback, date_done
                     FROM celery_taskmeta WHERE task_id = ANY($1)",
                )
                .bind(task_ids)
                .fetch_all(pool)
                .await
                {
                    Ok(rows) => rows,
                    // Celery creates its tables on first use: until then everything is pending.
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                        Vec::new()
                    }
                    Err(e) => return Err(e.into()),
                };
                for (task_id, status, result, traceback, date_done) in rows {
                    let Some(status) = status else { continue };
                    found.insert(
                        task_id,
                        Meta {
                            status,
                            result: result
                                .as_deref()
                                .map(decode::db_result)
                                .filter(|v| !v.is_null()),
                            traceback,
                            // Naive UTC in this table.
                            date_done: date_done
                                .map(|d| DateTime::<Utc>::from_naive_utc_and_offset(d, Utc)),
                        },
                    );
                }
            }
        }
        Ok(found)
    }
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
        assert!(BackendUrl::parse(Some("db+mysql://h/db")).is_err());
        assert!(BackendUrl::parse(Some("rpc://")).is_err());
    }

    #[test]
    fn backend_urls_shown_without_their_password() {
        for (bad, shown) in [
            (
                "rpc://u:s3cr3t@127.0.0.1/",
                "unsupported result backend (expected redis://, rediss://, db+postgresql://... or none): rpc://u:***@127.0.0.1/",
            ),
            (
                "db+mysql://u:s3cr3t@127.0.0.1/db",
                "unsupported result backend (expected redis://, rediss://, db+postgresql://... or none): db+mysql://u:***@127.0.0.1/db",
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
}
