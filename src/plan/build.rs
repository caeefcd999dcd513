//! [`build`]: the plan from the objects read, `now` and the window (pure: no clock, no I/O).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::{
    Anchor, Busiest, BusySecond, Calendars, Changes, Exclude, Exclusion, ExclusionList,
    FieldChange, InCluster, Input, JobInput, JobPlan, MAX_SLOTS_PER_SCHEDULE, MAX_SLOTS_TOTAL,
    MAX_VALUE_CHARS, MIN_SLOTS_PER_SCHEDULE, Plan, SchedulePart, SlotList, dst,
    slots::{self, Enumerated, Part},
};
use crate::{api::ScheduledJobSpec, schedule::rfc3339};

/// A job as planned, before rendering.
struct Prepared<'a> {
    input: &'a JobInput,
    spec: Option<ScheduledJobSpec>,
    parts: Vec<Part>,
    anchor: DateTime<Utc>,
    anchor_from: &'static str,
    tz: Tz,
    notes: Vec<String>,
    /// Index into the distinct schedules, when the job runs (valid, not suspended).
    key: Option<usize>,
    end: DateTime<Utc>,
}

/// Build the plan.
pub fn build(input: &Input) -> Plan {
    let end = input
        .now
        .checked_add_signed(input.window)
        .unwrap_or(input.now);
    let mut jobs: Vec<&JobInput> = input.jobs.iter().collect();
    jobs.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.source).cmp(&(&b.namespace, &b.name, &b.source))
    });

    // First pass: each job's schedule, keyed so jobs with the same schedule (thousands on
    // `0 * * * *`) share one enumeration.
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut schedules = Vec::new();
    let prepared: Vec<Prepared<'_>> = jobs
        .into_iter()
        .map(|job| prepare(job, input, end, &mut keys, &mut schedules))
        .collect();
    let per_schedule = (MAX_SLOTS_TOTAL / schedules.len().max(1)).clamp(
        MIN_SLOTS_PER_SCHEDULE.max(input.limits.shown),
        MAX_SLOTS_PER_SCHEDULE,
    );
    let enumerated: Vec<Enumerated> = schedules
        .iter()
        .map(|(schedule, calendars, to)| {
            slots::enumerate(schedule, calendars, input.now, *to, per_schedule)
        })
        .collect();

    let busiest = busiest(&prepared, &enumerated, input);
    let mut warnings = Vec::new();
    if busiest.seconds_over_threshold > 0
        && let Some(top) = busiest.top.first()
    {
        warnings.push(format!(
            "{} second(s) in the window have more than {} runs due at once (the busiest: {} runs at {}): spread them with jitterSeconds or different minutes",
            busiest.seconds_over_threshold, busiest.threshold, top.runs, top.at
        ));
    }
    let plans: Vec<JobPlan> = prepared
        .into_iter()
        .map(|p| job_plan(p, &enumerated, input, per_schedule))
        .collect();
    Plan {
        now: rfc3339(input.now),
        now_source: if input.now_given { "--now" } else { "clock" },
        window: input.window_text.clone(),
        window_end: rfc3339(end),
        read: input.counts.clone(),
        errors: input.errors.clone(),
        notes: input.notes.clone(),
        invalid: plans.iter().filter(|j| !j.valid).count(),
        jobs: plans,
        busiest,
        warnings,
    }
}

type Distinct = Vec<(
    crate::schedule::JobSchedule,
    Vec<Arc<dyn Exclude>>,
    DateTime<Utc>,
)>;

fn prepare<'a>(
    job: &'a JobInput,
    input: &Input,
    window_end: DateTime<Utc>,
    keys: &mut HashMap<String, usize>,
    schedules: &mut Distinct,
) -> Prepared<'a> {
    let spec_value = job.value.get("spec").cloned().unwrap_or(Value::Null);
    let spec: Option<ScheduledJobSpec> = serde_json::from_value(spec_value.clone()).ok();
    let cluster_created = match &job.cluster {
        InCluster::Present(v) => created(v),
        _ => None,
    };
    let (anchor, anchor_from) = match cluster_created.or_else(|| created(&job.value)) {
        Some(t) => (t, "creationTimestamp"),
        None => (input.now, "now"),
    };
    let parts = slots::parts(&spec_value, anchor);
    let tz = parts.first().map_or(Tz::UTC, |p| p.tz);
    let mut notes = job.notes.clone();
    let calendars = calendars_of(&spec_value, &input.calendars, &mut notes);
    let end = end_time(&spec_value).map_or(window_end, |t| t.min(window_end));
    if let Some(n) = spec_value.get("maxRuns").and_then(Value::as_i64) {
        notes.push(format!(
            "maxRuns {n}: the job stops after {n} scheduled runs (runs so far are not counted here)"
        ));
    }
    let key = match &spec {
        Some(spec) if job.error.is_none() && !spec.suspend => {
            slots::job_schedule(spec, anchor).ok().map(|schedule| {
                let anchored = slots::anchored(&parts);
                let key = serde_json::json!([
                    spec_value.get("schedule"),
                    spec_value.get("schedules"),
                    spec_value.get("timeZone"),
                    spec_value.get("startTime"),
                    rfc3339(end),
                    anchored.then(|| rfc3339(anchor)),
                    spec_value.get("calendars"),
                ])
                .to_string();
                *keys.entry(key).or_insert_with(|| {
                    schedules.push((schedule, calendars.clone(), end));
                    schedules.len() - 1
                })
            })
        }
        _ => None,
    };
    Prepared {
        input: job,
        spec,
        parts,
        anchor,
        anchor_from,
        tz,
        notes,
        key,
        end,
    }
}

/// `spec.endTime`: no slot after it.
fn end_time(spec: &Value) -> Option<DateTime<Utc>> {
    let t = spec.get("endTime")?.as_str()?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `metadata.creationTimestamp`, when the object has one.
fn created(obj: &Value) -> Option<DateTime<Utc>> {
    let t = obj.pointer("/metadata/creationTimestamp")?.as_str()?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The calendars a job names (`spec.calendars`), in its order; one it names but that is not
/// usable is a note (the verdict says whether that makes the job invalid).
fn calendars_of(spec: &Value, known: &Calendars, notes: &mut Vec<String>) -> Vec<Arc<dyn Exclude>> {
    let names = spec
        .get("calendars")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut out = Vec::new();
    for name in names {
        match known.get(name) {
            Some(Ok(c)) => out.push(c.clone()),
            Some(Err(why)) => notes.push(format!(
                "ScheduleCalendar {name:?} is not usable ({why}): its exclusions are not shown"
            )),
            None => notes.push(format!(
                "ScheduleCalendar {name:?} is not in the given files (or the cluster): its exclusions are not shown"
            )),
        }
    }
    out
}

fn slot_list(
    slots: &[DateTime<Utc>],
    capped: bool,
    parts: &[Part],
    tz: Tz,
    shown: usize,
) -> SlotList {
    SlotList {
        count: slots.len(),
        capped,
        shown: slots
            .iter()
            .take(shown)
            .map(|t| slots::slot(*t, parts, tz))
            .collect(),
    }
}

fn job_plan(p: Prepared<'_>, enumerated: &[Enumerated], input: &Input, cap: usize) -> JobPlan {
    let shown = input.limits.shown;
    let empty = Enumerated::default();
    let mine = p.key.and_then(|k| enumerated.get(k)).unwrap_or(&empty);
    let runs = slot_list(&mine.runs, mine.capped, &p.parts, p.tz, shown);
    let exclusions = ExclusionList {
        count: mine.excluded.len(),
        shown: mine
            .excluded
            .iter()
            .take(shown)
            .map(|(t, reason)| exclusion(*t, reason, &p.parts, p.tz))
            .collect(),
    };
    let valid = p.input.error.is_none();
    // Each zone once, in the order of the job's schedules; UTC has no transitions.
    let mut zones: Vec<Tz> = Vec::new();
    for tz in p.parts.iter().map(|x| x.tz) {
        if tz != Tz::UTC && !zones.contains(&tz) {
            zones.push(tz);
        }
    }
    let dst_transitions = if valid {
        zones
            .iter()
            .flat_map(|tz| {
                dst::changes(*tz, input.now, p.end)
                    .into_iter()
                    .map(|c| dst::transition(&c, *tz, &p.parts, shown))
                    .collect::<Vec<_>>()
            })
            .collect()
    } else {
        Vec::new()
    };
    let changes = changes(&p, mine, input, cap);
    let suspended = p.spec.as_ref().is_some_and(|s| s.suspend);
    JobPlan {
        namespace: p.input.namespace.clone(),
        name: p.input.name.clone(),
        source: p.input.source.clone(),
        valid,
        error: p.input.error.clone(),
        notes: p.notes,
        schedule: p
            .spec
            .as_ref()
            .and_then(|s| slots::job_schedule(s, p.anchor).ok())
            .map(|s| s.summary().to_string()),
        schedules: p
            .parts
            .iter()
            .map(|x| SchedulePart {
                summary: x.schedule.summary().to_string(),
                time_zone: x.tz.name().to_string(),
            })
            .collect(),
        suspended,
        anchor: slots::anchored(&p.parts).then(|| Anchor {
            time: rfc3339(p.anchor),
            from: p.anchor_from,
        }),
        jitter_seconds: p
            .spec
            .as_ref()
            .and_then(|s| s.jitter_seconds)
            .filter(|j| *j > 0),
        runs,
        dst_transitions,
        exclusions,
        changes,
    }
}

/// `Calendar: <name>: <reason>` split into the calendar and the reason.
fn exclusion(t: DateTime<Utc>, reason: &str, parts: &[Part], tz: Tz) -> Exclusion {
    let rest = reason.strip_prefix("Calendar: ").unwrap_or(reason);
    let (calendar, why) = rest.split_once(": ").unwrap_or(("", rest));
    Exclusion {
        slot: slots::slot(t, parts, tz),
        calendar: calendar.to_string(),
        reason: why.to_string(),
    }
}

/// What the file changes against the cluster's version of the job.
fn changes(p: &Prepared<'_>, mine: &Enumerated, input: &Input, cap: usize) -> Option<Changes> {
    let cluster = match &p.input.cluster {
        InCluster::NotAsked => return None,
        InCluster::Absent => {
            return Some(Changes {
                state: "new",
                ..Changes::default()
            });
        }
        InCluster::Unreadable(e) => {
            return Some(Changes {
                state: "unknown",
                error: Some(e.clone()),
                ..Changes::default()
            });
        }
        InCluster::Present(v) => v,
    };
    let before_value = cluster.get("spec").cloned().unwrap_or(Value::Null);
    let after_value = p.input.value.get("spec").cloned().unwrap_or(Value::Null);
    let before_spec: Option<ScheduledJobSpec> = serde_json::from_value(before_value.clone()).ok();
    // Compared as the typed spec writes them when both read: the apiserver fills in the
    // schema's defaults (`suspend: false`), which a file leaves out.
    let (before, after) = match (&before_spec, &p.spec) {
        (Some(b), Some(a)) => (
            serde_json::to_value(b).unwrap_or(before_value),
            serde_json::to_value(a).unwrap_or(after_value),
        ),
        _ => (before_value, after_value),
    };
    let mut fields = Vec::new();
    diff("spec", &before, &after, &mut fields);
    // The cluster's version, with the cluster's calendars.
    let mut ignored = Vec::new();
    let before_runs = match &before_spec {
        Some(spec) if !spec.suspend => {
            let spec_value = cluster.get("spec").cloned().unwrap_or(Value::Null);
            let calendars = calendars_of(&spec_value, &input.cluster_calendars, &mut ignored);
            let window_end = input
                .now
                .checked_add_signed(input.window)
                .unwrap_or(input.now);
            let end = end_time(&spec_value).map_or(window_end, |t| t.min(window_end));
            match slots::job_schedule(spec, p.anchor) {
                Ok(schedule) => slots::enumerate(&schedule, &calendars, input.now, end, cap),
                Err(_) => Enumerated::default(),
            }
        }
        _ => Enumerated::default(),
    };
    let now_set: BTreeSet<_> = mine.runs.iter().collect();
    let before_set: BTreeSet<_> = before_runs.runs.iter().collect();
    let added: Vec<DateTime<Utc>> = mine
        .runs
        .iter()
        .filter(|t| !before_set.contains(t))
        .copied()
        .collect();
    let removed: Vec<DateTime<Utc>> = before_runs
        .runs
        .iter()
        .filter(|t| !now_set.contains(t))
        .copied()
        .collect();
    let capped = mine.capped || before_runs.capped;
    let shown = input.limits.shown;
    let before_parts = slots::parts(cluster.get("spec").unwrap_or(&Value::Null), p.anchor);
    Some(Changes {
        state: if fields.is_empty() {
            "unchanged"
        } else {
            "changed"
        },
        error: None,
        fields,
        runs_added: slot_list(&added, capped, &p.parts, p.tz, shown),
        runs_removed: slot_list(&removed, capped, &before_parts, p.tz, shown),
    })
}

/// The leaves that differ between `a` and `b` under `path` (objects compared key by key,
/// anything else as a whole).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    if a == b {
        return;
    }
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for k in keys {
            diff(
                &format!("{path}.{k}"),
                x.get(k).unwrap_or(&Value::Null),
                y.get(k).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    out.push(FieldChange {
        path: path.to_string(),
        before: compact(a),
        after: compact(b),
    });
}

fn compact(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
    cut.push('…');
    cut
}

/// Runs per second over every job that runs, the top ones with their jobs.
fn busiest(prepared: &[Prepared<'_>], enumerated: &[Enumerated], input: &Input) -> Busiest {
    // Per distinct schedule: how many jobs use it, how many of them jitter, and who they are.
    let mut users: Vec<(u64, u64, Vec<String>)> = vec![(0, 0, Vec::new()); enumerated.len()];
    for p in prepared {
        let Some(entry) = p.key.and_then(|k| users.get_mut(k)) else {
            continue;
        };
        entry.0 += 1;
        if p.spec.as_ref().and_then(|s| s.jitter_seconds).unwrap_or(0) > 0 {
            entry.1 += 1;
        }
        entry
            .2
            .push(format!("{}/{}", p.input.namespace, p.input.name));
    }
    let mut per_second: HashMap<i64, u64> = HashMap::new();
    for (e, (count, _, _)) in enumerated.iter().zip(&users) {
        for t in &e.runs {
            *per_second.entry(t.timestamp()).or_insert(0) += count;
        }
    }
    let threshold = input.limits.busy_threshold;
    let over = per_second.values().filter(|c| **c > threshold).count();
    let mut top: Vec<(i64, u64)> = per_second.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(input.limits.top);
    let top = top
        .into_iter()
        .map(|(sec, runs)| {
            let mut jobs = Vec::new();
            let mut jittered = 0;
            for (e, (_, jit, names)) in enumerated.iter().zip(&users) {
                let hit = e.runs.binary_search_by(|t| t.timestamp().cmp(&sec)).is_ok();
                if hit {
                    jittered += jit;
                    jobs.extend(names.iter().cloned());
                }
            }
            jobs.sort();
            jobs.truncate(input.limits.shown);
            BusySecond {
                at: rfc3339(DateTime::from_timestamp(sec, 0).unwrap_or_default()),
                runs,
                jittered,
                jobs,
            }
        })
        .collect();
    Busiest {
        threshold,
        seconds_over_threshold: over,
        capped: enumerated.iter().any(|e| e.capped),
        top,
    }
}
