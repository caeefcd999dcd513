//! The machinery the scenarios drive: the suite's own Redis, loopback TCP proxies in front of
//! every service the operator talks to, the replicas (real `kube-beat run` processes, some armed
//! with a crash point), the Celery workers, and the gathering of what the audit judges.

use std::{
    collections::HashSet,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{
    audit::{self, AuditInput, Delivery, Execution, JobDef},
    common::{self, Fixture, Operator, TcpProxy, Worker, fixture, unique},
    report::{self, Row},
};

/// Lease timings for the suite (seconds): duration, renew deadline, retry period.
pub(crate) const LEASE: (u64, u64, u64) = (4, 3, 1);

#[derive(Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) full: bool,
    pub(crate) jobs: usize,
    pub(crate) kills: usize,
    pub(crate) outage: Duration,
    pub(crate) slow_worker: Duration,
    /// Watched after a fault's recovery before the next fault, so the fault's row shows the
    /// runs right after it. The zero-duplicate audit covers the whole run whatever this is.
    pub(crate) after_recovery: Duration,
    /// The steady load watched before the first fault (the baseline row).
    pub(crate) steady: Duration,
}

/// The short variant (`make test`), or the full matrix with `KB_CHAOS=full` (`make chaos`).
pub(crate) fn plan() -> Plan {
    if std::env::var("KB_CHAOS").as_deref() == Ok("full") {
        Plan {
            full: true,
            jobs: 200,
            kills: 20,
            outage: Duration::from_secs(30),
            slow_worker: Duration::from_secs(60),
            after_recovery: Duration::from_secs(5),
            steady: Duration::from_secs(10),
        }
    } else {
        Plan {
            full: false,
            jobs: 100,
            kills: 3,
            outage: Duration::from_secs(8),
            slow_worker: Duration::from_secs(20),
            // Shorter than the full matrix's: `make test` pays for each of ten of them.
            after_recovery: Duration::from_secs(2),
            steady: Duration::from_secs(5),
        }
    }
}

pub(crate) fn rand_below(n: u64) -> u64 {
    let b = uuid::Uuid::new_v4();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes")) % n.max(1)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Redis server of the suite's own, persisting every write (so a restart loses no message),
/// restartable at will.
pub(crate) struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("redis dir"),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let start = Instant::now();
        while !self.ping() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis never answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ping(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
    }

    /// SIGTERM (Redis writes its AOF and exits), then start again on the same port and data.
    pub(crate) fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BrokerKind {
    Redis,
    Amqp,
}

impl BrokerKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            BrokerKind::Redis => "Redis",
            BrokerKind::Amqp => "RabbitMQ",
        }
    }
}

pub(crate) struct Replica {
    pub(crate) op: Operator,
    /// The crash point this replica was started with, if any.
    pub(crate) armed: Option<&'static str>,
}

pub(crate) struct Harness {
    pub(crate) plan: Plan,
    pub(crate) kind: BrokerKind,
    pub(crate) f: Fixture,
    pub(crate) redis: RedisServer,
    /// Celery worker processes (two in the full run: one Python process cannot keep up with the
    /// backlog a stalled worker leaves at 90 runs/s).
    pub(crate) workers: Vec<Worker>,
    /// The broker and result backend a worker connects to (directly, not through the proxies).
    pub(crate) worker_urls: (String, String),
    /// Where the workers' guard keeps its claims, once [`Harness::guard_workers`] installed it.
    pub(crate) guard: Option<String>,
    pub(crate) pg: TcpProxy,
    pub(crate) broker: TcpProxy,
    pub(crate) backend: TcpProxy,
    pub(crate) api: TcpProxy,
    pub(crate) kubeconfig: PathBuf,
    pub(crate) db_url: String,
    pub(crate) broker_url: String,
    pub(crate) backend_url: String,
    pub(crate) replicas: Vec<Replica>,
    /// Logs of replicas that are gone, for the panic audit.
    pub(crate) gone: Vec<String>,
    /// Crash points reached (armed replicas that aborted as asked).
    pub(crate) crashed: Vec<&'static str>,
    pub(crate) jobs: Vec<JobDef>,
    pub(crate) rows: Vec<Row>,
    pub(crate) failures: Vec<String>,
    /// Transactions of the operator's that stayed open for long (sampled every 2 s).
    pub(crate) long_transactions: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub(crate) monitor: tokio::task::JoinHandle<()>,
}

/// Sample Postgres for transactions open longer than 8 s in the test database: a transaction
/// left open holds its row locks, and the claim skips locked jobs.
fn monitor_transactions(
    pool: sqlx::PgPool,
    db: String,
    out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            // Only transactions open for over 30 s are kept (Postgres ends idle ones after 5 s,
            // lock waits after 10 s); shorter ones are printed.
            let rows: Vec<(String, bool)> = sqlx::query_as(
                "SELECT pid || ' ' || coalesce(state, '') || ' ' || coalesce(wait_event, '')
                        || ' open ' || (now() - xact_start)::text || ': ' || left(query, 160),
                        xact_start < now() - interval '30 seconds'
                 FROM pg_stat_activity
                 WHERE datname = $1 AND xact_start < now() - interval '8 seconds'
                   AND pid <> pg_backend_pid()",
            )
            .bind(&db)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for (r, stuck) in rows {
                let line = format!("{} {r}", Utc::now());
                println!("long transaction: {line}");
                if stuck {
                    out.lock().expect("lock").push(line);
                }
            }
        }
    })
}

/// A Celery worker on the prefork pool (Celery's default, what production runs): a thread-pool
/// worker stops consuming for good after its broker connection breaks — on py-amqp mid-frame
/// (UnexpectedFrame, seen in the full run), on Redis after a server restart (seen in CI; the
/// known threads-pool reconnect bug, e.g. celery#8030) — leaving everything queued.
///
/// With `guard`, the worker has kube-beat's worker-side guard installed (python/kube_beat_celery)
/// with its claims in that Postgres.
fn start_worker((broker, backend): &(String, String), f: &Fixture, guard: Option<&str>) -> Worker {
    let extra: Vec<(&str, &str)> = guard.map(|url| ("KB_GUARD_URL", url)).into_iter().collect();
    Worker::start_env(
        broker,
        Some(backend),
        &f.queue,
        &f.db.url,
        8,
        "prefork",
        &extra,
    )
}

impl Harness {
    pub(crate) async fn new(kind: BrokerKind, plan: Plan) -> Harness {
        let env = common::env();
        let redis = RedisServer::start();
        let direct_broker = match kind {
            BrokerKind::Redis => format!("redis://127.0.0.1:{}/0", redis.port),
            BrokerKind::Amqp => env.amqp_url.clone(),
        };
        let f = fixture("kbt-chaos", direct_broker.clone()).await;
        let broker_target = match kind {
            BrokerKind::Redis => format!("127.0.0.1:{}", redis.port),
            BrokerKind::Amqp => "127.0.0.1:5672".to_string(),
        };
        let (pg, broker, backend) = (
            TcpProxy::start("127.0.0.1:5432").await,
            TcpProxy::start(&broker_target).await,
            TcpProxy::start(&format!("127.0.0.1:{}", redis.port)).await,
        );
        let (kubeconfig, api) = proxied_kubeconfig().await;
        let backend_direct = format!("redis://127.0.0.1:{}/1", redis.port);
        let worker_urls = (direct_broker.clone(), backend_direct);
        let workers = (0..if plan.full { 2 } else { 1 })
            .map(|_| start_worker(&worker_urls, &f, None))
            .collect();
        let broker_url = match kind {
            BrokerKind::Redis => format!("redis://127.0.0.1:{}/0", broker.port),
            BrokerKind::Amqp => format!("amqp://guest:guest@127.0.0.1:{}//", broker.port),
        };
        let long_transactions = std::sync::Arc::default();
        let monitor = monitor_transactions(
            f.pool.clone(),
            f.db.name.clone(),
            std::sync::Arc::clone(&long_transactions),
        );
        Harness {
            long_transactions,
            monitor,
            plan,
            kind,
            db_url: format!("postgres://postgres@127.0.0.1:{}/{}", pg.port, f.db.name),
            backend_url: format!("redis://127.0.0.1:{}/1", backend.port),
            broker_url,
            f,
            redis,
            workers,
            worker_urls,
            guard: None,
            pg,
            broker,
            backend,
            api,
            kubeconfig,
            replicas: Vec::new(),
            gone: Vec::new(),
            crashed: Vec::new(),
            jobs: Vec::new(),
            rows: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub(crate) fn start_replica(&mut self, armed: Option<&'static str>) {
        let (d, r, p) = LEASE;
        let (d, r, p) = (d.to_string(), r.to_string(), p.to_string());
        let args = [
            "--broker-url",
            &self.broker_url,
            "--result-backend",
            &self.backend_url,
            "--result-poll-ms",
            "500",
            "--lease-duration-seconds",
            &d,
            "--renew-deadline-seconds",
            &r,
            "--retry-period-seconds",
            &p,
        ];
        let kubeconfig = self.kubeconfig.display().to_string();
        let crash = armed.map(|point| format!("{point}:{}", 2 + rand_below(3)));
        let mut env = vec![("KUBECONFIG", kubeconfig.as_str())];
        if let Some(c) = &crash {
            env.push(("KUBE_BEAT_CRASH_AT", c.as_str()));
        }
        let op = Operator::start_leased(
            &self.db_url,
            &self.f.ns,
            &self.f.ns,
            &self.f.id,
            &args,
            &env,
        );
        self.replicas.push(Replica { op, armed });
    }

    /// The live leader: the latest "acquired leader" not followed by "lost leader".
    pub(crate) async fn leader(&mut self) -> usize {
        let start = Instant::now();
        loop {
            self.reap_unexpected();
            let found = self
                .replicas
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let log = r.op.log_text();
                    let acquired = log.rfind("acquired leader")?;
                    (acquired > log.rfind("lost leader").unwrap_or(0)).then_some(i)
                })
                .next_back();
            if let Some(i) = found {
                return i;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no leader for 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replicas that died on their own: an armed one reaching its crash point is a fault we
    /// injected; anything else is a crash (counted against the current scenario).
    pub(crate) fn reap_unexpected(&mut self) {
        self.revive_workers();
        let mut i = 0;
        while i < self.replicas.len() {
            if self.replicas[i].op.exited() {
                let r = self.replicas.remove(i);
                let log = r.op.log_text();
                match r.armed {
                    Some(point) if log.contains("crash point") => {
                        // Replaced at once, unarmed: crash points never empty the deployment.
                        self.crashed.push(point);
                        self.gone.push(log);
                        self.start_replica(None);
                        self.row().restarts += 1;
                        continue;
                    }
                    _ => {
                        self.row().crashes += 1;
                        self.failures
                            .push(format!("a replica exited on its own:\n{}", tail(&log, 30)));
                    }
                }
                self.gone.push(log);
            } else {
                i += 1;
            }
        }
    }

    /// A Celery worker that exited is started again, as its Deployment would. Celery's, not
    /// ours: after a Redis restart the prefork worker reconnects while Redis is still loading
    /// its append-only file, and exits on the BusyLoadingError ("Unrecoverable error:
    /// AttributeError ... 'hostname'", Celery 5.7). What it held unacked is counted as held.
    fn revive_workers(&mut self) {
        for i in 0..self.workers.len() {
            if !self.workers[i].exited() {
                continue;
            }
            let log = self.workers[i].log_text();
            let why = log
                .lines()
                .rev()
                .find(|l| l.contains("CRITICAL") || l.contains("Unrecoverable"))
                .unwrap_or("no reason logged")
                .to_string();
            self.workers[i] = start_worker(&self.worker_urls, &self.f, self.guard.as_deref());
            self.row()
                .notes
                .push(format!("Celery worker exited ({why}), started again"));
        }
    }

    pub(crate) fn remove(&mut self, i: usize) {
        let r = self.replicas.remove(i);
        self.gone.push(r.op.log_text());
    }

    /// Replace every replica (oldest first) gracefully: SIGTERM, wait, start the new one.
    pub(crate) async fn replace_all(&mut self, armed: &[Option<&'static str>]) {
        let n = self.replicas.len();
        for k in 0..n {
            let mut r = self.replicas.remove(0);
            r.op.signal("TERM");
            if !r.op.wait_exit(Duration::from_secs(15)) {
                self.failures
                    .push("a replica did not exit within 15 s of SIGTERM".into());
            }
            self.gone.push(r.op.log_text());
            self.start_replica(armed.get(k).copied().flatten());
            self.row().restarts += 1;
            self.wait_listening().await;
        }
    }

    async fn wait_listening(&mut self) {
        let start = Instant::now();
        while self
            .replicas
            .last()
            .is_some_and(|r| r.op.http_addr().is_none())
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "replica never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn row(&mut self) -> &mut Row {
        if self.rows.is_empty() {
            self.begin("Steady load (no fault)");
        }
        self.rows.last_mut().expect("a row")
    }

    pub(crate) fn begin(&mut self, scenario: &str) {
        println!("chaos [{}]: {scenario}", self.kind.label());
        self.rows.push(Row {
            scenario: scenario.to_string(),
            start: Utc::now(),
            guarded: self.guard.is_some(),
            ..Row::default()
        });
    }

    /// Replace every Celery worker (warm shutdown, as a Deployment rollout does) by one with
    /// kube-beat's worker-side guard installed, its claims in kube-beat's own database: the
    /// scenarios after this run on guarded workers. Its own row, so what the swap itself
    /// redelivers (messages the old workers had prefetched) is counted apart; the new workers
    /// run those, so the row is judged as guarded (no body may run twice).
    pub(crate) async fn guard_workers(&mut self) {
        self.guard = Some(self.f.db.url.clone());
        self.begin("Celery workers replaced by guarded ones (kube_beat_celery, claims in kube-beat's Postgres)");
        let n = self.workers.len();
        // Dropping a worker stops it (SIGTERM, then SIGKILL after 10 s).
        self.workers.clear();
        for _ in 0..n {
            let w = start_worker(&self.worker_urls, &self.f, self.guard.as_deref());
            self.workers.push(w);
        }
        self.row().iterations += 1;
        self.settle(Duration::from_secs(5)).await;
        // The guard is at work: the new workers claim what they run.
        let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM guard_claims")
            .fetch_one(&self.f.pool)
            .await
            .unwrap_or(0);
        if claims == 0 {
            self.failures
                .push("the guarded workers claimed no run in 5 s".into());
        }
        self.row()
            .notes
            .push(format!("{claims} runs claimed by the guard"));
    }

    /// Time from `since` to the first execution published after it (by anyone).
    pub(crate) async fn recovery(&mut self, since: DateTime<Utc>) {
        let start = Instant::now();
        let mut since = since;
        let mut deaths = self.crashed.len();
        loop {
            let first: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT min(dispatched_at) FROM job_executions WHERE dispatched_at > $1",
            )
            .bind(since)
            .fetch_one(&self.f.pool)
            .await
            .ok()
            .flatten();
            if let Some(t) = first {
                let took = (t - since).to_std().unwrap_or_default();
                self.row().recoveries.push(took);
                return;
            }
            if start.elapsed() > Duration::from_secs(90) {
                let what = self.row().scenario.clone();
                self.failures
                    .push(format!("{what}: nothing dispatched within 90 s (stuck)"));
                return;
            }
            self.reap_unexpected();
            if self.crashed.len() > deaths {
                // The next leader died at its crash point before dispatching: the fault
                // ended later.
                since = Utc::now();
                deaths = self.crashed.len();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll `count_sql` (with `$1`, `$2` bound to `times`) until it returns 0: how long that
    /// took, or the last count after `timeout`.
    pub(crate) async fn until_zero(
        &mut self,
        count_sql: &'static str,
        times: (DateTime<Utc>, DateTime<Utc>),
        timeout: Duration,
    ) -> Result<Duration, i64> {
        let start = Instant::now();
        loop {
            let left: i64 = sqlx::query_scalar(count_sql)
                .bind(times.0)
                .bind(times.1)
                .fetch_one(&self.f.pool)
                .await
                .unwrap_or(-1);
            if left == 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(left);
            }
            self.reap_unexpected();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) async fn settle(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.reap_unexpected();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    fn proxy(&self, which: &str) -> &TcpProxy {
        match which {
            "pg" => &self.pg,
            "broker" => &self.broker,
            "backend" => &self.backend,
            _ => &self.api,
        }
    }

    pub(crate) async fn cut(&mut self, which: &str, d: Duration) -> DateTime<Utc> {
        self.proxy(which).cut();
        let cut_at = Utc::now();
        self.settle(d).await;
        self.proxy(which).restore();
        cut_at
    }
    // --- the audit and the report --------------------------------------------------------

    /// Stop everything, let the worker finish, and gather what the audit judges: the execution
    /// rows, the worker's record, what the broker still holds, every replica's log.
    async fn audit_input(&mut self) -> AuditInput {
        let stopped = Utc::now();
        for r in &mut self.replicas {
            r.op.signal("KILL");
            r.op.wait_exit(Duration::from_secs(5));
        }
        let logs: Vec<String> = self.replicas.drain(..).map(|r| r.op.log_text()).collect();
        self.gone.extend(logs);
        // Let the worker run what was published.
        let start = Instant::now();
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM job_executions e WHERE dispatched_at IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM celery_invocations c WHERE c.task_id = e.task_id)",
            )
            .fetch_one(&self.f.pool)
            .await
            .unwrap_or(-1);
            if left == 0 || start.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let executions: Vec<Execution> = sqlx::query_as(
            "SELECT j.name AS job, e.scheduled_for AS slot, e.coalesced_slots, e.state, e.task_id,
                    e.trigger, e.error
             FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
             WHERE e.trigger <> 'manual' ORDER BY j.name, e.scheduled_for",
        )
        .fetch_all(&self.f.pool)
        .await
        .expect("executions");
        let deliveries = self
            .f
            .record()
            .await
            .iter()
            .map(|inv| Delivery {
                task_id: inv.task_id.clone(),
                job: inv.job(),
                slot: inv.slot(),
                manual: inv.headers.get("kubebeat_trigger").and_then(Value::as_str)
                    == Some("manual"),
                redelivered: inv.headers.get("redelivered") == Some(&Value::Bool(true)),
            })
            .collect();
        // What the guard suppressed (its table, made by kube-beat's migration).
        let suppressed: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT COALESCE(job, ''), COALESCE(slot, ''), duplicates FROM guard_claims
             WHERE duplicates > 0",
        )
        .fetch_all(&self.f.pool)
        .await
        .unwrap_or_default();
        AuditInput {
            suppressed: suppressed
                .into_iter()
                .map(|(job, slot, n)| (job, slot, usize::try_from(n).unwrap_or(0)))
                .collect(),
            jobs: self.jobs.clone(),
            executions,
            deliveries,
            unacked: self.unacked_messages(),
            queued: self.queued_messages(),
            enqueued: self.enqueued_ids(),
            windows: self.rows.iter().map(|r| r.start).collect(),
            stopped,
            // Slots this close to the stop may be claimed and unpublished: not judged.
            cutoff: stopped - chrono::Duration::seconds(8),
            logs: self.gone.clone(),
        }
    }

    /// Audit, print (and with `KB_CHAOS_REPORT` write) the results table, and fail the test on
    /// any finding.
    pub(crate) async fn finish(mut self) {
        let input = self.audit_input().await;
        let verdict = audit::audit(&input);
        for (row, tally) in self.rows.iter_mut().zip(verdict.windows) {
            row.audit = tally;
        }
        self.failures.extend(verdict.failures);
        let table = report::table(self.kind, &self.rows);
        println!("{table}");
        if let Ok(path) = std::env::var("KB_CHAOS_REPORT") {
            report::write_report(&path, self.kind, &table, self.plan);
        }
        for r in &self.rows {
            for u in r.audit.unexplained.iter().take(20) {
                self.failures.push(format!("{}: {u}", r.scenario));
            }
            // The guard's promise: with it installed, no task body runs twice.
            if r.guarded && r.audit.ran_twice > 0 {
                self.failures.push(format!(
                    "{}: {} task body run(s) again on guarded workers",
                    r.scenario, r.audit.ran_twice
                ));
            }
        }
        self.monitor.abort();
        let long = self.long_transactions.lock().expect("lock").len();
        if long > 0 {
            self.failures.push(format!(
                "{long} samples of operator transactions open for over 30 s"
            ));
        }
        if !self.failures.is_empty() {
            // The worker's own account first: the report is cut in the middle.
            for (i, w) in self.workers.iter().enumerate() {
                let log = w.log_text();
                let notable: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        ["WARNING", "ERROR", "CRITICAL", "Connected to"]
                            .iter()
                            .any(|k| l.contains(k))
                    })
                    .collect();
                let from = notable.len().saturating_sub(8);
                self.failures.insert(
                    0,
                    format!(
                        "worker {i} log (last notable lines):\n{}",
                        notable[from..].join("\n")
                    ),
                );
            }
        }
        let Harness { f, failures, .. } = self;
        assert!(
            failures.is_empty(),
            "chaos findings:\n{}",
            failures.join("\n")
        );
        f.finish().await;
    }

    /// A connection to the suite's Redis as the broker (an error on RabbitMQ runs).
    fn broker_redis(&self) -> redis::RedisResult<redis::Connection> {
        if self.kind != BrokerKind::Redis {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "not a Redis run",
            )));
        }
        redis::Client::open(format!("redis://127.0.0.1:{}/0", self.redis.port))?.get_connection()
    }

    /// The messages still waiting in the test queue (Redis; empty on RabbitMQ).
    fn queued_messages(&self) -> Vec<String> {
        self.broker_redis()
            .and_then(|mut c| {
                redis::cmd("LRANGE")
                    .arg(&self.f.queue)
                    .arg(0)
                    .arg(-1)
                    .query(&mut c)
            })
            .unwrap_or_default()
    }

    /// The task ids our publisher recorded as enqueued: the members of every
    /// `kubebeat.sent.<installation>:<window>` record set (Redis; empty on RabbitMQ).
    fn enqueued_ids(&self) -> HashSet<String> {
        self.broker_redis()
            .and_then(|mut c| {
                let (mut cursor, mut records) = (0u64, Vec::<String>::new());
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg("kubebeat.sent.*:*")
                        .arg("COUNT")
                        .arg(10_000)
                        .arg("TYPE")
                        .arg("set")
                        .query(&mut c)?;
                    records.extend(keys);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                let mut ids = HashSet::new();
                for key in records {
                    let members: Vec<String> = redis::cmd("SMEMBERS").arg(&key).query(&mut c)?;
                    ids.extend(members);
                }
                Ok(ids)
            })
            .unwrap_or_default()
    }

    /// The bodies in kombu's Redis `unacked` hash (empty on RabbitMQ).
    fn unacked_messages(&self) -> Vec<String> {
        self.broker_redis()
            .and_then(|mut c| redis::cmd("HVALS").arg("unacked").query(&mut c))
            .unwrap_or_default()
    }
}

pub(crate) fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn rss_kib(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The local cluster serving 127.0.0.1:5432, as (version, name).
pub(crate) fn pg_cluster() -> Option<(String, String)> {
    let out = Command::new("pg_lsclusters").arg("-h").output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"5432")).then(|| (f[0].to_string(), f[1].to_string()))
    })
}

/// A copy of the test kubeconfig whose server is a proxy in front of the apiserver.
async fn proxied_kubeconfig() -> (PathBuf, TcpProxy) {
    let path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let text = std::fs::read_to_string(&path).expect("kubeconfig");
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server line")
        .trim()
        .to_string();
    let target = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let proxy = TcpProxy::start(&target).await;
    let out = std::env::temp_dir().join(format!("{}.kubeconfig", unique("kb-chaos")));
    let text = text.replace(&server, &format!("https://127.0.0.1:{}", proxy.port));
    std::fs::write(&out, text).expect("writing the kubeconfig");
    (out, proxy)
}
