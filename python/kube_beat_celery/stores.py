"""Where the guard claims task ids: Redis (SET NX with a TTL, one Lua script per claim) or
Postgres (a table with a unique key; kube-beat's own database may serve, and kube-beat then
shows what the guard suppressed on each run).

Every store call is bounded by short connect and command timeouts, so a store that hangs costs a
task at most a few seconds, never a stuck worker; the guard then applies its policy.
"""

import json
import os
import random
import threading
from urllib.parse import urlsplit

#: What a claim decided.
RUN = "run"  # first delivery of this attempt: run the body
TAKEOVER = "takeover"  # an acks_late redelivery of an attempt whose run went stale: run again
DUPLICATE = "duplicate"  # this attempt already ran (or runs elsewhere): skip the body
DEFER = "defer"  # acks_late: the attempt's run is still going (or died recently): ask again later

#: Seconds a store may take to connect or answer.
TIMEOUT = 2.0


class StoreError(Exception):
    """The store could not decide (unreachable, timed out, refused)."""


def open_store(url, ttl, timeout=TIMEOUT):
    """The store for ``url``: ``redis://`` / ``rediss://`` / ``unix://`` or
    ``postgres://`` / ``postgresql://``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, ttl, timeout)
    if scheme in ("postgres", "postgresql"):
        return PostgresStore(url, ttl, timeout)
    raise ValueError(
        "kube_beat_guard_url: a redis:// or postgresql:// URL is needed, not %r scheme" % scheme
    )


# The whole claim in one round trip, atomic on the server, on the server's clock (workers'
# clocks may differ): take the key if free; for acks_late (ARGV[3] >= 0) take over a running
# claim older than ARGV[3] seconds, or defer while it is younger; else count a duplicate.
_CLAIM = """
local ttl, stale = tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local mine = cjson.decode(ARGV[1])
mine.t = now
local value = cjson.encode(mine)
if redis.call('SET', KEYS[1], value, 'NX', 'EX', ttl) then return {'run', ''} end
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], value, 'EX', ttl)
  return {'run', ''}
end
local ok, held = pcall(cjson.decode, current)
if not ok then held = {} end
if stale >= 0 and held.s == 'running' then
  if (now - (tonumber(held.t) or now)) > stale then
    redis.call('SET', KEYS[1], value, 'EX', ttl)
    return {'takeover', held.w or ''}
  end
  return {'defer', held.w or ''}
end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ttl)
return {'duplicate', held.w or ''}
"""

# A claim's run ended: marked done (kept until its TTL), so it is never taken over.
_FINISH = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, held = pcall(cjson.decode, current)
if not ok then return 0 end
held.s = 'done'
redis.call('SET', KEYS[1], cjson.encode(held), 'KEEPTTL')
return 1
"""


class RedisStore:
    """Claims as ``kube-beat-guard:<task id>:<attempt>`` keys holding who claimed it and when,
    with a TTL; duplicates counted in ``...:duplicates`` beside them."""

    prefix = "kube-beat-guard:"

    def __init__(self, url, ttl, timeout):
        import redis  # the worker's own Redis client (celery[redis])

        self.ttl = int(ttl)
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._claim = self._client.register_script(_CLAIM)
        self._finish = self._client.register_script(_FINISH)

    def _key(self, task_id, attempt):
        return "%s%s:%d" % (self.prefix, task_id, attempt)

    def claim(self, task_id, attempt, worker, job, slot, stale_after):
        key = self._key(task_id, attempt)
        value = json.dumps({"w": worker, "s": "running", "j": job, "slot": slot})
        stale = -1 if stale_after is None else float(stale_after)
        try:
            decision, holder = self._claim(
                keys=[key, key + ":duplicates"], args=[value, self.ttl, stale]
            )
        except Exception as exc:  # any failure of the store is the policy's to decide
            raise StoreError("Redis: %s" % type(exc).__name__) from None
        return _text(decision), _text(holder)

    def finish(self, task_id, attempt):
        try:
            self._finish(keys=[self._key(task_id, attempt)])
        except Exception as exc:
            raise StoreError("Redis: %s" % type(exc).__name__) from None

    def duplicates(self, task_id, attempt=0):
        """How many deliveries of this attempt were suppressed (for tests and operators)."""
        value = self._client.get(self._key(task_id, attempt) + ":duplicates")
        return int(value or 0)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


# The table kube-beat's migration 0015 makes in its own database; made here (once, under an
# advisory lock) when the guard is given a database that lacks it.
SCHEMA = """
CREATE TABLE IF NOT EXISTS guard_claims (
    task_id               text        NOT NULL,
    attempt               integer     NOT NULL,
    state                 text        NOT NULL DEFAULT 'running',
    worker                text        NOT NULL,
    job                   text,
    slot                  text,
    claimed_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz,
    duplicates            integer     NOT NULL DEFAULT 0,
    last_duplicate_at     timestamptz,
    last_duplicate_worker text,
    takeovers             integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt)
);
CREATE INDEX IF NOT EXISTS guard_claims_claimed_at ON guard_claims (claimed_at);
CREATE INDEX IF NOT EXISTS guard_claims_last_duplicate_at ON guard_claims (last_duplicate_at)
    WHERE last_duplicate_at IS NOT NULL;
"""

_INSERT = """
INSERT INTO guard_claims (task_id, attempt, worker, job, slot) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (task_id, attempt) DO NOTHING RETURNING 1
"""
_TAKEOVER = """
UPDATE guard_claims SET claimed_at = now(), worker = %s, takeovers = takeovers + 1
 WHERE task_id = %s AND attempt = %s AND state = 'running'
   AND claimed_at < now() - make_interval(secs => %s)
RETURNING 1
"""
_HELD = """
SELECT state FROM guard_claims WHERE task_id = %s AND attempt = %s
"""
_DUPLICATE = """
UPDATE guard_claims SET duplicates = duplicates + 1, last_duplicate_at = now(),
       last_duplicate_worker = %s
 WHERE task_id = %s AND attempt = %s
RETURNING worker
"""
_FINISHED = """
UPDATE guard_claims SET state = 'done', finished_at = now() WHERE task_id = %s AND attempt = %s
"""
# Claims past the TTL, a bounded batch at a time (about one claim in PRUNE_EVERY prunes).
_PRUNE = """
DELETE FROM guard_claims WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM guard_claims WHERE claimed_at < now() - make_interval(secs => %s) LIMIT 1000))
"""
PRUNE_EVERY = 1000


class PostgresStore:
    """Claims as rows of ``guard_claims`` keyed by (task id, attempt)."""

    def __init__(self, url, ttl, timeout):
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.ttl = int(ttl)
        self.timeout = timeout
        # One connection per thread (the threads pool) and per process (prefork children must
        # not share their parent's socket): keyed by the pid.
        self._local = threading.local()
        self._schema_checked = False
        self._lock = threading.Lock()

    def _conn(self):
        import psycopg2

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or getattr(self._local, "pid", None) != os.getpid():
            conn = psycopg2.connect(
                self.url,
                connect_timeout=max(1, int(self.timeout)),
                options="-c statement_timeout=%d" % int(self.timeout * 1000),
                application_name="kube-beat-guard",
            )
            conn.autocommit = True
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _run(self, work):
        try:
            self._ensure_schema()
            with self._conn().cursor() as cur:
                return work(cur)
        except Exception as exc:  # any failure of the store is the policy's to decide
            self._local.conn = None
            raise StoreError("Postgres: %s" % type(exc).__name__) from None

    def _ensure_schema(self):
        with self._lock:
            if self._schema_checked:
                return
            with self._conn().cursor() as cur:
                cur.execute("SELECT to_regclass('guard_claims') IS NOT NULL")
                if not cur.fetchone()[0]:
                    # Several workers may start at once; CREATE ... IF NOT EXISTS alone races.
                    cur.execute("SELECT pg_advisory_lock(7272731)")
                    try:
                        cur.execute(SCHEMA)
                    finally:
                        cur.execute("SELECT pg_advisory_unlock(7272731)")
            self._schema_checked = True

    def claim(self, task_id, attempt, worker, job, slot, stale_after):
        def work(cur):
            # Twice at most: a claim pruned between the statements is taken afresh.
            for _ in range(2):
                cur.execute(_INSERT, (task_id, attempt, worker, job, slot))
                if cur.fetchone():
                    return RUN, ""
                if stale_after is not None:
                    cur.execute(_TAKEOVER, (worker, task_id, attempt, float(stale_after)))
                    if cur.fetchone():
                        return TAKEOVER, ""
                    cur.execute(_HELD, (task_id, attempt))
                    held = cur.fetchone()
                    if held is not None and held[0] == "running":
                        return DEFER, ""
                cur.execute(_DUPLICATE, (worker, task_id, attempt))
                row = cur.fetchone()
                if row is not None:
                    return DUPLICATE, row[0]
            raise StoreError("Postgres: the claim kept disappearing")

        decision = self._run(work)
        if decision[0] == RUN and random.randrange(PRUNE_EVERY) == 0:
            try:
                self._run(lambda cur: cur.execute(_PRUNE, (self.ttl,)))
            except StoreError:
                pass  # the next prune tries again; the claim is made
        return decision

    def finish(self, task_id, attempt):
        self._run(lambda cur: cur.execute(_FINISHED, (task_id, attempt)))

    def duplicates(self, task_id, attempt=0):
        def work(cur):
            cur.execute(
                "SELECT duplicates FROM guard_claims WHERE task_id = %s AND attempt = %s",
                (task_id, attempt),
            )
            row = cur.fetchone()
            return row[0] if row else 0

        return self._run(work)
