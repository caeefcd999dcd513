"""Scale scenarios of `make bench` (issue: scale beyond bursts), beside bench.py's bursts.

- `sustained` (bench/sustained.py): N jobs every minute for --minutes with tracking on, then a
  cold start and a failover, on one set-up.
- `apply`: N ScheduledJobs created as fast as the apiserver accepts them (16 clients) while
  kube-beat runs and leads; the clock that matters is from the last create the apiserver
  accepted to the moment every job is in Postgres with its next run (`valid`, `next_run_at`).
  Sampled every 0.5 s, so both curves (created, in Postgres) are plotted.

Run through `make bench BENCH_ARGS='--scale apply --n 10000'` (hack/bench.sh runs this file
instead of bench.py when the arguments name `--scale`).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench
from bench import DB, PG, cpu_seconds, free_port, log, metric, peak_rss_mib, postgres_cpu, postgres_cpu_since, psql


def fresh_database():
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"drop database if exists {DB} with (force)"], check=True)
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"create database {DB}"], check=True)


def start_operator(args, ns, workdir, extra=()):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", BROKER_URL=bench.BROKER,
               RESULT_BACKEND=f"redis://127.0.0.1:{bench.REDIS_PORT}/4", POD_NAME=f"bench-{ns}",
               RUST_LOG="warn")
    logfile = open(workdir / f"operator-{ns}.log", "wb")
    proc = subprocess.Popen([args.kube_beat, "run", "--namespace", ns, "--http-addr", f"127.0.0.1:{port}",
                             "--lease-name", f"bench-{ns}", *extra],
                            env=env, stdout=logfile, stderr=subprocess.STDOUT)
    return proc, port, logfile


def stop_operator(proc, logfile):
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    logfile.close()


MUTATING = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def webhook_args(name, port):
    """`kube-beat run` serving the admission webhook on loopback with its self-signed fallback,
    keeping the caBundle of configuration `name` set (as the chart runs it)."""
    return ["--webhook-addr", f"127.0.0.1:{port}", "--webhook-extra-san", "127.0.0.1",
            "--webhook-secret", f"{name}-ca", "--webhook-configuration", name,
            "--webhook-refresh-seconds", "1"]


def register_finalizer_webhook(kube, name, port, ns):
    """The chart's mutating webhook (the finalizer at create) for namespace `ns`, called at
    https://127.0.0.1:port/mutate; returns once the apiserver calls it (a dry-run create comes
    back with the finalizer): False if it never did."""
    kube.create(MUTATING, {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "finalizer.scheduledjobs.kubebeat.io", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": "Ignore", "reinvocationPolicy": "Never",
            "timeoutSeconds": 5, "matchPolicy": "Equivalent",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate"},
            "rules": [{"apiGroups": ["kubebeat.io"], "apiVersions": ["*"], "operations": ["CREATE"],
                       "resources": ["scheduledjobs"]}],
            "namespaceSelector": {"matchLabels": {"kubebeat.io/bench": ns}},
        }]})
    path = f"/apis/kubebeat.io/v1alpha1/namespaces/{ns}/scheduledjobs?dryRun=All"
    probe = bench.job("probe", 0, ns, int((time.time() + 86_400) * 1000))

    def marked():
        status, data = kube.request("POST", path, probe)
        return status == 201 and "kubebeat.io/cleanup" in json.loads(data)["metadata"].get("finalizers", [])

    return bench.wait_until("the apiserver calling the finalizer webhook", time.time() + 90, marked, every=0.5)


def marked_at_create(port):
    """`kube_beat_admission_reviews_total{kind="ScheduledJob",result="finalizer"}`."""
    series = 'kube_beat_admission_reviews_total{kind="ScheduledJob",result="finalizer"} '
    text = bench.metrics_text(port) or ""
    return next((float(l[len(series):]) for l in text.splitlines() if l.startswith(series)), 0.0)


def run_apply(args, kube, n, workdir, finalizer_at_create, clients=16, timeout=1800):
    """One record: creates/s accepted by the apiserver, jobs/s into Postgres, and the time from
    the last accepted create until every job was in Postgres. With `finalizer_at_create`, the
    chart's mutating webhook puts kube-beat's finalizer on each job in its create."""
    ns = f"apply-{n}-{int(time.time())}"
    fresh_database()
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": ns, "labels": {"kubebeat.io/bench": ns}}})
    hook = f"bench-{ns}"
    extra = webhook_args(hook, free_port()) if finalizer_at_create else []
    op, port, oplog = start_operator(args, ns, workdir, extra)
    rec = {"scenario": "apply", "n": n, "system": "kube-beat", "finalizer_at_create": finalizer_at_create}
    try:
        if not bench.wait_until("the operator leading", time.time() + 60,
                                lambda: metric(port, "kube_beat_leader") == 1):
            rec["error"] = "the operator never led"
            return rec
        if finalizer_at_create and not register_finalizer_webhook(kube, hook, int(extra[1].rsplit(":", 1)[1]), ns):
            rec["error"] = "the apiserver never called the finalizer webhook"
            return rec
        scheduled = lambda: int(psql(DB, "select count(*) from scheduled_jobs where namespace = "
                                         f"'{ns}' and valid and next_run_at is not null") or 0)
        created = [0]
        samples = []  # (seconds since the first create, created, in Postgres)
        stop = threading.Event()

        def sample(t0):
            while not stop.is_set():
                samples.append((time.time() - t0, created[0], scheduled()))
                stop.wait(0.5)

        path = f"/apis/kubebeat.io/v1alpha1/namespaces/{ns}/scheduledjobs"
        # Due in a day: nothing runs during the scenario, only reconcile is measured.
        due_ms = int((time.time() + 86_400) * 1000)
        lock = threading.Lock()

        def create(i):
            kube.create(path, bench.job(f"apply-{i}", i, ns, due_ms))
            with lock:
                created[0] += 1

        cpu0, pg0 = cpu_seconds(op.pid), postgres_cpu()
        first = time.time()
        sampler = threading.Thread(target=sample, args=(first,), daemon=True)
        sampler.start()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(create, range(n)))
        last = time.time()
        ok = bench.wait_until(f"all {n} jobs in Postgres", last + timeout, lambda: scheduled() >= n, every=0.25)
        done = time.time()
        # The finalizer and Ready of each job follow, paced (kube-beat's own apiserver writes).
        waiting_at_done = metric(port, "kube_beat_reconcile_writes_waiting")
        written = ok and bench.wait_until("every job's finalizer and Ready written", done + timeout,
                                          lambda: metric(port, "kube_beat_reconcile_writes_waiting") == 0,
                                          every=1)
        written_at = time.time()
        stop.set()
        sampler.join()
        rec.update({
            "create_s": last - first,
            "creates_per_s": n / (last - first),
            "after_last_create_s": (done - last) if ok else None,
            "to_postgres_s": (done - first) if ok else None,
            "jobs_per_s": n / (done - first) if ok else None,
            "writes_waiting_at_done": waiting_at_done,
            "ready_after_last_create_s": (written_at - last) if written else None,
            "cpu_s": cpu_seconds(op.pid) - cpu0,
            "pg_cpu_s": postgres_cpu_since(pg0),
            "rss_mib": peak_rss_mib(op.pid),
            "status_backlog": metric(port, "kube_beat_status_queue_depth"),
            # How many creates the mutating webhook marked (the whole N when it did its work).
            "marked_at_create": marked_at_create(port) if finalizer_at_create else None,
            "samples": samples,
        })
        if not ok:
            rec["error"] = f"only {scheduled()} of {n} in Postgres {timeout} s after the last create"
    finally:
        stop_operator(op, oplog)
        if finalizer_at_create:
            kube.request("DELETE", f"{MUTATING}/{hook}")
    return rec


def fmt(v, unit="s"):
    return "–" if v is None else f"{v:,.1f} {unit}"


def report_apply(records, out):
    lines = ["# Scale: apply → scheduled", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `make bench BENCH_ARGS='--scale apply'` "
             "(bench/scale.py). N ScheduledJobs created by 16 clients while kube-beat runs and leads; "
             "'after the last create' is from the last create the apiserver accepted until every job "
             "was in Postgres with its next run (target ≤ 10 s). 'finalizer at create': the chart's "
             "mutating webhook (`webhook.finalizerAtCreate`) registered, so kube-beat's own apiserver "
             "writes per new job are its `Ready` only (the validating webhook is not registered in "
             "either).", "",
             "| N | finalizer at create (jobs marked) | created in | creates/s (apiserver) | in Postgres after the last create | "
             "jobs/s into Postgres | finalizer + Ready waiting then | all written after the last create | "
             "operator CPU s | peak RSS | Postgres CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in records:
        at_create = f"yes ({x.get('marked_at_create') or 0:,.0f})" if x.get("finalizer_at_create") else "no"
        lines.append(f"| {x['n']:,} | {at_create} | {fmt(x.get('create_s'))} | {fmt(x.get('creates_per_s'), '')} | "
                     f"{fmt(x.get('after_last_create_s'))} | {fmt(x.get('jobs_per_s'), '')} | "
                     f"{fmt(x.get('writes_waiting_at_done'), '')} | {fmt(x.get('ready_after_last_create_s'))} | "
                     f"{fmt(x.get('cpu_s'), '')} | {fmt(x.get('rss_mib'), 'MiB')} | {fmt(x.get('pg_cpu_s'), '')} |")
        if x.get("error"):
            lines.append(f"|  | | ↳ {x['error']} | | | | | | | | |")
    (out / "scale-apply.md").write_text("\n".join(lines) + "\n")
    (out / "scale-apply.json").write_text(json.dumps(records, indent=1))
    plot_apply(records, out / "scale-apply.png")
    return "\n".join(lines)


def plot_apply(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(records), figsize=(6 * len(records), 4), squeeze=False)
    for ax, x in zip(axes[0], records):
        s = x.get("samples") or []
        ax.plot([t for t, _, _ in s], [c for _, c, _ in s], label="created (apiserver)")
        ax.plot([t for t, _, _ in s], [p for _, _, p in s], label="in Postgres (kube-beat)")
        ax.set_xlabel("s since the first create")
        ax.set_ylabel("ScheduledJobs")
        at_create = ", finalizer at create" if x.get("finalizer_at_create") else ""
        ax.set_title(f"apply → scheduled, N = {x['n']:,}{at_create}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def run_scale(args, kube, workdir):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenarios = args.scale.split(",")
    text = []
    if "apply" in scenarios:
        records = []
        runs = [(int(v), w == "on") for v in args.n.split(",") for w in args.finalizer_at_create.split(",")]
        for n, at_create in runs:
            log(f"scale apply: N={n}, finalizer at create: {at_create}")
            rec = run_apply(args, kube, n, workdir, at_create)
            log(f"  created {fmt(rec.get('create_s'))} ({fmt(rec.get('creates_per_s'), '/s')}), "
                f"in Postgres {fmt(rec.get('after_last_create_s'))} after the last create"
                + (f" ERROR {rec['error']}" if rec.get("error") else ""))
            records.append(rec)
        text.append(report_apply(records, out))
    if "sustained" in scenarios:
        import sustained
        log(f"scale sustained: N={args.n_sustained}, {args.minutes} min")
        rec = sustained.run_sustained(args, kube, workdir)
        if args.redbeat_minutes > 0:
            log(f"scale sustained: RedBeat, N={args.n_sustained}, {args.redbeat_minutes} min")
            rec["redbeat"] = sustained.run_redbeat(args, workdir, args.n_sustained, args.redbeat_minutes)
        text.append(sustained.report_sustained(rec, out))
    return "\n\n".join(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="apply", help="scenarios, comma-separated: apply, sustained")
    ap.add_argument("--n", default="10000,100000", help="apply: job counts, comma-separated")
    ap.add_argument("--finalizer-at-create", default="on", choices=["on", "off", "on,off", "off,on"],
                    help="apply: the chart's mutating webhook adding the finalizer at create; "
                         "'on,off' runs each N both ways; sustained (the first value): the jobs are "
                         "created with the finalizer the webhook would have added")
    ap.add_argument("--n-sustained", type=int, default=100_000, help="sustained: jobs, each every minute")
    ap.add_argument("--minutes", type=float, default=10, help="sustained: the measured window")
    ap.add_argument("--lease", type=int, default=10, help="sustained: Lease duration, seconds")
    ap.add_argument("--settle-max", type=float, default=1200,
                    help="sustained: most seconds to wait for the first start's apiserver writes before the cold start")
    ap.add_argument("--redbeat-minutes", type=float, default=5,
                    help="sustained: RedBeat on the same load for this long (0: not run)")
    ap.add_argument("--profile", action="store_true",
                    help="sustained: perf profiles of the cold start, the window and the failover (needs perf)")
    ap.add_argument("--out", default=str(bench.ROOT / "bench" / "results"))
    args = ap.parse_args()
    args.kube_beat = os.environ.get("KUBE_BEAT")
    args.python = os.environ.get("BENCH_PYTHON", sys.executable)
    workdir = Path(os.environ.get("BENCH_WORK", "/tmp/kube-beat-bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    kube = bench.Kube(os.environ["KUBECONFIG"])
    kube.create("/apis/kubebeat.io/v1alpha1/taskfunctions", {
        "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction", "metadata": {"name": "bench-noop"},
        "spec": {"task": "bench.noop", "queue": bench.QUEUE, "description": "make bench"}})
    kube.create("/apis/kubebeat.io/v1alpha1/taskfunctions", {
        "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction", "metadata": {"name": "bench-sample"},
        "spec": {"task": "bench.sample", "queue": "kb-sample", "description": "make bench: a real worker's queue"}})
    print(run_scale(args, kube, workdir))


if __name__ == "__main__":
    main()
