//! Backfill (issue #27): run every slot of a job's schedule in a past range once, keyed by the
//! slot like a scheduled run (so a slot that already ran is not run again), at most
//! `maxParallel` unfinished at once, durably (the `backfills` table, worked through by the
//! leader's [`runner`]).
//!
//! This module is the pure part: the request (the `kubebeat.io/backfill` annotation's JSON, the
//! API's body, the CLI's flags), its bounds, and the slots of a range. No clock reads, no I/O:
//! `now` is always passed in.

pub mod cli;
pub mod runner;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::schedule::{JobSchedule, rfc3339};

/// Slots one backfill may run at most: a bigger range is refused (split it, or use a coarser
/// range), so one request cannot queue an unbounded amount of work.
pub const MAX_SLOTS: usize = 10_000;
/// `maxParallel` bounds (default [`DEFAULT_MAX_PARALLEL`]).
pub const MAX_PARALLEL: u32 = 100;
pub const DEFAULT_MAX_PARALLEL: u32 = 1;
/// A request id: a unique index entry and part of log lines and Events.
pub const MAX_ID_CHARS: usize = 64;
/// `by` (who asked): the API caller's user name, at most this long.
pub const MAX_BY_CHARS: usize = 256;
/// The annotation's whole value (it is parsed on every reconcile of the job).
pub const MAX_ANNOTATION_CHARS: usize = 1024;

/// What refused a backfill request. The message is what the user sees (CLI, API, Event,
/// `status.backfill.message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackfillError {
    /// The request does not parse, or a value is out of its bounds (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The request parses but cannot be run as asked (HTTP 422).
    #[error("{0}")]
    Refused(String),
}

/// The annotation's JSON value, as written by `kube-beat backfill` and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestValue {
    pub id: String,
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<i64>,
    /// Who asked (the API sets the caller's user name); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub max_parallel: u32,
    pub by: Option<String>,
}

impl Request {
    /// Check a request's values (not yet the slot count: that needs the job's schedule).
    /// `to` later than `now` is refused rather than clamped: a backfill is for past slots, and
    /// silently running fewer slots than asked for would surprise more than an error.
    pub fn check(value: &RequestValue, now: DateTime<Utc>) -> Result<Request, BackfillError> {
        let invalid = |m: String| Err(BackfillError::Invalid(m));
        check_id(&value.id)?;
        let time = |field: &str, text: &str| {
            parse_time(text).ok_or_else(|| {
                let shown: String = text.chars().take(64).collect();
                BackfillError::Invalid(format!("{field}: {shown:?} is not an RFC 3339 time"))
            })
        };
        let from = time("from", &value.from)?;
        let to = time("to", &value.to)?;
        let max_parallel = match value.max_parallel {
            None => DEFAULT_MAX_PARALLEL,
            Some(m) => match u32::try_from(m) {
                Ok(m @ 1..=MAX_PARALLEL) => m,
                _ => {
                    return invalid(format!(
                        "maxParallel must be between 1 and {MAX_PARALLEL}, got {m}"
                    ));
                }
            },
        };
        if let Some(by) = &value.by
            && (by.chars().count() > MAX_BY_CHARS || by.chars().any(char::is_control))
        {
            return invalid(format!(
                "by must be at most {MAX_BY_CHARS} characters, without control characters"
            ));
        }
        if from > to {
            return Err(BackfillError::Refused(format!(
                "from ({}) is after to ({})",
                rfc3339(from),
                rfc3339(to)
            )));
        }
        if to > now {
            return Err(BackfillError::Refused(format!(
                "to ({}) is in the future (now {}): a backfill runs past slots only",
                rfc3339(to),
                rfc3339(now)
            )));
        }
        Ok(Request {
            id: value.id.clone(),
            from,
            to,
            max_parallel,
            by: value.by.clone(),
        })
    }

    /// Parse and check the annotation's value.
    pub fn from_annotation(text: &str, now: DateTime<Utc>) -> Result<Request, BackfillError> {
        Request::check(&parse_annotation(text)?, now)
    }

    /// The annotation's value for this request.
    pub fn annotation_value(&self) -> String {
        let value = RequestValue {
            id: self.id.clone(),
            from: rfc3339(self.from),
            to: rfc3339(self.to),
            max_parallel: Some(i64::from(self.max_parallel)),
            by: self.by.clone(),
        };
        // A struct of strings and a number always serializes.
        serde_json::to_string(&value).unwrap_or_default()
    }
}

/// A request id: 1 to [`MAX_ID_CHARS`] letters, digits, `-`, `_`, `.` or `:` (it becomes a
/// unique index entry and part of log lines, Events and status).
pub fn check_id(id: &str) -> Result<(), BackfillError> {
    let n = id.chars().count();
    if n == 0 || n > MAX_ID_CHARS {
        return Err(BackfillError::Invalid(format!(
            "id must be 1 to {MAX_ID_CHARS} characters, got {n}"
        )));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(BackfillError::Invalid(format!(
            "id {id:?} may contain only letters, digits and - _ . :"
        )));
    }
    Ok(())
}

/// Parse the annotation's value, without checking it (see [`Request::check`]).
pub fn parse_annotation(text: &str) -> Result<RequestValue, BackfillError> {
    let n = text.chars().count();
    if n > MAX_ANNOTATION_CHARS {
        return Err(BackfillError::Invalid(format!(
            "the {} annotation is {n} characters; the limit is {MAX_ANNOTATION_CHARS}",
            crate::api::BACKFILL_ANNOTATION
        )));
    }
    serde_json::from_str(text).map_err(|e| {
        BackfillError::Invalid(format!(
            "the {} annotation is not {{\"id\", \"from\", \"to\", \"maxParallel\"}} JSON: {e}",
            crate::api::BACKFILL_ANNOTATION
        ))
    })
}

/// An RFC 3339 instant.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The slots of a job's stored schedule in `[from, to]` (see [`slots_in_range`]).
pub fn stored_slots(
    stored: &crate::store::backfills::StoredSchedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, BackfillError> {
    let schedule = JobSchedule::from_stored(
        &stored.schedule_config,
        &stored.time_zone,
        stored.start_time,
        stored.anchor_time,
    )
    .map_err(|e| BackfillError::Refused(format!("the job's schedule cannot be read: {e}")))?;
    slots_in_range(&schedule, from, to)
}

/// The first slot at or after `from`: `next_after` from just before it.
fn first_slot(schedule: &JobSchedule, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.next_after(from.checked_sub_signed(TimeDelta::nanoseconds(1))?)
}

/// Every slot of `schedule` in `[from, to]` (both included), refused beyond [`MAX_SLOTS`] and
/// when there is none.
pub fn slots_in_range(
    schedule: &JobSchedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, BackfillError> {
    let mut out = Vec::new();
    let mut next = first_slot(schedule, from);
    while let Some(slot) = next.filter(|s| *s <= to) {
        if out.len() == MAX_SLOTS {
            return Err(BackfillError::Refused(format!(
                "more than {MAX_SLOTS} slots of the job's schedule ({}) between {} and {}: \
                 split the range into smaller backfills",
                schedule.summary(),
                rfc3339(from),
                rfc3339(to)
            )));
        }
        out.push(slot);
        next = schedule.next_after(slot);
    }
    if out.is_empty() {
        return Err(BackfillError::Refused(format!(
            "no slot of the job's schedule ({}) between {} and {}",
            schedule.summary(),
            rfc3339(from),
            rfc3339(to)
        )));
    }
    Ok(out)
}

/// Up to `n` slots of `[from, to]` after `cursor` (the last slot handed out; `None`: from the
/// start of the range), in order.
pub fn next_slots(
    schedule: &JobSchedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cursor: Option<DateTime<Utc>>,
    n: usize,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(n.min(MAX_PARALLEL as usize));
    let mut next = match cursor {
        Some(c) => schedule.next_after(
            c.max(
                from.checked_sub_signed(TimeDelta::nanoseconds(1))
                    .unwrap_or(from),
            ),
        ),
        None => first_slot(schedule, from),
    };
    while out.len() < n {
        let Some(slot) = next.filter(|s| *s <= to) else {
            break;
        };
        out.push(slot);
        next = schedule.next_after(slot);
    }
    out
}

/// What a round of a backfill pass does with its candidate slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Take {
    /// Slots to run now (at most the room left).
    pub run: Vec<DateTime<Utc>>,
    /// Slots passed over because they have an execution already.
    pub already_ran: i64,
    /// The last slot dealt with (`None`: none).
    pub cursor: Option<DateTime<Utc>>,
}

/// Go through `candidates` in order: a slot whose key is in `recorded` ran already (passed
/// over, it does not use up `room`); the others are taken while there is room. Stops at the
/// first slot there is no room for, so the cursor never passes a slot not dealt with.
pub fn take_slots(
    candidates: &[DateTime<Utc>],
    recorded: &std::collections::HashSet<String>,
    room: usize,
) -> Take {
    let mut take = Take::default();
    for slot in candidates {
        if recorded.contains(&rfc3339(*slot)) {
            take.already_ran = take.already_ran.saturating_add(1);
        } else if take.run.len() < room {
            take.run.push(*slot);
        } else {
            break;
        }
        take.cursor = Some(*slot);
    }
    take
}

/// How many new runs a backfill may start now: `maxParallel` minus its unfinished runs.
pub fn room(max_parallel: i32, unfinished: i64) -> usize {
    let free = i64::from(max_parallel.clamp(1, MAX_PARALLEL as i32)).saturating_sub(unfinished);
    usize::try_from(free).unwrap_or(0)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
