//! The fault scenarios: the steady load, then one fault at a time (leader deaths, a paused
//! leader, Postgres, broker, apiserver and result-backend outages, a stalled worker, a rolling
//! update). Each opens a row of the results table and records what it saw there; the verdict on
//! every slot comes afterwards, from the audit.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{
    audit::{JobDef, Policy},
    common,
    harness::{BrokerKind, Harness, LEASE, pg_cluster, rand_below, rss_kib},
};

impl Harness {
    /// 70% plain interval jobs (1-5 s), 15% with a 3 s starting deadline, 10% Forbid, and cron
    /// jobs (`@every 5s`, and every minute).
    pub(crate) async fn create_load(&mut self) {
        self.f.task_function("echo", "kb.echo").await;
        let n = self.plan.jobs;
        for i in 0..n {
            let (policy, period, schedule) = match i * 100 / n {
                0..70 => {
                    let p = 1 + (i % 5) as i64;
                    (Policy::Plain, p, json!({"interval": {"seconds": p}}))
                }
                70..85 => (Policy::Deadline, 2, json!({"interval": {"seconds": 2}})),
                85..95 => (Policy::Forbid, 3, json!({"interval": {"seconds": 3}})),
                95..98 => (Policy::Plain, 5, json!({"cron": "@every 5s"})),
                _ => (Policy::Plain, 60, json!({"cron": "* * * * *"})),
            };
            // Every execution row is kept (the default keeps 100): the audit checks every slot.
            let mut spec =
                json!({"schedule": schedule, "kwargs": {"i": i}, "historyLimit": 100_000});
            match policy {
                Policy::Deadline => spec["startingDeadlineSeconds"] = json!(3),
                Policy::Forbid => {
                    spec["concurrencyPolicy"] = json!("Forbid");
                    spec["executionTimeoutSeconds"] = json!(10);
                }
                Policy::Plain => {}
            }
            let name = format!("j{i:03}");
            self.f.job(&name, "echo", spec).await;
            self.jobs.push(JobDef {
                name,
                period,
                policy,
            });
        }
    }

    /// Leader deaths: SIGKILL at random moments, and crash points inside a claim transaction
    /// and between a committed claim and its publish.
    pub(crate) async fn leader_deaths(&mut self) {
        self.begin("Leader killed (SIGKILL at random moments, crash inside a claim, crash between claim and publish)");
        let leader = self.leader().await;
        // Arm the two standbys: the leaders after the first kill die at their crash points.
        let standbys: Vec<usize> = (0..self.replicas.len()).filter(|i| *i != leader).collect();
        let points = ["claim-before-commit", "claim-before-publish"];
        for (k, i) in standbys.into_iter().rev().enumerate() {
            let mut r = self.replicas.remove(i);
            r.op.signal("TERM");
            r.op.wait_exit(Duration::from_secs(15));
            self.gone.push(r.op.log_text());
            self.start_replica(Some(points[k % 2]));
            self.row().restarts += 1;
        }
        self.crashed.clear();
        let mut sigkills = 0;
        let mut it = 0;
        while sigkills + self.crashed.len() < self.plan.kills {
            it += 1;
            let leader = self.leader().await;
            if self.replicas[leader].armed.is_some() {
                // It dies at its crash point within a few claims.
                let (before, start) = (self.crashed.len(), Instant::now());
                while self.crashed.len() == before && start.elapsed() < Duration::from_secs(40) {
                    self.reap_unexpected();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if self.crashed.len() == before {
                    // Never reached (it lost the lease first?): kill it instead.
                    let i = self.leader().await;
                    self.replicas[i].op.signal("KILL");
                    self.replicas[i].op.wait_exit(Duration::from_secs(5));
                    self.remove(i);
                    sigkills += 1;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(300 + rand_below(2500))).await;
                self.replicas[leader].op.signal("KILL");
                self.replicas[leader].op.wait_exit(Duration::from_secs(5));
                self.remove(leader);
                sigkills += 1;
            }
            let died_at = Utc::now();
            self.recovery(died_at).await;
            // Back to three replicas; a SIGKILLed one is replaced by an armed one.
            let mut armed = Some(points[it % 2]);
            while self.replicas.len() < 3 {
                self.start_replica(armed.take());
                self.row().restarts += 1;
            }
        }
        self.reap_unexpected();
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        kinds.insert("SIGKILL", sigkills);
        for p in &self.crashed {
            *kinds.entry(p).or_default() += 1;
        }
        self.row().iterations = sigkills + self.crashed.len();
        // Leave three unarmed replicas for the next scenarios.
        self.settle(Duration::from_secs(2)).await;
        self.reap_unexpected();
        self.replace_all(&[]).await;
        while self.replicas.len() < 3 {
            self.start_replica(None);
        }
        let kinds = kinds
            .iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.row().notes.push(kinds);
    }

    /// SIGSTOP the leader past its lease, then SIGCONT: the paused replica must not act again.
    pub(crate) async fn paused_leader(&mut self) {
        self.begin("Leader paused past its lease (SIGSTOP, SIGCONT): split brain");
        let leader = self.leader().await;
        let before = self.replicas[leader]
            .op
            .log_text()
            .matches("Dispatched job")
            .count();
        self.replicas[leader].op.signal("STOP");
        let stopped = Utc::now();
        self.row().iterations += 1;
        self.recovery(stopped).await;
        self.settle(Duration::from_secs(LEASE.0 * 2)).await;
        self.replicas[leader].op.signal("CONT");
        self.settle(Duration::from_secs(4)).await;
        let log = self.replicas[leader].op.log_text();
        let after = log.matches("Dispatched job").count();
        if !(log.contains("lost leader") || log.contains("fencing")) {
            self.failures
                .push("the resumed replica never noticed it was deposed".into());
        }
        self.row().notes.push(format!(
            "resumed replica published {} batch line(s) in flight at the pause",
            after - before
        ));
    }

    pub(crate) async fn postgres(&mut self) {
        let secs = self.plan.outage.as_secs();
        self.begin(&format!(
            "Postgres unreachable for {secs} s (connections cut)"
        ));
        self.cut("pg", self.plan.outage).await;
        self.row().iterations += 1;
        self.recovery(Utc::now()).await;
        self.settle(self.plan.after_recovery).await;

        self.begin("Postgres restarted (pg_ctlcluster restart)");
        let Some((ver, cluster)) = pg_cluster() else {
            self.row()
                .notes
                .push("skipped: no local pg_ctlcluster".into());
            return;
        };
        let out = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &ver, &cluster, "restart"])
            .output()
            .expect("pg_ctlcluster");
        if !out.status.success() {
            self.failures.push(format!(
                "pg_ctlcluster restart failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.row().iterations += 1;
        self.recovery(Utc::now()).await;
        self.settle(self.plan.after_recovery).await;
    }

    pub(crate) async fn broker_faults(&mut self) {
        let label = self.kind.label();
        let secs = self.plan.outage.as_secs();
        let workers = if self.guard.is_some() {
            ", guarded workers"
        } else {
            ""
        };
        self.begin(&format!(
            "{label} unreachable for {secs} s (connections cut{workers})"
        ));
        self.cut("broker", self.plan.outage).await;
        self.row().iterations += 1;
        self.recovery(Utc::now()).await;
        self.settle(self.plan.after_recovery).await;

        self.begin(&format!(
            "{label} restarted{}",
            if workers.is_empty() {
                ""
            } else {
                " (guarded workers)"
            }
        ));
        match self.kind {
            BrokerKind::Redis => self.redis.restart(),
            BrokerKind::Amqp => {
                for step in ["stop_app", "start_app"] {
                    let out = Command::new("rabbitmqctl")
                        .arg(step)
                        .output()
                        .expect("rabbitmqctl");
                    assert!(out.status.success(), "rabbitmqctl {step}");
                }
                let start = Instant::now();
                while std::net::TcpStream::connect("127.0.0.1:5672").is_err() {
                    assert!(start.elapsed() < Duration::from_secs(60), "RabbitMQ back");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.row().iterations += 1;
        self.recovery(Utc::now()).await;
        self.settle(self.plan.after_recovery).await;
    }

    /// Dispatch continues while the Lease can be trusted, stops when it cannot, resumes after;
    /// and the watches come back (a job created afterwards runs).
    pub(crate) async fn apiserver(&mut self) {
        let secs = self.plan.outage.as_secs();
        self.begin(&format!(
            "kube-apiserver unreachable for {secs} s (connections cut)"
        ));
        let cut_at = self.cut("api", self.plan.outage).await;
        let restored = Utc::now();
        self.row().iterations += 1;
        let count = |from: DateTime<Utc>, to: DateTime<Utc>| {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM job_executions WHERE dispatched_at > $1 AND dispatched_at < $2",
            )
            .bind(from)
            .bind(to)
            .fetch_one(&self.f.pool)
        };
        let trusted = chrono::Duration::seconds(LEASE.1 as i64);
        let while_trusted = count(
            cut_at,
            cut_at + trusted - chrono::Duration::milliseconds(500),
        )
        .await
        .unwrap_or(0);
        let after_deadline = count(cut_at + trusted + chrono::Duration::seconds(1), restored)
            .await
            .unwrap_or(0);
        self.row().notes.push(format!(
            "{while_trusted} dispatched while the lease was trusted, {after_deadline} after the renew deadline"
        ));
        if while_trusted == 0 {
            self.failures
                .push("dispatch stopped at once when the apiserver went away".into());
        }
        if after_deadline > 0 {
            self.failures.push(format!(
                "{after_deadline} dispatched after the lease could no longer be trusted"
            ));
        }
        self.recovery(restored).await;
        self.job_after_fault("api-cut").await;

        self.begin("kube-apiserver restarted");
        let Ok(dir) = std::env::var("KB_CP_DIR") else {
            self.row()
                .notes
                .push("skipped: the apiserver is not ours (KB_CP_DIR unset)".into());
            return;
        };
        let out = Command::new(common::env().repo.join("hack/control-plane.sh"))
            .args(["restart-apiserver", &dir])
            .output()
            .expect("restart-apiserver");
        if !out.status.success() {
            self.failures.push(format!(
                "apiserver restart failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.row().iterations += 1;
        self.recovery(Utc::now()).await;
        self.job_after_fault("api-restart").await;
    }

    /// A job created after a fault runs: the watches resumed.
    async fn job_after_fault(&mut self, name: &str) {
        let created = Instant::now();
        self.f
            .job(
                name,
                "echo",
                json!({"schedule": {"interval": {"seconds": 1}}, "historyLimit": 100_000}),
            )
            .await;
        self.jobs.push(JobDef {
            name: name.to_string(),
            period: 1,
            policy: Policy::Plain,
        });
        let start = Instant::now();
        loop {
            let ran = self
                .f
                .record()
                .await
                .iter()
                .any(|i| i.job().ends_with(&format!("/{name}")));
            if ran {
                self.row().notes.push(format!(
                    "a job created afterwards ran {:?} later",
                    created.elapsed()
                ));
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                self.failures
                    .push(format!("{name}: a job created after the fault never ran"));
                return;
            }
            self.reap_unexpected();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Dispatch is unaffected while results cannot be read; outcomes catch up afterwards.
    pub(crate) async fn result_backend(&mut self) {
        let secs = self.plan.outage.as_secs();
        self.begin(&format!("Result backend unreachable for {secs} s"));
        let cut_at = self.cut("backend", self.plan.outage).await;
        let restored = Utc::now();
        self.row().iterations += 1;
        let lag: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM max(dispatched_at - scheduled_for))::float8 FROM job_executions
             WHERE trigger = 'schedule' AND scheduled_for BETWEEN $1 AND $2",
        )
        .bind(cut_at)
        .bind(restored)
        .fetch_one(&self.f.pool)
        .await
        .ok()
        .flatten();
        self.row().notes.push(format!(
            "max dispatch lag during the outage {:.2} s",
            lag.unwrap_or(f64::NAN)
        ));
        if lag.is_none_or(|l| l > 2.0) {
            self.failures.push(format!(
                "dispatch slowed while the backend was away: {lag:?}"
            ));
        }
        // Outcomes catch up: every run published during the outage leaves DISPATCHED (an
        // older one may wait in the broker).
        match self
            .until_zero(
                "SELECT count(*) FROM job_executions
                 WHERE dispatched_at BETWEEN $2 AND $1 AND state IN ('DISPATCHED', 'STARTED', 'RETRY')",
                (restored, cut_at),
                Duration::from_secs(60),
            )
            .await
        {
            Ok(took) => {
                self.row().recoveries.push(took);
                self.row()
                    .notes
                    .push(format!("outcomes caught up {took:.1?} after the restore"));
            }
            Err(open) => self.failures.push(format!(
                "{open} outcomes still unknown 60 s after the restore"
            )),
        }
    }

    /// The worker stops consuming: the queue grows, the operator's memory must not.
    pub(crate) async fn slow_worker(&mut self) {
        let secs = self.plan.slow_worker.as_secs();
        self.begin(&format!("Worker stalled for {secs} s (queue grows)"));
        let leader = self.leader().await;
        let pid = self.replicas[leader].op.pid();
        let before = rss_kib(pid);
        let stalled = Utc::now();
        for w in &self.workers {
            w.signal("STOP");
        }
        let start = Instant::now();
        let mut peak = before;
        let mut samples = Vec::new();
        while start.elapsed() < self.plan.slow_worker {
            self.reap_unexpected();
            let rss = rss_kib(pid);
            peak = peak.max(rss);
            samples.push(rss);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let queued: i64 =
            sqlx::query_scalar("SELECT count(*) FROM job_executions WHERE dispatched_at > $1")
                .bind(Utc::now() - chrono::Duration::seconds(secs as i64))
                .fetch_one(&self.f.pool)
                .await
                .unwrap_or(0);
        for w in &self.workers {
            w.signal("CONT");
        }
        let resumed = Utc::now();
        self.row().iterations += 1;
        let half = samples.len() / 2;
        let second_half_growth =
            samples.last().copied().unwrap_or(0) - samples.get(half).copied().unwrap_or(0);
        self.row().notes.push(format!(
            "{queued} messages queued; leader RSS {} → peak {} MiB (second half {:+} KiB)",
            before / 1024,
            peak / 1024,
            second_half_growth
        ));
        if peak > before + 64 * 1024 {
            self.failures.push(format!(
                "operator memory grew with the queue: {before} KiB → {peak} KiB"
            ));
        }
        // Recovery: the backlog drains (every run published during the stall has run).
        match self
            .until_zero(
                "SELECT count(*) FROM job_executions e WHERE dispatched_at BETWEEN $2 AND $1
                 AND NOT EXISTS (SELECT 1 FROM celery_invocations c WHERE c.task_id = e.task_id)",
                (resumed, stalled),
                Duration::from_secs(240),
            )
            .await
        {
            Ok(took) => self.row().recoveries.push(took),
            Err(left) => self.failures.push(format!(
                "{left} queued runs never ran after the worker resumed"
            )),
        }
    }

    /// Replicas replaced one by one (SIGTERM, new pod) while jobs run.
    pub(crate) async fn rolling_update(&mut self) {
        self.begin("Rolling update (3 replicas replaced one by one)");
        let start = Utc::now();
        self.replace_all(&[]).await;
        self.row().iterations += 1;
        self.settle(Duration::from_secs(3)).await;
        let (lag, catchups): (Option<f64>, i64) = sqlx::query_as(
            "SELECT extract(epoch FROM max(dispatched_at - scheduled_for))::float8,
                    count(*) FILTER (WHERE trigger = 'catchup')
             FROM job_executions WHERE scheduled_for > $1 AND dispatched_at IS NOT NULL",
        )
        .bind(start)
        .fetch_one(&self.f.pool)
        .await
        .unwrap_or((None, -1));
        let lag = lag.unwrap_or(f64::NAN);
        self.row()
            .recoveries
            .push(Duration::from_secs_f64(lag.max(0.0)));
        self.row().notes.push(format!(
            "longest dispatch delay {lag:.2} s, {catchups} catch-up run(s)"
        ));
        println!(
            "rolling update, leadership:\n{}",
            self.leadership_timeline()
        );
        if lag.is_nan() || lag > 2.0 || catchups != 0 {
            let latest: Vec<String> = sqlx::query_scalar(
                "SELECT j.name || ' slot ' || e.scheduled_for || ' dispatched '
                        || e.dispatched_at || ' (' || e.trigger || ')'
                 FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
                 WHERE e.scheduled_for > $1 AND e.dispatched_at IS NOT NULL
                 ORDER BY e.dispatched_at - e.scheduled_for DESC LIMIT 3",
            )
            .bind(start)
            .fetch_all(&self.f.pool)
            .await
            .unwrap_or_default();
            self.failures.push(format!(
                "rolling update: a gap of {lag:.2} s, {catchups} catch-up runs; latest: {latest:?}\n\
                 leadership:\n{}",
                self.leadership_timeline()
            ));
        }
    }

    /// Every replica's leadership and shutdown log lines (gone ones first), to tell where a
    /// handover spent its time.
    fn leadership_timeline(&self) -> String {
        const MARKS: [&str; 6] = [
            "shutting down",
            "released leader lease",
            "acquired leader",
            "dispatcher active",
            "dispatcher stopped",
            "kube-beat starting",
        ];
        let live = self.replicas.iter().map(|r| r.op.log_text());
        let mut lines: Vec<String> = self
            .gone
            .iter()
            .cloned()
            .chain(live)
            .enumerate()
            .flat_map(|(i, log)| {
                log.lines()
                    .filter(|l| MARKS.iter().any(|m| l.contains(m)))
                    .map(|l| format!("{l} [replica log {i}]"))
                    .collect::<Vec<_>>()
            })
            .collect();
        lines.sort(); // each line starts with its RFC 3339 timestamp
        let from = lines.len().saturating_sub(24);
        lines[from..].join("\n")
    }
}
