//! Backfill end to end (issue #27): real apiserver, Postgres, Redis broker and result backend, a
//! real Celery worker whose durable record is the proof of what ran, and two operator replicas
//! on a short Lease. A backfill of 20 past slots with maxParallel 3 runs each slot exactly once
//! across a SIGKILL of the leader, never more than 3 unfinished at once; a second backfill of the
//! same range runs nothing (alreadyRan 20); more than 10,000 slots are refused on every path (CLI,
//! API, annotation); `--dry-run` lists the slots and changes nothing.

mod common;

use std::{
    collections::BTreeSet,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DurationRound, TimeDelta, Utc};
use common::{FAST_LEASE, Operator, Worker, api_call, assert_no_duplicates, eventually, fixture};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_beat::{api::ScheduledJob, schedule::rfc3339};
use serde_json::{Value, json};

const EDITOR: &str = "kbt-api-editor-token";
const SLOTS: i64 = 20;

fn kube_beat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(args)
        .output()
        .expect("running kube-beat")
}

fn leader_of(ops: &[Operator]) -> Option<usize> {
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

/// The backfill runs the worker recorded: (slot, task id).
async fn backfill_runs(f: &common::Fixture) -> Vec<(String, String)> {
    f.record()
        .await
        .iter()
        .filter(|i| i.headers["kubebeat_trigger"] == "backfill")
        .map(|i| (i.slot(), i.task_id.clone()))
        .collect()
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn backfill_runs_each_slot_once_across_a_leader_kill() {
    let env = common::env();
    let f = fixture("kbt-backfill", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    let _worker = Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);
    f.grant_api_users();
    // Each run takes a second, so several are unfinished at once and the bound is tested.
    f.task_function_with("sleep", "kb.sleep", json!({"defaultArgs": [1]}))
        .await;
    // An interval job anchored 8 days back (a whole minute), suspended: only backfills run.
    let now = Utc::now();
    let start = (now - TimeDelta::days(8))
        .duration_trunc(TimeDelta::minutes(1))
        .expect("trunc");
    f.job(
        "bf",
        "sleep",
        json!({"schedule": {"interval": {"minutes": 1}}, "startTime": rfc3339(start),
               "suspend": true}),
    )
    .await;
    let from = start + TimeDelta::hours(1);
    let to = from + TimeDelta::minutes(SLOTS - 1);
    let expected: BTreeSet<String> = (0..SLOTS)
        .map(|k| rfc3339(from + TimeDelta::minutes(k)))
        .collect();
    let (from_s, to_s) = (rfc3339(from), rfc3339(to));

    let extra = [
        FAST_LEASE.as_slice(),
        &[
            "--result-backend",
            backend.as_str(),
            "--result-poll-ms",
            "300",
            "--status-interval-seconds",
            "0.5",
        ],
    ]
    .concat();
    let mut ops: Vec<Operator> = (0..2).map(|_| f.operator(&extra)).collect();
    eventually("the job stored", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduled_jobs")
            .fetch_one(&f.pool)
            .await
            .unwrap_or(0);
        (n == 1).then_some(())
    })
    .await;
    let jobs: Api<ScheduledJob> = Api::namespaced(f.client.clone(), &f.ns);
    let annotation = |job: &ScheduledJob| {
        job.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubebeat.io/backfill").cloned())
    };

    // --dry-run: the 20 slots, and nothing changes.
    let out = kube_beat(&[
        "backfill",
        "bf",
        "-n",
        &f.ns,
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--max-parallel",
        "3",
        "--dry-run",
    ]);
    let listed = common::ok(&out);
    let listed: BTreeSet<String> = listed.lines().map(String::from).collect();
    assert_eq!(listed, expected, "dry run lists the slots");
    assert!(String::from_utf8_lossy(&out.stderr).contains("20 slot(s)"));
    assert_eq!(annotation(&jobs.get("bf").await.expect("job")), None);

    // More than 10,000 slots: refused by the CLI, the API and the annotation path.
    let huge_from = rfc3339(start);
    let huge_to = rfc3339(start + TimeDelta::minutes(10_001));
    let out = kube_beat(&[
        "backfill", "bf", "-n", &f.ns, "--from", &huge_from, "--to", &huge_to,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than 10000 slots"), "{err}");
    assert_eq!(annotation(&jobs.get("bf").await.expect("job")), None);
    let addr = eventually("the HTTP address", Duration::from_secs(30), || async {
        ops[0].http_addr()
    })
    .await;
    let post = |addr: &str, body: Value| {
        let out = Command::new("curl")
            .args(["-sS", "-X", "POST", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {EDITOR}")])
            .args([
                "-H",
                "Content-Type: application/json",
                "-d",
                &body.to_string(),
            ])
            .arg(format!("http://{addr}/api/v1/jobs/{}/bf/backfill", f.ns))
            .output()
            .expect("curl");
        let text = common::ok(&out);
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (
            code.trim().parse::<u16>().expect("code"),
            serde_json::from_str::<Value>(body).unwrap_or(Value::Null),
        )
    };
    let (code, body) = post(&addr, json!({"from": huge_from, "to": huge_to}));
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("more than 10000 slots")
    );
    let (code, body) = post(&addr, json!({"from": "yesterday", "to": to_s}));
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(
        &addr,
        json!({"from": from_s, "to": to_s, "maxParallel": 101}),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(&addr, json!({"from": to_s, "to": from_s}));
    assert_eq!(code, 422, "{body}");
    let (code, body) = post(&addr, json!({"from": from_s, "to": to_s, "dryRun": true}));
    assert_eq!((code, body["slots"].clone()), (200, json!(SLOTS)), "{body}");
    let annotate = |value: String| {
        let jobs = jobs.clone();
        async move {
            let patch = json!({"metadata": {"annotations": {"kubebeat.io/backfill": value}}});
            jobs.patch("bf", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("annotate");
        }
    };
    annotate(json!({"id": "huge", "from": huge_from, "to": huge_to, "maxParallel": 3}).to_string())
        .await;
    let refused = eventually(
        "the huge backfill refused",
        Duration::from_secs(30),
        || async {
            let b = f.status("bf").await["backfill"].clone();
            (b["id"] == "huge").then_some(b)
        },
    )
    .await;
    assert_eq!(refused["state"], "Failed", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("more than 10000 slots"),
        "{refused}"
    );
    let dry_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_executions")
        .fetch_one(&f.pool)
        .await
        .expect("count");
    assert_eq!(dry_rows, 0, "nothing ran for the dry run and the refusals");

    // Sample the unfinished backfill runs (Postgres records a run finished only after the
    // worker did, so this never undercounts what the worker holds).
    let max_unfinished = Arc::new(AtomicI64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pool, max, on) = (f.pool.clone(), max_unfinished.clone(), sampling.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM job_executions WHERE backfill_id IS NOT NULL
                       AND state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY')",
                )
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
                max.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The backfill, through the CLI; the leader is SIGKILLed in the middle.
    let out = kube_beat(&[
        "backfill",
        "bf",
        "-n",
        &f.ns,
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--max-parallel",
        "3",
        "--id",
        "first",
    ]);
    let said = common::ok(&out);
    assert!(
        said.contains("backfill first requested: 20 slot(s)"),
        "{said}"
    );
    eventually(
        "a third of the slots run",
        Duration::from_secs(60),
        || async { (backfill_runs(&f).await.len() >= 6).then_some(()) },
    )
    .await;
    let leader = eventually("a leader", Duration::from_secs(10), || async {
        leader_of(&ops)
    })
    .await;
    ops[leader].signal("KILL");
    let mut dead = ops.remove(leader);
    assert!(dead.wait_exit(Duration::from_secs(5)));
    let ran_at_kill = backfill_runs(&f).await.len();
    assert!(
        ran_at_kill < SLOTS as usize,
        "killed in the middle: {ran_at_kill} ran"
    );
    ops.push(f.operator(&extra));
    // The API of a replica still running.
    let addr = eventually("the HTTP address", Duration::from_secs(30), || async {
        ops[0].http_addr()
    })
    .await;

    let done = eventually(
        "the backfill complete",
        Duration::from_secs(120),
        || async {
            let b = f.status("bf").await["backfill"].clone();
            (b["id"] == "first" && b["state"] == "Complete" && b["succeeded"] == SLOTS).then_some(b)
        },
    )
    .await;
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    assert_eq!(done["total"], SLOTS, "{done}");
    assert_eq!(done["dispatched"], SLOTS, "{done}");
    assert_eq!(done["alreadyRan"], 0, "{done}");
    assert_eq!(done["failed"], 0, "{done}");
    assert_eq!(done["unfinished"], 0, "{done}");
    let max = max_unfinished.load(Ordering::Relaxed);
    assert!(
        (1..=3).contains(&max),
        "at most maxParallel (3) unfinished at once, saw {max}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = backfill_runs(&f).await;
    let slots: Vec<&String> = runs.iter().map(|(s, _)| s).collect();
    assert_eq!(runs.len(), SLOTS as usize, "each slot once: {slots:?}");
    let ran: BTreeSet<String> = runs.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(ran, expected, "exactly the range's slots ran");
    assert_no_duplicates(&f.record().await);

    // The same range again, through the API: every slot ran already, nothing runs.
    let (code, body) = post(
        &addr,
        json!({"from": from_s, "to": to_s, "maxParallel": 3, "id": "second"}),
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        (body["id"].clone(), body["slots"].clone()),
        (json!("second"), json!(SLOTS))
    );
    let again = eventually(
        "the second backfill complete",
        Duration::from_secs(60),
        || async {
            let b = f.status("bf").await["backfill"].clone();
            (b["id"] == "second" && b["state"] == "Complete").then_some(b)
        },
    )
    .await;
    assert_eq!(again["alreadyRan"], SLOTS, "{again}");
    assert_eq!(again["dispatched"], 0, "{again}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        backfill_runs(&f).await.len(),
        SLOTS as usize,
        "nothing ran twice"
    );

    // The API lists the three backfills, newest first.
    let (code, list) = api_call(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{}/bf/backfills", f.ns),
        Some(EDITOR),
    );
    assert_eq!(code, 200, "{list}");
    let ids: Vec<&str> = list["backfills"]
        .as_array()
        .expect("backfills")
        .iter()
        .map(|b| b["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["second", "first", "huge"]);
    // The executions carry the trigger and the backfill.
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT trigger, backfill_id FROM job_executions ORDER BY scheduled_for")
            .fetch_all(&f.pool)
            .await
            .expect("executions");
    assert_eq!(rows.len(), SLOTS as usize);
    assert!(rows.iter().all(|(t, b)| t == "backfill" && b.is_some()));
    let _ = dead.exited();
    drop(ops);
    println!(
        "backfill: {SLOTS} slots, leader killed after {ran_at_kill}, max {max} unfinished, 0 duplicates"
    );
    f.finish().await;
}
