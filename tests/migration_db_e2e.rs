//! docs/migration.md "From APScheduler", end to end, with the doc's commands: real APScheduler
//! jobs (its own API on its SQLAlchemy job store in a per-test Postgres database) are imported
//! with `kube-beat import --from apscheduler`, applied to the real apiserver, shadowed (SHADOW
//! slots at the fire times APScheduler's own trigger computes, nothing published), cut over
//! (jobs paused in APScheduler, kube-beat live: every slot runs exactly once on a real Celery
//! worker) and rolled back (kube-beat back to shadow: nothing more is published; the jobs resumed
//! in APScheduler).

mod common;

use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use chrono::{SubsecRound, Utc};
use common::{
    FAST_LEASE, Fixture, Operator, TestDb, Worker, assert_no_duplicates, eventually, fixture,
    kubectl, ok,
};
use serde_json::Value;

/// The old scheduler's side: tests/migration/migration_e2e.py with APScheduler's own API.
fn source(args: &[&str]) -> Vec<String> {
    let dir = common::env().repo.join("tests/migration");
    let out = Command::new(common::migration_venv().join("bin/python"))
        .current_dir(&dir)
        .arg(dir.join("migration_e2e.py"))
        .args(args)
        .output()
        .expect("running APScheduler");
    ok(&out).lines().map(str::to_string).collect()
}

fn iso(t: chrono::DateTime<Utc>) -> String {
    kube_beat::schedule::rfc3339(t)
}

fn parse(s: &str) -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

/// (slot, state) of one job's executions, oldest first.
async fn executions(f: &Fixture, job: &str) -> Vec<(String, String)> {
    let rows: Vec<(chrono::DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT e.scheduled_for, e.state FROM job_executions e
         JOIN scheduled_jobs j ON j.id = e.job_id WHERE j.name = $1 ORDER BY 1",
    )
    .bind(job)
    .fetch_all(&f.pool)
    .await
    .unwrap_or_default(); // the tables appear with the operator's migrations
    rows.into_iter().map(|(t, s)| (iso(t), s)).collect()
}

fn shadow_slots(rows: &[(String, String)]) -> Vec<String> {
    rows.iter()
        .filter(|(_, s)| s == "SHADOW")
        .map(|(t, _)| t.clone())
        .collect()
}

/// The worker's record of the `celery` queue (`Fixture::record` reads the fixture's own queue).
async fn worker_record(f: &Fixture) -> Vec<common::Invocation> {
    common::wait_invocations(&f.pool, "celery", Duration::ZERO, |_| true).await
}

/// Stop an operator as a rollout does (SIGTERM: it releases its lease).
fn stop(mut op: Operator) {
    op.signal("TERM");
    assert!(
        op.wait_exit(Duration::from_secs(15)),
        "kube-beat did not stop"
    );
}

fn operator(f: &Fixture, mode: &str, backend: &str) -> Operator {
    let mut args = vec!["--dispatch-mode", mode, "--result-backend", backend];
    args.extend_from_slice(&["--result-poll-ms", "300"]);
    args.extend_from_slice(&FAST_LEASE);
    f.operator(&args)
}

#[tokio::test]
#[ignore = "needs the local control plane (make test)"]
async fn apscheduler_import_shadow_cutover_rollback() {
    let t0 = Instant::now();
    // The imported TaskFunction has no queue (APScheduler has none): Celery's default `celery`,
    // on a Redis database of this test's own so no other test's worker takes its messages.
    let f = fixture("kbt-migaps", format!("{}/9", common::env().redis_url)).await;
    let app_db = TestDb::create().await;
    // The workers that will take over the jobs; they already run during the shadow phase.
    // With their result backend: `max_instances = 1` is imported as `concurrencyPolicy: Forbid`,
    // and without outcomes kube-beat cannot know a run has finished (every later slot skipped).
    let backend = format!("{}/10", common::env().redis_url);
    let worker = Worker::start(&f.broker, Some(&backend), "celery", &f.db.url);

    // The old scheduler: an interval job every 5 s from `start` and a cron job every minute.
    let start = iso(Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(3));
    source(&["aps-setup", &app_db.url, &start]);

    // 1. import, exactly as the doc says (plus a prefix: TaskFunctions are cluster-scoped).
    let dir = tempfile::tempdir().expect("temp dir");
    let (jobs_yaml, report) = (dir.path().join("jobs.yaml"), dir.path().join("report.json"));
    let prefix = format!("{}-", f.id);
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(["import", "--from", "apscheduler", &app_db.url, "-n", &f.ns])
        .args(["--task-function-prefix", &prefix, "-o"])
        .arg(&jobs_yaml)
        .arg("--report")
        .arg(&report)
        .output()
        .expect("kube-beat import");
    ok(&out);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(report["notConverted"], serde_json::json!([]), "{report:#}");
    let text = std::fs::read_to_string(&jobs_yaml).expect("jobs.yaml");
    assert!(
        !text.contains(app_db.url.as_str()),
        "the source URL leaked into the output"
    );
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml object"))
        .collect();
    let tfs: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "TaskFunction")
        .collect();
    assert_eq!(tfs.len(), 1, "{text}");
    // 2. APScheduler's `kb:echo` is the Celery task `kb.echo` (registered in kb_worker.py).
    assert_eq!(tfs[0]["spec"]["task"], "kb.echo");
    let tf_name = tfs[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let path = jobs_yaml.to_str().expect("utf-8 path");
    ok(&kubectl(&["apply", "-f", path]));
    // Harness only: this test's operator watches the TaskFunctions labelled with its id.
    ok(&kubectl(&[
        "label",
        "taskfunction",
        &tf_name,
        &format!("kubebeat.io/test={}", f.id),
    ]));

    // 3. shadow run: SHADOW slots at APScheduler's own fire times, nothing published.
    let op = operator(&f, "shadow", &backend);
    let shadow = eventually("3 SHADOW slots", Duration::from_secs(40), || async {
        let s = shadow_slots(&executions(&f, "every-5s").await);
        (s.len() >= 3).then_some(s)
    })
    .await;
    assert!(shadow[0] >= start, "{shadow:?} before {start}");
    let before_first = iso(parse(&shadow[0]) - chrono::Duration::seconds(1));
    let aps = source(&[
        "aps-fire",
        &app_db.url,
        "every-5s",
        &before_first,
        &shadow.len().to_string(),
    ]);
    assert_eq!(shadow, aps, "SHADOW slots vs. APScheduler's fire times");
    // The cron job (Europe/Berlin): kube-beat's next run is APScheduler's next fire time.
    eventually(
        "every-minute's next run is APScheduler's",
        Duration::from_secs(20),
        || async {
            let now = iso(Utc::now());
            let next = f.status("every-minute").await["nextScheduleTime"].clone();
            let aps = source(&["aps-fire", &app_db.url, "every-minute", &now, "1"]);
            (next.as_str() == Some(aps[0].as_str())).then_some(())
        },
    )
    .await;
    assert!(worker_record(&f).await.is_empty(), "shadow mode published");
    assert!(worker.log_text().contains(" ready."));

    // 4. cutover: pause the jobs in APScheduler, then go live.
    source(&["aps-pause", &app_db.url]);
    for id in ["every-5s", "every-minute"] {
        assert_eq!(source(&["aps-next-run", &app_db.url, id]), ["paused"]);
    }
    stop(op);
    let live = operator(&f, "live", &backend);
    let record = common::wait_invocations(&f.pool, "celery", Duration::from_secs(40), |r| {
        r.iter()
            .filter(|i| i.args == serde_json::json!(["interval"]))
            .count()
            >= 3
    })
    .await;
    let ran: Vec<_> = record
        .iter()
        .filter(|i| i.job() == format!("{}/every-5s", f.ns))
        .collect();
    assert!(ran.len() >= 3, "{record:?}\n{}", live.log_text());

    // 5. rollback: kube-beat back to shadow, then resume the jobs in APScheduler.
    stop(live);
    let rolled_back = executions(&f, "every-5s").await;
    let op = operator(&f, "shadow", &backend);
    source(&["aps-resume", &app_db.url]);
    assert_ne!(
        source(&["aps-next-run", &app_db.url, "every-5s"]),
        ["paused"]
    );
    let last = rolled_back.last().expect("executions").0.clone();
    eventually(
        "SHADOW slots after rollback",
        Duration::from_secs(20),
        || {
            let (f, last) = (&f, &last);
            async move {
                let rows = executions(f, "every-5s").await;
                (shadow_slots(&rows).iter().filter(|t| *t > last).count() >= 2).then_some(())
            }
        },
    )
    .await;
    stop(op);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Exactly once: every live slot ran once on the worker, nothing ran twice, nothing after
    // the rollback; every slot (shadow and live) is on APScheduler's grid.
    let record = worker_record(&f).await;
    assert_no_duplicates(&record);
    let rows = executions(&f, "every-5s").await;
    let live_slots: BTreeSet<String> = rows
        .iter()
        .filter(|(_, s)| s != "SHADOW")
        .map(|(t, _)| t.clone())
        .collect();
    let worker_slots: BTreeSet<String> = record
        .iter()
        .filter(|i| i.job() == format!("{}/every-5s", f.ns))
        .map(|i| i.slot())
        .collect();
    assert_eq!(live_slots, worker_slots, "{rows:?}");
    // And kube-beat knows each outcome (the result backend).
    assert!(
        rows.iter().all(|(_, s)| s == "SHADOW" || s == "SUCCESS"),
        "{rows:?}"
    );
    for inv in &record {
        assert_eq!(inv.task_name, "kb.echo");
    }
    let (first_live, last_live) = (
        live_slots.first().expect("live slots").clone(),
        live_slots.last().expect("live slots").clone(),
    );
    assert!(first_live > *shadow.last().expect("shadow"));
    assert!(
        shadow_slots(&rows).iter().any(|t| *t > last_live),
        "no shadow slot after the live ones: {rows:?}"
    );
    let grid: BTreeSet<String> = source(&[
        "aps-fire",
        &app_db.url,
        "every-5s",
        &before_first,
        // Slots missed while no operator ran are not rows: look far enough ahead.
        &(rows.len() + 30).to_string(),
    ])
    .into_iter()
    .collect();
    let all: BTreeSet<String> = rows.iter().map(|(t, _)| t.clone()).collect();
    assert!(all.is_subset(&grid), "{all:?} not on {grid:?}");
    eprintln!(
        "shadow {} live {} slots in {:?}",
        shadow_slots(&rows).len(),
        live_slots.len(),
        t0.elapsed()
    );

    drop(worker);
    let _ = kubectl(&["delete", "taskfunction", &tf_name, "--wait=false"]);
    app_db.drop_db().await;
    f.finish().await;
}
