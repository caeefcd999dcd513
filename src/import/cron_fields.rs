//! Cron fields as explicit sets of values: the django-celery-beat and APScheduler readers parse
//! their source's own field syntax (Celery's crontab, APScheduler's expressions) into the set
//! of values it matches, and write that set back as a kube-beat cron field. Going through the
//! set keeps the meaning exact where the syntaxes differ (Celery's wrapping ranges `5-2`,
//! APScheduler's Monday = 0, `*/n` starting at each field's minimum).

use std::collections::BTreeSet;

/// One of the five fields: its name and the values it may hold.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub min: u32,
    pub max: u32,
}

pub const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
};
pub const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
};
pub const DAY_OF_MONTH: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
};
pub const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
};
/// Sunday = 0, as in cron and Celery.
pub const DAY_OF_WEEK: Field = Field {
    name: "day of week",
    min: 0,
    max: 6,
};

/// A set as a cron field: `*` when it holds every value, else a list of values and runs
/// (`1-5,7`). `None` for the empty set (matches nothing: not expressible).
pub fn render(field: Field, set: &BTreeSet<u32>) -> Option<String> {
    if set.is_empty() {
        return None;
    }
    if is_full(field, set) {
        return Some("*".into());
    }
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(match end - start {
            0 => start.to_string(),
            1 => format!("{start},{end}"),
            _ => format!("{start}-{end}"),
        });
    }
    Some(parts.join(","))
}

pub fn is_full(field: Field, set: &BTreeSet<u32>) -> bool {
    (field.min..=field.max).all(|v| set.contains(&v))
}

/// `first..=last` by `step` (all within the field), into `set`.
pub fn add_range(
    field: Field,
    set: &mut BTreeSet<u32>,
    first: u32,
    last: u32,
    step: u32,
) -> Result<(), String> {
    if first < field.min || last > field.max || first > last {
        return Err(format!(
            "{} range {first}-{last} outside {}-{}",
            field.name, field.min, field.max
        ));
    }
    if step == 0 {
        return Err(format!("{}: step 0", field.name));
    }
    set.extend((first..=last).step_by(step as usize));
    Ok(())
}

/// Celery's crontab field syntax (what django-celery-beat stores): comma-separated `*`, `*/n`,
/// `a`, `a-b`, `a-b/n` with names for weekdays (`sun`, `monday`) and months (`jan`); a range
/// whose end is below its start wraps around (Celery's `_expand_range`).
pub fn parse_celery(field: Field, text: &str) -> Result<BTreeSet<u32>, String> {
    let mut set = BTreeSet::new();
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty {} field", field.name));
    }
    for part in text.split(',') {
        let part = part.trim();
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .trim()
                    .parse()
                    .map_err(|_| format!("{}: bad step in {part:?}", field.name))?;
                (r.trim(), step)
            }
            None => (part, 1),
        };
        if range == "*" {
            add_range(field, &mut set, field.min, field.max, step)?;
            continue;
        }
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (celery_value(field, a)?, Some(celery_value(field, b)?)),
            None => (celery_value(field, range)?, None),
        };
        match b {
            // Celery refuses `a/n` ("invalid step"): so do we.
            None if step != 1 => {
                return Err(format!("{}: {part:?} (a step needs a range)", field.name));
            }
            None => add_range(field, &mut set, a, a, 1)?,
            Some(b) if b >= a => add_range(field, &mut set, a, b, step)?,
            // Wrapping range: a..max then min..b, stepped as one sequence.
            Some(b) => {
                let seq: Vec<u32> = (a..=field.max).chain(field.min..=b).collect();
                if a > field.max || b < field.min {
                    return Err(format!("{}: {part:?} out of range", field.name));
                }
                set.extend(seq.into_iter().step_by(step.max(1) as usize));
            }
        }
    }
    Ok(set)
}

fn celery_value(field: Field, text: &str) -> Result<u32, String> {
    let t = text.trim().to_ascii_lowercase();
    if let Ok(n) = t.parse::<u32>() {
        if n < field.min || n > field.max {
            return Err(format!(
                "{} value {n} outside {}-{}",
                field.name, field.min, field.max
            ));
        }
        return Ok(n);
    }
    const DAYS: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let found = if field.name == DAY_OF_WEEK.name {
        DAYS.iter()
            .position(|d| t == *d || (t.len() == 3 && d.starts_with(&t)))
    } else if field.name == MONTH.name {
        MONTHS.iter().position(|m| t == *m).map(|i| i + 1)
    } else {
        None
    };
    found
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| format!("{}: {text:?} is not a value", field.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn celery_fields_as_sets() {
        assert_eq!(parse_celery(MINUTE, "*/15").unwrap(), set(&[0, 15, 30, 45]));
        assert_eq!(parse_celery(HOUR, "2,3").unwrap(), set(&[2, 3]));
        assert_eq!(
            parse_celery(DAY_OF_WEEK, "mon-fri").unwrap(),
            set(&[1, 2, 3, 4, 5])
        );
        assert_eq!(
            parse_celery(DAY_OF_WEEK, "sat-mon").unwrap(),
            set(&[6, 0, 1])
        );
        assert_eq!(
            parse_celery(DAY_OF_MONTH, "*/10").unwrap(),
            set(&[1, 11, 21, 31])
        );
        assert_eq!(parse_celery(MONTH, "jan,dec").unwrap(), set(&[1, 12]));
        assert_eq!(parse_celery(HOUR, "22-2/2").unwrap(), set(&[22, 0, 2]));
        assert!(parse_celery(MINUTE, "60").is_err());
        assert!(parse_celery(MINUTE, "5/2").is_err());
        assert!(parse_celery(MINUTE, "").is_err());
        assert!(parse_celery(DAY_OF_WEEK, "funday").is_err());
    }

    #[test]
    fn sets_as_cron_fields() {
        assert_eq!(render(MINUTE, &(0..60).collect()).unwrap(), "*");
        assert_eq!(
            render(HOUR, &set(&[1, 2, 3, 5, 7, 8])).unwrap(),
            "1-3,5,7,8"
        );
        assert_eq!(render(DAY_OF_WEEK, &set(&[0])).unwrap(), "0");
        assert_eq!(render(MINUTE, &BTreeSet::new()), None);
    }
}
