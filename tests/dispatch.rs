//! Dispatch end to end: real apiserver, Postgres, Redis/RabbitMQ and a real Celery worker whose
//! durable record (not our rows) is the proof of what ran.

mod common;

use std::time::{Duration, Instant};

use common::{
    FAST_LEASE, Fixture, Invocation, Operator, Worker, assert_no_duplicates, eventually, fixture,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_beat::api::ScheduledJob;
use serde_json::{Value, json};

async fn runs_on_the_worker(broker: String) {
    let f = fixture("kbt-disp", broker).await;
    let _worker = f.worker();
    f.task_function("echo", "kb.echo").await;
    f.task_function("sync", "tasks.ad_sync_tasks.sync_domain_users_task")
        .await;
    f.job("fast", "echo", json!({"schedule": {"interval": {"seconds": 1}}, "args": ["a", 1], "kwargs": {"k": "v"}, "priority": 7})).await;
    f.job("sync", "sync", json!({"schedule": {"cron": "@every 2s"}, "args": ["corp.example.com"], "kwargs": {"mode": "full"}})).await;
    f.job(
        "minutely",
        "echo",
        json!({"schedule": {"cron": "* * * * *"}, "kwargs": {"cron": true}}),
    )
    .await;
    let op = f.operator(&[]);

    let record = eventually(
        "runs of all three jobs",
        Duration::from_secs(90),
        || async {
            let r = f.record().await;
            let count = |job: &str| {
                r.iter()
                    .filter(|i| i.job().ends_with(&format!("/{job}")))
                    .count()
            };
            (count("fast") >= 5 && count("sync") >= 3 && count("minutely") >= 1).then_some(r)
        },
    )
    .await;
    assert_no_duplicates(&record);
    let fast: Vec<&Invocation> = record
        .iter()
        .filter(|i| i.job().ends_with("/fast"))
        .collect();
    for inv in &fast {
        assert_eq!(inv.task_name, "kb.echo");
        assert_eq!(inv.args, json!(["a", 1]));
        assert_eq!(inv.kwargs, json!({"k": "v"}));
        assert_eq!(inv.queue.as_deref(), Some(f.queue.as_str()));
    }
    if f.broker.starts_with("redis") {
        // Redis reports the envelope's priority; RabbitMQ only with x-max-priority queues.
        assert!(
            fast.iter().all(|i| i.priority == Some(7)),
            "priority carried: {:?}",
            fast.iter().map(|i| i.priority).collect::<Vec<_>>()
        );
    }
    let sync = record
        .iter()
        .find(|i| i.job().ends_with("/sync"))
        .expect("sync ran");
    assert_eq!(sync.task_name, "tasks.ad_sync_tasks.sync_domain_users_task");
    assert_eq!(
        (sync.args.clone(), sync.kwargs.clone()),
        (json!(["corp.example.com"]), json!({"mode": "full"}))
    );
    let minutely = record
        .iter()
        .find(|i| i.job().ends_with("/minutely"))
        .expect("cron ran");
    assert!(
        minutely.slot().ends_with(":00Z"),
        "cron slots are whole minutes: {}",
        minutely.slot()
    );
    // Consecutive slots of the 1 s job are one second apart: none skipped, none doubled.
    let mut slots: Vec<String> = fast.iter().map(|i| i.slot()).collect();
    slots.sort();
    for pair in slots.windows(2) {
        let a = chrono::DateTime::parse_from_rfc3339(&pair[0]).expect("slot");
        let b = chrono::DateTime::parse_from_rfc3339(&pair[1]).expect("slot");
        assert_eq!(
            (b - a).num_seconds(),
            1,
            "slots {} then {}",
            pair[0],
            pair[1]
        );
    }
    // Status follows Postgres: kubectl get shows the last run, its state and the next run.
    let jobs: Api<ScheduledJob> = Api::namespaced(f.client.clone(), &f.ns);
    let status = eventually("status shows runs", Duration::from_secs(20), || async {
        let s = jobs.get("fast").await.ok()?.status?;
        (s.total_runs >= 5
            && s.last_execution
                .as_ref()
                .is_some_and(|e| e.state == "DISPATCHED"))
        .then_some(s)
    })
    .await;
    assert!(
        status.last_schedule_time.is_some() && status.next_schedule_time.is_some(),
        "{status:?}"
    );
    assert!(
        status.next_schedule_time > status.last_schedule_time,
        "{status:?}"
    );
    let table = common::ok(&common::kubectl(&["get", "scheduledjobs", "-n", &f.ns]));
    let fast_line = table
        .lines()
        .find(|l| l.starts_with("fast "))
        .expect("fast listed");
    assert!(
        fast_line.contains("DISPATCHED"),
        "LAST STATUS column: {table}"
    );
    assert!(
        op.log_text().contains("Dispatched job"),
        "the runbook's log line"
    );
    assert!(op.log_text().contains("acquired leader"));
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn jobs_run_on_a_real_worker_over_redis() {
    let env = common::env();
    runs_on_the_worker(format!("{}/0", env.redis_url)).await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn jobs_run_on_a_real_worker_over_rabbitmq() {
    runs_on_the_worker(common::env().amqp_url).await;
}

fn leader_of(ops: &[Operator]) -> Option<usize> {
    // The most recent "acquired leader" among live replicas.
    ops.iter()
        .enumerate()
        .filter_map(|(i, op)| {
            let log = op.log_text();
            let acquired = log.rfind("acquired leader")?;
            let lost = log.rfind("lost leader").unwrap_or(0);
            (acquired > lost).then_some(i)
        })
        .next_back()
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn leader_killed_repeatedly_no_duplicates_no_losses() {
    const JOBS: usize = 20;
    const KILLS: usize = 10;
    let (f, _worker) = redis_echo_fixture("kbt-failover").await;
    for i in 0..JOBS {
        f.job(
            &format!("j{i:02}"),
            "echo",
            json!({"schedule": {"interval": {"seconds": 1}}}),
        )
        .await;
    }
    let mut ops: Vec<Operator> = (0..3).map(|_| f.operator(&FAST_LEASE)).collect();
    let mut recoveries = Vec::new();
    for _ in 0..KILLS {
        let leader = eventually("a leader", Duration::from_secs(30), || async {
            leader_of(&ops)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500 + rand_ms(1500))).await;
        let dispatched_before: usize = ops
            .iter()
            .map(|o| o.log_text().matches("Dispatched job").count())
            .sum();
        ops[leader].signal("KILL");
        let killed_at = Instant::now();
        let mut dead = ops.remove(leader);
        dead.wait_exit(Duration::from_secs(5));
        // The others dispatch again within the lease duration (+ a retry period and a second).
        eventually(
            "dispatch after failover",
            Duration::from_secs(15),
            || async {
                let now: usize = ops
                    .iter()
                    .map(|o| o.log_text().matches("Dispatched job").count())
                    .sum();
                (now > 0
                    && leader_of(&ops).is_some()
                    && now
                        > dispatched_before
                            .saturating_sub(dead.log_text().matches("Dispatched job").count()))
                .then_some(())
            },
        )
        .await;
        recoveries.push(killed_at.elapsed());
        ops.push(f.operator(&FAST_LEASE));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(ops);
    tokio::time::sleep(Duration::from_secs(2)).await; // let the worker finish what it holds
    let record = f.record().await;
    assert!(
        record.len() > JOBS * 10,
        "jobs kept running: {} runs",
        record.len()
    );
    assert_no_duplicates(&record);
    f.assert_slots_accounted(JOBS, 1).await;
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    println!(
        "failover: {KILLS} SIGKILLs, recovery times {recoveries:?}, worst {worst:?}, {} runs, 0 duplicates",
        record.len()
    );
    assert!(
        worst <= Duration::from_secs(4 + 1 + 1),
        "next leader dispatched within lease duration + 1 s (+ retry period): {worst:?}"
    );
    f.finish().await;
}

/// A Redis fixture with a running worker and an `echo` TaskFunction (`kb.echo`).
async fn redis_echo_fixture(prefix: &str) -> (Fixture, Worker) {
    let f = fixture(prefix, format!("{}/0", common::env().redis_url)).await;
    let worker = f.worker();
    f.task_function("echo", "kb.echo").await;
    (f, worker)
}

fn rand_ms(max: u64) -> u64 {
    u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * max / 256
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn paused_leader_is_fenced() {
    let (f, _worker) = redis_echo_fixture("kbt-split").await;
    for i in 0..5 {
        f.job(
            &format!("j{i}"),
            "echo",
            json!({"schedule": {"interval": {"seconds": 1}}}),
        )
        .await;
    }
    let mut ops: Vec<Operator> = (0..2).map(|_| f.operator(&FAST_LEASE)).collect();
    let leader = eventually("a leader", Duration::from_secs(30), || async {
        leader_of(&ops)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ops[leader].signal("STOP");
    let other = 1 - leader;
    eventually(
        "the other replica takes over",
        Duration::from_secs(20),
        || async {
            ops[other]
                .log_text()
                .contains("acquired leader")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ops[leader].signal("CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resumed_log = ops[leader].log_text();
    ops[leader].assert_running();
    drop(ops);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = f.record().await;
    assert_no_duplicates(&record);
    f.assert_slots_accounted(5, 1).await;
    assert!(
        resumed_log.contains("lost leader") || resumed_log.contains("fencing"),
        "the resumed replica noticed it was deposed:\n{}",
        resumed_log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn shadow_mode_publishes_nothing_and_triggers_run_once() {
    let (f, _worker) = redis_echo_fixture("kbt-shadow").await;
    f.job(
        "every",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}}),
    )
    .await;
    f.job("daily", "echo", json!({"schedule": {"cron": "0 3 * * *"}}))
        .await;
    {
        let _shadow = f.operator(&["--dispatch-mode", "shadow"]);
        eventually("SHADOW executions", Duration::from_secs(30), || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM job_executions WHERE state = 'SHADOW'")
                    .fetch_one(&f.pool)
                    .await
                    .ok()?;
            (n >= 3).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            f.record().await.is_empty(),
            "shadow mode published something"
        );
    }
    // Live: the same trigger value applied twice runs once; a new value runs again.
    let op = f.operator(&[]);
    let jobs: Api<ScheduledJob> = Api::namespaced(f.client.clone(), &f.ns);
    let trigger = |v: &str| json!({"metadata": {"annotations": {"kubebeat.io/trigger": v}}});
    jobs.patch(
        "daily",
        &PatchParams::default(),
        &Patch::Merge(&trigger("first")),
    )
    .await
    .expect("trigger");
    tokio::time::sleep(Duration::from_secs(2)).await;
    jobs.patch(
        "daily",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .expect("touch");
    jobs.patch(
        "daily",
        &PatchParams::default(),
        &Patch::Merge(&trigger("first")),
    )
    .await
    .expect("same value again");
    let manual = |r: &[Invocation]| r.iter().filter(|i| i.job().ends_with("/daily")).count();
    eventually("the manual run", Duration::from_secs(20), || async {
        (manual(&f.record().await) == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(manual(&f.record().await), 1, "one run per trigger value");
    jobs.patch(
        "daily",
        &PatchParams::default(),
        &Patch::Merge(&trigger("second")),
    )
    .await
    .expect("trigger");
    eventually("a second manual run", Duration::from_secs(20), || async {
        (manual(&f.record().await) == 2).then_some(())
    })
    .await;
    let status = jobs
        .get("daily")
        .await
        .expect("job")
        .status
        .expect("status");
    assert_eq!(status.last_trigger.as_deref(), Some("second"));
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn broker_outage_loses_nothing_and_honours_deadlines() {
    let env = common::env();
    let proxy = common::TcpProxy::start("127.0.0.1:6379").await;
    let mut f = fixture("kbt-outage", format!("{}/0", env.redis_url)).await;
    let _worker = f.worker(); // the worker talks to Redis directly
    f.broker = format!("redis://127.0.0.1:{}/0", proxy.port); // the operator through the proxy
    f.task_function("echo", "kb.echo").await;
    f.job(
        "keep",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}}),
    )
    .await;
    f.job(
        "strict",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}, "startingDeadlineSeconds": 3}),
    )
    .await;
    let op = f.operator(&[]);
    let runs = |r: &[Invocation], job: &str| {
        r.iter()
            .filter(|i| i.job().ends_with(&format!("/{job}")))
            .count()
    };
    eventually(
        "runs before the outage",
        Duration::from_secs(30),
        || async {
            let r = f.record().await;
            (runs(&r, "keep") >= 3 && runs(&r, "strict") >= 3).then_some(())
        },
    )
    .await;
    proxy.cut();
    let before = runs(&f.record().await, "keep");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = runs(&f.record().await, "keep");
    assert!(
        during <= before + 2,
        "nothing can be published while the broker is unreachable"
    );
    proxy.restore();
    let restored = Instant::now();
    eventually("dispatch resumes", Duration::from_secs(30), || async {
        (runs(&f.record().await, "keep") >= during + 25).then_some(())
    })
    .await;
    let recovery = restored.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(op);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let record = f.record().await;
    assert_no_duplicates(&record);
    f.assert_slots_accounted(2, 1).await;
    // "keep" (no deadline): every slot of the outage was published late, none lost.
    let states: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT j.name, e.state, count(*) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&f.pool)
    .await
    .expect("states");
    let count = |job: &str, state: &str| {
        states
            .iter()
            .find(|(j, s, _)| j == job && s == state)
            .map_or(0, |(_, _, n)| *n)
    };
    assert_eq!(count("keep", "MISSED"), 0, "{states:?}");
    assert!(
        count("keep", "DISPATCHED") as usize >= runs(&record, "keep") - 1,
        "{states:?}"
    );
    // "strict": slots that could not go out within 3 s are MISSED, and never ran.
    assert!(
        count("strict", "MISSED") >= 20,
        "outage slots of the strict job are MISSED: {states:?}"
    );
    let missed_ids: Vec<String> =
        sqlx::query_scalar("SELECT task_id FROM job_executions WHERE state = 'MISSED'")
            .fetch_all(&f.pool)
            .await
            .expect("missed");
    assert!(
        record.iter().all(|i| !missed_ids.contains(&i.task_id)),
        "a MISSED execution ran"
    );
    println!("broker outage 30 s: dispatch resumed {recovery:?} after restore; states {states:?}");
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn operator_downtime_is_coalesced_or_missed() {
    let (f, _worker) = redis_echo_fixture("kbt-down").await;
    f.job(
        "coalesce",
        "echo",
        json!({"schedule": {"interval": {"seconds": 2}}}),
    )
    .await;
    f.job(
        "deadline",
        "echo",
        json!({"schedule": {"interval": {"seconds": 2}}, "startingDeadlineSeconds": 1}),
    )
    .await;
    let op = f.operator(&[]);
    eventually("first runs", Duration::from_secs(30), || async {
        let r = f.record().await;
        (r.len() >= 4).then_some(())
    })
    .await;
    drop(op); // SIGKILL: the operator is down for 9 s
    tokio::time::sleep(Duration::from_secs(9)).await;
    let op = f.operator(&[]);
    let catchup: (i32, String) = eventually("a coalesced catch-up run", Duration::from_secs(30), || async {
        sqlx::query_as(
            "SELECT e.coalesced_slots, e.trigger FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
             WHERE j.name = 'coalesce' AND e.coalesced_slots > 1",
        )
        .fetch_optional(&f.pool)
        .await
        .ok()
        .flatten()
    })
    .await;
    assert!(
        catchup.0 >= 3,
        "several missed slots became one run: {catchup:?}"
    );
    assert_eq!(catchup.1, "catchup");
    // The deadline job's slots missed while down are one row too; the latest of them decides
    // (SPEC): later than startingDeadlineSeconds at the first claim it is MISSED, within it it
    // runs as the catch-up. Which one depends on where the restart falls in the 2 s interval.
    let folded: (i32, String, String, f64) = eventually(
        "the deadline job's missed slots, folded",
        Duration::from_secs(30),
        || async {
            sqlx::query_as(
                "SELECT e.coalesced_slots, e.state, e.trigger,
                    EXTRACT(EPOCH FROM e.claimed_at - e.scheduled_for)::float8
             FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
             WHERE j.name = 'deadline' AND e.coalesced_slots > 1",
            )
            .fetch_optional(&f.pool)
            .await
            .ok()
            .flatten()
        },
    )
    .await;
    let (slots, state, trigger, late) = &folded;
    assert!(
        *slots >= 3,
        "several missed slots became one row: {folded:?}"
    );
    if state == "MISSED" {
        assert!(*late > 0.8, "MISSED only past its 1 s deadline: {folded:?}");
    } else {
        assert_eq!(trigger, "catchup", "{folded:?}");
        assert!(*late < 1.2, "run only within its 1 s deadline: {folded:?}");
    }
    // (A run claimed ahead before the kill that could not go out in time is a MISSED row of its
    // own, one slot.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(op);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_no_duplicates(&f.record().await);
    f.assert_slots_accounted(2, 2).await;
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn replace_revokes_the_unfinished_run_and_forbid_skips() {
    let env = common::env();
    let f = fixture("kbt-policy", format!("{}/0", env.redis_url)).await;
    // One thread, one message at a time: later runs queue up behind a slow one.
    let worker = Worker::start_with(&f.broker, None, &f.queue, &f.db.url, 1);
    f.task_function("sleep", "kb.sleep").await;
    f.job("replace", "sleep", json!({"schedule": {"interval": {"seconds": 2}}, "args": [5], "concurrencyPolicy": "Replace"})).await;
    f.job("forbid", "sleep", json!({"schedule": {"interval": {"seconds": 2}}, "args": [0], "concurrencyPolicy": "Forbid", "executionTimeoutSeconds": 5})).await;
    let op = f.operator(&[]);
    tokio::time::sleep(Duration::from_secs(14)).await;
    drop(op);
    tokio::time::sleep(Duration::from_secs(12)).await; // let the worker drain what it holds
    let revoked: Vec<String> = sqlx::query_scalar(
        "SELECT e.task_id FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.name = 'replace' AND e.state = 'REVOKED'",
    )
    .fetch_all(&f.pool)
    .await
    .expect("revoked");
    assert!(
        revoked.len() >= 3,
        "each new run replaced the unfinished one: {revoked:?}"
    );
    let record = f.record().await;
    let ran: Vec<&str> = record.iter().map(|i| i.task_id.as_str()).collect();
    let never_ran = revoked
        .iter()
        .filter(|id| !ran.contains(&id.as_str()))
        .count();
    assert!(
        never_ran >= 2,
        "revoked runs that had not started never ran ({never_ran} of {})",
        revoked.len()
    );
    assert!(
        worker.log_text().contains("revoked"),
        "the worker received the revocations"
    );
    let skipped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.name = 'forbid' AND e.state = 'SKIPPED'",
    )
    .fetch_one(&f.pool)
    .await
    .expect("skipped");
    assert!(
        skipped >= 2,
        "Forbid skipped slots while a run was unfinished: {skipped}"
    );
    assert_no_duplicates(&record);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn graceful_shutdown_releases_the_lease() {
    // Default timings (15 s lease): a rolling update must not wait for the lease to expire.
    let env = common::env();
    let f = fixture("kbt-roll", format!("{}/0", env.redis_url)).await;
    f.task_function("echo", "kb.echo").await;
    let mut ops: Vec<Operator> = (0..2).map(|_| f.operator(&[])).collect();
    let leader = eventually("a leader", Duration::from_secs(30), || async {
        leader_of(&ops)
    })
    .await;
    ops[leader].signal("TERM");
    let stopped = Instant::now();
    assert!(
        ops[leader].wait_exit(Duration::from_secs(10)),
        "the leader exits on SIGTERM"
    );
    assert!(ops[leader].log_text().contains("released leader lease"));
    let other = 1 - leader;
    eventually(
        "the other replica takes over",
        Duration::from_secs(10),
        || async {
            ops[other]
                .log_text()
                .contains("acquired leader")
                .then_some(())
        },
    )
    .await;
    // Measured between the two processes' own log lines, not by this (busy) test's polling.
    let at = |log: String, line: &str| {
        log.lines()
            .find(|l| l.contains(line))
            .and_then(|l| chrono::DateTime::parse_from_rfc3339(l.split(' ').next()?).ok())
            .unwrap_or_else(|| panic!("no '{line}' in:\n{log}"))
    };
    let released = at(ops[leader].log_text(), "released leader lease");
    let acquired = at(ops[other].log_text(), "acquired leader");
    let handover = (acquired - released).to_std().unwrap_or_default();
    println!(
        "graceful handover took {handover:?} (SIGTERM to takeover seen by the test: {:?})",
        stopped.elapsed()
    );
    assert!(
        handover < Duration::from_secs(4),
        "handover without waiting for the 15 s lease: {handover:?}"
    );
    drop(ops);
    f.finish().await;
}

/// A burst is claimed before it is due and published at its time: an Allow job's run is claimed
/// within `LOOKAHEAD` of its time and held; a Forbid job's run (it depends on the previous run)
/// is claimed when due. Neither is published early.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn runs_are_claimed_ahead_and_published_at_their_time() {
    use chrono::{DurationRound, TimeDelta, Utc};
    type Time = chrono::DateTime<Utc>;
    let (f, _worker) = redis_echo_fixture("kbt-ahead").await;
    let _op = f.operator(&[]);
    let due = (Utc::now() + TimeDelta::seconds(15))
        .duration_trunc(TimeDelta::seconds(1))
        .expect("whole second");
    let start = kube_beat::schedule::rfc3339(due - TimeDelta::hours(1));
    for (name, policy) in [("ahead", "Allow"), ("forbid", "Forbid")] {
        f.job(
            name,
            "echo",
            json!({"schedule": {"interval": {"hours": 1}}, "startTime": start,
                   "concurrencyPolicy": policy}),
        )
        .await;
    }
    let row = |name: &'static str| {
        let pool = f.pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<Time>, Option<Time>)>(
                "SELECT e.state, e.publish_after, e.dispatched_at
                 FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id WHERE j.name = $1",
            )
            .bind(name)
            .fetch_optional(&pool)
            .await
            .ok() // the operator may not have created the tables yet
            .flatten()
        }
    };
    // Before its time: claimed, held.
    let mut held = None;
    while Utc::now() < due - TimeDelta::milliseconds(300) {
        if let Some(r) = row("ahead").await {
            held = Some((Utc::now(), r));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (seen_at, (state, publish_after, _)) =
        held.expect("the Allow job's run was claimed before its time");
    assert!(seen_at < due, "claimed ahead");
    assert_eq!(state, "PENDING", "held, not published before {due}");
    assert_eq!(publish_after, Some(due));
    assert!(
        row("forbid").await.is_none() || Utc::now() >= due,
        "a Forbid job is not claimed ahead"
    );
    // At its time: both published, neither early.
    for name in ["ahead", "forbid"] {
        let dispatched = eventually("published", Duration::from_secs(20), || async {
            row(name).await.and_then(|(_, _, d)| d)
        })
        .await;
        assert!(
            dispatched >= due,
            "{name} published at {dispatched}, due {due}"
        );
        assert!(
            dispatched < due + TimeDelta::seconds(2),
            "{name} published late: {dispatched}, due {due}"
        );
    }
    eventually(
        "both ran on the worker",
        Duration::from_secs(20),
        || async { (f.record().await.len() == 2).then_some(()) },
    )
    .await;
    f.finish().await;
}

/// A burst larger than one publish goes out in chunks (the next encoded while one is published,
/// each recorded in the background): every run once, none early, each recorded DISPATCHED.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn a_burst_goes_out_in_chunks_each_run_once() {
    use chrono::{DurationRound, TimeDelta, Utc};
    type Time = chrono::DateTime<Utc>;
    const JOBS: usize = 40;
    let (f, _worker) = redis_echo_fixture("kbt-chunks").await;
    // 7 a chunk: 6 publishes, the first 14 runs encoded ahead and the rest read from a second
    // before they are due, by a reader of their own.
    let op = f.operator(&["--publish-chunk", "7"]);
    let due = (Utc::now() + TimeDelta::seconds(20))
        .duration_trunc(TimeDelta::seconds(1))
        .expect("whole second");
    let start = kube_beat::schedule::rfc3339(due - TimeDelta::hours(1));
    for i in 0..JOBS {
        f.job(
            &format!("burst-{i}"),
            "echo",
            json!({"schedule": {"interval": {"hours": 1}}, "startTime": start, "args": [i]}),
        )
        .await;
    }
    assert!(Utc::now() < due, "the jobs were created before their time");
    eventually(
        "the runs not read ahead were handed to a reader before their time",
        Duration::from_secs(30),
        || async {
            let log = op.log_text();
            log.lines()
                .any(|l| l.contains("reading runs ahead of their time") && l.contains("runs=26"))
                .then_some(())
        },
    )
    .await;
    eventually(
        "every run of the burst ran on the worker",
        Duration::from_secs(40),
        || async { (f.record().await.len() >= JOBS).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a duplicate would show by now
    let record = f.record().await;
    assert_eq!(record.len(), JOBS, "each run once");
    assert_no_duplicates(&record);
    let mut args: Vec<i64> = record
        .iter()
        .filter_map(|inv| inv.args.get(0).and_then(Value::as_i64))
        .collect();
    args.sort_unstable();
    assert_eq!(
        args,
        (0..JOBS as i64).collect::<Vec<_>>(),
        "each job's own message"
    );
    let rows: Vec<(String, Option<Time>)> = sqlx::query_as(
        "SELECT e.state, e.dispatched_at FROM job_executions e
         JOIN scheduled_jobs j ON j.id = e.job_id WHERE j.name LIKE 'burst-%'",
    )
    .fetch_all(&f.pool)
    .await
    .expect("executions");
    assert_eq!(rows.len(), JOBS);
    for (state, dispatched) in rows {
        assert!(
            matches!(state.as_str(), "DISPATCHED" | "STARTED" | "SUCCESS"),
            "recorded after publishing: {state}"
        );
        let dispatched = dispatched.expect("dispatched_at recorded");
        assert!(dispatched >= due, "published at {dispatched}, due {due}");
    }
    f.finish().await;
}
