//! The admission webhook through the real apiserver (`kubectl apply` of a bad object refused
//! with the message its Ready=False condition shows; a down webhook with `failurePolicy:
//! Ignore` lets it through, the condition stays the backstop; the finalizer in a job's create),
//! and `kube-beat validate` on
//! files (exit codes, every error with its file and document index).

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{
    Operator, TestDb, eventually, install_crds, kubectl, kubectl_stdin, namespace, ok, unique,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The webhook's address, from the operator's log (it listens on port 0).
fn webhook_addr(op: &Operator) -> Option<String> {
    op.log_text()
        .lines()
        .find(|l| l.contains("webhook listening"))?
        .split("addr=")
        .nth(1)
        .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
}

/// Where an operator serving the webhook runs: its database, namespace and test id, the Secret
/// for the self-signed fallback's CA and the configuration whose caBundle it keeps set.
struct WebhookSetup<'a> {
    db: &'a str,
    ns: &'a str,
    id: &'a str,
    secret: &'a str,
    configuration: &'a str,
}

impl WebhookSetup<'_> {
    /// An operator (shadow dispatch, `extra` arguments) serving the webhook on a loopback port,
    /// checking the caBundle every second; and the address it listens on.
    async fn start(&self, extra: &[&str]) -> (Operator, String) {
        let mut args = vec![
            "--dispatch-mode",
            "shadow",
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-extra-san",
            "127.0.0.1",
            "--webhook-secret",
            self.secret,
            "--webhook-configuration",
            self.configuration,
            "--webhook-refresh-seconds",
            "1",
        ];
        args.extend_from_slice(extra);
        let op = Operator::start(self.db, self.ns, self.id, &args);
        let addr = eventually("the webhook listening", WAIT, || async {
            webhook_addr(&op)
        })
        .await;
        (op, addr)
    }
}

fn job(name: &str, tf: &str, schedule: Value) -> String {
    json!({
        "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
        "metadata": {"name": name},
        "spec": {"taskFunction": tf, "schedule": schedule},
    })
    .to_string()
}

fn task_function(name: &str, id: &str, spec: Value) -> String {
    json!({
        "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
        "metadata": {"name": name, "labels": {"kubebeat.io/test": id}},
        "spec": spec,
    })
    .to_string()
}

/// The Ready condition's (status, message) once kube-beat wrote it.
async fn ready(kind: &str, name: &str, ns: &str) -> (String, String) {
    eventually(&format!("{kind} {name} reconciled"), WAIT, || async {
        let out = kubectl(&["get", kind, name, "-n", ns, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let c = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((
            c["status"].as_str()?.to_string(),
            c["message"].as_str()?.to_string(),
        ))
    })
    .await
}

/// `kubectl apply` of one manifest: (succeeded, stderr).
fn apply(ns: &str, manifest: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["apply", "-n", ns, "-f", "-"];
    args.extend_from_slice(extra);
    let out = kubectl_stdin(&args, manifest);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Deletes the test's cluster-wide webhook configuration, even when the test fails.
struct Configuration {
    kind: &'static str,
    name: String,
}

impl Configuration {
    fn validating(name: String) -> Configuration {
        let kind = "validatingwebhookconfiguration";
        Configuration { kind, name }
    }

    fn mutating(name: String) -> Configuration {
        let kind = "mutatingwebhookconfiguration";
        Configuration { kind, name }
    }
}

impl Drop for Configuration {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", self.kind, &self.name, "--wait=false"]);
    }
}

/// A job's finalizers and the field managers that own `metadata.finalizers`. The job must
/// show its managedFields (kubectl 1.20, the local control plane's, does by default), or the
/// owners would be empty for want of them.
fn finalizers_and_owners(v: &Value) -> (Value, Vec<String>) {
    let managed = v["metadata"]["managedFields"].as_array();
    assert!(
        managed.is_some_and(|m| !m.is_empty()),
        "no managedFields: {v}"
    );
    let owners = managed
        .into_iter()
        .flatten()
        .filter(|m| !m["fieldsV1"]["f:metadata"]["f:finalizers"].is_null())
        .map(|m| m["manager"].as_str().unwrap_or_default().to_string())
        .collect();
    (v["metadata"]["finalizers"].clone(), owners)
}

/// The mutating webhook through the real apiserver: a ScheduledJob has kube-beat's finalizer
/// in its create's own response, once, owned by no field manager, so a later server-side apply
/// by the job's owner (which never lists it) keeps it;
/// the job is deleted through it as through the operator's own; the operator keeps the
/// MutatingWebhookConfiguration's caBundle set; with the webhook down (`Ignore`) a job is created
/// without it and the operator adds it.
#[tokio::test]
#[ignore = "needs the local control plane (make test)"]
async fn a_new_job_has_the_finalizer_from_its_create() {
    install_crds();
    let ns = namespace("kbt-mutate");
    let id = unique("t");
    let db = TestDb::create().await;
    let mwc = Configuration::mutating(unique("kbt-mutate"));
    let setup = WebhookSetup {
        db: &db.url,
        ns: &ns,
        id: &id,
        secret: "kbt-mutate-ca",
        configuration: &mwc.name,
    };
    let (op, addr) = setup.start(&[]).await;
    let echo = format!("{id}-echo");
    ok(&kubectl_stdin(
        &["apply", "-f", "-"],
        &task_function(&echo, &id, json!({"task": "kb.echo", "queue": "q"})),
    ));
    ok(&kubectl(&[
        "label",
        "namespace",
        &ns,
        &format!("kubebeat.io/mutate-test={id}"),
    ]));
    let configuration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": mwc.name},
        "webhooks": [{
            "name": "finalizer.scheduledjobs.kubebeat.io",
            "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "timeoutSeconds": 5, "reinvocationPolicy": "Never",
            "clientConfig": {"url": format!("https://{addr}/mutate")},
            "rules": [{"apiGroups": ["kubebeat.io"], "apiVersions": ["*"],
                       "operations": ["CREATE"], "resources": ["scheduledjobs"]}],
            "namespaceSelector": {"matchLabels": {"kubebeat.io/mutate-test": id}},
        }],
    });
    ok(&kubectl_stdin(
        &["create", "-f", "-"],
        &configuration.to_string(),
    ));
    eventually("the mutating caBundle injected", WAIT, || async {
        let out = kubectl(&[
            "get",
            "mutatingwebhookconfiguration",
            &mwc.name,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]);
        (!out.stdout.is_empty()).then_some(())
    })
    .await;
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec!["create", "-n", &ns, "-o", "json", "-f", "-"];
        args.extend_from_slice(extra);
        let out = ok(&kubectl_stdin(
            &args,
            &job(name, &echo, json!({"cron": "@hourly"})),
        ));
        serde_json::from_str::<Value>(&out).expect("json")
    };
    // The apiserver picks the configuration up a moment later: probe with dry runs.
    eventually(
        "the apiserver calling the mutating webhook",
        WAIT,
        || async {
            let v = create("probe", &["--dry-run=server"]);
            (v["metadata"]["finalizers"] == json!(["kubebeat.io/cleanup"])).then_some(())
        },
    )
    .await;

    // Created with the finalizer: the create's own response carries it.
    let created = create("marked", &[]);
    let (finalizers, owners) = finalizers_and_owners(&created);
    assert_eq!(finalizers, json!(["kubebeat.io/cleanup"]), "{created}");
    assert!(owners.is_empty(), "owned by {owners:?}: {created}");
    let (status, message) = ready("scheduledjob", "marked", &ns).await;
    assert_eq!(status, "True", "{message}");
    let out = ok(&kubectl(&[
        "get",
        "scheduledjob",
        "marked",
        "-n",
        &ns,
        "-o",
        "json",
    ]));
    let v: Value = serde_json::from_str(&out).expect("json");
    let (finalizers, owners) = finalizers_and_owners(&v);
    assert_eq!(finalizers, json!(["kubebeat.io/cleanup"]), "once: {v}");
    assert!(owners.is_empty(), "owned by {owners:?}: {v}");

    // A GitOps tool's server-side apply, created and then changed: the finalizer stays.
    let ssa = |cron: &str| {
        ok(&kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=gitops",
                "-n",
                &ns,
                "-f",
                "-",
            ],
            &job("applied", &echo, json!({"cron": cron})),
        ))
    };
    ssa("@hourly");
    ssa("@daily");
    let out = ok(&kubectl(&[
        "get",
        "scheduledjob",
        "applied",
        "-n",
        &ns,
        "-o",
        "json",
    ]));
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["spec"]["schedule"]["cron"], "@daily", "{v}");
    // Still the webhook's: had the apply taken it off, it would be gone, or back from the
    // running operator and owned by its field manager.
    let (finalizers, owners) = finalizers_and_owners(&v);
    assert_eq!(finalizers, json!(["kubebeat.io/cleanup"]), "{v}");
    assert!(owners.is_empty(), "owned by {owners:?}: {v}");

    // Deleted through it: the operator's cleanup takes the finalizer off and the job goes.
    ok(&kubectl(&[
        "delete",
        "scheduledjob",
        "marked",
        "-n",
        &ns,
        "--timeout=60s",
    ]));

    // The webhook down (Ignore): created without the finalizer; an operator adds it.
    drop(op);
    let bare = create("while-down", &[]);
    assert!(bare["metadata"]["finalizers"].is_null(), "{bare}");
    let _op2 = Operator::start(&db.url, &ns, &id, &["--dispatch-mode", "shadow"]);
    eventually("the operator's own finalizer", WAIT, || async {
        let out = kubectl(&["get", "scheduledjob", "while-down", "-n", &ns, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["metadata"]["finalizers"] == json!(["kubebeat.io/cleanup"])).then_some(())
    })
    .await;

    drop(mwc);
    let _ = kubectl(&["delete", "taskfunction", &echo, "--wait=false"]);
    let _ = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    db.drop_db().await;
}

#[tokio::test]
#[ignore = "needs the local control plane (make test)"]
async fn kubectl_apply_of_a_bad_job_is_refused_with_the_conditions_message() {
    install_crds();
    let ns = namespace("kbt-webhook");
    let id = unique("t");
    let db = TestDb::create().await;
    let vwc = Configuration::validating(unique("kbt-webhook"));
    let secret = "kbt-webhook-ca";
    let setup = WebhookSetup {
        db: &db.url,
        ns: &ns,
        id: &id,
        secret,
        configuration: &vwc.name,
    };
    let (op, addr) = setup.start(&[]).await;

    // A connection that completes TLS and then sends nothing is closed after the 5 s header read
    // timeout, not held open forever (the port is reachable by any pod).
    let started = std::time::Instant::now();
    let mut idle = Command::new("openssl")
        .args(["s_client", "-connect", &addr, "-quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let _silent = idle.stdin.take();
    let closed_after = loop {
        if idle.try_wait().expect("openssl").is_some() {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = idle.kill();
            panic!("an idle connection was still open after 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        closed_after >= Duration::from_secs(4) && closed_after < Duration::from_secs(9),
        "closed after {closed_after:?}"
    );

    // The reference: what the reconcile says of the same objects, created before the webhook
    // is registered.
    let echo = format!("{id}-echo");
    let missing = format!("{id}-missing");
    ok(&kubectl_stdin(
        &["apply", "-f", "-"],
        &task_function(&echo, &id, json!({"task": "kb.echo", "queue": "q"})),
    ));
    let bad_cron = json!({"cron": "*/5 25 * * *"});
    ok(&kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        &job("ref-cron", &echo, bad_cron.clone()),
    ));
    ok(&kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        &job("ref-missing", &missing, json!({"cron": "@daily"})),
    ));
    let bad_queue = json!({"task": "kb.echo", "queue": "q", "allowedQueues": ["q", "amq.direct"]});
    ok(&kubectl_stdin(
        &["apply", "-f", "-"],
        &task_function(&format!("{id}-ref-queue"), &id, bad_queue.clone()),
    ));
    let (status, cron_message) = ready("scheduledjob", "ref-cron", &ns).await;
    assert_eq!(status, "False", "{cron_message}");
    let (status, missing_message) = ready("scheduledjob", "ref-missing", &ns).await;
    assert_eq!(status, "False");
    assert_eq!(
        missing_message,
        format!("TaskFunction {missing:?} does not exist")
    );
    let (status, queue_message) = ready("taskfunction", &format!("{id}-ref-queue"), "").await;
    assert_eq!(status, "False");
    assert!(queue_message.contains("reserved"), "{queue_message}");

    // The webhook, for this test's namespace and TaskFunctions only (Ignore: the default).
    ok(&kubectl(&[
        "label",
        "namespace",
        &ns,
        &format!("kubebeat.io/webhook-test={id}"),
    ]));
    let configuration = |url: &str| {
        let hook = |name: &str, resource: &str| {
            json!({
                "name": name,
                "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Ignore", "timeoutSeconds": 5,
                "clientConfig": {"url": url},
                "rules": [{"apiGroups": ["kubebeat.io"], "apiVersions": ["*"],
                           "operations": ["CREATE", "UPDATE"], "resources": [resource]}],
            })
        };
        let mut jobs = hook("scheduledjobs.kubebeat.io", "scheduledjobs");
        jobs["namespaceSelector"] = json!({"matchLabels": {"kubebeat.io/webhook-test": id}});
        let mut tfs = hook("taskfunctions.kubebeat.io", "taskfunctions");
        tfs["objectSelector"] = json!({"matchLabels": {"kubebeat.io/test": id}});
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": vwc.name},
            "webhooks": [jobs, tfs],
        })
        .to_string()
    };
    ok(&kubectl_stdin(
        &["create", "-f", "-"],
        &configuration(&format!("https://{addr}/validate")),
    ));
    // The operator sets the caBundle of both webhooks to the CA in the Secret.
    let ca = eventually("the CA Secret", WAIT, || async {
        let out = kubectl(&[
            "get",
            "secret",
            secret,
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        Some(String::from_utf8_lossy(&out.stdout).to_string()).filter(|s| !s.is_empty())
    })
    .await;
    eventually("the caBundle injected", WAIT, || async {
        let out = kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            &vwc.name,
            "-o",
            "jsonpath={.webhooks[*].clientConfig.caBundle}",
        ]);
        (String::from_utf8_lossy(&out.stdout) == format!("{ca} {ca}")).then_some(())
    })
    .await;
    // The apiserver picks the configuration up a moment later: probe with a dry run.
    eventually("the apiserver calling the webhook", WAIT, || async {
        let (applied, _) = apply(
            &ns,
            &job("probe", &echo, bad_cron.clone()),
            &["--dry-run=server"],
        );
        (!applied).then_some(())
    })
    .await;

    // A bad cron: refused, with the condition's message; nothing created.
    let (applied, stderr) = apply(&ns, &job("bad-cron", &echo, bad_cron.clone()), &[]);
    assert!(!applied, "a bad cron was accepted");
    assert!(
        stderr.contains(&cron_message),
        "{stderr}\nexpected: {cron_message}"
    );
    assert!(stderr.contains("denied the request"), "{stderr}");
    assert!(
        !kubectl(&["get", "scheduledjob", "bad-cron", "-n", &ns])
            .status
            .success()
    );
    // A valid job applies; a bad change to it is refused (UPDATE), and it stays as it was.
    let (applied, stderr) = apply(&ns, &job("good", &echo, json!({"cron": "@hourly"})), &[]);
    assert!(applied, "{stderr}");
    let (applied, stderr) = apply(&ns, &job("good", &echo, bad_cron.clone()), &[]);
    assert!(!applied && stderr.contains(&cron_message), "{stderr}");
    let (status, _) = ready("scheduledjob", "good", &ns).await;
    assert_eq!(status, "True");
    // A missing TaskFunction (`warn`, the default): applied, the reconcile's message a warning
    // (Helm and Argo CD create jobs before their TaskFunctions). A TaskFunction with a
    // reserved queue: refused like the bad cron.
    let (applied, stderr) = apply(
        &ns,
        &job("orphan", &missing, json!({"cron": "@daily"})),
        &[],
    );
    assert!(applied, "{stderr}");
    assert!(
        stderr.contains(&format!("Warning: {missing_message}")),
        "{stderr}"
    );
    // Still refused for anything else wrong with it.
    let (applied, stderr) = apply(&ns, &job("orphan-cron", &missing, bad_cron.clone()), &[]);
    assert!(!applied && stderr.contains(&cron_message), "{stderr}");
    let (applied, stderr) = apply(
        "default",
        &task_function(&format!("{id}-bad-queue"), &id, bad_queue.clone()),
        &[],
    );
    assert!(!applied && stderr.contains(&queue_message), "{stderr}");
    // kube-beat's own writes to objects created while the webhook was away (their finalizer,
    // their status) still go through: ref-cron has its finalizer and a status.
    let out = ok(&kubectl(&[
        "get",
        "scheduledjob",
        "ref-cron",
        "-n",
        &ns,
        "-o",
        "json",
    ]));
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["metadata"]["finalizers"][0], "kubebeat.io/cleanup", "{v}");

    // A second replica signs its own certificate from the same CA: the one caBundle trusts it.
    // It refuses jobs whose TaskFunction does not exist.
    let (op2, addr2) = setup
        .start(&["--webhook-missing-task-function", "deny"])
        .await;
    assert_ne!(addr, addr2);
    let patch = json!([
        {"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": format!("https://{addr2}/validate")},
    ])
    .to_string();
    ok(&kubectl(&[
        "patch",
        "validatingwebhookconfiguration",
        &vwc.name,
        "--type=json",
        "-p",
        &patch,
    ]));
    drop(op);
    eventually("the second replica refusing", WAIT, || async {
        let (applied, stderr) = apply(&ns, &job("bad-cron", &echo, bad_cron.clone()), &[]);
        (!applied && stderr.contains(&cron_message)).then_some(())
    })
    .await;
    assert!(
        !op2.log_text().contains("webhook CA created"),
        "one CA, created once"
    );
    let (applied, stderr) = apply(
        &ns,
        &job("orphan-denied", &missing, json!({"cron": "@daily"})),
        &[],
    );
    assert!(
        !applied,
        "deny let a missing TaskFunction through: {stderr}"
    );
    assert!(
        stderr.contains(&missing_message) && stderr.contains("denied the request"),
        "{stderr}"
    );

    // The webhook down (failurePolicy Ignore): the apply goes through; the reconcile's
    // condition is the backstop.
    drop(op2);
    let (applied, stderr) = apply(&ns, &job("while-down", &echo, bad_cron.clone()), &[]);
    assert!(applied, "a down webhook blocked the apply: {stderr}");
    let _op3 = Operator::start(&db.url, &ns, &id, &["--dispatch-mode", "shadow"]);
    let (status, message) = ready("scheduledjob", "while-down", &ns).await;
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("False", cron_message.as_str())
    );

    drop(vwc);
    for tf in [echo, format!("{id}-ref-queue")] {
        let _ = kubectl(&["delete", "taskfunction", &tf, "--wait=false"]);
    }
    let _ = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    db.drop_db().await;
}

/// `kube-beat validate` with `args`: (exit code, stdout, stderr).
fn validate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .arg("validate")
        .args(args)
        .output()
        .expect("kube-beat validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

#[test]
fn validate_lists_every_error_with_file_and_document_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.yaml");
    write(
        &a,
        r#"apiVersion: kubebeat.io/v1alpha1
kind: TaskFunction
metadata: {name: echo}
spec: {task: kb.echo, queue: q, allowedNamespaces: [team-a]}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: fine, namespace: team-a}
spec: {taskFunction: echo, schedule: {cron: "@daily"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: skipped}
data: {cron: "not even checked"}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: bad-cron, namespace: team-a}
spec: {taskFunction: echo, schedule: {cron: "*/5 25 * * *"}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: elsewhere}
spec: {taskFunction: echo, schedule: {cron: "@daily"}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: unknown-tf, namespace: team-a}
spec: {taskFunction: not-in-files, schedule: {interval: {seconds: 60}}}
"#,
    );
    let b = dir.path().join("sub/b.json");
    write(
        &b,
        &json!({"apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
                "metadata": {"name": "reserved"}, "spec": {"task": "t", "queue": "kubebeat.x"}})
        .to_string(),
    );
    let c = dir.path().join("sub/c.yml");
    write(
        &c,
        "apiVersion: kubebeat.io/v1alpha1\nkind: ScheduledJob\nmetadata: {name: late}\n\
         spec: {taskFunction: echo, schedule: {at: \"2001-01-01T00:00:00Z\"}, priority: 12}\n",
    );
    write(
        &dir.path().join("notes.txt"),
        "kind: ScheduledJob\nthis is not read",
    );

    let (code, stdout, stderr) = validate(&["-f", dir.path().to_str().expect("path")]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let (a, b, c) = (a.display(), b.display(), c.display());
    let expected_prefixes = [
        format!("{a}[#3] ScheduledJob team-a/bad-cron: "),
        format!(
            "{a}[#4] ScheduledJob default/elsewhere: TaskFunction \"echo\" may be used only from namespaces [team-a]"
        ),
        format!("{b}[#0] TaskFunction reserved: queue: \"kubebeat.x\" is reserved"),
        format!("{c}[#0] ScheduledJob default/late: priority must be between 0 and 9, got 12"),
    ];
    assert_eq!(lines.len(), expected_prefixes.len(), "{stdout}");
    for (line, prefix) in lines.iter().zip(&expected_prefixes) {
        assert!(
            line.starts_with(prefix.as_str()),
            "{line:?} should start with {prefix:?}"
        );
    }
    assert!(
        lines[0].len() > expected_prefixes[0].len(),
        "the cron error has a message"
    );
    assert!(
        stderr.contains("unknown-tf")
            && stderr.contains("\"not-in-files\" is not in the given files"),
        "a note, not an error: {stderr}"
    );
    // A one-shot job whose time has passed: a note (a committed one must not turn CI red
    // forever), the rest of it still checked (its priority above).
    assert!(
        stderr.contains(&format!(
            "note: {c}[#0] ScheduledJob default/late: at 2001-01-01T00:00:00Z is in the past"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("4 error(s); 7 object(s) checked"),
        "{stderr}"
    );

    // Only the valid file: exit 0. One file given by name is read whatever its extension.
    let good = dir.path().join("good.txt");
    write(
        &good,
        "apiVersion: kubebeat.io/v1alpha1\nkind: TaskFunction\nmetadata: {name: ok}\nspec: {task: t}\n",
    );
    let (code, stdout, stderr) = validate(&["-f", good.to_str().expect("path")]);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    assert!(stderr.contains("1 object(s) valid"), "{stderr}");

    // Repeated -f, a broken YAML document and a missing file: each listed, exit 1.
    let broken = dir.path().join("broken.yaml");
    write(&broken, "kind: TaskFunction\n---\n{unclosed: [\n");
    let (code, stdout, _) = validate(&[
        "-f",
        good.to_str().expect("path"),
        "-f",
        broken.to_str().expect("path"),
        "-f",
        "/nonexistent/kb.yaml",
    ]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains(&format!("{}[#1]: not YAML", broken.display())),
        "{stdout}"
    );
    assert!(stdout.contains("/nonexistent/kb.yaml: "), "{stdout}");
    // No -f at all: a usage error.
    assert_eq!(validate(&[]).0, 2);
}

/// `kind: List` items judged one by one (`FILE[#DOC.ITEM]`), messages on one line, a past `at`
/// alone a note (exit 0), symbolic links to directories not followed.
#[test]
fn validate_expands_lists_and_does_not_follow_directory_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("list.yaml");
    write(
        &list,
        r#"apiVersion: v1
kind: List
items:
- apiVersion: kubebeat.io/v1alpha1
  kind: TaskFunction
  metadata: {name: echo}
  spec: {task: kb.echo}
- apiVersion: kubebeat.io/v1alpha1
  kind: ScheduledJob
  metadata: {name: "two\nlines", namespace: a}
  spec: {taskFunction: echo, schedule: {cron: "61 * * * *"}}
- apiVersion: kubebeat.io/v1alpha1
  kind: ScheduledJob
  metadata: {name: once, namespace: a}
  spec: {taskFunction: echo, schedule: {at: "2001-01-01T00:00:00Z"}}
"#,
    );
    // A link back to the directory itself: followed, it would read every file again (and
    // again); and a link to a file, which is read.
    std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).expect("symlink");
    std::os::unix::fs::symlink(&list, dir.path().join("linked.yaml")).expect("symlink");

    let (code, stdout, stderr) = validate(&["-f", dir.path().to_str().expect("path")]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let linked = dir.path().join("linked.yaml");
    let lines: Vec<&str> = stdout.lines().collect();
    let prefixes = [
        format!("{}[#0.1] ScheduledJob a/two lines: ", linked.display()),
        format!("{}[#0.1] ScheduledJob a/two lines: ", list.display()),
    ];
    assert_eq!(
        lines.len(),
        2,
        "one line each, the loop not followed: {stdout}"
    );
    for (line, prefix) in lines.iter().zip(&prefixes) {
        assert!(line.starts_with(prefix.as_str()), "{line:?} vs {prefix:?}");
    }
    assert!(
        stderr.contains(&format!(
            "{}[#0.2] ScheduledJob a/once: at ",
            list.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 error(s); 6 object(s) checked"),
        "{stderr}"
    );

    // Only the past one-shot job and its TaskFunction: valid, with the note.
    let once = dir.path().join("once.yaml");
    write(
        &once,
        "apiVersion: kubebeat.io/v1alpha1\nkind: TaskFunction\nmetadata: {name: echo}\nspec: {task: t}\n---\n\
         apiVersion: kubebeat.io/v1alpha1\nkind: ScheduledJob\nmetadata: {name: once}\n\
         spec: {taskFunction: echo, schedule: {at: \"2001-01-01T00:00:00Z\"}}\n",
    );
    let (code, stdout, stderr) = validate(&["-f", once.to_str().expect("path")]);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    assert!(stderr.contains("is in the past"), "{stderr}");
}

/// `--cluster`: a lookup that fails is an error (exit 1), not a note; a reference that is not an
/// object name is a TaskFunction that does not exist, never looked up.
#[test]
fn validate_cluster_lookup_failures_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    // An apiserver nobody listens on.
    write(
        &kubeconfig,
        r#"apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: u, user: {}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"#,
    );
    let jobs = dir.path().join("jobs.yaml");
    write(
        &jobs,
        r#"apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: a}
spec: {taskFunction: echo, schedule: {cron: "@daily"}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: b}
spec: {taskFunction: echo, schedule: {cron: "@hourly"}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: c}
spec: {taskFunction: "echo/status", schedule: {cron: "@daily"}}
"#,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(["validate", "--cluster", "-f", jobs.to_str().expect("path")])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("kube-beat validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, name) in lines[..2].iter().zip(["a", "b"]) {
        assert!(
            line.starts_with(&format!(
                "{}[#{}] ScheduledJob default/{name}: TaskFunction \"echo\" could not be read from the cluster: ",
                jobs.display(),
                if name == "a" { 0 } else { 1 }
            )),
            "{line}"
        );
    }
    assert_eq!(
        lines[2],
        format!(
            "{}[#2] ScheduledJob default/c: TaskFunction \"echo/status\" does not exist",
            jobs.display()
        )
    );
}
