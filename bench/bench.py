"""`make bench`: kube-beat against Celery beat and RedBeat, side by side, on this machine.

For each N and workload ("aligned": all N due in the same second; "spread": N due evenly over a
minute) each system schedules the same N runs of `bench.noop(i)`, and the time each message
reaches the broker is taken from Redis itself (keyspace notifications of the LPUSH into the bench
queue, see `Arrivals`), never from the scheduler. No worker consumes. Lag = arrival - due time.

Environment (set by hack/bench.sh): KUBE_BEAT (release binary), KUBECTL, KB_CP_DIR, KB_CP_SCRIPT,
BENCH_PYTHON (the peers' virtualenv), DATABASE_ADMIN_URL (libpq, for createdb).
"""

import argparse
import base64
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "kb-bench"
REDIS_PORT = 6379
BROKER_DB = 3
BROKER = f"redis://127.0.0.1:{REDIS_PORT}/{BROKER_DB}"
REDBEAT_URL = f"redis://127.0.0.1:{REDIS_PORT}/5"
PG = "postgres://postgres@127.0.0.1:5432"
DB = "kube_beat_bench"
SPREAD = {"aligned": 0.0, "spread": 60.0}
HOUR_MS = 3_600_000


def log(*a):
    print(f"[bench {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


# ---- processes: CPU seconds and peak RSS from /proc --------------------------------------------

def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def status_mib(pid, field):
    """A memory figure of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: now), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return None


def peak_rss_mib(pid):
    return status_mib(pid, "VmHWM")


def postgres_cpu():
    """CPU seconds of every Postgres process now (backends come and go; ours are pooled)."""
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout
    return {int(p): cpu_seconds(int(p)) for p in out.split()}


def postgres_cpu_since(before):
    now = postgres_cpu()
    return sum(v - before.get(p, 0.0) for p, v in now.items())


def task_cpu_ns(pid):
    """CPU nanoseconds of every thread of a process (schedstat: finer than /proc/<pid>/stat's
    10 ms ticks, which a burst of under a second needs)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def machine_busy_ns():
    """CPU nanoseconds the whole machine was busy (every core), from /proc/stat: user, nice,
    system, irq, softirq and steal (not idle or iowait); in clock ticks, 10 ms each."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class WindowCpu:
    """Who had the CPU during a burst: each process group's CPU time, sampled every 20 ms from
    `start` on by a thread of its own, read back for any window inside what it saw. The groups:
    the scheduler, every Postgres process, redis-server, and the bench itself (its arrival
    stamps)."""

    EVERY = 0.02

    def __init__(self, groups, start):
        self.groups = groups  # name -> callable returning the pids now
        self.samples = []  # (time, {name: ns})
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()

    def _run(self, start):
        while time.time() < start and not self.done.is_set():
            time.sleep(0.005)
        pids, listed = {}, 0.0
        while not self.done.is_set():
            t = time.time()
            # The pids looked up every half second, not at each sample: a pgrep costs more CPU
            # than the sample, and Postgres backends are pooled (a new one is seen 0.5 s late).
            if t - listed > 0.5:
                pids, listed = {g: list(find()) for g, find in self.groups.items()}, t
            sample = {g: {p: task_cpu_ns(p) for p in ps} for g, ps in pids.items()}
            sample["machine"] = {0: machine_busy_ns()}
            self.samples.append((t, sample))
            self.done.wait(max(0.0, self.EVERY - (time.time() - t)))

    def stop(self):
        self.done.set()
        self.thread.join()

    def between(self, a, b):
        """Core-seconds per group from the last sample at or before `a` to the first at or after
        `b` (so the window read is at most 20 ms wider each side), and that window's length."""
        before = [s for s in self.samples if s[0] <= a]
        after = [s for s in self.samples if s[0] >= b]
        if not before or not after:
            return None, None
        (ta, ca), (tb, cb) = before[-1], after[0]
        # Per process, over those seen at both ends (one that came or went in between is
        # left out rather than counted from zero).
        used = {g: sum(ns - ca.get(g, {})[p] for p, ns in cb[g].items() if p in ca.get(g, {}))
                for g in cb}
        return {g: v / 1e9 for g, v in used.items()}, tb - ta


def pids_of(name):
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# ---- the broker's clock ------------------------------------------------------------------------

class Arrivals:
    """When each message reaches the broker, by Redis's own account: keyspace notifications
    (`notify-keyspace-events Kl`) of the bench list wake a thread that asks Redis for the list's
    length (LLEN) and stamps the reply. Every element counted was in the list by then, so the
    k-th element pushed arrived no later than the first stamp whose length exceeds k (an upper
    bound, tight to one local round trip). Lengths, not notifications, are counted because one
    LPUSH may push many elements (kube-beat's bursts) or one (Celery's producer); elements pushed
    in one transaction or script become visible together, which is when a consumer can first
    see them.

    Not `MONITOR`: it formats every argument of every command, which made one 1,000-message
    publish script take 220 ms instead of 20 ms here, and would charge that to the scheduler."""

    def __init__(self):
        import socket
        self.r = redis.Redis(port=REDIS_PORT)
        self.saved = self.r.config_get("notify-keyspace-events")["notify-keyspace-events"]
        self.r.config_set("notify-keyspace-events", "Kl")
        self.sock = socket.create_connection(("127.0.0.1", REDIS_PORT))
        channel = f"__keyspace@{BROKER_DB}__:{QUEUE}".encode()
        self.sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
        self.samples = []  # (time of the LLEN reply, length)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        lengths = redis.Redis(port=REDIS_PORT, db=BROKER_DB)
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            n = lengths.llen(QUEUE)
            self.samples.append((time.time(), n))

    def stop(self, broker):
        """(arrival time, job index) of every message in the bench list, in push order."""
        time.sleep(0.5)
        import socket
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join()
        self.r.config_set("notify-keyspace-events", self.saved)
        pushed = []
        total = broker.llen(QUEUE)
        for start in range(0, total, 10_000):  # LPUSH: the newest first
            pushed += broker.lrange(QUEUE, -start - 10_000, -start - 1)[::-1]
        result, s = [], 0
        for k, envelope in enumerate(pushed):
            while s < len(self.samples) and self.samples[s][1] <= k:
                s += 1
            if s == len(self.samples):
                log(f"warning: {len(pushed) - k} of {len(pushed)} messages never seen arriving")
                break
            body = json.loads(base64.b64decode(json.loads(envelope)["body"]))
            result.append((self.samples[s][0], int(body[0][0])))
        return result


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def lag_stats(seen, n, t0, spread):
    """Lag per message (first arrival of each index), duplicates, and the summary figures."""
    first = {}
    dups = 0
    for ts, i in seen:
        if i in first:
            dups += 1
        else:
            first[i] = ts
    lags = sorted(ts - (t0 + i * spread / n) for i, ts in first.items())
    arrived = sorted(first.values())
    r = {
        "published": len(first),
        "duplicates": dups,
        "lags": lags,
        "p50": percentile(lags, 50),
        "p90": percentile(lags, 90),
        "p99": percentile(lags, 99),
        "max": lags[-1] if lags else None,
        "all_by": (arrived[-1] - t0) if len(first) == n else None,
    }
    # Dispatches per second: in a burst, the runs over the time until the last was out; spread
    # over a minute the pace is the workload's, not the scheduler's.
    r["rate"] = len(first) / r["all_by"] if spread == 0 and r["all_by"] else None
    return r


# ---- Kubernetes, with the admin token of the local control plane -------------------------------

class Kube:
    def __init__(self, kubeconfig):
        text = Path(kubeconfig).read_text()
        server = next(l.split("server:", 1)[1].strip() for l in text.splitlines() if "server:" in l)
        self.token = next(l.split("token:", 1)[1].strip() for l in text.splitlines() if "token:" in l)
        u = urllib.parse.urlparse(server)
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl._create_unverified_context()  # the local control plane's self-signed cert
        self.local = threading.local()

    def request(self, method, path, body=None):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, OSError):
            self.local.conn = None
            raise
        return resp.status, data

    def create(self, path, obj):
        for attempt in range(20):
            try:
                status, data = self.request("POST", path, obj)
            except (http.client.HTTPException, OSError):
                time.sleep(0.2)
                continue
            if status in (200, 201, 409):
                return
            if status == 429 or status >= 500:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise RuntimeError(f"POST {path}: {status} {data[:300]!r}")
        raise RuntimeError(f"POST {path}: gave up")


def job(name, i, ns, due_ms):
    start_ms = due_ms - HOUR_MS
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start_ms // 1000)) + f".{start_ms % 1000:03d}Z"
    return {
        "apiVersion": "kubebeat.io/v1alpha1",
        "kind": "ScheduledJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"taskFunction": "bench-noop", "schedule": {"interval": {"hours": 1}},
                 "startTime": start, "args": [i]},
    }


def psql(db, sql):
    """The query's output; empty if it failed (e.g. the operator has not made its tables yet)."""
    out = subprocess.run(["psql", f"{PG}/{db}", "-Atqc", sql], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def metrics_text(port):
    """kube-beat's /metrics, or None if it did not answer."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    except OSError:
        return None


def metric(port, name):
    text = metrics_text(port)
    if text is None:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def wait_until(what, deadline, check, every=0.5):
    while time.time() < deadline:
        if check():
            return True
        time.sleep(every)
    log(f"gave up waiting: {what}")
    return False


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- one run per (system, N, workload) ---------------------------------------------------------

def plan_t0(n, setup_per_job):
    """When the runs are due: far enough ahead for the set-up, on a whole second."""
    return float(int(time.time() + 20 + n * setup_per_job))


def finish(rec, arr, r, n, t0, spread, timeout):
    """Wait until all N are on the broker (or the peer timeout), then read the broker's account."""
    deadline = t0 + spread + timeout
    wait_until(f"{rec['system']}: all {n} messages", deadline, lambda: r.llen(QUEUE) >= n, every=0.2)
    rec["timed_out"] = r.llen(QUEUE) < n
    rec.update(lag_stats(arr.stop(r), n, t0, spread))


def stop(proc, logfile, broker):
    """End a scheduler (SIGTERM, then SIGKILL after 30 s) and empty the bench queue."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    logfile.close()
    broker.flushdb()


def run_kube_beat(args, kube, n, workloads, workdir):
    """Both workloads on one set-up: N jobs per workload are created in the apiserver (the
    operator not yet running, so creation is the apiserver's pace alone), then the operator
    starts and reconciles them into Postgres; the aligned burst comes due first, the spread
    minute after it. Returns one record per workload."""
    ns = f"bench-{n}-{int(time.time())}"  # namespaces are never deleted here (no controller-manager)
    r = redis.Redis(port=REDIS_PORT, db=BROKER_DB)
    r.flushdb()
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"drop database if exists {DB} with (force)"], check=True)
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"create database {DB}"], check=True)
    total = n * len(workloads)
    starts, t = {}, plan_t0(total, args.setup_per_job)
    for w in workloads:
        starts[w] = t
        t += SPREAD[w] + 30
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    path = f"/apis/kubebeat.io/v1alpha1/namespaces/{ns}/scheduledjobs"
    specs = [(w, i) for w in workloads for i in range(n)]
    started = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda wi: kube.create(path, job(f"{wi[0]}-{wi[1]}", wi[1], ns, int(
            starts[wi[0]] * 1000 + wi[1] * SPREAD[wi[0]] * 1000 / n))), specs))
    create_s = time.time() - started
    port = free_port()
    env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", BROKER_URL=BROKER,
               RESULT_BACKEND=f"redis://127.0.0.1:{REDIS_PORT}/4", POD_NAME=f"bench-{ns}",
               # BENCH_RUST_LOG=warn,kube_beat::dispatch=debug shows each chunk of a burst.
               RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
    oplog = open(workdir / f"operator-{ns}.log", "wb")
    op = subprocess.Popen([args.kube_beat, "run", "--namespace", ns, "--http-addr", f"127.0.0.1:{port}",
                           "--lease-name", f"bench-{ns}"], env=env, stdout=oplog, stderr=subprocess.STDOUT)
    records = []
    try:
        op_started = time.time()
        count = lambda: int(psql(DB, f"select count(*) from scheduled_jobs where namespace = '{ns}' and valid") or 0)
        ok = wait_until("reconciled into Postgres", starts[workloads[0]] - 5, lambda: count() >= total)
        reconcile_s = time.time() - op_started
        log(f"  {total} ScheduledJobs created in {create_s:.1f} s, reconciled into Postgres in {reconcile_s:.1f} s")
        for w in workloads:
            t0, spread = starts[w], SPREAD[w]
            rec = {"system": "kube-beat", "n": n, "workload": w, "create_s": create_s, "reconciled_s": reconcile_s,
                   "setup_jobs": total}
            records.append(rec)
            if not ok:
                rec["error"] = "set-up did not finish before the runs were due (raise --setup-per-job)"
                continue
            # From before the runs are claimed (up to 5 s ahead), so the claims are counted.
            while time.time() < t0 - 8:
                time.sleep(0.1)
            r.delete(QUEUE)
            arr = Arrivals()
            cpu0, pg0 = cpu_seconds(op.pid), postgres_cpu()
            writes0 = metric(port, "kube_beat_status_writes_total") or 0
            claim0 = (metric(port, "kube_beat_claim_duration_seconds_sum") or 0,
                      metric(port, "kube_beat_claim_duration_seconds_count") or 0,
                      metric(port, "kube_beat_claim_batch_size_sum") or 0)
            pub0 = (metric(port, "kube_beat_publish_duration_seconds_sum") or 0,
                    metric(port, "kube_beat_publish_duration_seconds_count") or 0)
            since = time.time()
            window = WindowCpu({"kube-beat": lambda: [op.pid], "postgres": lambda: pids_of("postgres"),
                                "redis": lambda: pids_of("redis-server"), "bench": lambda: [os.getpid()]},
                               t0 - 0.5)
            try:
                finish(rec, arr, r, n, t0, spread, args.peer_timeout)
            finally:
                window.stop()
            if spread == 0 and rec.get("all_by"):
                # The burst: from its due second until the last message was out.
                rec["window_cpu"], rec["window_s"] = window.between(t0, t0 + rec["all_by"])
            rec["cpu_s"] = cpu_seconds(op.pid) - cpu0
            rec["pg_cpu_s"] = postgres_cpu_since(pg0)
            # Where the time went (the operator's own histograms, over this workload's window).
            rec["claim_s"] = (metric(port, "kube_beat_claim_duration_seconds_sum") or 0) - claim0[0]
            rec["claims"] = (metric(port, "kube_beat_claim_duration_seconds_count") or 0) - claim0[1]
            rec["claimed"] = (metric(port, "kube_beat_claim_batch_size_sum") or 0) - claim0[2]
            rec["publish_s"] = (metric(port, "kube_beat_publish_duration_seconds_sum") or 0) - pub0[0]
            rec["publishes"] = (metric(port, "kube_beat_publish_duration_seconds_count") or 0) - pub0[1]
            # Status is written beside dispatch, rate-limited (--status-qps): its pace over the
            # run and 10 s after it.
            time.sleep(10)
            writes = (metric(port, "kube_beat_status_writes_total") or 0) - writes0
            rec["status_writes_per_s"] = writes / (time.time() - since)
            rec["status_backlog"] = metric(port, "kube_beat_status_queue_depth")
            rec["rss_mib"] = peak_rss_mib(op.pid)
    finally:
        stop(op, oplog, r)
    return records


def run_peer(args, system, n, workload, workdir):
    spread = SPREAD[workload]
    rec = {"system": system, "n": n, "workload": workload}
    r = redis.Redis(port=REDIS_PORT, db=BROKER_DB)
    r.flushdb()
    redis.Redis.from_url(REDBEAT_URL).flushdb()
    t0 = plan_t0(n, args.peer_setup_per_job)
    sched = workdir / f"schedule-{system}-{workload}-{n}.json"
    sched.write_text(json.dumps({"n": n, "t0": t0, "spread": spread, "queue": QUEUE}))
    state = workdir / f"beat-{workload}-{n}"
    for suffix in ("", ".db", ".dat", ".dir", ".bak"):
        Path(str(state) + suffix).unlink(missing_ok=True)
    cmd = [args.python, "-m", "celery", "-A", "peers", "beat", "--loglevel", "WARNING"]
    cmd += ["-S", "redbeat.RedBeatScheduler"] if system == "redbeat" else ["-s", str(state)]
    env = dict(os.environ, BENCH_BROKER=BROKER, BENCH_SCHEDULE=str(sched), BENCH_REDBEAT_URL=REDBEAT_URL,
               PYTHONPATH=str(ROOT / "bench"))
    blog = open(workdir / f"{system}-{workload}-{n}.log", "wb")
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=blog, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        while time.time() < t0 - 3:
            time.sleep(0.1)
        arr = Arrivals()
        cpu0 = cpu_seconds(proc.pid)
        rec["create_s"] = None
        rec["reconciled_s"] = None
        finish(rec, arr, r, n, t0, spread, args.peer_timeout)
        rec["cpu_s"] = cpu_seconds(proc.pid) - cpu0
        rec["rss_mib"] = peak_rss_mib(proc.pid)
        if proc.poll() is not None:
            rec["error"] = f"beat exited with {proc.returncode} (log {blog.name})"
    finally:
        stop(proc, blog, r)
    rec["wall_s"] = time.time() - started
    return rec


# ---- failover: SIGKILL the leader of two replicas ----------------------------------------------

def run_failover(args, kube, workdir, jobs=200, kills=3):
    ns = "bench-failover"
    r = redis.Redis(port=REDIS_PORT, db=BROKER_DB)
    r.flushdb()
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"drop database if exists {DB} with (force)"], check=True)
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"create database {DB}"], check=True)
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    path = f"/apis/kubebeat.io/v1alpha1/namespaces/{ns}/scheduledjobs"
    for i in range(jobs):
        kube.create(path, {"apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
                           "metadata": {"name": f"tick-{i}", "namespace": ns},
                           "spec": {"taskFunction": "bench-noop", "schedule": {"interval": {"seconds": 1}},
                                    "args": [i]}})
    procs = {}

    def start(name):
        port = free_port()
        env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", BROKER_URL=BROKER,
                   RESULT_BACKEND=f"redis://127.0.0.1:{REDIS_PORT}/4", POD_NAME=name, RUST_LOG="info")
        out = open(workdir / f"failover-{name}.log", "ab")
        procs[name] = (subprocess.Popen([args.kube_beat, "run", "--namespace", ns, "--http-addr",
                                         f"127.0.0.1:{port}", "--lease-name", "bench-failover",
                                         "--lease-duration-seconds", str(args.lease),
                                         "--renew-deadline-seconds", str(args.lease - 1),
                                         "--retry-period-seconds", "1"],
                                        env=env, stdout=out, stderr=subprocess.STDOUT), port)

    def leader():
        for name, (p, port) in procs.items():
            if p.poll() is None and metric(port, "kube_beat_leader") == 1:
                return name
        return None

    results = []
    try:
        start("replica-a")
        start("replica-b")
        for k in range(kills):
            if not wait_until("a leader", time.time() + 60, lambda: leader() is not None):
                break
            time.sleep(5)
            name = leader()
            r.delete(QUEUE)
            arr = Arrivals()
            time.sleep(1)
            killed_at = time.time()
            procs[name][0].kill()
            procs[name][0].wait()
            time.sleep(args.lease + 6)
            after = [ts for ts, _ in arr.stop(r) if ts > killed_at]
            gap = (after[0] - killed_at) if after else None
            results.append(gap)
            log(f"failover {k + 1}: first dispatch by the new leader {gap:.2f} s after SIGKILL" if gap else
                f"failover {k + 1}: no dispatch within {args.lease + 6} s")
            start(name)  # back to two replicas
    finally:
        for p, _ in procs.values():
            p.kill()
            p.wait()
        r.flushdb()
    return {"lease_s": args.lease, "gaps": results}


# ---- report ------------------------------------------------------------------------------------

def fmt_s(v, digits=3):
    if v is None:
        return "–"
    if v < 1:
        return f"{v * 1000:.0f} ms" if v >= 0.0095 else f"{v * 1000:.1f} ms"
    return f"{v:.{digits if v < 10 else 1}f} s"


def report(records, failover, out, machine, notes=()):
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# kube-beat benchmark results", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}. Redis broker; lag is the "
             "time Redis notified each LPUSH (keyspace notification) minus the run's due time; no worker "
             "consumed. "
             "Produced by `make bench` (bench/bench.py).", "",
             "| N | workload | system | published | p50 | p90 | p99 | max | all published after due | "
             "dispatch/s | CPU s | peak RSS | Postgres CPU s | status writes/s | set-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in records:
        setup = "–"
        if x.get("create_s") is not None:
            setup = (f"{x['setup_jobs']:,} jobs: created {x['create_s']:.0f} s, "
                     f"then in Postgres {x['reconciled_s']:.0f} s")
        pub = f"{x.get('published', 0)}/{x['n']}"
        if x.get("timed_out"):
            pub += " (timed out)"
        if x.get("duplicates"):
            pub += f", {x['duplicates']} dup"
        rate = f"{x['rate']:,.0f}" if x.get("rate") else "–"
        rss = f"{x['rss_mib']:.0f} MiB" if x.get("rss_mib") else "–"
        pg = f"{x['pg_cpu_s']:.1f}" if x.get("pg_cpu_s") is not None else "–"
        sw = f"{x['status_writes_per_s']:.0f}" if x.get("status_writes_per_s") else "–"
        lines.append(f"| {x['n']:,} | {x['workload']} | {x['system']} | {pub} | {fmt_s(x.get('p50'))} | "
                     f"{fmt_s(x.get('p90'))} | {fmt_s(x.get('p99'))} | {fmt_s(x.get('max'))} | "
                     f"{fmt_s(x.get('all_by'))} | {rate} | {x.get('cpu_s', 0):.1f} | {rss} | {pg} | {sw} | {setup} |")
        if x.get("error"):
            lines.append(f"|  |  | ↳ {x['error']} | | | | | | | | | | | | |")
    lines += ["", "Where kube-beat's time went (its own histograms, from 8 s before the runs were due "
              "until the last was out):", ""]
    for x in records:
        if x["system"] == "kube-beat" and x.get("claims"):
            if x.get("claimed"):
                per_job = f"{x['claim_s'] / x['claimed'] * 1e6:.0f} µs per job claimed"
            else:  # a run whose window began 3 s before the runs: earlier claims not in it
                per_job = "claims more than 3 s ahead not counted"
            lines.append(f"- N={x['n']:,} {x['workload']}: {x['claims']:.0f} claim transactions, "
                         f"{x['claim_s']:.2f} s ({per_job}); "
                         f"{x['publishes']:.0f} publishes, {x['publish_s']:.2f} s; status writes "
                         f"{x.get('status_writes_per_s') or 0:.0f}/s, {x.get('status_backlog') or 0:.0f} "
                         "jobs still waiting for a status write 10 s after the run")
            if x.get("window_cpu"):
                used = dict(x["window_cpu"])
                busy = used.pop("machine", None)
                ours = sum(used.values())
                line = (f"  - who had the {os.cpu_count()} cores from the due second until the last "
                        f"message was out ({x['window_s']:.2f} s as sampled, every 20 ms, so "
                        f"{os.cpu_count() * x['window_s']:.2f} core-seconds): "
                        + ", ".join(f"{g} {v:.2f} s" for g, v in used.items()))
                if busy is not None:
                    line += (f"; every other process {max(0.0, busy - ours):.2f} s; idle "
                             f"{max(0.0, os.cpu_count() * x['window_s'] - busy):.2f} s "
                             "(/proc/stat, 10 ms ticks)")
                lines.append(line)
    lines += ["", "Ratios (p99 lag of the peer / p99 lag of kube-beat, same N and workload):", ""]
    by = {(x["system"], x["n"], x["workload"]): x for x in records}
    for (system, n, w), x in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        kb = by.get(("kube-beat", n, w))
        if system == "kube-beat" or not kb or not kb.get("p99") or x.get("p99") is None:
            continue
        note = " (peer timed out: its p99 is over the runs it published)" if x.get("timed_out") else ""
        ratio = x["p99"] / max(kb["p99"], 1e-4)
        ratio = f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.2g}"
        lines.append(f"- N={n:,} {w}: {system} p99 {fmt_s(x['p99'])} vs kube-beat {fmt_s(kb['p99'])} = "
                     f"**{ratio}×**{note}")
    if failover:
        gaps = [g for g in failover["gaps"] if g is not None]
        lines += ["", f"Failover (2 replicas, 200 jobs every second, lease {failover['lease_s']} s, leader "
                  "SIGKILLed): first dispatch by the new leader after "
                  + ", ".join(fmt_s(g) for g in failover["gaps"] if g is not None)
                  + (f" (target ≤ {failover['lease_s'] + 1} s)" if gaps else "")]
    if notes:
        lines += ["", "Notes on this run:", ""] + [f"- {n}" for n in notes]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(
        [{k: v for k, v in x.items() if k != "lags"} for x in records] + ([{"failover": failover}] if failover else []),
        indent=1))
    plot(records, out / "lag.png")
    return "\n".join(lines)


def plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = sorted({x["n"] for x in records})
    workloads = [w for w in SPREAD if any(x["workload"] == w for x in records)]
    fig, axes = plt.subplots(len(workloads), len(ns), figsize=(5 * len(ns), 4 * len(workloads)), squeeze=False)
    colors = {"kube-beat": "tab:blue", "redbeat": "tab:orange", "beat": "tab:red"}
    for row, w in enumerate(workloads):
        for col, n in enumerate(ns):
            ax = axes[row][col]
            for x in records:
                if x["n"] == n and x["workload"] == w and x.get("lags"):
                    lags = [max(v, 1e-4) for v in x["lags"]]
                    frac = [(k + 1) / n for k in range(len(lags))]
                    ax.plot(lags, frac, label=x["system"], color=colors.get(x["system"]))
            ax.set_xscale("log")
            ax.set_xlabel("lag (s, log scale)")
            ax.set_ylabel("fraction of the N runs published")
            ax.set_title(f"N = {n:,}, {w}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1000,10000,100000")
    ap.add_argument("--workloads", default="aligned,spread")
    ap.add_argument("--systems", default="kube-beat,redbeat,beat")
    ap.add_argument("--peer-timeout", type=float, default=900, help="seconds after the last due time")
    ap.add_argument("--setup-per-job", type=float, default=0.02,
                    help="seconds of set-up allowed per job before the runs are due")
    ap.add_argument("--peer-setup-per-job", type=float, default=0.002,
                    help="seconds per entry a peer gets to start before its runs are due")
    ap.add_argument("--failover", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--merge", action="store_true",
                    help="keep the other records of the results already in --out")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    ap.add_argument("--report-only", action="store_true",
                    help="with --merge: only rewrite the report from the results in --out")
    ap.add_argument("--shared-setup", action="store_true",
                    help="kube-beat: create the jobs of every workload in one set-up")
    ap.add_argument("--lease", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--machine", default=f"{os.cpu_count()} cores")
    args = ap.parse_args()
    args.kube_beat = os.environ.get("KUBE_BEAT")
    args.python = os.environ.get("BENCH_PYTHON", sys.executable)
    workdir = Path(os.environ.get("BENCH_WORK", "/tmp/kube-beat-bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    kube = None
    if not args.report_only:
        kube = Kube(os.environ["KUBECONFIG"])
        kube.create("/apis/kubebeat.io/v1alpha1/taskfunctions", {
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction", "metadata": {"name": "bench-noop"},
            "spec": {"task": "bench.noop", "queue": QUEUE, "description": "make bench"}})
    records = []
    if args.merge:
        # Keep the records of an earlier run that this one does not measure again (their lag
        # distributions, for the plot, are kept beside the work files).
        old = json.loads((Path(args.out) / "results.json").read_text())
        for x in old:
            if "failover" in x:
                continue
            lags = workdir / f"lags-{x['system']}-{x['n']}-{x['workload']}.json"
            x["lags"] = json.loads(lags.read_text()) if lags.exists() else []
            records.append(x)
    workloads = args.workloads.split(",")
    for n in [] if args.report_only else [int(v) for v in args.n.split(",")]:
        for system in args.systems.split(","):
            log(f"{system}: N={n} {'+'.join(workloads)}")
            # kube-beat: one set-up for all workloads when it fits (--shared-setup), else one each.
            if system != "kube-beat":
                recs = [run_peer(args, system, n, w, workdir) for w in workloads]
            elif args.shared_setup:
                recs = run_kube_beat(args, kube, n, workloads, workdir)
            else:
                recs = [r for w in workloads for r in run_kube_beat(args, kube, n, [w], workdir)]
            for rec in recs:
                (workdir / f"lags-{rec['system']}-{n}-{rec['workload']}.json").write_text(
                    json.dumps(rec.get("lags", [])))
            done = {(x["system"], x["n"], x["workload"]) for x in recs}
            records = [x for x in records if (x["system"], x["n"], x["workload"]) not in done]
            for rec in recs:
                log(f"  {rec['workload']}: published {rec.get('published')}/{n} p50 {fmt_s(rec.get('p50'))} "
                    f"p99 {fmt_s(rec.get('p99'))} max {fmt_s(rec.get('max'))} rss {rec.get('rss_mib')}"
                    + (f" ERROR {rec['error']}" if rec.get("error") else ""))
            records += recs
            report(records, None, Path(args.out), args.machine)
    order = {"kube-beat": 0, "redbeat": 1, "beat": 2}
    records.sort(key=lambda x: (x["n"], x["workload"], order.get(x["system"], 9)))
    failover = run_failover(args, kube, workdir) if args.failover and not args.report_only else None
    if failover is None and args.merge:
        failover = next((x["failover"] for x in json.loads((Path(args.out) / "results.json").read_text())
                         if "failover" in x), None)
    print(report(records, failover, Path(args.out), args.machine, args.note))


if __name__ == "__main__":
    main()
