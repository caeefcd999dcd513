//! A test fixture: a namespace, a database, a queue and a broker for one end-to-end test, with
//! helpers to create TaskFunctions and ScheduledJobs and read the worker's record.

use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use kube_beat::api::{ScheduledJob, TaskFunction};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Invocation, Operator, TestDb, Worker, install_crds, kubectl, namespace, unique};

pub struct Fixture {
    pub db: TestDb,
    pub pool: PgPool,
    pub ns: String,
    pub id: String,
    pub queue: String,
    pub broker: String,
    pub client: Client,
}

pub async fn fixture(prefix: &str, broker: String) -> Fixture {
    install_crds();
    let ns = namespace(prefix);
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let client = Client::try_default().await.expect("kube client");
    Fixture {
        db,
        pool,
        ns,
        id: unique("t"),
        queue: unique("kbt-q"),
        broker,
        client,
    }
}

impl Fixture {
    pub fn operator(&self, extra: &[&str]) -> Operator {
        let mut args = vec!["--broker-url", self.broker.as_str()];
        args.extend_from_slice(extra);
        Operator::start(&self.db.url, &self.ns, &self.id, &args)
    }

    pub fn worker(&self) -> Worker {
        Worker::start(&self.broker, None, &self.queue, &self.db.url)
    }

    /// RBAC for the API tests' static-token users in this namespace: `kbt-api-reader` may read
    /// ScheduledJobs, `kbt-api-editor` may also patch (trigger) them.
    pub fn grant_api_users(&self) {
        super::ok(&super::kubectl_stdin(
            &["apply", "-n", &self.ns, "-f", "-"],
            API_USERS_RBAC,
        ));
    }

    /// Ask for one run now (the `kubebeat.io/trigger` annotation).
    pub async fn trigger(&self, job: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {"kubebeat.io/trigger": value}}});
        Api::<ScheduledJob>::namespaced(self.client.clone(), &self.ns)
            .patch(job, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("trigger");
    }

    /// The job's status as the apiserver has it, as JSON.
    pub async fn status(&self, job: &str) -> Value {
        Api::<ScheduledJob>::namespaced(self.client.clone(), &self.ns)
            .get(job)
            .await
            .ok()
            .and_then(|j| j.status)
            .map(|s| serde_json::to_value(s).expect("status json"))
            .unwrap_or(Value::Null)
    }

    /// (object name, reason, count, note) of the Events in the test namespace, as `kubectl get
    /// events` shows them.
    pub fn events(&self) -> Vec<(String, String, i64, String)> {
        let out = kubectl(&["get", "events", "-n", &self.ns, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|e| {
                        let series = e["series"]["count"].as_i64();
                        (
                            e["involvedObject"]["name"]
                                .as_str()
                                .unwrap_or("")
                                .to_string(),
                            e["reason"].as_str().unwrap_or("").to_string(),
                            series.or(e["count"].as_i64()).unwrap_or(1),
                            e["message"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn task_function(&self, name: &str, task: &str) {
        self.task_function_with(name, task, json!({})).await
    }

    /// A TaskFunction with more spec fields (`defaultArgs`, `expiresSeconds`, ...).
    pub async fn task_function_with(&self, name: &str, task: &str, extra: Value) {
        let mut spec = json!({"task": task, "queue": self.queue});
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        let tf: TaskFunction = serde_json::from_value(json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
            "metadata": {"name": format!("{}-{name}", self.id), "labels": {"kubebeat.io/test": self.id}},
            "spec": spec,
        }))
        .expect("tf");
        Api::<TaskFunction>::all(self.client.clone())
            .create(&PostParams::default(), &tf)
            .await
            .expect("create tf");
    }

    pub async fn job(&self, name: &str, tf: &str, mut spec: Value) {
        spec["taskFunction"] = json!(format!("{}-{tf}", self.id));
        let job: ScheduledJob = serde_json::from_value(json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("job");
        Api::<ScheduledJob>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &job)
            .await
            .expect("create job");
    }

    /// The worker's record: (job, slot) → invocations.
    pub async fn record(&self) -> Vec<Invocation> {
        sqlx::query_as(
            "SELECT task_id, task_name, args, kwargs, queue, priority, headers
             FROM celery_invocations WHERE queue = $1 ORDER BY id",
        )
        .bind(&self.queue)
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default()
    }

    pub async fn finish(self) {
        let Fixture { db, pool, ns, .. } = self;
        pool.close().await;
        db.drop_db().await;
        let _ = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    }
}

impl Invocation {
    pub fn job(&self) -> String {
        self.headers["kubebeat_job"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub fn slot(&self) -> String {
        self.headers["kubebeat_slot"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

const API_USERS_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: sj-read}
rules: [{apiGroups: [kubebeat.io], resources: [scheduledjobs], verbs: [get, list, watch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: sj-edit}
rules: [{apiGroups: [kubebeat.io], resources: [scheduledjobs], verbs: [get, list, watch, patch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sj-read}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kbt-api-reader}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: editor}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sj-edit}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kbt-api-editor}]
"#;

/// A short lease for failover tests: a dead leader is replaced within seconds.
pub const FAST_LEASE: [&str; 6] = [
    "--lease-duration-seconds",
    "4",
    "--renew-deadline-seconds",
    "3",
    "--retry-period-seconds",
    "1",
];

/// No (job, slot) ran twice, counted from the worker's side (manual triggers have no slot of
/// their own), and no Celery task id ran twice.
pub fn assert_no_duplicates(record: &[Invocation]) {
    let mut seen: std::collections::HashMap<(String, String), usize> = Default::default();
    for inv in record {
        if inv.headers.get("kubebeat_trigger").and_then(Value::as_str) == Some("manual") {
            continue;
        }
        *seen.entry((inv.job(), inv.slot())).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicate executions: {dups:?}");
    let mut ids: std::collections::HashMap<&str, usize> = Default::default();
    for inv in record {
        *ids.entry(inv.task_id.as_str()).or_default() += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "a Celery task id ran twice");
}

impl Fixture {
    /// Every slot in the run either ran once or is accounted for by coalescing (catch-up after a
    /// failover); nothing ran twice, nothing failed to dispatch. Returns each job's slots (epoch
    /// seconds).
    pub async fn assert_slots_accounted(
        &self,
        jobs: usize,
        period_secs: i64,
    ) -> std::collections::BTreeMap<String, Vec<i64>> {
        let rows: Vec<(String, i64, i32, String)> = sqlx::query_as(
            "SELECT j.name, extract(epoch FROM e.scheduled_for)::bigint, e.coalesced_slots, e.state
             FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await
        .expect("executions");
        let mut per_job: std::collections::BTreeMap<String, Vec<(i64, i32)>> = Default::default();
        for (name, slot, coalesced, state) in rows {
            assert_ne!(state, "DISPATCH_FAILED", "{name} @ {slot}");
            per_job.entry(name).or_default().push((slot, coalesced));
        }
        assert_eq!(per_job.len(), jobs);
        for (name, slots) in &per_job {
            for pair in slots.windows(2) {
                let ((a, _), (b, coalesced)) = (pair[0], pair[1]);
                assert_eq!(
                    b - a,
                    i64::from(coalesced) * period_secs,
                    "{name}: slots {a}..{b} covered by {coalesced} coalesced slot(s)"
                );
            }
        }
        per_job
            .into_iter()
            .map(|(name, slots)| (name, slots.into_iter().map(|(s, _)| s).collect()))
            .collect()
    }
}
