//! Several schedules per job and an end (issue #27), end to end on Redis with a real apiserver,
//! Postgres and a real Celery worker:
//! - a job with two schedules (every 2 s and `@every 3s`) runs their union, each instant once:
//!   the shared instants (every 6 s) reach the worker once;
//! - `maxRuns: 3` runs exactly three times, then shows `Complete=True MaxRunsReached` (also in
//!   `kubectl get`) and no `nextScheduleTime`; raising it to 4 runs once more;
//! - `endTime` a few seconds ahead: no run after it, then `Complete=True EndTimeReached`;
//! - `endTime` already past when applied: `Ready=True`, `Complete=True`, nothing dispatched.

mod common;

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, SubsecRound, Utc};
use common::{Fixture, eventually, fixture, kubectl, ok};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_beat::api::ScheduledJob;
use serde_json::json;

/// The job's condition of this type: (status, reason, message).
async fn condition(f: &Fixture, job: &str, kind: &str) -> Option<(String, String, String)> {
    let status = f.status(job).await;
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?
        .clone();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

/// Wait for `Complete=True` with this reason and a message starting with `message`.
async fn wait_complete(f: &Fixture, job: &str, reason: &str, message: &str) {
    eventually(
        &format!("{job}: Complete=True {reason} {message}..."),
        Duration::from_secs(30),
        || async {
            condition(f, job, "Complete")
                .await
                .filter(|(s, r, m)| s == "True" && r == reason && m.starts_with(message))
        },
    )
    .await;
}

/// The worker's invocations of `job`, counted per slot (`kubebeat_slot`).
async fn ran(f: &Fixture, job: &str) -> BTreeMap<DateTime<Utc>, usize> {
    let mut per_slot = BTreeMap::new();
    let name = format!("{}/{job}", f.ns);
    for inv in f.record().await.iter().filter(|i| i.job() == name) {
        let slot = DateTime::parse_from_rfc3339(&inv.slot())
            .expect("slot header")
            .with_timezone(&Utc);
        *per_slot.entry(slot).or_insert(0) += 1;
    }
    per_slot
}

/// The job's executions by trigger: (trigger, state, slot).
async fn executions(f: &Fixture, job: &str) -> Vec<(String, String, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT e.trigger, e.state, e.scheduled_for
         FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.namespace = $1 AND j.name = $2 ORDER BY e.scheduled_for",
    )
    .bind(&f.ns)
    .bind(job)
    .fetch_all(&f.pool)
    .await
    .unwrap_or_default()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

#[tokio::test]
#[ignore = "needs the real stack: make test"]
async fn several_schedules_and_an_end_on_redis() {
    let env = common::env();
    let f = fixture("kbt-schedules", format!("{}/0", env.redis_url)).await;
    f.task_function("echo", "kb.echo").await;
    let op = f.operator(&["--status-interval-seconds", "0.5"]);
    let _worker = f.worker();

    // Slots from a start a few seconds ahead, so none is due before the operator leads.
    let start = Utc::now().trunc_subsecs(0) + secs(4);
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    f.job(
        "union",
        "echo",
        json!({"schedules": [{"interval": {"seconds": 2}}, {"cron": "@every 3s"}],
               "startTime": rfc(start)}),
    )
    .await;
    f.job(
        "three",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}, "startTime": rfc(start),
               "maxRuns": 3}),
    )
    .await;
    let end = start + secs(5);
    f.job(
        "ending",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}, "startTime": rfc(start),
               "endTime": rfc(end)}),
    )
    .await;
    f.job(
        "ended",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}},
               "endTime": rfc(Utc::now().trunc_subsecs(0) - secs(60))}),
    )
    .await;

    // Already past its end when applied: Ready, Complete, nothing dispatched.
    let ready = eventually("ended: Ready=True", Duration::from_secs(30), || async {
        condition(&f, "ended", "Ready")
            .await
            .filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(ready.2, "valid and stored; no further runs", "{ready:?}");
    wait_complete(&f, "ended", "EndTimeReached", "endTime ").await;
    assert!(f.status("ended").await["nextScheduleTime"].is_null());

    // maxRuns: 3 runs, then Complete and no next run.
    wait_complete(
        &f,
        "three",
        "MaxRunsReached",
        "maxRuns reached: 3 scheduled runs of 3",
    )
    .await;
    let status = f.status("three").await;
    assert!(status["nextScheduleTime"].is_null(), "{status}");
    let table = ok(&kubectl(&["get", "scheduledjobs", "-n", &f.ns, "three"]));
    assert!(
        table.lines().next().unwrap_or("").contains(" COMPLETE "),
        "{table}"
    );
    // The last columns are COMPLETE, READY and AGE.
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(row.len().saturating_sub(3)),
        Some(&"True"),
        "COMPLETE in:\n{table}"
    );

    // The union: every slot of either schedule up to start + 12 s, each once; 6 and 12 shared.
    let union_end = start + secs(12);
    let per_slot = eventually(
        "union: every slot up to start + 12 s ran",
        Duration::from_secs(40),
        || async {
            let r = ran(&f, "union").await;
            r.contains_key(&union_end).then_some(r)
        },
    )
    .await;
    let expected: Vec<DateTime<Utc>> = [2, 3, 4, 6, 8, 9, 10, 12]
        .iter()
        .map(|s| start + secs(*s))
        .collect();
    let got: Vec<DateTime<Utc>> = per_slot
        .keys()
        .copied()
        .filter(|s| *s <= union_end)
        .collect();
    assert_eq!(got, expected, "the union's slots");
    for (slot, n) in &per_slot {
        assert_eq!(*n, 1, "slot {slot} ran {n} times");
    }
    let union_rows = executions(&f, "union").await;
    for shared in [start + secs(6), union_end] {
        assert_eq!(
            union_rows.iter().filter(|(_, _, s)| *s == shared).count(),
            1,
            "one execution for the shared instant {shared}"
        );
    }
    let summary = f.status("union").await["schedule"].clone();
    assert_eq!(summary, json!("every 2s; @every 3s"));

    // endTime: the slots up to it ran, none after, and Complete.
    wait_complete(
        &f,
        "ending",
        "EndTimeReached",
        &format!("endTime {}", rfc(end)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ending = executions(&f, "ending").await;
    assert!(!ending.is_empty(), "ending ran");
    assert!(
        ending.iter().all(|(_, _, s)| *s <= end),
        "a slot after endTime: {ending:?}"
    );
    assert_eq!(
        ran(&f, "ending").await.keys().copied().collect::<Vec<_>>(),
        (1..=5).map(|s| start + secs(s)).collect::<Vec<_>>(),
        "every slot up to endTime ran once"
    );
    assert!(f.status("ending").await["nextScheduleTime"].is_null());

    // Exactly three runs of `three`, all scheduled; still three seconds later.
    let three = executions(&f, "three").await;
    assert_eq!(three.len(), 3, "{three:?}");
    assert!(three.iter().all(|(t, _, _)| t == "schedule"), "{three:?}");
    assert_eq!(ran(&f, "three").await.len(), 3);
    assert!(
        executions(&f, "ended").await.is_empty(),
        "ended dispatched nothing"
    );

    // Raising maxRuns runs it again, once, and it is Complete again.
    let raise = json!({"spec": {"maxRuns": 4}});
    Api::<ScheduledJob>::namespaced(f.client.clone(), &f.ns)
        .patch("three", &PatchParams::default(), &Patch::Merge(&raise))
        .await
        .expect("raise maxRuns");
    eventually("three: a fourth run", Duration::from_secs(20), || async {
        (ran(&f, "three").await.len() == 4).then_some(())
    })
    .await;
    wait_complete(
        &f,
        "three",
        "MaxRunsReached",
        "maxRuns reached: 4 scheduled runs of 4",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ran(&f, "three").await.len(), 4, "no fifth run");

    common::assert_no_duplicates(&f.record().await);
    drop(op);
    f.finish().await;
}
