//! ScheduledJobs and TaskFunctions follow into Postgres and status, against the real apiserver,
//! real Postgres and `kube-beat run`.

mod common;

use std::time::{Duration, Instant};

use common::{Operator, TestDb, eventually, install_crds, namespace, unique};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kube_beat::api::{ScheduledJob, TaskFunction};
use serde_json::{Value, json};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    db: TestDb,
    pool: PgPool,
    ns: String,
    id: String,
    client: Client,
    op: Operator,
}

async fn fixture(prefix: &str) -> Fixture {
    install_crds();
    let ns = namespace(prefix);
    let id = unique("t");
    let db = TestDb::create().await;
    // Shadow mode: these tests are about Postgres and status; nothing is published.
    let op = Operator::start(&db.url, &ns, &id, &["--dispatch-mode", "shadow"]);
    let pool = db.pool().await;
    let client = Client::try_default().await.expect("kube client");
    Fixture {
        db,
        pool,
        ns,
        id,
        client,
        op,
    }
}

impl Fixture {
    fn tf_name(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    async fn create_tf(&self, name: &str, spec: Value) {
        let tf: TaskFunction = serde_json::from_value(json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
            "metadata": {"name": self.tf_name(name), "labels": {"kubebeat.io/test": self.id}},
            "spec": spec,
        }))
        .expect("a TaskFunction");
        Api::<TaskFunction>::all(self.client.clone())
            .create(&PostParams::default(), &tf)
            .await
            .expect("create tf");
    }

    fn jobs(&self) -> Api<ScheduledJob> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn create_job(&self, name: &str, mut spec: Value) {
        if let Some(tf) = spec["taskFunction"].as_str() {
            spec["taskFunction"] = json!(self.tf_name(tf));
        }
        let job: ScheduledJob = serde_json::from_value(json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("a ScheduledJob");
        self.jobs()
            .create(&PostParams::default(), &job)
            .await
            .expect("create job");
    }

    async fn patch_job(&self, name: &str, patch: Value) {
        self.jobs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch job");
    }

    /// Wait for `status.nextScheduleTime` to satisfy `wanted`; returns it.
    async fn next_schedule_time(
        &self,
        name: &str,
        wanted: impl Fn(&Option<String>) -> bool,
    ) -> Option<String> {
        let jobs = self.jobs();
        let wanted = &wanted;
        eventually(&format!("nextScheduleTime of {name}"), WAIT, || {
            let jobs = jobs.clone();
            async move {
                let next = jobs.get(name).await.ok()?.status?.next_schedule_time;
                wanted(&next).then_some(next)
            }
        })
        .await
    }

    /// Wait for the Ready condition of the current generation; returns (status, reason, message).
    async fn ready(&self, name: &str) -> (String, String, String) {
        let jobs = self.jobs();
        eventually(&format!("Ready condition of {name}"), WAIT, || {
            let jobs = jobs.clone();
            async move {
                let job = jobs.get(name).await.ok()?;
                let status = job.status?;
                if status.observed_generation != job.metadata.generation {
                    return None;
                }
                let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
                Some((c.status.clone(), c.reason.clone(), c.message.clone()))
            }
        })
        .await
    }

    async fn row(&self, name: &str) -> Option<JobRow> {
        sqlx::query_as(
            "SELECT enabled, suspended, valid, invalid_reason, next_run_at, generation, schedule_config,
                    task_name, queue, args, kwargs, deleted_at IS NOT NULL AS deleted
             FROM scheduled_jobs WHERE namespace = $1 AND name = $2 ORDER BY id DESC LIMIT 1",
        )
        .bind(&self.ns)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .expect("query")
    }

    async fn finish(self) {
        let Fixture {
            db, pool, ns, op, ..
        } = self;
        drop(op);
        pool.close().await;
        db.drop_db().await;
        let _ = common::kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    }
}

#[derive(Debug, sqlx::FromRow)]
struct JobRow {
    enabled: bool,
    suspended: bool,
    valid: bool,
    invalid_reason: Option<String>,
    next_run_at: Option<chrono::DateTime<chrono::Utc>>,
    generation: i64,
    schedule_config: Value,
    task_name: String,
    queue: String,
    args: Value,
    kwargs: Value,
    deleted: bool,
}

fn task_spec() -> Value {
    json!({"task": "tasks.ad_sync_tasks.sync_domain_users_task", "queue": "ad_queue",
           "defaultKwargs": {"mode": "full"}})
}

#[tokio::test]
#[ignore = "needs the real apiserver and Postgres: make test"]
async fn create_update_suspend_resume_delete() {
    let f = fixture("kbt-life").await;
    f.create_tf("sync", task_spec()).await;
    f.create_job(
        "sync",
        json!({"taskFunction": "sync", "schedule": {"interval": {"minutes": 5}}, "args": ["corp"]}),
    )
    .await;

    assert_eq!(f.ready("sync").await.0, "True");
    let row = f.row("sync").await.expect("row stored");
    assert!(row.enabled && row.valid && !row.deleted);
    assert_eq!(row.task_name, "tasks.ad_sync_tasks.sync_domain_users_task");
    assert_eq!(row.queue, "ad_queue");
    assert_eq!(row.args, json!(["corp"]));
    assert_eq!(row.kwargs, json!({"mode": "full"}));
    let first_next = row.next_run_at.expect("next run");
    let job = f.jobs().get("sync").await.expect("job");
    let status = job.status.expect("status");
    assert_eq!(status.schedule.as_deref(), Some("every 5m"));
    // `nextScheduleTime` is the status writer's (it follows every run): it follows the Ready
    // condition within the writer's pace.
    let next_shown = f.next_schedule_time("sync", |n| n.is_some()).await;
    assert_eq!(next_shown, Some(kube_beat::schedule::rfc3339(first_next)));
    assert!(
        job.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"kubebeat.io/cleanup".to_string())
    );

    // Update: the schedule changes, the row follows with the new generation.
    f.patch_job("sync", json!({"spec": {"schedule": {"interval": {"minutes": 5}, "cron": null}, "kwargs": {"mode": "delta"}}})).await;
    f.patch_job(
        "sync",
        json!({"spec": {"schedule": {"interval": null, "cron": "*/10 * * * *"}}}),
    )
    .await;
    assert_eq!(f.ready("sync").await.0, "True");
    let row = eventually("row at generation 3", WAIT, || async {
        f.row("sync").await.filter(|r| r.generation == 3)
    })
    .await;
    assert_eq!(row.schedule_config, json!({"cron": "*/10 * * * *"}));
    assert_eq!(row.kwargs, json!({"mode": "delta"}));
    let next = row.next_run_at.expect("next run");
    assert_eq!(
        chrono::Timelike::minute(&next) % 10,
        0,
        "on the cron grid: {next}"
    );

    // A condition another controller applies (its own field manager, its own condition type)
    // survives kube-beat's status applies: conditions are a list-map keyed by type, and
    // kube-beat applies only Ready (it never reads the others back).
    let other_condition = json!({
        "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
        "metadata": {"name": "sync"},
        "status": {"conditions": [{
            "type": "Degraded", "status": "False", "reason": "Fine",
            "message": "from another controller",
            "lastTransitionTime": "2026-11-01T00:00:00Z"}]},
    });
    f.jobs()
        .patch_status(
            "sync",
            &PatchParams::apply("another-controller"),
            &Patch::Apply(&other_condition),
        )
        .await
        .expect("apply another controller's condition");

    // Suspend takes effect at once; resume does not replay.
    f.patch_job("sync", json!({"spec": {"suspend": true}}))
        .await;
    let (_, _, message) = f.ready("sync").await;
    assert!(message.contains("suspended"), "{message}");
    let conditions = f
        .jobs()
        .get("sync")
        .await
        .expect("job")
        .status
        .expect("status")
        .conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.message == "from another controller"),
        "{conditions:?}"
    );
    let row = f.row("sync").await.expect("row");
    assert!(!row.enabled && row.suspended && row.next_run_at.is_none());
    // The status writer owns `nextScheduleTime`: it leaves it out, and so removes it.
    assert_eq!(f.next_schedule_time("sync", |n| n.is_none()).await, None);
    let job = f.jobs().get("sync").await.expect("job");
    let status = job.status.clone().expect("status");
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.message == "from another controller"),
        "after kube-beat's applies: {:?}",
        status.conditions
    );
    // Each field has one owner: kube-beat the Ready condition, the other controller its own.
    let managers: Vec<(String, Value)> = job
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        // (Status applies are not told apart by `subresource`: the local apiserver (1.20)
        // predates that field.)
        .map(|m| {
            let fields = m.fields_v1.map(|f| f.0).unwrap_or_default();
            (m.manager.unwrap_or_default(), fields)
        })
        .collect();
    let owns = |manager: &str, path: &str| {
        managers
            .iter()
            .any(|(m, fields)| m == manager && fields.pointer(path).is_some())
    };
    let ready = "/f:status/f:conditions/k:{\"type\":\"Ready\"}";
    let degraded = "/f:status/f:conditions/k:{\"type\":\"Degraded\"}";
    assert!(owns("kube-beat", ready), "{managers:?}");
    assert!(owns("another-controller", degraded), "{managers:?}");
    assert!(!owns("kube-beat", degraded), "{managers:?}");
    assert!(!owns("another-controller", ready), "{managers:?}");
    assert!(
        owns("kube-beat-runs", "/f:status/f:totalRuns"),
        "{managers:?}"
    );
    f.patch_job("sync", json!({"spec": {"suspend": false}}))
        .await;
    let row = eventually("resumed", WAIT, || async {
        f.row("sync").await.filter(|r| r.enabled)
    })
    .await;
    assert!(
        row.next_run_at.expect("next") > chrono::Utc::now(),
        "resuming schedules forward only"
    );

    // Delete: scheduling stops (soft delete), then the finalizer lets the object go.
    f.jobs()
        .delete("sync", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("object gone", WAIT, || async {
        f.jobs()
            .get_opt("sync")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    let row = f.row("sync").await.expect("row kept");
    assert!(row.deleted && !row.enabled && row.next_run_at.is_none());
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real apiserver and Postgres: make test"]
async fn bad_input_gets_a_condition_and_stops_the_job() {
    let f = fixture("kbt-bad").await;
    f.create_tf("sync", task_spec()).await;
    f.create_tf(
        "restricted",
        json!({"task": "t.x", "allowedNamespaces": ["somewhere-else"]}),
    )
    .await;
    let big = "x".repeat(70_000);
    let cases = [
        (
            "bad-cron",
            json!({"taskFunction": "sync", "schedule": {"cron": "61 * * * *"}}),
            "InvalidSchedule",
            "end of range (61) above maximum (59)",
        ),
        (
            "bad-zone",
            json!({"taskFunction": "sync", "schedule": {"cron": "0 * * * *"}, "timeZone": "Mars/Olympus"}),
            "InvalidSchedule",
            "unknown time zone",
        ),
        (
            "zero-interval",
            json!({"taskFunction": "sync", "schedule": {"interval": {"seconds": 0}}}),
            "InvalidSchedule",
            "at least 1 second",
        ),
        (
            "past-at",
            json!({"taskFunction": "sync", "schedule": {"at": "2020-01-01T00:00:00Z"}}),
            "InvalidSchedule",
            "in the past",
        ),
        (
            "huge-kwargs",
            json!({"taskFunction": "sync", "schedule": {"cron": "0 * * * *"}, "kwargs": {"blob": big}}),
            "InvalidSpec",
            "the limit is 65536",
        ),
        (
            "newline-queue",
            json!({"taskFunction": "sync", "schedule": {"cron": "0 * * * *"}, "queue": "a\nb"}),
            "InvalidSpec",
            "control characters",
        ),
        (
            "no-such-tf",
            json!({"taskFunction": "nope", "schedule": {"cron": "0 * * * *"}}),
            "UnknownTaskFunction",
            "does not exist",
        ),
        (
            "not-allowed",
            json!({"taskFunction": "restricted", "schedule": {"cron": "0 * * * *"}}),
            "NamespaceNotAllowed",
            "somewhere-else",
        ),
    ];
    for (name, spec, _, _) in &cases {
        f.create_job(name, spec.clone()).await;
    }
    for (name, _, reason, message) in &cases {
        let (status, got_reason, got_message) = f.ready(name).await;
        assert_eq!(
            (status.as_str(), got_reason.as_str()),
            ("False", *reason),
            "{name}: {got_message}"
        );
        assert!(
            got_message.contains(message),
            "{name}: want {message:?} in {got_message:?}"
        );
        assert!(
            f.row(name).await.is_none(),
            "{name}: an invalid new job is never written"
        );
    }

    // A valid job that becomes invalid stops, keeps its last valid configuration, and recovers.
    f.create_job(
        "was-fine",
        json!({"taskFunction": "sync", "schedule": {"cron": "*/5 * * * *"}}),
    )
    .await;
    assert_eq!(f.ready("was-fine").await.0, "True");
    f.patch_job(
        "was-fine",
        json!({"spec": {"schedule": {"cron": "not a cron"}}}),
    )
    .await;
    let (status, reason, _) = f.ready("was-fine").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidSchedule")
    );
    let row = f.row("was-fine").await.expect("row");
    assert!(!row.enabled && !row.valid && row.next_run_at.is_none());
    assert_eq!(row.invalid_reason.as_deref(), Some("InvalidSchedule"));
    assert_eq!(
        row.schedule_config,
        json!({"cron": "*/5 * * * *"}),
        "nothing half-written"
    );
    f.patch_job(
        "was-fine",
        json!({"spec": {"schedule": {"cron": "*/15 * * * *"}}}),
    )
    .await;
    assert_eq!(f.ready("was-fine").await.0, "True");
    let row = f.row("was-fine").await.expect("row");
    assert!(row.enabled && row.valid && row.next_run_at.is_some());

    f.op_alive();
    f.finish().await;
}

impl Fixture {
    fn op_alive(&self) {
        // Bad input must never crash the operator.
        let mut op_log = self.op.log_text();
        op_log.truncate(2000);
        assert!(!op_log.contains("panicked"), "operator panicked:\n{op_log}");
    }
}

#[tokio::test]
#[ignore = "needs the real apiserver and Postgres: make test"]
async fn task_function_changes_follow_into_jobs() {
    let mut f = fixture("kbt-tf").await;
    f.create_tf("sync", task_spec()).await;
    for name in ["a", "b"] {
        f.create_job(
            name,
            json!({"taskFunction": "sync", "schedule": {"interval": {"hours": 1}}}),
        )
        .await;
    }
    assert_eq!(f.ready("a").await.0, "True");
    assert_eq!(f.ready("b").await.0, "True");
    let tfs: Api<TaskFunction> = Api::all(f.client.clone());
    let tf_name = f.tf_name("sync");
    eventually("jobCount 2", WAIT, || async {
        let tf = tfs.get(&tf_name).await.ok()?;
        (tf.status?.job_count == 2).then_some(())
    })
    .await;

    // The queue changes: every job using the TaskFunction follows.
    tfs.patch(
        &tf_name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"queue": "other_queue"}})),
    )
    .await
    .expect("patch tf");
    eventually("queues follow", WAIT, || async {
        let (a, b) = (f.row("a").await?, f.row("b").await?);
        (a.queue == "other_queue" && b.queue == "other_queue").then_some(())
    })
    .await;

    // Restricting namespaces stops them.
    tfs.patch(
        &tf_name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"allowedNamespaces": ["elsewhere"]}})),
    )
    .await
    .expect("patch tf");
    eventually("NamespaceNotAllowed", WAIT, || async {
        let j = f.jobs().get("a").await.ok()?;
        let c = j
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (c.reason == "NamespaceNotAllowed").then_some(())
    })
    .await;
    assert!(!f.row("a").await.expect("row").enabled);
    tfs.patch(
        &tf_name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"allowedNamespaces": null}})),
    )
    .await
    .expect("patch tf");
    eventually("allowed again", WAIT, || async {
        f.row("a").await.filter(|r| r.enabled)
    })
    .await;

    // Deleting it: the jobs become UnknownTaskFunction and stop.
    tfs.delete(&tf_name, &DeleteParams::default())
        .await
        .expect("delete tf");
    for name in ["a", "b"] {
        eventually(&format!("{name} UnknownTaskFunction"), WAIT, || async {
            let j = f.jobs().get(name).await.ok()?;
            let c = j
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (c.status == "False" && c.reason == "UnknownTaskFunction").then_some(())
        })
        .await;
        let row = f.row(name).await.expect("row");
        assert!(!row.enabled && row.next_run_at.is_none(), "{name} stopped");
    }
    eventually("tf gone", WAIT, || async {
        tfs.get_opt(&tf_name)
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    // Recreating it brings them back.
    f.create_tf("sync", task_spec()).await;
    eventually("a enabled again", WAIT, || async {
        f.row("a").await.filter(|r| r.enabled)
    })
    .await;
    f.op.assert_running();
    f.finish().await;
}

/// A starting operator does not queue every job it lists: as the leader it sweeps them, a few
/// at a time. What changed while no operator ran must still reach Postgres.
#[tokio::test]
#[ignore = "needs the real apiserver and Postgres: make test"]
async fn a_new_leader_reconciles_what_changed_while_none_ran() {
    let mut f = fixture("kbt-sweep").await;
    f.create_tf("sync", task_spec()).await;
    for name in ["kept", "edited", "restored", "unguarded", "watched", "held"] {
        f.create_job(
            name,
            json!({"taskFunction": "sync", "schedule": {"interval": {"hours": 1}}}),
        )
        .await;
        assert_eq!(f.ready(name).await.0, "True");
    }
    // The operator stops (frozen, then killed): a spec edit, a new job and a deletion wait for
    // the next one.
    f.op.signal("STOP");
    f.patch_job(
        "edited",
        json!({"spec": {"schedule": {"interval": {"minutes": 7}}}}),
    )
    .await;
    f.create_job(
        "added",
        json!({"taskFunction": "sync", "schedule": {"interval": {"hours": 1}}}),
    )
    .await;
    f.jobs()
        .delete("kept", &DeleteParams::default())
        .await
        .expect("delete");
    // A job whose finalizer someone removed, then deleted: it is gone at once, with no
    // deletion for the next operator to see (the orphan check finds it).
    let no_finalizer = json!({"metadata": {"finalizers": null}});
    f.patch_job("unguarded", no_finalizer.clone()).await;
    f.jobs()
        .delete("unguarded", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(f.jobs().get_opt("unguarded").await.expect("get").is_none());
    // A job deleted while another controller's finalizer holds it, and without ours: it stays
    // Terminating, and must stop all the same.
    f.patch_job(
        "held",
        json!({"metadata": {"finalizers": ["example.com/hold"]}}),
    )
    .await;
    f.jobs()
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    // A row without the spec it was built from (written by an older release, or a database
    // restored from a backup): the operator's cache keeps no spec for a stored, Ready job.
    let spec_stored = |name: &'static str| {
        let pool = f.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT spec IS NOT NULL AND spec_generation IS NOT NULL
                 FROM scheduled_jobs WHERE name = $1",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .expect("row")
        }
    };
    assert!(spec_stored("restored").await);
    sqlx::query(
        "UPDATE scheduled_jobs SET spec = NULL, spec_generation = NULL, queue = 'stale'
         WHERE name = 'restored'",
    )
    .execute(&f.pool)
    .await
    .expect("forget the spec");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(f.row("edited").await.expect("row").generation, 1);
    assert!(f.row("added").await.is_none(), "nothing reconciles it yet");

    drop(std::mem::replace(
        &mut f.op,
        Operator::start(&f.db.url, &f.ns, &f.id, &["--dispatch-mode", "shadow"]),
    ));
    let edited = eventually(
        "the edit reaches Postgres",
        Duration::from_secs(60),
        || async { f.row("edited").await.filter(|r| r.generation == 2) },
    )
    .await;
    // (A merge patch: the hour stays.)
    assert_eq!(
        edited.schedule_config,
        json!({"interval": {"hours": 1, "minutes": 7, "seconds": 0}})
    );
    assert_eq!(f.ready("added").await.0, "True");
    eventually("the deleted job stops", WAIT, || async {
        f.row("kept").await.filter(|r| r.deleted)
    })
    .await;
    let row = eventually(
        "the job deleted without its finalizer stops",
        WAIT,
        || async { f.row("unguarded").await.filter(|r| r.deleted) },
    )
    .await;
    assert!(!row.enabled && row.next_run_at.is_none());
    assert!(
        !f.row("edited").await.expect("row").deleted,
        "only gone jobs"
    );
    eventually("the job held by another finalizer stops", WAIT, || async {
        f.row("held").await.filter(|r| r.deleted)
    })
    .await;
    let held = f.jobs().get_opt("held").await.expect("get").expect("held");
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "still Terminating"
    );
    f.patch_job("held", json!({"metadata": {"finalizers": null}}))
        .await;
    // The same while an operator runs: the watch's deletion stops it (no finalizer to wait on).
    f.patch_job("watched", no_finalizer).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !f.row("watched").await.expect("row").deleted,
        "removing the finalizer deletes nothing"
    );
    f.jobs()
        .delete("watched", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "a job deleted without its finalizer stops",
        WAIT,
        || async { f.row("watched").await.filter(|r| r.deleted) },
    )
    .await;
    // Its spec read from the object instead, the row is built again.
    let restored = eventually("the row without a spec is rebuilt", WAIT, || async {
        f.row("restored").await.filter(|r| r.queue != "stale")
    })
    .await;
    assert_eq!(restored.queue, "ad_queue");
    assert!(spec_stored("restored").await);
    f.op.assert_running();
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real apiserver and Postgres: make test"]
async fn thousand_jobs_all_become_ready() {
    const N: usize = 1000;
    let f = fixture("kbt-1k").await;
    f.create_tf("sync", task_spec()).await;
    let tf_name = f.tf_name("sync");
    let jobs = f.jobs();
    let start = Instant::now();
    let creates = futures::stream::iter(0..N).map(|i| {
        let jobs = jobs.clone();
        let tf_name = tf_name.clone();
        async move {
            let job: ScheduledJob = serde_json::from_value(json!({
                "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
                "metadata": {"name": format!("job-{i:04}")},
                "spec": {"taskFunction": tf_name, "schedule": {"interval": {"seconds": 10 + (i % 50) as i64}}},
            }))
            .expect("job");
            jobs.create(&PostParams::default(), &job).await.expect("create");
        }
    });
    use futures::StreamExt;
    creates.buffer_unordered(32).collect::<Vec<_>>().await;
    let created = start.elapsed();
    let ready_after = eventually("all 1000 jobs Ready=True", Duration::from_secs(300), || {
        let jobs = jobs.clone();
        async move {
            let list = jobs.list(&ListParams::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|j| {
                    j.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count();
            (ready == N).then(|| start.elapsed())
        }
    })
    .await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduled_jobs WHERE namespace = $1 AND enabled")
            .bind(&f.ns)
            .fetch_one(&f.pool)
            .await
            .expect("count");
    assert_eq!(rows, N as i64);
    println!("1000 ScheduledJobs: created in {created:?}, all Ready=True after {ready_after:?}");
    f.finish().await;
}

/// Valid jobs stored through the batch writer (`reconcile::upserts`): 200 reconciles at once
/// share a few transactions, a row Postgres refuses fails only its own reconcile, the
/// dispatcher's `next_run_at` survives a re-store, and a name reused by a new uid in the same
/// batch retires the old row.
#[tokio::test]
#[ignore = "needs real Postgres: make test"]
async fn jobs_are_stored_in_batches_and_a_bad_row_fails_alone() {
    use kube_beat::reconcile::{
        upserts::Upserts,
        validate::{JobMeta, JobRow, scheduled_job_with},
    };
    let db = TestDb::create().await;
    let pool = db.pool().await;
    kube_beat::store::migrate::up(&pool).await.expect("migrate");
    let tf: TaskFunction = serde_json::from_value(json!({
        "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
        "metadata": {"name": "batch-tf"}, "spec": {"task": "kb.echo"}}))
    .expect("task function");
    let tf = kube::core::DeserializeGuard(Ok(tf));
    let now = chrono::Utc::now();
    let row = |uid: &str, name: &str| -> JobRow {
        let spec = serde_json::from_value(json!({
            "taskFunction": "batch-tf", "schedule": {"interval": {"seconds": 60}}}))
        .expect("spec");
        let meta = JobMeta {
            uid,
            namespace: "team-a",
            name,
            generation: 1,
            created: now,
            trigger: None,
        };
        scheduled_job_with(&meta, &spec, Some(&tf), now).expect("valid")
    };
    let upserts = Upserts::start(pool.clone());
    let rows: Vec<JobRow> = (0..200)
        .map(|i| {
            let mut r = row(&format!("uid-{i}"), &format!("job-{i}"));
            if i == 7 {
                // Past a check the validation keeps it from (as a row stored by hand would be).
                r.priority = Some(42);
            }
            r
        })
        .collect();
    let answers = futures::future::join_all(rows.into_iter().map(|r| {
        let upserts = upserts.clone();
        async move { upserts.upsert(r, None).await }
    }))
    .await;
    for (i, a) in answers.iter().enumerate() {
        if i == 7 {
            let e = a.as_ref().expect_err("the bad row fails");
            assert!(e.to_string().contains("priority"), "{e}");
        } else {
            let stored = a.as_ref().expect("stored").as_ref().expect("live");
            assert!(
                stored.enabled && stored.next_run_at.is_some(),
                "{i}: {stored:?}"
            );
        }
    }
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduled_jobs WHERE deleted_at IS NULL")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(live, 199);
    // Rows written by one transaction share its xmin: count the transactions that wrote them.
    let spent: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM scheduled_jobs")
        .fetch_one(&pool)
        .await
        .expect("writers");
    assert!(spent < 100, "199 jobs took {spent} commits: not batched");

    // The dispatcher's next run stays when the schedule did not change.
    sqlx::query(
        "UPDATE scheduled_jobs SET next_run_at = '2030-01-01T00:00:00Z' WHERE uid = 'uid-3'",
    )
    .execute(&pool)
    .await
    .expect("move next run");
    let again = upserts
        .upsert(row("uid-3", "job-3"), None)
        .await
        .expect("stored")
        .expect("live");
    assert_eq!(
        again.next_run_at.map(|t| t.to_rfc3339()),
        Some("2030-01-01T00:00:00+00:00".to_string())
    );
    // A new object under an old name (and its stale twin in the same batch): one live row.
    let (a, b) = tokio::join!(
        upserts.upsert(row("uid-new-4", "job-4"), None),
        upserts.upsert(row("uid-new-4", "job-4"), None)
    );
    assert!(a.expect("stored").is_some() && b.expect("stored").is_some());
    let uids: Vec<String> = sqlx::query_scalar(
        "SELECT uid FROM scheduled_jobs WHERE name = 'job-4' AND deleted_at IS NULL",
    )
    .fetch_all(&pool)
    .await
    .expect("job-4");
    assert_eq!(uids, ["uid-new-4"]);

    // Re-storing an unchanged job (a new leader reconciles every job, later: another next run
    // computed) reads its row and writes nothing, so no row lock holds up the dispatcher.
    let xmin = |uid: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT xmin::text FROM scheduled_jobs WHERE uid = $1")
                .bind(uid)
                .fetch_one(&pool)
                .await
                .expect("xmin")
        }
    };
    // Stored with the spec it was built from (a row without one is rebuilt whole, below).
    let spec = json!({"taskFunction": "batch-tf", "schedule": {"interval": {"seconds": 60}}});
    upserts
        .upsert(row("uid-5", "job-5"), Some(spec.clone()))
        .await
        .expect("stored with its spec");
    let before = xmin("uid-5").await;
    let mut same = row("uid-5", "job-5");
    same.next_run_at = same.next_run_at.map(|t| t + chrono::Duration::minutes(7));
    same.next_slot_at = same.next_slot_at.map(|t| t + chrono::Duration::minutes(7));
    let stored = upserts
        .upsert(same.clone(), Some(spec.clone()))
        .await
        .expect("stored")
        .expect("live");
    assert_eq!(
        xmin("uid-5").await,
        before,
        "an unchanged job was rewritten"
    );
    // The spec as a new leader reads it back from Postgres (jsonb orders the keys its own way:
    // `schedule` before `taskFunction`): the same job.
    let read_back = kube_beat::store::stored_spec(&pool, "uid-5", 1)
        .await
        .expect("read")
        .expect("a spec");
    assert_ne!(
        read_back.to_string(),
        spec.to_string(),
        "the keys come back reordered"
    );
    upserts
        .upsert(same.clone(), Some(read_back))
        .await
        .expect("stored");
    assert_eq!(xmin("uid-5").await, before, "rewritten for its key order");
    assert!(stored.enabled);
    assert_ne!(stored.next_run_at, same.next_run_at, "the stored next run");
    // A changed job is rewritten.
    let mut moved = same.clone();
    moved.queue = "elsewhere".into();
    upserts
        .upsert(moved.clone(), Some(spec.clone()))
        .await
        .expect("stored");
    assert_ne!(
        xmin("uid-5").await,
        before,
        "a changed job was not rewritten"
    );
    let queue: String = sqlx::query_scalar("SELECT queue FROM scheduled_jobs WHERE uid = 'uid-5'")
        .fetch_one(&pool)
        .await
        .expect("queue");
    assert_eq!(queue, "elsewhere");
    // A row that lost its spec (a database restored from an older backup) is rebuilt, even
    // with its digest intact.
    sqlx::query("UPDATE scheduled_jobs SET spec = NULL WHERE uid = 'uid-5'")
        .execute(&pool)
        .await
        .expect("forget the spec");
    let lost = xmin("uid-5").await;
    upserts
        .upsert(moved, Some(spec.clone()))
        .await
        .expect("stored");
    assert_ne!(
        xmin("uid-5").await,
        lost,
        "a row without its spec was not rebuilt"
    );
    // A job judged invalid since (stopped) is stored again, valid and scheduling, even with the
    // same row as before.
    kube_beat::store::disable_invalid_job(&pool, "uid-6", 1, "UnknownTaskFunction", "gone")
        .await
        .expect("disabled");
    let back = upserts
        .upsert(row("uid-6", "job-6"), None)
        .await
        .expect("stored")
        .expect("live");
    assert!(back.enabled && back.next_run_at.is_some(), "{back:?}");
    let valid: bool = sqlx::query_scalar("SELECT valid FROM scheduled_jobs WHERE uid = 'uid-6'")
        .fetch_one(&pool)
        .await
        .expect("valid");
    assert!(valid);
    // Every row written carries its digest.
    let without: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduled_jobs WHERE row_digest IS NULL")
            .fetch_one(&pool)
            .await
            .expect("digests");
    assert_eq!(without, 0);
}
