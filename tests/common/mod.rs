//! Test harness shared by the integration and end-to-end tests.
//!
//! These tests run against real components: the local kube-apiserver (or the cluster KUBECONFIG
//! points at), Postgres, Redis, RabbitMQ and a real Celery worker. `make test` starts them and
//! exports the variables read here; the tests are `#[ignore]`d so a bare `cargo test` runs only the
//! pure ones.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod browser;
mod fixture;
#[allow(unused_imports)]
pub use fixture::{FAST_LEASE, Fixture, assert_no_duplicates, fixture};
pub mod kubelet;

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

/// Where the real services are.
pub struct TestEnv {
    pub kubectl: String,
    pub pg_base: String,
    pub redis_url: String,
    pub amqp_url: String,
    pub celery_venv: PathBuf,
    pub repo: PathBuf,
}

fn var(name: &str, default: Option<&str>) -> String {
    match (std::env::var(name), default) {
        (Ok(v), _) if !v.is_empty() => v,
        (_, Some(d)) => d.to_string(),
        _ => panic!(
            "{name} is not set: run these tests through `make test`, which starts the real services"
        ),
    }
}

pub fn env() -> TestEnv {
    // Fail loudly: a cluster test that silently passes without a cluster proves nothing.
    var("KUBECONFIG", None);
    TestEnv {
        kubectl: var("KUBECTL", Some("kubectl")),
        pg_base: var("KB_PG_BASE", Some("postgres://postgres@127.0.0.1:5432")),
        redis_url: var("KB_REDIS_URL", Some("redis://127.0.0.1:6379")),
        amqp_url: var("KB_AMQP_URL", Some("amqp://guest:guest@127.0.0.1:5672//")),
        celery_venv: PathBuf::from(var("KB_CELERY_VENV", None)),
        repo: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

/// The virtualenv with the source schedulers' own libraries (Celery, django-celery-beat,
/// RedBeat, APScheduler: tests/migration/requirements.txt), for the import fidelity tests.
pub fn migration_venv() -> PathBuf {
    PathBuf::from(var("KB_MIGRATION_VENV", None))
}

/// A short unique name, safe for Kubernetes names, queue names and database names.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// A kubectl command with its own discovery cache: parallel kubectl processes sharing one cache
/// overwrite each other's view of freshly installed CRDs.
fn kubectl_command(args: &[&str]) -> (Command, tempfile::TempDir) {
    let env = env();
    let cache = tempfile::tempdir().expect("a temp dir");
    let mut cmd = Command::new(&env.kubectl);
    cmd.arg(format!("--cache-dir={}", cache.path().display()))
        .args(args);
    (cmd, cache)
}

/// Run kubectl; returns the output whatever the exit code.
pub fn kubectl(args: &[&str]) -> Output {
    let (mut cmd, _cache) = kubectl_command(args);
    cmd.output().expect("running kubectl")
}

/// Run kubectl with stdin; returns the output.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let (mut cmd, _cache) = kubectl_command(args);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    child.wait_with_output().expect("kubectl output")
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kube-beat's `/metrics` text at `addr`, read with real `curl`; the test fails if it does not
/// answer.
pub fn metrics_text(addr: &str) -> String {
    ok(&Command::new("curl")
        .args(["-sSf", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl"))
}

/// The value of one series (`name` or `name{labels}` exactly as exposed) in a `/metrics` text.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// (HTTP status, JSON body or null) of a kube-beat API call with real `curl`, with a bearer
/// token if given.
pub fn api_call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    let text = ok(&out);
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("status code"),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// `kubectl create --validate=false`: only the apiserver's own schema stands in the way.
/// Whether it was created, and kubectl's stderr.
pub fn create_unvalidated(ns: &str, manifest: &serde_json::Value) -> (bool, String) {
    let out = kubectl_stdin(
        &["create", "--validate=false", "-n", ns, "-f", "-"],
        &manifest.to_string(),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Make sure the CRDs from `crds/` are installed and served. `make test` installs them once
/// before the suite; re-applying a CRD while another test uses it makes discovery flap on 1.20.
/// Checked once per test binary: no test removes them, and each check is six kubectl runs, each
/// reading the whole discovery anew (its own cache), which ~65 fixtures paid again and again.
pub fn install_crds() {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(check_crds);
}

fn check_crds() {
    let env = env();
    // The two CRDs every release had: an apiserver where a previous release's chart installed
    // them (tests/upgrade.rs) must not get the newer CRDs from here, or `helm upgrade` could not
    // adopt them.
    let installed = kubectl(&[
        "get",
        "crd",
        "scheduledjobs.kubebeat.io",
        "taskfunctions.kubebeat.io",
    ]);
    if !installed.status.success() {
        let path = env.repo.join("crds/kube-beat-crds.yaml");
        ok(&kubectl(&[
            "apply",
            "-f",
            path.to_str().expect("utf-8 path"),
        ]));
    }
    ok(&kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/scheduledjobs.kubebeat.io",
        "crd/taskfunctions.kubebeat.io",
    ]));
    let calendars = kubectl(&["get", "crd", "schedulecalendars.kubebeat.io"])
        .status
        .success();
    // Established comes a moment before discovery serves the new kinds; kubectl needs discovery.
    let start = Instant::now();
    while !(kubectl(&["get", "scheduledjobs", "-A"]).status.success()
        && kubectl(&["get", "taskfunctions"]).status.success()
        && (!calendars || kubectl(&["get", "schedulecalendars"]).status.success()))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the CRDs never appeared in discovery"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Create a namespace for one test.
pub fn namespace(prefix: &str) -> String {
    let ns = unique(prefix);
    ok(&kubectl(&["create", "namespace", &ns]));
    ns
}

/// A fresh Postgres database for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let env = env();
        let name = unique("kbt").replace('-', "_");
        let mut admin = PgConnection::connect(&format!("{}/postgres", env.pg_base))
            .await
            .expect("connecting to Postgres");
        // The name is generated above from a uuid: nothing user-supplied reaches this SQL.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("creating the test database");
        TestDb {
            url: format!("{}/{name}", env.pg_base),
            name,
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url)
            .await
            .expect("connecting to the test database")
    }

    pub async fn drop_db(self) {
        let env = env();
        if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", env.pg_base)).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await;
        }
    }
}

/// A real Celery worker process, killed when dropped.
pub struct Worker {
    child: Child,
    pub log: PathBuf,
}

impl Worker {
    /// Start a worker consuming `queues` (comma-separated) and wait until it is ready.
    pub fn start(broker: &str, backend: Option<&str>, queues: &str, record_dsn: &str) -> Worker {
        Worker::start_with(broker, backend, queues, record_dsn, 8)
    }

    /// A worker with `concurrency` threads, each taking one message at a time.
    pub fn start_with(
        broker: &str,
        backend: Option<&str>,
        queues: &str,
        record_dsn: &str,
        concurrency: u32,
    ) -> Worker {
        Worker::start_pool(broker, backend, queues, record_dsn, concurrency, "threads")
    }

    /// A worker with Celery's `pool` (`threads` or `prefork`).
    pub fn start_pool(
        broker: &str,
        backend: Option<&str>,
        queues: &str,
        record_dsn: &str,
        concurrency: u32,
        pool: &str,
    ) -> Worker {
        Worker::start_env(broker, backend, queues, record_dsn, concurrency, pool, &[])
    }

    /// A worker with extra environment (`KB_QUEUE_ARGUMENTS`, `KB_BROKER_TRANSPORT_OPTIONS`,
    /// ...: see tests/celery_app/kb_worker.py).
    pub fn start_env(
        broker: &str,
        backend: Option<&str>,
        queues: &str,
        record_dsn: &str,
        concurrency: u32,
        pool: &str,
        extra: &[(&str, &str)],
    ) -> Worker {
        Worker::start_in(
            &env().celery_venv,
            broker,
            backend,
            queues,
            record_dsn,
            concurrency,
            pool,
            extra,
        )
    }

    /// A worker of the Celery installed in `venv` (the version matrix: `hack/celery-venv.sh 5.2`),
    /// with extra environment.
    #[allow(clippy::too_many_arguments)]
    pub fn start_in(
        venv: &std::path::Path,
        broker: &str,
        backend: Option<&str>,
        queues: &str,
        record_dsn: &str,
        concurrency: u32,
        pool: &str,
        extra: &[(&str, &str)],
    ) -> Worker {
        let env = env();
        let log = std::env::temp_dir().join(format!("{}.log", unique("kb-worker")));
        let file = std::fs::File::create(&log).expect("creating the worker log");
        let child = Command::new(env.repo.join("hack/celery-worker.sh"))
            .arg(queues)
            .arg(unique("w"))
            .env("CELERY_BROKER_URL", broker)
            .env("CELERY_RESULT_BACKEND", backend.unwrap_or(""))
            .env(
                "KB_RECORD_DSN",
                record_dsn.replace("postgres://", "postgresql://"),
            )
            .env("KB_CELERY_VENV", venv)
            .env("KB_CELERY_CONCURRENCY", concurrency.to_string())
            .env("KB_CELERY_POOL", pool)
            .env("KB_PREFETCH", if concurrency == 8 { "4" } else { "1" })
            .envs(extra.iter().copied())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("starting the Celery worker");
        let mut worker = Worker { child, log };
        worker.wait_ready(Duration::from_secs(60));
        worker
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains(" ready.") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Celery worker exited ({status}) before it was ready:\n{text}");
            }
            assert!(
                start.elapsed() < timeout,
                "Celery worker not ready after {timeout:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Whether the worker process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Send a signal (`STOP`, `CONT`) to the worker process.
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SIGTERM first so Celery acks what it holds; then make sure.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish one task with Celery's own Python client; returns the task id.
pub fn celery_send(broker: &str, task: &str, queue: &str, args: &str, kwargs: &str) -> String {
    celery_send_as(broker, task, queue, args, kwargs, &[])
}

/// [`celery_send`] with `extra` arguments of send.py: a task id, then the headers as JSON (a
/// copy of a message already sent, as a broker redelivery hands it over again).
pub fn celery_send_as(
    broker: &str,
    task: &str,
    queue: &str,
    args: &str,
    kwargs: &str,
    extra: &[&str],
) -> String {
    let env = env();
    let out = Command::new(env.celery_venv.join("bin/python"))
        .arg("send.py")
        .args([task, queue, args, kwargs])
        .args(extra)
        .current_dir(env.repo.join("tests/celery_app"))
        .env("CELERY_BROKER_URL", broker)
        .output()
        .expect("running the Celery client");
    ok(&out).trim().to_string()
}

/// One row of the worker's durable invocation record.
#[derive(Debug, sqlx::FromRow)]
pub struct Invocation {
    pub task_id: String,
    pub task_name: String,
    pub args: serde_json::Value,
    pub kwargs: serde_json::Value,
    pub queue: Option<String>,
    pub priority: Option<i32>,
    pub headers: serde_json::Value,
}

/// Poll the worker's record until `pred` holds for the rows of `queue`, or time runs out.
pub async fn wait_invocations(
    pool: &PgPool,
    queue: &str,
    timeout: Duration,
    pred: impl Fn(&[Invocation]) -> bool,
) -> Vec<Invocation> {
    let start = Instant::now();
    loop {
        let rows: Vec<Invocation> = sqlx::query_as(
            "SELECT task_id, task_name, args, kwargs, queue, priority, headers
             FROM celery_invocations WHERE queue = $1 ORDER BY id",
        )
        .bind(queue)
        .fetch_all(pool)
        .await
        .unwrap_or_default(); // the table appears with the worker's first task
        if pred(&rows) || start.elapsed() > timeout {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A `kube-beat run` process, killed when dropped. Each test runs its own, limited to the test's
/// namespace and TaskFunctions labelled with the test's id, so parallel tests do not meet.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(database_url: &str, namespace: &str, test_id: &str, extra: &[&str]) -> Operator {
        // One Lease per test namespace: the replicas of one test elect among themselves.
        Operator::start_leased(database_url, namespace, namespace, test_id, extra, &[])
    }

    /// With the Lease in `lease_namespace` and extra environment (e.g. another KUBECONFIG).
    pub fn start_leased(
        database_url: &str,
        namespace: &str,
        lease_namespace: &str,
        test_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        Operator::start_binary(
            std::path::Path::new(env!("CARGO_BIN_EXE_kube-beat")),
            database_url,
            namespace,
            lease_namespace,
            test_id,
            extra,
            env,
        )
    }

    /// As `start_leased`, with another kube-beat binary (the upgrade test's previous release).
    pub fn start_binary(
        binary: &std::path::Path,
        database_url: &str,
        namespace: &str,
        lease_namespace: &str,
        test_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let log = std::env::temp_dir().join(format!("{}.log", unique("kb-operator")));
        let file = std::fs::File::create(&log).expect("creating the operator log");
        let mut cmd = Command::new(binary);
        cmd.arg("run");
        // An empty namespace: every namespace (the tenant suite's two teams).
        if !namespace.is_empty() {
            cmd.args(["--namespace", namespace]);
        }
        let child = cmd
            .args(["--lease-namespace", lease_namespace])
            .args([
                "--task-function-selector",
                &format!("kubebeat.io/test={test_id}"),
            ])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("POD_NAME", unique("op"))
            .env(
                "RUST_LOG",
                std::env::var("KB_OPERATOR_LOG").unwrap_or_else(|_| "info,kube_beat=debug".into()),
            )
            .envs(env.iter().copied())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("starting kube-beat run");
        Operator { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP address it listens on, from its log (tests start it on port 0).
    pub fn http_addr(&self) -> Option<String> {
        self.log_text()
            .lines()
            .find(|l| l.contains("HTTP server listening"))?
            .split("addr=")
            .nth(1)
            .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (`KILL`, `STOP`, `CONT`, `TERM`).
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("kube-beat exited ({status}):\n{}", self.log_text());
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `check` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A loopback TCP proxy a test can cut, to make a real service unreachable (connections dropped,
/// new ones refused) and bring it back.
pub struct TcpProxy {
    pub port: u16,
    enabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> TcpProxy {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let enabled = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (en, cs, target) = (enabled.clone(), conns.clone(), target.to_string());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !en.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                cs.lock().expect("lock").push(task.abort_handle());
            }
        });
        TcpProxy {
            port,
            enabled,
            conns,
            accept,
        }
    }

    pub fn cut(&self) {
        self.enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
