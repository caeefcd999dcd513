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
        job.spec
            .schedule
            .as_ref()
            .and_then(|s| s.interval.as_ref())
            .map(|i| i.minutes),
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
            "HEALTHY",
            "COMPLETE",
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
        "weekday-report",
        "three-syncs",
    ] {
        assert!(table.contains(name), "{name} listed:\n{table}");
    }
    let short = ok(&kubectl(&["get", "sj", "-n", &ns, "-o", "name"]));
    assert_eq!(short.lines().count(), 6, "short name sj works:\n{short}");
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

/// Fields the kube-state-metrics config (docs/kube-state-metrics.yaml) may read before the CRDs
/// have them (a field being added in parallel): `(kind, dotted path)`. The check accepts these
/// missing and fails once one exists, so an entry is removed then. None now.
const KSM_PENDING_FIELDS: &[(&str, &str)] = &[];

/// The schema node at `path` under `node` (an openAPIV3Schema): object properties by name, list
/// items by `[key=value]` or an index. `metadata` is not described by CRD schemas; of it only
/// `name` and, for namespaced kinds, `namespace` are read.
fn schema_at<'a>(
    node: &'a serde_yaml::Value,
    path: &[String],
    namespaced: bool,
    what: &str,
) -> Result<&'a serde_yaml::Value, String> {
    static METADATA: std::sync::LazyLock<serde_yaml::Value> =
        std::sync::LazyLock::new(|| serde_yaml::from_str("{type: string}").expect("yaml"));
    if path.first().map(String::as_str) == Some("metadata") {
        return match path.get(1).map(String::as_str) {
            Some("name") if path.len() == 2 => Ok(&METADATA),
            Some("namespace") if path.len() == 2 && namespaced => Ok(&METADATA),
            _ => Err(format!(
                "{what}: metadata path {path:?} is not readable here"
            )),
        };
    }
    let mut node = node;
    for (i, part) in path.iter().enumerate() {
        let is_index = part.parse::<usize>().is_ok()
            || (part.starts_with('[') && part.ends_with(']') && part.contains('='));
        node = if is_index {
            if node["type"] != "array" {
                return Err(format!("{what}: {:?} is not a list", &path[..i]));
            }
            &node["items"]
        } else {
            let next = &node["properties"][part.as_str()];
            if next.is_null() {
                return Err(format!("{what}: no field {:?}", &path[..=i]));
            }
            next
        };
    }
    Ok(node)
}

fn yaml_path(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|p| p.as_str().expect("path parts are strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kube_state_metrics_config_reads_fields_the_crds_have() {
    let config: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("docs/kube-state-metrics.yaml")).expect("yaml");
    assert_eq!(config["kind"], "CustomResourceStateMetrics");
    let crds = documents(&repo_file("crds/kube-beat-crds.yaml"));
    let mut kinds = Vec::new();
    let mut pending_seen = Vec::new();
    let mut read = 0;
    for resource in config["spec"]["resources"]
        .as_sequence()
        .expect("resources")
    {
        let gvk = &resource["groupVersionKind"];
        let kind = gvk["kind"].as_str().expect("kind");
        kinds.push(kind.to_string());
        let crd = crds
            .iter()
            .find(|c| c["spec"]["names"]["kind"] == kind && c["spec"]["group"] == gvk["group"])
            .unwrap_or_else(|| panic!("no CRD for {kind} in group {:?}", gvk["group"]));
        let version = crd["spec"]["versions"]
            .as_sequence()
            .expect("versions")
            .iter()
            .find(|v| v["name"] == gvk["version"] && v["served"] == true)
            .unwrap_or_else(|| panic!("{kind}: version {:?} not served", gvk["version"]));
        let root = &version["schema"]["openAPIV3Schema"];
        let namespaced = crd["spec"]["scope"] == "Namespaced";
        // Resolves a path; a pending field may be missing (and must be, see KSM_PENDING_FIELDS).
        let mut check = |path: &[String], what: &str| -> Option<serde_yaml::Value> {
            read += 1;
            let dotted = path.join(".");
            let pending = KSM_PENDING_FIELDS.contains(&(kind, dotted.as_str()));
            match schema_at(root, path, namespaced, &format!("{kind} {what}")) {
                Ok(node) => {
                    assert!(
                        !pending,
                        "{kind} {dotted} is in the CRD now: remove it from KSM_PENDING_FIELDS"
                    );
                    Some(node.clone())
                }
                Err(_) if pending => {
                    pending_seen.push(format!("{kind} {dotted}"));
                    None
                }
                Err(e) => panic!("{e}"),
            }
        };
        for (label, path) in resource["labelsFromPath"].as_mapping().expect("labels") {
            let leaf = check(&yaml_path(path), &format!("label {label:?}"));
            if let Some(leaf) = leaf {
                assert_eq!(leaf["type"], "string", "{kind} label {label:?}: {leaf:?}");
            }
        }
        for metric in resource["metrics"].as_sequence().expect("metrics") {
            let name = metric["name"].as_str().expect("metric name");
            let ty = metric["each"]["type"].as_str().expect("type");
            let key = match ty {
                "Gauge" => "gauge",
                "StateSet" => "stateSet",
                "Info" => "info",
                other => panic!("{name}: unknown type {other}"),
            };
            let each = &metric["each"][key];
            let base = yaml_path(&each["path"]);
            let Some(node) = check(&base, &format!("{name} path")) else {
                continue;
            };
            // labelsFromPath and valueFrom are read from each element of a list.
            let (element, element_path) = if node["type"] == "array" {
                (
                    node["items"].clone(),
                    [base.clone(), vec!["0".into()]].concat(),
                )
            } else {
                (node.clone(), base.clone())
            };
            let relative = |rel: &[String]| [element_path.clone(), rel.to_vec()].concat();
            if let Some(labels) = each["labelsFromPath"].as_mapping() {
                for (label, path) in labels {
                    let leaf = check(
                        &relative(&yaml_path(path)),
                        &format!("{name} label {label:?}"),
                    )
                    .unwrap_or_else(|| panic!("{name}: label {label:?}"));
                    assert_eq!(leaf["type"], "string", "{name} label {label:?}");
                }
            }
            let value = if each["valueFrom"].is_null() {
                element.clone()
            } else {
                check(
                    &relative(&yaml_path(&each["valueFrom"])),
                    &format!("{name} valueFrom"),
                )
                .unwrap_or_else(|| panic!("{name}: valueFrom"))
            };
            match ty {
                // Numbers, booleans and RFC 3339 strings become the value.
                "Gauge" => assert!(
                    ["integer", "number", "boolean", "string"]
                        .contains(&value["type"].as_str().unwrap_or("")),
                    "{name}: a gauge of {value:?}"
                ),
                // The condition status: one of the listed values.
                "StateSet" => {
                    assert_eq!(value["type"], "string", "{name}");
                    let list = yaml_path(&each["list"]);
                    assert_eq!(list, ["True", "False", "Unknown"], "{name}");
                    let said = value["description"].as_str().unwrap_or("");
                    assert!(said.contains("True, False, Unknown"), "{name}: {said}");
                }
                _ => assert_eq!(node["type"], "object", "{name}: an info of an object"),
            }
        }
    }
    assert_eq!(kinds, ["ScheduledJob", "TaskFunction"]);
    assert!(read >= 15, "{read} paths read");
    // Every pending entry is still needed (else it would have failed above) and was read.
    for (kind, path) in KSM_PENDING_FIELDS {
        assert!(
            pending_seen.contains(&format!("{kind} {path}")),
            "KSM_PENDING_FIELDS lists {kind} {path}, which the config does not read"
        );
    }
}
