//! `--from redbeat REDIS_URL`: RedBeat's entries, the hashes at `<prefix><name>` (default prefix
//! `redbeat:`), each with a `definition` (JSON: name, task, schedule, args, kwargs, options,
//! enabled; schedules and datetimes encoded by RedBeat's JSON encoder as
//! `{"__type__": "crontab" | "interval" | "rrule" | "solar" | "datetime", ...}`) and a `meta`
//! (`last_run_at`, `total_run_count`). RedBeat's own keys (`<prefix>:schedule`, `:statics`,
//! `:lock`) are skipped. Read only, bounded: at most [`MAX_ENTRIES`] keys, each field at most
//! [`MAX_FIELD_BYTES`], every round trip within [`TIMEOUT`]; the URL is printed redacted only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde_json::{Map, Value};

use super::{
    Candidate, ImportError, ReadOptions,
    celery_schedule::{self, Crontab, Entry, Sched, Source},
};
use crate::redact;

/// Most entries read; more are reported as not converted (import them in parts by prefix).
pub const MAX_ENTRIES: usize = 10_000;
/// Largest `definition` or `meta` read.
pub const MAX_FIELD_BYTES: usize = 1024 * 1024;
/// Bound on connecting and on each command.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn read(
    target: &str,
    opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    let shown = redact::url(target);
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ImportError::source(format!(
            "redbeat at {shown}: {what}: {}",
            scrub(&e.to_string(), target)
        ))
    };
    // redis' URL errors can quote the URL: name only the redacted form.
    let client = redis::Client::open(target)
        .map_err(|_| ImportError::source(format!("redbeat: {shown} is not a valid Redis URL")))?;
    let mut conn = tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| fail("connecting", &"timed out"))?
        .map_err(|e| fail("connecting", &e))?;
    let prefix = &opts.redbeat_key_prefix;
    let own: [String; 3] = [
        format!("{prefix}:schedule"),
        format!("{prefix}:statics"),
        format!("{prefix}:lock"),
    ];
    let pattern = format!("{}*", glob_escape(prefix));
    let mut keys: Vec<String> = Vec::new();
    let mut truncated = false;
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = tokio::time::timeout(
            TIMEOUT,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| fail("SCAN", &"timed out"))?
        .map_err(|e| fail("SCAN", &e))?;
        for k in batch {
            if !own.contains(&k) && !keys.contains(&k) {
                if keys.len() == MAX_ENTRIES {
                    truncated = true;
                    break;
                }
                keys.push(k);
            }
        }
        cursor = next;
        if cursor == 0 || truncated {
            break;
        }
    }
    keys.sort();
    let mut out = Vec::with_capacity(keys.len() + 1);
    let now = Utc::now();
    for key in keys {
        let name = key
            .strip_prefix(prefix.as_str())
            .unwrap_or(&key)
            .to_string();
        out.push(read_entry(&mut conn, &key, &name, now).await);
    }
    if truncated {
        out.push(Err(ImportError::entry(
            format!("{prefix}*"),
            format!(
                "more than {MAX_ENTRIES} entries: only the first {MAX_ENTRIES} (by SCAN order) \
                 were read; import the rest with a narrower --redbeat-key-prefix"
            ),
        )));
    }
    Ok(out)
}

/// An error message with the URL's password masked, should the client library quote it.
fn scrub(msg: &str, target: &str) -> String {
    match url::Url::parse(target)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(pw) if !pw.is_empty() => msg.replace(&pw, "***"),
        _ => msg.to_string(),
    }
}

/// `*`, `?`, `[` and `\` in a prefix are literal characters of the key, not a pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn read_entry(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Candidate, ImportError> {
    let fail = |reason: String| ImportError::entry(name, reason);
    let kind: String = tokio::time::timeout(TIMEOUT, redis::cmd("TYPE").arg(key).query_async(conn))
        .await
        .map_err(|_| fail("TYPE timed out".into()))?
        .map_err(|e| fail(format!("TYPE: {e}")))?;
    if kind != "hash" {
        return Err(fail(format!(
            "{key} is a {kind}, not a RedBeat entry (a hash)"
        )));
    }
    let (dlen, mlen): (usize, usize) = tokio::time::timeout(
        TIMEOUT,
        redis::pipe()
            .cmd("HSTRLEN")
            .arg(key)
            .arg("definition")
            .cmd("HSTRLEN")
            .arg(key)
            .arg("meta")
            .query_async(conn),
    )
    .await
    .map_err(|_| fail("HSTRLEN timed out".into()))?
    .map_err(|e| fail(format!("HSTRLEN: {e}")))?;
    if dlen > MAX_FIELD_BYTES || mlen > MAX_FIELD_BYTES {
        return Err(fail(format!("larger than {MAX_FIELD_BYTES} bytes")));
    }
    let (definition, meta): (Option<String>, Option<String>) =
        tokio::time::timeout(TIMEOUT, conn.hmget(key, &["definition", "meta"]))
            .await
            .map_err(|_| fail("HGET timed out".into()))?
            .map_err(|e| fail(format!("HGET: {e}")))?;
    let definition = definition.ok_or_else(|| fail(format!("{key} has no `definition`")))?;
    let def: Value =
        serde_json::from_str(&definition).map_err(|e| fail(format!("definition: {e}")))?;
    let meta: Value = match meta {
        Some(m) => serde_json::from_str(&m).map_err(|e| fail(format!("meta: {e}")))?,
        None => Value::Null,
    };
    let entry = entry(name, &def, &meta).map_err(fail)?;
    celery_schedule::candidate(Source::RedBeat, entry, now).map_err(fail)
}

/// A decoded entry (RedBeat's `RedBeatJSONDecoder`, as data).
fn entry(name: &str, def: &Value, meta: &Value) -> Result<Entry, String> {
    let task = def["task"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or("the definition has no task")?
        .to_string();
    let s = &def["schedule"];
    let schedule = match s["__type__"].as_str() {
        Some("crontab") => Sched::Crontab(Box::new(Crontab {
            minute: s["minute"].clone(),
            hour: s["hour"].clone(),
            day_of_week: s["day_of_week"].clone(),
            day_of_month: s["day_of_month"].clone(),
            month_of_year: s["month_of_year"].clone(),
        })),
        Some("interval") => Sched::Interval {
            seconds: s["every"].as_f64().ok_or("interval without `every`")?,
            relative: s["relative"].as_bool().unwrap_or(false),
        },
        Some("rrule") => {
            return Err(
                "rrule schedules (RFC 5545 recurrence rules) are not converted: \
                 write the equivalent cron expression by hand"
                    .into(),
            );
        }
        Some("solar") => {
            return Err(
                "solar schedules follow the sun at a place; kube-beat schedules are \
                 cron, interval or one instant"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "schedule type {} is not supported",
                other.unwrap_or("(none)")
            ));
        }
    };
    let last = &meta["last_run_at"];
    let last_run_at = if last.is_null() {
        None
    } else {
        Some(datetime(last).ok_or_else(|| format!("meta.last_run_at: cannot read {last}"))?)
    };
    // RedBeat records no zone for its schedules (the beat app's `timezone` applies); its
    // last_run_at carries the app's zone name when it ran.
    let time_zone = last["timezone"].as_str().map(str::to_string);
    let mut options = def["options"].as_object().cloned().unwrap_or_default();
    if let Some(exp) = options.remove("expires") {
        if exp.is_object() {
            let at = datetime(&exp).ok_or_else(|| format!("options.expires: cannot read {exp}"))?;
            options.insert("expires_at".into(), Value::String(at.to_rfc3339()));
        } else if !exp.is_null() {
            options.insert("expires".into(), exp);
        }
    }
    Ok(Entry {
        name: def["name"].as_str().unwrap_or(name).to_string(),
        task,
        schedule,
        time_zone,
        args: def["args"].clone(),
        kwargs: def["kwargs"].clone(),
        options: Map::from_iter(options),
        enabled: def["enabled"].as_bool().unwrap_or(true),
        last_run_at,
    })
}

/// RedBeat's `{"__type__": "datetime", year, ..., microsecond, timezone}` (a zone name or an
/// offset in seconds).
fn datetime(v: &Value) -> Option<DateTime<Utc>> {
    if v["__type__"] != "datetime" {
        return None;
    }
    let n = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
    celery_schedule::utc_from_parts(
        i32::try_from(v["year"].as_i64()?).ok()?,
        n("month")?,
        n("day")?,
        (n("hour")?, n("minute")?, n("second")?, n("microsecond")?),
        &v["timezone"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_decode() {
        let def = json!({"name": "every-90", "task": "t.x", "args": [1], "kwargs": {},
            "options": {"queue": "q", "expires": {"__type__": "datetime", "year": 2030, "month": 1,
            "day": 1, "hour": 0, "minute": 0, "second": 0, "microsecond": 0, "timezone": "UTC"}},
            "schedule": {"__type__": "interval", "every": 90.0, "relative": false},
            "enabled": false});
        let meta = json!({"last_run_at": {"__type__": "datetime", "year": 2026, "month": 11,
            "day": 30, "hour": 12, "minute": 0, "second": 0, "microsecond": 250000,
            "timezone": "Europe/Berlin"}, "total_run_count": 3});
        let e = entry("every-90", &def, &meta).unwrap();
        assert_eq!(
            e.schedule,
            Sched::Interval {
                seconds: 90.0,
                relative: false
            }
        );
        assert_eq!(e.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(
            e.last_run_at.unwrap().to_rfc3339(),
            "2026-11-30T11:00:00.250+00:00"
        );
        assert!(!e.enabled);
        assert_eq!(e.options["expires_at"], "2030-01-01T00:00:00+00:00");
        let e = entry(
            "n",
            &json!({"task": "t", "schedule": {"__type__": "rrule", "freq": 3}}),
            &Value::Null,
        )
        .unwrap_err();
        assert!(e.contains("rrule"), "{e}");
        let e = entry(
            "n",
            &json!({"task": "t", "schedule": {"__type__": "solar"}}),
            &Value::Null,
        )
        .unwrap_err();
        assert!(e.contains("solar"), "{e}");
        assert!(
            entry("n", &json!({"schedule": {}}), &Value::Null)
                .unwrap_err()
                .contains("task")
        );
        assert_eq!(glob_escape("a*b[c]:"), "a\\*b\\[c\\]:");
    }
}
