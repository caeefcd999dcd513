//! `--from celery-beat MODULE|PATH`: a Celery app's `beat_schedule`.
//!
//! A small Python helper ([`HELPER`]) runs with the user's own Python (`--python`), imports the
//! module as `celery beat` would (its top-level code runs; no task is sent or called) and prints
//! the schedule as JSON read through Celery's own schedule objects. The run is bounded in time
//! and output; what the entries mean in kube-beat's terms is decided here, in
//! [`super::celery_schedule`].

use std::{process::Stdio, time::Duration};

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use super::{
    Candidate, ImportError, ReadOptions,
    celery_schedule::{self, Crontab, Entry, Sched, Source},
};

/// The helper script, run as `python -c HELPER TARGET`.
pub const HELPER: &str = include_str!("celery_beat.py");

/// The helper is killed after this long (importing a project can be slow, not this slow).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Most output read from the helper (a schedule of thousands of entries fits).
const MAX_OUTPUT: u64 = 16 * 1024 * 1024;
/// How much of the helper's standard error an error message quotes (its tail: the traceback's
/// last lines say what failed).
const STDERR_TAIL: usize = 2000;

#[derive(Deserialize)]
struct Output {
    timezone: Option<String>,
    entries: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    name: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    task: String,
    #[serde(default)]
    schedule: Value,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    kwargs: Value,
    #[serde(default)]
    options: Map<String, Value>,
}

pub async fn read(
    target: &str,
    opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    let out = run_helper(target, &opts.python).await?;
    let parsed: Output = serde_json::from_slice(&out)
        .map_err(|e| ImportError::source(format!("the celery-beat helper's output: {e}")))?;
    let now = Utc::now();
    Ok(parsed
        .entries
        .into_iter()
        .map(|raw| convert(raw, parsed.timezone.as_deref(), now))
        .collect())
}

fn convert(
    raw: RawEntry,
    app_tz: Option<&str>,
    now: chrono::DateTime<Utc>,
) -> Result<Candidate, ImportError> {
    let name = raw.name.clone();
    let fail = |reason: String| ImportError::entry(name.clone(), reason);
    if let Some(e) = raw.error {
        return Err(fail(e));
    }
    let s = &raw.schedule;
    let schedule = match s["type"].as_str() {
        Some("crontab") => Sched::Crontab(Box::new(Crontab {
            minute: s["minute"].clone(),
            hour: s["hour"].clone(),
            day_of_week: s["day_of_week"].clone(),
            day_of_month: s["day_of_month"].clone(),
            month_of_year: s["month_of_year"].clone(),
        })),
        Some("interval") => Sched::Interval {
            seconds: s["seconds"].as_f64().unwrap_or(f64::NAN),
            relative: s["relative"].as_bool().unwrap_or(false),
        },
        Some("solar") => {
            return Err(fail(format!(
                "solar schedules ({}) follow the sun at a place; kube-beat schedules are cron, \
                 interval or one instant",
                s["event"].as_str().unwrap_or("?")
            )));
        }
        _ => {
            return Err(fail(format!(
                "schedule type {} is not supported (only crontab and schedule/timedelta)",
                s["type_name"].as_str().unwrap_or("?")
            )));
        }
    };
    let time_zone = raw.timezone.or_else(|| app_tz.map(str::to_string));
    let entry = Entry {
        name: raw.name,
        task: raw.task,
        schedule,
        time_zone,
        args: raw.args,
        kwargs: raw.kwargs,
        options: raw.options,
        enabled: true,
        last_run_at: None,
    };
    celery_schedule::candidate(Source::CeleryBeat, entry, now).map_err(fail)
}

/// Run the helper: its standard output, or an error quoting the tail of its standard error.
async fn run_helper(target: &str, python: &str) -> Result<Vec<u8>, ImportError> {
    let mut child = tokio::process::Command::new(python)
        .arg("-c")
        .arg(HELPER)
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ImportError::source(format!("running {python}: {e}")))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ImportError::source("the helper's output pipes are missing"));
    };
    let work = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (mut stdout, mut stderr) = (stdout.take(MAX_OUTPUT + 1), stderr.take(MAX_OUTPUT));
        let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        a.and(b)?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(TIMEOUT, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(ImportError::source(format!("running the helper: {e}"))),
        // Dropping the future drops the child: kill_on_drop ends it.
        Err(_) => {
            return Err(ImportError::source(format!(
                "importing {target} took longer than {} s (killed)",
                TIMEOUT.as_secs()
            )));
        }
    };
    if !status.success() {
        let text = String::from_utf8_lossy(&err);
        let tail: String = {
            let chars: Vec<char> = text.trim_end().chars().collect();
            chars[chars.len().saturating_sub(STDERR_TAIL)..]
                .iter()
                .collect()
        };
        return Err(ImportError::source(format!(
            "cannot read the beat schedule of {target} with {python} ({status}):\n{tail}"
        )));
    }
    if out.len() as u64 > MAX_OUTPUT {
        return Err(ImportError::source(format!(
            "the helper's output exceeds {MAX_OUTPUT} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: Value) -> RawEntry {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn helper_output_converts() {
        let now = Utc::now();
        let c = convert(
            raw(
                json!({"name": "n", "task": "t", "schedule": {"type": "crontab", "minute": "0",
                "hour": "3", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"},
                "timezone": null, "args": [], "kwargs": {"a": 1}, "options": {}}),
            ),
            Some("America/New_York"),
            now,
        )
        .unwrap();
        assert_eq!(c.spec["schedule"], json!({"cron": "0 3 * * *"}));
        assert_eq!(c.spec["timeZone"], "America/New_York");
        assert_eq!(c.spec["kwargs"], json!({"a": 1}));
        assert!(c.spec.get("args").is_none());
        let e = convert(
            raw(json!({"name": "sun", "task": "t", "schedule": {"type": "solar", "event": "sunrise"}})),
            None,
            now,
        )
        .unwrap_err();
        assert!(e.reason.contains("solar schedules (sunrise)"), "{e}");
        let e = convert(
            raw(json!({"name": "x", "task": "t", "schedule": {"type": "other", "type_name": "my.sched"}})),
            None,
            now,
        )
        .unwrap_err();
        assert!(e.reason.contains("my.sched"), "{e}");
        let e = convert(
            raw(json!({"name": "y", "error": "ValueError: no task name"})),
            None,
            now,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "y: ValueError: no task name");
    }
}
