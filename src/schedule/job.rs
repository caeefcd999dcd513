//! A job's schedule from its spec (`schedule` or `schedules`, `timeZone`, `startTime`,
//! `endTime`) and from its stored row: the one way every part of kube-beat builds it, so the
//! reconciler, the webhook, `kube-beat validate`, the dispatcher and `kube-beat plan` agree.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::{JobSchedule, Part, ScheduleError, parse_instant, parse_tz};
use crate::api::{Schedule, ScheduleEntry, ScheduledJobSpec};

/// The most entries `spec.schedules` may have (also the CRD schema's `maxItems`).
pub const MAX_SCHEDULES: usize = 16;

impl JobSchedule {
    /// Validate a ScheduledJob's schedule: exactly one of `schedule` and `schedules`, each part
    /// in its zone, bounded by `startTime` and `endTime`. `anchor` is when the job was first
    /// stored. Errors name the field (`schedules[1].cron: ...`).
    pub fn from_job_spec(
        spec: &ScheduledJobSpec,
        anchor: DateTime<Utc>,
    ) -> Result<JobSchedule, ScheduleError> {
        let tz = parse_tz(spec.time_zone.as_deref().unwrap_or("UTC"))?;
        let start = spec
            .start_time
            .as_deref()
            .map(|s| parse_instant("startTime", s))
            .transpose()?;
        let end = spec
            .end_time
            .as_deref()
            .map(|s| parse_instant("endTime", s))
            .transpose()?;
        let listed = spec.schedules.is_some();
        let parts = match (&spec.schedule, &spec.schedules) {
            (Some(one), None) => vec![Part::parse(one, tz)?],
            (None, Some(list)) => list_parts(list, tz)?,
            (Some(_), Some(_)) => {
                return Err(ScheduleError(
                    "set either schedule or schedules, not both".into(),
                ));
            }
            (None, None) => {
                return Err(ScheduleError(
                    "one of schedule or schedules must be set".into(),
                ));
            }
        };
        JobSchedule::from_parts(parts, listed, start, end, anchor)
    }

    /// Rebuild a stored job's schedule. The row holds the spec's `schedule` as a JSON object, or
    /// its `schedules` as an array whose entries carry their resolved `timeZone` (see
    /// [`stored_config`]); `time_zone` is the row's zone (the job's, for an object). `endTime`
    /// is stored apart: add it with [`JobSchedule::with_end`].
    pub fn from_stored(
        config: &Value,
        time_zone: &str,
        start: Option<DateTime<Utc>>,
        anchor: DateTime<Utc>,
    ) -> Result<JobSchedule, ScheduleError> {
        let unreadable =
            |e: serde_json::Error| ScheduleError(format!("stored schedule is unreadable: {e}"));
        let tz = parse_tz(time_zone)?;
        let listed = config.is_array();
        let parts = if listed {
            let list: Vec<ScheduleEntry> =
                serde_json::from_value(config.clone()).map_err(unreadable)?;
            list_parts(&list, tz)?
        } else {
            let one: Schedule = serde_json::from_value(config.clone()).map_err(unreadable)?;
            vec![Part::parse(&one, tz)?]
        };
        JobSchedule::from_parts(parts, listed, start, None, anchor)
    }
}

/// The parts of a `schedules` list; an entry without a zone is read in `default_tz`.
fn list_parts(list: &[ScheduleEntry], default_tz: Tz) -> Result<Vec<Part>, ScheduleError> {
    if list.is_empty() || list.len() > MAX_SCHEDULES {
        return Err(ScheduleError(format!(
            "schedules must have 1 to {MAX_SCHEDULES} entries, got {}",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let tz = match entry.time_zone.as_deref() {
                Some(name) => parse_tz(name)
                    .map_err(|e| ScheduleError(format!("schedules[{i}].timeZone: {e}")))?,
                None => default_tz,
            };
            let field = match (&entry.interval, &entry.cron, &entry.at) {
                (Some(_), None, None) => "interval",
                (None, Some(_), None) => "cron",
                (None, None, Some(_)) => "at",
                _ => {
                    return Err(ScheduleError(format!(
                        "schedules[{i}]: must set exactly one of interval, cron or at"
                    )));
                }
            };
            Part::parse(&entry.schedule(), tz).map_err(|e| {
                // The part's own message may already start with its field ("at: ...").
                let msg = e.0.strip_prefix(&format!("{field}: ")).unwrap_or(&e.0);
                ScheduleError(format!("schedules[{i}].{field}: {msg}"))
            })
        })
        .collect()
}

/// What the row stores as the schedule config: the spec's `schedule` object as written, or its
/// `schedules` with every entry's zone filled in (the job's `timeZone`, else UTC), so the row
/// reads back the same whatever its own `time_zone` column says.
pub fn stored_config(spec: &ScheduledJobSpec) -> Result<Value, serde_json::Error> {
    match (&spec.schedule, &spec.schedules) {
        (_, Some(list)) if spec.schedule.is_none() => {
            let job_tz = spec.time_zone.clone().unwrap_or_else(|| "UTC".to_string());
            let filled: Vec<ScheduleEntry> = list
                .iter()
                .map(|e| ScheduleEntry {
                    time_zone: Some(e.time_zone.clone().unwrap_or_else(|| job_tz.clone())),
                    ..e.clone()
                })
                .collect();
            serde_json::to_value(filled)
        }
        (one, _) => serde_json::to_value(one),
    }
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
