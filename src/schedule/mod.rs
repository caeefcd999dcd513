//! When is a job due: pure functions of (schedule, anchor, time zone, an instant). No clock reads.
//!
//! Semantics (documented in the README):
//! - `interval`: slots at `anchor + k * period`, k >= 1; the anchor is `startTime` or the moment
//!   the job was first stored (its creation timestamp, identical on every replica).
//! - `cron`: Kubernetes CronJob syntax, read in `timeZone`. A schedule whose hour field is a star
//!   follows real time: every instant whose local time matches runs, so a fall-back overlap runs
//!   twice and a spring-forward gap not at all. A schedule with a fixed hour runs once per
//!   wall-clock slot: a slot inside a gap runs at the first instant after the gap, a slot inside an
//!   overlap at its first occurrence. (Better than CronJob, kubernetes/kubernetes#121594.)
//! - `@every <d>`: like `interval`, but from the anchor's whole second, as robfig/cron's
//!   `ConstantDelaySchedule.Next` (`t + d - t.Nanosecond()`): `@every 5m` stored at
//!   `00:00:00.25` runs at `00:05:00`, `00:10:00`, ... (an `interval` keeps the sub-second part).
//! - `at`: once.
//! - `startTime`: no slot before it.

pub mod cron;
pub mod duration;
mod job;
pub use job::{MAX_SCHEDULES, stored_config};

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, SubsecRound, TimeZone, Utc};
use chrono_tz::Tz;

use crate::api::Schedule;
use cron::{CronExpr, CronFields};

/// A validated schedule, ready to answer "what is the next slot after t": one or several parts
/// (a job's `schedule`, or each of its `schedules`), whose slots are the union (an instant two
/// parts share is one slot), bounded by `startTime` and `endTime`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSchedule {
    /// At least one; the first is the job's "main" part (its zone is [`JobSchedule::time_zone`]).
    parts: Vec<Part>,
    start: Option<DateTime<Utc>>,
    /// `endTime`: no slot after it.
    end: Option<DateTime<Utc>>,
    anchor: DateTime<Utc>,
    /// The status summary: the parts' texts joined by `; `.
    text: String,
}

/// One schedule of a job: a kind read in a zone.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    kind: Kind,
    tz: Tz,
    /// The text the user wrote, for the status summary.
    text: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Periodic(Duration),
    /// `@every`: periodic from the anchor's whole second (robfig drops its sub-second part).
    Every(Duration),
    Cron(CronFields),
    At(DateTime<Utc>),
}

/// The job type names seeded in `scheduler_job_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobType {
    Interval,
    Cron,
    Date,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Interval => "interval",
            JobType::Cron => "cron",
            JobType::Date => "date",
        }
    }
}

/// An invalid schedule; the message is what the user sees in the `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

/// Parse an IANA zone name.
pub fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>().map_err(|_| {
        ScheduleError(format!(
            "unknown time zone {name:?} (expected an IANA name such as Europe/Berlin)"
        ))
    })
}

/// Parse an RFC 3339 instant.
pub fn parse_instant(field: &str, text: &str) -> Result<DateTime<Utc>, ScheduleError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| ScheduleError(format!("{field}: {text:?} is not an RFC 3339 time: {e}")))
}

impl Part {
    /// Validate one schedule read in `tz`. The error names no field of the spec: the caller
    /// says where the schedule came from.
    fn parse(schedule: &Schedule, tz: Tz) -> Result<Part, ScheduleError> {
        let set = [
            schedule.interval.is_some(),
            schedule.cron.is_some(),
            schedule.at.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(ScheduleError(
                "schedule must set exactly one of interval, cron or at".into(),
            ));
        }
        let (kind, text) = if let Some(iv) = &schedule.interval {
            if iv.hours < 0 || iv.minutes < 0 || iv.seconds < 0 {
                return Err(ScheduleError(
                    "interval: hours, minutes and seconds must not be negative".into(),
                ));
            }
            let total = iv
                .hours
                .checked_mul(3600)
                .and_then(|h| iv.minutes.checked_mul(60).and_then(|m| h.checked_add(m)))
                .and_then(|hm| hm.checked_add(iv.seconds))
                .filter(|t| *t <= 366 * 24 * 3600 * 100)
                .ok_or_else(|| ScheduleError("interval is too long".into()))?;
            if total < 1 {
                return Err(ScheduleError("interval must be at least 1 second".into()));
            }
            (
                Kind::Periodic(Duration::seconds(total)),
                format!("every {}", human_duration(total)),
            )
        } else if let Some(expr) = &schedule.cron {
            let kind = match cron::parse(expr)
                .map_err(|e| ScheduleError(format!("invalid cron expression {expr:?}: {e}")))?
            {
                CronExpr::Fields(f) => Kind::Cron(f),
                CronExpr::Every(d) => Kind::Every(d),
            };
            let text = if tz == Tz::UTC {
                expr.clone()
            } else {
                format!("{expr} ({tz})")
            };
            (kind, text)
        } else {
            let text = schedule.at.as_deref().unwrap_or_default();
            let at = parse_instant("at", text)?;
            (Kind::At(at), format!("at {}", rfc3339(at)))
        };
        Ok(Part { kind, tz, text })
    }

    /// The first slot of this part strictly after `after` (`start` and `anchor` as the job's).
    fn next_after(
        &self,
        start: Option<DateTime<Utc>>,
        anchor: DateTime<Utc>,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::At(at) => (*at > after).then_some(*at),
            Kind::Periodic(period) => periodic_next(start.unwrap_or(anchor), *period, after),
            Kind::Every(period) => {
                periodic_next(start.unwrap_or(anchor).trunc_subsecs(0), *period, after)
            }
            Kind::Cron(fields) => cron_next(fields, self.tz, after),
        }
    }

    fn job_type(&self) -> JobType {
        match &self.kind {
            Kind::At(_) => JobType::Date,
            Kind::Periodic(_) => JobType::Interval,
            Kind::Every(_) | Kind::Cron(_) => JobType::Cron,
        }
    }
}

impl JobSchedule {
    /// Validate one schedule (a job's `schedule`) in `time_zone` (default UTC). `anchor` is
    /// when the job was first stored. Jobs are built with [`JobSchedule::from_job_spec`].
    pub fn from_spec(
        schedule: &Schedule,
        time_zone: Option<&str>,
        start_time: Option<&str>,
        anchor: DateTime<Utc>,
    ) -> Result<JobSchedule, ScheduleError> {
        let tz = parse_tz(time_zone.unwrap_or("UTC"))?;
        let start = start_time
            .map(|s| parse_instant("startTime", s))
            .transpose()?;
        let part = Part::parse(schedule, tz)?;
        JobSchedule::from_parts(vec![part], false, start, None, anchor)
    }

    /// Assemble validated parts (`listed`: from `schedules`, for the field names in errors);
    /// refuses a one-shot part before `startTime` (it would never run). `parts` must not be
    /// empty.
    fn from_parts(
        parts: Vec<Part>,
        listed: bool,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        anchor: DateTime<Utc>,
    ) -> Result<JobSchedule, ScheduleError> {
        if parts.is_empty() {
            return Err(ScheduleError("no schedule given".into()));
        }
        for (i, p) in parts.iter().enumerate() {
            if let (Kind::At(at), Some(start)) = (&p.kind, start)
                && *at < start
            {
                let field = if listed {
                    format!("schedules[{i}].at")
                } else {
                    "at".to_string()
                };
                return Err(ScheduleError(format!(
                    "{field} ({}) is before startTime ({}): the job would never run",
                    rfc3339(*at),
                    rfc3339(start)
                )));
            }
        }
        if let (Some(start), Some(end)) = (start, end)
            && end < start
        {
            return Err(ScheduleError(format!(
                "endTime ({}) is before startTime ({}): the job would never run",
                rfc3339(end),
                rfc3339(start)
            )));
        }
        let text = parts
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(JobSchedule {
            parts,
            start,
            end,
            anchor,
            text,
        })
    }

    /// Parse what a user types into `kube-beat next`: a cron expression or a Go-style interval
    /// (`1h30m`), anchored at `from`.
    pub fn from_expression(
        expr: &str,
        tz: &str,
        from: DateTime<Utc>,
    ) -> Result<JobSchedule, ScheduleError> {
        let looks_like_interval = !expr.contains(char::is_whitespace)
            && !expr.starts_with('@')
            && expr.starts_with(|c: char| c.is_ascii_digit() || c == '.');
        if looks_like_interval {
            let nanos = duration::parse_go_duration(expr)
                .map_err(|e| ScheduleError(format!("invalid interval {expr:?}: {e}")))?;
            if nanos < 1_000_000_000 {
                return Err(ScheduleError(format!(
                    "invalid interval {expr:?}: must be at least 1s"
                )));
            }
            let secs = i64::try_from(nanos / 1_000_000_000)
                .map_err(|_| ScheduleError(format!("invalid interval {expr:?}: too long")))?;
            let schedule = Schedule {
                interval: Some(crate::api::IntervalSchedule {
                    hours: 0,
                    minutes: 0,
                    seconds: secs,
                }),
                ..Default::default()
            };
            return JobSchedule::from_spec(&schedule, Some(tz), None, from);
        }
        let schedule = Schedule {
            cron: Some(expr.to_string()),
            ..Default::default()
        };
        JobSchedule::from_spec(&schedule, Some(tz), None, from)
    }

    pub fn job_type(&self) -> JobType {
        let first = self.parts.first().map_or(JobType::Cron, Part::job_type);
        // A union of different kinds is calendar-like: "cron".
        if self.parts.iter().all(|p| p.job_type() == first) {
            first
        } else {
            JobType::Cron
        }
    }

    /// The last instant of a schedule made only of one-shot (`at`) parts: after it, it never
    /// runs again. `None` when any part repeats.
    pub fn once_at(&self) -> Option<DateTime<Utc>> {
        self.parts
            .iter()
            .map(|p| match p.kind {
                Kind::At(at) => Some(at),
                _ => None,
            })
            .try_fold(None::<DateTime<Utc>>, |last, at| {
                at.map(|a| Some(last.map_or(a, |l| l.max(a))))
            })
            .flatten()
    }

    /// The fixed period of a single interval or `@every` schedule (a union of several parts
    /// has none).
    pub fn period(&self) -> Option<Duration> {
        match self.parts.as_slice() {
            [
                Part {
                    kind: Kind::Periodic(p) | Kind::Every(p),
                    ..
                },
            ] => Some(*p),
            _ => None,
        }
    }

    /// The one-shot (`at`) parts: (index of the part, instant).
    pub fn one_shots(&self) -> Vec<(usize, DateTime<Utc>)> {
        self.parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p.kind {
                Kind::At(at) => Some((i, at)),
                _ => None,
            })
            .collect()
    }

    /// How many schedules this is the union of.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// `endTime`, if any.
    pub fn end(&self) -> Option<DateTime<Utc>> {
        self.end
    }

    /// The same schedule ending at `end` (`endTime` stored apart from the schedule).
    pub fn with_end(mut self, end: Option<DateTime<Utc>>) -> JobSchedule {
        self.end = end;
        self
    }

    /// The longest gap between consecutive slots among the next `max_slots` after `from` (and
    /// within about a year of it); `None` with fewer than two slots. For a cron schedule this is
    /// the longest time a healthy job goes without a run.
    pub fn longest_gap(&self, from: DateTime<Utc>, max_slots: usize) -> Option<Duration> {
        if let Some(p) = self.period() {
            return Some(p);
        }
        let horizon = from.checked_add_signed(Duration::days(400))?;
        let mut prev = self.next_after(from)?;
        let mut longest: Option<Duration> = None;
        for _ in 1..max_slots {
            let Some(next) = self.next_after(prev) else {
                break;
            };
            let gap = next.signed_duration_since(prev);
            longest = Some(longest.map_or(gap, |l| l.max(gap)));
            if next > horizon {
                break;
            }
            prev = next;
        }
        longest
    }

    /// Human summary for `status.schedule`.
    pub fn summary(&self) -> &str {
        &self.text
    }

    /// The zone of the first part (the job's `timeZone` for a single schedule).
    pub fn time_zone(&self) -> Tz {
        self.parts.first().map_or(Tz::UTC, |p| p.tz)
    }

    pub fn anchor(&self) -> DateTime<Utc> {
        self.anchor
    }

    pub fn start(&self) -> Option<DateTime<Utc>> {
        self.start
    }

    /// The first slot strictly after `after`: the earliest of the parts' next slots, so an
    /// instant two parts share comes once. `None` if there is none (past `endTime`, an `at` in
    /// the past, or a cron expression with no match in the next five years).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // No slot before startTime: search from just before it.
        let after = match self.start {
            Some(start) if after < start => start.checked_sub_signed(Duration::nanoseconds(1))?,
            _ => after,
        };
        let next = self
            .parts
            .iter()
            .filter_map(|p| p.next_after(self.start, self.anchor, after))
            .min()?;
        match self.end {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }
}

/// `anchor + k * period` for the smallest k >= 1 that is after `after`.
pub fn periodic_next(
    anchor: DateTime<Utc>,
    period: Duration,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let p = period.num_milliseconds();
    if p <= 0 {
        return None;
    }
    let elapsed = (after - anchor).num_milliseconds();
    let k = if elapsed < 0 { 1 } else { elapsed / p + 1 };
    anchor.checked_add_signed(Duration::milliseconds(k.checked_mul(p)?))
}

/// The largest DST shift we allow for (real zones shift by at most 2 h).
const MAX_SHIFT: Duration = Duration::hours(3);

fn offset_secs(tz: Tz, t: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

/// The next cron instant strictly after `after`, with the DST rules in the module docs.
fn cron_next(f: &CronFields, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Checked: `naive_local` panics past the end of chrono's range in a zone ahead of UTC.
    let offset = tz.offset_from_utc_datetime(&after.naive_utc()).fix();
    let local_after = after.naive_utc().checked_add_offset(offset)?;
    // Near a DST change a slot whose wall-clock time is before `after`'s can still lie after it;
    // far from one (the common case) we can start at `after`'s own wall-clock minute.
    let o = offset_secs(tz, after);
    // Checked throughout: near the ends of chrono's range there is simply no next slot.
    let stable = offset_secs(tz, after.checked_sub_signed(MAX_SHIFT)?) == o
        && offset_secs(tz, after.checked_add_signed(MAX_SHIFT)?) == o;
    let mut from = if stable {
        local_after
    } else {
        local_after.checked_sub_signed(MAX_SHIFT)?
    };
    from = from.with_second(0)?.with_nanosecond(0)?;
    let horizon = local_after.checked_add_signed(Duration::days(366 * 5 + 2))?;
    let real_time = f.hour_is_star();
    let mut best: Option<DateTime<Utc>> = None;
    loop {
        let l = f.next_match(from)?;
        if l > horizon {
            return best;
        }
        let resolved = tz.from_local_datetime(&l);
        let ambiguous = matches!(resolved, LocalResult::Ambiguous(..));
        let candidates: [Option<DateTime<Utc>>; 2] = match resolved {
            LocalResult::Single(t) => [Some(t.with_timezone(&Utc)), None],
            LocalResult::Ambiguous(first, second) if real_time => [
                Some(first.with_timezone(&Utc)),
                Some(second.with_timezone(&Utc)),
            ],
            LocalResult::Ambiguous(first, _) => [Some(first.with_timezone(&Utc)), None],
            LocalResult::None if real_time => [None, None],
            LocalResult::None => [gap_end(tz, l), None],
        };
        for c in candidates.into_iter().flatten() {
            if c > after && best.is_none_or(|b| c < b) {
                best = Some(c);
            }
        }
        // Outside an overlap, slots resolve in wall-clock order, so the first hit is the answer.
        // Inside one, a later wall-clock slot's first occurrence can precede an earlier slot's
        // second occurrence: keep looking until the overlap is left.
        if best.is_some() && !ambiguous {
            return best;
        }
        from = l.checked_add_signed(Duration::minutes(1))?;
    }
}

/// The first instant after the spring-forward gap that swallowed the wall-clock time `l`.
fn gap_end(tz: Tz, l: NaiveDateTime) -> Option<DateTime<Utc>> {
    let mut t = l;
    for _ in 0..(MAX_SHIFT.num_minutes()) {
        t = t.checked_add_signed(Duration::minutes(1))?;
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => {
                // Gaps end on whole minutes in every real zone: the first existing minute is the
                // transition instant itself.
                return Some(x.with_timezone(&Utc));
            }
            LocalResult::None => {}
        }
    }
    None
}

use chrono::Timelike;

/// RFC 3339 in UTC with a `Z`, the format used everywhere in status and output.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// RFC 3339 in whole seconds, as the apiserver stores a condition's `lastTransitionTime`.
pub fn rfc3339_seconds(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `5400` → `1h30m`.
pub fn human_duration(total_secs: i64) -> String {
    let (h, m, s) = (total_secs / 3600, (total_secs % 3600) / 60, total_secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A deterministic delay in `[0, jitter_seconds)` for one (job, slot), identical on every replica
/// and every restart. FNV-1a: tiny, stable across Rust versions (std's hasher is not promised to
/// be), and good enough to spread load.
pub fn jitter(job_uid: &str, slot: DateTime<Utc>, jitter_seconds: i64) -> Duration {
    if jitter_seconds <= 0 {
        return Duration::zero();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let slot_ms = slot.timestamp_millis().to_le_bytes();
    for b in job_uid.as_bytes().iter().chain(slot_ms.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let range_ms = u64::try_from(jitter_seconds)
        .unwrap_or(0)
        .saturating_mul(1000);
    Duration::milliseconds(i64::try_from(h % range_ms.max(1)).unwrap_or(0))
}

#[cfg(test)]
mod tests;
