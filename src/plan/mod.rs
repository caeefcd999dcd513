//! `kube-beat plan -f FILE|DIR [--against-cluster] [--window 7d] [-o json]`: what a set of
//! manifests will do to the schedule, for pull-request CI.
//!
//! The plan is a pure function ([`build`]) of the objects read ([`Input`]), an instant (`--now`,
//! so golden tests are stable) and a window: per job its validity (the very verdict of
//! `kube-beat validate`), its next runs in its own time zone, the DST transitions of its zones
//! and what they do to its slots, the calendar exclusions it meets and, with
//! `--against-cluster`, what changes against the cluster's current version; for the whole set
//! the busiest seconds. Reading files and the cluster is [`load`]'s (the I/O edge); rendering
//! is [`render`]'s. The JSON shape is documented in docs/plan.md.

mod build;
mod dst;
pub mod load;
pub mod render;
mod slots;

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;

pub use build::build;

/// Most ScheduledJobs planned; the rest are reported as not planned.
pub const MAX_JOBS: usize = 100_000;
/// Longest window: a bit more than a year, so a yearly job shows once.
pub const MAX_WINDOW_DAYS: i64 = 400;
/// Most slots enumerated for one schedule (its count is then "at least").
pub const MAX_SLOTS_PER_SCHEDULE: usize = 10_000;
/// Most slots enumerated for the whole set: bounds time and the memory of the per-second
/// counts. Shared fairly among the distinct schedules (jobs with the same schedule share one
/// enumeration), never fewer than [`MIN_SLOTS_PER_SCHEDULE`] each.
pub const MAX_SLOTS_TOTAL: usize = 8_000_000;
/// Fewest slots enumerated for one schedule, however many there are.
pub const MIN_SLOTS_PER_SCHEDULE: usize = 100;
/// Longest value shown in a changed field (longer ones are cut with `…`).
pub const MAX_VALUE_CHARS: usize = 120;

/// Why the command line's values are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// Whether a day is excluded by a calendar: the calendar model's verdict, behind a trait so the
/// plan does not depend on how calendars are read (and unit tests can use a fixed one).
pub trait Exclude: Send + Sync {
    /// `Some("Calendar: <name>: <reason>")` when a slot at `t` is skipped.
    fn verdict(&self, t: DateTime<Utc>) -> Option<String>;
}

impl Exclude for crate::calendar::Calendar {
    fn verdict(&self, t: DateTime<Utc>) -> Option<String> {
        crate::calendar::Calendar::verdict(self, t)
    }
}

/// Calendars by name: the model, or why the calendar is not usable.
pub type Calendars = BTreeMap<String, Result<Arc<dyn Exclude>, String>>;

/// What the cluster holds for a job in the files (`--against-cluster`).
#[derive(Debug, Clone)]
pub enum InCluster {
    /// Not asked (no `--against-cluster`).
    NotAsked,
    /// No such job: it is new.
    Absent,
    /// The cluster's object, as JSON.
    Present(Value),
    /// The cluster could not be read.
    Unreadable(String),
}

/// One ScheduledJob document of the files, with its verdict.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// `FILE[#DOC_INDEX]`.
    pub source: String,
    pub namespace: String,
    pub name: String,
    /// The whole document.
    pub value: Value,
    /// `kube-beat validate`'s error for it (`None`: valid).
    pub error: Option<String>,
    /// Its notes (what could not be checked, a one-shot job whose time has passed).
    pub notes: Vec<String>,
    pub cluster: InCluster,
}

/// How many objects of each kind were read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub files: usize,
    pub scheduled_jobs: usize,
    pub task_functions: usize,
    pub schedule_calendars: usize,
    /// Documents of any other kind (ignored).
    pub other: usize,
}

/// Everything the plan is built from.
pub struct Input {
    pub now: DateTime<Utc>,
    /// Whether `now` came from `--now` (else the clock).
    pub now_given: bool,
    pub window: Duration,
    /// The window as given (`7d`).
    pub window_text: String,
    pub limits: Limits,
    pub counts: Counts,
    /// Files or documents that could not be read, and jobs over [`MAX_JOBS`]: exit 1.
    pub errors: Vec<String>,
    /// Notes not about one job.
    pub notes: Vec<String>,
    pub jobs: Vec<JobInput>,
    /// The calendars the jobs will use: the files' over the cluster's.
    pub calendars: Calendars,
    /// The cluster's calendars (for the cluster's version of each job).
    pub cluster_calendars: Calendars,
    pub against_cluster: bool,
}

/// Output bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Runs (and exclusions, added and removed runs) listed per job.
    pub shown: usize,
    /// Busiest seconds listed.
    pub top: usize,
    /// More runs than this in one second is a warning.
    pub busy_threshold: u64,
}

/// The plan (the `-o json` document; docs/plan.md).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub now: String,
    /// `--now` or `clock`.
    pub now_source: &'static str,
    pub window: String,
    pub window_end: String,
    pub read: Counts,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    pub jobs: Vec<JobPlan>,
    pub busiest: Busiest,
    pub warnings: Vec<String>,
    /// Jobs not valid.
    pub invalid: usize,
}

/// One job's plan.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobPlan {
    pub namespace: String,
    pub name: String,
    pub source: String,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub notes: Vec<String>,
    /// `status.schedule`'s summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The schedules of the job (one, or `spec.schedules`), each with its time zone.
    pub schedules: Vec<SchedulePart>,
    pub suspended: bool,
    /// Where interval slots count from, when the job has an interval without `startTime`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
    /// `jitterSeconds`: each run is dispatched up to this much after its slot (slots are shown
    /// without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_seconds: Option<i64>,
    /// Runs in the window (calendar-excluded slots not counted).
    pub runs: SlotList,
    pub dst_transitions: Vec<DstTransition>,
    pub exclusions: ExclusionList,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
}

/// One of a job's schedules.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulePart {
    /// Its summary (`30 2 * * * (Europe/Berlin)`, `every 1h`, `at …`).
    pub summary: String,
    pub time_zone: String,
}

/// Where interval slots count from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Anchor {
    pub time: String,
    /// `creationTimestamp` (the cluster's or the file's object) or `now` (a job not created
    /// yet: its real anchor is the moment it is applied).
    pub from: &'static str,
}

/// Slots, the first few listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotList {
    pub count: usize,
    /// The enumeration stopped at [`MAX_SLOTS_PER_SCHEDULE`] (or the fair share of
    /// [`MAX_SLOTS_TOTAL`]): `count` is a lower bound.
    pub capped: bool,
    pub shown: Vec<Slot>,
}

/// One slot: the instant in UTC and on the wall clock of its schedule's zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    pub utc: String,
    /// `2026-03-29 03:00:00 CEST (+02:00)`.
    pub local: String,
    pub time_zone: String,
    /// Which of the job's schedules (0-based) give this slot, when it has several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<usize>,
}

/// A change of a zone's UTC offset in the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DstTransition {
    pub at: String,
    pub time_zone: String,
    pub offset_before: String,
    pub offset_after: String,
    /// `gap` (clocks go forward: local times from `localFrom` to `localTo` do not exist) or
    /// `overlap` (clocks go back: those local times happen twice).
    pub kind: &'static str,
    pub local_from: String,
    pub local_to: String,
    pub effects: Vec<DstEffect>,
}

/// What a transition does to one of the job's schedules.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DstEffect {
    /// Index of the schedule in [`JobPlan::schedules`].
    pub schedule: usize,
    /// `moved` (a fixed-hour slot in a gap runs at the first instant after it), `skipped` (an
    /// hour-`*` slot in a gap does not run), `once` (a fixed-hour slot in an overlap runs at
    /// its first occurrence only), `twice` (an hour-`*` slot in an overlap runs at both),
    /// `none` (no slot of the schedule falls in the affected hour), `realTime` (an interval,
    /// `@every` or `at` schedule: fixed instants, only their local times shift).
    pub effect: &'static str,
    /// The affected wall-clock times (`02:30`), at most [`Limits::shown`].
    pub local_times: Vec<String>,
    /// When they run (UTC); empty for `skipped`.
    pub runs_at: Vec<String>,
    /// One line for humans.
    pub text: String,
}

/// Calendar-excluded slots in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExclusionList {
    pub count: usize,
    pub shown: Vec<Exclusion>,
}

/// A slot a calendar skips (recorded `SKIPPED` with the reason `Calendar: <name>: <reason>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exclusion {
    pub slot: Slot,
    pub calendar: String,
    pub reason: String,
}

/// What applying the file changes against the cluster's current version of the job.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Changes {
    /// `new`, `unchanged`, `changed` or `unknown` (the cluster could not be read).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Changed spec fields (dotted paths), in path order.
    pub fields: Vec<FieldChange>,
    /// Runs in the window the file adds and removes.
    pub runs_added: SlotList,
    pub runs_removed: SlotList,
}

/// One changed field: its values as compact JSON (`null`: unset).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    pub path: String,
    pub before: String,
    pub after: String,
}

/// The busiest seconds of the window over every valid job.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Busiest {
    pub threshold: u64,
    /// Seconds with more runs than the threshold.
    pub seconds_over_threshold: usize,
    /// Some schedule's enumeration was capped: counts are lower bounds.
    pub capped: bool,
    pub top: Vec<BusySecond>,
}

/// Runs due in one second.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BusySecond {
    pub at: String,
    pub runs: u64,
    /// Of those, runs of jobs with `jitterSeconds` (dispatched spread over it).
    pub jittered: u64,
    /// The first jobs (`namespace/name`, sorted), at most [`Limits::shown`].
    pub jobs: Vec<String>,
}

/// `7d`, `36h`, `1d12h`, `90m`, `2w`: a window of 1 second to [`MAX_WINDOW_DAYS`] days.
pub fn parse_window(text: &str) -> Result<Duration, PlanError> {
    let bad = |why: &str| PlanError(format!("--window {text:?}: {why}"));
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            if number.len() >= 6 {
                return Err(bad("too large"));
            }
            number.push(c);
            continue;
        }
        let unit = match c {
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(bad(
                    "expected numbers with units w, d, h, m or s, e.g. 7d or 36h",
                ));
            }
        };
        let n: i64 = number
            .parse()
            .map_err(|_| bad("every unit needs a number before it, e.g. 7d"))?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| bad("too large"))?;
    }
    if !number.is_empty() {
        return Err(bad("a number without a unit (w, d, h, m or s)"));
    }
    if total < 1 {
        return Err(bad("must be at least 1s"));
    }
    if total > MAX_WINDOW_DAYS * 86_400 {
        return Err(bad(&format!("at most {MAX_WINDOW_DAYS}d")));
    }
    Ok(Duration::seconds(total))
}

/// clap's check of `--window`: a bad one is a usage error (exit 2) before anything is read.
pub fn window_arg(text: &str) -> Result<String, PlanError> {
    parse_window(text).map(|_| text.to_string())
}

/// clap's check of `--now` (RFC 3339).
pub fn now_arg(text: &str) -> Result<String, PlanError> {
    crate::schedule::parse_instant("--now", text)
        .map(|_| text.to_string())
        .map_err(|e| PlanError(e.0))
}

#[cfg(test)]
mod tests;
