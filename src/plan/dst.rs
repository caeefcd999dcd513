//! The UTC offset changes of a zone in the window, and what each does to a job's schedules
//! (pure).
//!
//! Found by probing the offset every hour and bisecting to the second: chrono-tz keeps its
//! transition tables private, and no maintained crate exposes them for chrono's `Tz`. Real zones
//! change their offset at most a few times a year, never twice within an hour.

use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use super::{DstEffect, DstTransition, slots::Part};
use crate::schedule::rfc3339;

/// One offset change: at `at`, from `before` to `after` seconds east of UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub at: DateTime<Utc>,
    pub before: i32,
    pub after: i32,
}

fn offset(tz: Tz, t: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

/// Every offset change of `tz` in `(from, to]`.
pub fn changes(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Change> {
    let step = Duration::hours(1);
    let mut out = Vec::new();
    let mut lo = from;
    let mut lo_offset = offset(tz, lo);
    while lo < to {
        let hi = lo.checked_add_signed(step).unwrap_or(to).min(to);
        let hi_offset = offset(tz, hi);
        if hi_offset != lo_offset {
            // The offset at `a` is the old one and at `b` the new one: bisect to the second.
            let (mut a, mut b) = (lo, hi);
            while (b - a) > Duration::seconds(1) {
                let mid = a + (b - a) / 2;
                if offset(tz, mid) == lo_offset {
                    a = mid;
                } else {
                    b = mid;
                }
            }
            out.push(Change {
                at: b,
                before: lo_offset,
                after: hi_offset,
            });
        }
        lo = hi;
        lo_offset = hi_offset;
    }
    out
}

/// `+02:00`.
pub fn offset_text(secs: i32) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
}

fn wall(t: DateTime<Utc>, secs: i32) -> Option<NaiveDateTime> {
    t.naive_utc()
        .checked_add_signed(Duration::seconds(i64::from(secs)))
}

/// A transition of `tz` with what it does to each of `parts` in that zone; `shown` bounds the
/// local times listed per effect.
pub fn transition(change: &Change, tz: Tz, parts: &[Part], shown: usize) -> DstTransition {
    let gap = change.after > change.before;
    // The affected wall-clock range: [from, to) does not exist (gap) or happens twice (overlap).
    let (from, to) = if gap {
        (
            wall(change.at, change.before),
            wall(change.at, change.after),
        )
    } else {
        (
            wall(change.at, change.after),
            wall(change.at, change.before),
        )
    };
    let fmt = |n: Option<NaiveDateTime>| {
        n.map(|n| n.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    };
    let effects = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.tz == tz)
        .map(|(i, p)| effect(i, p, change, gap, from.zip(to), shown))
        .collect();
    DstTransition {
        at: rfc3339(change.at),
        time_zone: tz.name().to_string(),
        offset_before: offset_text(change.before),
        offset_after: offset_text(change.after),
        kind: if gap { "gap" } else { "overlap" },
        local_from: fmt(from),
        local_to: fmt(to),
        effects,
    }
}

/// The cron matches in the affected wall-clock range, and what the DST rules make of them
/// (the schedule module's: a fixed-hour slot runs once per day-slot, an hour-`*` schedule
/// follows real time).
fn effect(
    index: usize,
    part: &Part,
    change: &Change,
    gap: bool,
    range: Option<(NaiveDateTime, NaiveDateTime)>,
    shown: usize,
) -> DstEffect {
    let summary = part.schedule.summary().to_string();
    let Some(fields) = &part.cron else {
        return DstEffect {
            schedule: index,
            effect: "realTime",
            local_times: Vec::new(),
            runs_at: Vec::new(),
            text: format!(
                "{summary}: fixed instants, nothing skipped or doubled (local times shift by {})",
                offset_text(change.after - change.before)
            ),
        };
    };
    let mut matches = Vec::new();
    let mut total = 0usize;
    if let Some((from, to)) = range {
        let mut cur = from;
        while let Some(m) = fields.next_match(cur) {
            if m >= to {
                break;
            }
            total += 1;
            if matches.len() < shown {
                matches.push(m);
            }
            let Some(next) = m.checked_add_signed(Duration::minutes(1)) else {
                break;
            };
            cur = next;
        }
    }
    let local_times: Vec<String> = matches
        .iter()
        .map(|m| m.format("%H:%M").to_string())
        .collect();
    let more = if total > matches.len() {
        format!(" (and {} more)", total - matches.len())
    } else {
        String::new()
    };
    let list = local_times.join(", ");
    let utc = |m: &NaiveDateTime, offset: i32| {
        m.checked_sub_signed(Duration::seconds(i64::from(offset)))
            .map(|n| rfc3339(n.and_utc()))
            .unwrap_or_default()
    };
    let real_time = fields.hour_is_star();
    let (effect, runs_at, text) = match (total, gap, real_time) {
        (0, _, _) => (
            "none",
            Vec::new(),
            format!("{summary}: no slot in the affected local hour"),
        ),
        (_, true, false) => (
            "moved",
            vec![rfc3339(change.at)],
            format!(
                "{summary}: {list}{more} local does not exist that day: runs once at the end of the gap ({})",
                rfc3339(change.at)
            ),
        ),
        (_, true, true) => (
            "skipped",
            Vec::new(),
            format!("{summary}: {list}{more} local does not exist that day: not run"),
        ),
        (_, false, false) => (
            "once",
            matches.iter().map(|m| utc(m, change.before)).collect(),
            format!(
                "{summary}: {list}{more} local happens twice: runs once, at its first occurrence"
            ),
        ),
        (_, false, true) => (
            "twice",
            matches
                .iter()
                .flat_map(|m| [utc(m, change.before), utc(m, change.after)])
                .collect(),
            format!("{summary}: {list}{more} local happens twice: runs at both"),
        ),
    };
    DstEffect {
        schedule: index,
        effect,
        local_times,
        runs_at,
        text,
    }
}
