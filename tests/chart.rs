//! The Helm chart against the real apiserver: lint, render (defaults and every option) and a
//! server-side dry run; the values schema refusing bad values; `kube-beat import` output applying;
//! and RBAC sufficiency: the operator runs the end-to-end scenario as the chart's ServiceAccount,
//! with exactly the chart's permissions, and a missing permission is visible without a crash.

mod common;

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::{eventually, fixture, kubectl, kubectl_stdin, ok};
use serde_json::{Value, json};

fn helm() -> String {
    let out = Command::new(common::env().repo.join("hack/helm.sh"))
        .output()
        .expect("hack/helm.sh");
    ok(&out).trim().to_string()
}

fn chart() -> PathBuf {
    common::env().repo.join("charts/kube-beat")
}

fn helm_template(release: &str, ns: &str, args: &[&str]) -> Output {
    Command::new(helm())
        .args(["template", release])
        .arg(chart())
        .args(["--namespace", ns])
        .args(args)
        .output()
        .expect("helm template")
}

#[test]
#[ignore = "needs the local control plane (make test)"]
fn chart_lints_renders_and_applies_to_the_apiserver() {
    common::install_crds();
    let lint = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .expect("helm lint");
    ok(&lint);
    let ns = common::namespace("kbt-chart");
    ok(&kubectl(&[
        "apply",
        "-f",
        common::env()
            .repo
            .join("tests/fixtures/servicemonitor-crd.yaml")
            .to_str()
            .expect("path"),
    ]));
    let defaults = ok(&helm_template("kb", &ns, &[]));
    assert!(
        !defaults.contains("postgres://") && !defaults.contains("redis://"),
        "no connection strings in rendered manifests"
    );
    for kind in [
        "kind: Deployment",
        "kind: ClusterRole\n",
        "kind: Role\n",
        "kind: ServiceAccount",
        "kind: Service\n",
        "kind: CustomResourceDefinition",
        "helm.sh/resource-policy: keep",
        "helm.sh/hook: pre-install,pre-upgrade",
        "readOnlyRootFilesystem: true",
        "path: /readyz",
    ] {
        assert!(defaults.contains(kind), "default render lacks {kind:?}");
    }
    let applied = ok(&kubectl_stdin(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        &defaults,
    ));
    assert!(
        applied.contains("deployment.apps/kb-kube-beat created (server dry run)"),
        "{applied}"
    );

    let everything = ok(&helm_template(
        "kb",
        &ns,
        &[
            "--kube-version",
            "1.20.2",
            "--set",
            "podDisruptionBudget.enabled=true,serviceMonitor.enabled=true,networkPolicy.enabled=true,\
             resultBackend.enabled=true,migrations.mode=start,operator.dispatchMode=shadow,\
             operator.watchNamespace=team-a,operator.taskFunctionSelector=team=a,crds.keep=false,\
             serviceAccount.name=custom-sa,grafanaDashboard.enabled=true,\
             api.audiences={kube-beat,backup}",
        ],
    ));
    let applied = ok(&kubectl_stdin(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        &everything,
    ));
    for what in [
        "poddisruptionbudget.policy/kb-kube-beat",
        "servicemonitor.monitoring.coreos.com/kb-kube-beat",
        "networkpolicy.networking.k8s.io/kb-kube-beat",
        "serviceaccount/custom-sa",
        "configmap/kb-kube-beat-dashboard",
    ] {
        assert!(applied.contains(what), "{what} in:\n{applied}");
    }
    assert!(!everything.contains("helm.sh/resource-policy"));
    assert!(
        !everything.contains("kind: Job"),
        "no hook Job when migrating at start"
    );
    assert!(everything.contains("--migrate=true") && everything.contains("RESULT_BACKEND"));
    assert!(
        everything.contains("- name: API_AUDIENCES\n              value: \"kube-beat,backup\""),
        "{everything}"
    );
    assert!(!defaults.contains("API_AUDIENCES"));
    let no_crds = ok(&helm_template("kb", &ns, &["--set", "crds.enabled=false"]));
    assert!(!no_crds.contains("CustomResourceDefinition"));
    let _ = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
#[ignore = "needs Helm (make test)"]
fn values_schema_rejects_bad_values() {
    for (set, why) in [
        ("replicaCount=0", "replicaCount"),
        ("operator.dispatchMode=sometimes", "dispatchMode"),
        ("database.url=postgres://u:secret@db/x", "database"),
        ("database.existingSecret=", "existingSecret"),
        ("migrations.mode=never", "mode"),
        ("service.port=70000", "port"),
        ("operator.logFormat=xml", "logFormat"),
        ("serviceMonitor.interval=often", "interval"),
        (
            "resultBackend.enabled=true,resultBackend.existingSecret=",
            "existingSecret",
        ),
        ("typo=1", "typo"),
        ("api.auth=basic", "auth"),
        (
            "api.audiences={kube beat}",
            "audiences.0: Does not match pattern",
        ),
    ] {
        let out = helm_template("kb", "default", &["--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            err.contains("schema") && err.contains(why),
            "--set {set}: {err}"
        );
    }
}

#[test]
#[ignore = "needs the local control plane (make test)"]
fn import_output_applies_and_bad_input_writes_nothing() {
    common::install_crds();
    let env = common::env();
    let ns = common::namespace("kbt-import");
    let out_file = std::env::temp_dir().join(format!("{}.yaml", common::unique("kbt-import")));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kube-beat"))
            .arg("import")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kube-beat import")
    };
    let fixture_path = env.repo.join("tests/fixtures/migration-plan-jobs.json");
    let out = run(&[fixture_path.to_str().expect("path")]);
    let yaml = ok(&out);
    assert_eq!(yaml.matches("kind: ScheduledJob").count(), 4);
    assert_eq!(yaml.matches("kind: TaskFunction").count(), 4);
    let applied = ok(&kubectl_stdin(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        &yaml,
    ));
    for name in [
        "scheduledjob.kubebeat.io/domain-user-sync",
        "scheduledjob.kubebeat.io/token-cleanup",
        "scheduledjob.kubebeat.io/desktop-session-cleanup",
        "scheduledjob.kubebeat.io/deployment-job-cleanup",
        "taskfunction.kubebeat.io/sync-domain-users",
    ] {
        assert!(applied.contains(name), "{name} in:\n{applied}");
    }

    // Bad entries: reported with index and reason; nothing written without --skip-invalid.
    let bad = std::env::temp_dir().join(format!("{}.json", common::unique("kbt-bad")));
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture_path).expect("fixture"))
            .expect("json");
    doc["jobs"][1]["schedule_config"] = json!({"cron": "0 25 * * *"});
    doc["jobs"][3]["task_function_name"] = json!("nobody_knows");
    std::fs::write(&bad, doc.to_string()).expect("write");
    let out = run(&[
        bad.to_str().expect("path"),
        "-o",
        out_file.to_str().expect("path"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("job #1 (Token Cleanup): InvalidSchedule"),
        "{err}"
    );
    assert!(
        err.contains("job #3 (Deployment Job Cleanup): no Celery task mapped"),
        "{err}"
    );
    assert!(!out_file.exists(), "nothing written");
    let out = run(&[
        bad.to_str().expect("path"),
        "--skip-invalid",
        "-o",
        out_file.to_str().expect("path"),
    ]);
    ok(&out);
    let written = std::fs::read_to_string(&out_file).expect("written");
    assert_eq!(written.matches("kind: ScheduledJob").count(), 2);
    let _ = std::fs::remove_file(&out_file);
    let _ = std::fs::remove_file(&bad);
    let _ = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// The chart's ServiceAccount, as the static token file of `make test`'s apiserver knows it.
const SA_NAMESPACE: &str = "kube-beat-rbac";
const SA_TOKEN: &str = "system-serviceaccount-kube-beat-rbac-kube-beat-token";

/// A kubeconfig like the admin's, authenticating as the chart's ServiceAccount.
fn service_account_kubeconfig() -> PathBuf {
    let admin = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let mut cfg: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&admin).expect("kubeconfig")).expect("yaml");
    let users = cfg["users"].as_array_mut().expect("users");
    for u in users {
        u["user"] = json!({"token": SA_TOKEN});
    }
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", common::unique("kbt-sa")));
    std::fs::write(&path, serde_yaml::to_string(&cfg).expect("yaml")).expect("write kubeconfig");
    path
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn the_operator_runs_with_exactly_the_charts_rbac() {
    let env = common::env();
    let _ = kubectl(&["create", "namespace", SA_NAMESPACE]);
    // The chart's RBAC and ServiceAccount, installed for real.
    let rbac = ok(&helm_template(
        "kube-beat",
        SA_NAMESPACE,
        &[
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ],
    ));
    ok(&kubectl_stdin(
        &["apply", "-n", SA_NAMESPACE, "-f", "-"],
        &rbac,
    ));
    let kubeconfig = service_account_kubeconfig();
    let who = kubectl(&[
        "--kubeconfig",
        kubeconfig.to_str().expect("path"),
        "auth",
        "can-i",
        "patch",
        "scheduledjobs.kubebeat.io/status",
        "-A",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&who.stdout).trim(),
        "yes",
        "the ServiceAccount token works: {}",
        String::from_utf8_lossy(&who.stderr)
    );

    let f = fixture("kbt-rbac", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    let _worker = common::Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);
    f.task_function("echo", "kb.echo").await;
    f.job(
        "every2s",
        "echo",
        json!({"schedule": {"interval": {"seconds": 2}}}),
    )
    .await;
    f.task_function_with("fail", "kb.fail", json!({"defaultArgs": ["rbac"]}))
        .await;
    f.job(
        "fails",
        "fail",
        json!({"schedule": {"interval": {"seconds": 3}}}),
    )
    .await;
    let op = common::Operator::start_leased(
        &f.db.url,
        &f.ns,
        SA_NAMESPACE,
        &f.id,
        &[
            "--broker-url",
            &f.broker,
            "--result-backend",
            &backend,
            "--event-interval-seconds",
            "1",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().expect("path"))],
    );
    // Lease, finalizers, status (conditions, runs), TaskFunction jobCount and Events: all work.
    eventually(
        "runs and status as the ServiceAccount",
        Duration::from_secs(90),
        || async {
            let s = f.status("every2s").await;
            let ready = s["conditions"][0]["status"] == "True";
            (ready
                && s["lastExecution"]["state"] == "SUCCESS"
                && s["succeeded"].as_i64() >= Some(2))
            .then_some(())
        },
    )
    .await;
    eventually("a Failed Event", Duration::from_secs(60), || async {
        f.events()
            .iter()
            .any(|(o, r, _, _)| o == "fails" && r == "Failed")
            .then_some(())
    })
    .await;
    let tf = ok(&kubectl(&[
        "get",
        "taskfunction",
        &format!("{}-echo", f.id),
        "-o",
        "json",
    ]));
    let tf: Value = serde_json::from_str(&tf).expect("tf json");
    assert_eq!(tf["status"]["jobCount"], 1);
    let log = op.log_text();
    assert!(log.contains("acquired leader"), "{log}");
    // "forbidden", not "403": random test ids can contain those digits.
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "no permission was missing:\n{log}"
    );

    // Take one permission away: status patches. The failure shows in the log, the operator keeps
    // running and keeps dispatching.
    let reduced = rbac.replace(
        "resources: [\"scheduledjobs/status\", \"taskfunctions/status\"]",
        "resources: [\"taskfunctions/status\"]",
    );
    assert_ne!(reduced, rbac, "the rule to remove is in the chart");
    ok(&kubectl_stdin(
        &["apply", "-n", SA_NAMESPACE, "-f", "-"],
        &reduced,
    ));
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM celery_invocations")
        .fetch_one(&f.pool)
        .await
        .expect("record");
    let mut op = op;
    eventually(
        "the missing permission is logged",
        Duration::from_secs(60),
        || async {
            let log = op.log_text();
            log.lines()
                .any(|l| {
                    l.to_lowercase().contains("forbidden")
                        && l.contains("scheduledjobs")
                        && l.contains("status")
                })
                .then_some(())
        },
    )
    .await;
    eventually("dispatch goes on", Duration::from_secs(30), || async {
        let now: i64 = sqlx::query_scalar("SELECT count(*) FROM celery_invocations")
            .fetch_one(&f.pool)
            .await
            .ok()?;
        (now >= before + 3).then_some(())
    })
    .await;
    op.assert_running();
    ok(&kubectl_stdin(
        &["apply", "-n", SA_NAMESPACE, "-f", "-"],
        &rbac,
    ));
    drop(op);
    let _ = std::fs::remove_file(&kubeconfig);
    f.finish().await;
}

#[test]
#[ignore = "needs the local control plane (make test)"]
fn webhook_renders_and_applies_with_either_certificate_source() {
    common::install_crds();
    let ns = common::namespace("kbt-chart-webhook");
    let defaults = ok(&helm_template("kb", &ns, &[]));
    for what in [
        "kind: ValidatingWebhookConfiguration",
        "name: scheduledjobs.kubebeat.io",
        "name: taskfunctions.kubebeat.io",
        "failurePolicy: Ignore",
        "timeoutSeconds: 5",
        "sideEffects: None",
        "admissionReviewVersions: [\"v1\"]",
        "path: /validate",
        "- --webhook-addr=0.0.0.0:9443",
        "- --webhook-secret=kb-kube-beat-webhook-ca",
        "- --webhook-configuration=kb-kube-beat-webhook",
        "- name: webhook\n              containerPort: 9443",
        "- name: webhook\n      port: 9443\n      targetPort: webhook",
        "resourceNames: [\"kb-kube-beat-webhook\"]",
        "resourceNames: [\"kb-kube-beat-webhook-ca\"]",
    ] {
        assert!(defaults.contains(what), "default render lacks {what:?}");
    }
    assert!(!defaults.contains("cert-manager.io"));
    let applied = ok(&kubectl_stdin(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        &defaults,
    ));
    assert!(
        applied.contains(
            "validatingwebhookconfiguration.admissionregistration.k8s.io/kb-kube-beat-webhook created (server dry run)"
        ),
        "{applied}"
    );

    // cert-manager's CRDs are not installed here: the render only.
    let cm = ok(&helm_template(
        "kb",
        &ns,
        &[
            "--set",
            "webhook.certManager.enabled=true,webhook.failurePolicy=Fail,webhook.timeoutSeconds=3,\
             webhook.namespaceSelector.matchLabels.team=a,webhook.objectSelector.matchLabels.tier=x",
        ],
    ));
    for what in [
        "kind: Certificate",
        "kind: Issuer",
        "cert-manager.io/inject-ca-from: ",
        "secretName: kb-kube-beat-webhook-tls",
        "- --webhook-cert-dir=/var/run/kube-beat/webhook",
        "mountPath: /var/run/kube-beat/webhook",
        "failurePolicy: Fail",
        "timeoutSeconds: 3",
        "namespaceSelector:\n      matchLabels:\n        team: a",
        "objectSelector:\n      matchLabels:\n        tier: x",
    ] {
        assert!(
            cm.contains(what),
            "cert-manager render lacks {what:?}:\n{cm}"
        );
    }
    assert!(cm.contains(&format!(
        "cert-manager.io/inject-ca-from: {ns}/kb-kube-beat-webhook"
    )));
    assert!(!cm.contains("--webhook-configuration") && !cm.contains("webhook-ca\"]"));
    // Only the scheduledjobs webhook has a namespaceSelector (TaskFunctions are cluster-wide).
    assert_eq!(cm.matches("namespaceSelector:").count(), 1);
    let issuer = ok(&helm_template(
        "kb",
        &ns,
        &[
            "--set",
            "webhook.certManager.enabled=true,webhook.certManager.issuerRef.kind=ClusterIssuer,\
             webhook.certManager.issuerRef.name=corp-ca",
        ],
    ));
    assert!(!issuer.contains("kind: Issuer\n") && issuer.contains("name: corp-ca"));

    let off = ok(&helm_template(
        "kb",
        &ns,
        &["--set", "webhook.enabled=false"],
    ));
    for what in [
        "ValidatingWebhookConfiguration",
        "--webhook",
        "name: webhook",
        "-webhook-ca",
    ] {
        assert!(!off.contains(what), "{what} with the webhook off");
    }
    for bad in [
        "webhook.failurePolicy=Sometimes",
        "webhook.timeoutSeconds=31",
        "webhook.bogus=1",
        "webhook.certManager.bogus=1",
    ] {
        let out = helm_template("kb", &ns, &["--set", bad]);
        assert!(!out.status.success(), "{bad} accepted");
    }
    let _ = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
