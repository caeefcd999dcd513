//! The plan as text for humans (stable: sorted, no clock) and as JSON for machines.

use std::fmt::Write;

use super::{Changes, JobPlan, Plan, Slot, SlotList};

/// Pretty JSON (the shape in docs/plan.md), with a final newline.
pub fn json(plan: &Plan) -> Result<String, serde_json::Error> {
    let mut out = serde_json::to_string_pretty(plan)?;
    out.push('\n');
    Ok(out)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The text report.
pub fn text(plan: &Plan) -> String {
    let mut o = String::new();
    let r = &plan.read;
    // `write!` into a String cannot fail: its results are ignored throughout.
    let _ = writeln!(
        o,
        "kube-beat plan: now {} ({}), window {} (until {})",
        plan.now, plan.now_source, plan.window, plan.window_end
    );
    let _ = writeln!(
        o,
        "read {}: {}, {}, {} ({} ignored)",
        plural(r.files, "file", "files"),
        plural(r.scheduled_jobs, "ScheduledJob", "ScheduledJobs"),
        plural(r.task_functions, "TaskFunction", "TaskFunctions"),
        plural(
            r.schedule_calendars,
            "ScheduleCalendar",
            "ScheduleCalendars"
        ),
        plural(r.other, "other object", "other objects"),
    );
    for e in &plan.errors {
        let _ = writeln!(o, "error: {e}");
    }
    for n in &plan.notes {
        let _ = writeln!(o, "note: {n}");
    }
    for job in &plan.jobs {
        o.push('\n');
        job_text(&mut o, job);
    }
    o.push('\n');
    busiest_text(&mut o, plan);
    for w in &plan.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    let jobs = plan.read.scheduled_jobs;
    let _ = writeln!(
        o,
        "\n{}: {} valid, {} invalid; {}",
        plural(jobs, "job", "jobs"),
        jobs.saturating_sub(plan.invalid),
        plan.invalid,
        plural(plan.errors.len(), "error", "errors"),
    );
    o
}

fn slot_line(o: &mut String, indent: &str, s: &Slot) {
    let _ = write!(o, "{indent}{}  {}", s.utc, s.local);
    if !s.schedules.is_empty() {
        let list: Vec<String> = s.schedules.iter().map(|i| format!("#{i}")).collect();
        let _ = write!(o, "  schedule {}", list.join(", "));
    }
    o.push('\n');
}

fn slots_text(o: &mut String, indent: &str, title: &str, list: &SlotList) {
    let more = if list.capped {
        " or more (enumeration capped)"
    } else {
        ""
    };
    let _ = writeln!(o, "{indent}{title}: {}{more}", list.count);
    for s in &list.shown {
        slot_line(o, &format!("{indent}  "), s);
    }
    if list.count > list.shown.len() {
        let _ = writeln!(o, "{indent}  … {} more", list.count - list.shown.len());
    }
}

fn job_text(o: &mut String, job: &JobPlan) {
    let _ = writeln!(
        o,
        "ScheduledJob {}/{} ({})",
        job.namespace, job.name, job.source
    );
    match &job.error {
        Some(e) => {
            let _ = writeln!(o, "  INVALID: {e}");
        }
        None => {
            let _ = writeln!(o, "  valid");
        }
    }
    for n in &job.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    if let Some(s) = &job.schedule {
        let _ = writeln!(o, "  schedule: {s}");
    }
    if job.schedules.len() > 1 {
        for (i, p) in job.schedules.iter().enumerate() {
            let _ = writeln!(o, "    #{i} {} [{}]", p.summary, p.time_zone);
        }
    }
    if let Some(a) = &job.anchor {
        let why = if a.from == "now" {
            "now: not created yet, interval slots count from when it is applied"
        } else {
            "its creationTimestamp"
        };
        let _ = writeln!(o, "  interval anchor: {} ({why})", a.time);
    }
    if let Some(j) = job.jitter_seconds {
        let _ = writeln!(
            o,
            "  jitter: each run is dispatched up to {j}s after its slot (slots shown without it)"
        );
    }
    if job.suspended {
        let _ = writeln!(o, "  suspended: no runs");
    }
    if job.valid && !job.suspended {
        slots_text(o, "  ", "runs in window", &job.runs);
    }
    for t in &job.dst_transitions {
        let _ = writeln!(
            o,
            "  DST {} {}: {} -> {} ({} {} to {} local)",
            t.at,
            t.time_zone,
            t.offset_before,
            t.offset_after,
            if t.kind == "gap" {
                "clocks go forward, no"
            } else {
                "clocks go back, twice"
            },
            t.local_from,
            t.local_to
        );
        for e in &t.effects {
            let _ = writeln!(o, "    {}: {}", e.effect, e.text);
        }
    }
    if job.exclusions.count > 0 {
        let _ = writeln!(o, "  calendar exclusions: {}", job.exclusions.count);
        for x in &job.exclusions.shown {
            let _ = writeln!(
                o,
                "    {}  {}  {}: {}",
                x.slot.utc, x.slot.local, x.calendar, x.reason
            );
        }
        if job.exclusions.count > job.exclusions.shown.len() {
            let _ = writeln!(
                o,
                "    … {} more",
                job.exclusions.count - job.exclusions.shown.len()
            );
        }
    }
    if let Some(c) = &job.changes {
        changes_text(o, c);
    }
}

fn changes_text(o: &mut String, c: &Changes) {
    match c.state {
        "new" => {
            let _ = writeln!(o, "  against the cluster: new job");
        }
        "unknown" => {
            let _ = writeln!(
                o,
                "  against the cluster: unknown ({})",
                c.error.as_deref().unwrap_or_default()
            );
        }
        state => {
            let _ = writeln!(o, "  against the cluster: {state}");
            for f in &c.fields {
                let _ = writeln!(o, "    {}: {} -> {}", f.path, f.before, f.after);
            }
            if c.runs_added.count > 0 || c.runs_removed.count > 0 {
                slots_text(o, "    ", "runs added", &c.runs_added);
                slots_text(o, "    ", "runs removed", &c.runs_removed);
            }
        }
    }
}

fn busiest_text(o: &mut String, plan: &Plan) {
    let b = &plan.busiest;
    let capped = if b.capped {
        " (lower bounds: some schedules' slots were capped)"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "busiest seconds (runs due at the same instant; warning above {}){capped}:",
        b.threshold
    );
    if b.top.is_empty() {
        let _ = writeln!(o, "  no runs in the window");
    }
    for s in &b.top {
        let jitter = if s.jittered > 0 {
            format!(", {} spread by jitterSeconds", s.jittered)
        } else {
            String::new()
        };
        let more = usize::try_from(s.runs)
            .unwrap_or(usize::MAX)
            .saturating_sub(s.jobs.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  {}  {} run{}{jitter}: {}{more}",
            s.at,
            s.runs,
            if s.runs == 1 { "" } else { "s" },
            s.jobs.join(", ")
        );
    }
}
