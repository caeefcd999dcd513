//! Celery's own schedule objects (`crontab`, `schedule`) in kube-beat's terms, shared by the
//! celery-beat and RedBeat readers (RedBeat stores the same objects, JSON-encoded).
//!
//! Celery's crontab fields are expanded here exactly as `celery.schedules.crontab_parser` expands
//! them (wrap-around ranges, names, steps over the expanded range), then written back as a cron
//! field kube-beat reads the same way: a full field becomes `*`, so day-of-month/day-of-week keep
//! Celery's "both must match" meaning wherever cron can say it.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::{Candidate, Difference};

/// Which scheduler the entry comes from (the difference texts name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    CeleryBeat,
    RedBeat,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Self::CeleryBeat => "Celery beat",
            Self::RedBeat => "RedBeat",
        }
    }
}

/// A schedule as the source library holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Sched {
    /// `crontab(minute, hour, day_of_week, day_of_month, month_of_year)`: each field as given
    /// (a string, a number or a list of numbers).
    Crontab(Box<Crontab>),
    /// `schedule(run_every)` in seconds, and its `relative` flag.
    Interval { seconds: f64, relative: bool },
}

/// A crontab's fields as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Crontab {
    pub minute: Value,
    pub hour: Value,
    pub day_of_week: Value,
    pub day_of_month: Value,
    pub month_of_year: Value,
}

/// One entry of the source, read but not interpreted.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub task: String,
    pub schedule: Sched,
    /// IANA zone the schedule is evaluated in (`None`: not known, UTC assumed).
    pub time_zone: Option<String>,
    pub args: Value,
    pub kwargs: Value,
    /// `options` of the entry (Celery's `apply_async` options), `expires` already split into
    /// seconds (`expires`) or an absolute instant (`expires_at`, RFC 3339).
    pub options: Map<String, Value>,
    pub enabled: bool,
    /// RedBeat's `last_run_at` (the anchor of an interval).
    pub last_run_at: Option<DateTime<Utc>>,
}

/// The options turned into spec fields; the rest reported.
const OPTION_FIELDS: &[(&str, &str)] = &[
    ("queue", "queue"),
    ("exchange", "exchange"),
    ("routing_key", "routingKey"),
    ("priority", "priority"),
    ("headers", "headers"),
    ("time_limit", "timeLimit"),
    ("soft_time_limit", "softTimeLimit"),
    ("ignore_result", "ignoreResult"),
];

/// Longest interval kube-beat accepts (100 years), in seconds.
const MAX_INTERVAL_SECONDS: f64 = 3_153_600_000.0;

/// The candidate for one entry, or why it cannot be converted.
pub fn candidate(source: Source, e: Entry, now: DateTime<Utc>) -> Result<Candidate, String> {
    let mut spec = Map::new();
    let mut differences = Vec::new();
    let tz = e.time_zone.clone().unwrap_or_else(|| "UTC".into());
    let zone = crate::schedule::parse_tz(&tz)
        .map_err(|_| format!("time zone {tz:?} is not an IANA zone kube-beat knows"))?;
    if e.time_zone.is_none() {
        differences.push(Difference::new(
            "timezone-unknown",
            format!(
                "{} evaluates schedules in the beat app's `timezone`, which the source does not \
                 record; imported as UTC: set `timeZone` if the app used another zone",
                source.name()
            ),
        ));
    }
    match &e.schedule {
        Sched::Crontab(c) => {
            let cron = crontab_to_cron(
                &c.minute,
                &c.hour,
                &c.day_of_week,
                &c.day_of_month,
                &c.month_of_year,
            )?;
            let hour_is_star = cron.split(' ').nth(1) == Some("*");
            spec.insert("schedule".into(), json!({"cron": cron}));
            if tz != "UTC" {
                spec.insert("timeZone".into(), json!(tz));
            }
            if observes_dst(zone, now) {
                differences.push(dst_difference(source, hour_is_star));
            }
        }
        Sched::Interval { seconds, relative } => {
            if !seconds.is_finite() || *seconds < 1.0 || *seconds > MAX_INTERVAL_SECONDS {
                return Err(format!(
                    "an interval of {seconds} s is outside kube-beat's range (1 s to 100 years)"
                ));
            }
            if *relative {
                let s = *seconds;
                let cron = if s == 60.0 {
                    "* * * * *"
                } else if s == 3600.0 {
                    "0 * * * *"
                } else if s == 86400.0 {
                    "0 0 * * *"
                } else {
                    return Err(format!(
                        "relative=True rounds each run to the interval's resolution in local \
                             time; kube-beat has no equivalent for an interval of {s} s (only 1 \
                             minute, 1 hour and 1 day map exactly, to a cron schedule)"
                    ));
                };
                spec.insert("schedule".into(), json!({"cron": cron}));
                if tz != "UTC" {
                    spec.insert("timeZone".into(), json!(tz));
                }
                differences.push(Difference::new(
                    "interval-relative",
                    "relative=True intervals of one minute, hour or day run on the minute, hour or \
                     local midnight: imported as the equivalent cron schedule",
                ));
            } else {
                let whole = seconds.round();
                if whole != *seconds {
                    differences.push(Difference::new(
                        "interval-rounded",
                        "kube-beat intervals are whole seconds: sub-second parts were rounded to \
                         the nearest second",
                    ));
                }
                spec.insert(
                    "schedule".into(),
                    json!({"interval": split_seconds(whole as i64)}),
                );
                match e.last_run_at {
                    Some(last) => {
                        spec.insert("startTime".into(), json!(rfc3339(last)));
                        differences.push(Difference::new(
                            "interval-anchor",
                            format!(
                                "{} runs an interval one interval after the last actual run; \
                                 kube-beat runs it at startTime (the last run) + n × interval, on \
                                 a fixed grid: a late run does not shift the later ones",
                                source.name()
                            ),
                        ));
                    }
                    None => differences.push(Difference::new(
                        "interval-anchor",
                        format!(
                            "{} counts an interval from its own start (or the last run it \
                             remembers) and from each actual run; kube-beat counts from when the \
                             ScheduledJob is first stored, on a fixed grid: a late run does not \
                             shift the later ones",
                            source.name()
                        ),
                    )),
                }
            }
        }
    }
    if source == Source::RedBeat && e.last_run_at.is_none() {
        differences.push(Difference::new(
            "redbeat-never-run",
            "RedBeat runs an entry that never ran at once, then on its schedule; kube-beat runs \
             it first at its next scheduled time (use `kube-beat trigger` for a run now)",
        ));
    }
    if !e.args.as_array().is_some_and(Vec::is_empty) && !e.args.is_null() {
        spec.insert("args".into(), e.args.clone());
    }
    if !e.kwargs.as_object().is_some_and(Map::is_empty) && !e.kwargs.is_null() {
        spec.insert("kwargs".into(), e.kwargs.clone());
    }
    if !e.enabled {
        spec.insert("suspend".into(), json!(true));
    }
    let mut options = e.options.clone();
    for (from, to) in OPTION_FIELDS {
        if let Some(v) = options.remove(*from)
            && !v.is_null()
        {
            spec.insert((*to).into(), v);
        }
    }
    if let Some(v) = options.remove("expires") {
        let s = v
            .as_f64()
            .ok_or_else(|| format!("options.expires is not a number: {v}"))?;
        let whole = s.ceil();
        if whole != s {
            differences.push(Difference::new(
                "expires-rounded",
                "kube-beat's expiresSeconds is whole seconds: a fractional `expires` was rounded up",
            ));
        }
        spec.insert("expiresSeconds".into(), json!(whole as i64));
    }
    if let Some(v) = options.remove("expires_at") {
        let at = v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .ok_or_else(|| format!("options.expires is not an instant: {v}"))?
            .with_timezone(&Utc);
        if at <= now {
            spec.insert("suspend".into(), json!(true));
        }
        differences.push(Difference::new(
            "expires-datetime",
            "an `expires` instant makes every run after it expire unstarted; kube-beat has no end \
             date: the job is imported suspended if the instant has passed, else it keeps running \
             after it (suspend or delete it then)",
        ));
    }
    if !options.is_empty() {
        let keys: Vec<&str> = options.keys().map(String::as_str).collect();
        differences.push(Difference::new(
            "options-not-imported",
            format!(
                "these apply_async options have no ScheduledJob field and are not imported: {}",
                keys.join(", ")
            ),
        ));
    }
    Ok(Candidate {
        name: e.name,
        task: e.task,
        spec,
        differences,
    })
}

/// Where Celery's wall-clock crontab and kube-beat's DST rule part (found by the fidelity tests,
/// tests/import_celery.rs).
fn dst_difference(source: Source, hour_is_star: bool) -> Difference {
    if hour_is_star {
        Difference::new(
            "crontab-dst-overlap",
            format!(
                "in the repeated hour of a fall-back (e.g. 02:00-03:00 twice), {} runs each slot                  once, at its first occurrence; kube-beat runs a crontab with hour `*` in both                  occurrences (it follows real time, as Kubernetes CronJobs do)",
                source.name()
            ),
        )
    } else {
        Difference::new(
            "crontab-dst-gap",
            format!(
                "a crontab slot in a spring-forward gap (e.g. 02:30 when clocks jump from 02:00 to                  03:00) runs in {} one gap-length after the slot (03:30); kube-beat runs it once                  at the first instant after the gap (03:00). Slots in a fall-back overlap run                  once, at their first occurrence, in both",
                source.name()
            ),
        )
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Seconds as `{hours, minutes, seconds}` (the zero parts left out).
fn split_seconds(total: i64) -> Value {
    let mut m = Map::new();
    let (h, rest) = (total / 3600, total % 3600);
    let (min, s) = (rest / 60, rest % 60);
    for (k, v) in [("hours", h), ("minutes", min), ("seconds", s)] {
        if v != 0 {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

/// Whether the zone's UTC offset changes within the year from `now`.
fn observes_dst(zone: chrono_tz::Tz, now: DateTime<Utc>) -> bool {
    let offset = |t: DateTime<Utc>| {
        use chrono::Offset;
        zone.offset_from_utc_datetime(&t.naive_utc()).fix()
    };
    let first = offset(now);
    (1..=12).any(|m| offset(now + chrono::Duration::days(30 * m)) != first)
}

/// A Celery crontab as a 5-field cron expression that kube-beat evaluates identically.
pub fn crontab_to_cron(
    minute: &Value,
    hour: &Value,
    day_of_week: &Value,
    day_of_month: &Value,
    month_of_year: &Value,
) -> Result<String, String> {
    let field = |name: &str, v: &Value, max: u32, min: u32| {
        expand(v, max, min).map_err(|e| format!("crontab {name} {v}: {e}"))
    };
    let minute = field("minute", minute, 60, 0)?;
    let hour = field("hour", hour, 24, 0)?;
    let dow = field("day_of_week", day_of_week, 7, 0)?;
    let dom = field("day_of_month", day_of_month, 31, 1)?;
    let moy = field("month_of_year", month_of_year, 12, 1)?;
    let full =
        |s: &BTreeSet<u32>, max: u32, min: u32| s.len() == max as usize && s.first() == Some(&min);
    if !full(&dow, 7, 0) && !full(&dom, 31, 1) {
        // Celery runs on days matching both; cron on days matching either.
        return Err(
            "crontab restricts both day_of_month and day_of_week: Celery runs only on days \
             matching both, a cron expression on days matching either (split it into one job \
             per day of month, or check the weekday in the task)"
                .into(),
        );
    }
    Ok([
        render(&minute, 60, 0),
        render(&hour, 24, 0),
        render(&dom, 31, 1),
        render(&moy, 12, 1),
        render(&dow, 7, 0),
    ]
    .join(" "))
}

/// A field's set as cron text: `*`, `*/step`, `a-b/step`, or ranges and values joined by commas.
fn render(set: &BTreeSet<u32>, max: u32, min: u32) -> String {
    let v: Vec<u32> = set.iter().copied().collect();
    if v.len() == max as usize {
        return "*".into();
    }
    if v.len() >= 3 {
        let step = v[1] - v[0];
        if step > 1 && v.windows(2).all(|w| w[1] - w[0] == step) {
            // `*/step` only when it expands to exactly this set.
            if v[0] == min && v[v.len() - 1] + step >= min + max {
                return format!("*/{step}");
            }
            return format!("{}-{}/{step}", v[0], v[v.len() - 1]);
        }
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", v[i], v[j])
        } else {
            v[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

/// `celery.schedules.crontab._expand_cronspec`: a number, a list of numbers, or a string parsed
/// as `crontab_parser(max, min)` parses it.
fn expand(v: &Value, max: u32, min: u32) -> Result<BTreeSet<u32>, String> {
    let check = |n: u32| {
        if n < min || n >= max + min {
            Err(format!("{n} is outside {min}-{}", max + min - 1))
        } else {
            Ok(n)
        }
    };
    let number = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{v} is not a whole number"))
            .and_then(check)
    };
    match v {
        Value::Number(_) => Ok(BTreeSet::from([number(v)?])),
        Value::Array(items) => items.iter().map(number).collect(),
        Value::String(s) => {
            let mut acc = BTreeSet::new();
            for part in s.split(',') {
                if part.is_empty() {
                    return Err("empty part".into());
                }
                for n in parse_part(part, max, min)? {
                    acc.insert(check(n)?);
                }
            }
            if acc.is_empty() {
                return Err("matches nothing".into());
            }
            Ok(acc)
        }
        _ => Err("not a string, number or list".into()),
    }
}

fn parse_part(part: &str, max: u32, min: u32) -> Result<Vec<u32>, String> {
    let star = || (min..max + min).collect::<Vec<u32>>();
    let stepped = |v: Vec<u32>, step: &str| -> Result<Vec<u32>, String> {
        let step: usize = step.parse().map_err(|_| format!("invalid step {step:?}"))?;
        if step == 0 {
            return Err("step 0".into());
        }
        Ok(v.into_iter().step_by(step).collect())
    };
    if part == "*" {
        return Ok(star());
    }
    if let Some(step) = part.strip_prefix("*/") {
        return stepped(star(), step);
    }
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (part, None),
    };
    let values = match range.split_once('-') {
        Some((a, b)) => {
            let (from, to) = (number(a, max, min)?, number(b, max, min)?);
            if to < from {
                // Celery wraps around the field's end.
                (from..min + max).chain(min..=to).collect()
            } else {
                (from..=to).collect()
            }
        }
        None if step.is_some() => return Err(format!("{part:?}: a step needs a range or *")),
        None => vec![number(range, max, min)?],
    };
    match step {
        Some(s) => stepped(values, s),
        None => Ok(values),
    }
}

/// `crontab_parser._expand_number`: a number, a month name or a weekday name (first three
/// letters).
fn number(s: &str, max: u32, min: u32) -> Result<u32, String> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let n = if let Ok(n) = s.parse::<u32>() {
        n
    } else {
        let abbr: String = s.chars().take(3).collect::<String>().to_lowercase();
        if s.chars().all(|c| c.is_ascii_alphabetic()) {
            if let Some(i) = MONTHS.iter().position(|m| *m == abbr) {
                i as u32 + 1
            } else if let Some(i) = DAYS.iter().position(|d| *d == abbr) {
                i as u32
            } else {
                return Err(format!("invalid literal {s:?}"));
            }
        } else {
            return Err(format!("invalid literal {s:?}"));
        }
    };
    if n < min || n > min + max - 1 {
        return Err(format!("{n} is outside {min}-{}", min + max - 1));
    }
    Ok(n)
}

/// The zone a fixed UTC offset cannot name: used by RedBeat's datetime decoding.
pub fn utc_from_parts(
    year: i32,
    month: u32,
    day: u32,
    hms: (u32, u32, u32, u32),
    zone: &Value,
) -> Option<DateTime<Utc>> {
    let naive = chrono::NaiveDate::from_ymd_opt(year, month, day)?
        .and_hms_micro_opt(hms.0, hms.1, hms.2, hms.3)?;
    match zone {
        Value::String(name) => {
            let tz = crate::schedule::parse_tz(name).ok()?;
            tz.from_local_datetime(&naive)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        }
        Value::Number(n) => {
            let secs = n.as_f64()?;
            let off = chrono::FixedOffset::east_opt(secs as i32)?;
            off.from_local_datetime(&naive)
                .single()
                .map(|t| t.with_timezone(&Utc))
        }
        _ => None,
    }
    .filter(|t| t.year() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(m: Value, h: Value, dow: Value, dom: Value, moy: Value) -> Result<String, String> {
        crontab_to_cron(&m, &h, &dow, &dom, &moy)
    }

    #[test]
    fn crontab_fields_expand_as_celery_does() {
        let star = json!("*");
        assert_eq!(
            cron(
                json!("*/15"),
                json!("9-17"),
                json!("mon-fri"),
                star.clone(),
                star.clone()
            )
            .unwrap(),
            "*/15 9-17 * * 1-5"
        );
        // Wrap-around ranges, names, numbers, lists and steps over ranges.
        assert_eq!(
            cron(
                json!(30),
                json!("22-2"),
                json!("sat,sunday"),
                star.clone(),
                json!("jan-mar")
            )
            .unwrap(),
            "30 0-2,22-23 * 1-3 0,6"
        );
        assert_eq!(
            cron(
                json!([0, 30]),
                json!("1-23/2"),
                star.clone(),
                json!("1,15"),
                json!("*/3")
            )
            .unwrap(),
            "0,30 1-23/2 1,15 */3 *"
        );
        // A full field written out is `*`, so cron's day-of-month OR day-of-week never applies.
        assert_eq!(
            cron(
                json!("0"),
                json!("0"),
                json!("0-6"),
                json!("1"),
                star.clone()
            )
            .unwrap(),
            "0 0 1 * *"
        );
        let both = cron(
            json!("0"),
            json!("0"),
            json!("mon"),
            json!("1"),
            star.clone(),
        )
        .unwrap_err();
        assert!(both.contains("both"), "{both}");
        for (field, bad) in [
            ("minute", json!("60")),
            ("minute", json!("3/5")),
            ("minute", json!("x")),
            ("minute", json!("")),
        ] {
            let e = cron(
                bad.clone(),
                star.clone(),
                star.clone(),
                star.clone(),
                star.clone(),
            )
            .unwrap_err();
            assert!(e.contains(field), "{bad}: {e}");
        }
        assert!(
            cron(
                star.clone(),
                star.clone(),
                star.clone(),
                json!("0"),
                star.clone()
            )
            .is_err()
        );
    }

    fn entry(schedule: Sched) -> Entry {
        Entry {
            name: "e".into(),
            task: "t".into(),
            schedule,
            time_zone: Some("Europe/Berlin".into()),
            args: json!([1]),
            kwargs: json!({}),
            options: Map::new(),
            enabled: true,
            last_run_at: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn intervals_options_and_differences() {
        let mut e = entry(Sched::Interval {
            seconds: 5400.5,
            relative: false,
        });
        e.options = json!({"queue": "q", "exchange": "ex", "routing_key": "rk", "priority": 3,
            "headers": {"h": 1}, "expires": 9.5, "countdown": 3})
        .as_object()
        .unwrap()
        .clone();
        e.last_run_at = Some(Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap());
        let c = candidate(Source::RedBeat, e, now()).unwrap();
        assert_eq!(
            Value::Object(c.spec.clone()),
            json!({"schedule": {"interval": {"hours": 1, "minutes": 30, "seconds": 1}},
                "startTime": "2026-11-30T23:00:00Z", "args": [1], "queue": "q", "exchange": "ex",
                "routingKey": "rk", "priority": 3, "headers": {"h": 1}, "expiresSeconds": 10})
        );
        let ids: Vec<&str> = c.differences.iter().map(|d| d.id).collect();
        assert_eq!(
            ids,
            [
                "interval-rounded",
                "interval-anchor",
                "expires-rounded",
                "options-not-imported"
            ]
        );
        assert!(c.differences[3].text.contains("countdown"));

        let c = candidate(
            Source::CeleryBeat,
            entry(Sched::Interval {
                seconds: 3600.0,
                relative: true,
            }),
            now(),
        )
        .unwrap();
        assert_eq!(c.spec["schedule"], json!({"cron": "0 * * * *"}));
        assert_eq!(c.spec["timeZone"], "Europe/Berlin");
        let e = candidate(
            Source::CeleryBeat,
            entry(Sched::Interval {
                seconds: 7200.0,
                relative: true,
            }),
            now(),
        )
        .unwrap_err();
        assert!(e.contains("relative"), "{e}");
        let e = candidate(
            Source::CeleryBeat,
            entry(Sched::Interval {
                seconds: 0.5,
                relative: false,
            }),
            now(),
        )
        .unwrap_err();
        assert!(e.contains("0.5"), "{e}");

        let mut e = entry(Sched::Crontab(Box::new(Crontab {
            minute: json!("30"),
            hour: json!("2"),
            day_of_week: json!("*"),
            day_of_month: json!("*"),
            month_of_year: json!("*"),
        })));
        e.enabled = false;
        e.options
            .insert("expires_at".into(), json!("2026-01-01T00:00:00+00:00"));
        let c = candidate(Source::CeleryBeat, e, now()).unwrap();
        assert_eq!(c.spec["schedule"], json!({"cron": "30 2 * * *"}));
        assert_eq!(c.spec["suspend"], true);
        let ids: Vec<&str> = c.differences.iter().map(|d| d.id).collect();
        assert_eq!(ids, ["crontab-dst-gap", "expires-datetime"]);

        // No DST in UTC; an unknown zone is reported.
        let mut e = entry(Sched::Crontab(Box::new(Crontab {
            minute: json!("0"),
            hour: json!("*"),
            day_of_week: json!("*"),
            day_of_month: json!("*"),
            month_of_year: json!("*"),
        })));
        e.time_zone = None;
        let c = candidate(Source::RedBeat, e, now()).unwrap();
        let ids: Vec<&str> = c.differences.iter().map(|d| d.id).collect();
        assert_eq!(ids, ["timezone-unknown", "redbeat-never-run"]);
        assert!(c.spec.get("timeZone").is_none());
    }

    #[test]
    fn redbeat_datetimes() {
        let t = utc_from_parts(2026, 3, 29, (3, 30, 0, 0), &json!("Europe/Berlin")).unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap());
        let t = utc_from_parts(2026, 3, 29, (3, 30, 0, 0), &json!(7200.0)).unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap());
        assert!(utc_from_parts(2026, 3, 29, (3, 30, 0, 0), &json!("Mars/Base")).is_none());
    }
}
