//! Tests of `dispatch::plan` for a job's end (`endTime`, `maxRuns`) and several schedules.
#![allow(clippy::arithmetic_side_effects)]
use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// Every 10 s from 2026-01-01T00:00:00Z, ending at `end`, with `max_runs` after `runs`.
fn job(slot: &str, end: Option<&str>, max_runs: Option<i64>, runs: i64) -> DueJob {
    let schedule = JobSchedule::from_stored(
        &serde_json::json!({"interval": {"seconds": 10}}),
        "UTC",
        None,
        t("2026-01-01T00:00:00Z"),
    )
    .expect("valid")
    .with_end(end.map(t));
    DueJob {
        uid: "u".into(),
        schedule,
        slot: t(slot),
        starting_deadline_seconds: None,
        jitter_seconds: 0,
        policy: ConcurrencyPolicy::Allow,
        active: false,
        paused: false,
        max_runs,
        scheduled_runs: runs,
    }
}

fn row(id: i64, config: serde_json::Value, next_run: &str) -> DueRow {
    DueRow::for_test(id, config, t("2026-01-01T00:00:00Z"), t(next_run))
}

fn ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("task-{n}")
    }
}

#[test]
fn the_last_run_before_max_runs_has_no_next_slot() {
    let p = plan(
        &job("2026-01-01T00:00:20Z", None, Some(3), 1),
        t("2026-01-01T00:00:20Z"),
    );
    assert_eq!(p.outcome, Outcome::Run);
    assert_eq!(p.next_slot, Some(t("2026-01-01T00:00:30Z")));
    let p = plan(
        &job("2026-01-01T00:00:30Z", None, Some(3), 2),
        t("2026-01-01T00:00:30Z"),
    );
    assert_eq!(p.outcome, Outcome::Run);
    assert_eq!((p.next_slot, p.next_run), (None, None), "the third run");
}

#[test]
fn skipped_and_missed_slots_do_not_count() {
    // The last allowed run is skipped (Forbid): the job goes on to its next slot.
    let mut j = job("2026-01-01T00:00:30Z", None, Some(3), 2);
    j.policy = ConcurrencyPolicy::Forbid;
    j.active = true;
    let p = plan(&j, t("2026-01-01T00:00:30Z"));
    assert_eq!(p.outcome, Outcome::Skipped);
    assert_eq!(p.next_slot, Some(t("2026-01-01T00:00:40Z")));
    // Missed (too late for the deadline): the same.
    let mut j = job("2026-01-01T00:00:30Z", None, Some(3), 2);
    j.starting_deadline_seconds = Some(1);
    let p = plan(&j, t("2026-01-01T00:00:35Z"));
    assert_eq!(p.outcome, Outcome::Missed);
    assert_eq!(p.next_slot, Some(t("2026-01-01T00:00:40Z")));
}

#[test]
fn no_next_slot_past_end_time_and_no_catch_up_past_it() {
    let p = plan(
        &job(
            "2026-01-01T00:00:20Z",
            Some("2026-01-01T00:00:30Z"),
            None,
            0,
        ),
        t("2026-01-01T00:00:20Z"),
    );
    assert_eq!(p.next_slot, Some(t("2026-01-01T00:00:30Z")), "at endTime");
    let p = plan(
        &job(
            "2026-01-01T00:00:30Z",
            Some("2026-01-01T00:00:30Z"),
            None,
            0,
        ),
        t("2026-01-01T00:00:30Z"),
    );
    assert_eq!((p.next_slot, p.next_run), (None, None));
    // Back after downtime past endTime: the last slot before it runs (catchup), nothing after.
    let p = plan(
        &job(
            "2026-01-01T00:00:10Z",
            Some("2026-01-01T00:00:35Z"),
            None,
            0,
        ),
        t("2026-01-01T00:05:00Z"),
    );
    assert_eq!(
        (p.slot, p.coalesced, p.trigger(), p.next_slot),
        (t("2026-01-01T00:00:30Z"), 3, "catchup", None)
    );
}

#[test]
fn a_batch_counts_runs_and_stops_a_job_at_its_end() {
    let every = serde_json::json!({"interval": {"seconds": 10}});
    let mut last = row(1, every.clone(), "2026-01-01T00:00:30Z");
    last.max_runs = Some(3);
    last.scheduled_runs = 2;
    // maxRuns lowered below the count after this slot was planned: nothing runs.
    let mut over = row(2, every.clone(), "2026-01-01T00:00:30Z");
    over.max_runs = Some(2);
    over.scheduled_runs = 2;
    // endTime moved before the planned slot: nothing runs.
    let mut ended = row(3, every, "2026-01-01T00:00:30Z");
    ended.end_time = Some(t("2026-01-01T00:00:25Z"));
    let b = plan_batch(
        vec![last, over, ended],
        t("2026-01-01T00:00:30Z"),
        false,
        ids(),
    );
    assert_eq!(b.executions.len(), 1, "{:?}", b.executions);
    assert_eq!(b.executions[0].job_id, 1);
    assert_eq!(b.executions[0].trigger, "schedule");
    let adv = |id: i64| {
        b.advances
            .iter()
            .find(|a| a.job_id == id)
            .expect("advance")
            .clone()
    };
    assert_eq!((adv(1).runs, adv(1).next_run), (1, None));
    assert_eq!(
        adv(2),
        JobAdvance {
            job_id: 2,
            ..Default::default()
        }
    );
    assert_eq!(adv(3).next_run, None);
    assert_eq!(adv(3).runs, 0);
    // Their statuses are rewritten (Complete).
    assert_eq!(b.stats.job_ids, [1, 2, 3]);
}

#[test]
fn a_stored_union_runs_a_shared_instant_once() {
    let both = serde_json::json!([
        {"interval": {"seconds": 2}, "timeZone": "UTC"},
        {"cron": "@every 3s", "timeZone": "UTC"}
    ]);
    // At 00:00:06 both schedules are due: one execution, the next slot 00:00:08.
    let b = plan_batch(
        vec![row(1, both, "2026-01-01T00:00:06Z")],
        t("2026-01-01T00:00:06Z"),
        false,
        ids(),
    );
    assert_eq!(b.executions.len(), 1);
    assert_eq!(b.executions[0].slot_key, "2026-01-01T00:00:06Z");
    assert_eq!(b.advances[0].next_slot, Some(t("2026-01-01T00:00:08Z")));
}
