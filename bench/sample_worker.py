"""The real Celery worker of the sustained scenario (bench/sustained.py): it consumes a sample
queue beside the fast consumer, so the result records kube-beat tracks there are a real
worker's (STARTED, then SUCCESS with a result), keeping the fast consumer's format honest.

Run as `celery -A sample_worker worker -Q kb-sample` with BENCH_BROKER and BENCH_BACKEND set.
"""

import os

from celery import Celery

app = Celery("bench-sample", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BACKEND"])
app.conf.update(timezone="UTC", enable_utc=True, task_track_started=True)


@app.task(name="bench.sample")
def sample(i):
    return {"sample": i}
