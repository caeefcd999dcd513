"""The guard in a real Celery worker (in-process, solo pool) consuming a real Redis broker, with
its claims in real Redis and real Postgres.

A broker redelivery is the same message again: same task id, same attempt. The tests send a
message with kube-beat's headers twice under one task id, which the guard cannot tell from a
redelivery, and count how often the body ran.

Environment: KB_REDIS_URL (redis://127.0.0.1:6379), KB_PG_BASE (postgres://postgres@127.0.0.1:5432).
Run: python -m unittest discover -s python/tests (from the repository, the package on the path).
"""

import os
import threading
import time
import unittest
import uuid

import celery
import psycopg2
from celery import Celery
from celery.contrib.testing.worker import start_worker

import kube_beat_celery
from kube_beat_celery import stores

REDIS = os.environ.get("KB_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
PG_BASE = os.environ.get("KB_PG_BASE", "postgres://postgres@127.0.0.1:5432").rstrip("/")
HEADERS = {"kubebeat_job": "team-a/nightly", "kubebeat_slot": "2026-12-04T00:00:00Z",
           "kubebeat_trigger": "schedule"}
# Nothing listens here (tests run on loopback only).
DEAD_REDIS = "redis://127.0.0.1:1/0"
DEAD_PG = "postgresql://postgres@127.0.0.1:1/none"


def pg_url(db):
    return "%s/%s" % (PG_BASE.replace("postgres://", "postgresql://", 1), db)


class Database:
    """A database of its own (kbt_ prefix: `make test` drops leftovers)."""

    def __init__(self):
        self.name = "kbt_guard_%s" % uuid.uuid4().hex[:10]
        admin = psycopg2.connect(pg_url("postgres"))
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute('CREATE DATABASE "%s"' % self.name)
        admin.close()
        self.url = pg_url(self.name)

    def drop(self):
        admin = psycopg2.connect(pg_url("postgres"))
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.name)
        admin.close()


class Harness:
    """An app with the guard installed, its tasks, and a worker consuming its own queue."""

    def __init__(self, store_url, policy="fail-open", stale_after=3600):
        self.ran = []
        self.lock = threading.Lock()
        self.queue = "kbt-guard-%s" % uuid.uuid4().hex[:10]
        app = Celery("kbt_guard_%s" % self.queue)
        app.conf.update(
            broker_url=REDIS + "/14",
            result_backend=REDIS + "/13",
            task_default_queue=self.queue,
            task_serializer="json",
            accept_content=["json"],
            worker_hijack_root_logger=False,
            broker_connection_retry_on_startup=True,
            kube_beat_guard_url=store_url,
            kube_beat_guard_policy=policy,
            kube_beat_guard_stale_after=stale_after,
        )
        self.guard = kube_beat_celery.install(app)
        harness = self

        @app.task(name="kbt.body", bind=True)
        def body(self, tag):
            with harness.lock:
                harness.ran.append((tag, self.request.id, self.request.retries))
            return tag

        @app.task(name="kbt.late", bind=True, acks_late=True)
        def late(self, tag):
            with harness.lock:
                harness.ran.append((tag, self.request.id, self.request.retries))
            return tag

        @app.task(name="kbt.retry_once", bind=True, max_retries=3)
        def retry_once(self, tag):
            with harness.lock:
                harness.ran.append((tag, self.request.id, self.request.retries))
            if self.request.retries == 0:
                raise self.retry(countdown=0)
            return tag

        app.loader.import_module("celery.contrib.testing.tasks")
        self.app, self.body, self.late, self.retry_once = app, body, late, retry_once

    def send(self, task, tag, task_id, headers=HEADERS):
        return task.apply_async((tag,), task_id=task_id, headers=dict(headers or {}))

    def runs(self, tag):
        with self.lock:
            return [r for r in self.ran if r[0] == tag]

    def wait(self, what, check, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise AssertionError("timed out waiting for %s (ran: %r)" % (what, self.ran))

    def worker(self):
        return start_worker(
            self.app, pool="solo", concurrency=1, perform_ping_check=False,
            queues=[self.queue], loglevel="WARNING",
        )


class GuardCases:
    """The same cases on each store (subclasses say which)."""

    def store_url(self):
        raise NotImplementedError

    def test_a_second_delivery_of_a_kube_beat_run_is_skipped(self):
        h = Harness(self.store_url())
        tid = str(uuid.uuid4())
        with h.worker():
            h.send(h.body, "once", tid)
            h.wait("the first run", lambda: len(h.runs("once")) == 1)
            h.send(h.body, "once", tid)
            h.send(h.body, "once", tid)
            h.wait("two suppressions", lambda: h.guard.stats.suppressed == 2)
            # A marker sent after the duplicates ran: they were handled before it.
            h.send(h.body, "marker", str(uuid.uuid4()))
            h.wait("the marker", lambda: h.runs("marker"))
        self.assertEqual(len(h.runs("once")), 1, h.ran)
        self.assertEqual(h.guard.store.duplicates(tid, 0), 2)
        # The result backend keeps the first run's record.
        self.assertEqual(h.app.AsyncResult(tid).get(timeout=5), "once")

    def test_messages_without_kube_beat_headers_pass_untouched(self):
        h = Harness(self.store_url())
        tid = str(uuid.uuid4())
        with h.worker():
            h.send(h.body, "plain", tid, headers=None)
            h.send(h.body, "plain", tid, headers=None)
            h.wait("both runs", lambda: len(h.runs("plain")) == 2)
        self.assertEqual(h.guard.stats.guarded, 0)
        self.assertEqual(h.guard.stats.suppressed, 0)

    def test_a_retry_is_a_new_attempt_not_a_duplicate(self):
        h = Harness(self.store_url())
        tid = str(uuid.uuid4())
        with h.worker():
            h.send(h.retry_once, "retry", tid)
            h.wait("attempt 0 and its retry", lambda: len(h.runs("retry")) == 2)
            self.assertEqual([r[2] for r in h.runs("retry")], [0, 1])
            self.assertEqual(h.guard.stats.suppressed, 0)
            # Celery 5 keeps kube-beat's headers on a retry, so the retry is guarded too; Celery
            # 4 drops them, and the retry passes unguarded (python/README.md says so).
            self.assertEqual(h.guard.stats.guarded, 2 if celery.VERSION >= (5,) else 1)
            # A redelivery of attempt 0 (it ran, and asked for the retry) is a duplicate.
            h.send(h.retry_once, "retry", tid)
            h.wait("the suppression", lambda: h.guard.stats.suppressed == 1)
        self.assertEqual(len(h.runs("retry")), 2, h.ran)

    def claim_running(self, h, tid, age):
        """A claim held by a run on another worker that started `age` seconds ago."""
        raise NotImplementedError

    def test_acks_late_takes_over_a_stale_run_and_early_ack_never_does(self):
        h = Harness(self.store_url(), stale_after=30)
        stale, fresh, early = (str(uuid.uuid4()) for _ in range(3))
        self.claim_running(h, stale, age=120)
        self.claim_running(h, fresh, age=1)
        self.claim_running(h, early, age=120)
        with h.worker():
            h.send(h.late, "stale", stale)
            h.send(h.late, "fresh", fresh)
            h.send(h.body, "early", early)
            h.send(h.body, "marker", str(uuid.uuid4()))
            h.wait("the marker", lambda: h.runs("marker"))
        self.assertEqual(len(h.runs("stale")), 1, "a stale acks_late run is run again")
        self.assertEqual(h.guard.stats.taken_over, 1)
        self.assertEqual(h.runs("fresh"), [], "a running acks_late run is not run twice")
        self.assertEqual(h.guard.stats.deferred, 1, "its delivery is sent again for later")
        self.assertEqual(h.runs("early"), [], "an early-ack run that started is never rerun")
        self.assertEqual(h.guard.stats.suppressed, 1)

    def test_an_acks_late_run_whose_worker_died_runs_once_its_claim_goes_stale(self):
        h = Harness(self.store_url(), stale_after=2)
        tid = str(uuid.uuid4())
        # Claimed 1.2 s ago by a worker that died: the redelivery is deferred (sent again in
        # 1 s), and by then the claim is stale: taken over, run once.
        self.claim_running(h, tid, age=1.2)
        with h.worker():
            h.send(h.late, "orphan", tid)
            h.wait("the run after the deferral", lambda: h.runs("orphan"), timeout=30)
            h.send(h.body, "marker", str(uuid.uuid4()), headers=None)
            h.wait("the marker", lambda: h.runs("marker"))
        self.assertEqual(len(h.runs("orphan")), 1, h.ran)
        self.assertGreaterEqual(h.guard.stats.deferred, 1)
        self.assertEqual(h.guard.stats.taken_over, 1)


class RedisStoreTest(GuardCases, unittest.TestCase):
    def store_url(self):
        return REDIS + "/12"

    def claim_running(self, h, tid, age):
        import json

        import redis

        client = redis.Redis.from_url(self.store_url())
        key = "kube-beat-guard:%s:0" % tid
        client.set(key, json.dumps({"w": "celery@elsewhere", "t": time.time() - age,
                                    "s": "running"}), ex=600)


class PostgresStoreTest(GuardCases, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = Database()

    @classmethod
    def tearDownClass(cls):
        cls.db.drop()

    def store_url(self):
        return self.db.url

    def claim_running(self, h, tid, age):
        conn = psycopg2.connect(self.db.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(stores.SCHEMA)
            cur.execute(
                "INSERT INTO guard_claims (task_id, attempt, worker, claimed_at)"
                " VALUES (%s, 0, 'celery@elsewhere', now() - make_interval(secs => %s))",
                (tid, age),
            )
        conn.close()

    def test_the_table_records_what_the_guard_saw(self):
        h = Harness(self.store_url())
        tid = str(uuid.uuid4())
        with h.worker():
            h.send(h.body, "seen", tid)
            h.wait("the run", lambda: h.runs("seen"))
            h.send(h.body, "seen", tid)
            h.wait("the suppression", lambda: h.guard.stats.suppressed == 1)
        conn = psycopg2.connect(self.db.url)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT state, job, slot, duplicates, last_duplicate_worker IS NOT NULL,"
                " finished_at IS NOT NULL FROM guard_claims WHERE task_id = %s", (tid,))
            self.assertEqual(cur.fetchall(),
                             [("done", "team-a/nightly", "2026-12-04T00:00:00Z", 1, True, True)])
        conn.close()


class StoreOutageTest(unittest.TestCase):
    """A store that does not answer: the policy decides, quickly; the worker goes on."""

    def outage(self, url, policy):
        h = Harness(url, policy=policy)
        tid = str(uuid.uuid4())
        with h.worker():
            started = time.monotonic()
            result = h.send(h.body, "outage", tid)
            # Unguarded (no kube-beat headers): runs whatever the store does.
            h.send(h.body, "marker", str(uuid.uuid4()), headers=None)
            h.wait("the marker", lambda: h.runs("marker"))
            took = time.monotonic() - started
        self.assertLess(took, 15, "a dead store cost %.1f s" % took)
        self.assertGreaterEqual(h.guard.stats.store_errors, 1)
        return h, result

    # One worker per process (see run_each.py): one case per store and policy.
    def fail_open(self, url):
        h, result = self.outage(url, "fail-open")
        self.assertEqual(len(h.runs("outage")), 1, url)
        self.assertEqual(result.get(timeout=5), "outage")

    def fail_closed(self, url):
        h, result = self.outage(url, "fail-closed")
        self.assertEqual(h.runs("outage"), [], url)
        with self.assertRaises(Exception) as failed:
            result.get(timeout=5)
        self.assertIn("fail-closed", str(failed.exception))

    def test_fail_open_on_redis_runs_the_body_and_counts_the_error(self):
        self.fail_open(DEAD_REDIS)

    def test_fail_open_on_postgres_runs_the_body_and_counts_the_error(self):
        self.fail_open(DEAD_PG)

    def test_fail_closed_on_redis_does_not_run_the_body_and_fails_the_task(self):
        self.fail_closed(DEAD_REDIS)

    def test_fail_closed_on_postgres_does_not_run_the_body_and_fails_the_task(self):
        self.fail_closed(DEAD_PG)

    def silent(self, scheme):
        """A store that accepts connections and never answers: the guard's timeouts decide."""
        import socket

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        h, _ = self.outage("%s://127.0.0.1:%d/0" % (scheme, port), "fail-open")
        self.assertEqual(len(h.runs("outage")), 1)

    def test_a_silent_redis_costs_a_timeout_not_a_hung_worker(self):
        self.silent("redis")

    def test_a_silent_postgres_costs_a_timeout_not_a_hung_worker(self):
        self.silent("postgresql")

    def test_the_store_password_is_masked_in_celerys_configuration(self):
        h = Harness("redis://:s3cret-pw@127.0.0.1:1/0")
        shown = str(h.app.conf.kube_beat_guard_url)
        self.assertNotIn("s3cret-pw", shown)
        self.assertIn("127.0.0.1:1", shown)

    def test_a_bad_policy_or_url_is_refused_at_install(self):
        with self.assertRaises(ValueError):
            Harness(REDIS + "/12", policy="maybe")
        with self.assertRaises(ValueError):
            stores.open_store("mysql://x/y", 60)


if __name__ == "__main__":
    unittest.main()
