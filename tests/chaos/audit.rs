//! The verdict: a pure function from what the run left behind (the execution rows in Postgres,
//! the Celery worker's durable record of deliveries, what the broker still holds) to a tally per
//! scenario window. No I/O here: the harness gathers the input (`Harness::audit_input`), so every
//! rule below is unit-tested on small hand-made data.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Policy {
    /// No deadline, Allow: late slots are published late or coalesced, never dropped.
    Plain,
    /// `startingDeadlineSeconds: 3`: slots later than that are MISSED.
    Deadline,
    /// `concurrencyPolicy: Forbid`: slots while a run is unfinished are SKIPPED.
    Forbid,
}

/// A job of the load, as the audit needs it: its slots are `period` seconds apart.
#[derive(Clone, Debug)]
pub(crate) struct JobDef {
    pub(crate) name: String,
    pub(crate) period: i64,
    pub(crate) policy: Policy,
}

/// One row of `job_executions` (joined with its job's name).
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct Execution {
    pub(crate) job: String,
    pub(crate) slot: DateTime<Utc>,
    /// How many slots this run stands for (more than 1: a catch-up run coalesced late slots).
    pub(crate) coalesced_slots: i32,
    pub(crate) state: String,
    pub(crate) task_id: String,
    /// `schedule`, `catchup` or `manual`; manual runs are not slots and are not judged.
    pub(crate) trigger: String,
    pub(crate) error: Option<String>,
}

/// One delivery in the Celery worker's durable record (`celery_invocations`), reduced to the
/// headers the audit reads.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    pub(crate) task_id: String,
    /// `kubebeat_job` (empty when absent).
    pub(crate) job: String,
    /// `kubebeat_slot`, RFC 3339 (empty when absent).
    pub(crate) slot: String,
    /// `kubebeat_trigger` is `manual`.
    pub(crate) manual: bool,
    /// The broker marked this delivery `redelivered`: the worker's ack was lost with its
    /// connection and the broker delivered the same message again (not a second publish).
    pub(crate) redelivered: bool,
}

/// Everything the audit judges, gathered after the replicas are stopped.
#[derive(Clone, Debug)]
pub(crate) struct AuditInput {
    pub(crate) jobs: Vec<JobDef>,
    pub(crate) executions: Vec<Execution>,
    pub(crate) deliveries: Vec<Delivery>,
    /// Message bodies in kombu's Redis `unacked` hash (empty on RabbitMQ).
    pub(crate) unacked: Vec<String>,
    /// Message bodies still waiting in the test queue (Redis; empty on RabbitMQ).
    pub(crate) queued: Vec<String>,
    /// Task ids our publisher recorded as enqueued (`kubebeat.sent.*` sets; Redis).
    pub(crate) enqueued: HashSet<String>,
    /// The start of each scenario's window, in order: a finding counts against the last window
    /// that started at or before it (the first window when none did).
    pub(crate) windows: Vec<DateTime<Utc>>,
    /// When the replicas were stopped: a delivery whose slot does not parse counts here.
    pub(crate) stopped: DateTime<Utc>,
    /// Slots after this may be claimed and not yet published when the replicas stopped: not
    /// judged.
    pub(crate) cutoff: DateTime<Utc>,
    /// Every replica's log, for panics.
    pub(crate) logs: Vec<String>,
    /// What the worker-side guard suppressed: (job, slot, deliveries skipped), from its claims.
    pub(crate) suppressed: Vec<(String, String, usize)>,
}

/// What the audit found in one scenario's window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Deliveries of scheduled and catch-up runs, fresh or redelivered.
    pub(crate) runs: usize,
    /// Fresh deliveries beyond the first for one job and slot: a second publish.
    pub(crate) duplicates: usize,
    /// Deliveries the broker marked `redelivered`, and messages held in the broker's unacked
    /// set to be delivered again: published once, so not duplicates.
    pub(crate) redelivered: usize,
    /// Task bodies run again for one task id (fresh or redelivered): what users feel as a
    /// duplicate, whatever its cause. The worker-side guard must keep it at 0.
    pub(crate) ran_twice: usize,
    /// Deliveries the worker-side guard skipped (its claims' `duplicates`).
    pub(crate) suppressed: usize,
    /// Enqueued by us, never run: taken off the queue and dropped by the worker's transport, or
    /// failed by the worker's Celery before the task body ran.
    pub(crate) consumer_dropped: usize,
    /// Slots a catch-up run stood for beyond its own (`coalesced_slots - 1`).
    pub(crate) coalesced: i64,
    /// Slots recorded MISSED under a starting deadline.
    pub(crate) missed: usize,
    /// Slots recorded SKIPPED under `concurrencyPolicy: Forbid`.
    pub(crate) skipped: usize,
    /// Slots recorded DISPATCH_FAILED (and not run).
    pub(crate) dispatch_failed: usize,
    /// Unexplained losses and duplicates: each one fails the run.
    pub(crate) unexplained: Vec<String>,
    /// Explanations of the accounted-for categories, for the results table.
    pub(crate) notes: Vec<String>,
}

/// The audit's verdict: one tally per window (same order as `AuditInput::windows`) and the
/// findings that fail the run outside any window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) windows: Vec<Tally>,
    pub(crate) failures: Vec<String>,
}

impl Verdict {
    /// Nothing unexplained in any window and no failure.
    pub(crate) fn passed(&self) -> bool {
        self.failures.is_empty() && self.windows.iter().all(|w| w.unexplained.is_empty())
    }

    fn total(&self, f: impl Fn(&Tally) -> usize) -> usize {
        self.windows.iter().map(f).sum()
    }
}

/// How one execution row is accounted for.
enum Finding {
    Coalesced(i64),
    Missed,
    Skipped,
    DispatchFailed,
    /// Enqueued, then taken off the queue by the worker's transport and never run.
    Dropped(String),
    /// Failed by the worker's Celery before the task body ran.
    FailedOutside(String),
    /// In the broker's unacked set: delivered again after the visibility timeout.
    Held(String),
    Unexplained(String),
}

/// Judge a run: duplicates from the worker's side, then every slot of every job.
pub(crate) fn audit(input: &AuditInput) -> Verdict {
    let mut verdict = Verdict {
        windows: vec![Tally::default(); input.windows.len().max(1)],
        failures: Vec::new(),
    };
    deliveries(input, &mut verdict);
    let findings = slots(input);
    for (at, finding) in findings {
        let w = &mut verdict.windows[window(&input.windows, at)];
        match finding {
            Finding::Coalesced(n) => w.coalesced += n,
            Finding::Missed => w.missed += 1,
            Finding::Skipped => w.skipped += 1,
            Finding::DispatchFailed => w.dispatch_failed += 1,
            Finding::Dropped(what) => {
                w.consumer_dropped += 1;
                w.notes.push(format!(
                    "{what}: enqueued, then taken off the queue by the worker's transport and never run"
                ));
            }
            Finding::FailedOutside(what) => {
                w.consumer_dropped += 1;
                w.notes.push(format!(
                    "{what}: failed by the worker's Celery before the task body ran \
                     (its result backend connection was reset)"
                ));
            }
            Finding::Held(what) => {
                w.redelivered += 1;
                w.notes.push(format!(
                    "{what}: in the broker's unacked set, redelivered after Celery's visibility timeout"
                ));
            }
            Finding::Unexplained(what) => w.unexplained.push(what),
        }
    }
    // Panics anywhere, in any replica's log.
    let panics = input.logs.iter().filter(|l| l.contains("panicked")).count();
    if panics > 0 {
        verdict
            .failures
            .push(format!("{panics} replica log(s) show a panic"));
    }
    verdict
}

/// The window holding `at`: the last one started at or before it, else the first.
fn window(starts: &[DateTime<Utc>], at: DateTime<Utc>) -> usize {
    starts.iter().rposition(|s| *s <= at).unwrap_or(0)
}

/// A delivery's slot as a time (the stop when it does not parse).
fn slot_time(slot: &str, input: &AuditInput) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(slot)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(input.stopped)
}

/// Duplicates, from the worker's side only.
///
/// A message the broker delivered again because the worker's ack was lost with its connection
/// (Celery's at-least-once consumer) is marked `redelivered` by the broker: it is counted apart.
/// A second *publish* arrives as a fresh delivery: a duplicate.
fn deliveries(input: &AuditInput, verdict: &mut Verdict) {
    // Ordered maps: the findings come out in the same order on every run.
    let mut per_slot: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    // Every body run of a task id, fresh or redelivered, and the slot it counts against.
    let mut bodies: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for d in &input.deliveries {
        if !d.redelivered {
            *per_id.entry(d.task_id.as_str()).or_default() += 1;
        }
        if !d.manual {
            let e = bodies
                .entry(d.task_id.as_str())
                .or_insert((0, d.slot.as_str()));
            e.0 += 1;
        }
        if !d.manual {
            let e = per_slot
                .entry((d.job.as_str(), d.slot.as_str()))
                .or_default();
            if d.redelivered {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
    }
    for ((job, slot), (fresh, again)) in per_slot {
        let at = slot_time(slot, input);
        let w = &mut verdict.windows[window(&input.windows, at)];
        w.runs += fresh + again;
        w.redelivered += again;
        if fresh > 1 {
            w.duplicates += fresh - 1;
            w.unexplained
                .push(format!("{job} @ {slot} was delivered fresh {fresh} times"));
        }
    }
    for (n, slot) in bodies.into_values() {
        if n > 1 {
            verdict.windows[window(&input.windows, slot_time(slot, input))].ran_twice += n - 1;
        }
    }
    for (_, slot, n) in &input.suppressed {
        verdict.windows[window(&input.windows, slot_time(slot, input))].suppressed += n;
    }
    for (id, n) in per_id {
        if n > 1 {
            verdict
                .failures
                .push(format!("Celery task {id} ran {n} times"));
        }
    }
}

/// Losses: every slot is a run, or accounted for by the job's policy, by a catch-up run that
/// coalesced it, or by the broker or the consumer.
fn slots(input: &AuditInput) -> Vec<(DateTime<Utc>, Finding)> {
    let cutoff = input.cutoff;
    let rows: Vec<&Execution> = input
        .executions
        .iter()
        .filter(|e| e.trigger != "manual")
        .collect();
    let mut by_job: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
    for r in &rows {
        by_job.entry(r.job.as_str()).or_default().push(r);
    }
    for slots in by_job.values_mut() {
        // Stable: rows of one slot keep their order.
        slots.sort_by_key(|e| e.slot);
    }
    let defs: HashMap<&str, &JobDef> = input.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let mut findings = Vec::new();
    for def in &input.jobs {
        let slots = by_job.get(def.name.as_str()).cloned().unwrap_or_default();
        let last = slots.last().map(|r| r.slot);
        if last.is_none_or(|t| t < cutoff - chrono::Duration::seconds(def.period + 2)) {
            findings.push((
                last.unwrap_or(cutoff),
                Finding::Unexplained(format!("{}: no run after {last:?} (stalled)", def.name)),
            ));
        }
        for pair in slots.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let covered = i64::from(b.coalesced_slots) * def.period;
            if (b.slot - a.slot).num_seconds() != covered {
                findings.push((
                    b.slot,
                    Finding::Unexplained(format!(
                        "{}: slots {} .. {} not covered",
                        def.name, a.slot, b.slot
                    )),
                ));
            }
        }
    }
    let ran: HashSet<&str> = input
        .deliveries
        .iter()
        .map(|d| d.task_id.as_str())
        .collect();
    for r in rows {
        if r.slot > cutoff {
            continue;
        }
        let policy = defs.get(r.job.as_str()).map_or(Policy::Plain, |d| d.policy);
        if r.coalesced_slots > 1 {
            findings.push((r.slot, Finding::Coalesced(i64::from(r.coalesced_slots - 1))));
        }
        if let Some(f) = account(input, &ran, policy, r) {
            findings.push((r.slot, f));
        }
    }
    findings
}

/// How one execution row is explained; `None` when it simply ran.
fn account(
    input: &AuditInput,
    ran: &HashSet<&str>,
    policy: Policy,
    r: &Execution,
) -> Option<Finding> {
    let id = r.task_id.as_str();
    let was_run = ran.contains(id);
    // On Redis, a message the worker had taken but not acked when its connection broke waits
    // in kombu's `unacked` hash for the visibility timeout (1 h) before it is delivered again:
    // published once, not lost, not run yet.
    let held = !was_run && input.unacked.iter().any(|m| m.contains(id));
    // Enqueued by us (its task id is in our record), no longer queued nor held, never run: the
    // worker's transport took it and dropped it (a connection lost mid-delivery).
    let dropped = !was_run
        && !held
        && !input.queued.iter().any(|m| m.contains(id))
        && input.enqueued.contains(id);
    // Failed by the worker's Celery before the task body ran: recording the start in the
    // result backend hit a connection the broker's restart had reset (Celery's trace_task ->
    // store_result, "Exception raised outside body"); it then stored the FAILURE. Delivered
    // once; the failure is the consumer's, and status shows it.
    let failed_outside = !was_run
        && r.error.as_deref().is_some_and(|e| {
            ["ConnectionError", "BusyLoadingError"]
                .iter()
                .any(|c| e.contains(c))
        });
    let what = format!("{} @ {}: {}, ran: {was_run}", r.job, r.slot, r.state);
    Some(match r.state.as_str() {
        "DISPATCHED" | "STARTED" | "RETRY" | "LOST" if held => Finding::Held(what),
        "FAILURE" if failed_outside => Finding::FailedOutside(what),
        "DISPATCHED" | "STARTED" | "RETRY" | "LOST" if dropped => Finding::Dropped(what),
        "MISSED" if policy == Policy::Deadline && !was_run => Finding::Missed,
        "SKIPPED" if policy == Policy::Forbid && !was_run => Finding::Skipped,
        "DISPATCH_FAILED" if !was_run => Finding::DispatchFailed,
        "DISPATCHED" | "STARTED" | "RETRY" | "SUCCESS" | "FAILURE" | "LOST" if was_run => {
            return None;
        }
        _ => Finding::Unexplained(what),
    })
}

#[cfg(test)]
mod tests {
    //! One test per verdict: each builds a small run by hand (no services, no environment) and
    //! checks what the audit makes of it.

    use super::*;

    /// 2026-01-01T00:00:00Z plus `s` seconds.
    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap()
    }

    fn job(name: &str, period: i64, policy: Policy) -> JobDef {
        JobDef {
            name: name.to_string(),
            period,
            policy,
        }
    }

    fn exec(job: &str, slot: i64, state: &str) -> Execution {
        Execution {
            job: job.to_string(),
            slot: at(slot),
            coalesced_slots: 1,
            state: state.to_string(),
            task_id: format!("{job}-{slot}"),
            trigger: "schedule".to_string(),
            error: None,
        }
    }

    /// A fresh delivery of `e`'s task, as the worker records it.
    fn delivery(e: &Execution) -> Delivery {
        Delivery {
            task_id: e.task_id.clone(),
            job: format!("ns/{}", e.job),
            slot: e.slot.to_rfc3339(),
            manual: false,
            redelivered: false,
        }
    }

    /// A one-window run of `jobs`: every execution is delivered once, the cutoff just after the
    /// last slot.
    fn run(jobs: Vec<JobDef>, executions: Vec<Execution>) -> AuditInput {
        let last = executions.iter().map(|e| e.slot).max().unwrap_or(at(0));
        AuditInput {
            jobs,
            deliveries: executions
                .iter()
                .filter(|e| e.state == "SUCCESS")
                .map(delivery)
                .collect(),
            executions,
            unacked: Vec::new(),
            queued: Vec::new(),
            enqueued: HashSet::new(),
            windows: vec![at(0)],
            stopped: last + chrono::Duration::seconds(9),
            cutoff: last + chrono::Duration::seconds(1),
            logs: vec!["acquired leader".to_string()],
            suppressed: Vec::new(),
        }
    }

    /// Job `j` (1 s period): slots 0..n, all SUCCESS.
    fn steady(n: i64) -> AuditInput {
        run(
            vec![job("j", 1, Policy::Plain)],
            (0..n).map(|s| exec("j", s, "SUCCESS")).collect(),
        )
    }

    fn only(v: &Verdict) -> &Tally {
        assert_eq!(v.windows.len(), 1);
        &v.windows[0]
    }

    #[test]
    fn a_clean_run_passes() {
        let v = audit(&steady(5));
        assert!(v.passed(), "{v:#?}");
        assert_eq!(
            only(&v),
            &Tally {
                runs: 5,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn a_second_publish_of_a_slot_is_a_duplicate() {
        let mut input = steady(5);
        // The slot published again under a new task id: a fresh delivery, not a redelivery.
        let mut again = input.deliveries[2].clone();
        again.task_id = "j-2-second".to_string();
        input.deliveries.push(again);
        let v = audit(&input);
        assert!(!v.passed());
        let t = only(&v);
        assert_eq!((t.duplicates, t.redelivered, t.runs), (1, 0, 6));
        assert_eq!(t.unexplained.len(), 1, "{:?}", t.unexplained);
        assert!(t.unexplained[0].contains("delivered fresh 2 times"));
    }

    #[test]
    fn one_task_id_delivered_fresh_twice_is_a_duplicate_and_a_failure() {
        let mut input = steady(5);
        input.deliveries.push(input.deliveries[1].clone());
        let v = audit(&input);
        assert!(!v.passed());
        assert_eq!(only(&v).duplicates, 1);
        assert_eq!(v.failures, vec!["Celery task j-1 ran 2 times".to_string()]);
    }

    #[test]
    fn a_broker_redelivery_is_counted_apart_not_a_duplicate() {
        let mut input = steady(5);
        let mut again = input.deliveries[3].clone();
        again.redelivered = true;
        input.deliveries.push(again);
        let v = audit(&input);
        assert!(v.passed(), "{v:#?}");
        let t = only(&v);
        assert_eq!((t.redelivered, t.duplicates, t.runs), (1, 0, 6));
        assert_eq!(t.ran_twice, 1, "the body ran a second time");
    }

    #[test]
    fn a_redelivery_of_a_message_never_run_is_not_a_second_run() {
        let mut input = steady(5);
        // Slot 3's only run came from a redelivery (its first delivery was prefetched, never
        // started): once, so not "ran twice".
        input.deliveries[3].redelivered = true;
        let v = audit(&input);
        let t = only(&v);
        assert_eq!((t.redelivered, t.ran_twice, t.runs), (1, 0, 5));
    }

    #[test]
    fn what_the_guard_suppressed_counts_in_its_slots_window() {
        let mut input = steady(6);
        input.windows = vec![at(0), at(3)];
        input.suppressed = vec![
            ("ns/j".to_string(), at(1).to_rfc3339(), 2),
            ("ns/j".to_string(), at(4).to_rfc3339(), 5),
        ];
        let v = audit(&input);
        assert!(v.passed(), "{v:#?}");
        assert_eq!((v.windows[0].suppressed, v.windows[1].suppressed), (2, 5));
        assert_eq!(v.windows[0].ran_twice + v.windows[1].ran_twice, 0);
    }

    #[test]
    fn a_message_held_unacked_is_a_redelivery_not_a_loss() {
        let mut input = steady(5);
        input.executions[4].state = "DISPATCHED".to_string();
        input.deliveries.retain(|d| d.task_id != "j-4");
        input.unacked = vec![r#"{"headers": {"id": "j-4"}}"#.to_string()];
        let v = audit(&input);
        assert!(v.passed(), "{v:#?}");
        let t = only(&v);
        assert_eq!((t.redelivered, t.consumer_dropped, t.runs), (1, 0, 4));
        assert!(t.notes[0].contains("unacked"));
    }

    #[test]
    fn a_catch_up_run_covering_coalesced_slots_is_not_a_loss() {
        // Slots 0, 1, then one catch-up run at 4 standing for 2, 3 and 4.
        let mut execs = vec![exec("j", 0, "SUCCESS"), exec("j", 1, "SUCCESS")];
        let mut catchup = exec("j", 4, "SUCCESS");
        catchup.coalesced_slots = 3;
        catchup.trigger = "catchup".to_string();
        execs.push(catchup);
        let v = audit(&run(vec![job("j", 1, Policy::Plain)], execs));
        assert!(v.passed(), "{v:#?}");
        assert_eq!((only(&v).coalesced, only(&v).runs), (2, 3));
    }

    #[test]
    fn a_catch_up_run_covering_too_few_slots_leaves_a_loss() {
        let mut execs = vec![exec("j", 0, "SUCCESS"), exec("j", 1, "SUCCESS")];
        let mut catchup = exec("j", 4, "SUCCESS");
        catchup.coalesced_slots = 2; // stands for 3 and 4: slot 2 is gone
        execs.push(catchup);
        let v = audit(&run(vec![job("j", 1, Policy::Plain)], execs));
        assert!(!v.passed());
        let t = only(&v);
        assert_eq!(t.unexplained.len(), 1, "{:?}", t.unexplained);
        assert!(t.unexplained[0].contains("not covered"));
    }

    #[test]
    fn recorded_missed_and_skipped_slots_are_accounted_not_losses() {
        let v = audit(&run(
            vec![job("d", 2, Policy::Deadline), job("f", 3, Policy::Forbid)],
            vec![
                exec("d", 0, "SUCCESS"),
                exec("d", 2, "MISSED"),
                exec("d", 4, "SUCCESS"),
                exec("f", 0, "SUCCESS"),
                exec("f", 3, "SKIPPED"),
                exec("f", 6, "SUCCESS"),
            ],
        ));
        assert!(v.passed(), "{v:#?}");
        let t = only(&v);
        assert_eq!((t.missed, t.skipped, t.runs), (1, 1, 4));
    }

    #[test]
    fn missed_without_a_deadline_is_a_loss() {
        let v = audit(&run(
            vec![job("j", 1, Policy::Plain)],
            vec![
                exec("j", 0, "SUCCESS"),
                exec("j", 1, "MISSED"),
                exec("j", 2, "SUCCESS"),
            ],
        ));
        assert!(!v.passed());
        assert_eq!(only(&v).missed, 0);
        assert_eq!(only(&v).unexplained.len(), 1);
    }

    #[test]
    fn enqueued_and_never_run_is_dropped_by_the_consumer() {
        let mut input = steady(5);
        input.executions[2].state = "DISPATCHED".to_string();
        input.deliveries.retain(|d| d.task_id != "j-2");
        input.enqueued.insert("j-2".to_string());
        let v = audit(&input);
        assert!(v.passed(), "{v:#?}");
        let t = only(&v);
        assert_eq!((t.consumer_dropped, t.redelivered), (1, 0));
        assert!(t.notes[0].contains("taken off the queue"));
    }

    #[test]
    fn failed_before_the_task_body_is_dropped_by_the_consumer() {
        let mut input = steady(5);
        input.executions[2].state = "FAILURE".to_string();
        input.executions[2].error = Some("redis.exceptions.ConnectionError: reset".to_string());
        input.deliveries.retain(|d| d.task_id != "j-2");
        let v = audit(&input);
        assert!(v.passed(), "{v:#?}");
        assert_eq!(only(&v).consumer_dropped, 1);
    }

    #[test]
    fn published_and_never_run_nor_enqueued_is_a_loss() {
        // Same as the dropped case, but our publisher never recorded it: unexplained.
        let mut input = steady(5);
        input.executions[2].state = "DISPATCHED".to_string();
        input.deliveries.retain(|d| d.task_id != "j-2");
        let v = audit(&input);
        assert!(!v.passed());
        assert_eq!(only(&v).consumer_dropped, 0);
        assert_eq!(only(&v).unexplained.len(), 1);
    }

    #[test]
    fn still_queued_is_not_dropped() {
        let mut input = steady(5);
        input.executions[2].state = "DISPATCHED".to_string();
        input.deliveries.retain(|d| d.task_id != "j-2");
        input.enqueued.insert("j-2".to_string());
        input.queued = vec![r#"{"headers": {"id": "j-2"}}"#.to_string()];
        let v = audit(&input);
        assert_eq!(only(&v).consumer_dropped, 0);
        assert_eq!(only(&v).unexplained.len(), 1);
    }

    #[test]
    fn dispatch_failed_is_accounted() {
        let mut input = steady(5);
        input.executions[1].state = "DISPATCH_FAILED".to_string();
        input.deliveries.retain(|d| d.task_id != "j-1");
        let v = audit(&input);
        assert!(v.passed(), "{v:#?}");
        assert_eq!(only(&v).dispatch_failed, 1);
    }

    #[test]
    fn a_gap_in_slots_is_a_loss() {
        let v = audit(&run(
            vec![job("j", 1, Policy::Plain)],
            vec![
                exec("j", 0, "SUCCESS"),
                exec("j", 1, "SUCCESS"),
                exec("j", 3, "SUCCESS"), // slot 2 has no row
            ],
        ));
        assert!(!v.passed());
        let t = only(&v);
        assert_eq!(t.unexplained.len(), 1, "{:?}", t.unexplained);
        assert!(t.unexplained[0].contains("not covered"));
    }

    #[test]
    fn a_job_that_stopped_running_is_a_loss() {
        let mut input = steady(10);
        input.jobs.push(job("stops", 1, Policy::Plain));
        input.jobs.push(job("idle", 1, Policy::Plain));
        for s in 0..3 {
            let e = exec("stops", s, "SUCCESS");
            input.deliveries.push(delivery(&e));
            input.executions.push(e);
        }
        let v = audit(&input);
        assert!(!v.passed());
        let t = only(&v);
        assert_eq!(t.unexplained.len(), 2, "{:?}", t.unexplained);
        assert!(t.unexplained[0].starts_with("stops: no run after Some("));
        assert!(t.unexplained[1].starts_with("idle: no run after None (stalled)"));
    }

    #[test]
    fn slots_after_the_cutoff_are_not_judged() {
        let mut input = steady(5);
        input.executions.push(exec("j", 5, "DISPATCHED"));
        input.cutoff = at(4);
        assert!(audit(&input).passed());
        // The same slot before the cutoff is judged: published, never run, not enqueued.
        input.cutoff = at(6);
        assert!(!audit(&input).passed());
    }

    #[test]
    fn manual_runs_are_not_slots() {
        let mut input = steady(5);
        let mut manual = exec("j", 2, "DISPATCHED");
        manual.trigger = "manual".to_string();
        manual.task_id = "manual-1".to_string();
        input.executions.push(manual);
        let v = audit(&input);
        assert!(v.passed(), "{v:#?}");
    }

    #[test]
    fn findings_count_against_the_window_they_fall_in() {
        let mut input = steady(10);
        input.windows = vec![at(0), at(5)];
        input.executions[7].state = "DISPATCHED".to_string();
        input.deliveries.retain(|d| d.task_id != "j-7");
        input.enqueued.insert("j-7".to_string());
        let v = audit(&input);
        assert_eq!(v.windows.len(), 2);
        assert_eq!((v.windows[0].runs, v.windows[1].runs), (5, 4));
        assert_eq!(v.windows[0].consumer_dropped, 0);
        assert_eq!(v.windows[1].consumer_dropped, 1);
        assert_eq!(v.total(|t| t.consumer_dropped), 1);
    }

    #[test]
    fn a_panic_in_a_replica_log_fails_the_run() {
        let mut input = steady(5);
        input
            .logs
            .push("thread 'main' panicked at src/x.rs".to_string());
        let v = audit(&input);
        assert_eq!(
            v.failures,
            vec!["1 replica log(s) show a panic".to_string()]
        );
    }
}
