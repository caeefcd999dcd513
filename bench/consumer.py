"""A consumer fast enough for the sustained scenario (bench/sustained.py): it takes kube-beat's
messages off the Redis bench queue the way a Celery worker's transport does (RPOP: the list is
LPUSHed) and stores each task's SUCCESS record exactly as Celery's Redis result backend does
(`SETEX celery-task-meta-<id> 86400 <json>` and `PUBLISH` of the same JSON, see
shared/celery-wire.md), without running a task body: thousands of runs a second on one core.

What it saw is written on SIGTERM to --out (JSON): when each message was taken off the queue, its
lag (taken off − the slot in its `kubebeat_slot` header), and how many task ids and (job, slot)
pairs arrived more than once. A message without kube-beat's headers (a peer's: RedBeat) is
recorded by when it was taken and its first argument (the bench entry's index).
"""

import argparse
import base64
import json
import signal
import time
from array import array
from datetime import datetime, timezone

import redis

RESULT_TTL = 86_400  # Celery's result_expires default


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("--broker-db", type=int, required=True)
    ap.add_argument("--backend-db", type=int, required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    broker = redis.Redis(port=args.port, db=args.broker_db)
    backend = redis.Redis(port=args.port, db=args.backend_db)
    taken, lags = array("d"), array("d")
    ids, slots = set(), set()
    plain_taken, plain_index = array("d"), array("l")
    dup_ids = dup_slots = unreadable = 0
    slot_cache = {}  # runs of one instant share their slot text

    while not stopping:
        batch = broker.rpop(args.queue, args.batch)
        if not batch:
            time.sleep(0.002)
            continue
        now = time.time()
        done = datetime.now(timezone.utc).isoformat()
        pipe = backend.pipeline(transaction=False)
        for raw in batch:
            try:
                envelope = json.loads(raw)
                headers = envelope["headers"]
                task_id = headers["id"]
                slot, job = headers.get("kubebeat_slot"), headers.get("kubebeat_job")
                if slot is None:
                    index = int(json.loads(base64.b64decode(envelope["body"]))[0][0])
            except (ValueError, KeyError, TypeError, IndexError):
                unreadable += 1
                continue
            if slot is None:
                plain_taken.append(now)
                plain_index.append(index)
            else:
                due = slot_cache.get(slot)
                if due is None:
                    due = slot_cache[slot] = datetime.fromisoformat(slot.replace("Z", "+00:00")).timestamp()
                    if len(slot_cache) > 100_000:
                        slot_cache.clear()
                if task_id in ids:
                    dup_ids += 1
                ids.add(task_id)
                if (job, slot) in slots:
                    dup_slots += 1
                slots.add((job, slot))
                taken.append(now)
                lags.append(now - due)
            meta = json.dumps({"status": "SUCCESS", "result": None, "traceback": None, "children": [],
                               "date_done": done, "task_id": task_id})
            key = f"celery-task-meta-{task_id}"
            pipe.setex(key, RESULT_TTL, meta)
            pipe.publish(key, meta)
        pipe.execute()

    with open(args.out, "w") as f:
        json.dump({"taken": taken.tolist(), "lags": lags.tolist(), "duplicate_task_ids": dup_ids,
                   "duplicate_slots": dup_slots, "unreadable": unreadable,
                   "plain_taken": plain_taken.tolist(), "plain_index": plain_index.tolist()}, f)


if __name__ == "__main__":
    main()
