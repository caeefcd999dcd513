//! Read-only queries against other schedulers' databases (`kube-beat import --from
//! django-celery-beat|apscheduler`). One connection, one `READ ONLY` transaction with a
//! statement timeout, rolled back at the end: an import never writes to, nor holds locks for
//! long on, the scheduler it migrates from. Rows are capped (`limit`) and so is every
//! free-form field (`max_field`): a longer value comes back cut to `max_field + 1` characters,
//! which the reader reports as too large instead of converting.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};

/// How long one query may run in the source database.
const STATEMENT_TIMEOUT_MS: u32 = 15_000;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ForeignError {
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl {
        url: crate::redact::RedactedUrl,
        reason: String,
    },
    #[error("connecting to {url}: {cause}")]
    Connect {
        url: crate::redact::RedactedUrl,
        cause: String,
    },
    #[error("reading {url}: {cause}")]
    Query {
        url: crate::redact::RedactedUrl,
        cause: String,
    },
    #[error("table name {0:?} is not a plain (optionally schema-qualified) SQL identifier")]
    BadTable(String),
}

/// One django-celery-beat `PeriodicTask` with its schedule (django-celery-beat 2.x tables).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DjangoPeriodicTask {
    pub id: i32,
    pub name: String,
    pub task: String,
    pub args: String,
    pub kwargs: String,
    pub queue: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub expires: Option<DateTime<Utc>>,
    pub expire_seconds: Option<i32>,
    pub enabled: bool,
    pub one_off: bool,
    pub start_time: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub priority: Option<i32>,
    pub headers: String,
    pub description: String,
    pub interval_every: Option<i32>,
    pub interval_period: Option<String>,
    pub cron_minute: Option<String>,
    pub cron_hour: Option<String>,
    pub cron_day_of_week: Option<String>,
    pub cron_day_of_month: Option<String>,
    pub cron_month_of_year: Option<String>,
    pub cron_timezone: Option<String>,
    pub clocked_time: Option<DateTime<Utc>>,
    pub solar_event: Option<String>,
}

/// One APScheduler SQLAlchemy job store row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ApschedulerRow {
    pub id: String,
    pub next_run_time: Option<f64>,
    /// `None` when the pickle is larger than the cap (`state_len` says how large).
    pub job_state: Option<Vec<u8>>,
    pub state_len: i32,
}

/// Rows read, and whether there were more than the cap.
#[derive(Debug, Clone)]
pub struct Rows<T> {
    pub rows: Vec<T>,
    pub truncated: bool,
}

async fn read_only<T, F>(url: &str, query: F) -> Result<T, ForeignError>
where
    F: for<'c> FnOnce(
        &'c mut sqlx::PgConnection,
    ) -> futures::future::BoxFuture<'c, Result<T, sqlx::Error>>,
{
    let redacted = || crate::redact::url(url);
    let options = PgConnectOptions::from_str(url).map_err(|e| ForeignError::InvalidUrl {
        url: redacted(),
        reason: e.to_string(),
    })?;
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(ForeignError::Connect {
                url: redacted(),
                cause: e.to_string(),
            });
        }
        Err(_) => {
            return Err(ForeignError::Connect {
                url: redacted(),
                cause: format!("no connection within {CONNECT_TIMEOUT:?}"),
            });
        }
    };
    let result = async {
        let mut tx = conn.begin().await?;
        sqlx::query("SET TRANSACTION READ ONLY")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(STATEMENT_TIMEOUT_MS.to_string())
            .execute(&mut *tx)
            .await?;
        let out = query(&mut tx).await?;
        tx.rollback().await?;
        Ok::<T, sqlx::Error>(out)
    }
    .await;
    let _ = conn.close().await;
    result.map_err(|e| ForeignError::Query {
        url: redacted(),
        cause: e.to_string(),
    })
}

/// django-celery-beat's periodic tasks with their schedules, in id order, at most `limit`.
pub async fn django_periodic_tasks(
    url: &str,
    limit: i64,
    max_field: i32,
) -> Result<Rows<DjangoPeriodicTask>, ForeignError> {
    let mut rows: Vec<DjangoPeriodicTask> = read_only(url, move |c| {
        Box::pin(async move {
            sqlx::query_as(
                "SELECT t.id, t.name, t.task,
                        left(t.args, $2 + 1) AS args, left(t.kwargs, $2 + 1) AS kwargs,
                        t.queue, t.exchange, t.routing_key, t.expires, t.expire_seconds,
                        t.enabled, t.one_off, t.start_time, t.last_run_at, t.priority,
                        left(t.headers, $2 + 1) AS headers,
                        left(t.description, $2 + 1) AS description,
                        i.every AS interval_every, i.period AS interval_period,
                        c.minute AS cron_minute, c.hour AS cron_hour,
                        c.day_of_week AS cron_day_of_week, c.day_of_month AS cron_day_of_month,
                        c.month_of_year AS cron_month_of_year, c.timezone AS cron_timezone,
                        k.clocked_time, s.event AS solar_event
                 FROM django_celery_beat_periodictask t
                 LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id
                 LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id
                 LEFT JOIN django_celery_beat_clockedschedule k ON k.id = t.clocked_id
                 LEFT JOIN django_celery_beat_solarschedule s ON s.id = t.solar_id
                 ORDER BY t.id
                 LIMIT $1",
            )
            .bind(limit.saturating_add(1))
            .bind(max_field)
            .fetch_all(&mut *c)
            .await
        })
    })
    .await?;
    let truncated = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(Rows { rows, truncated })
}

/// APScheduler's job rows from `table` (`apscheduler_jobs`, or `schema.table`), in id order, at
/// most `limit`; a `job_state` longer than `max_state` bytes is not fetched.
pub async fn apscheduler_jobs(
    url: &str,
    table: &str,
    limit: i64,
    max_state: i32,
) -> Result<Rows<ApschedulerRow>, ForeignError> {
    let table = quoted_table(table)?;
    let sql = format!(
        "SELECT id::text AS id, next_run_time::float8 AS next_run_time,
                CASE WHEN octet_length(job_state) <= $2 THEN job_state END AS job_state,
                octet_length(job_state) AS state_len
         FROM {table} ORDER BY id LIMIT $1"
    );
    let mut rows: Vec<ApschedulerRow> = read_only(url, move |c| {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(limit.saturating_add(1))
                .bind(max_state)
                .fetch_all(&mut *c)
                .await
        })
    })
    .await?;
    let truncated = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(Rows { rows, truncated })
}

/// `name` or `schema.name`, each part an identifier of letters, digits and `_` (what
/// SQLAlchemyJobStore's `tablename`/`tableschema` are in practice), double-quoted.
fn quoted_table(table: &str) -> Result<String, ForeignError> {
    let parts: Vec<&str> = table.split('.').collect();
    let ok = !table.is_empty()
        && table.len() <= 127
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !p.starts_with(|c: char| c.is_ascii_digit())
        });
    if !ok {
        return Err(ForeignError::BadTable(table.chars().take(130).collect()));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers() {
        assert_eq!(
            quoted_table("apscheduler_jobs").unwrap(),
            "\"apscheduler_jobs\""
        );
        assert_eq!(quoted_table("app.jobs_2").unwrap(), "\"app\".\"jobs_2\"");
        for bad in ["", "a;drop", "a.b.c", "1abc", "a\"b", "a b"] {
            assert!(quoted_table(bad).is_err(), "{bad}");
        }
    }
}
