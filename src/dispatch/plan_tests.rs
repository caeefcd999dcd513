//! Tests of `dispatch::plan`: one job, and a claim batch.
#![allow(clippy::arithmetic_side_effects)]
use super::*;
use crate::api::{IntervalSchedule, Schedule};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn every(seconds: i64) -> JobSchedule {
    let s = Schedule {
        interval: Some(IntervalSchedule {
            hours: 0,
            minutes: 0,
            seconds,
        }),
        ..Default::default()
    };
    JobSchedule::from_spec(&s, None, None, t("2026-01-01T00:00:00Z")).expect("valid")
}

fn job(seconds: i64, slot: &str) -> DueJob {
    DueJob {
        uid: "u".into(),
        schedule: every(seconds),
        slot: t(slot),
        starting_deadline_seconds: None,
        jitter_seconds: 0,
        policy: ConcurrencyPolicy::Allow,
        active: false,
        paused: false,
        max_runs: None,
        scheduled_runs: 0,
    }
}

#[test]
fn on_time_run() {
    let p = plan(
        &job(10, "2026-01-01T00:00:10Z"),
        t("2026-01-01T00:00:10.050Z"),
    );
    assert_eq!(p.outcome, Outcome::Run);
    assert_eq!(
        (p.slot, p.coalesced, p.trigger()),
        (t("2026-01-01T00:00:10Z"), 1, "schedule")
    );
    assert_eq!(p.next_slot, Some(t("2026-01-01T00:00:20Z")));
    assert_eq!(p.next_run, p.next_slot);
}

#[test]
fn downtime_coalesces_into_one_run() {
    // Down from 00:00:10 to 00:01:05: six slots due, one run for the latest.
    let p = plan(&job(10, "2026-01-01T00:00:10Z"), t("2026-01-01T00:01:05Z"));
    assert_eq!(p.outcome, Outcome::Run);
    assert_eq!(
        (p.slot, p.coalesced, p.trigger()),
        (t("2026-01-01T00:01:00Z"), 6, "catchup")
    );
    assert_eq!(p.next_slot, Some(t("2026-01-01T00:01:10Z")));
}

#[test]
fn deadline_misses() {
    let mut j = job(60, "2026-01-01T00:01:00Z");
    j.starting_deadline_seconds = Some(5);
    assert_eq!(plan(&j, t("2026-01-01T00:01:04Z")).outcome, Outcome::Run);
    let p = plan(&j, t("2026-01-01T00:01:06Z"));
    assert_eq!(p.outcome, Outcome::Missed);
    assert_eq!(p.next_slot, Some(t("2026-01-01T00:02:00Z")));
    // After a long outage the latest slot decides: still within its deadline, it runs.
    let p = plan(&j, t("2026-01-01T00:10:03Z"));
    assert_eq!(
        (p.outcome, p.coalesced, p.slot),
        (Outcome::Run, 10, t("2026-01-01T00:10:00Z"))
    );
}

#[test]
fn forbid_skips_while_active() {
    let mut j = job(10, "2026-01-01T00:00:10Z");
    j.policy = ConcurrencyPolicy::Forbid;
    j.active = true;
    assert_eq!(
        plan(&j, t("2026-01-01T00:00:10Z")).outcome,
        Outcome::Skipped
    );
    j.active = false;
    assert_eq!(plan(&j, t("2026-01-01T00:00:10Z")).outcome, Outcome::Run);
    j.policy = ConcurrencyPolicy::Allow;
    j.active = true;
    assert_eq!(plan(&j, t("2026-01-01T00:00:10Z")).outcome, Outcome::Run);
}

#[test]
fn jitter_delays_the_next_run_only() {
    let mut j = job(60, "2026-01-01T00:01:00Z");
    j.jitter_seconds = 30;
    let p = plan(&j, t("2026-01-01T00:01:40Z"));
    let next_slot = p.next_slot.expect("next");
    let delay = p.next_run.expect("run") - next_slot;
    assert!(
        delay >= TimeDelta::zero() && delay < TimeDelta::seconds(30),
        "{delay:?}"
    );
    assert_eq!(
        delay,
        crate::schedule::jitter("u", next_slot, 30),
        "deterministic"
    );
}

#[test]
fn extreme_values_plan_without_panicking() {
    // Values no longer accepted by validation, but possibly in rows stored before it.
    for deadline in [i64::MAX, i64::MIN, 0] {
        let mut j = job(1, "2026-01-01T00:00:10Z");
        j.starting_deadline_seconds = Some(deadline);
        let p = plan(&j, t("2026-01-01T00:00:12.500Z"));
        assert!(p.next_run.is_some(), "deadline {deadline}");
        let late = deadline == 0 || deadline == i64::MIN;
        assert_eq!(p.outcome == Outcome::Missed, late, "deadline {deadline}");
    }
    // A jitter of i64::MAX seconds: the run lands somewhere (or nowhere), never a panic.
    let mut j = job(1, "2026-01-01T00:00:10Z");
    j.jitter_seconds = i64::MAX;
    j.starting_deadline_seconds = Some(i64::MAX);
    let p = plan(&j, t("2026-01-01T00:00:12Z"));
    assert!(p.due_at >= p.slot);
    // A one-shot slot at the very end of chrono's range, with a day of jitter.
    let end = DateTime::<Utc>::MAX_UTC;
    let j = DueJob {
        jitter_seconds: 86_400,
        starting_deadline_seconds: Some(i64::MAX),
        slot: end,
        ..job(1, "2026-01-01T00:00:10Z")
    };
    let p = plan(&j, end);
    assert_eq!(
        p.due_at, end,
        "an overflowing jitter leaves the slot as it is"
    );
    assert_eq!(p.next_run, None);
}

#[test]
fn one_shot_ends() {
    let s = Schedule {
        at: Some("2026-06-01T00:00:00Z".into()),
        ..Default::default()
    };
    let schedule =
        JobSchedule::from_spec(&s, None, None, t("2026-01-01T00:00:00Z")).expect("valid");
    let j = DueJob {
        schedule,
        ..job(1, "2026-06-01T00:00:00Z")
    };
    let p = plan(&j, t("2026-06-01T00:00:00.200Z"));
    assert_eq!(p.outcome, Outcome::Run);
    assert_eq!((p.next_slot, p.next_run), (None, None));
}

/// A due row as the claim query returns it: every `every` seconds from the anchor.
fn due_row(id: i64, every: i64, next_run: &str) -> DueRow {
    let every = serde_json::json!({"interval": {"seconds": every}});
    DueRow::for_test(id, every, t("2026-01-01T00:00:00Z"), t(next_run))
}

fn ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("task-{n}")
    }
}

#[test]
fn a_batch_plans_one_row_and_one_update_per_job() {
    let now = t("2026-01-01T00:00:10.5Z");
    // Job 1 is due; job 2 is claimed ahead of its time (an Allow job).
    let rows = vec![
        due_row(1, 10, "2026-01-01T00:00:10Z"),
        due_row(2, 10, "2026-01-01T00:00:20Z"),
    ];
    let b = plan_batch(rows, now, false, ids());
    assert_eq!(b.stats.jobs, 2);
    assert_eq!(b.stats.runs, 2);
    assert_eq!(b.stats.due_now, 1, "only job 1 is due already");
    assert_eq!(b.stats.job_ids, [1, 2]);
    assert!(b.stats.events.is_empty() && b.replace.is_empty());
    let e = &b.executions;
    assert_eq!(
        (
            e[0].job_id,
            e[0].state,
            e[0].task_id.as_str(),
            e[0].trigger.as_str()
        ),
        (1, "PENDING", "task-1", "schedule")
    );
    assert_eq!(e[0].slot_key, "2026-01-01T00:00:10Z");
    assert_eq!(e[0].publish_after, t("2026-01-01T00:00:10Z"));
    // Planned as at its due time: not late, nothing coalesced, published at its time.
    assert_eq!((e[1].task_id.as_str(), e[1].coalesced), ("task-2", 1));
    assert_eq!(e[1].publish_after, t("2026-01-01T00:00:20Z"));
    assert_eq!(
        b.advances[0],
        JobAdvance {
            job_id: 1,
            next_run: Some(t("2026-01-01T00:00:20Z")),
            next_slot: Some(t("2026-01-01T00:00:20Z")),
            last_run: Some(t("2026-01-01T00:00:10Z")),
            runs: 1,
            missed: 0,
            skipped: 0,
            claimed_until: Some(t("2026-01-01T00:00:10Z")),
            failed_run: 0,
            excused_at: None,
        }
    );
    assert_eq!(b.advances[1].next_run, Some(t("2026-01-01T00:00:30Z")));
}

#[test]
fn shadow_mode_records_shadow_runs() {
    let now = t("2026-01-01T00:00:10Z");
    let b = plan_batch(
        vec![due_row(1, 10, "2026-01-01T00:00:10Z")],
        now,
        true,
        ids(),
    );
    assert_eq!(b.executions[0].state, "SHADOW");
    assert_eq!(b.stats.runs, 1);
}

#[test]
fn late_slots_are_missed_skipped_or_replaced_by_policy() {
    let now = t("2026-01-01T00:01:05Z");
    // Down since 00:00:10: six slots due; with a 3 s deadline the latest is too late.
    let mut missed = due_row(1, 10, "2026-01-01T00:00:10Z");
    missed.starting_deadline_seconds = Some(3);
    let mut forbid = due_row(2, 60, "2026-01-01T00:01:00Z");
    (forbid.concurrency_policy, forbid.active) = ("Forbid".into(), true);
    let mut replace = due_row(3, 60, "2026-01-01T00:01:00Z");
    (replace.concurrency_policy, replace.active) = ("Replace".into(), true);
    let catchup = due_row(4, 10, "2026-01-01T00:00:10Z");
    let b = plan_batch(vec![missed, forbid, replace, catchup], now, false, ids());
    let states: Vec<_> = b.executions.iter().map(|e| e.state).collect();
    assert_eq!(states, ["MISSED", "SKIPPED", "PENDING", "PENDING"]);
    assert_eq!(b.executions[0].coalesced, 6);
    assert_eq!(b.executions[3].trigger, "catchup");
    assert_eq!((b.advances[0].runs, b.advances[0].missed), (0, 6));
    // One MISSED row: the failure streak grows by one, not by the slots it stands for.
    assert_eq!(b.advances[0].failed_run, 1);
    assert_eq!(b.advances[3].failed_run, 0);
    assert_eq!((b.advances[1].runs, b.advances[1].skipped), (0, 1));
    assert_eq!((b.advances[3].runs, b.advances[3].missed), (1, 5));
    assert_eq!(
        b.replace,
        [3],
        "only the Replace job revokes its unfinished run"
    );
    assert_eq!((b.stats.runs, b.stats.missed, b.stats.skipped), (2, 11, 1));
    let reasons: Vec<_> = b
        .stats
        .events
        .iter()
        .map(|e| (e.job.name.as_str(), e.reason))
        .collect();
    assert_eq!(
        reasons,
        [("job-1", Reason::Missed), ("job-2", Reason::Skipped)]
    );
}

#[test]
fn an_unreadable_stored_schedule_parks_its_job_and_the_batch_goes_on() {
    let now = t("2026-01-01T00:00:10Z");
    let mut bad = due_row(1, 10, "2026-01-01T00:00:10Z");
    bad.schedule_config = serde_json::json!({"interval": "every now and then"});
    let good = due_row(2, 10, "2026-01-01T00:00:10Z");
    let b = plan_batch(vec![bad, good], now, false, ids());
    assert_eq!(b.stats.unreadable, 1);
    assert_eq!(b.executions.len(), 1);
    assert_eq!(b.executions[0].job_id, 2);
    assert_eq!(
        b.advances[0],
        JobAdvance {
            job_id: 1,
            ..Default::default()
        },
        "parked: no next run"
    );
    assert_eq!(b.stats.events[0].reason, Reason::DispatchFailed);
    assert!(b.stats.events[0].message.contains("re-apply the job"));
}

#[test]
fn a_paused_job_records_its_slot_as_skipped_with_reason_paused_even_when_late() {
    let now = t("2026-01-01T00:01:05Z");
    let mut paused = due_row(1, 10, "2026-01-01T00:00:10Z");
    (paused.paused, paused.starting_deadline_seconds) = (true, Some(3));
    let b = plan_batch(vec![paused], now, false, ids());
    let e = &b.executions[0];
    assert_eq!((e.state, e.error.as_deref()), ("SKIPPED", Some("Paused")));
    assert_eq!(
        b.advances[0].failed_run, 0,
        "a paused slot is not a failure"
    );
    assert_eq!((b.advances[0].runs, b.advances[0].skipped), (0, 1));
    assert_eq!(b.advances[0].next_run, Some(t("2026-01-01T00:01:10Z")));
    assert_eq!(b.stats.events[0].reason, Reason::Skipped);
    assert!(b.stats.events[0].message.contains("paused"));
}
