//! Upgrading from the previous release: its chart (CRDs as templates) and its data, then
//! `helm upgrade` to this chart and a rolling update of two replicas from the previous binary to
//! this one, while jobs run every second. Every ScheduledJob is still reconciled by the new
//! version, and no run is lost or doubled across the upgrade, counted on the Celery worker.
//!
//! The previous release is the commit in `hack/previous-release` (chart 0.1.0), built once per
//! machine by `hack/previous-release.sh`. There is no kubelet here, so the Deployment's Pods do
//! not run: the replicas are processes started exactly as the chart's container starts them
//! (`kube-beat run` with the chart's flags), and the rolling update follows the Deployment's
//! strategy (a new replica up and ready before an old one gets SIGTERM). The test gets a control
//! plane of its own (`make test`): it installs CRDs of another version.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{
    FAST_LEASE, Fixture, Operator, assert_no_duplicates, eventually, fixture, kubectl, ok,
};
use serde_json::{Value, json};

const JOBS: usize = 5;

fn helm() -> String {
    let out = Command::new(common::env().repo.join("hack/helm.sh"))
        .output()
        .expect("hack/helm.sh");
    ok(&out).trim().to_string()
}

/// (binary, chart dir) of the previous release.
fn previous_release() -> (PathBuf, PathBuf) {
    let out = Command::new(common::env().repo.join("hack/previous-release.sh"))
        .output()
        .expect("hack/previous-release.sh");
    let text = ok(&out);
    let mut lines = text.lines();
    let bin = PathBuf::from(lines.next().expect("binary path"));
    let chart = PathBuf::from(lines.next().expect("chart path"));
    assert!(bin.is_file() && chart.join("Chart.yaml").is_file());
    (bin, chart)
}

fn chart_version(dir: &std::path::Path) -> String {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml parses");
    chart["version"].as_str().expect("version").to_string()
}

fn operator(bin: &std::path::Path, f: &Fixture) -> Operator {
    let mut args = vec!["--broker-url", f.broker.as_str()];
    args.extend_from_slice(&FAST_LEASE);
    Operator::start_binary(bin, &f.db.url, &f.ns, &f.ns, &f.id, &args, &[])
}

fn leads(op: &Operator) -> bool {
    let log = op.log_text();
    match log.rfind("acquired leader") {
        Some(acquired) => log.rfind("lost leader").is_none_or(|lost| lost < acquired),
        None => false,
    }
}

/// `/readyz` answers 200 (curl, as the install suite checks it).
fn ready(addr: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "2"])
        .arg(format!("http://{addr}/readyz"))
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
#[ignore = "needs a control plane of its own (make test)"]
async fn helm_upgrade_and_rolling_update_from_the_previous_release() {
    let env = common::env();
    let helm = helm();
    let (old_bin, old_chart) = previous_release();
    let new_chart = env.repo.join("charts/kube-beat");
    assert_ne!(chart_version(&old_chart), chart_version(&new_chart));

    // The previous chart: its CRDs (templates, owned by the release), RBAC, Deployment.
    let release_ns = common::namespace("kbt-upg-rel");
    let install = Command::new(&helm)
        .args(["install", "kb"])
        .arg(&old_chart)
        .args(["-n", &release_ns, "--set", "migrations.mode=start"])
        .output()
        .expect("helm install");
    ok(&install);
    let crd_chart = || {
        let out = kubectl(&[
            "get",
            "crd",
            "scheduledjobs.kubebeat.io",
            "-o",
            "jsonpath={.metadata.labels.helm\\.sh/chart}",
        ]);
        ok(&out).trim().to_string()
    };
    assert_eq!(
        crd_chart(),
        format!("kube-beat-{}", chart_version(&old_chart))
    );

    // Its data: the previous binary migrates the database and runs the jobs (two replicas).
    let f = fixture("kbt-upg", format!("{}/0", env.redis_url)).await;
    let _worker = f.worker();
    f.task_function("echo", "kb.echo").await;
    for i in 0..JOBS {
        f.job(
            &format!("j{i}"),
            "echo",
            json!({"schedule": {"interval": {"seconds": 1}}, "kwargs": {"v": 1}}),
        )
        .await;
    }
    let mut old: Vec<Operator> = (0..2).map(|_| operator(&old_bin, &f)).collect();
    eventually(
        "the previous release runs every job",
        Duration::from_secs(90),
        || async {
            let r = f.record().await;
            (0..JOBS)
                .all(|i| {
                    r.iter()
                        .filter(|inv| inv.job().ends_with(&format!("/j{i}")))
                        .count()
                        >= 3
                })
                .then_some(())
        },
    )
    .await;

    // `helm upgrade` to this chart: the Secret it now checks for, then the CRDs (templates) and
    // RBAC are replaced while the old replicas keep running.
    ok(&kubectl(&[
        "-n",
        &release_ns,
        "create",
        "secret",
        "generic",
        "kube-beat",
        &format!("--from-literal=database-url={}", f.db.url),
        &format!("--from-literal=broker-url={}", f.broker),
    ]));
    let upgrade = Command::new(&helm)
        .args(["upgrade", "kb"])
        .arg(&new_chart)
        .args([
            "-n",
            &release_ns,
            "--set",
            "migrations.mode=start,webhook.enabled=false",
        ])
        .output()
        .expect("helm upgrade");
    ok(&upgrade);
    assert_eq!(
        crd_chart(),
        format!("kube-beat-{}", chart_version(&new_chart)),
        "helm upgrade replaced the CRDs"
    );

    // The rolling update (maxUnavailable 0): a new replica up and ready, then an old one stopped.
    let mut new: Vec<Operator> = Vec::new();
    while let Some(mut retiring) = old.pop() {
        let replacement = operator(std::path::Path::new(env!("CARGO_BIN_EXE_kube-beat")), &f);
        let addr = eventually(
            "the new replica's HTTP address",
            Duration::from_secs(30),
            || async { replacement.http_addr() },
        )
        .await;
        eventually("the new replica ready", Duration::from_secs(60), || async {
            ready(&addr).then_some(())
        })
        .await;
        new.push(replacement);
        retiring.signal("TERM");
        assert!(
            retiring.wait_exit(Duration::from_secs(30)),
            "the previous replica did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eventually("a new replica leads", Duration::from_secs(30), || async {
        new.iter().any(leads).then_some(())
    })
    .await;
    let upgraded_at = chrono::Utc::now();

    // Every job is reconciled by the new version: a spec change is observed and Ready again.
    for i in 0..JOBS {
        ok(&kubectl(&[
            "-n",
            &f.ns,
            "patch",
            "scheduledjob",
            &format!("j{i}"),
            "--type=merge",
            "-p",
            r#"{"spec":{"kwargs":{"v":2}}}"#,
        ]));
    }
    for i in 0..JOBS {
        let name = format!("j{i}");
        eventually(
            &format!("{name} reconciled after the upgrade"),
            Duration::from_secs(60),
            || async {
                let job = ok(&kubectl(&[
                    "-n",
                    &f.ns,
                    "get",
                    "scheduledjob",
                    &name,
                    "-o",
                    "json",
                ]));
                let job: Value = serde_json::from_str(&job).expect("json");
                let generation = job["metadata"]["generation"].as_i64();
                let ready = job["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (ready && job["status"]["observedGeneration"].as_i64() == generation).then_some(())
            },
        )
        .await;
    }
    // Runs with the new kwargs arrive for every job, after the upgrade.
    eventually(
        "runs with the new spec",
        Duration::from_secs(60),
        || async {
            let r = f.record().await;
            (0..JOBS)
                .all(|i| {
                    r.iter().any(|inv| {
                        inv.job().ends_with(&format!("/j{i}")) && inv.kwargs["v"] == json!(2)
                    })
                })
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for op in &mut new {
        op.assert_running();
    }
    drop(new);
    tokio::time::sleep(Duration::from_secs(2)).await; // let the worker finish what it holds

    // Nothing doubled, nothing lost: on the worker, every (job, slot) once; in the history,
    // consecutive slots one period apart unless a run says how many slots it coalesced.
    let record = f.record().await;
    assert_no_duplicates(&record);
    let per_job = f.assert_slots_accounted(JOBS, 1).await;
    for (name, slots) in &per_job {
        assert!(
            slots.iter().any(|s| *s > upgraded_at.timestamp() + 1),
            "{name} ran after the upgrade"
        );
    }
    // Each dispatched slot reached the worker exactly once.
    let on_worker = record.len();
    let dispatched: usize = per_job.values().map(Vec::len).sum();
    assert!(
        on_worker + JOBS * 2 >= dispatched && on_worker <= dispatched,
        "worker ran {on_worker} of {dispatched} dispatched runs"
    );
    let _ = Command::new(&helm)
        .args(["uninstall", "kb", "-n", &release_ns])
        .output();
    f.finish().await;
}
