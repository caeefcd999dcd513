//! The Celery version matrix: the migration plan's four jobs (`kube-beat import` of
//! tests/fixtures/migration-plan-jobs.json, applied as imported) run on a real worker of each
//! supported Celery release series, over Redis and over RabbitMQ, with result tracking through
//! that version's Redis result backend. Each version's worker comes from its own cached
//! virtualenv (`hack/celery-venv.sh 5.2` → tests/compat/celery-5.2.txt).
//!
//! `make compat` runs every series (hack/compat.sh); `make test` runs the short matrix, the
//! oldest series that can run on the machine and the newest. Celery 4.4 cannot run on CPython
//! 3.11 (its vine 1.3.0 imports `inspect.formatargspec`, gone in 3.11): its virtualenv is made
//! with a CPython 3.8-3.10 (tests/compat/celery-4.4.txt), and without one its tests fail saying
//! so (README, "Celery versions").

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{Worker, assert_no_duplicates, eventually, fixture, ok};
use kube::{Api, api::PostParams};
use kube_beat::api::{ScheduledJob, TaskFunction};
use serde_json::{Value, json};

/// The virtualenv of one Celery release series (created once per machine, then cached).
fn celery_venv(version: &str) -> PathBuf {
    let out = Command::new(common::env().repo.join("hack/celery-venv.sh"))
        .arg(version)
        .output()
        .expect("hack/celery-venv.sh");
    PathBuf::from(ok(&out).trim())
}

/// `celery.__version__` as the virtualenv's Python imports it, or its error output.
fn celery_version(venv: &std::path::Path) -> Result<String, String> {
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", "import celery; print(celery.__version__)"])
        .output()
        .expect("python");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What each of the plan's tasks records (args, kwargs) and returns, given the plan's
/// `task_args` (kb_worker.py implements the four tasks under their real names).
fn expected(task: &str) -> (Value, Value, Value) {
    match task {
        "tasks.ad_sync_tasks.sync_domain_users_task" => (
            json!(["corp.example.com"]),
            json!({"mode": "full"}),
            json!({"domain_id": "corp.example.com", "synced": 42, "mode": "full"}),
        ),
        "services.auth_service.auth_service.cleanup_all_expired_sessions" => (
            json!([]),
            json!({"retention_days": 7}),
            json!({"deleted": 0, "retention_days": 7}),
        ),
        "services.desktop_session_service.DesktopSessionService.cleanup_stale_sessions" => (
            json!([]),
            json!({"timeout_minutes": 2}),
            json!({"closed": 0, "timeout_minutes": 2}),
        ),
        "tasks.deployment_tasks.cleanup_stale_deployment_jobs" => (
            json!([]),
            json!({"max_age_minutes": 60}),
            json!({"cleaned": 0, "max_age_minutes": 60}),
        ),
        other => panic!("not one of the plan's tasks: {other}"),
    }
}

/// The plan's jobs as `kube-beat import` writes them: (TaskFunctions, ScheduledJobs).
fn imported_plan() -> (Vec<Value>, Vec<Value>) {
    let fixture = common::env()
        .repo
        .join("tests/fixtures/migration-plan-jobs.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .arg("import")
        .arg(&fixture)
        .output()
        .expect("kube-beat import");
    let yaml = ok(&out);
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).expect("a YAML document");
            serde_json::to_value(v).expect("JSON")
        })
        .filter(|v| !v.is_null())
        .collect();
    let of =
        |kind: &str| -> Vec<Value> { docs.iter().filter(|d| d["kind"] == kind).cloned().collect() };
    (of("TaskFunction"), of("ScheduledJob"))
}

async fn migration_plan_jobs_run_on(version: &str, broker: String) {
    let venv = celery_venv(version);
    let installed = celery_version(&venv).unwrap_or_else(|e| {
        panic!(
            "Celery {version} does not import in {}:\n{e}",
            venv.display()
        )
    });
    assert!(
        installed.starts_with(&format!("{version}.")),
        "the {version} virtualenv has Celery {installed}"
    );
    let env = common::env();
    let f = fixture("kbt-compat", broker).await;
    let backend = format!("{}/1", env.redis_url);
    let worker = Worker::start_in(
        &venv,
        &f.broker,
        Some(&backend),
        &f.queue,
        &f.db.url,
        4,
        "threads",
        &[],
    );
    assert!(
        worker.log_text().contains(&format!(" v{installed} ")),
        "the worker's banner names Celery {installed}:\n{}",
        worker.log_text()
    );

    // As imported, except: cluster-scoped TaskFunction names made unique to this test, every
    // task sent to this test's queue (its worker consumes only that), and the 30 s job started
    // 25 s ago so that its first scheduled run comes within seconds rather than after 30.
    let (task_functions, jobs) = imported_plan();
    assert_eq!((task_functions.len(), jobs.len()), (4, 4));
    let tf_api = Api::<TaskFunction>::all(f.client.clone());
    for mut tf in task_functions {
        let name = format!(
            "{}-{}",
            f.id,
            tf["metadata"]["name"].as_str().expect("name")
        );
        tf["metadata"]["name"] = json!(name);
        tf["metadata"]["labels"] = json!({"kubebeat.io/test": f.id});
        tf["spec"]["queue"] = json!(f.queue);
        let tf: TaskFunction = serde_json::from_value(tf).expect("a TaskFunction");
        tf_api
            .create(&PostParams::default(), &tf)
            .await
            .expect("create the TaskFunction");
    }
    let job_api = Api::<ScheduledJob>::namespaced(f.client.clone(), &f.ns);
    let mut names = Vec::new();
    for mut job in jobs {
        let tf = job["spec"]["taskFunction"].as_str().expect("taskFunction");
        job["spec"]["taskFunction"] = json!(format!("{}-{tf}", f.id));
        if let Some(spec) = job["spec"].as_object_mut() {
            spec.remove("queue");
        }
        if job["spec"]["schedule"]["interval"] == json!({"seconds": 30}) {
            let start = chrono::Utc::now() - chrono::Duration::seconds(25);
            job["spec"]["startTime"] =
                json!(start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        names.push(job["metadata"]["name"].as_str().expect("name").to_string());
        let job: ScheduledJob = serde_json::from_value(job).expect("a ScheduledJob");
        job_api
            .create(&PostParams::default(), &job)
            .await
            .expect("create the ScheduledJob");
    }
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    eventually("the leader", Duration::from_secs(30), || async {
        op.log_text().contains("acquired leader").then_some(())
    })
    .await;
    for name in &names {
        f.trigger(name, "compat-1").await;
    }

    // Every task ran once on demand, the 30 s job also on its schedule, each run's result came
    // back through this Celery's result backend.
    let rows: Vec<(String, String, String, Option<Value>)> = eventually(
        "four manual runs and a scheduled one, finished",
        Duration::from_secs(90),
        || async {
            let rows: Vec<(String, String, String, Option<Value>)> = sqlx::query_as(
                "SELECT j.task_name, e.trigger, e.state, e.result
                 FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id ORDER BY e.id",
            )
            .fetch_all(&f.pool)
            .await
            .ok()?;
            let done = |r: &&(String, String, String, Option<Value>)| {
                !["PENDING", "DISPATCHED", "STARTED"].contains(&r.2.as_str())
            };
            let manual = rows.iter().filter(|r| r.1 == "manual").filter(done).count();
            let scheduled = rows.iter().filter(|r| r.1 != "manual").filter(done).count();
            (manual == 4 && scheduled >= 1).then_some(rows)
        },
    )
    .await;
    for (task, trigger, state, result) in &rows {
        if ["PENDING", "DISPATCHED", "STARTED"].contains(&state.as_str()) {
            continue; // a later scheduled run, still under way
        }
        assert_eq!(state, "SUCCESS", "{task} ({trigger})");
        assert_eq!(
            result.as_ref(),
            Some(&expected(task).2),
            "{task} ({trigger})"
        );
    }
    let scheduled: Vec<&String> = rows
        .iter()
        .filter(|r| r.1 != "manual")
        .map(|r| &r.0)
        .collect();
    assert!(
        scheduled
            .iter()
            .all(|t| *t == "tasks.deployment_tasks.cleanup_stale_deployment_jobs"),
        "{scheduled:?}"
    );

    // The worker's own record: each task, with the plan's arguments, under kube-beat's headers.
    let record = f.record().await;
    assert_no_duplicates(&record);
    for task in [
        "tasks.ad_sync_tasks.sync_domain_users_task",
        "services.auth_service.auth_service.cleanup_all_expired_sessions",
        "services.desktop_session_service.DesktopSessionService.cleanup_stale_sessions",
        "tasks.deployment_tasks.cleanup_stale_deployment_jobs",
    ] {
        let ran: Vec<_> = record.iter().filter(|i| i.task_name == task).collect();
        assert!(!ran.is_empty(), "{task} never ran: {record:?}");
        let (args, kwargs, _) = expected(task);
        for inv in ran {
            assert_eq!((&inv.args, &inv.kwargs), (&args, &kwargs), "{task}");
            assert_eq!(inv.queue.as_deref(), Some(f.queue.as_str()));
            assert!(
                inv.job().starts_with(&format!("{}/", f.ns)),
                "kube-beat's headers reach Celery {installed}'s tasks: {:?}",
                inv.headers
            );
        }
    }
    drop(op);
    drop(worker);
    f.finish().await;
}

/// One test per (Celery series, broker): `celery_5_2::redis`, `celery_5_2::rabbitmq`, ...
macro_rules! celery_series {
    ($($module:ident => $version:literal),* $(,)?) => {$(
        mod $module {
            #[tokio::test]
            #[ignore = "needs the real services: make test / make compat"]
            async fn redis() {
                let env = crate::common::env();
                super::migration_plan_jobs_run_on($version, format!("{}/0", env.redis_url)).await;
            }

            #[tokio::test]
            #[ignore = "needs the real services: make test / make compat"]
            async fn rabbitmq() {
                super::migration_plan_jobs_run_on($version, crate::common::env().amqp_url).await;
            }
        }
    )*};
}

celery_series! {
    celery_4_4 => "4.4",
    celery_5_2 => "5.2",
    celery_5_3 => "5.3",
    celery_5_4 => "5.4",
    celery_5_5 => "5.5",
    celery_5_7 => "5.7",
}
