//! `--from apscheduler DATABASE_URL`: APScheduler 3's SQLAlchemy job store (`apscheduler_jobs`:
//! `id`, `next_run_time`, `job_state`). `job_state` is a pickle of `Job.__getstate__()`; it is
//! decoded as data only ([`crate::tracker::pickle::data`]): nothing is imported or executed, the
//! trigger object, datetimes and time zones are read as records of their class and state.
//!
//! Mapping (see docs/migration.md, "From APScheduler"):
//! - the job's callable reference `module:callable` → the Celery task `module.callable` (the
//!   source ran the callable in-process; kube-beat sends a Celery task of that name, which a
//!   worker must register);
//! - `IntervalTrigger` → `schedule.interval`, `startTime` = `start_date − interval` (APScheduler
//!   fires at `start_date` itself, kube-beat one interval after `startTime`);
//! - `CronTrigger` → a 5-field `schedule.cron` in the trigger's time zone, each field written as
//!   the exact set of values APScheduler matches (its day_of_week counts Monday = 0). Refused:
//!   a non-zero or non-single `second`, a restricted `year` or `week`, `last`/`1st fri`-style
//!   day expressions, both day and day_of_week restricted (APScheduler requires both, cron
//!   either); `start_date` → `startTime`;
//! - `DateTrigger` → `schedule.at`; other triggers (and/or combinations, calendar intervals)
//!   are refused;
//! - `end_date`: kube-beat has no end time. Already past: imported suspended; in the future:
//!   converted, with a difference (suspend or delete the job then);
//! - `misfire_grace_time` → `startingDeadlineSeconds`; `coalesce = false` is a difference
//!   (kube-beat always coalesces missed slots); `max_instances` 1 → `concurrencyPolicy:
//!   Forbid`, more → `Allow` with a difference; `jitter` → `jitterSeconds` (deterministic in
//!   kube-beat, random in APScheduler: a difference); a paused job (`next_run_time` NULL) →
//!   `suspend: true`; `args`/`kwargs` must be JSON data.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::{Candidate, Difference, ImportError, ReadOptions, cron_fields};
use crate::store::foreign::{self, ApschedulerRow};
use crate::tracker::pickle::{Budget, data::Data};

/// At most this many jobs are read; more is an error (nothing written).
pub const MAX_ROWS: i64 = 10_000;
/// A `job_state` larger than this is refused (not fetched).
pub const MAX_STATE_BYTES: i32 = 1024 * 1024;
/// What one job state may decode to.
const BUDGET: Budget = Budget {
    depth: 64,
    values: 100_000,
    bytes: 4 * 1024 * 1024,
};

pub async fn read(
    target: &str,
    opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    let rows =
        foreign::apscheduler_jobs(target, &opts.apscheduler_table, MAX_ROWS, MAX_STATE_BYTES)
            .await
            .map_err(|e| ImportError::source(e.to_string()))?;
    if rows.truncated {
        return Err(ImportError::source(format!(
            "more than {MAX_ROWS} jobs: kube-beat import reads at most {MAX_ROWS}"
        )));
    }
    let now = Utc::now();
    Ok(rows.rows.iter().map(|r| convert_row(r, now)).collect())
}

/// One job store row as a candidate.
pub fn convert_row(row: &ApschedulerRow, now: DateTime<Utc>) -> Result<Candidate, ImportError> {
    let fail = |reason: String| ImportError::entry(row.id.clone(), reason);
    let Some(bytes) = &row.job_state else {
        return Err(fail(format!(
            "job_state of {} bytes is larger than {MAX_STATE_BYTES}",
            row.state_len
        )));
    };
    let state = crate::tracker::pickle::data::decode(bytes, BUDGET)
        .map_err(|e| fail(format!("job_state: pickle {e}")))?;
    convert(&row.id, &state, row.next_run_time.is_none(), now).map_err(fail)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A job's state (`Job.__getstate__()`) as a candidate named `id`.
pub fn convert(
    id: &str,
    state: &Data,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<Candidate, String> {
    let func = state
        .get("func")
        .and_then(Data::as_str)
        .ok_or("job_state has no callable reference (`func`)")?;
    let (module, callable) = func
        .split_once(':')
        .ok_or_else(|| format!("callable reference {func:?} is not `module:callable`"))?;
    let task = format!("{module}.{callable}");
    let mut spec = Map::new();
    let mut differences = vec![Difference::new(
        "in-process-callable",
        "APScheduler called the function in its own process; kube-beat sends a Celery task \
         named `module.callable`, which a Celery worker must register (e.g. \
         `@app.task(name=...)` around the same function)",
    )];
    let trigger = state.get("trigger").ok_or("job_state has no trigger")?;
    let class = trigger.class_path().unwrap_or_default();
    let tstate = match trigger {
        Data::Object { state, .. } => state.as_ref(),
        _ => return Err(format!("trigger is not an object ({class})")),
    };
    let tz = match tstate.get("timezone") {
        Some(z) => Some(zone_name(z)?),
        None => None,
    };
    let mut end = None;
    match class.as_str() {
        "apscheduler.triggers.interval.IntervalTrigger" => {
            let seconds = tstate
                .get("interval")
                .map(timedelta_seconds)
                .transpose()?
                .ok_or("interval trigger without an interval")?;
            if seconds.fract() != 0.0 || seconds < 1.0 {
                return Err(format!(
                    "interval of {seconds} s: kube-beat intervals are whole seconds, at least 1"
                ));
            }
            let seconds = seconds as i64;
            let start = tstate
                .get("start_date")
                .map(datetime)
                .transpose()?
                .flatten();
            if let Some(start) = start {
                spec.insert(
                    "startTime".into(),
                    json!(rfc3339(start - Duration::seconds(seconds))),
                );
            }
            end = tstate.get("end_date").map(datetime).transpose()?.flatten();
            spec.insert(
                "schedule".into(),
                json!({"interval": {
                    "hours": seconds / 3600, "minutes": seconds % 3600 / 60,
                    "seconds": seconds % 60,
                }}),
            );
        }
        "apscheduler.triggers.cron.CronTrigger" => {
            let cron = cron_expression(tstate)?;
            spec.insert("schedule".into(), json!({"cron": cron}));
            if let Some(tz) = &tz {
                spec.insert("timeZone".into(), json!(tz));
            }
            if let Some(start) = tstate
                .get("start_date")
                .map(datetime)
                .transpose()?
                .flatten()
            {
                spec.insert("startTime".into(), json!(rfc3339(start)));
            }
            end = tstate.get("end_date").map(datetime).transpose()?.flatten();
        }
        "apscheduler.triggers.date.DateTrigger" => {
            let at = tstate
                .get("run_date")
                .map(datetime)
                .transpose()?
                .flatten()
                .ok_or("date trigger without a run_date")?;
            spec.insert("schedule".into(), json!({"at": rfc3339(at)}));
        }
        other => {
            return Err(format!(
                "trigger {other}: only interval, cron and date triggers are converted"
            ));
        }
    }
    if let Some(jitter) = tstate.get("jitter").and_then(number).filter(|j| *j > 0.0) {
        spec.insert("jitterSeconds".into(), json!(jitter.ceil() as i64));
        differences.push(Difference::new(
            "jitter-deterministic",
            "APScheduler delays each run by a random amount up to `jitter`; kube-beat by a \
             deterministic one in [0, jitterSeconds), derived from the job and the slot",
        ));
    }
    let mut suspend = paused;
    if let Some(end) = end {
        if end <= now {
            suspend = true;
            differences.push(Difference::new(
                "ended",
                "the trigger's end_date is past: APScheduler no longer runs the job, so it is \
                 imported suspended",
            ));
        } else {
            differences.push(Difference::new(
                "end-date",
                "the trigger has an end_date; kube-beat has no end time: suspend or delete the \
                 job at that instant",
            ));
        }
    }
    if suspend {
        spec.insert("suspend".into(), json!(true));
    }
    if let Some(args) = state.get("args") {
        let v = to_json(args)?;
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            spec.insert("args".into(), v);
        }
    }
    if let Some(kwargs) = state.get("kwargs") {
        let v = to_json(kwargs)?;
        if v.as_object().is_some_and(|o| !o.is_empty()) {
            spec.insert("kwargs".into(), v);
        }
    }
    if let Some(grace) = state.get("misfire_grace_time").and_then(number) {
        spec.insert("startingDeadlineSeconds".into(), json!(grace.ceil() as i64));
    }
    if state.get("coalesce") == Some(&Data::Bool(false)) {
        differences.push(Difference::new(
            "coalesce",
            "coalesce is off in APScheduler (every missed run is run); kube-beat always \
             coalesces missed slots into one run",
        ));
    }
    match state.get("max_instances").and_then(Data::as_i64) {
        Some(1) => {
            spec.insert("concurrencyPolicy".into(), json!("Forbid"));
        }
        Some(n) if n > 1 => {
            spec.insert("concurrencyPolicy".into(), json!("Allow"));
            differences.push(Difference::new(
                "max-instances",
                "max_instances above 1: kube-beat allows any number of overlapping runs \
                 (concurrencyPolicy Allow), it has no per-job limit",
            ));
        }
        _ => {}
    }
    if let Some(name) = state
        .get("name")
        .and_then(Data::as_str)
        .filter(|n| *n != id && *n != callable)
    {
        spec.insert(
            "description".into(),
            json!(name.chars().take(1024).collect::<String>()),
        );
    }
    Ok(Candidate {
        name: id.to_string(),
        task,
        spec,
        differences,
    })
}

fn number(d: &Data) -> Option<f64> {
    match d {
        Data::Int(i) => Some(*i as f64),
        Data::Float(f) => Some(*f),
        _ => None,
    }
}

/// Plain data as JSON (what a Celery task's arguments can be).
fn to_json(d: &Data) -> Result<Value, String> {
    Ok(match d {
        Data::None => Value::Null,
        Data::Bool(b) => json!(b),
        Data::Int(i) => json!(i),
        Data::Float(f) => json!(f),
        Data::Str(s) => json!(s),
        Data::Tuple(v) | Data::List(v) => {
            Value::Array(v.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Data::Dict(items) => {
            let mut m = Map::new();
            for (k, v) in items {
                let k = k
                    .as_str()
                    .ok_or("argument dict with a non-string key is not JSON")?;
                m.insert(k.to_string(), to_json(v)?);
            }
            Value::Object(m)
        }
        other => {
            return Err(format!(
                "argument {} is not JSON data (Celery's JSON serializer cannot send it)",
                other.class_path().unwrap_or_else(|| "of this type".into())
            ));
        }
    })
}

/// The IANA name of a pickled time zone: `zoneinfo.ZoneInfo`, pytz, or a whole-hour
/// `datetime.timezone` offset (as `Etc/GMT±N`).
fn zone_name(z: &Data) -> Result<String, String> {
    let Data::Reduce { callable, args } = z else {
        return Err("time zone is not a zoneinfo, pytz or datetime.timezone value".into());
    };
    let args = args.items().unwrap_or_default();
    let path = callable.class_path().unwrap_or_default();
    // ZoneInfo pickles as getattr(ZoneInfo, "_unpickle")(key, from_cache).
    let zoneinfo = match callable.as_ref() {
        Data::Reduce {
            callable: g,
            args: a,
        } => {
            g.class_path().as_deref() == Some("builtins.getattr")
                && a.items()
                    .and_then(|a| a.first())
                    .and_then(Data::class_path)
                    .as_deref()
                    == Some("zoneinfo.ZoneInfo")
        }
        _ => false,
    };
    if zoneinfo || path == "pytz._p" || path == "pytz._UTC" {
        if path == "pytz._UTC" {
            return Ok("UTC".into());
        }
        return args
            .first()
            .and_then(Data::as_str)
            .map(str::to_string)
            .ok_or_else(|| "time zone without a key".into());
    }
    if path == "datetime.timezone" {
        let offset = args
            .first()
            .map(timedelta_seconds)
            .transpose()?
            .ok_or("datetime.timezone without an offset")?;
        if offset == 0.0 {
            return Ok("UTC".into());
        }
        if offset % 3600.0 == 0.0 && offset.abs() <= 14.0 * 3600.0 {
            // POSIX sign: Etc/GMT-1 is UTC+1.
            let h = -(offset / 3600.0) as i64;
            return Ok(format!("Etc/GMT{h:+}"));
        }
        return Err(format!(
            "fixed UTC offset of {offset} s: only whole hours map to an IANA zone"
        ));
    }
    Err(format!(
        "time zone {path}: not a zoneinfo, pytz or datetime.timezone value"
    ))
}

/// `datetime.timedelta(days, seconds, microseconds)` in seconds.
fn timedelta_seconds(d: &Data) -> Result<f64, String> {
    match d {
        Data::Reduce { callable, args }
            if callable.class_path().as_deref() == Some("datetime.timedelta") =>
        {
            let a = args.items().unwrap_or_default();
            let part = |i: usize| a.get(i).and_then(Data::as_i64).unwrap_or(0) as f64;
            Ok(part(0) * 86_400.0 + part(1) + part(2) / 1e6)
        }
        _ => Err("expected a datetime.timedelta".into()),
    }
}

/// A pickled `datetime.datetime` (`None` for Python's None), as UTC.
fn datetime(d: &Data) -> Result<Option<DateTime<Utc>>, String> {
    let (callable, args) = match d {
        Data::None => return Ok(None),
        Data::Reduce { callable, args } => (callable, args),
        _ => return Err("expected a datetime".into()),
    };
    if callable.class_path().as_deref() != Some("datetime.datetime") {
        return Err("expected a datetime.datetime".into());
    }
    let a = args.items().unwrap_or_default();
    let Some(Data::Bytes(b)) = a.first() else {
        return Err("datetime without its 10-byte state".into());
    };
    if b.len() != 10 {
        return Err("datetime state is not 10 bytes".into());
    }
    let year = i32::from(b[0]) * 256 + i32::from(b[1]);
    let fold = b[2] & 0x80 != 0;
    let (month, day) = (u32::from(b[2] & 0x7f), u32::from(b[3]));
    let micros = (u32::from(b[7]) << 16) | (u32::from(b[8]) << 8) | u32::from(b[9]);
    let local = NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|d| {
            d.and_hms_micro_opt(u32::from(b[4]), u32::from(b[5]), u32::from(b[6]), micros)
        })
        .ok_or("invalid datetime")?;
    let Some(tz) = a.get(1) else {
        return Err("naive datetime (no time zone)".into());
    };
    // pytz: the datetime carries its zone's offset at that instant as `_p` arguments.
    if let Data::Reduce { callable, args } = tz {
        if callable.class_path().as_deref() == Some("pytz._p") {
            let off = args
                .items()
                .and_then(|a| a.get(1))
                .and_then(Data::as_i64)
                .ok_or("pytz zone without its offset")?;
            return Ok(Some((local - Duration::seconds(off)).and_utc()));
        }
        if callable.class_path().as_deref() == Some("datetime.timezone") {
            let off = args
                .items()
                .and_then(|a| a.first())
                .map(timedelta_seconds)
                .transpose()?
                .unwrap_or(0.0);
            return Ok(Some((local - Duration::seconds(off as i64)).and_utc()));
        }
    }
    let name = zone_name(tz)?;
    let zone: chrono_tz::Tz = name
        .parse()
        .map_err(|_| format!("unknown time zone {name:?}"))?;
    match zone.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Ok(Some(t.with_timezone(&Utc))),
        chrono::LocalResult::Ambiguous(first, second) => {
            Ok(Some(if fold { second } else { first }.with_timezone(&Utc)))
        }
        // In a gap, Python (fold = 0) uses the offset from before the gap.
        chrono::LocalResult::None => {
            let before = zone
                .from_local_datetime(&(local - Duration::hours(3)))
                .earliest()
                .ok_or("datetime in a time zone gap")?;
            let offset = before.naive_local() - before.naive_utc();
            Ok(Some((local - offset).and_utc()))
        }
    }
}

/// The five cron fields from a CronTrigger's state (`fields`: year, month, day, week,
/// day_of_week, hour, minute, second).
fn cron_expression(tstate: &Data) -> Result<String, String> {
    let fields = tstate
        .get("fields")
        .and_then(Data::items)
        .ok_or("cron trigger without fields")?;
    let mut sets: std::collections::BTreeMap<String, (bool, BTreeSet<u32>)> = Default::default();
    for f in fields {
        let Data::Object { state, .. } = f else {
            return Err("cron field is not an object".into());
        };
        let name = state
            .get("name")
            .and_then(Data::as_str)
            .ok_or("cron field without a name")?
            .to_string();
        let is_default = state.get("is_default") == Some(&Data::Bool(true));
        let exprs = state
            .get("expressions")
            .and_then(Data::items)
            .ok_or("cron field without expressions")?;
        let (min, max) = match name.as_str() {
            "year" | "week" => {
                if is_default {
                    continue;
                }
                return Err(format!(
                    "cron field `{name}` is set: kube-beat's cron has no {name} field"
                ));
            }
            "month" => (1, 12),
            "day" => (1, 31),
            "day_of_week" => (0, 6),
            "hour" => (0, 23),
            "minute" | "second" => (0, 59),
            other => return Err(format!("unknown cron field {other:?}")),
        };
        let mut set = BTreeSet::new();
        for e in exprs {
            let class = e.class_path().unwrap_or_default();
            let Data::Object { state: es, .. } = e else {
                return Err(format!("cron expression {class} is not an object"));
            };
            let int = |k: &str| es.get(k).and_then(Data::as_i64);
            let step = int("step").unwrap_or(1).max(1) as u32;
            let (first, last) = match class.rsplit('.').next().unwrap_or_default() {
                "AllExpression" => (min, max),
                "RangeExpression" | "WeekdayRangeExpression" | "MonthRangeExpression" => {
                    let first = int("first").ok_or("range without a first value")?;
                    let last = match int("last") {
                        Some(l) => l,
                        None if int("step").is_some() => i64::from(max),
                        None => first,
                    };
                    (
                        u32::try_from(first).map_err(|_| "negative cron value")?,
                        u32::try_from(last).map_err(|_| "negative cron value")?,
                    )
                }
                other => {
                    return Err(format!(
                        "cron field `{name}` uses {other} (`last`, `1st fri`, ...): not \
                         expressible in a 5-field cron"
                    ));
                }
            };
            if first < min || last > max || first > last {
                return Err(format!("cron field `{name}`: range {first}-{last} invalid"));
            }
            set.extend((first..=last).step_by(step as usize));
        }
        sets.insert(name, (is_default, set));
    }
    match sets.get("second") {
        Some((_, s)) if s.len() == 1 && s.contains(&0) => {}
        None => {}
        Some(_) => {
            return Err(
                "cron `second` other than 0: kube-beat's cron has minute resolution".into(),
            );
        }
    }
    let get = |n: &str| sets.get(n).map(|(_, s)| s.clone());
    let full = |n: &str, lo: u32, hi: u32| get(n).is_none_or(|s| (lo..=hi).all(|v| s.contains(&v)));
    if !full("day", 1, 31) && !full("day_of_week", 0, 6) {
        return Err(
            "cron restricts both day and day_of_week: APScheduler runs only on days matching \
             both, a 5-field cron on days matching either"
                .into(),
        );
    }
    // APScheduler's weekdays count Monday = 0; cron's Sunday = 0.
    let dow: Option<BTreeSet<u32>> =
        get("day_of_week").map(|s| s.iter().map(|d| (d + 1) % 7).collect());
    let mut out = Vec::new();
    for (field, set) in [
        (cron_fields::MINUTE, get("minute")),
        (cron_fields::HOUR, get("hour")),
        (cron_fields::DAY_OF_MONTH, get("day")),
        (cron_fields::MONTH, get("month")),
        (cron_fields::DAY_OF_WEEK, dow),
    ] {
        let set = set.unwrap_or_else(|| (field.min..=field.max).collect());
        out.push(
            cron_fields::render(field, &set)
                .ok_or_else(|| format!("cron {} matches nothing", field.name))?,
        );
    }
    Ok(out.join(" "))
}

#[cfg(test)]
mod tests;
