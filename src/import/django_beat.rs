//! `--from django-celery-beat DATABASE_URL`: django-celery-beat's tables (2.x schema:
//! `django_celery_beat_periodictask` and its interval, crontab, clocked and solar schedules),
//! read in one read-only transaction ([`crate::store::foreign`]).
//!
//! Mapping (see docs/migration.md, "From django-celery-beat"):
//! - interval `every` × `period` → `schedule.interval` (days as hours; microseconds only in
//!   whole seconds). django-celery-beat runs an interval task `every` after its *last run*; the
//!   grid kube-beat keeps is anchored at `startTime`: `start_time − every` when the task has a
//!   `start_time` (its first run is then at `start_time`, as in the source), else the task's
//!   `last_run_at` (the next run is where the source would run it), else none (one interval
//!   after the job is stored).
//! - crontab → `schedule.cron` in the crontab's `timezone`, each field rewritten from Celery's
//!   syntax as the exact set of values it matches. Celery requires day-of-month AND day-of-week
//!   to match; a 5-field cron ORs them when both are restricted, so such an entry is refused.
//! - clocked → `schedule.at`; solar → refused (kube-beat has no sunrise/sunset schedule).
//! - `enabled = false` → `suspend: true`; `one_off` with a clocked schedule is what `at` does;
//!   `one_off` with a recurring schedule is refused (no run-once-then-stop for them).
//! - `expires` (an absolute instant after which the source stops scheduling the task, also sent
//!   as each message's expiry): kube-beat has no end time. Already past: `suspend: true`. In the
//!   future: converted, reported as a difference (suspend or delete the job at that instant).
//!   `expire_seconds` → `expiresSeconds`.
//! - `queue`, `exchange`, `routing_key`, `priority`, `headers`, `args`, `kwargs`,
//!   `description` → the fields of the same meaning.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::{Candidate, Difference, ImportError, ReadOptions, cron_fields};
use crate::store::foreign::{self, DjangoPeriodicTask};

/// At most this many periodic tasks are read; more is an error (nothing written).
pub const MAX_ROWS: i64 = 10_000;
/// `args`, `kwargs`, `headers` and `description` longer than this are refused.
pub const MAX_FIELD: i32 = 65_536;
/// kube-beat's `description` limit.
const MAX_DESCRIPTION: usize = 1024;

pub async fn read(
    target: &str,
    _opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    let rows = foreign::django_periodic_tasks(target, MAX_ROWS, MAX_FIELD)
        .await
        .map_err(|e| ImportError::source(e.to_string()))?;
    if rows.truncated {
        return Err(ImportError::source(format!(
            "more than {MAX_ROWS} periodic tasks: kube-beat import reads at most {MAX_ROWS}"
        )));
    }
    let now = Utc::now();
    Ok(rows.rows.iter().map(|r| convert(r, now)).collect())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn json_field(name: &str, what: &str, text: &str) -> Result<Option<Value>, String> {
    if text.chars().count() > MAX_FIELD as usize {
        return Err(format!("{what} longer than {MAX_FIELD} characters"));
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| format!("{what} of {name:?} is not JSON: {e}"))
}

/// One periodic task as a candidate, or why it cannot be one.
pub fn convert(r: &DjangoPeriodicTask, now: DateTime<Utc>) -> Result<Candidate, ImportError> {
    let fail = |reason: String| ImportError::entry(r.name.clone(), reason);
    let mut spec = Map::new();
    let mut differences = Vec::new();
    let schedule = if let (Some(every), Some(period)) = (r.interval_every, &r.interval_period) {
        if r.one_off {
            return Err(fail(
                "one_off with an interval schedule: kube-beat has no run-once-then-stop for \
                 recurring schedules (use an `at` schedule)"
                    .into(),
            ));
        }
        let every = i64::from(every);
        let seconds = match period.as_str() {
            "days" => every * 86_400,
            "hours" => every * 3_600,
            "minutes" => every * 60,
            "seconds" => every,
            "microseconds" if every % 1_000_000 == 0 => every / 1_000_000,
            "microseconds" => {
                return Err(fail(format!(
                    "interval of {every} microseconds: kube-beat intervals are whole seconds"
                )));
            }
            other => return Err(fail(format!("unknown interval period {other:?}"))),
        };
        if seconds < 1 {
            return Err(fail(format!("interval of {every} {period}: at least 1 s")));
        }
        let anchor = match (r.start_time, r.last_run_at) {
            (Some(start), _) => Some(start - chrono::Duration::seconds(seconds)),
            (None, Some(last)) => Some(last),
            (None, None) => None,
        };
        if let Some(a) = anchor {
            spec.insert("startTime".into(), json!(rfc3339(a)));
        }
        differences.push(Difference::new(
            "interval-fixed-grid",
            "django-celery-beat runs an interval task `every` after its last actual run (a late \
             run shifts every later one); kube-beat keeps a fixed grid, anchored so the first run \
             is where django-celery-beat would run it next",
        ));
        json!({"interval": {
            "hours": seconds / 3600, "minutes": seconds % 3600 / 60, "seconds": seconds % 60,
        }})
    } else if let Some(minute) = &r.cron_minute {
        if r.one_off {
            return Err(fail(
                "one_off with a crontab schedule: kube-beat has no run-once-then-stop for \
                 recurring schedules (use an `at` schedule)"
                    .into(),
            ));
        }
        let field = |f: cron_fields::Field, text: &Option<String>| {
            cron_fields::parse_celery(f, text.as_deref().unwrap_or("*"))
                .map_err(|e| fail(format!("crontab: {e}")))
        };
        let sets: [(cron_fields::Field, BTreeSet<u32>); 5] = [
            (
                cron_fields::MINUTE,
                field(cron_fields::MINUTE, &Some(minute.clone()))?,
            ),
            (cron_fields::HOUR, field(cron_fields::HOUR, &r.cron_hour)?),
            (
                cron_fields::DAY_OF_MONTH,
                field(cron_fields::DAY_OF_MONTH, &r.cron_day_of_month)?,
            ),
            (
                cron_fields::MONTH,
                field(cron_fields::MONTH, &r.cron_month_of_year)?,
            ),
            (
                cron_fields::DAY_OF_WEEK,
                field(cron_fields::DAY_OF_WEEK, &r.cron_day_of_week)?,
            ),
        ];
        if !cron_fields::is_full(sets[2].0, &sets[2].1)
            && !cron_fields::is_full(sets[4].0, &sets[4].1)
        {
            return Err(fail(
                "crontab restricts both day_of_month and day_of_week: Celery runs only on days \
                 matching both, a 5-field cron runs on days matching either"
                    .into(),
            ));
        }
        let mut parts = Vec::new();
        for (f, set) in &sets {
            parts.push(
                cron_fields::render(*f, set)
                    .ok_or_else(|| fail(format!("crontab {} matches nothing", f.name)))?,
            );
        }
        if let Some(tz) = r.cron_timezone.as_deref().filter(|t| !t.is_empty()) {
            spec.insert("timeZone".into(), json!(tz));
        }
        if let Some(start) = r.start_time {
            spec.insert("startTime".into(), json!(rfc3339(start)));
        }
        json!({"cron": parts.join(" ")})
    } else if let Some(at) = r.clocked_time {
        json!({"at": rfc3339(at)})
    } else if let Some(event) = &r.solar_event {
        return Err(fail(format!(
            "solar schedule ({event}): kube-beat has no sunrise/sunset schedules"
        )));
    } else {
        return Err(fail(
            "no schedule (interval, crontab, clocked or solar)".into(),
        ));
    };
    spec.insert("schedule".into(), schedule);

    if let Some(args) = json_field(&r.name, "args", &r.args).map_err(fail)? {
        if !args.is_array() {
            return Err(fail("args is not a JSON list".into()));
        }
        spec.insert("args".into(), args);
    }
    if let Some(kwargs) = json_field(&r.name, "kwargs", &r.kwargs).map_err(fail)? {
        if !kwargs.is_object() {
            return Err(fail("kwargs is not a JSON object".into()));
        }
        spec.insert("kwargs".into(), kwargs);
    }
    if let Some(headers) = json_field(&r.name, "headers", &r.headers).map_err(fail)? {
        match headers {
            Value::Object(h) if h.is_empty() => {}
            Value::Object(h) => {
                spec.insert("headers".into(), Value::Object(h));
            }
            _ => return Err(fail("headers is not a JSON object".into())),
        }
    }
    for (key, value) in [
        ("queue", &r.queue),
        ("exchange", &r.exchange),
        ("routingKey", &r.routing_key),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            spec.insert(key.into(), json!(v));
        }
    }
    if let Some(p) = r.priority {
        spec.insert("priority".into(), json!(p));
    }
    let mut suspend = !r.enabled;
    if let Some(expires) = r.expires {
        if expires <= now {
            suspend = true;
            differences.push(Difference::new(
                "expired",
                "`expires` is already past: django-celery-beat no longer runs the task, so it \
                 is imported suspended",
            ));
        } else {
            differences.push(Difference::new(
                "expires-instant",
                "`expires` is an instant after which django-celery-beat stops scheduling the \
                 task (and which each message carries as its expiry); kube-beat has no end \
                 time: suspend or delete the job at that instant (messages get no expiry)",
            ));
        }
    } else if let Some(s) = r.expire_seconds {
        spec.insert("expiresSeconds".into(), json!(s));
    }
    if suspend {
        spec.insert("suspend".into(), json!(true));
    }
    let description = r.description.trim();
    if !description.is_empty() {
        if description.chars().count() > MAX_DESCRIPTION {
            differences.push(Difference::new(
                "description-cut",
                format!("descriptions are cut to kube-beat's {MAX_DESCRIPTION} characters"),
            ));
        }
        let cut: String = description.chars().take(MAX_DESCRIPTION).collect();
        spec.insert("description".into(), json!(cut));
    }
    Ok(Candidate {
        name: r.name.clone(),
        task: r.task.clone(),
        spec,
        differences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn task(name: &str) -> DjangoPeriodicTask {
        DjangoPeriodicTask {
            id: 1,
            name: name.into(),
            task: "app.tasks.sync".into(),
            args: "[]".into(),
            kwargs: "{}".into(),
            queue: None,
            exchange: None,
            routing_key: None,
            expires: None,
            expire_seconds: None,
            enabled: true,
            one_off: false,
            start_time: None,
            last_run_at: None,
            priority: None,
            headers: "{}".into(),
            description: String::new(),
            interval_every: None,
            interval_period: None,
            cron_minute: None,
            cron_hour: None,
            cron_day_of_week: None,
            cron_day_of_month: None,
            cron_month_of_year: None,
            cron_timezone: None,
            clocked_time: None,
            solar_event: None,
        }
    }

    fn cron(min: &str, hour: &str, dow: &str, dom: &str, moy: &str) -> DjangoPeriodicTask {
        DjangoPeriodicTask {
            cron_minute: Some(min.into()),
            cron_hour: Some(hour.into()),
            cron_day_of_week: Some(dow.into()),
            cron_day_of_month: Some(dom.into()),
            cron_month_of_year: Some(moy.into()),
            cron_timezone: Some("Europe/Berlin".into()),
            ..task("c")
        }
    }

    #[test]
    fn crontab_fields_become_an_exact_cron() {
        let c = convert(&cron("*/15", "2,3", "sat-mon", "*", "*"), now()).unwrap();
        assert_eq!(c.spec["schedule"]["cron"], "0,15,30,45 2,3 * * 0,1,6");
        assert_eq!(c.spec["timeZone"], "Europe/Berlin");
        let c = convert(&cron("0", "4", "*", "1,15", "jan-mar"), now()).unwrap();
        assert_eq!(c.spec["schedule"]["cron"], "0 4 1,15 1-3 *");
        let both = convert(&cron("0", "4", "mon", "1", "*"), now()).unwrap_err();
        assert!(both.reason.contains("both"), "{both}");
        let bad = convert(&cron("61", "*", "*", "*", "*"), now()).unwrap_err();
        assert!(bad.reason.contains("minute"), "{bad}");
    }

    #[test]
    fn intervals_are_anchored_where_the_source_runs_next() {
        let mut t = DjangoPeriodicTask {
            interval_every: Some(90),
            interval_period: Some("minutes".into()),
            ..task("i")
        };
        let c = convert(&t, now()).unwrap();
        assert_eq!(
            c.spec["schedule"]["interval"],
            json!({"hours": 1, "minutes": 30, "seconds": 0})
        );
        assert!(c.spec.get("startTime").is_none());
        assert_eq!(c.differences[0].id, "interval-fixed-grid");
        t.last_run_at = Some("2026-05-31T23:00:00Z".parse().unwrap());
        assert_eq!(
            convert(&t, now()).unwrap().spec["startTime"],
            "2026-05-31T23:00:00Z"
        );
        t.start_time = Some("2026-06-02T12:00:00Z".parse().unwrap());
        assert_eq!(
            convert(&t, now()).unwrap().spec["startTime"],
            "2026-06-02T10:30:00Z"
        );
        t.interval_period = Some("days".into());
        t.interval_every = Some(2);
        assert_eq!(
            convert(&t, now()).unwrap().spec["schedule"]["interval"]["hours"],
            48
        );
        t.interval_period = Some("microseconds".into());
        t.interval_every = Some(1500);
        assert!(convert(&t, now()).is_err());
        t.interval_every = Some(3_000_000);
        assert_eq!(
            convert(&t, now()).unwrap().spec["schedule"]["interval"]["seconds"],
            3
        );
        t.one_off = true;
        assert!(convert(&t, now()).unwrap_err().reason.contains("one_off"));
    }

    #[test]
    fn options_and_states() {
        let t = DjangoPeriodicTask {
            clocked_time: Some("2026-07-01T10:00:00Z".parse().unwrap()),
            one_off: true,
            enabled: false,
            args: "[1, \"a\"]".into(),
            kwargs: "{\"k\": 2}".into(),
            headers: "{\"h\": \"v\"}".into(),
            queue: Some("q1".into()),
            exchange: Some("ex".into()),
            routing_key: Some("rk".into()),
            priority: Some(5),
            expire_seconds: Some(30),
            description: "nightly".into(),
            ..task("o")
        };
        let c = convert(&t, now()).unwrap();
        assert_eq!(
            Value::Object(c.spec.clone()),
            json!({
                "schedule": {"at": "2026-07-01T10:00:00Z"},
                "args": [1, "a"], "kwargs": {"k": 2}, "headers": {"h": "v"},
                "queue": "q1", "exchange": "ex", "routingKey": "rk", "priority": 5,
                "expiresSeconds": 30, "suspend": true, "description": "nightly",
            })
        );
        let expired = DjangoPeriodicTask {
            expires: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            ..t.clone()
        };
        let c = convert(&expired, now()).unwrap();
        assert_eq!(c.spec["suspend"], true);
        assert!(c.spec.get("expiresSeconds").is_none());
        assert_eq!(c.differences[0].id, "expired");
        let later = DjangoPeriodicTask {
            expires: Some("2027-01-01T00:00:00Z".parse().unwrap()),
            enabled: true,
            ..t.clone()
        };
        let c = convert(&later, now()).unwrap();
        assert!(c.spec.get("suspend").is_none());
        assert_eq!(c.differences[0].id, "expires-instant");
        let solar = DjangoPeriodicTask {
            solar_event: Some("sunrise".into()),
            ..task("s")
        };
        assert!(convert(&solar, now()).unwrap_err().reason.contains("solar"));
        let bad_args = DjangoPeriodicTask {
            args: "{".into(),
            ..t.clone()
        };
        assert!(
            convert(&bad_args, now())
                .unwrap_err()
                .reason
                .contains("JSON")
        );
    }
}
