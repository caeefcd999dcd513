"""The peers kube-beat is measured against: Celery beat (its default PersistentScheduler) and
RedBeat, both run as `celery beat` on this module's app.

The schedule is read from BENCH_SCHEDULE (a JSON file the harness writes: n, t0, spread, queue,
and optionally interval in seconds, one hour if absent): entry i runs task `bench.noop` with
args [i], first due at t0 + i * spread / n. Each entry is an ordinary interval whose last run is
set one interval before that time, which is how a beat entry (and a RedBeat entry) states "next
due at T". The bursts use one hour (one run each); the sustained scenario, a minute.
"""

import json
import os
from datetime import datetime, timedelta, timezone

from celery import Celery
from celery.schedules import schedule

app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    timezone="UTC",
    enable_utc=True,
    redbeat_redis_url=os.environ.get("BENCH_REDBEAT_URL", ""),
    # No worker runs: what is measured is when each message reaches the broker.
    task_ignore_result=True,
    beat_schedule={},
)

with open(os.environ["BENCH_SCHEDULE"]) as f:
    spec = json.load(f)

every = timedelta(seconds=spec.get("interval", 3600))
t0 = datetime.fromtimestamp(spec["t0"], tz=timezone.utc)
for i in range(spec["n"]):
    due = t0 + timedelta(seconds=i * spec["spread"] / spec["n"])
    app.conf.beat_schedule[f"bench-{i}"] = {
        "task": "bench.noop",
        "schedule": schedule(run_every=every),
        "args": [i],
        "options": {"queue": spec["queue"]},
        "last_run_at": due - every,
    }
