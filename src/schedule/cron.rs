//! Cron expressions exactly as Kubernetes CronJob reads them (robfig/cron v3 `ParseStandard`).
//!
//! Written by hand because no crate matches robfig: the `cron` crate ANDs day-of-month with
//! day-of-week, needs 6-7 fields and numbers Sunday 1; `croner` accepts syntax robfig rejects
//! (`L`, `W`, `#`, `7`) and resolves DST differently. Error messages reproduce robfig's wording so
//! a user sees what `kubectl` users of CronJob would see.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

use super::duration::parse_go_duration;

/// A parsed standard cron expression (minute resolution), or an `@every` interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronExpr {
    Fields(CronFields),
    /// `@every <duration>`: a fixed period in whole seconds (robfig rounds down, minimum 1 s).
    Every(Duration),
}

/// The five fields as bit sets, plus robfig's "star" marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronFields {
    minutes: u64,
    hours: u32,
    dom: u32,
    months: u16,
    dow: u8,
    dom_star: bool,
    dow_star: bool,
    hour_star: bool,
}

#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MONTH_NAMES: &[(&str, u32)] = &[
    ("jan", 1),
    ("feb", 2),
    ("mar", 3),
    ("apr", 4),
    ("may", 5),
    ("jun", 6),
    ("jul", 7),
    ("aug", 8),
    ("sep", 9),
    ("oct", 10),
    ("nov", 11),
    ("dec", 12),
];
const DOW_NAMES: &[(&str, u32)] = &[
    ("sun", 0),
    ("mon", 1),
    ("tue", 2),
    ("wed", 3),
    ("thu", 4),
    ("fri", 5),
    ("sat", 6),
];
const MINUTE: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    min: 1,
    max: 12,
    names: MONTH_NAMES,
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: DOW_NAMES,
};

/// robfig stops searching five years ahead and reports "never"; so do we.
const SEARCH_YEARS: i32 = 5;

/// Parse like robfig's `ParseStandard`. The error is robfig's message.
pub fn parse(spec: &str) -> Result<CronExpr, String> {
    if spec.is_empty() {
        return Err("empty spec string".into());
    }
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        // robfig accepts a zone prefix; Kubernetes (>= 1.27) rejects it in favour of a field.
        return Err(
            "TZ= and CRON_TZ= are not supported in the expression: use spec.timeZone".into(),
        );
    }
    if spec.starts_with('@') {
        return parse_descriptor(spec);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let minutes = field(fields[0], MINUTE)?;
    let hours = field(fields[1], HOUR)?;
    let dom = field(fields[2], DOM)?;
    let months = field(fields[3], MONTH)?;
    let dow = field(fields[4], DOW)?;
    Ok(CronExpr::Fields(CronFields {
        minutes: minutes.bits,
        hours: u32::try_from(hours.bits).map_err(|_| "hour bits overflow".to_string())?,
        dom: u32::try_from(dom.bits).map_err(|_| "day bits overflow".to_string())?,
        months: u16::try_from(months.bits).map_err(|_| "month bits overflow".to_string())?,
        dow: u8::try_from(dow.bits).map_err(|_| "weekday bits overflow".to_string())?,
        dom_star: dom.star,
        dow_star: dow.star,
        hour_star: hours.star,
    }))
}

fn parse_descriptor(spec: &str) -> Result<CronExpr, String> {
    let standard = match spec {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            if let Some(d) = spec.strip_prefix("@every ") {
                let nanos = parse_go_duration(d)
                    .map_err(|e| format!("failed to parse duration {spec}: {e}"))?;
                // robfig: below one second becomes one second; otherwise truncate to seconds.
                let secs = if nanos < 1_000_000_000 {
                    1
                } else {
                    nanos / 1_000_000_000
                };
                let secs = i64::try_from(secs).map_err(|_| format!("duration too long: {spec}"))?;
                return Ok(CronExpr::Every(Duration::seconds(secs)));
            }
            return Err(format!("unrecognized descriptor: {spec}"));
        }
    };
    parse(standard)
}

struct Field {
    bits: u64,
    star: bool,
}

fn field(text: &str, b: Bounds) -> Result<Field, String> {
    let mut out = Field {
        bits: 0,
        star: false,
    };
    // robfig splits with strings.FieldsFunc, which drops empty parts: "1,,2" is "1,2".
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let r = range(part, b)?;
        out.bits |= r.bits;
        out.star |= r.star;
    }
    Ok(out)
}

fn range(expr: &str, b: Bounds) -> Result<Field, String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_high.len() == 1;
    let (start, mut end, mut star);
    if low_high[0] == "*" || low_high[0] == "?" {
        start = b.min;
        end = b.max;
        star = true;
    } else {
        start = int_or_name(low_high[0], b)?;
        end = match low_high.len() {
            1 => start,
            2 => int_or_name(low_high[1], b)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        star = false;
    }
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = parse_int(range_and_step[1])?;
            // "N/step" means N through the maximum.
            if single {
                end = b.max;
            }
            // "*/1" keeps the star mark (it matters for the day-of-month/day-of-week rule);
            // any larger step clears it.
            if step > 1 {
                star = false;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    let mut bits = 0u64;
    let mut i = start;
    while i <= end {
        bits |= 1 << i;
        i += step;
    }
    Ok(Field { bits, star })
}

fn int_or_name(expr: &str, b: Bounds) -> Result<u32, String> {
    let lower = expr.to_ascii_lowercase();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    parse_int(expr)
}

/// Go's `strconv.Atoi` (optional sign, ASCII digits) followed by robfig's negativity check.
fn parse_int(expr: &str) -> Result<u32, String> {
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    let valid = !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit());
    if !valid {
        return Err(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": invalid syntax"
        ));
    }
    let value: i64 = match digits.parse::<i64>() {
        Ok(v) if expr.starts_with('-') => -v,
        Ok(v) => v,
        Err(_) => {
            return Err(format!(
                "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": value out of range"
            ));
        }
    };
    if value < 0 {
        return Err(format!("negative number ({value}) not allowed: {expr}"));
    }
    // Anything this large fails the range check anyway; clamp so the check reports it.
    Ok(u32::try_from(value).unwrap_or(u32::MAX).min(1000))
}

impl CronFields {
    /// Whether the hour field is a star (`*`, `?`, `*/1`): such schedules follow real time
    /// across DST changes; fixed-hour schedules run once per wall-clock slot.
    pub fn hour_is_star(&self) -> bool {
        self.hour_star
    }

    fn day_matches(&self, d: NaiveDate) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().num_days_from_sunday()) != 0;
        // robfig: if either field is a star, both must match; otherwise either may.
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first matching wall-clock minute at or after `from` (seconds are ignored: `from` is
    /// rounded up to a whole minute), or `None` within the five-year search horizon.
    pub fn next_match(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut t = from.with_nanosecond(0)?;
        if t.second() != 0 {
            t = t.with_second(0)?.checked_add_signed(Duration::minutes(1))?;
        }
        let limit = from.year().saturating_add(SEARCH_YEARS);
        loop {
            if t.year() > limit {
                return None;
            }
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year().checked_add(1)?, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = NaiveDate::from_ymd_opt(y, m, 1)?.and_time(NaiveTime::MIN);
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().succ_opt()?.and_time(NaiveTime::MIN);
                continue;
            }
            match next_bit(self.hours.into(), t.hour()) {
                None => {
                    t = t.date().succ_opt()?.and_time(NaiveTime::MIN);
                    continue;
                }
                Some(h) if h != t.hour() => {
                    t = t.date().and_hms_opt(h, 0, 0)?;
                }
                Some(_) => {}
            }
            match next_bit(self.minutes, t.minute()) {
                None => {
                    t = t
                        .date()
                        .and_hms_opt(t.hour(), 0, 0)?
                        .checked_add_signed(Duration::hours(1))?;
                    continue;
                }
                Some(m) => return t.with_minute(m),
            }
        }
    }
}

/// The lowest set bit at or above `from`.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let masked = bits & (!0u64 << from);
    (masked != 0).then(|| masked.trailing_zeros())
}
