//! docs/migration.md's four paths (From Celery beat, From django-celery-beat, From RedBeat, From
//! APScheduler), end to end, with the doc's commands: real definitions (a Celery app module's
//! `beat_schedule`, django-celery-beat's ORM after its migrations, RedBeat's own
//! `RedBeatSchedulerEntry`, APScheduler's API on its SQLAlchemy job store) are imported with
//! `kube-beat import --from ...`, applied to the real apiserver, shadowed (SHADOW slots at the fire
//! times the source library computes, nothing published; for Celery beat and RedBeat a real
//! `celery beat` runs the jobs meanwhile), cut over (the jobs paused in APScheduler / disabled in
//! django-celery-beat with the doc's SQL / beat stopped, kube-beat live: every slot runs exactly
//! once on a real Celery worker) and rolled back (kube-beat back to shadow: nothing more is
//! published; the old scheduler resumed).

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
    source_in(&common::env().repo.join("tests/migration"), args)
}

/// The same, run in `cwd` (where `celery beat` imports the app module from).
fn source_in(cwd: &std::path::Path, args: &[&str]) -> Vec<String> {
    let dir = common::env().repo.join("tests/migration");
    let out = Command::new(common::migration_venv().join("bin/python"))
        .current_dir(cwd)
        .env("PYTHONPATH", &dir)
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

/// The old scheduler, driven with its own library (and, for django-celery-beat, the doc's SQL;
/// for Celery beat and RedBeat, a real `celery beat` process).
#[derive(Clone, Copy, PartialEq)]
enum Old {
    Apscheduler,
    DjangoCeleryBeat,
    CeleryBeat,
    RedBeat,
}

/// The Celery app module `celery beat` and the import read (the doc's `proj.celery`).
const BEAT_MODULE: &str = "kbt_mig_beat";

/// Celery beat's schedule: an interval every 5 s and a minute crontab in Europe/Berlin. RedBeat's
/// entries live in Redis (written with `RedBeatSchedulerEntry`), so its `beat_schedule` is empty.
const BEAT_APP: &str = r#"
from celery import Celery
from celery.schedules import crontab
app = Celery("kbt", broker="BROKER")
app.conf.timezone = "Europe/Berlin"
app.conf.beat_max_loop_interval = 1
app.conf.redbeat_redis_url = "BROKER"
app.conf.redbeat_key_prefix = "PREFIX"
app.conf.redbeat_lock_timeout = 5
# No `celery.backend_cleanup` entry of beat's own (RedBeat would save it next to the test's).
app.conf.result_expires = None
app.conf.beat_schedule = {} if "PREFIX" else {
    "every-5s": {"task": "kb.echo", "schedule": 5.0, "args": ["interval"],
                 "options": {"queue": "QUEUE"}},
    "every-minute": {"task": "kb.echo", "schedule": crontab(minute="*"), "args": ["cron"],
                     "options": {"queue": "QUEUE"}},
}
"#;

/// One source scheduler of the test: where its definitions are, and its beat process if any.
struct Source {
    old: Old,
    /// The Postgres database (APScheduler, django-celery-beat) or Redis (RedBeat) URL.
    url: String,
    /// The Celery app module's directory (Celery beat, RedBeat).
    dir: tempfile::TempDir,
    /// RedBeat's key prefix (unique per test; the keys are deleted at the end).
    prefix: String,
    /// RedBeat's interval grid, read from the saved entry before any beat ran (a running RedBeat
    /// moves `last_run_at` to each actual run).
    grid: Vec<String>,
    beat: Option<std::process::Child>,
    beat_log: std::path::PathBuf,
}

impl Source {
    fn name(&self) -> &'static str {
        match self.old {
            Old::Apscheduler => "apscheduler",
            Old::DjangoCeleryBeat => "django-celery-beat",
            Old::CeleryBeat => "celery-beat",
            Old::RedBeat => "redbeat",
        }
    }

    /// Whether the old scheduler is a `celery beat` process that publishes to the workers.
    fn beats(&self) -> bool {
        matches!(self.old, Old::CeleryBeat | Old::RedBeat)
    }

    /// The next `n` fire times of job `id` after `from`, as the old scheduler computes them.
    /// Celery beat's interval has no fixed anchor (it counts from beat's start): `from` is its
    /// last run. RedBeat's interval is on the grid of its saved `last_run_at`.
    fn fire(&self, id: &str, from: &str, n: usize) -> Vec<String> {
        let n_s = n.to_string();
        match self.old {
            Old::Apscheduler => source(&["aps-fire", &self.url, id, from, &n_s]),
            Old::DjangoCeleryBeat => source(&["django-fire", &self.url, id, from, &n_s]),
            Old::CeleryBeat => source_in(
                self.dir.path(),
                &["celery-fire", BEAT_MODULE, id, from, &n_s],
            ),
            Old::RedBeat if id == "every-5s" => {
                assert!(self.grid.len() >= n, "grid of {} slots", self.grid.len());
                self.grid
                    .iter()
                    .filter(|t| t.as_str() > from)
                    .take(n)
                    .cloned()
                    .collect()
            }
            Old::RedBeat => source(&["redbeat-fire", &self.url, &self.prefix, id, from, &n_s]),
        }
    }

    /// Start the old scheduler's beat process (Celery beat, RedBeat) and wait until it runs.
    fn start_beat(&mut self) {
        if !self.beats() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.beat_log)
            .expect("beat log");
        let mut cmd = Command::new(common::migration_venv().join("bin/celery"));
        cmd.current_dir(self.dir.path())
            .args(["-A", BEAT_MODULE, "beat", "-l", "info", "--pidfile="])
            .arg("-s")
            .arg(self.dir.path().join("celerybeat-schedule"));
        if self.old == Old::RedBeat {
            cmd.args(["-S", "redbeat.RedBeatScheduler"]);
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("celery beat");
        self.beat = Some(child);
    }

    /// `celery beat`'s log so far.
    fn beat_log(&self) -> String {
        std::fs::read_to_string(&self.beat_log).unwrap_or_default()
    }

    /// Stop beat as `kubectl scale --replicas=0` does (SIGTERM), and wait until it has exited.
    fn stop_beat(&mut self) {
        if let Some(mut child) = self.beat.take() {
            ok(&Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .output()
                .expect("kill"));
            let t = Instant::now();
            while child.try_wait().expect("beat status").is_none() {
                assert!(
                    t.elapsed() < Duration::from_secs(15),
                    "celery beat did not stop"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Cutover step 1 (`true`) / rollback step 2 (`false`), as the doc says; then check it took.
    fn pause(&mut self, pause: bool) {
        let url = self.url.clone();
        let url = url.as_str();
        match self.old {
            Old::CeleryBeat | Old::RedBeat => {
                if pause {
                    self.stop_beat();
                } else {
                    self.start_beat();
                }
            }
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

    /// Remove what the source left outside the test's databases (RedBeat's keys).
    fn cleanup(&mut self) {
        self.stop_beat();
        if self.old == Old::RedBeat {
            let client = redis::Client::open(self.url.as_str()).expect("redis url");
            let mut conn = client.get_connection().expect("redis");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query(&mut conn)
                .expect("keys");
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).expect("del");
            }
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(mut child) = self.beat.take() {
            let _ = child.kill();
            let _ = child.wait();
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

#[tokio::test]
#[ignore = "needs the local control plane (make test)"]
async fn celery_beat_import_shadow_cutover_rollback() {
    migrate(Old::CeleryBeat).await;
}

#[tokio::test]
#[ignore = "needs the local control plane (make test)"]
async fn redbeat_import_shadow_cutover_rollback() {
    migrate(Old::RedBeat).await;
}

async fn migrate(old: Old) {
    let t0 = Instant::now();
    // APScheduler has no queues: its TaskFunction has Celery's default `celery`, on a Redis
    // database of these tests' own so no other test's worker takes its messages.
    // The other sources' entries name the fixture's queue.
    let f = fixture("kbt-migdb", format!("{}/9", common::env().redis_url)).await;
    let queue = match old {
        Old::Apscheduler => "celery".to_string(),
        _ => f.queue.clone(),
    };
    let app_db = TestDb::create().await;
    // The workers that will take over the jobs; they already run during the shadow phase (and
    // run what a `celery beat` sends then).
    // With their result backend: `max_instances = 1` is imported as `concurrencyPolicy: Forbid`,
    // and without outcomes kube-beat cannot know a run has finished (every later slot skipped).
    let backend = format!("{}/10", common::env().redis_url);
    let worker = Worker::start(&f.broker, Some(&backend), &queue, &f.db.url);

    // The old scheduler: an interval job every 5 s from `start` and a cron job every minute.
    let start = iso(Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(3));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut src = Source {
        old,
        url: match old {
            Old::RedBeat => f.broker.clone(),
            _ => app_db.url.clone(),
        },
        prefix: match old {
            Old::RedBeat => format!("{}:", common::unique("kbt-redbeat")),
            _ => String::new(),
        },
        beat_log: dir.path().join("beat.log"),
        dir: tempfile::tempdir().expect("temp dir"),
        grid: Vec::new(),
        beat: None,
    };
    std::fs::write(
        src.dir.path().join(format!("{BEAT_MODULE}.py")),
        BEAT_APP
            .replace("BROKER", &f.broker)
            .replace("PREFIX", &src.prefix)
            .replace("QUEUE", &queue),
    )
    .expect("the Celery app module");
    match old {
        Old::Apscheduler => drop(source(&["aps-setup", &app_db.url, &start])),
        Old::DjangoCeleryBeat => drop(source(&["django-setup", &app_db.url, &start, &queue])),
        Old::CeleryBeat => {}
        Old::RedBeat => {
            source(&["redbeat-setup", &src.url, &src.prefix, &start, &queue]);
            src.grid = source(&[
                "redbeat-fire",
                &src.url,
                &src.prefix,
                "every-5s",
                "-",
                "200",
            ]);
            assert_eq!(src.grid[0], start, "RedBeat's next run");
        }
    }
    // The old beat runs the jobs from the start (it is what is being replaced).
    src.start_beat();

    // 1. import, exactly as the doc says (plus a prefix: TaskFunctions are cluster-scoped).
    let (jobs_yaml, report) = (dir.path().join("jobs.yaml"), dir.path().join("report.json"));
    let prefix = format!("{}-", f.id);
    let mut import = Command::new(env!("CARGO_BIN_EXE_kube-beat"));
    import.args(["import", "--from", src.name()]);
    match old {
        // From the directory `celery beat` runs in, with the app's Python.
        Old::CeleryBeat => import
            .current_dir(src.dir.path())
            .arg(BEAT_MODULE)
            .arg("--python")
            .arg(common::migration_venv().join("bin/python")),
        Old::RedBeat => import.args([&src.url, "--redbeat-key-prefix", &src.prefix]),
        _ => import.arg(&app_db.url),
    };
    let out = import
        .args(["--namespace", &f.ns])
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
        !text.contains(src.url.as_str()),
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
    if old == Old::CeleryBeat {
        // `interval-anchor`: Celery beat counts from its own start, kube-beat from when the job
        // was stored; the grids have the same step (Celery's fire times from kube-beat's first
        // slot), and the report says so.
        let theirs = src.fire("every-5s", &shadow[0], shadow.len() - 1);
        assert_eq!(
            shadow[1..],
            theirs[..],
            "SHADOW slots vs. Celery's interval"
        );
        assert!(report.to_string().contains("interval-anchor"), "{report:#}");
    } else {
        let theirs = src.fire("every-5s", &before_first, shadow.len());
        assert_eq!(
            shadow, theirs,
            "SHADOW slots vs. the old scheduler's fire times"
        );
    }
    // The cron job (Europe/Berlin): kube-beat's next run is the source's next fire time.
    eventually(
        "every-minute's next run is the source's",
        Duration::from_secs(20),
        || async {
            let now = iso(Utc::now());
            let next = f.status("every-minute").await["nextScheduleTime"].clone();
            let theirs = src.fire("every-minute", &now, 1);
            (next.as_str() == Some(theirs[0].as_str())).then_some(())
        },
    )
    .await;
    let ours = |r: &[common::Invocation]| -> usize {
        r.iter()
            .filter(|i| i.job() == format!("{}/every-5s", f.ns))
            .count()
    };
    let beat_runs = |r: &[common::Invocation]| -> usize {
        r.iter()
            .filter(|i| i.job().is_empty() && i.args == serde_json::json!(["interval"]))
            .count()
    };
    if src.beats() {
        // Compare with what beat sent: it runs the job meanwhile, on the same workers.
        let record = common::wait_invocations(&f.pool, &queue, Duration::from_secs(20), |r| {
            beat_runs(r) >= 2
        })
        .await;
        assert!(beat_runs(&record) >= 2, "{record:?}\n{}", src.beat_log());
        assert!(
            src.beat_log()
                .contains("Scheduler: Sending due task every-5s (kb.echo)"),
            "{}",
            src.beat_log()
        );
    }
    let record = worker_record(&f, &queue).await;
    assert!(
        record.iter().all(|i| i.job().is_empty()),
        "shadow mode published: {record:?}"
    );
    assert_eq!(record.is_empty(), !src.beats());
    assert!(worker.log_text().contains(" ready."));

    // 4. cutover: pause / disable / stop the jobs in the old scheduler, then go live.
    src.pause(true);
    // What beat sent before it stopped has reached the worker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beat_before = beat_runs(&worker_record(&f, &queue).await);
    stop(op);
    let live = operator(&f, "live", &backend);
    let record =
        common::wait_invocations(&f.pool, &queue, Duration::from_secs(40), |r| ours(r) >= 3).await;
    assert!(ours(&record) >= 3, "{record:?}\n{}", live.log_text());
    // The old scheduler is off: nothing of its own reached the workers while kube-beat was live.
    assert_eq!(beat_runs(&record), beat_before, "{record:?}");

    // 5. rollback: kube-beat back to shadow, then resume / re-enable / restart the old one.
    stop(live);
    let rolled_back = executions(&f, "every-5s").await;
    let beat_live = beat_runs(&worker_record(&f, &queue).await);
    assert_eq!(beat_live, beat_before);
    let op = operator(&f, "shadow", &backend);
    src.pause(false);
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
    if src.beats() {
        // Beat runs the jobs again (RedBeat from its recorded last_run_at).
        let record = common::wait_invocations(&f.pool, &queue, Duration::from_secs(20), |r| {
            beat_runs(r) > beat_live
        })
        .await;
        assert!(beat_runs(&record) > beat_live, "{}", src.beat_log());
    }
    stop(op);
    src.cleanup();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Exactly once: every live slot ran once on the worker, nothing ran twice, nothing after
    // the rollback; every slot (shadow and live) is on the source's grid.
    let all_record = worker_record(&f, &queue).await;
    let record: Vec<common::Invocation> = all_record
        .into_iter()
        .filter(|i| !i.job().is_empty())
        .collect();
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
    // Slots missed while no operator ran are not rows: look far enough ahead. (Celery beat's
    // interval grid is kube-beat's first slot's, see `interval-anchor` above.)
    let grid: BTreeSet<String> = if old == Old::CeleryBeat {
        let mut g = src.fire("every-5s", &shadow[0], rows.len() + 30);
        g.push(shadow[0].clone());
        g.into_iter().collect()
    } else {
        src.fire("every-5s", &before_first, rows.len() + 30)
            .into_iter()
            .collect()
    };
    let all: BTreeSet<String> = rows.iter().map(|(t, _)| t.clone()).collect();
    assert!(all.is_subset(&grid), "{all:?} not on {grid:?}");
    eprintln!(
        "{}: shadow {} live {} slots in {:?}",
        src.name(),
        shadow_slots(&rows).len(),
        live_slots.len(),
        t0.elapsed()
    );

    drop(worker);
    let _ = kubectl(&["delete", "taskfunction", &tf_name, "--wait=false"]);
    app_db.drop_db().await;
    f.finish().await;
}
