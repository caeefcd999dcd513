//! `kube-beat plan`: golden output of the built binary on each case of tests/fixtures/plan/, and
//! `--against-cluster` against the real apiserver.
//!
//! Each case directory holds its input (`input.yaml` or `input/`), `args` (the command line
//! after `plan`, whitespace-separated, always with `--now`), `expected.txt` (text output),
//! `expected.json` (`-o json`) and `exit` (the expected exit code). `KB_UPDATE_GOLDEN=1 cargo
//! test --test plan` rewrites the expected files from the current output (review the diff).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plan")
}

/// `kube-beat plan ARGS` in `dir`.
fn plan(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .arg("plan")
        .args(args)
        .current_dir(dir)
        // No cluster unless asked: a stray KUBECONFIG must not matter.
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("running kube-beat plan")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Compare `actual` with the golden file, or rewrite it under `KB_UPDATE_GOLDEN=1`.
fn golden(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var("KB_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(path, actual).expect("writing a golden file");
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return Ok(());
    }
    let first = expected
        .lines()
        .zip(actual.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(expected.lines().count().min(actual.lines().count()));
    Err(format!(
        "{} differs from the output at line {}:\n  expected: {:?}\n  actual:   {:?}\n(KB_UPDATE_GOLDEN=1 rewrites it)",
        path.display(),
        first + 1,
        expected.lines().nth(first).unwrap_or("<end>"),
        actual.lines().nth(first).unwrap_or("<end>"),
    ))
}

#[test]
fn golden_cases() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cases())
        .expect("tests/fixtures/plan")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 6, "expected the six cases, found {dirs:?}");
    let mut failures = Vec::new();
    for dir in &dirs {
        let args_text = std::fs::read_to_string(dir.join("args")).expect("args");
        let args: Vec<&str> = args_text.split_whitespace().collect();
        assert!(
            args.contains(&"--now"),
            "{}: args without --now",
            dir.display()
        );
        let exit: i32 = std::fs::read_to_string(dir.join("exit"))
            .expect("exit")
            .trim()
            .parse()
            .expect("exit code");
        let out = plan(dir, &args);
        if out.status.code() != Some(exit) {
            failures.push(format!(
                "{}: exit {:?}, expected {exit}\n{}",
                dir.display(),
                out.status.code(),
                text(&out.stderr)
            ));
        }
        if let Err(e) = golden(&dir.join("expected.txt"), &text(&out.stdout)) {
            failures.push(e);
        }
        let mut json_args = args.clone();
        json_args.extend(["-o", "json"]);
        let out = plan(dir, &json_args);
        let stdout = text(&out.stdout);
        let parsed: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{}: -o json is not JSON: {e}", dir.display()));
        assert_eq!(out.status.code(), Some(exit), "{}", dir.display());
        // Exit 1 exactly when a job is invalid or a file could not be read.
        let failing = parsed["invalid"].as_u64() != Some(0)
            || parsed["errors"].as_array().is_some_and(|e| !e.is_empty());
        assert_eq!(failing, exit == 1, "{}", dir.display());
        if let Err(e) = golden(&dir.join("expected.json"), &stdout) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What the golden cases are there to show, asserted on their JSON so a careless
/// `KB_UPDATE_GOLDEN=1` cannot bless a wrong plan.
#[test]
fn golden_cases_show_what_they_are_about() {
    let json = |case: &str| -> Value {
        let p = cases().join(case).join("expected.json");
        serde_json::from_str(&std::fs::read_to_string(&p).expect("expected.json"))
            .expect("golden JSON")
    };
    let job = |plan: &Value, name: &str| -> Value {
        plan["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no job {name}"))
    };

    let berlin = json("berlin-dst");
    let fixed = job(&berlin, "nightly-report");
    let t = &fixed["dstTransitions"][0];
    assert_eq!(t["at"], "2026-03-29T01:00:00Z");
    assert_eq!(t["effects"][0]["effect"], "moved");
    let star = job(&berlin, "quarter-past");
    assert_eq!(star["dstTransitions"][0]["effects"][0]["effect"], "skipped");
    let local: Vec<&str> = fixed["runs"]["shown"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|s| s["local"].as_str())
        .collect();
    assert!(
        local.contains(&"2026-03-29 03:00:00 CEST (+02:00)"),
        "{local:?}"
    );

    let busy = json("busiest-second");
    assert!(busy["busiest"]["secondsOverThreshold"].as_u64() > Some(0));
    assert_eq!(busy["busiest"]["top"][0]["runs"], 1201);
    assert_eq!(busy["busiest"]["top"][0]["jittered"], 1);
    assert_eq!(busy["warnings"].as_array().map(Vec::len), Some(1));

    let invalid = json("invalid-job");
    assert_eq!(invalid["invalid"], 2);
    let bad = job(&invalid, "bad-cron");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid cron expression")),
        "{bad}"
    );
    assert_eq!(job(&invalid, "fine")["valid"], true);

    let several = json("several-schedules");
    let overlapping = job(&several, "overlapping");
    let shared: Vec<&Value> = overlapping["runs"]["shown"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|s| s["utc"] == "2026-10-22T12:00:00Z")
        .collect();
    assert_eq!(shared.len(), 1, "a shared instant runs once");
    assert_eq!(shared[0]["schedules"], serde_json::json!([0, 1]));
    // Nothing after endTime.
    assert_eq!(overlapping["runs"]["count"], 8);

    let holiday = json("calendar-holiday");
    let invoices = job(&holiday, "invoices");
    let excluded: Vec<(&str, &str, &str)> = invoices["exclusions"]["shown"]
        .as_array()
        .expect("exclusions")
        .iter()
        .map(|x| {
            (
                x["slot"]["utc"].as_str().unwrap_or_default(),
                x["calendar"].as_str().unwrap_or_default(),
                x["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        excluded,
        vec![
            ("2026-12-25T23:00:00Z", "us-holidays", "Christmas Day"),
            (
                "2026-12-28T23:00:00Z",
                "us-holidays",
                "year-end change freeze"
            ),
            ("2027-01-01T23:00:00Z", "us-holidays", "New Year's Day"),
        ]
    );
    assert_eq!(invoices["runs"]["count"], 7);

    let interval = json("interval-and-at");
    assert_eq!(job(&interval, "every-6h")["anchor"]["from"], "now");
    assert_eq!(job(&interval, "once")["runs"]["count"], 1);
}

#[test]
fn bad_command_lines_are_refused() {
    let dir = cases().join("berlin-dst");
    for args in [
        vec!["-f", "input.yaml", "--window", "401d"],
        vec!["-f", "input.yaml", "--now", "yesterday"],
        vec!["-f", "input.yaml", "--busy-threshold", "0"],
    ] {
        let out = plan(&dir, &args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).is_empty(), "{args:?}");
    }
    let out = plan(
        &dir,
        &["-f", "no-such-file.yaml", "--now", "2026-01-01T00:00:00Z"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("error: no-such-file.yaml"),
        "{}",
        text(&out.stdout)
    );
}

/// `--against-cluster`: a job created in the cluster, then planned from a changed file.
#[test]
#[ignore = "needs the local control plane (make test)"]
fn against_the_cluster() {
    use common::{install_crds, kubectl, kubectl_stdin, namespace, ok, unique};
    install_crds();
    let ns = namespace("kbt-plan");
    let tf = unique("plan-tf");
    let applied = format!(
        r#"apiVersion: kubebeat.io/v1alpha1
kind: TaskFunction
metadata: {{name: {tf}}}
spec: {{task: kb.echo, queue: celery}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {{name: report, namespace: {ns}}}
spec: {{taskFunction: {tf}, schedule: {{cron: "0 */2 * * *"}}, timeZone: Europe/Berlin}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {{name: ticker, namespace: {ns}}}
spec: {{taskFunction: {tf}, schedule: {{interval: {{minutes: 45}}}}}}
"#
    );
    ok(&kubectl_stdin(&["apply", "-f", "-"], &applied));
    let created = ok(&kubectl(&[
        "get",
        "scheduledjob",
        "ticker",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.creationTimestamp}",
    ]));

    // The pull request: report moves to half past every hour, ticker is unchanged, a new job
    // appears; the TaskFunction is only in the cluster.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("jobs.yaml"),
        format!(
            r#"apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {{name: report, namespace: {ns}}}
spec: {{taskFunction: {tf}, schedule: {{cron: "30 * * * *"}}, timeZone: Europe/Berlin}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {{name: ticker, namespace: {ns}}}
spec: {{taskFunction: {tf}, schedule: {{interval: {{minutes: 45}}}}}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {{name: fresh, namespace: {ns}}}
spec: {{taskFunction: {tf}, schedule: {{cron: "@daily"}}}}
"#
        ),
    )
    .expect("writing the file");
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:00:00Z").to_string();
    let out = plan(
        dir.path(),
        &[
            "--against-cluster",
            "-f",
            "jobs.yaml",
            "--now",
            &now,
            "--window",
            "6h",
            "-o",
            "json",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let planned: Value = serde_json::from_str(&stdout).expect("JSON");
    let job = |name: &str| -> Value {
        planned["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no job {name} in {stdout}"))
    };

    let report = job("report");
    assert_eq!(report["valid"], true, "{report}");
    assert!(
        report["notes"].as_array().is_some_and(Vec::is_empty),
        "the TaskFunction came from the cluster: {report}"
    );
    let changes = &report["changes"];
    assert_eq!(changes["state"], "changed", "{report}");
    assert_eq!(
        changes["fields"],
        serde_json::json!([{"path": "spec.schedule.cron", "before": "\"0 */2 * * *\"", "after": "\"30 * * * *\""}])
    );
    // Six hours from a whole hour: six half-hours added, the three even hours removed.
    assert_eq!(changes["runsAdded"]["count"], 6, "{report}");
    assert_eq!(changes["runsRemoved"]["count"], 3, "{report}");
    for removed in changes["runsRemoved"]["shown"].as_array().expect("removed") {
        assert!(
            removed["utc"]
                .as_str()
                .is_some_and(|t| t.ends_with(":00:00Z")),
            "{removed}"
        );
    }

    let ticker = job("ticker");
    assert_eq!(ticker["changes"]["state"], "unchanged", "{ticker}");
    assert_eq!(ticker["anchor"]["from"], "creationTimestamp");
    assert_eq!(ticker["anchor"]["time"], created.trim());
    assert_eq!(job("fresh")["changes"]["state"], "new");

    // A file naming a TaskFunction the cluster does not have is invalid (exit 1).
    std::fs::write(
        dir.path().join("bad.yaml"),
        format!(
            "apiVersion: kubebeat.io/v1alpha1\nkind: ScheduledJob\nmetadata: {{name: lost, namespace: {ns}}}\nspec: {{taskFunction: {}, schedule: {{cron: \"@daily\"}}}}\n",
            unique("missing")
        ),
    )
    .expect("writing the file");
    let out = plan(
        dir.path(),
        &["--against-cluster", "-f", "bad.yaml", "--now", &now],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("does not exist"),
        "{}",
        text(&out.stdout)
    );

    ok(&kubectl(&["delete", "namespace", &ns, "--wait=false"]));
    ok(&kubectl(&["delete", "taskfunction", &tf, "--wait=false"]));
}
