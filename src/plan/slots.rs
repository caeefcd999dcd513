//! A job's schedules and its slots in the window (pure).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::{Exclude, Slot};
use crate::{
    api::{Schedule, ScheduledJobSpec},
    schedule::{self, JobSchedule, ScheduleError},
};

/// The job's whole schedule (`schedule` or `schedules`, `startTime`, `endTime`): every slot it
/// runs at, as the reconcile and the dispatcher build it.
pub fn job_schedule(
    spec: &ScheduledJobSpec,
    anchor: DateTime<Utc>,
) -> Result<JobSchedule, ScheduleError> {
    JobSchedule::from_job_spec(spec, anchor)
}

/// One of a job's schedules, on its own: which slots it gives and in which zone they are read.
pub struct Part {
    pub schedule: JobSchedule,
    /// The cron expression of a cron part (not `@every`): DST moves its slots.
    pub cron: Option<schedule::cron::CronFields>,
    pub tz: Tz,
}

/// The job's schedules, read from the document (`spec.schedules`, each with an optional
/// `timeZone` defaulting to the job's, or `spec.schedule`). Read from JSON rather than the
/// typed spec so the plan shows each schedule whatever the spec type holds; a schedule that does
/// not parse is left out (the job's verdict says why).
pub fn parts(spec: &Value, anchor: DateTime<Utc>) -> Vec<Part> {
    let job_tz = spec.get("timeZone").and_then(Value::as_str);
    let start = spec.get("startTime").and_then(Value::as_str);
    let entries: Vec<&Value> = match spec.get("schedules").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => spec.get("schedule").into_iter().collect(),
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let tz = entry.get("timeZone").and_then(Value::as_str).or(job_tz);
            let parsed: Schedule = serde_json::from_value(entry.clone()).ok()?;
            let schedule = JobSchedule::from_spec(&parsed, tz, start, anchor).ok()?;
            let cron =
                parsed
                    .cron
                    .as_deref()
                    .and_then(|expr| match schedule::cron::parse(expr).ok()? {
                        schedule::cron::CronExpr::Fields(f) => Some(f),
                        schedule::cron::CronExpr::Every(_) => None,
                    });
            Some(Part {
                tz: schedule.time_zone(),
                schedule,
                cron,
            })
        })
        .collect()
}

/// Whether interval slots count from the anchor: a part with a period and no `startTime`.
pub fn anchored(parts: &[Part]) -> bool {
    parts
        .iter()
        .any(|p| p.schedule.period().is_some() && p.schedule.start().is_none())
}

/// The slots of one schedule in `(from, to]`, split into runs and calendar exclusions.
#[derive(Debug, Default)]
pub struct Enumerated {
    /// In time order.
    pub runs: Vec<DateTime<Utc>>,
    /// `(slot, "Calendar: <name>: <reason>")`, in time order.
    pub excluded: Vec<(DateTime<Utc>, String)>,
    /// Stopped at the cap: there are more.
    pub capped: bool,
}

/// Enumerate `schedule`'s slots after `from` up to `to` (and `end_time`), at most `cap` of them,
/// each judged by the calendars in order (the first that excludes it names the reason).
pub fn enumerate(
    schedule: &JobSchedule,
    calendars: &[Arc<dyn Exclude>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cap: usize,
) -> Enumerated {
    let mut out = Enumerated::default();
    let mut cur = from;
    while let Some(t) = schedule.next_after(cur) {
        if t > to {
            break;
        }
        if out.runs.len() + out.excluded.len() >= cap {
            out.capped = true;
            break;
        }
        match calendars.iter().find_map(|c| c.verdict(t)) {
            Some(reason) => out.excluded.push((t, reason)),
            None => out.runs.push(t),
        }
        cur = t;
    }
    out
}

/// `t` as a [`Slot`]: in the zone of the first of `parts` that gives it (every part's index
/// listed when the job has several), else in `fallback`.
pub fn slot(t: DateTime<Utc>, parts: &[Part], fallback: Tz) -> Slot {
    let just_before = t.checked_sub_signed(Duration::nanoseconds(1)).unwrap_or(t);
    let giving: Vec<usize> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.schedule.next_after(just_before) == Some(t))
        .map(|(i, _)| i)
        .collect();
    let tz = giving
        .first()
        .and_then(|i| parts.get(*i))
        .map_or(fallback, |p| p.tz);
    Slot {
        utc: schedule::rfc3339(t),
        local: local(t, tz),
        time_zone: tz.name().to_string(),
        schedules: if parts.len() > 1 { giving } else { Vec::new() },
    }
}

/// `2026-03-29 03:00:00 CEST (+02:00)`.
pub fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %Z (%:z)")
        .to_string()
}
