//! Operating kube-beat: the chart's PrometheusRule (`promtool check rules` and `promtool test
//! rules` on the rendered rules, every alert's runbook anchor in docs/operations.md, every metric
//! it names exported by a real operator), and the GitOps health checks — the Argo CD Lua scripts
//! (run by Lua 5.1, as Argo CD's gopher-lua is) and the Flux `healthCheckExprs` (CEL) — judging
//! ScheduledJobs and TaskFunctions that a real operator reconciled on the real apiserver.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use common::{eventually, fixture, kubectl, ok};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> String {
    let out = Command::new(repo().join("hack/helm.sh"))
        .output()
        .expect("hack/helm.sh");
    ok(&out).trim().to_string()
}

/// The chart's PrometheusRule rendered (release `kb`, namespace `kbns`, as the promtool unit tests
/// expect), parsed.
fn prometheus_rule(set: &[&str]) -> serde_yaml::Value {
    let mut args = vec![
        "template".to_string(),
        "kb".to_string(),
        repo().join("charts/kube-beat").display().to_string(),
        "--namespace".to_string(),
        "kbns".to_string(),
        "--show-only".to_string(),
        "templates/prometheusrule.yaml".to_string(),
        "--set".to_string(),
        "prometheusRule.enabled=true".to_string(),
    ];
    for s in set {
        args.push("--set".to_string());
        args.push(s.to_string());
    }
    let out = Command::new(helm())
        .args(&args)
        .output()
        .expect("helm template");
    serde_yaml::from_str(&ok(&out)).expect("one YAML document")
}

/// The rule groups (the PrometheusRule's `.spec`) in `dir/rules.yaml`, beside a copy of the
/// promtool unit tests.
fn rules_dir(set: &[&str]) -> (tempfile::TempDir, serde_yaml::Value) {
    let rule = prometheus_rule(set);
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&rule["spec"]).expect("yaml"),
    )
    .expect("write rules");
    std::fs::copy(
        repo().join("tests/fixtures/alerts_test.yaml"),
        dir.path().join("alerts_test.yaml"),
    )
    .expect("copy the unit tests");
    (dir, rule)
}

fn promtool(dir: &Path, args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus; make test installs it)")
}

fn alerts(rule: &serde_yaml::Value) -> Vec<serde_yaml::Value> {
    rule["spec"]["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

/// GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to `-`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
#[ignore = "needs Helm and promtool (make test)"]
fn alert_rules_pass_promtool_and_link_their_runbooks() {
    let (dir, rule) = rules_dir(&[]);
    let check = promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    let checked = ok(&check);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(dir.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(
        tested.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );

    // The unit tests discriminate: with the lag threshold above what the series show, the lag
    // alert that must fire does not, and promtool says so.
    let (raised, _) = rules_dir(&["prometheusRule.dispatchLag.seconds=10"]);
    let failed = promtool(raised.path(), &["test", "rules", "alerts_test.yaml"]);
    let said = String::from_utf8_lossy(&failed.stdout).into_owned()
        + &String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{said}");
    assert!(
        said.contains("alertname: KubeBeatDispatchLagHigh"),
        "{said}"
    );
    assert!(!said.contains("alertname: KubeBeatNoLeader"), "{said}");
    // So do the job-health ones: waiting 10 minutes, the unhealthy job's alert is not yet there
    // when it must be.
    let (slower, _) = rules_dir(&["prometheusRule.jobUnhealthy.for=10m"]);
    let failed = promtool(slower.path(), &["test", "rules", "alerts_test.yaml"]);
    let said = String::from_utf8_lossy(&failed.stdout).into_owned()
        + &String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("alertname: KubeBeatJobUnhealthy"), "{said}");
    assert!(
        !said.contains("alertname: KubeBeatDispatchLagHigh"),
        "{said}"
    );

    // Every alert: a summary, a description, a severity and a runbook section that exists.
    let operations =
        std::fs::read_to_string(repo().join("docs/operations.md")).expect("docs/operations.md");
    let sections = anchors(&operations);
    let names: Vec<String> = alerts(&rule)
        .iter()
        .map(|a| {
            let name = a["alert"].as_str().expect("an alert").to_string();
            for key in ["summary", "description"] {
                assert!(a["annotations"][key].as_str().is_some(), "{name}: {key}");
            }
            assert!(a["labels"]["severity"].as_str().is_some(), "{name}");
            let url = a["annotations"]["runbook_url"]
                .as_str()
                .expect("runbook_url");
            let (base, anchor) = url.split_once('#').expect("an anchor");
            assert!(base.ends_with("/docs/operations.md"), "{url}");
            assert!(sections.contains(anchor), "{name}: no section #{anchor}");
            name
        })
        .collect();
    assert_eq!(
        names,
        [
            "KubeBeatNoLeader",
            "KubeBeatDispatchLagHigh",
            "KubeBeatDispatchFailed",
            "KubeBeatRunsLost",
            "KubeBeatStatusWriteErrors",
            "KubeBeatReplicasNotReady",
            "KubeBeatJobUnhealthy"
        ]
    );

    // Values reach the rules: labels, thresholds, the no-leader wait from the lease duration, an
    // extra rule; and the result still passes promtool.
    let (custom, rule) = rules_dir(&[
        "prometheusRule.labels.release=prom",
        "prometheusRule.alertLabels.team=platform",
        "operator.leaseDurationSeconds=40",
        "prometheusRule.selector=service=\"beat\"",
        "prometheusRule.additionalRules[0].alert=KubeBeatQueueDeep",
        "prometheusRule.additionalRules[0].expr=max(kube_beat_celery_queue_depth) > 1000",
    ]);
    ok(&promtool(custom.path(), &["check", "rules", "rules.yaml"]));
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let all = alerts(&rule);
    assert_eq!(all.len(), 8);
    assert_eq!(all[0]["for"], "80s", "two lease durations");
    for (i, series) in [(0, "kube_beat_leader"), (6, "kube_beat_job_healthy")] {
        assert_eq!(all[i]["labels"]["team"], "platform");
        let expr = all[i]["expr"].as_str().expect("expr");
        assert!(
            expr.contains(&format!("{series}{{service=\"beat\"}}")),
            "{expr}"
        );
    }
    assert_eq!(all[7]["alert"], "KubeBeatQueueDeep");

    // The values are checked: an unknown key, a duration Prometheus would not parse, a
    // selector that would break out of the braces.
    for bad in [
        "prometheusRule.thresholds=1",
        "prometheusRule.dispatchLag.for=soon",
        "prometheusRule.jobUnhealthy.for=a while",
        "prometheusRule.jobUnhealthy.severity=page-everyone",
        "prometheusRule.selector=job=\"x\"}) or vector(1",
    ] {
        let out = Command::new(helm())
            .args(["template", "kb"])
            .arg(repo().join("charts/kube-beat"))
            .args(["--set", "prometheusRule.enabled=true", "--set", bad])
            .output()
            .expect("helm template");
        assert!(!out.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("values don't meet the specifications"),
            "{bad}: {err}"
        );
    }

    // Off by default.
    let off = Command::new(helm())
        .args(["template", "kb"])
        .arg(repo().join("charts/kube-beat"))
        .output()
        .expect("helm template");
    assert!(!ok(&off).contains("PrometheusRule"));
}

/// `kube_beat_*` metric families the rules use, without the sample suffixes.
fn rule_metrics(rule: &serde_yaml::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for a in alerts(rule) {
        let expr = a["expr"].as_str().expect("expr");
        let mut rest = expr;
        while let Some(at) = rest.find("kube_beat_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_total"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_string());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn alert_rules_use_only_metrics_kube_beat_exports() {
    let rule = prometheus_rule(&[]);
    let used = rule_metrics(&rule);
    assert!(
        used.contains("kube_beat_leader")
            && used.contains("kube_beat_job_healthy")
            && used.len() == 6,
        "{used:?}"
    );
    let env = common::env();
    let f = fixture("kbt-alertmetrics", format!("{}/0", env.redis_url)).await;
    // The per-job series exist only for jobs that opt in (spec.health.metrics).
    f.task_function("echo", "kb.echo").await;
    f.job(
        "watched",
        "echo",
        json!({"schedule": {"interval": {"hours": 1}}, "health": {"metrics": true}}),
    )
    .await;
    let op = f.operator(&[]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    // The status writer's counters appear once the operator has built its feed.
    let scrape = || {
        let out = Command::new("curl")
            .args(["-sSf", &format!("http://{addr}/metrics")])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let families = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(|n| n.strip_suffix("_total").unwrap_or(n).to_string())
            .collect::<BTreeSet<String>>();
        (text, families)
    };
    let _ = eventually(
        "the status feed exported",
        Duration::from_secs(30),
        || async {
            scrape()
                .1
                .contains("kube_beat_status_write_errors")
                .then_some(())
        },
    )
    .await;
    // And the per-job health series, once the leader has judged the job (labels: the job's
    // namespace and name).
    let namespace = format!("namespace=\"{}\"", f.ns);
    let _ = eventually(
        "the job's health exported",
        Duration::from_secs(60),
        || async {
            scrape()
                .0
                .lines()
                .any(|l| {
                    l.starts_with("kube_beat_job_healthy{")
                        && l.contains(&namespace)
                        && l.contains("name=\"watched\"")
                })
                .then_some(())
        },
    )
    .await;
    let (text, families) = scrape();
    let missing: Vec<_> = used.difference(&families).collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?} (exported: {families:?})"
    );
    assert!(families.contains("kube_beat_build_info"), "{families:?}");
    // Before any run failed, the series the failure alerts watch are there at 0: increase()
    // needs a sample before the first failure to count it.
    for series in [
        "kube_beat_dispatches_total{outcome=\"dispatch_failed\"} 0",
        "kube_beat_executions_total{state=\"LOST\"} 0",
        "kube_beat_status_write_errors_total 0",
    ] {
        assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
    }
    drop(op);
    f.finish().await;
}

/// A JSON value as a Lua 5.1 table constructor (what Argo CD hands its health scripts as `obj`).
/// JSON null is left out, as Argo CD's conversion leaves it nil.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A Lua string literal: every byte outside printable ASCII (and quotes, backslashes) as a
/// decimal escape, which Lua 5.1 reads back byte for byte.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => out.push_str(&format!("\\{}", b as char)),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b}")),
        }
    }
    out.push('"');
    out
}

/// (status, message) of an Argo CD health script for `obj`, run by `lua5.1`.
fn argo_health(script: &str, obj: &Value) -> (String, String) {
    let path = repo().join("charts/kube-beat/health").join(script);
    let program = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(obj),
        lua_string(path.to_str().expect("utf-8 path"))
    );
    let out = Command::new("lua5.1")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(program.as_bytes())?;
            child.wait_with_output()
        })
        .expect("lua5.1 (Debian package lua5.1; make test installs it)");
    let text = ok(&out);
    let (status, message) = text.split_once('\n').expect("status and message");
    (status.to_string(), message.to_string())
}

/// The Flux expressions for `kind`, from the file docs/gitops.md tells users to paste.
fn flux_exprs(kind: &str) -> Value {
    let text =
        std::fs::read_to_string(repo().join("charts/kube-beat/health/flux-healthcheckexprs.yaml"))
            .expect("flux-healthcheckexprs.yaml");
    let doc: Value = serde_yaml::from_str(&text).expect("yaml");
    doc["healthCheckExprs"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|e| e["kind"] == kind)
        .cloned()
        .expect("an entry for the kind")
}

/// What Flux's evaluator (fluxcd/pkg runtime/cel StatusEvaluator, RFC 0009) makes of `obj`: a
/// status.observedGeneration other than metadata.generation is InProgress; then inProgress,
/// failed, current in that order; none true is InProgress. An expression that cannot be evaluated
/// (a field that is not there) is Unknown, and Flux polls again.
fn flux_status(kind: &str, obj: &Value) -> &'static str {
    let exprs = flux_exprs(kind);
    if let (Some(observed), Some(generation)) = (
        obj["status"]["observedGeneration"].as_i64(),
        obj["metadata"]["generation"].as_i64(),
    ) && observed != generation
    {
        return "InProgress";
    }
    let mut context = cel::Context::default();
    for (key, value) in obj.as_object().expect("an object") {
        context.add_variable_from_value(key.as_str(), cel::to_value(value).expect("cel value"));
    }
    for (field, status) in [
        ("inProgress", "InProgress"),
        ("failed", "Failed"),
        ("current", "Current"),
    ] {
        let source = exprs[field].as_str().expect("an expression");
        let program = cel::Program::compile(source).expect("the expression parses");
        match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => return status,
            Ok(cel::Value::Bool(false)) => {}
            Ok(other) => panic!("{field} is not a boolean: {other:?}"),
            Err(_) => return "Unknown",
        }
    }
    "InProgress"
}

fn get(kind: &str, ns: Option<&str>, name: &str) -> Value {
    let mut args = vec!["get", kind, name, "-o", "json"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    serde_json::from_str(&ok(&kubectl(&args))).expect("json")
}

fn ready(obj: &Value) -> Option<Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn gitops_health_checks_judge_real_objects() {
    let env = common::env();
    let f = fixture("kbt-health", format!("{}/0", env.redis_url)).await;
    let ns = f.ns.clone();
    let job = |name: &str| get("scheduledjob", Some(&ns), name);
    let tf_name = |name: &str| format!("{}-{name}", f.id);
    f.task_function("echo", "kb.echo").await;
    f.task_function_with(
        "narrow",
        "kb.echo",
        json!({"allowedNamespaces": ["Not_A_Namespace"]}),
    )
    .await;
    f.job(
        "good",
        "echo",
        json!({"schedule": {"cron": "*/5 * * * *"}, "timeZone": "Europe/Berlin"}),
    )
    .await;
    // Stored as it is: no admission webhook on this apiserver, so only the reconcile judges it.
    f.job("bad", "echo", json!({"schedule": {"cron": "61 * * * *"}}))
        .await;
    f.job(
        "paused",
        "echo",
        json!({"schedule": {"interval": {"seconds": 3600}}, "suspend": true}),
    )
    .await;

    // Before any reconcile: no status at all.
    let fresh = job("good");
    assert!(fresh.get("status").is_none(), "{fresh}");
    assert_eq!(
        argo_health("argocd-scheduledjob.lua", &fresh),
        (
            "Progressing".to_string(),
            "Waiting for kube-beat to reconcile the job".to_string()
        )
    );
    assert_eq!(flux_status("ScheduledJob", &fresh), "Unknown");
    let fresh_tf = get("taskfunction", None, &tf_name("echo"));
    assert_eq!(
        argo_health("argocd-taskfunction.lua", &fresh_tf).0,
        "Progressing"
    );
    assert_eq!(flux_status("TaskFunction", &fresh_tf), "Unknown");

    let op = f.operator(&[]);
    for name in ["good", "bad", "paused"] {
        eventually(
            &format!("{name} reconciled"),
            Duration::from_secs(60),
            || async { ready(&job(name)).map(|_| ()) },
        )
        .await;
    }
    for name in ["echo", "narrow"] {
        eventually(
            &format!("task function {name} reconciled"),
            Duration::from_secs(60),
            || async { ready(&get("taskfunction", None, &tf_name(name))).map(|_| ()) },
        )
        .await;
    }

    let good = job("good");
    assert_eq!(ready(&good).expect("Ready")["status"], "True");
    assert_eq!(
        argo_health("argocd-scheduledjob.lua", &good).0,
        "Healthy",
        "{good}"
    );
    assert_eq!(flux_status("ScheduledJob", &good), "Current");

    let bad = job("bad");
    let condition = ready(&bad).expect("Ready");
    assert_eq!(condition["status"], "False");
    let message = condition["message"].as_str().expect("a message");
    assert!(
        message.contains("end of range (61) above maximum (59)"),
        "{message}"
    );
    assert_eq!(
        argo_health("argocd-scheduledjob.lua", &bad),
        ("Degraded".to_string(), message.to_string())
    );
    assert_eq!(flux_status("ScheduledJob", &bad), "Failed");

    let paused = job("paused");
    assert_eq!(ready(&paused).expect("Ready")["status"], "True");
    assert_eq!(
        argo_health("argocd-scheduledjob.lua", &paused),
        (
            "Suspended".to_string(),
            "Suspended: no new runs are scheduled".to_string()
        )
    );
    // Flux has no "suspended": a valid suspended job is as current as it gets.
    assert_eq!(flux_status("ScheduledJob", &paused), "Current");

    let tf = get("taskfunction", None, &tf_name("echo"));
    assert_eq!(argo_health("argocd-taskfunction.lua", &tf).0, "Healthy");
    assert_eq!(flux_status("TaskFunction", &tf), "Current");
    let narrow = get("taskfunction", None, &tf_name("narrow"));
    let narrow_message = ready(&narrow).expect("Ready")["message"]
        .as_str()
        .expect("a message")
        .to_string();
    assert!(
        narrow_message.contains("Not_A_Namespace"),
        "{narrow_message}"
    );
    assert_eq!(
        argo_health("argocd-taskfunction.lua", &narrow),
        ("Degraded".to_string(), narrow_message)
    );
    assert_eq!(flux_status("TaskFunction", &narrow), "Failed");

    // A spec change kube-beat has not seen (the operator is gone): the status describes the
    // previous generation, so the job is in progress, not healthy.
    drop(op);
    ok(&kubectl(&[
        "patch",
        "scheduledjob",
        "good",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"schedule":{"cron":"*/10 * * * *"}}}"#,
    ]));
    let changed = job("good");
    assert_eq!(changed["metadata"]["generation"], 2, "{changed}");
    assert_eq!(changed["status"]["observedGeneration"], 1, "{changed}");
    assert_eq!(
        argo_health("argocd-scheduledjob.lua", &changed),
        (
            "Progressing".to_string(),
            "Waiting for kube-beat to reconcile generation 2".to_string()
        )
    );
    assert_eq!(flux_status("ScheduledJob", &changed), "InProgress");
    // And the condition's own observedGeneration is enough for the Flux expression, without
    // Flux's status.observedGeneration pre-check.
    let mut without_top = changed.clone();
    without_top["status"]
        .as_object_mut()
        .expect("status")
        .remove("observedGeneration");
    assert_eq!(flux_status("ScheduledJob", &without_top), "InProgress");
    assert_eq!(
        argo_health("argocd-scheduledjob.lua", &without_top).0,
        "Progressing"
    );
    f.finish().await;
}
