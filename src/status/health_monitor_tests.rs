use super::*;
use crate::health::ResolvedHealth;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn row(id: i64, policy: ResolvedHealth) -> HealthRow {
    HealthRow {
        id,
        uid: format!("uid-{id}"),
        namespace: "team-a".into(),
        name: format!("job-{id}"),
        task_name: "kb.echo".into(),
        queue: "q".into(),
        task_function: "echo".into(),
        enabled: true,
        due: true,
        health: sqlx::types::Json(policy),
        consecutive_failures: 0,
        last_success_at: Some(t("2026-03-01T11:59:55Z")),
        health_baseline_at: t("2026-03-01T00:00:00Z"),
        paused_at: None,
        pause_reason: None,
        oldest_started: None,
        health_status: None,
        health_reason: None,
        health_message: None,
    }
}

fn pausing() -> ResolvedHealth {
    ResolvedHealth {
        stale_after_seconds: Some(60),
        max_consecutive_failures: Some(3),
        pause_on_breach: true,
        metrics: true,
        ..Default::default()
    }
}

fn ready(_: &str, _: &str) -> WorkerSignal {
    WorkerSignal::Ready
}

const NOW: &str = "2026-03-01T12:00:00Z";

#[test]
fn a_new_healthy_job_is_written_once_without_an_event() {
    let rows = [row(1, pausing())];
    let plan = plan_pass(&rows, t(NOW), &ready, 10);
    assert_eq!(plan.writes.len(), 1);
    assert_eq!(
        (plan.writes[0].status, plan.writes[0].reason),
        ("True", "Healthy")
    );
    assert!(plan.writes[0].flipped && plan.writes[0].pause.is_none());
    assert!(plan.events.is_empty());
    // Stored as judged: the next pass writes nothing.
    let mut stored = row(1, pausing());
    let w = &plan.writes[0];
    (
        stored.health_status,
        stored.health_reason,
        stored.health_message,
    ) = (
        Some(w.status.into()),
        Some(w.reason.into()),
        Some(w.message.clone()),
    );
    let again = plan_pass(&[stored], t(NOW), &ready, 10);
    assert!(again.writes.is_empty() && again.events.is_empty());
}

#[test]
fn a_breach_under_pause_pauses_in_the_same_write_with_one_event() {
    let mut r = row(1, pausing());
    r.consecutive_failures = 3;
    r.health_status = Some("True".into());
    r.health_reason = Some("Healthy".into());
    let plan = plan_pass(&[r], t(NOW), &ready, 10);
    let w = &plan.writes[0];
    assert_eq!((w.status, w.reason), ("False", "Paused"));
    assert_eq!(
        w.pause.as_deref(),
        Some("ConsecutiveFailures: 3 runs in a row failed (maxConsecutiveFailures: 3)")
    );
    assert!(w.flipped);
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.events[0].reason, Reason::Paused);
    assert!(plan.events[0].message.contains("ConsecutiveFailures"));
}

#[test]
fn notify_only_marks_unhealthy_then_recovered() {
    let mut policy = pausing();
    policy.pause_on_breach = false;
    let mut r = row(1, policy.clone());
    r.last_success_at = Some(t("2026-03-01T11:50:00Z"));
    r.health_status = Some("True".into());
    let plan = plan_pass(&[r], t(NOW), &ready, 10);
    assert_eq!(
        (plan.writes[0].reason, plan.writes[0].pause.is_none()),
        ("Stale", true)
    );
    assert_eq!(plan.events[0].reason, Reason::Unhealthy);
    assert!(plan.events[0].message.starts_with("Stale: "));
    // Succeeds again: Recovered.
    let mut r = row(1, policy);
    r.health_status = Some("False".into());
    r.health_reason = Some("Stale".into());
    let plan = plan_pass(&[r], t(NOW), &ready, 10);
    assert_eq!(plan.events[0].reason, Reason::Recovered);
    assert!(plan.writes[0].flipped);
}

#[test]
fn a_new_reason_while_unhealthy_is_a_new_event_but_no_flip() {
    let mut policy = pausing();
    policy.pause_on_breach = false;
    let mut r = row(1, policy);
    r.health_status = Some("False".into());
    r.health_reason = Some("Stale".into());
    let not_registered =
        |_: &str, _: &str| WorkerSignal::TaskNotRegistered("nobody has kb.echo".into());
    let plan = plan_pass(&[r], t(NOW), &not_registered, 10);
    assert_eq!(plan.writes[0].reason, "TaskNotRegistered");
    assert!(!plan.writes[0].flipped, "still False: health_since stays");
    assert_eq!(plan.events[0].reason, Reason::Unhealthy);
}

#[test]
fn per_job_series_are_capped() {
    let rows: Vec<_> = (1..=5).map(|i| row(i, pausing())).collect();
    let plan = plan_pass(&rows, t(NOW), &ready, 3);
    assert_eq!(plan.series.len(), 3);
    assert_eq!(plan.series_dropped, 2);
    assert_eq!(plan.series[0].healthy, 1);
    assert_eq!(
        plan.series[0].last_success,
        Some(t("2026-03-01T11:59:55Z").timestamp())
    );
    let mut quiet = pausing();
    quiet.metrics = false;
    assert!(
        plan_pass(&[row(9, quiet)], t(NOW), &ready, 3)
            .series
            .is_empty()
    );
}

#[test]
fn the_probe_is_asked_once_per_task_and_queue_in_a_pass() {
    let mut rows: Vec<_> = (1..=6).map(|i| row(i, pausing())).collect();
    rows[4].queue = "other".into();
    // Notify only: the breach shows as itself, not as the pause it would cause.
    rows[4].health.0.pause_on_breach = false;
    rows[5].task_name = "kb.fail".into();
    let asked = std::sync::Mutex::new(Vec::new());
    let probe = |task: &str, queue: &str| {
        asked.lock().expect("lock").push(format!("{task}@{queue}"));
        if queue == "other" {
            WorkerSignal::NoWorkers("no consumer".into())
        } else {
            WorkerSignal::Ready
        }
    };
    let plan = plan_pass(&rows, t(NOW), &probe, 10);
    let mut asked = asked.into_inner().expect("lock");
    asked.sort();
    assert_eq!(asked, ["kb.echo@other", "kb.echo@q", "kb.fail@q"]);
    // Each job still gets its own (task, queue)'s answer.
    let reasons: Vec<_> = plan.writes.iter().map(|w| (w.id, w.reason)).collect();
    assert_eq!(reasons.len(), 6);
    assert!(reasons.contains(&(5, "NoWorkers")));
    assert!(reasons.iter().filter(|(_, r)| *r == "Healthy").count() == 5);
}

#[test]
fn a_long_pass_is_followed_by_a_longer_pause() {
    let every = Duration::from_secs(5);
    // Few jobs: every 5 s, as configured.
    assert_eq!(pause_after(every, Duration::from_millis(40)), every);
    // 100,000 jobs, a pass of 1.5 s: judging keeps to a tenth of the time.
    let took = Duration::from_millis(1500);
    let pause = pause_after(every, took);
    assert_eq!(pause, Duration::from_millis(13_500));
    assert!(took.as_secs_f64() / (took + pause).as_secs_f64() <= 0.1 + 1e-9);
    // A very long pass: at most a minute's pause, unless asked for more.
    assert_eq!(pause_after(every, Duration::MAX), PAUSE_MAX);
    let hourly = Duration::from_secs(3600);
    assert_eq!(pause_after(hourly, Duration::from_secs(20)), hourly);
}
