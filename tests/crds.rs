//! The CRDs: drift, round trips, and the real apiserver's schema enforcement.

mod common;

use common::{install_crds, kubectl, kubectl_stdin, namespace, ok};
use kube_beat::api::{ScheduledJob, TaskFunction};

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn generated_crds_do_not_drift() {
    let generated = kube_beat::api::crd_yaml().expect("rendering CRDs");
    let committed = repo_file("crds/kube-beat-crds.yaml");
    assert!(
        generated == committed,
        "crds/kube-beat-crds.yaml is out of date: run `make generate` and commit the result"
    );
    let chart = kube_beat::api::crd_helm_template().expect("rendering the chart's CRDs");
    assert!(
        chart == repo_file("charts/kube-beat/templates/crds.yaml"),
        "charts/kube-beat/templates/crds.yaml is out of date: run `make generate` and commit it"
    );
    // The chart's copy carries the same schemas (only the Helm wrapping differs).
    let wrapped: Vec<&str> = chart
        .lines()
        .filter(|l| !l.contains("{{"))
        .filter(|l| {
            !l.contains("helm.sh/resource-policy")
                && l.trim() != "annotations:"
                && l.trim() != "labels:"
        })
        .collect();
    let plain: Vec<&str> = generated.lines().collect();
    assert_eq!(wrapped, plain, "the chart's CRDs and crds/ say the same");
}

#[test]
fn examples_deserialize_and_round_trip() {
    let mut jobs = 0;
    let mut functions = 0;
    for file in [
        "examples/task-functions.yaml",
        "examples/scheduled-jobs.yaml",
    ] {
        for doc in documents(&repo_file(file)) {
            let kind = doc["kind"].as_str().expect("kind").to_string();
            let original = serde_json::to_value(&doc).expect("to json");
            let back = match kind.as_str() {
                "ScheduledJob" => {
                    jobs += 1;
                    let job: ScheduledJob =
                        serde_json::from_value(original.clone()).expect("a ScheduledJob");
                    serde_json::to_value(&job).expect("serialize")
                }
                "TaskFunction" => {
                    functions += 1;
                    let tf: TaskFunction =
                        serde_json::from_value(original.clone()).expect("a TaskFunction");
                    serde_json::to_value(&tf).expect("serialize")
                }
                other => panic!("unexpected kind {other} in {file}"),
            };
            // Everything the user wrote survives (defaults may be added, nothing is lost or changed).
            assert_subset(&original["spec"], &back["spec"], &format!("{file}: {kind}"));
        }
    }
    assert_eq!(
        (jobs, functions),
        (4, 4),
        "the four default jobs and their task functions"
    );
}

fn assert_subset(expected: &serde_json::Value, actual: &serde_json::Value, ctx: &str) {
    match expected {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                assert_subset(v, &actual[k], &format!("{ctx}.{k}"));
            }
        }
        _ => assert_eq!(expected, actual, "{ctx}"),
    }
}

fn apply_job(ns: &str, name: &str, spec_yaml: &str) -> std::process::Output {
    let manifest = format!(
        "apiVersion: kubebeat.io/v1alpha1\nkind: ScheduledJob\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec_yaml}"
    );
    // --validate=false: the real apiserver, not kubectl's client-side check, must reject it.
    kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &manifest)
}

#[test]
#[ignore = "needs the real apiserver: make test"]
fn apiserver_rejects_invalid_objects_naming_the_field() {
    install_crds();
    let ns = namespace("kbt-schema");
    let base = "  taskFunction: f\n";
    let cases = [
        (
            "both-cron-and-interval",
            "  schedule:\n    cron: '* * * * *'\n    interval: {seconds: 5}\n",
            "spec.schedule",
        ),
        ("no-schedule-kind", "  schedule: {}\n", "spec.schedule"),
        (
            "negative-seconds",
            "  schedule:\n    interval: {seconds: -5}\n",
            "spec.schedule.interval.seconds",
        ),
        (
            "priority-12",
            "  schedule:\n    cron: '* * * * *'\n  priority: 12\n",
            "spec.priority",
        ),
        (
            "bad-policy",
            "  schedule:\n    cron: '* * * * *'\n  concurrencyPolicy: Sometimes\n",
            "spec.concurrencyPolicy",
        ),
        (
            "kwargs-not-object",
            "  schedule:\n    cron: '* * * * *'\n  kwargs: [1, 2]\n",
            "spec.kwargs",
        ),
        (
            "args-not-array",
            "  schedule:\n    cron: '* * * * *'\n  args: {a: 1}\n",
            "spec.args",
        ),
        (
            "bad-start-time",
            "  schedule:\n    cron: '* * * * *'\n  startTime: yesterday\n",
            "spec.startTime",
        ),
        (
            "missing-task-function",
            "  schedule:\n    cron: '* * * * *'\n",
            "spec.taskFunction",
        ),
    ];
    for (name, spec, field) in cases {
        let spec = if name == "missing-task-function" {
            spec.to_string()
        } else {
            format!("{base}{spec}")
        };
        let out = apply_job(&ns, name, &spec);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: the apiserver accepted an invalid object"
        );
        assert!(
            stderr.contains(field),
            "{name}: the error should name {field}, got: {stderr}"
        );
    }
    // And a valid one is accepted and reads back unchanged.
    let out = apply_job(
        &ns,
        "valid",
        "  taskFunction: f\n  schedule:\n    interval: {minutes: 5}\n  priority: 9\n  kwargs: {a: [1, {b: 2}]}\n",
    );
    ok(&out);
    let got = ok(&kubectl(&[
        "get",
        "scheduledjob",
        "valid",
        "-n",
        &ns,
        "-o",
        "json",
    ]));
    let job: ScheduledJob = serde_json::from_str(&got).expect("reads back as a ScheduledJob");
    assert_eq!(job.spec.priority, Some(9));
    assert_eq!(
        job.spec.schedule.interval.as_ref().map(|i| i.minutes),
        Some(5)
    );
    assert_eq!(
        job.spec.kwargs,
        Some(serde_json::json!({"a": [1, {"b": 2}]}))
    );
    ok(&kubectl(&["delete", "namespace", &ns, "--wait=false"]));
}

#[test]
#[ignore = "needs the real apiserver: make test"]
fn examples_apply_and_kubectl_shows_columns_and_docs() {
    install_crds();
    let ns = namespace("kbt-examples");
    let repo = env!("CARGO_MANIFEST_DIR");
    ok(&kubectl(&[
        "apply",
        "-n",
        &ns,
        "-f",
        &format!("{repo}/examples/"),
    ]));

    let table = ok(&kubectl(&["get", "scheduledjobs", "-n", &ns]));
    let header = table.lines().next().expect("a header line");
    let columns: Vec<&str> = header
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        columns,
        [
            "NAME",
            "TASK",
            "SCHEDULE",
            "SUSPEND",
            "LAST RUN",
            "LAST STATUS",
            "NEXT RUN",
            "READY",
            "AGE"
        ],
        "printer columns, got:\n{table}"
    );
    for name in [
        "domain-user-sync",
        "token-cleanup",
        "desktop-session-cleanup",
        "deployment-job-cleanup",
    ] {
        assert!(table.contains(name), "{name} listed:\n{table}");
    }
    let short = ok(&kubectl(&["get", "sj", "-n", &ns, "-o", "name"]));
    assert_eq!(short.lines().count(), 4, "short name sj works:\n{short}");
    let tfs = ok(&kubectl(&["get", "tf"]));
    assert!(
        tfs.contains("tasks.ad_sync_tasks.sync_domain_users_task"),
        "{tfs}"
    );

    let explain = ok(&kubectl(&["explain", "scheduledjob.spec.schedule"]));
    assert!(
        explain.contains("exactly one of `interval`, `cron` or `at`"),
        "{explain}"
    );
    assert!(
        explain.contains("cron\t<string>"),
        "field types are published: {explain}"
    );
    let explain = ok(&kubectl(&[
        "explain",
        "scheduledjob.spec.concurrencyPolicy",
    ]));
    assert!(explain.contains("Forbid"), "{explain}");
    ok(&kubectl(&["delete", "namespace", &ns, "--wait=false"]));
}
