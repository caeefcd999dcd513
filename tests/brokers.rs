//! Brokers as deployed (issue #25): queues the workers declared with arguments of their own on
//! RabbitMQ (quorum, x-max-priority), Redis behind Sentinel and with Celery's `global_keyprefix`,
//! results kept by django-celery-results. kube-beat's own publisher and result reader against the
//! real servers and a real Celery worker configured the way such deployments configure it.

mod common;

use std::{process::Command, time::Duration};

use common::{TestDb, Worker, env, unique, wait_invocations};
use kube_beat::celery::{Publisher, SendOptions, TaskMessage};

fn message(queue: &str, task: &str, priority: Option<u8>) -> TaskMessage {
    TaskMessage {
        id: uuid::Uuid::new_v4().to_string(),
        task: task.into(),
        args: vec![serde_json::json!("x")],
        kwargs: serde_json::Map::new(),
        queue: queue.to_string(),
        priority,
        expires: None,
        origin: "test".into(),
        extra_headers: vec![],
        options: SendOptions::default(),
    }
}

// --- RabbitMQ ----------------------------------------------------------------------------------

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The broker's log: a declare refused (PRECONDITION_FAILED) is logged there with the queue's
/// name, whichever client sent it.
fn rabbitmq_log() -> String {
    let out = Command::new("rabbitmq-diagnostics")
        .args(["-q", "log_location"])
        .output()
        .expect("rabbitmq-diagnostics");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// `name` and its arguments as the broker lists them.
fn queue_arguments(name: &str) -> Option<String> {
    rabbitmqctl(&["-q", "list_queues", "name", "arguments", "durable"])
        .lines()
        .find(|l| l.split('\t').next() == Some(name))
        .map(str::to_string)
}

/// A worker declares `queue` with `arguments` first; kube-beat publishes to it; the worker runs
/// the tasks and no declare of kube-beat's is refused.
async fn dispatch_to_a_queue_declared_with(arguments: serde_json::Value, priority: Option<u8>) {
    let env = env();
    let db = TestDb::create().await;
    let queue = unique("kbt-q");
    let queue_args = serde_json::json!({ &queue: arguments }).to_string();
    let worker = Worker::start_env(
        &env.amqp_url,
        None,
        &queue,
        &db.url,
        8,
        "threads",
        &[("KB_QUEUE_ARGUMENTS", &queue_args)],
    );
    let listed = queue_arguments(&queue).expect("the worker declared the queue");
    for (k, _) in arguments.as_object().expect("arguments") {
        assert!(listed.contains(k.as_str()), "declared with {k}: {listed}");
    }
    let ledger = format!("kubebeat.sent.{}", unique("test"));
    let publisher = Publisher::connect(&env.amqp_url, Duration::from_secs(60), &ledger)
        .await
        .expect("rabbitmq");
    // Two batches: the second goes out on the same publisher after the queue is known.
    let first: Vec<TaskMessage> = (0..3)
        .map(|_| message(&queue, "kb.echo", priority))
        .collect();
    let second: Vec<TaskMessage> = (0..2)
        .map(|_| message(&queue, "kb.echo", priority))
        .collect();
    let mut ids: Vec<String> = first.iter().chain(&second).map(|m| m.id.clone()).collect();
    publisher.publish(first, 1).await.expect("first batch");
    publisher.publish(second, 1).await.expect("second batch");
    let pool = db.pool().await;
    let rows = wait_invocations(&pool, &queue, Duration::from_secs(30), |r| r.len() >= 5).await;
    let mut ran: Vec<String> = rows.iter().map(|r| r.task_id.clone()).collect();
    ran.sort();
    ids.sort();
    assert_eq!(ran, ids, "each task ran once");
    if let Some(p) = priority {
        assert!(
            rows.iter().all(|r| r.priority == Some(i32::from(p))),
            "priority delivered: {:?}",
            rows.iter().map(|r| r.priority).collect::<Vec<_>>()
        );
    }
    // The queue is the worker's, untouched; nothing of kube-beat's was refused.
    assert_eq!(queue_arguments(&queue).as_deref(), Some(listed.as_str()));
    let log = rabbitmq_log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&queue) && l.to_lowercase().contains("precondition_failed"))
        .collect();
    assert!(refused.is_empty(), "declares refused: {refused:?}");
    drop(worker);
    pool.close().await;
    rabbitmqctl(&["-q", "delete_queue", &queue]);
    rabbitmqctl(&["-q", "delete_queue", &ledger]);
    db.drop_db().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn quorum_queue_declared_by_the_worker() {
    dispatch_to_a_queue_declared_with(serde_json::json!({"x-queue-type": "quorum"}), None).await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn priority_queue_declared_by_the_worker_gets_the_priority() {
    dispatch_to_a_queue_declared_with(serde_json::json!({"x-max-priority": 10}), Some(7)).await;
}

/// kube-beat first, a worker later (as behind Celery beat): kube-beat declares the queue as
/// Celery's worker would (durable, no arguments) and the worker then consumes what waited.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn queue_declared_by_kube_beat_then_consumed_by_a_later_worker() {
    let env = env();
    let db = TestDb::create().await;
    let queue = unique("kbt-q");
    let ledger = format!("kubebeat.sent.{}", unique("test"));
    let publisher = Publisher::connect(&env.amqp_url, Duration::from_secs(60), &ledger)
        .await
        .expect("rabbitmq");
    let m = message(&queue, "kb.echo", None);
    let id = m.id.clone();
    publisher.publish(vec![m], 1).await.expect("publish");
    let listed = queue_arguments(&queue).expect("kube-beat declared the queue");
    assert!(
        listed.ends_with("[]\ttrue"),
        "durable, no arguments: {listed}"
    );
    assert_eq!(publisher.queue_depth(&queue).await.expect("depth"), 1);
    let worker = Worker::start(&env.amqp_url, None, &queue, &db.url);
    let pool = db.pool().await;
    let rows = wait_invocations(&pool, &queue, Duration::from_secs(30), |r| !r.is_empty()).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].task_id, id);
    drop(worker);
    pool.close().await;
    rabbitmqctl(&["-q", "delete_queue", &queue]);
    rabbitmqctl(&["-q", "delete_queue", &ledger]);
    db.drop_db().await;
}

/// A queue deleted after kube-beat saw it: publishing goes on, and once the queue is looked at
/// again it is declared again (nothing wedged on what was known).
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn a_deleted_queue_is_declared_again() {
    let env = env();
    let queue = unique("kbt-q");
    let ledger = format!("kubebeat.sent.{}", unique("test"));
    let publisher = Publisher::connect(&env.amqp_url, Duration::from_secs(60), &ledger)
        .await
        .expect("rabbitmq");
    publisher
        .publish(vec![message(&queue, "kb.echo", None)], 1)
        .await
        .expect("publish");
    rabbitmqctl(&["-q", "delete_queue", &queue]);
    assert!(queue_arguments(&queue).is_none(), "deleted");
    publisher
        .publish(vec![message(&queue, "kb.echo", None)], 1)
        .await
        .expect("publishing right after the deletion is no error");
    tokio::time::sleep(kube_beat::celery::QUEUE_RECHECK + Duration::from_secs(1)).await;
    publisher
        .publish(vec![message(&queue, "kb.echo", None)], 1)
        .await
        .expect("publish after the recheck");
    assert!(queue_arguments(&queue).is_some(), "declared again");
    assert_eq!(publisher.queue_depth(&queue).await.expect("depth"), 1);
    rabbitmqctl(&["-q", "delete_queue", &queue]);
    rabbitmqctl(&["-q", "delete_queue", &ledger]);
}

// --- Redis: Sentinel and global_keyprefix --------------------------------------------------------

use kube_beat::redis_target::TransportOptions;
use kube_beat::tracker::backend::{Backend, BackendUrl};

/// A free loopback port (bound, then released for the server about to start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A Redis master and a Sentinel watching it (service `kbmaster`), both of the test's own on
/// loopback; killed when dropped. The shared Redis is never touched.
struct OwnSentinel {
    master: std::process::Child,
    /// With [`OwnSentinel::start_with_replica`]: a replica the Sentinel can promote.
    replica: Option<(std::process::Child, u16)>,
    sentinel: std::process::Child,
    _dir: tempfile::TempDir,
    sentinel_port: u16,
}

fn redis_server(port: u16, dir: &std::path::Path, extra: &[&str]) -> std::process::Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server")
}

fn redis_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection()
        .ok()?;
    cmd.query(&mut c).ok()
}

impl OwnSentinel {
    async fn start() -> OwnSentinel {
        OwnSentinel::start_inner(false).await
    }

    async fn start_with_replica() -> OwnSentinel {
        OwnSentinel::start_inner(true).await
    }

    async fn start_inner(with_replica: bool) -> OwnSentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let (master_port, sentinel_port) = (free_port(), free_port());
        let master = redis_server(master_port, dir.path(), &[]);
        let replica = with_replica.then(|| {
            let port = free_port();
            let replica_dir = dir.path().join("replica");
            std::fs::create_dir_all(&replica_dir).expect("replica dir");
            let of = format!("127.0.0.1 {master_port}");
            (
                redis_server(port, &replica_dir, &["--replicaof", &of]),
                port,
            )
        });
        let conf = dir.path().join("sentinel.conf");
        // A Sentinel flags its master `s_down` after `down-after-milliseconds` without a PING
        // reply, and clients (redis-rs, kombu) then refuse that master as "not found". CI on
        // a loaded 2-core machine once saw a master miss its PINGs for 1 s, so the failover
        // test (which wants a quick failover) waits 3 s, and without a replica 60 s.
        let down_after_ms = if with_replica { 3000 } else { 60_000 };
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor kbmaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds kbmaster {down_after_ms}\n\
                 sentinel failover-timeout kbmaster 5000\n",
                dir.path().display()
            ),
        )
        .expect("sentinel.conf");
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let own = OwnSentinel {
            master,
            replica,
            sentinel,
            _dir: dir,
            sentinel_port,
        };
        let url = format!("redis://127.0.0.1:{sentinel_port}");
        common::eventually(
            "the Sentinel knows its master",
            Duration::from_secs(20),
            || {
                let url = url.clone();
                async move {
                    let mut c = redis::Client::open(url).ok()?.get_connection().ok()?;
                    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg("kbmaster")
                        .query(&mut c)
                        .ok()?;
                    addr.filter(|a| a.1 == master_port)
                }
            },
        )
        .await;
        if let Some((_, port)) = &own.replica {
            let port = *port;
            common::eventually(
                "the Sentinel knows the replica, in sync",
                Duration::from_secs(30),
                || async move {
                    let info: String = redis_query(port, redis::cmd("INFO").arg("replication"))?;
                    let replicas: Vec<redis::Value> = redis_query(
                        sentinel_port,
                        redis::cmd("SENTINEL").arg("replicas").arg("kbmaster"),
                    )?;
                    (info.contains("master_link_status:up") && !replicas.is_empty()).then_some(())
                },
            )
            .await;
        }
        own
    }

    fn url(&self, db: u8) -> String {
        format!("sentinel://127.0.0.1:{}/{db}", self.sentinel_port)
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        if let Some((replica, _)) = &mut self.replica {
            let _ = replica.kill();
            let _ = replica.wait();
        }
        let _ = self.sentinel.kill();
        let _ = self.master.kill();
        let _ = self.sentinel.wait();
        let _ = self.master.wait();
    }
}

/// kube-beat publishes through `broker` (with `broker_options`), a real worker configured the
/// same way runs the tasks (one with priority 7, one failing) and kube-beat reads their results
/// through `backend` (with `backend_options`). Returns the task ids (echo, priority echo, fail).
#[allow(clippy::too_many_arguments)]
async fn dispatch_and_track(
    broker: &str,
    broker_options: &str,
    backend: &str,
    backend_options: &str,
    extra: &[(&str, &str)],
    db: &TestDb,
    queue: &str,
) -> [String; 3] {
    let mut env_vars: Vec<(&str, &str)> = vec![
        ("KB_BROKER_TRANSPORT_OPTIONS", broker_options),
        ("KB_RESULT_BACKEND_TRANSPORT_OPTIONS", backend_options),
    ];
    env_vars.extend_from_slice(extra);
    let celery_backend = if backend.starts_with("django-db") {
        "django-db"
    } else {
        backend
    };
    let worker = Worker::start_env(
        broker,
        Some(celery_backend),
        queue,
        &db.url,
        8,
        "threads",
        &env_vars,
    );
    let options = TransportOptions::parse(Some(broker_options)).expect("broker options");
    let ledger = format!("kubebeat.sent.{}", unique("test"));
    let publisher = Publisher::connect_with(broker, &options, Duration::from_secs(60), &ledger)
        .await
        .expect("broker");
    let (echo, urgent, fail) = (
        message(queue, "kb.echo", None),
        message(queue, "kb.echo", Some(7)),
        message(queue, "kb.fail", None),
    );
    let ids = [echo.id.clone(), urgent.id.clone(), fail.id.clone()];
    let rejected = publisher
        .publish(vec![echo, urgent, fail], 1)
        .await
        .expect("publish");
    assert!(rejected.is_empty(), "{rejected:?}");
    let pool = db.pool().await;
    let rows = wait_invocations(&pool, queue, Duration::from_secs(30), |r| r.len() >= 3).await;
    assert_eq!(rows.len(), 3, "each ran once: {rows:?}");
    let urgent_row = rows
        .iter()
        .find(|r| r.task_id == ids[1])
        .expect("urgent ran");
    assert_eq!(
        urgent_row.priority,
        Some(7),
        "the priority list was consumed"
    );
    pool.close().await;

    let backend_opts = TransportOptions::parse(Some(backend_options)).expect("backend options");
    let url = BackendUrl::parse_with(Some(backend), &backend_opts).expect("backend url");
    let tracker = Backend::connect_with(&url, &backend_opts)
        .await
        .expect("result backend");
    let found = common::eventually("both results recorded", Duration::from_secs(30), || {
        let (tracker, ids) = (&tracker, ids.clone());
        async move {
            let found = tracker.fetch(&ids).await.ok()?;
            let done = |id: &str| {
                found
                    .get(id)
                    .is_some_and(|m| m.status == "SUCCESS" || m.status == "FAILURE")
            };
            ids.iter().all(|id| done(id)).then_some(found)
        }
    })
    .await;
    assert_eq!(found[&ids[0]].status, "SUCCESS");
    assert_eq!(
        found[&ids[0]].result,
        Some(serde_json::json!({"args": ["x"], "kwargs": {}}))
    );
    assert!(found[&ids[0]].date_done.is_some());
    let failed = &found[&ids[2]];
    assert_eq!(failed.status, "FAILURE");
    assert_eq!(failed.error.as_deref(), Some("ValueError: x"));
    let tb = failed.traceback.as_deref().expect("traceback");
    assert!(tb.contains("ValueError: x"), "{tb}");
    drop(worker);
    ids
}

/// Redis behind a Sentinel of the test's own: kube-beat publishes via `sentinel://` with
/// `master_name`, a Celery worker configured the same way (broker and result backend) runs the
/// tasks, and kube-beat reads the results via Sentinel too.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn sentinel_broker_and_result_backend() {
    let sentinel = OwnSentinel::start().await;
    let db = TestDb::create().await;
    let queue = unique("kbt-q");
    let options = r#"{"master_name": "kbmaster"}"#;
    dispatch_and_track(
        &sentinel.url(0),
        options,
        &sentinel.url(1),
        options,
        &[],
        &db,
        &queue,
    )
    .await;
    db.drop_db().await;
}

/// A Sentinel failover: the master dies, the Sentinel promotes the replica, and kube-beat's
/// publisher (which asked the Sentinel for the master) publishes to the new master.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn sentinel_failover_is_followed() {
    let mut own = OwnSentinel::start_with_replica().await;
    let replica_port = own.replica.as_ref().map(|r| r.1).expect("replica");
    let options = TransportOptions::parse(Some(r#"{"master_name": "kbmaster"}"#)).expect("opts");
    let queue = unique("kbt-q");
    let ledger = format!("kubebeat.sent.{}", unique("test"));
    let publisher =
        Publisher::connect_with(&own.url(0), &options, Duration::from_secs(60), &ledger)
            .await
            .expect("via the Sentinel");
    publisher
        .publish(vec![message(&queue, "kb.echo", None)], 1)
        .await
        .expect("before the failover");
    let _ = own.master.kill();
    let _ = own.master.wait();
    let after = message(&queue, "kb.echo", None);
    let id = after.id.clone();
    common::eventually(
        "a publish after the failover",
        Duration::from_secs(60),
        || {
            let (publisher, m) = (&publisher, after.clone());
            async move { publisher.publish(vec![m], 1).await.ok() }
        },
    )
    .await;
    let addr: (String, u16) = redis_query(
        own.sentinel_port,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("kbmaster"),
    )
    .expect("master address");
    assert_eq!(addr.1, replica_port, "the replica was promoted");
    let items: Vec<String> = redis_query(
        replica_port,
        redis::cmd("LRANGE").arg(&queue).arg(0).arg(-1),
    )
    .expect("list");
    assert!(
        items.iter().any(|i| i.contains(&id)),
        "published to the new master: {items:?}"
    );
}

/// Everything a URL or an option could leak stays out of the errors; a sentinel:// URL without
/// master_name is refused at start.
#[test]
fn sentinel_urls_are_checked_without_their_password() {
    let e = kube_beat::celery::check_url("sentinel://:s3cr3t@127.0.0.1:26379/0")
        .expect_err("no master_name")
        .to_string();
    assert!(e.contains("master_name is required"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");
}

/// Celery's `global_keyprefix` on the broker and the result backend: kube-beat's messages land
/// in the prefixed lists (priority lists too) the worker reads, its own keys carry the prefix, and
/// the results are read under Celery's backend prefix (which appends `_` to a prefix without a
/// separator at its end).
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn global_keyprefix_on_broker_and_result_backend() {
    let env = env();
    let db = TestDb::create().await;
    let queue = unique("kbt-q");
    let broker_prefix = format!("{}:", unique("kbt-b"));
    let backend_prefix = unique("kbt-r");
    let broker_options = serde_json::json!({"global_keyprefix": broker_prefix}).to_string();
    let backend_options = serde_json::json!({"global_keyprefix": backend_prefix}).to_string();
    let ids = dispatch_and_track(
        &format!("{}/0", env.redis_url),
        &broker_options,
        &format!("{}/1", env.redis_url),
        &backend_options,
        &[],
        &db,
        &queue,
    )
    .await;
    let keys = |db: u8, pattern: String| -> Vec<String> {
        let mut c = redis::Client::open(format!("{}/{db}", env.redis_url))
            .and_then(|c| c.get_connection())
            .expect("redis");
        redis::cmd("KEYS").arg(pattern).query(&mut c).expect("KEYS")
    };
    // What real kombu and Celery wrote, under the prefixes.
    assert_eq!(
        keys(0, format!("{broker_prefix}_kombu.binding.{queue}")).len(),
        1,
        "kombu's binding under the prefix"
    );
    assert!(keys(0, format!("_kombu.binding.{queue}")).is_empty());
    assert!(
        !keys(0, format!("{broker_prefix}kubebeat.sent.*")).is_empty(),
        "kube-beat's publish record under the prefix"
    );
    assert_eq!(
        keys(1, format!("{backend_prefix}_celery-task-meta-{}", ids[0])).len(),
        1,
        "Celery's result key: prefix, `_`, celery-task-meta-"
    );
    assert!(keys(1, format!("celery-task-meta-{}", ids[0])).is_empty());
    let mut c = redis::Client::open(format!("{}/0", env.redis_url))
        .and_then(|c| c.get_connection())
        .expect("redis");
    let mine = keys(0, format!("{broker_prefix}*"));
    let _: i64 = redis::cmd("DEL").arg(&mine).query(&mut c).expect("DEL");
    db.drop_db().await;
}

// --- django-celery-results ---------------------------------------------------------------------

/// Results kept by django-celery-results (`django_celery_results_taskresult`): a real worker
/// with `result_backend='django-db'` (Django settings of the test's own, migrated into a fresh
/// database) runs kube-beat's messages, and kube-beat reads SUCCESS with its result and FAILURE
/// with its error and traceback from `django-db+postgresql://...`. django-celery-results writes
/// the traceback only with `result_extended` (without it the column stays NULL: seen with 2.6.0),
/// so the worker runs with it.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn django_celery_results_backend() {
    let env = env();
    let db = TestDb::create().await;
    let pg = db.url.replace("postgres://", "postgresql://");
    let out = Command::new(env.celery_venv.join("bin/python"))
        .args([
            "-m",
            "django",
            "migrate",
            "django_celery_results",
            "--noinput",
        ])
        .current_dir(env.repo.join("tests/celery_app"))
        .env("DJANGO_SETTINGS_MODULE", "kb_django_settings")
        .env("KB_DJANGO_DATABASE_URL", &pg)
        .output()
        .expect("django migrate");
    assert!(out.status.success(), "migrate: {out:?}");
    let queue = unique("kbt-q");
    let backend = format!("django-db+{pg}");
    dispatch_and_track(
        &format!("{}/0", env.redis_url),
        "",
        &backend,
        "",
        &[
            ("DJANGO_SETTINGS_MODULE", "kb_django_settings"),
            ("KB_DJANGO_DATABASE_URL", &pg),
            ("KB_RESULT_EXTENDED", "1"),
        ],
        &db,
        &queue,
    )
    .await;
    // The rows are django-celery-results' own (read back with SQL, not through kube-beat).
    let pool = db.pool().await;
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM django_celery_results_taskresult ORDER BY status")
            .fetch_all(&pool)
            .await
            .expect("taskresult rows");
    assert_eq!(statuses, vec!["FAILURE", "SUCCESS", "SUCCESS"]);
    pool.close().await;
    db.drop_db().await;
}

// --- the Helm chart ----------------------------------------------------------------------------

/// The chart passes the transport options: as JSON from values, or from a key of the Secret
/// (for a Sentinel password); the schema refuses an option kube-beat does not know.
#[test]
#[ignore = "needs Helm (make test)"]
fn chart_passes_transport_options() {
    let env = env();
    let out = Command::new(env.repo.join("hack/helm.sh"))
        .output()
        .expect("hack/helm.sh");
    let helm = common::ok(&out).trim().to_string();
    let template = |set: &str| {
        Command::new(&helm)
            .args(["template", "kb"])
            .arg(env.repo.join("charts/kube-beat"))
            .args(["--set", set])
            .output()
            .expect("helm template")
    };
    let rendered = common::ok(&template(
        "broker.transportOptions.master_name=mymaster,broker.transportOptions.global_keyprefix=app:,\
         resultBackend.enabled=true,resultBackend.transportOptionsKey=backend-options",
    ));
    assert!(
        rendered.contains(
            "- name: BROKER_TRANSPORT_OPTIONS\n              value: \"{\\\"global_keyprefix\\\":\\\"app:\\\",\\\"master_name\\\":\\\"mymaster\\\"}\""
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            "- name: RESULT_BACKEND_TRANSPORT_OPTIONS\n              valueFrom:\n                secretKeyRef: {name: \"kube-beat\", key: \"backend-options\"}"
        ),
        "{rendered}"
    );
    let plain = common::ok(&template("resultBackend.enabled=true"));
    assert!(!plain.contains("TRANSPORT_OPTIONS"), "none unless set");
    for (set, why) in [
        (
            "broker.transportOptions.sentinel_kwargs.password=x",
            "sentinel_kwargs",
        ),
        ("resultBackend.transportOptions.typo=1", "typo"),
    ] {
        let out = template(set);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(err.contains(why), "--set {set}: {err}");
    }
}
