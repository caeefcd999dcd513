"""The real Celery app kube-beat's tests and demo dispatch to.

It implements the migration plan's four tasks under their real names, plus tasks that fail, retry
and sleep. Every invocation is recorded durably in Postgres (table `celery_invocations` in the
database named by KB_RECORD_DSN) so tests can count executions exactly, from the worker's side.

Configuration (environment):
  CELERY_BROKER_URL      redis://... or amqp://...
  CELERY_RESULT_BACKEND  redis://..., db+postgresql+psycopg2://..., django-db (with
                         DJANGO_SETTINGS_MODULE=kb_django_settings) or unset (no results)
  KB_RECORD_DSN          postgresql://... where invocations are recorded
  KB_QUEUE_ARGUMENTS     optional JSON {"queue": {"x-queue-type": "quorum"}, ...}: the worker
                         declares these queues with these arguments (quorum, x-max-priority)
  KB_RESULT_EXTENDED     optional, non-empty: Celery's result_extended = True
  KB_EXTRA_TASKS         optional, comma-separated: more task names, each doing what kb.echo does
  KB_REMOTE_CONTROL      optional, "0": Celery's worker_enable_remote_control = False (the
                         worker answers no `celery inspect`; kube-beat's worker probe test)
  KB_GUARD_URL           optional: install kube-beat's worker-side guard (python/kube_beat_celery,
                         from this repository) with its claims there (redis:// or postgresql://)
  KB_BROKER_TRANSPORT_OPTIONS / KB_RESULT_BACKEND_TRANSPORT_OPTIONS
                         optional JSON: Celery's broker_transport_options and
                         result_backend_transport_options (master_name, global_keyprefix, ...)
Run: celery -A kb_worker worker -Q celery,ad_queue,...
"""

import json
import os
import socket
import threading
import time

import psycopg2
from celery import Celery

if os.environ.get("DJANGO_SETTINGS_MODULE"):
    # Celery's `django-db` result backend (django-celery-results) needs Django set up first.
    import django

    django.setup()

app = Celery("kb_worker")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
    task_track_started=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("KB_PREFETCH", "4")),
)

for _name, _setting in (
    ("KB_BROKER_TRANSPORT_OPTIONS", "broker_transport_options"),
    ("KB_RESULT_BACKEND_TRANSPORT_OPTIONS", "result_backend_transport_options"),
):
    if os.environ.get(_name):
        app.conf[_setting] = json.loads(os.environ[_name])

if os.environ.get("KB_REMOTE_CONTROL") == "0":
    app.conf.worker_enable_remote_control = False

if os.environ.get("KB_RESULT_EXTENDED"):
    # django-celery-results stores a failure's traceback only with result_extended.
    app.conf.result_extended = True

if os.environ.get("KB_QUEUE_ARGUMENTS"):
    from kombu import Queue

    app.conf.task_queues = [
        Queue(name, routing_key=name, queue_arguments=arguments)
        for name, arguments in json.loads(os.environ["KB_QUEUE_ARGUMENTS"]).items()
    ]

# KB_BOUND_QUEUE=queue:exchange:routing_key: that queue is bound to its own direct exchange
# with that routing key (not Celery's default, exchange = routing key = queue name), so only a
# message published to that exchange with that key reaches it.
if os.environ.get("KB_BOUND_QUEUE"):
    from kombu import Exchange, Queue

    _q, _x, _rk = os.environ["KB_BOUND_QUEUE"].split(":")
    app.conf.task_queues = [Queue(_q, Exchange(_x, "direct"), routing_key=_rk)]

if os.environ.get("KB_GUARD_URL"):
    import sys

    # The package as this repository has it (what `pip install ./python` would install).
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    import kube_beat_celery

    kube_beat_celery.install(app, url=os.environ["KB_GUARD_URL"])

_local = threading.local()
_schema_ready = False
_schema_lock = threading.Lock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS celery_invocations (
    id          bigserial PRIMARY KEY,
    task_id     text NOT NULL,
    task_name   text NOT NULL,
    args        jsonb NOT NULL,
    kwargs      jsonb NOT NULL,
    queue       text,
    priority    integer,
    retries     integer NOT NULL DEFAULT 0,
    headers     jsonb NOT NULL DEFAULT '{}',
    worker      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS celery_invocations_task_id ON celery_invocations (task_id);
CREATE INDEX IF NOT EXISTS celery_invocations_queue ON celery_invocations (queue);
"""


def _conn():
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg2.connect(os.environ["KB_RECORD_DSN"])
        conn.autocommit = True
        _local.conn = conn
    return conn


def ensure_schema():
    global _schema_ready
    with _schema_lock:
        if _schema_ready:
            return
        with _conn().cursor() as cur:
            # Several workers may start at once; CREATE ... IF NOT EXISTS alone races.
            cur.execute("SELECT pg_advisory_lock(727272)")
            try:
                cur.execute(SCHEMA)
            finally:
                cur.execute("SELECT pg_advisory_unlock(727272)")
        _schema_ready = True


def _json(value):
    return json.dumps(value, default=repr)


def record(task, args, kwargs):
    """Record one invocation before the task body runs (so a task that fails still counts)."""
    req = task.request
    delivery = req.delivery_info or {}
    # kube-beat's headers, and the test's own (`kbt_*`) that jobs set with `headers`.
    headers = {k: v for k, v in vars(req).items() if k.startswith(("kubebeat", "kbt_"))}
    # The message options as the worker applies them.
    headers["timelimit"] = list(req.timelimit or [None, None])
    headers["ignore_result"] = bool(req.ignore_result)
    headers["exchange"] = delivery.get("exchange")
    # A broker redelivery (an ack lost with the connection) is Celery's at-least-once, not a
    # second publish: recorded so the fault suite can tell the two apart.
    headers["redelivered"] = bool(delivery.get("redelivered"))
    row = (
        req.id,
        task.name,
        _json(list(args)),
        _json(kwargs),
        delivery.get("routing_key"),
        delivery.get("priority"),
        req.retries or 0,
        _json(headers),
        req.hostname or socket.gethostname(),
    )
    # The record must survive a Postgres restart (the fault suite restarts it): reconnect and
    # retry for up to two minutes rather than lose the proof that this task ran. The schema
    # check too: each prefork child makes it on its first task, maybe during the restart.
    deadline = time.monotonic() + 120
    while True:
        try:
            ensure_schema()
            with _conn().cursor() as cur:
                cur.execute(
                    "INSERT INTO celery_invocations"
                    " (task_id, task_name, args, kwargs, queue, priority, retries, headers, worker)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    row,
                )
            return
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# --- the migration plan's four tasks, under their real names -------------------------------


@app.task(name="tasks.ad_sync_tasks.sync_domain_users_task", bind=True)
def sync_domain_users_task(self, domain_id=None, mode="full"):
    record(self, (domain_id,) if domain_id is not None else (), {"mode": mode})
    return {"domain_id": domain_id, "synced": 42, "mode": mode}


@app.task(name="services.auth_service.auth_service.cleanup_all_expired_sessions", bind=True)
def cleanup_all_expired_sessions(self, retention_days=30):
    record(self, (), {"retention_days": retention_days})
    return {"deleted": 0, "retention_days": retention_days}


@app.task(
    name="services.desktop_session_service.DesktopSessionService.cleanup_stale_sessions",
    bind=True,
)
def cleanup_stale_sessions(self, timeout_minutes=30):
    record(self, (), {"timeout_minutes": timeout_minutes})
    return {"closed": 0, "timeout_minutes": timeout_minutes}


@app.task(name="tasks.deployment_tasks.cleanup_stale_deployment_jobs", bind=True)
def cleanup_stale_deployment_jobs(self, max_age_minutes=60):
    record(self, (), {"max_age_minutes": max_age_minutes})
    return {"cleaned": 0, "max_age_minutes": max_age_minutes}


# --- tasks for tests ----------------------------------------------------------------------


@app.task(name="kb.echo", bind=True)
def echo(self, *args, **kwargs):
    record(self, args, kwargs)
    return {"args": list(args), "kwargs": kwargs}


# KB_EXTRA_TASKS=name,name: more tasks under those names, each doing what kb.echo does (a worker
# that registers a task another worker lacks).
def _extra_echo(self, *args, **kwargs):
    record(self, args, kwargs)
    return {"args": list(args), "kwargs": kwargs}


for _extra in filter(None, os.environ.get("KB_EXTRA_TASKS", "").split(",")):
    app.task(name=_extra, bind=True)(_extra_echo)


# A task name built to break a message or an SQL statement (tests/hostile.rs uses the same one).
HOSTILE_TASK = "kb.hostile'\"; DROP TABLE celery_invocations; -- \\ ünï ✓"


@app.task(name=HOSTILE_TASK, bind=True)
def hostile(self, *args, **kwargs):
    record(self, args, kwargs)
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="kb.fail", bind=True)
def fail(self, message="boom", *args, **kwargs):
    record(self, (message,) + args, kwargs)
    raise ValueError(message)


@app.task(name="kb.retry_once", bind=True, max_retries=3)
def retry_once(self, *args, **kwargs):
    record(self, args, kwargs)
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("transient"), countdown=1)
    return {"retries": self.request.retries}


@app.task(name="kb.sleep", bind=True)
def sleep(self, seconds=5, *args, **kwargs):
    record(self, (seconds,) + args, kwargs)
    time.sleep(float(seconds))
    return {"slept": seconds}
