//! `kube-beat next`: a schedule's next activations, with the slots its calendars skip.

use anyhow::{Context, Result};

use crate::{api, schedule};

/// `kube-beat next`: the next `count` activations, as RFC 3339 UTC lines.
pub fn next_instants(
    expr: &str,
    tz: &str,
    from: Option<&str>,
    count: usize,
) -> Result<Vec<String>, schedule::ScheduleError> {
    Ok(next_runs(expr, tz, from, count, &[])?.runs)
}

/// Largest calendar file `kube-beat next --calendar` reads.
const MAX_CALENDAR_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The ScheduleCalendar objects of a YAML file (one or more documents; documents of other kinds
/// are ignored), each validated as the operator does.
pub fn load_calendars(path: &std::path::Path) -> Result<Vec<crate::calendar::Calendar>> {
    use serde::Deserialize;
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > MAX_CALENDAR_FILE_BYTES {
        anyhow::bail!(
            "{}: larger than {MAX_CALENDAR_FILE_BYTES} bytes",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("{}: document {}", path.display(), index + 1))?;
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("ScheduleCalendar")
        {
            continue;
        }
        let cal: api::ScheduleCalendar = serde_yaml::from_value(value)
            .with_context(|| format!("{}: document {}", path.display(), index + 1))?;
        let name = cal.metadata.name.clone().unwrap_or_default();
        let valid = crate::calendar::Calendar::from_spec(&name, &cal.spec)
            .with_context(|| format!("{}: ScheduleCalendar {name:?}", path.display()))?;
        out.push(valid);
    }
    if out.is_empty() {
        anyhow::bail!("{}: no ScheduleCalendar in it", path.display());
    }
    Ok(out)
}

/// Slots a calendar may skip while `kube-beat next` looks for the next runs: a calendar that
/// excludes every slot (all seven weekdays) must end the search, not loop.
const MAX_SKIPPED_SLOTS: usize = 100_000;
/// Skipped slots listed one by one on standard error (the rest are counted).
const SKIPPED_LISTED: usize = 20;

/// The next runs of a schedule, with the slots its calendars skipped on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextRuns {
    /// RFC 3339 UTC instants.
    pub runs: Vec<String>,
    /// The first [`SKIPPED_LISTED`] skipped slots and why (`Calendar: <name>: <reason>`).
    pub skipped: Vec<(String, String)>,
    /// How many slots were skipped in all.
    pub skipped_total: usize,
    /// The search stopped after [`MAX_SKIPPED_SLOTS`] skipped slots.
    pub gave_up: bool,
}

impl NextRuns {
    /// What standard error says: how many slots were skipped, and why.
    pub fn skipped_report(&self) -> String {
        let mut out = format!("{} slot(s) skipped by calendars\n", self.skipped_total);
        for (t, why) in &self.skipped {
            out.push_str(&format!("  {t}  {why}\n"));
        }
        if self.skipped_total > self.skipped.len() {
            out.push_str(&format!(
                "  ... and {} more\n",
                self.skipped_total - self.skipped.len()
            ));
        }
        if self.gave_up {
            out.push_str(&format!(
                "stopped looking after {MAX_SKIPPED_SLOTS} skipped slots: do the calendars exclude every slot?\n"
            ));
        }
        out
    }
}

/// [`next_instants`], skipping the slots `calendars` exclude (the dispatcher's own verdict,
/// `calendar::excluded_by`).
pub fn next_runs(
    expr: &str,
    tz: &str,
    from: Option<&str>,
    count: usize,
    calendars: &[crate::calendar::Calendar],
) -> Result<NextRuns, schedule::ScheduleError> {
    let from = match from {
        Some(f) => schedule::parse_instant("--from", f)?,
        None => chrono::Utc::now(),
    };
    let s = schedule::JobSchedule::from_expression(expr, tz, from)?;
    let mut out = NextRuns {
        runs: Vec::with_capacity(count.min(10_000)),
        skipped: Vec::new(),
        skipped_total: 0,
        gave_up: false,
    };
    let mut cur = from;
    while out.runs.len() < count {
        let Some(t) = s.next_after(cur) else {
            if out.runs.is_empty() && out.skipped_total == 0 {
                return Err(schedule::ScheduleError(format!(
                    "{expr:?} has no activation in the next 5 years"
                )));
            }
            break;
        };
        cur = t;
        if let Some(why) = crate::calendar::excluded_by(calendars, t) {
            out.skipped_total = out.skipped_total.saturating_add(1);
            if out.skipped.len() < SKIPPED_LISTED {
                out.skipped.push((schedule::rfc3339(t), why));
            }
            if out.skipped_total >= MAX_SKIPPED_SLOTS {
                out.gave_up = true;
                break;
            }
            continue;
        }
        out.runs.push(schedule::rfc3339(t));
    }
    Ok(out)
}
