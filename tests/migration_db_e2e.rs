//! docs/migration.md "From APScheduler" and "From django-celery-beat", end to end, with the
//! doc's commands: real definitions (APScheduler's own API on its SQLAlchemy job store,
//! django-celery-beat's ORM after its migrations, each in a per-test Postgres database) are
//! imported with `kube-beat import --from apscheduler|django-celery-beat`, applied to the real
//! apiserver, shadowed (SHADOW slots at the fire times the source library computes, nothing
//! published), cut over (the jobs paused in APScheduler / disabled in django-celery-beat with the
//! doc's SQL, kube-beat live: every slot runs exactly once on a real Celery worker) and rolled
//! back (kube-beat back to shadow: nothing more is published; the jobs resumed / re-enabled).

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

/// The old scheduler's side: tests/migration/migration_e2e.py, with the source's own library.
fn source(args: &[&str]) -> Vec<String> {
    let dir = common::env().repo.join("tests/migration");
    let out = Command::new(common::migration_venv().join("bin/python"))
        .current_dir(&dir)
        .arg(dir.join("migration_e2e.py"))
        .args(args)
        .output()
        .expect("running the source scheduler's library");
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

/// The worker's record of `queue` (`Fixture::record` reads the fixture's own queue).
async fn worker_record(f: &Fixture, queue: &str) -> Vec<common::Invocation> {
    common::wait_invocations(&f.pool, queue, Duration::ZERO, |_| true).await
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

/// The old scheduler, driven with its own library (and, for django-celery-beat, the doc's SQL).
#[derive(Clone, Copy, PartialEq)]
enum Old {
    Apscheduler,
    DjangoCeleryBeat,
}

impl Old {
    fn name(self) -> &'static str {
        match self {
            Old::Apscheduler => "apscheduler",
            Old::DjangoCeleryBeat => "django-celery-beat",
        }
    }

    /// The next `n` fire times of job `id` after `from`, as the old scheduler computes them.
    fn fire(self, url: &str, id: &str, from: &str, n: usize) -> Vec<String> {
        let cmd = match self {
            Old::Apscheduler => "aps-fire",
            Old::DjangoCeleryBeat => "django-fire",
        };
        source(&[cmd, url, id, from, &n.to_string()])
    }

    /// Cutover step 1 (`true`) / rollback step 2 (`false`), as the doc says; then check it took.
    fn pause(self, url: &str, pause: bool) {
        match self {
            Old::Apscheduler => {
                source(&[if pause { "aps-pause" } else { "aps-resume" }, url]);
                for id in ["every-5s", "every-minute"] {
                    let next = source(&["aps-next-run", url, id]);
                    assert_eq!(next == ["paused"], pause, "{id}: {next:?}");
                }
            }
            Old::DjangoCeleryBeat => {
                let sql = if pause {
                    "UPDATE django_celery_beat_periodictask SET enabled = false"
                } else {
                    "UPDATE django_celery_beat_periodictask SET enabled = true \
                     WHERE name IN ('every-5s', 'every-minute')"
                };
                ok(&Command::new("psql")
                    .args([url, "-v", "ON_ERROR_STOP=1", "-c", sql])
                    .output()
                    .expect("psql"));
                let enabled = ok(&Command::new("psql")
                    .args([url, "-tA", "-c"])
                    .arg(
                        "SELECT bool_and(enabled) = bool_or(enabled) AND bool_or(enabled) \
                          FROM django_celery_beat_periodictask",
                    )
                    .output()
                    .expect("psql"));
                assert_eq!(enabled.trim(), if pause { "f" } else { "t" });
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs the local control plane (make test)"]
async fn apscheduler_import_shadow_cutover_rollback() {
    migrate(Old::Apscheduler).await;
}

#[tokio::test]
#[ignore = "needs the local control plane (make test)"]
async fn django_celery_beat_import_shadow_cutover_rollback() {
    migrate(Old::DjangoCeleryBeat).await;
}

async fn migrate(old: Old) {
    let t0 = Instant::now();
    // APScheduler has no queues: its TaskFunction has Celery's default `celery`, on a Redis
    // database of these tests' own so no other test's worker takes its messages.
    // django-celery-beat's tasks name the fixture's queue.
    let f = fixture("kbt-migdb", format!("{}/9", common::env().redis_url)).await;
    let queue = match old {
        Old::Apscheduler => "celery".to_string(),
        Old::DjangoCeleryBeat => f.queue.clone(),
    };
    let app_db = TestDb::create().await;
    // The workers that will take over the jobs; they already run during the shadow phase.
    // With their result backend: `max_instances = 1` is imported as `concurrencyPolicy: Forbid`,
    // and without outcomes kube-beat cannot know a run has finished (every later slot skipped).
    let backend = format!("{}/10", common::env().redis_url);
    let worker = Worker::start(&f.broker, Some(&backend), &queue, &f.db.url);

    // The old scheduler: an interval job every 5 s from `start` and a cron job every minute.
    let start = iso(Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(3));
    match old {
        Old::Apscheduler => source(&["aps-setup", &app_db.url, &start]),
        Old::DjangoCeleryBeat => source(&["django-setup", &app_db.url, &start, &queue]),
    };

    // 1. import, exactly as the doc says (plus a prefix: TaskFunctions are cluster-scoped).
    let dir = tempfile::tempdir().expect("temp dir");
    let (jobs_yaml, report) = (dir.path().join("jobs.yaml"), dir.path().join("report.json"));
    let prefix = format!("{}-", f.id);
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(["import", "--from", old.name(), &app_db.url, "-n", &f.ns])
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
    // 2. The Celery task `kb.echo` (registered in kb_worker.py; APScheduler's `kb:echo`).
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

    // 3. shadow run: SHADOW slots at the source's own fire times, nothing published.
    let op = operator(&f, "shadow", &backend);
    let shadow = eventually("3 SHADOW slots", Duration::from_secs(40), || async {
        let s = shadow_slots(&executions(&f, "every-5s").await);
        (s.len() >= 3).then_some(s)
    })
    .await;
    assert!(shadow[0] >= start, "{shadow:?} before {start}");
    let before_first = iso(parse(&shadow[0]) - chrono::Duration::seconds(1));
    let theirs = old.fire(&app_db.url, "every-5s", &before_first, shadow.len());
    assert_eq!(
        shadow, theirs,
        "SHADOW slots vs. the old scheduler's fire times"
    );
    // The cron job (Europe/Berlin): kube-beat's next run is the source's next fire time.
    eventually(
        "every-minute's next run is the source's",
        Duration::from_secs(20),
        || async {
            let now = iso(Utc::now());
            let next = f.status("every-minute").await["nextScheduleTime"].clone();
            let theirs = old.fire(&app_db.url, "every-minute", &now, 1);
            (next.as_str() == Some(theirs[0].as_str())).then_some(())
        },
    )
    .await;
    assert!(
        worker_record(&f, &queue).await.is_empty(),
        "shadow mode published"
    );
    assert!(worker.log_text().contains(" ready."));

    // 4. cutover: pause / disable the jobs in the old scheduler, then go live.
    old.pause(&app_db.url, true);
    stop(op);
    let live = operator(&f, "live", &backend);
    let record = common::wait_invocations(&f.pool, &queue, Duration::from_secs(40), |r| {
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

    // 5. rollback: kube-beat back to shadow, then resume / re-enable the jobs in the old one.
    stop(live);
    let rolled_back = executions(&f, "every-5s").await;
    let op = operator(&f, "shadow", &backend);
    old.pause(&app_db.url, false);
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
    // the rollback; every slot (shadow and live) is on the source's grid.
    let record = worker_record(&f, &queue).await;
    assert_no_duplicates(&record);
    let rows = executions(&f, "every-5s").await;
    // A run claimed just as the live operator stopped for the rollback stays PENDING: the
    // shadow operator never publishes it (the old scheduler has the job again).
    let pending: Vec<_> = rows.iter().filter(|(_, s)| s == "PENDING").collect();
    let live_slots: BTreeSet<String> = rows
        .iter()
        .filter(|(_, s)| s != "SHADOW" && s != "PENDING")
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
        rows.iter()
            .all(|(_, s)| ["SHADOW", "SUCCESS", "PENDING"].contains(&s.as_str())),
        "{rows:?}"
    );
    assert!(
        pending.len() <= 1
            && pending
                .iter()
                .all(|(t, _)| live_slots.last().is_some_and(|l| t > l)),
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
    // Slots missed while no operator ran are not rows: look far enough ahead.
    let grid: BTreeSet<String> = old
        .fire(&app_db.url, "every-5s", &before_first, rows.len() + 30)
        .into_iter()
        .collect();
    let all: BTreeSet<String> = rows.iter().map(|(t, _)| t.clone()).collect();
    assert!(all.is_subset(&grid), "{all:?} not on {grid:?}");
    eprintln!(
        "{}: shadow {} live {} slots in {:?}",
        old.name(),
        shadow_slots(&rows).len(),
        live_slots.len(),
        t0.elapsed()
    );

    drop(worker);
    let _ = kubectl(&["delete", "taskfunction", &tf_name, "--wait=false"]);
    app_db.drop_db().await;
    f.finish().await;
}
