//! Installing kube-beat on a cluster as a platform team does, against the real kube-apiserver
//! with the real kube-controller-manager (`hack/control-plane.sh up` with `KB_CONTROLLERS=1`):
//!
//! - RBAC that fits the cluster's roles: with the chart's aggregated ClusterRoles, a user bound
//!   only to the built-in `edit` in a namespace creates ScheduledJobs there and triggers them
//!   through kube-beat's API (the run reaches the Celery worker), but cannot create
//!   TaskFunctions; one bound to `view` reads but cannot trigger. Before the aggregation `edit`
//!   cannot create one, so the test can fail.
//! - An install that fails fast and says why: `helm install` without the Secret fails at once
//!   naming it; a migration hook that cannot reach Postgres fails `helm install --wait` within
//!   seconds naming the Job and `BackoffLimitExceeded`, with the migration's error in the Pod's
//!   status; a good install runs the real hook and `helm test` passes (and fails with the check's
//!   message when the API is down).
//!
//! Pods run under the test kubelet (`common::kubelet`): there is no container runtime here.
//! These tests need their own control plane with controllers: `make test` runs them separately.

mod common;

/// Everything that needs the control plane with controllers, in a module of its own so that
/// `make test` can leave it out of the main run (`--skip with_controllers::`) and run it on a
/// control plane started with `KB_CONTROLLERS=1`.
mod with_controllers {
    use std::{
        process::{Command, Output, Stdio},
        time::{Duration, Instant},
    };

    use crate::common::{
        self, Operator, TestDb, eventually, fixture, kubectl, kubectl_stdin, kubelet::Kubelet, ok,
        unique,
    };
    use serde_json::{Value, json};

    /// The image repository the test kubelet runs as the local kube-beat binary.
    const IMAGE: &str = "kbt.local/kube-beat";
    /// Static-token users (`KB_TOKEN_USERS` in hack/test.sh) with no permissions of their own.
    const EDIT: &str = "kbt-edit-token";
    const VIEW: &str = "kbt-view-token";

    fn helm_binary() -> String {
        let out = Command::new(common::env().repo.join("hack/helm.sh"))
            .output()
            .expect("hack/helm.sh");
        ok(&out).trim().to_string()
    }

    fn helm(args: &[&str]) -> Output {
        Command::new(helm_binary())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("helm")
    }

    fn chart() -> String {
        common::env()
            .repo
            .join("charts/kube-beat")
            .display()
            .to_string()
    }

    /// stdout and stderr together, as a user sees them.
    fn text(out: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// (HTTP status, JSON body) of a kube-beat API call with a bearer token.
    fn call(addr: &str, method: &str, path: &str, token: &str) -> (u16, Value) {
        common::api_call(addr, method, path, Some(token))
    }

    /// Whether the built-in ClusterRole `role` lets its holders `verb` scheduledjobs (its rules as
    /// the clusterrole-aggregation controller last wrote them).
    fn builtin_role_allows(role: &str, verb: &str) -> bool {
        let out = kubectl(&["get", "clusterrole", role, "-o", "json"]);
        let role: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        role["rules"].as_array().is_some_and(|rules| {
            rules.iter().any(|r| {
                let has = |field: &str, want: &str| {
                    r[field]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == want || x == "*"))
                };
                has("apiGroups", "kubebeat.io")
                    && has("resources", "scheduledjobs")
                    && has("verbs", verb)
            })
        })
    }

    /// The chart's aggregated ClusterRoles, as `helm template` renders them.
    fn aggregate_roles(release: &str) -> String {
        ok(&helm(&[
            "template",
            release,
            &chart(),
            "--show-only",
            "templates/rbac-aggregate.yaml",
        ]))
    }

    fn job_manifest(name: &str, task_function: &str) -> String {
        json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": name},
            // Hourly: nothing runs on schedule during the test, only what is triggered.
            "spec": {"taskFunction": task_function, "schedule": {"interval": {"hours": 1}}},
        })
        .to_string()
    }

    #[tokio::test]
    #[ignore = "needs the local control plane with controllers (make test)"]
    async fn edit_and_view_get_scheduled_jobs_through_the_aggregated_roles() {
        let env = common::env();
        let f = fixture("kbt-rbac", format!("{}/0", env.redis_url)).await;
        // Only this test aggregates into the built-in roles (the installs below turn it off); roles
        // left by an interrupted run would make "before" meaningless.
        let selector =
            "app.kubernetes.io/name=kube-beat,rbac.authorization.k8s.io/aggregate-to-view=true";
        ok(&kubectl(&["delete", "clusterrole", "-l", selector]));
        let selector =
            "app.kubernetes.io/name=kube-beat,rbac.authorization.k8s.io/aggregate-to-edit=true";
        ok(&kubectl(&["delete", "clusterrole", "-l", selector]));
        eventually(
            "edit without ScheduledJobs",
            Duration::from_secs(30),
            || async {
                (!builtin_role_allows("edit", "create") && !builtin_role_allows("view", "get"))
                    .then_some(())
            },
        )
        .await;
        // The two users get nothing but the built-in roles, in the test namespace.
        ok(&kubectl_stdin(
            &["apply", "-n", &f.ns, "-f", "-"],
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: team-edit}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kbt-edit}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: team-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kbt-view}]
"#,
        ));
        f.task_function("echo", "kb.echo").await;
        let tf = format!("{}-echo", f.id);
        let as_user = |token: &str, args: &[&str], stdin: &str| {
            let mut all = vec!["--token", token];
            all.extend_from_slice(args);
            kubectl_stdin(&all, stdin)
        };
        let create = ["create", "-n", &f.ns, "-f", "-"];

        // Before the aggregation, `edit` has nothing for kube-beat's resources.
        let before = as_user(EDIT, &create, &job_manifest("nightly", &tf));
        assert!(
            !before.status.success() && text(&before).contains("forbidden"),
            "edit created a ScheduledJob with no aggregated role: {}",
            text(&before)
        );

        // The chart's roles, as `rbac.aggregateToDefaultRoles` (the default) installs them.
        let release = unique("kbt");
        ok(&kubectl_stdin(
            &["apply", "-f", "-"],
            &aggregate_roles(&release),
        ));
        eventually(
            "the aggregation into view, edit and admin",
            Duration::from_secs(30),
            || async {
                (builtin_role_allows("view", "get")
                    && builtin_role_allows("edit", "create")
                    && builtin_role_allows("edit", "patch")
                    && builtin_role_allows("admin", "delete")
                    && !builtin_role_allows("view", "patch"))
                .then_some(())
            },
        )
        .await;

        // `edit` in its namespace: create (the authorizer's cache follows the role within moments).
        eventually(
            "edit creating a ScheduledJob",
            Duration::from_secs(10),
            || async {
                let out = as_user(EDIT, &create, &job_manifest("nightly", &tf));
                out.status.success().then_some(())
            },
        )
        .await;
        // ... but not in another namespace, and no TaskFunction (the platform team's allow-list).
        let elsewhere = as_user(
            EDIT,
            &["create", "-n", "default", "-f", "-"],
            &job_manifest("nightly", &tf),
        );
        assert!(
            text(&elsewhere).contains("forbidden"),
            "{}",
            text(&elsewhere)
        );
        let tf_manifest = json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
            "metadata": {"name": format!("{}-mine", f.id)},
            "spec": {"task": "kb.echo", "queue": f.queue},
        });
        let out = as_user(EDIT, &["create", "-f", "-"], &tf_manifest.to_string());
        assert!(
            !out.status.success() && text(&out).contains("forbidden"),
            "edit created a TaskFunction: {}",
            text(&out)
        );
        // `view`: reads, writes nothing.
        let got = as_user(
            VIEW,
            &["get", "scheduledjob", "nightly", "-n", &f.ns, "-o", "name"],
            "",
        );
        assert_eq!(ok(&got).trim(), "scheduledjob.kubebeat.io/nightly");
        let out = as_user(VIEW, &create, &job_manifest("other", &tf));
        assert!(text(&out).contains("forbidden"), "{}", text(&out));
        let out = as_user(
            VIEW,
            &[
                "annotate",
                "scheduledjob",
                "nightly",
                "-n",
                &f.ns,
                "kubebeat.io/trigger=by-viewer",
            ],
            "",
        );
        assert!(text(&out).contains("forbidden"), "{}", text(&out));

        // Through kube-beat's API (Kubernetes authentication: TokenReview + SubjectAccessReview).
        let _worker = f.worker();
        let op = f.operator(&[]);
        let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
            op.http_addr()
        })
        .await;
        let path = format!("/api/v1/jobs/{}/nightly", f.ns);
        eventually("the job reconciled", Duration::from_secs(60), || async {
            (call(&addr, "GET", &path, VIEW).0 == 200).then_some(())
        })
        .await;
        assert_eq!(call(&addr, "GET", &path, EDIT).0, 200);
        let trigger = format!("{path}/trigger");
        let (code, body) = call(&addr, "POST", &trigger, VIEW);
        assert_eq!(code, 403, "view triggered: {body}");
        let (code, body) = call(&addr, "POST", &trigger, EDIT);
        assert_eq!(code, 202, "{body}");
        // The run really happens: the Celery worker executes it, once.
        let job = format!("{}/nightly", f.ns);
        let runs = common::wait_invocations(&f.pool, &f.queue, Duration::from_secs(30), |rows| {
            !rows.is_empty()
        })
        .await;
        assert_eq!(runs.len(), 1, "{runs:?}\n{}", op.log_text());
        assert_eq!(runs[0].job(), job);
        assert_eq!(runs[0].task_name, "kb.echo");

        drop(op);
        let _ = kubectl_stdin(&["delete", "-f", "-"], &aggregate_roles(&release));
        f.finish().await;
    }

    /// A namespace with a test kubelet, and the chart's install flags for it: our image, the CRDs
    /// `make test` installed (not the chart's copies), no aggregation into the built-in roles (the
    /// test above owns that).
    struct Install {
        ns: String,
        release: String,
        kubelet: Kubelet,
    }

    impl Install {
        fn new(prefix: &str) -> Install {
            let ns = common::namespace(prefix);
            let kubelet = Kubelet::start(&ns, IMAGE);
            Install {
                release: unique("kbt"),
                ns,
                kubelet,
            }
        }

        fn fullname(&self) -> String {
            format!("{}-kube-beat", self.release)
        }

        /// `helm install` with `extra` flags; (output, how long it took).
        fn install(&self, extra: &[&str]) -> (Output, Duration) {
            let start = Instant::now();
            let mut args = vec![
                "install",
                &self.release,
                "--namespace",
                &self.ns,
                "--set",
                "crds.enabled=false,rbac.aggregateToDefaultRoles=false",
                "--set",
                "image.repository=kbt.local/kube-beat",
            ];
            args.extend_from_slice(extra);
            let chart = chart();
            args.push(&chart);
            let out = helm(&args);
            (out, start.elapsed())
        }

        fn secret(&self, database_url: &str, broker_url: &str) {
            ok(&kubectl(&[
                "create",
                "secret",
                "generic",
                "kube-beat",
                "-n",
                &self.ns,
                &format!("--from-literal=database-url={database_url}"),
                &format!("--from-literal=broker-url={broker_url}"),
            ]));
        }

        /// The Pods of the migration Job, as JSON.
        fn migrate_pods(&self) -> Vec<Value> {
            let job = format!("job-name={}-migrate", self.fullname());
            let out = ok(&kubectl(&[
                "get", "pods", "-n", &self.ns, "-l", &job, "-o", "json",
            ]));
            let pods: Value = serde_json::from_str(&out).expect("pods json");
            pods["items"].as_array().cloned().unwrap_or_default()
        }

        fn finish(self) {
            let _ = helm(&["uninstall", &self.release, "-n", &self.ns, "--no-hooks"]);
            drop(self.kubelet);
            let _ = kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
        }
    }

    #[test]
    #[ignore = "needs the local control plane with controllers (make test)"]
    fn helm_install_without_the_secret_fails_at_once_naming_it() {
        let inst = Install::new("kbt-inst-nosecret");
        let (out, took) = inst.install(&["--wait", "--timeout", "2m"]);
        let said = text(&out);
        assert!(!out.status.success(), "installed without a Secret: {said}");
        assert!(
            took < Duration::from_secs(20),
            "took {took:?} to fail: {said}\n{}",
            inst.kubelet.notes()
        );
        assert!(
            said.contains("kube-beat") && said.contains("database-url") && said.contains("Secret"),
            "the message names neither the Secret nor the key: {said}"
        );
        // Refused before anything ran: no hook Job was created.
        let jobs = ok(&kubectl(&["get", "jobs", "-n", &inst.ns, "-o", "name"]));
        assert!(jobs.trim().is_empty(), "{jobs}");

        // Without the check, the hook's Pod cannot start (CreateContainerConfigError, retried for
        // ever by a kubelet): `activeDeadlineSeconds` is what still ends the install.
        let (out, took) = inst.install(&[
            "--wait",
            "--timeout",
            "2m",
            "--set",
            "preflight.checkSecrets=false,migrations.activeDeadlineSeconds=10",
        ]);
        let said = text(&out);
        assert!(!out.status.success(), "installed without a Secret: {said}");
        assert!(
            said.contains(&format!("{}-migrate", inst.fullname()))
                && said.contains("DeadlineExceeded"),
            "{said}"
        );
        assert!(
            took < Duration::from_secs(40),
            "took {took:?} with a 10 s deadline: {said}"
        );
        assert!(
            inst.kubelet
                .notes()
                .contains("CreateContainerConfigError: secret \"kube-beat\" not found"),
            "{}",
            inst.kubelet.notes()
        );
        inst.finish();
    }

    #[test]
    #[ignore = "needs the local control plane with controllers (make test)"]
    fn a_migration_that_cannot_reach_postgres_fails_helm_install_fast_with_its_error() {
        let inst = Install::new("kbt-inst-nopg");
        // Port 1 on loopback: nothing listens, the connection is refused at once. The password
        // must not show anywhere.
        inst.secret(
            "postgres://kbt:kbt-hidden-pw@127.0.0.1:1/kbt_unreachable",
            "redis://127.0.0.1:1/0",
        );
        let (out, took) = inst.install(&[
            "--wait",
            "--timeout",
            "3m",
            "--set",
            "migrations.backoffLimit=0,migrations.activeDeadlineSeconds=60",
        ]);
        let said = text(&out);
        assert!(!out.status.success(), "installed: {said}");
        assert!(
            took < Duration::from_secs(60),
            "took {took:?} (the timeout is 3 minutes): {said}\n{}",
            inst.kubelet.notes()
        );
        let job = format!("{}-migrate", inst.fullname());
        assert!(
            said.contains(&job) && said.contains("BackoffLimitExceeded"),
            "helm does not say which Job failed and why: {said}"
        );
        // backoffLimit 0: one Pod, failed, and its status says why (FallbackToLogsOnError).
        let pods = inst.migrate_pods();
        assert_eq!(pods.len(), 1, "{pods:?}\n{}", inst.kubelet.notes());
        let pod = &pods[0];
        assert_eq!(pod["status"]["phase"], "Failed", "{pod}");
        let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_ne!(terminated["exitCode"], 0, "{terminated}");
        let message = terminated["message"].as_str().unwrap_or_default();
        let output = inst
            .kubelet
            .output(pod["metadata"]["name"].as_str().expect("pod name"))
            .expect("the migration's output");
        assert!(
            message.contains("connecting to Postgres")
                && message.contains("127.0.0.1:1")
                && message.contains("Connection refused"),
            "the Pod's status does not carry the migration's error: {terminated}\noutput: {output}"
        );
        for place in [&said, &output, &pod.to_string()] {
            assert!(
                !place.contains("kbt-hidden-pw"),
                "the password leaked: {place}"
            );
        }
        inst.finish();
    }

    #[tokio::test]
    #[ignore = "needs the local control plane with controllers (make test)"]
    async fn the_hook_migrates_and_helm_test_checks_the_api() {
        let env = common::env();
        let inst = Install::new("kbt-inst-ok");
        let db = TestDb::create().await;
        let broker = format!("{}/0", env.redis_url);
        inst.secret(&db.url, &broker);
        // Without --wait: the Deployment's Pods are not run here (no kubelet for them); the hook is.
        let (out, took) = inst.install(&["--timeout", "2m"]);
        assert!(
            out.status.success(),
            "helm install failed after {took:?}: {}\n{}",
            text(&out),
            inst.kubelet.notes()
        );
        // The real hook ran `kube-beat migrate up` against the Secret's database.
        let hook_output = inst
            .kubelet
            .pods_run()
            .iter()
            .filter(|p| p.starts_with(&format!("{}-migrate", inst.fullname())))
            .filter_map(|p| inst.kubelet.output(p))
            .collect::<Vec<_>>();
        assert_eq!(hook_output.len(), 1, "{}", inst.kubelet.notes());
        assert!(
            hook_output[0].contains("migrations applied"),
            "{hook_output:?}"
        );
        let pool = db.pool().await;
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
                .expect("the migrations table");
        assert!(applied > 0);
        pool.close().await;

        // The operator, on loopback, stands in for the Deployment's Pods; the test Pod's URL of the
        // release's Service (whose DNS name does not resolve here) is rewritten to it.
        let id = unique("t");
        let op = Operator::start(&db.url, &inst.ns, &id, &["--broker-url", &broker]);
        let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
            op.http_addr()
        })
        .await;
        // A Service sends traffic only to ready Pods: wait for /readyz as its endpoints would.
        eventually("the operator ready", Duration::from_secs(60), || async {
            let out = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &format!("http://{addr}/readyz")])
                .status()
                .ok()?;
            out.success().then_some(())
        })
        .await;
        let service = format!("http://{}.{}.svc:8080", inst.fullname(), inst.ns);
        inst.kubelet.rewrite(&service, &format!("http://{addr}"));
        let test_pod = format!("{}-api-check", inst.fullname());
        let tested = helm(&["test", &inst.release, "-n", &inst.ns, "--timeout", "2m"]);
        let said = text(&tested);
        let check_output = inst.kubelet.output(&test_pod).unwrap_or_default();
        assert!(
            tested.status.success(),
            "helm test failed: {said}\n{check_output}\n{}\n{}",
            inst.kubelet.notes(),
            op.log_text()
        );
        assert!(
            said.contains(&format!("TEST SUITE:     {test_pod}"))
                && said.contains("Phase:          Succeeded"),
            "{said}"
        );
        // Both checks ran and passed, the API's with the release ServiceAccount's token.
        let passed = check_output
            .lines()
            .filter(|l| l.starts_with("ok "))
            .count();
        assert_eq!(passed, 2, "{check_output}");
        assert!(!check_output.contains("FAIL"), "{check_output}");

        // With the API down, the same test fails, and the Pod's status says why.
        drop(op);
        let tested = helm(&["test", &inst.release, "-n", &inst.ns, "--timeout", "2m"]);
        let said = text(&tested);
        assert!(
            !tested.status.success(),
            "helm test passed with no API: {said}"
        );
        assert!(said.contains(&test_pod), "{said}");
        let pod = ok(&kubectl(&[
            "get", "pod", &test_pod, "-n", &inst.ns, "-o", "json",
        ]));
        let pod: Value = serde_json::from_str(&pod).expect("pod json");
        assert_eq!(pod["status"]["phase"], "Failed", "{pod}");
        let message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.contains("FAIL") && message.contains("/readyz"),
            "{message}\n{}",
            inst.kubelet.notes()
        );
        inst.finish();
        db.drop_db().await;
    }
}

#[test]
fn the_test_kubelets_string_handling() {
    use common::kubelet::{MESSAGE_LINES, expand, image_repository, tail};
    let vars = [("A".to_string(), "x".to_string())].into();
    assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
    assert_eq!(
        image_repository("ghcr.io/k/kube-beat:1.0"),
        "ghcr.io/k/kube-beat"
    );
    assert_eq!(image_repository("reg:5000/kube-beat"), "reg:5000/kube-beat");
    assert_eq!(
        image_repository("reg:5000/kube-beat:v1@sha256:ab"),
        "reg:5000/kube-beat"
    );
    let long: String = (0..200).map(|i| format!("line {i}\n")).collect();
    let t = tail(&long);
    assert!(
        t.ends_with("line 199") && t.lines().count() <= MESSAGE_LINES,
        "{t}"
    );
    assert!(t.len() <= 2048);
}
