"""Sustained load, cold start and failover at N jobs (issue: scale beyond bursts), on one set-up
because N = 100,000 ScheduledJobs take minutes to create:

1. N jobs, each every 60 s, their slots spread evenly over the minute, `historyLimit` 3 (so
   pruning works during the run), created with no operator running (the apiserver's own pace);
   plus a few sample jobs on a queue a real Celery worker consumes.
2. First start: the operator reconciles all N into Postgres (an empty database).
3. Cold start: after a minute of runs the operator is stopped (SIGTERM) and started again:
   process start → /readyz, → leading, → dispatching; its peak RSS after its first minute.
4. Sustained: a second replica joins as a follower; for --minutes the runs go on with result
   tracking, status writing, Events and pruning all on. The fast consumer (bench/consumer.py)
   takes every message off Redis and stores its SUCCESS record as Celery does; the real worker
   (bench/sample_worker.py) runs the sample jobs. Measured: lag as the consumer saw it (taken
   off the queue − slot), publish → SUCCESS recorded (kube-beat's histogram), the leader's CPU
   and RSS, the executions table, the status writer.
5. Failover: the leader is SIGKILLed; the follower's first dispatch, the catch-up, its CPU and
   RSS in its first minute; no slot doubled over the whole run (the consumer counts).

With --profile, `perf record` samples (flat, 99 Hz) where the CPU goes: the whole machine by
process over the cold start's first 60 s and for 30 s mid-window, the leader by function for 60 s
mid-window, and the new leader by function over the 20 s after the kill.
"""

import json
import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis

import bench
from bench import DB, PG, QUEUE, REDIS_PORT, BROKER_DB, cpu_seconds, log, metric, peak_rss_mib, psql

SAMPLE_QUEUE = "kb-sample"
SAMPLE_JOBS = 20
BACKEND_DB = 4
INTERVAL_S = 60
HISTORY_LIMIT = 3


def iso_ms(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def every_minute(name, ns, tf, start_ms, i, finalizer):
    meta = {"name": name, "namespace": ns}
    if finalizer:
        # What the chart's mutating webhook (`webhook.finalizerAtCreate`, on by default) puts on
        # every job at its create; the jobs are created with no operator running to answer it.
        meta["finalizers"] = ["kubebeat.io/cleanup"]
    return {"apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": meta,
            "spec": {"taskFunction": tf, "schedule": {"interval": {"seconds": INTERVAL_S}},
                     "startTime": iso_ms(start_ms), "args": [i], "historyLimit": HISTORY_LIMIT}}


def checkpoints():
    """Postgres' (checkpoints on schedule, checkpoints forced by WAL volume) so far, server-wide."""
    row = psql("postgres", "select checkpoints_timed, checkpoints_req from pg_stat_bgwriter")
    try:
        return tuple(int(v) for v in row.split("|"))
    except (AttributeError, ValueError):
        return None


def rss_mib(pid):
    return bench.status_mib(pid, "VmRSS")


def histogram(port, name):
    """Cumulative bucket counts {le: count} of one histogram from /metrics."""
    out = {}
    for line in (bench.metrics_text(port) or "").splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def quantile(before, after, q):
    """Prometheus's histogram_quantile over the increase between two readings: linear within
    the bucket the quantile falls in (so it is as fine as the buckets, no finer)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return les[-1]


def percentile(values, p):
    return bench.percentile(sorted(values), p)


class Replica:
    def __init__(self, args, ns, workdir, name, lease_s):
        self.name, self.port = name, bench.free_port()
        env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", BROKER_URL=bench.BROKER,
                   RESULT_BACKEND=f"redis://127.0.0.1:{REDIS_PORT}/{BACKEND_DB}", POD_NAME=name,
                   RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
        self.log = open(workdir / f"sustained-{name}.log", "ab")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [args.kube_beat, "run", "--namespace", ns, "--http-addr", f"127.0.0.1:{self.port}",
             "--lease-name", f"bench-{ns}", "--lease-duration-seconds", str(lease_s),
             "--renew-deadline-seconds", str(lease_s - 1), "--retry-period-seconds", "1"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self):
        return self.proc.pid

    def leading(self):
        return self.proc.poll() is None and metric(self.port, "kube_beat_leader") == 1

    def ready(self):
        import http.client
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def published(self):
        return metric(self.port, 'kube_beat_dispatches_total{outcome="published"}') or 0

    def stop(self, kill=False):
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def perf_top(data, sort, limit=30):
    """The top entries of a `perf record` file by `sort` (self time, no call graph)."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", sort,
                          "--percent-limit", "0.5", "-g", "none"], capture_output=True, text=True)
    rows = [line.strip() for line in out.stdout.splitlines() if line.strip() and not line.startswith("#")]
    return rows[:limit]


class Profile(threading.Thread):
    """`perf record` at 99 Hz for `seconds` after `delay` — of process `pid`, or of the whole
    machine when pid is None — then its top entries by `sort` into rec["profiles"][key]. Off
    (nothing started) unless --profile."""

    def __init__(self, args, rec, key, pid, delay, seconds, sort, workdir):
        super().__init__(daemon=True)
        self.enabled = bool(getattr(args, "profile", False))
        self.rec, self.key, self.pid, self.delay, self.seconds = rec, key, pid, delay, seconds
        self.sort, self.data = sort, str(workdir / f"{key}.perf.data")
        if self.enabled:
            self.start()

    def run(self):
        time.sleep(max(0.0, self.delay))
        target = ["-a"] if self.pid is None else ["-p", str(self.pid)]
        r = subprocess.run(["perf", "record", "-F", "99", "-o", self.data, *target, "--", "sleep",
                            str(self.seconds)], capture_output=True, text=True)
        entry = {"what": "the whole machine" if self.pid is None else "kube-beat",
                 "seconds": self.seconds, "sort": self.sort}
        if r.returncode != 0:
            entry["error"] = r.stderr.strip()[-300:]
        else:
            entry["top"] = perf_top(self.data, self.sort)
        self.rec.setdefault("profiles", {})[self.key] = entry

    def finish(self):
        if self.enabled:
            self.join(self.seconds + self.delay + 120)


class PgActivity(threading.Thread):
    """With --profile: what the benchmark database's backends (autovacuum included) are doing,
    sampled every 0.25 s from pg_stat_activity until stop() — to say what Postgres was doing in
    the seconds before each stall of the dispatch."""

    SQL = ("select extract(epoch from now()), backend_type, coalesce(wait_event_type, '-') || ':' || "
           "coalesce(wait_event, '-'), regexp_replace(left(query, 70), '\\s+', ' ', 'g') "
           f"from pg_stat_activity where datname = '{DB}' and state not in ('idle') "
           "and pid <> pg_backend_pid()")

    def __init__(self, args):
        super().__init__(daemon=True)
        self.enabled = bool(getattr(args, "profile", False))
        self.samples, self.ticks, self.halt = [], [], threading.Event()
        if self.enabled:
            self.start()

    def run(self):
        while not self.halt.is_set():
            t = time.time()
            self.ticks.append(t)
            for line in psql(DB, self.SQL).splitlines():
                parts = line.split("|", 3)
                if len(parts) == 4:
                    self.samples.append((t, parts[1], parts[2], parts[3]))
            self.halt.wait(0.25)

    def stop(self):
        self.halt.set()
        if self.enabled:
            self.join(10)

    def before(self, stalls, seconds=5, top=12):
        """The busiest (backend, wait, query) in the `seconds` before each stall against the whole
        window: [(share of samples before stalls, share in the window, backend, wait, query)]."""
        def counts(ticks, rows):
            c = {}
            for _, backend, wait, query in rows:
                c[(backend, wait, query)] = c.get((backend, wait, query), 0) + 1
            return {k: v / max(len(ticks), 1) for k, v in c.items()}
        near = lambda t: any(st - seconds <= t <= st for st in stalls)
        during = counts([t for t in self.ticks if near(t)], [r for r in self.samples if near(r[0])])
        overall = counts(self.ticks, self.samples)
        rows = sorted(during.items(), key=lambda kv: -kv[1])[:top]
        return [(round(v, 2), round(overall.get(k, 0.0), 2), *k) for k, v in rows]


def first_time(deadline, check, every=0.1):
    """When `check` first held (seconds since the epoch), or None by the deadline."""
    while time.time() < deadline:
        if check():
            return time.time()
        time.sleep(every)
    return None


def first_times(deadline, checks, every=0.1):
    """When each of `checks` (name → check) first held, polled together so that one slow to
    come does not delay noticing the others; None for those that never held by the deadline."""
    seen = {name: None for name in checks}
    while time.time() < deadline and any(v is None for v in seen.values()):
        for name, check in checks.items():
            if seen[name] is None and check():
                seen[name] = time.time()
        time.sleep(every)
    return seen


def start_consumer(args, workdir, tag):
    out = workdir / f"consumer-{tag}.json"
    out.unlink(missing_ok=True)
    consumer = subprocess.Popen(
        [args.python, str(bench.ROOT / "bench" / "consumer.py"), "--broker-db", str(BROKER_DB),
         "--backend-db", str(BACKEND_DB), "--queue", QUEUE, "--out", str(out)],
        stdout=open(workdir / f"consumer-{tag}.log", "wb"), stderr=subprocess.STDOUT)
    return consumer, out


def stop_consumer(consumer, out):
    consumer.send_signal(signal.SIGTERM)
    consumer.wait(120)
    return json.loads(out.read_text())


def start_sidecars(args, workdir, ns):
    consumer, consumer_out = start_consumer(args, workdir, ns)
    env = dict(os.environ, BENCH_BROKER=bench.BROKER,
               BENCH_BACKEND=f"redis://127.0.0.1:{REDIS_PORT}/{BACKEND_DB}",
               PYTHONPATH=str(bench.ROOT / "bench"))
    worker = subprocess.Popen(
        [args.python, "-m", "celery", "-A", "sample_worker", "worker", "-Q", SAMPLE_QUEUE, "-c", "1",
         "-P", "solo", "--loglevel", "WARNING", "-n", f"sample@{ns}"],
        env=env, cwd=workdir, stdout=open(workdir / f"sample-worker-{ns}.log", "wb"), stderr=subprocess.STDOUT)
    return consumer, consumer_out, worker


def status_ages(kube, ns, n, k=200):
    """Seconds since each of k random jobs' `status.lastScheduleTime` (None: never written)."""
    from datetime import datetime
    ages = []
    for i in random.sample(range(n), min(k, n)):
        code, data = kube.request("GET", f"/apis/kubebeat.io/v1alpha1/namespaces/{ns}/scheduledjobs/job-{i}")
        last = json.loads(data).get("status", {}).get("lastScheduleTime") if code == 200 else None
        ages.append(None if not last else time.time() - datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp())
    return ages


def run_sustained(args, kube, workdir):
    n, minutes = args.n_sustained, args.minutes
    ns = f"sustained-{n}-{int(time.time())}"
    rec = {"scenario": "sustained", "n": n, "minutes": minutes, "interval_s": INTERVAL_S,
           "history_limit": HISTORY_LIMIT, "lease_s": args.lease,
           "finalizer_at_create": args.finalizer_at_create.split(",")[0] == "on",
           "pg_autovacuum": psql("postgres", "show autovacuum") or "?",
           # The replicas inherit the environment: RESULT_SUBSCRIBE=false measures the polls alone.
           "result_subscribe": os.environ.get("RESULT_SUBSCRIBE", "true")}
    for db in (BROKER_DB, BACKEND_DB):
        redis.Redis(port=REDIS_PORT, db=db).flushdb()
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"drop database if exists {DB} with (force)"], check=True)
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"create database {DB}"], check=True)
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    path = f"/apis/kubebeat.io/v1alpha1/namespaces/{ns}/scheduledjobs"

    # 1. Create: job i's slots are at base + i·60/N (+ k·60 s).
    base_ms = int(time.time() * 1000)
    fin = rec["finalizer_at_create"]
    specs = [every_minute(f"job-{i}", ns, "bench-noop", base_ms + i * INTERVAL_S * 1000 // n, i, fin) for i in range(n)]
    specs += [every_minute(f"sample-{i}", ns, "bench-sample", base_ms + i * INTERVAL_S * 1000 // SAMPLE_JOBS, i, fin)
              for i in range(SAMPLE_JOBS)]
    t = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: kube.create(path, s), specs))
    rec["create_s"] = time.time() - t
    log(f"sustained: {len(specs):,} jobs created in {rec['create_s']:.0f} s")

    consumer, consumer_out, worker = start_sidecars(args, workdir, ns)
    replicas = []
    try:
        # 2. First start, empty database.
        a = Replica(args, ns, workdir, "replica-a", args.lease)
        replicas.append(a)
        stored = lambda: int(psql(DB, f"select count(*) from scheduled_jobs where namespace = '{ns}' "
                                      "and valid and next_run_at is not null") or 0)
        done = first_time(a.started + 1800, lambda: stored() >= len(specs), every=0.5)
        rec["first_start_s"] = done - a.started if done else None
        rec["first_start_cpu_s"] = cpu_seconds(a.pid)
        rec["first_start_rss_mib"] = peak_rss_mib(a.pid)
        log(f"  first start: all in Postgres after {rec['first_start_s']} s")
        # A cold start is a restart in steady state: the first start's finalizers and `Ready`
        # (paced apiserver writes that trail the store) are done first, or the restart would
        # redo them and hold every unshown spec meanwhile. Bounded by --settle-max.
        t = time.time()
        settled = first_time(t + args.settle_max, lambda: metric(a.port, "kube_beat_reconcile_writes_waiting") == 0,
                             every=2)
        rec["writes_settled_s"] = settled - t if settled else None
        log(f"  first start: finalizers and Ready written {rec['writes_settled_s']} s after")
        time.sleep(30)

        # 3. Cold start.
        a.stop()
        a = Replica(args, ns, workdir, "replica-a2", args.lease)
        replicas.append(a)
        profiles = [Profile(args, rec, "cold start: the machine by process", None, 0, 60, "comm", workdir)]
        # Each on its own: the leader dispatches from Postgres without waiting for the caches.
        seen = first_times(a.started + 300, {"ready": a.ready, "leading": a.leading,
                                             "dispatching": lambda: a.published() > 0})
        for key, at in seen.items():
            rec[f"cold_{key}_s"] = at - a.started if at else None
        time.sleep(max(0.0, a.started + 60 - time.time()))
        rec["cold_first_minute_rss_mib"] = peak_rss_mib(a.pid)
        rec["cold_first_minute_cpu_s"] = cpu_seconds(a.pid)
        log(f"  cold start: ready {rec['cold_ready_s']} s, leading {rec['cold_leading_s']} s, "
            f"dispatching {rec['cold_dispatching_s']} s, RSS {rec['cold_first_minute_rss_mib']} MiB")

        # 4. Sustained, a follower beside.
        b = Replica(args, ns, workdir, "replica-b", args.lease)
        replicas.append(b)
        time.sleep(10)
        w0 = time.time()
        cpu0, pg0 = cpu_seconds(a.pid), bench.postgres_cpu()
        ckpt0 = checkpoints()
        lag0 = histogram(a.port, "kube_beat_dispatch_lag_seconds")
        rec0 = histogram(a.port, "kube_beat_result_recorded_seconds")
        writes0 = metric(a.port, "kube_beat_status_writes_total") or 0
        pub0 = a.published()
        activity = PgActivity(args)
        middle = minutes * 30 - 30
        profiles += [Profile(args, rec, "sustained: the leader by function", a.pid, middle, 60, "sym", workdir),
                     Profile(args, rec, "sustained: the machine by process", None, middle + 65, 30, "comm", workdir)]
        samples = []
        while time.time() < w0 + minutes * 60:
            samples.append({
                "t": time.time() - w0, "rss_mib": rss_mib(a.pid), "cpu_s": cpu_seconds(a.pid) - cpu0,
                "executions": int(psql(DB, "select count(*) from job_executions") or 0),
                "unfinished": metric(a.port, "kube_beat_result_tracker_unfinished"),
                "status_queue": metric(a.port, "kube_beat_status_queue_depth"),
                "published": a.published() - pub0,
                "tracker_passes": metric(a.port, "kube_beat_result_tracker_pass_seconds_count"),
                "tracker_pass_s": metric(a.port, "kube_beat_result_tracker_pass_seconds_sum"),
                "health_passes": metric(a.port, "kube_beat_health_pass_seconds_count"),
                "health_pass_s": metric(a.port, "kube_beat_health_pass_seconds_sum"),
                "sweep_waiting": metric(a.port, "kube_beat_sweep_jobs_waiting"),
                "hints": metric(a.port, "kube_beat_result_hints_total"),
                "hints_dropped": metric(a.port, "kube_beat_result_hints_dropped_total"),
                # Cumulative histograms, so the steady state (after the restart's sweep and
                # catch-up) can be told from the window's start.
                "lag_hist": histogram(a.port, "kube_beat_dispatch_lag_seconds"),
                "recorded_hist": histogram(a.port, "kube_beat_result_recorded_seconds"),
            })
            time.sleep(5)
        w1 = time.time()
        activity.stop()
        rec["window_s"] = w1 - w0
        rec["cpu_s"] = cpu_seconds(a.pid) - cpu0
        rec["cpu_cores"] = rec["cpu_s"] / rec["window_s"]
        rec["pg_cpu_cores"] = bench.postgres_cpu_since(pg0) / rec["window_s"]
        ckpt1 = checkpoints()
        if ckpt0 and ckpt1:
            rec["pg_checkpoints_timed"], rec["pg_checkpoints_requested"] = (b - a for a, b in zip(ckpt0, ckpt1))
            rec["pg_max_wal_size"] = psql("postgres", "show max_wal_size") or "?"
        rec["rss_mib_max"] = max((s["rss_mib"] or 0) for s in samples)
        rec["peak_rss_mib"] = peak_rss_mib(a.pid)
        rec["published"] = a.published() - pub0
        rec["runs_per_s"] = rec["published"] / rec["window_s"]
        rec["sent_share"] = rec["published"] / ((n + SAMPLE_JOBS) * rec["window_s"] / INTERVAL_S)
        lag1 = histogram(a.port, "kube_beat_dispatch_lag_seconds")
        rec1 = histogram(a.port, "kube_beat_result_recorded_seconds")
        rec["dispatch_lag_p50_metric_s"] = quantile(lag0, lag1, 0.50)
        rec["dispatch_lag_p99_metric_s"] = quantile(lag0, lag1, 0.99)
        rec["recorded_p50_s"] = quantile(rec0, rec1, 0.50)
        rec["recorded_p99_s"] = quantile(rec0, rec1, 0.99)
        rec["status_writes_per_s"] = ((metric(a.port, "kube_beat_status_writes_total") or 0) - writes0) / rec["window_s"]
        rec["status_queue_end"] = metric(a.port, "kube_beat_status_queue_depth")
        ages = status_ages(kube, ns, n)
        rec["status_never_written"] = sum(1 for x in ages if x is None)
        known = sorted(x for x in ages if x is not None)
        rec["status_age_p50_s"] = bench.percentile(known, 50)
        rec["status_age_max_s"] = known[-1] if known else None
        rec["executions_rows_end"] = samples[-1]["executions"] if samples else None
        rec["executions_rows_max"] = max(s["executions"] for s in samples) if samples else None
        rec["executions_mib"] = int(psql(DB, "select pg_total_relation_size('job_executions')") or 0) / 2**20
        rec["scheduled_jobs_mib"] = int(psql(DB, "select pg_total_relation_size('scheduled_jobs')") or 0) / 2**20
        rec["database_mib"] = int(psql(DB, f"select pg_database_size('{DB}')") or 0) / 2**20
        rec["redis_mib"] = redis.Redis(port=REDIS_PORT).info("memory")["used_memory"] / 2**20
        rec["samples"] = samples
        log(f"  sustained {minutes} min: {rec['runs_per_s']:.0f} runs/s, CPU {rec['cpu_cores']:.2f} cores, "
            f"RSS ≤ {rec['rss_mib_max']:.0f} MiB, recorded p99 {rec['recorded_p99_s']}")

        # 5. Failover: SIGKILL the leader.
        b_cpu0 = cpu_seconds(b.pid)
        killed = time.time()
        a.stop(kill=True)
        profiles.append(Profile(args, rec, "failover: the new leader by function", b.pid, 0, 20, "sym", workdir))
        # The follower's own publish counter, beside the queue's figure: it counts runs once
        # recorded as DISPATCHED (its own, or the killed leader's found in the publish ledger).
        seen = first_times(killed + 120, {"leading": b.leading, "publishing": lambda: b.published() > 0})
        for key, at in seen.items():
            rec[f"failover_{key}_s"] = at - killed if at else None
        time.sleep(max(0.0, killed + 60 - time.time()))
        rec["failover_cpu_s"] = cpu_seconds(b.pid) - b_cpu0
        rec["failover_rss_mib"] = rss_mib(b.pid)
        rec["failover_peak_rss_mib"] = peak_rss_mib(b.pid)
        rec["missed"] = int(psql(DB, "select count(*) from job_executions where state = 'MISSED'") or 0)
        for p in profiles:
            p.finish()
    finally:
        for r in replicas:
            r.stop()
        seen = stop_consumer(consumer, consumer_out)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()

    rec["duplicate_task_ids"] = seen["duplicate_task_ids"]
    rec["duplicate_slots"] = seen["duplicate_slots"]
    rec["unreadable"] = seen["unreadable"]
    taken, lags = seen["taken"], seen["lags"]
    window = [lag for t, lag in zip(taken, lags) if w0 <= t < w1]
    rec["lag_p50_s"] = percentile(window, 50)
    rec["lag_p99_s"] = percentile(window, 99)
    rec["lag_max_s"] = max(window) if window else None
    # Steady state: the window after the restarted leader's sweep (it reconciles every job) has
    # handed out its last job, plus 10 s for the reconciles still queued.
    swept = next((x["t"] for x in rec.get("samples", []) if x.get("sweep_waiting") == 0), None)
    rec["sweep_done_window_s"] = swept
    if swept is not None:
        steady = [lag for t, lag in zip(taken, lags) if w0 + swept + 10 <= t < w1]
        rec["steady_from_window_s"] = swept + 10
        rec["steady_lag_p50_s"] = percentile(steady, 50)
        rec["steady_lag_p99_s"] = percentile(steady, 99)
        rec["steady_lag_max_s"] = max(steady) if steady else None
        # kube-beat's own histograms from the first sample in the steady part to the end.
        first = next((x for x in rec.get("samples", []) if x["t"] >= swept + 10 and x.get("lag_hist")), None)
        if first is not None and lag1 and rec1:
            rec["steady_dispatch_lag_p50_metric_s"] = quantile(first["lag_hist"], lag1, 0.50)
            rec["steady_dispatch_lag_p99_metric_s"] = quantile(first["lag_hist"], lag1, 0.99)
            rec["steady_recorded_p50_s"] = quantile(first["recorded_hist"], rec1, 0.50)
            rec["steady_recorded_p99_s"] = quantile(first["recorded_hist"], rec1, 0.99)
    after = sorted((t, lag) for t, lag in zip(taken, lags) if t > killed + 0.1)
    rec["failover_first_dispatch_s"] = after[0][0] - killed if after else None
    # The catch-up: what the new leader sent late (lag over a second) after the kill.
    late = [lag for _, lag in after if lag > 1.0]
    rec["failover_late_runs"] = len(late)
    rec["failover_late_max_s"] = max(late) if late else None
    rec["timeline"] = per_second(taken, lags, w0 - 60)
    # Stalls: seconds of the window in which a run was taken off the queue over a second late.
    stalls = [w0 - 60 + sec for sec, _, worst in rec["timeline"] if worst > 1.0 and w0 <= w0 - 60 + sec < w1]
    rec["stalls"] = [round(t - w0, 1) for t in stalls]
    if activity.enabled:
        rec["pg_before_stalls"] = activity.before(stalls)
    sample = psql(DB, "select count(*) filter (where e.state = 'SUCCESS' and e.result is not null), count(*) "
                      "from job_executions e join scheduled_jobs j on j.id = e.job_id where j.task_function = 'bench-sample' "
                      "and e.state not in ('PENDING', 'DISPATCHED', 'STARTED')")
    ok, total = (int(v) for v in (sample.split("|") if sample else ("0", "0")))
    rec["sample_success_with_result"], rec["sample_finished"] = ok, total
    return rec


def run_redbeat(args, workdir, n, minutes):
    """RedBeat on the same load: N entries every minute, spread over it, sent to the same queue
    and taken by the same consumer. What it sustains: runs sent per second from its second
    minute on, against the N/60 due. (Not a lag: RedBeat messages carry no slot, and a run it
    skips is indistinguishable from one a minute late; in a small trial it sent some entries'
    first run a minute after their due time.)"""
    for url in (bench.REDBEAT_URL,):
        redis.Redis.from_url(url).flushdb()
    for db in (BROKER_DB, BACKEND_DB):
        redis.Redis(port=REDIS_PORT, db=db).flushdb()
    t0 = bench.plan_t0(n, 0.003)
    sched = workdir / f"schedule-redbeat-sustained-{n}.json"
    sched.write_text(json.dumps({"n": n, "t0": t0, "spread": INTERVAL_S, "queue": QUEUE, "interval": INTERVAL_S}))
    consumer, out = start_consumer(args, workdir, f"redbeat-{n}")
    env = dict(os.environ, BENCH_BROKER=bench.BROKER, BENCH_SCHEDULE=str(sched), BENCH_REDBEAT_URL=bench.REDBEAT_URL,
               PYTHONPATH=str(bench.ROOT / "bench"))
    blog = open(workdir / f"redbeat-sustained-{n}.log", "wb")
    proc = subprocess.Popen([args.python, "-m", "celery", "-A", "peers", "beat", "--loglevel", "WARNING",
                             "-S", "redbeat.RedBeatScheduler"], env=env, stdout=blog, stderr=subprocess.STDOUT,
                            cwd=workdir)
    rec = {"system": "redbeat", "n": n, "minutes": minutes}
    w0, w1 = t0 + INTERVAL_S, t0 + INTERVAL_S + minutes * 60
    try:
        time.sleep(max(0.0, w0 - time.time()))
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(max(0.0, w1 - time.time()))
        rec["cpu_cores"] = (cpu_seconds(proc.pid) - cpu0) / (w1 - w0)
        rec["peak_rss_mib"] = peak_rss_mib(proc.pid)
        if proc.poll() is not None:
            rec["error"] = f"beat exited with {proc.returncode}"
    finally:
        bench.stop(proc, blog, redis.Redis(port=REDIS_PORT, db=BROKER_DB))
        seen = stop_consumer(consumer, out)
    sent = sum(1 for t in seen["plain_taken"] if w0 <= t < w1)
    rec["runs_per_s"] = sent / (w1 - w0)
    rec["sent_share"] = sent / (n * (w1 - w0) / INTERVAL_S)
    return rec


def per_second(taken, lags, since):
    """Runs taken off the queue per second and the worst lag in that second (for the plot)."""
    buckets = {}
    for t, lag in zip(taken, lags):
        if t < since:
            continue
        s = int(t - since)
        count, worst = buckets.get(s, (0, 0.0))
        buckets[s] = (count + 1, max(worst, lag))
    return [(s, c, w) for s, (c, w) in sorted(buckets.items())]


def fmt(v, unit=" s", digits=2):
    return "–" if v is None else f"{v:,.{digits}f}{unit}"


def passes_in_window(rec, count_key, seconds_key):
    """(passes, seconds each, seconds apart) of a pass histogram sampled through the window,
    or None if it did not move."""
    samples = [x for x in rec.get("samples", []) if x.get(count_key) is not None]
    if len(samples) < 2 or samples[-1][count_key] <= samples[0][count_key]:
        return None
    count = samples[-1][count_key] - samples[0][count_key]
    took = samples[-1][seconds_key] - samples[0][seconds_key]
    return count, took / count, (samples[-1]["t"] - samples[0]["t"]) / count


def report_sustained(rec, out):
    n = rec["n"]
    lines = [
        "# Scale: sustained load, cold start and failover", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `make bench BENCH_ARGS='--scale sustained "
        f"--n-sustained {n} --minutes {rec['minutes']}'` (bench/sustained.py). {n:,} ScheduledJobs every "
        f"{rec['interval_s']} s, spread over the minute, `historyLimit` {rec['history_limit']}; Redis broker and "
        "result backend; a fast consumer stores every SUCCESS record as Celery does, and a real Celery "
        f"worker runs {SAMPLE_JOBS} sample jobs. Two replicas, lease {rec['lease_s']} s. Postgres autovacuum "
        f"{rec.get('pg_autovacuum', '?')}. Result subscription (`RESULT_SUBSCRIBE`) "
        f"{rec.get('result_subscribe', 'true')}.", "",
        "| scenario | measure | value | target |", "|---|---|---|---|",
        f"| set-up | {n + SAMPLE_JOBS:,} jobs created (no operator running; kube-beat's finalizer in each create, "
        f"as the chart's webhook adds it: {'yes' if rec.get('finalizer_at_create') else 'no'}) | "
        f"{fmt(rec.get('create_s'), ' s', 0)} | – |",
        f"| first start | empty database → every job in Postgres | {fmt(rec.get('first_start_s'), ' s', 1)} "
        f"(CPU {fmt(rec.get('first_start_cpu_s'), ' s', 0)}, peak RSS {fmt(rec.get('first_start_rss_mib'), ' MiB', 0)}) | – |",
        f"| first start | every job in Postgres → finalizers and `Ready` all written (the cold start waits for it) | "
        f"{fmt(rec.get('writes_settled_s'), ' s', 0)} | – |",
        f"| cold start | process start → /readyz | {fmt(rec.get('cold_ready_s'))} | – |",
        f"| cold start | process start → leading | {fmt(rec.get('cold_leading_s'))} | – |",
        f"| cold start | process start → dispatching | {fmt(rec.get('cold_dispatching_s'))} | ≤ 30 s |",
        f"| cold start | peak RSS, first minute | {fmt(rec.get('cold_first_minute_rss_mib'), ' MiB', 0)} | ≤ 150 MiB |",
        f"| sustained | runs published per second ({rec['minutes']} min) | {fmt(rec.get('runs_per_s'), '', 0)} "
        f"(due: {n / rec['interval_s']:,.0f}); runs published / due in that time {fmt(100 * rec['sent_share'], ' %', 0)} | – |",
        f"| sustained | lag (taken off the queue − slot), p50 / p99 / max | {fmt(rec.get('lag_p50_s'))} / "
        f"{fmt(rec.get('lag_p99_s'))} / {fmt(rec.get('lag_max_s'))} | p99 ≤ 0.25 s |",
        f"| sustained | the restarted leader's sweep (every job reconciled): last job handed out at window s | "
        f"{fmt(rec.get('sweep_done_window_s'), ' s', 0)} | – |",
        f"| sustained, after the sweep (from window s {fmt(rec.get('steady_from_window_s'), '', 0)}) | lag p50 / p99 / max | "
        f"{fmt(rec.get('steady_lag_p50_s'))} / {fmt(rec.get('steady_lag_p99_s'))} / {fmt(rec.get('steady_lag_max_s'))} | p99 ≤ 0.25 s |",
        f"| sustained | kube-beat's part of the lag (publish − slot), p50 / p99 (histogram) | "
        f"{fmt(rec.get('dispatch_lag_p50_metric_s'))} / {fmt(rec.get('dispatch_lag_p99_metric_s'))} | – |",
        f"| sustained, after the sweep | kube-beat's part of the lag (publish − slot), p50 / p99 (histogram) | "
        f"{fmt(rec.get('steady_dispatch_lag_p50_metric_s'))} / {fmt(rec.get('steady_dispatch_lag_p99_metric_s'))} | – |",
        f"| sustained | publish → SUCCESS recorded, p50 / p99 (histogram) | {fmt(rec.get('recorded_p50_s'))} / "
        f"{fmt(rec.get('recorded_p99_s'))} | p99 ≤ 2 s |",
        f"| sustained, after the sweep | publish → SUCCESS recorded, p50 / p99 (histogram) | "
        f"{fmt(rec.get('steady_recorded_p50_s'))} / {fmt(rec.get('steady_recorded_p99_s'))} | p99 ≤ 2 s |",
        f"| sustained | leader CPU (average) | {fmt(rec.get('cpu_cores'), ' cores')} | ≤ 0.5 core |",
        f"| sustained | leader RSS (max sampled / peak) | {fmt(rec.get('rss_mib_max'), ' MiB', 0)} / "
        f"{fmt(rec.get('peak_rss_mib'), ' MiB', 0)} | ≤ 200 MiB |",
        f"| sustained | Postgres CPU (average) | {fmt(rec.get('pg_cpu_cores'), ' cores')} | – |",
        f"| sustained | Postgres checkpoints in the window: forced by WAL volume / on schedule (`max_wal_size` "
        f"{rec.get('pg_max_wal_size', '?')}) | {rec.get('pg_checkpoints_requested', '–')} / "
        f"{rec.get('pg_checkpoints_timed', '–')} | – |",
        f"| sustained | status writes/s; 200 random jobs: never written / age p50 | "
        f"{fmt(rec.get('status_writes_per_s'), '', 1)}; {rec.get('status_never_written')} / "
        f"{fmt(rec.get('status_age_p50_s'), ' s', 0)} | `--status-qps` (20) |",
        f"| sustained | job_executions rows (max / end), size | {rec.get('executions_rows_max') or 0:,} / "
        f"{rec.get('executions_rows_end') or 0:,}, {fmt(rec.get('executions_mib'), ' MiB', 0)} | bounded "
        f"(≈ {n * rec['history_limit']:,} + unfinished) |",
        f"| sustained | sample jobs run by the real worker: SUCCESS with its result / finished | "
        f"{rec.get('sample_success_with_result')} / {rec.get('sample_finished')} | all |",
        f"| failover | SIGKILL → follower leading | {fmt(rec.get('failover_leading_s'))} | – |",
        f"| failover | SIGKILL → first run taken off the queue | {fmt(rec.get('failover_first_dispatch_s'))} | "
        f"≤ lease + 1 s ({rec['lease_s'] + 1} s) |",
        f"| failover | SIGKILL → the new leader's published counter first moving (polled every 0.1 s; it "
        f"counts runs once recorded as DISPATCHED, its own or the killed leader's found in the publish "
        f"ledger, not once sent) | "
        f"{fmt(rec.get('failover_publishing_s'))} | – |",
        f"| failover | catch-up: runs over 1 s late, worst | {rec.get('failover_late_runs')}, "
        f"{fmt(rec.get('failover_late_max_s'))} | bounded |",
        f"| failover | new leader's first minute: CPU, RSS (peak) | {fmt(rec.get('failover_cpu_s'), ' s', 1)}, "
        f"{fmt(rec.get('failover_rss_mib'), ' MiB', 0)} ({fmt(rec.get('failover_peak_rss_mib'), ' MiB', 0)}) | – |",
        f"| sizes | Postgres: scheduled_jobs, job_executions, whole database | "
        f"{fmt(rec.get('scheduled_jobs_mib'), ' MiB', 0)}, {fmt(rec.get('executions_mib'), ' MiB', 0)}, "
        f"{fmt(rec.get('database_mib'), ' MiB', 0)}; Redis (broker + results) {fmt(rec.get('redis_mib'), ' MiB', 0)} | – |",
        f"| whole run | slots sent twice / task ids sent twice | {rec.get('duplicate_slots')} / "
        f"{rec.get('duplicate_task_ids')} | 0 |",
    ]
    rb = rec.get("redbeat")
    if rb:
        lines += [
            f"| RedBeat, same load ({rb['minutes']} min) | runs sent per second from its second minute "
            f"(due: {n / rec['interval_s']:,.0f}) | {fmt(rb.get('runs_per_s'), '', 0)} | – |",
            f"| RedBeat, same load | runs sent / runs due in that time | {fmt(100 * rb['sent_share'], ' %', 0)} | – |",
            f"| RedBeat, same load | CPU (average), peak RSS | {fmt(rb.get('cpu_cores'), ' cores')}, "
            f"{fmt(rb.get('peak_rss_mib'), ' MiB', 0)} | – |",
        ]
        if rb.get("error"):
            lines.append(f"| RedBeat | error | {rb['error']} | – |")
    tracker = passes_in_window(rec, "tracker_passes", "tracker_pass_s")
    if tracker:
        count, each, every = tracker
        lines += ["", f"Result tracker in the window: {count:.0f} passes, {each:.1f} s each on average "
                      f"(one every {every:.1f} s)."]
    health = passes_in_window(rec, "health_passes", "health_pass_s")
    if health:
        count, each, every = health
        lines += ["", f"Health monitor in the window: {count:.0f} passes over every job, {each:.2f} s each "
                      f"on average (one every {every:.1f} s)."]
    hinted = [x for x in rec.get("samples", []) if x.get("hints") is not None]
    if len(hinted) >= 2:
        got = hinted[-1]["hints"] - hinted[0]["hints"]
        dropped = (hinted[-1].get("hints_dropped") or 0) - (hinted[0].get("hints_dropped") or 0)
        lines += ["", f"Results announced by the Redis backend in the window and read at once: {got:,.0f} "
                      f"({dropped:,.0f} of them left to the passes because the tracker was behind)."]
    if rec.get("stalls") is not None:
        lines += ["", f"Stalls (seconds of the window in which a run was taken off the queue over 1 s late): "
                      f"{len(rec['stalls'])}, at s {', '.join(f'{t:.0f}' for t in rec['stalls'])}."]
    if rec.get("pg_before_stalls"):
        lines += ["", "Postgres in the 5 s before each stall (pg_stat_activity every 0.25 s; backends per "
                      "sample before the stalls / over the whole window):", "",
                  "| before stalls | whole window | backend | wait | query |", "|---|---|---|---|---|"]
        lines += [f"| {a} | {b} | {backend} | {wait} | `{q.replace('|', '/')}` |"
                  for a, b, backend, wait, q in rec["pg_before_stalls"]]
    for key, p in rec.get("profiles", {}).items():
        lines += ["", f"Where the CPU went — {key} ({p['seconds']} s, `perf record -F 99`, self time by "
                      f"{'process' if p['sort'] == 'comm' else 'function'}, entries ≥ 0.5 %):", ""]
        lines += ["```", *(p.get("top") or [f"perf failed: {p.get('error')}"]), "```"]
    # BENCH_LABEL: a suffix that keeps runs side by side (e.g. an A/B in one session).
    stem = f"scale-sustained-{n}" + (f"-{os.environ['BENCH_LABEL']}" if os.environ.get("BENCH_LABEL") else "")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(rec, indent=1))
    plot_sustained(rec, out / f"{stem}.png")
    return "\n".join(lines)


def plot_sustained(rec, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=False)
    tl = rec.get("timeline") or []
    top.plot([s for s, _, _ in tl], [c for _, c, _ in tl], lw=0.6, label="runs taken off the queue per second")
    top.set_ylabel("runs/s")
    ax2 = top.twinx()
    ax2.plot([s for s, _, _ in tl], [w for _, _, w in tl], lw=0.6, color="tab:red", label="worst lag in the second")
    ax2.set_ylabel("lag, s")
    top.set_xlabel("s since a minute before the sustained window (the kill is at the window's end)")
    top.legend(loc="upper left")
    ax2.legend(loc="upper right")
    s = rec.get("samples") or []
    bottom.plot([x["t"] for x in s], [x["rss_mib"] or 0 for x in s], label="leader RSS, MiB")
    bottom.plot([x["t"] for x in s], [x["executions"] / 1000 for x in s], label="job_executions rows / 1000")
    bottom.set_xlabel("s into the sustained window")
    bottom.legend()
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"sustained: {rec['n']:,} jobs every {rec['interval_s']} s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
