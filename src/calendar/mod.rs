//! Calendars, pure: a validated [`ScheduleCalendarSpec`] that answers "is this instant
//! excluded, and why". No clock reads, no I/O; the dispatcher, `kube-beat next` and
//! `kube-beat plan` all ask the same [`Calendar::verdict`].
//!
//! Semantics (documented in the README and docs/architecture.md):
//! - `date`, `dates` and `weekdays` match an instant whose local date in the calendar's
//!   `timeZone` (default UTC) is that day, in that range (both ends included), on that weekday.
//! - `window` matches instants from `from` (included) to `to` (excluded).
//! - An instant is excluded when it matches an `exclude` entry (the first one names the reason),
//!   or when `include` is not empty and it matches no `include` entry.

use chrono::{DateTime, NaiveDate, Utc, Weekday};
use chrono_tz::Tz;

use crate::api::schedule_calendar::{
    CalendarEntry, MAX_CALENDAR_ENTRIES, MAX_REASON_LEN, ScheduleCalendarSpec,
};

/// The longest `dates` range or `window`: 100 years (366 days a year, leap days included).
const MAX_SPAN_DAYS: i64 = 366 * 100;

/// An invalid calendar; the message (with the entry's path) is what the user sees in the
/// calendar's `Ready` condition and in the `CalendarInvalid` reason of the jobs using it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CalendarError(pub String);

/// A validated calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    name: String,
    tz: Tz,
    exclude: Vec<Entry>,
    include: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    rule: Rule,
    reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// Local days, both ends included (`date` is a one-day range).
    Days(NaiveDate, NaiveDate),
    /// Bit `n` set: `Weekday::num_days_from_monday() == n` matches.
    Weekdays(u8),
    /// Instants `[from, to)`.
    Window(DateTime<Utc>, DateTime<Utc>),
}

impl Calendar {
    /// Validate a ScheduleCalendar's spec. Every value is checked (the CRD schema may not have
    /// been applied, e.g. for `kube-beat next --calendar FILE`), so no input panics or loops.
    pub fn from_spec(name: &str, spec: &ScheduleCalendarSpec) -> Result<Calendar, CalendarError> {
        let zone = spec.time_zone.as_deref().unwrap_or("UTC");
        if zone.len() > 64 {
            return Err(CalendarError("timeZone: at most 64 characters".into()));
        }
        let tz = zone.parse::<Tz>().map_err(|_| {
            CalendarError(format!(
                "timeZone: unknown time zone {zone:?} (expected an IANA name such as Europe/Berlin)"
            ))
        })?;
        if spec.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(CalendarError("description: at most 1024 characters".into()));
        }
        Ok(Calendar {
            name: name.to_string(),
            tz,
            exclude: entries("exclude", &spec.exclude)?,
            include: entries("include", &spec.include)?,
        })
    }

    /// The calendar's name, as jobs reference it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The zone its dates and weekdays are read in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// `Some("Calendar: <name>: <reason>")` when `t` is excluded, `None` when a slot at `t` may run.
    pub fn verdict(&self, t: DateTime<Utc>) -> Option<String> {
        let day = t.with_timezone(&self.tz).date_naive();
        if let Some(entry) = self.exclude.iter().find(|e| e.rule.matches(t, day)) {
            let why = match &entry.reason {
                Some(reason) => reason.clone(),
                None => entry.rule.default_reason(day),
            };
            return Some(format!("Calendar: {}: {why}", self.name));
        }
        if !self.include.is_empty() && !self.include.iter().any(|e| e.rule.matches(t, day)) {
            return Some(format!("Calendar: {}: not a listed day", self.name));
        }
        None
    }
}

/// The verdict of the first calendar (in the job's order) that excludes `t`.
pub fn excluded_by(calendars: &[Calendar], t: DateTime<Utc>) -> Option<String> {
    calendars.iter().find_map(|c| c.verdict(t))
}

fn entries(field: &str, list: &[CalendarEntry]) -> Result<Vec<Entry>, CalendarError> {
    if list.len() > MAX_CALENDAR_ENTRIES {
        return Err(CalendarError(format!(
            "{field}: at most {MAX_CALENDAR_ENTRIES} entries ({} given)",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, e)| entry(e).map_err(|msg| CalendarError(format!("{field}[{i}]: {msg}"))))
        .collect()
}

fn entry(e: &CalendarEntry) -> Result<Entry, String> {
    let set = [
        e.date.is_some(),
        e.dates.is_some(),
        e.weekdays.is_some(),
        e.window.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err("set exactly one of date, dates, weekdays or window".into());
    }
    if let Some(reason) = &e.reason
        && reason.chars().count() > MAX_REASON_LEN
    {
        return Err(format!("reason: at most {MAX_REASON_LEN} characters"));
    }
    let rule = if let Some(date) = &e.date {
        let d = parse_date("date", date)?;
        Rule::Days(d, d)
    } else if let Some(range) = &e.dates {
        let from = parse_date("dates.from", &range.from)?;
        let to = parse_date("dates.to", &range.to)?;
        if to < from {
            return Err(format!(
                "dates: to ({to}) is before from ({from}); both ends are included"
            ));
        }
        if (to - from).num_days() > MAX_SPAN_DAYS {
            return Err("dates: at most 100 years from from to to".into());
        }
        Rule::Days(from, to)
    } else if let Some(days) = &e.weekdays {
        if days.is_empty() || days.len() > 7 {
            return Err("weekdays: 1 to 7 names".into());
        }
        let mut mask = 0u8;
        for name in days {
            // chrono's parser takes English full and 3-letter names, case-insensitive: the
            // contract exactly. Bounded first so a huge string is not echoed back.
            if name.len() > 9 {
                return Err("weekdays: names are at most 9 characters (e.g. Wednesday)".into());
            }
            let day: Weekday = name.parse().map_err(|_| {
                format!("weekdays: {name:?} is not a weekday (Monday..Sunday or Mon..Sun)")
            })?;
            mask |= 1 << day.num_days_from_monday();
        }
        Rule::Weekdays(mask)
    } else if let Some(window) = &e.window {
        let from = parse_instant("window.from", &window.from)?;
        let to = parse_instant("window.to", &window.to)?;
        if to <= from {
            return Err("window: to must be after from".into());
        }
        if (to - from).num_days() > MAX_SPAN_DAYS {
            return Err("window: at most 100 years long".into());
        }
        Rule::Window(from, to)
    } else {
        return Err("set exactly one of date, dates, weekdays or window".into());
    };
    Ok(Entry {
        rule,
        reason: e.reason.clone(),
    })
}

fn parse_date(field: &str, text: &str) -> Result<NaiveDate, String> {
    // The length check makes the format strict (chrono would take `2026-1-5`) and bounds what is
    // echoed in the message.
    if text.len() != 10 {
        return Err(format!("{field}: expected YYYY-MM-DD"));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| format!("{field}: {text:?} is not a date (YYYY-MM-DD): {e}"))
}

fn parse_instant(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    if text.len() > 64 {
        return Err(format!("{field}: at most 64 characters"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{field}: {text:?} is not an RFC 3339 time: {e}"))
}

impl Rule {
    fn matches(&self, t: DateTime<Utc>, day: NaiveDate) -> bool {
        use chrono::Datelike;
        match self {
            Rule::Days(from, to) => *from <= day && day <= *to,
            Rule::Weekdays(mask) => mask & (1 << day.weekday().num_days_from_monday()) != 0,
            Rule::Window(from, to) => *from <= t && t < *to,
        }
    }

    /// The reason of an entry that gives none, e.g. `excluded date 2026-12-25`.
    fn default_reason(&self, day: NaiveDate) -> String {
        use chrono::Datelike;
        match self {
            Rule::Days(from, to) if from == to => format!("excluded date {from}"),
            Rule::Days(from, to) => format!("excluded dates {from} to {to}"),
            Rule::Weekdays(_) => format!("excluded weekday {}", weekday_name(day.weekday())),
            Rule::Window(from, to) => format!(
                "excluded window {} to {}",
                from.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                to.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
        }
    }
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
