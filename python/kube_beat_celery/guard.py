"""The guard: before a task body runs, claim its (task id, attempt) in a store; a delivery whose
claim is already held by a run that started is a broker redelivery, and its body is skipped.

What is guarded, exactly:
- Only messages kube-beat published (they carry the ``kubebeat_job`` header). Anything else
  (``delay()``, ``apply_async()``, canvas, other schedulers) passes untouched.
- The claim is per attempt: a task that called ``self.retry`` sends a new message with
  ``retries + 1``, a new attempt with its own claim, so Celery's retries run as before. A
  redelivery of the attempt that raised ``Retry`` is a duplicate (that attempt did run).
- A duplicate's body is not run; the task raises Celery's ``Ignore``, so the broker message is
  acknowledged and the result backend keeps the first run's record untouched.
- ``acks_late`` tasks: a redelivery after a worker died mid-run must run again (that is why
  ``acks_late`` is chosen), so a claim still ``running`` after ``stale_after`` seconds (the
  task's hard time limit when it has one) is taken over and the body runs. Before that, the
  first run may still be going on another worker (a broker that lost the connection redelivers
  at once) or may have died: the delivery is acknowledged and the same message (task id,
  attempt, headers) is sent again to its queue a little later (a quarter of ``stale_after``, 1 to
  60 s), and decided then: skipped once the first run finished, run once its claim went stale.
  A redelivery of an attempt that finished is a duplicate. Early-ack tasks (Celery's default)
  never take over: their redelivery is always a duplicate once a run started.
- With ``task_track_started``, Celery records STARTED before any task code runs, also for a
  delivery the guard then skips: a redelivery of a run that FAILED, arriving before kube-beat
  read the failure, leaves STARTED in the result backend (kube-beat then records the run LOST
  after its ``executionTimeoutSeconds``). A SUCCESS is never overwritten.
- Calling a task directly, or ``apply()`` (eager), is not guarded.

When the store cannot decide (unreachable, slow): ``fail-open`` (the default) runs the body and
counts ``store_errors``; ``fail-closed`` does not run it and fails the task with
:class:`GuardUnavailable`, so the run shows FAILURE with that message in kube-beat. Store calls
time out after a few seconds: never a hung worker.
"""

import logging
import threading

from celery.exceptions import Ignore, Retry

from . import stores

log = logging.getLogger("kube_beat_celery")

FAIL_OPEN = "fail-open"
FAIL_CLOSED = "fail-closed"
POLICIES = (FAIL_OPEN, FAIL_CLOSED)

#: kube-beat's header on every message it publishes (``namespace/name`` of the ScheduledJob).
JOB_HEADER = "kubebeat_job"
SLOT_HEADER = "kubebeat_slot"
TRIGGER_HEADER = "kubebeat_trigger"

#: Seconds a claim is kept (a redelivery later than this is not recognised).
DEFAULT_TTL = 7 * 24 * 3600
#: Seconds after which an acks_late run's claim is taken over by a redelivery, when the task
#: has no hard time limit.
DEFAULT_STALE_AFTER = 3600


class GuardUnavailable(Exception):
    """fail-closed: the claim store could not decide, so the body was not run."""


class Stats:
    """What this worker process's guard did (also logged)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.guarded = 0
        self.suppressed = 0
        self.taken_over = 0
        self.deferred = 0
        self.store_errors = 0

    def add(self, name):
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self):
        with self._lock:
            return {
                "guarded": self.guarded,
                "suppressed": self.suppressed,
                "taken_over": self.taken_over,
                "deferred": self.deferred,
                "store_errors": self.store_errors,
            }


class Guard:
    def __init__(self, store, policy=FAIL_OPEN, stale_after=DEFAULT_STALE_AFTER):
        if policy not in POLICIES:
            raise ValueError(
                "kube_beat_guard_policy must be one of %s, not %r" % (", ".join(POLICIES), policy)
            )
        self.store = store
        self.policy = policy
        self.stale_after = stale_after
        self.stats = Stats()

    def _stale_after(self, task, request):
        """``None`` (never take over) unless the task acknowledges late."""
        if not getattr(task, "acks_late", False):
            return None
        limits = getattr(request, "timelimit", None) or (None, None)
        hard = limits[0] if limits and limits[0] else getattr(task, "time_limit", None)
        return float(hard) if hard else float(self.stale_after)

    def around(self, call):
        """The ``__call__`` wrapper Celery's task annotations install on every task class."""
        base_call = _base_call()
        guard = self

        def guarded_call(task, *args, **kwargs):
            request = task.request
            from_worker = not getattr(request, "called_directly", True)
            if call is not base_call:
                # The task class's own __call__.
                def through():
                    return call(task, *args, **kwargs)
            elif from_worker:
                # What Celery's tracer calls for a task without its own __call__: the body, under
                # the request the tracer pushed (Celery's __call__ would push a bare one when the
                # worker did not protect it, as Celery 4.4's test worker does not).
                def through():
                    return task.run(*args, **kwargs)
            else:
                # Called directly: Celery's own __call__, as the worker has it now.
                def through():
                    return _base_call()(task, *args, **kwargs)

            job = getattr(request, JOB_HEADER, None)
            if not job or not request.id or not from_worker:
                return through()
            return guard.run(task, request, job, through, args, kwargs)

        return guarded_call

    def run(self, task, request, job, body, args=(), kwargs=None):
        attempt = int(request.retries or 0)
        worker = request.hostname or ""
        self.stats.add("guarded")
        try:
            decision, holder = self.store.claim(
                request.id,
                attempt,
                worker,
                job,
                getattr(request, SLOT_HEADER, None),
                self._stale_after(task, request),
            )
        except Exception as exc:  # a store's failure, whatever its kind: the policy decides
            exc = exc if isinstance(exc, stores.StoreError) else type(exc).__name__
            self.stats.add("store_errors")
            if self.policy == FAIL_CLOSED:
                log.error(
                    "kube-beat guard: %s[%s] not run: the claim store did not answer (%s; fail-closed)",
                    task.name, request.id, exc,
                )
                raise GuardUnavailable(
                    "kube-beat guard: the claim store did not answer (%s); not run (fail-closed)"
                    % exc
                ) from None
            log.warning(
                "kube-beat guard: %s[%s] runs unguarded: the claim store did not answer (%s; fail-open)",
                task.name, request.id, exc,
            )
            return body()
        if decision == stores.DUPLICATE:
            self.stats.add("suppressed")
            log.warning(
                "kube-beat guard: %s[%s] attempt %d of %s already ran on %s: this delivery "
                "(a broker redelivery) is skipped",
                task.name, request.id, attempt, job, holder or "another worker",
            )
            raise Ignore()
        if decision == stores.DEFER:
            # acks_late: the attempt's run has not finished. It may still be running on another
            # worker (then this is a duplicate) or its worker died (then it must run again once
            # the claim goes stale): acknowledged now, sent again for later, decided then.
            delay = max(1.0, min(60.0, float(self._stale_after(task, request) or 60) / 4))
            self.stats.add("deferred")
            log.warning(
                "kube-beat guard: %s[%s] attempt %d of %s is running on %s: this acks_late "
                "delivery is sent again in %.0f s",
                task.name, request.id, attempt, job, holder or "another worker", delay,
            )
            self._again(task, request, args, kwargs, delay)
            raise Ignore()
        if decision == stores.TAKEOVER:
            self.stats.add("taken_over")
            log.warning(
                "kube-beat guard: %s[%s] attempt %d: the run on %s went stale; this "
                "acks_late redelivery runs it again",
                task.name, request.id, attempt, holder or "another worker",
            )
        try:
            result = body()
        except Retry:
            # The attempt ran and ended in a retry: done (a redelivery of it is a duplicate);
            # the retry is the next attempt, claimed on its own.
            self._finish(request.id, attempt)
            raise
        except BaseException:
            self._finish(request.id, attempt)
            raise
        self._finish(request.id, attempt)
        return result

    @staticmethod
    def _again(task, request, args, kwargs, delay):
        """The same message (task id, attempt, kube-beat's headers) to its queue, ``delay``
        seconds from now."""
        headers = {
            name: getattr(request, name)
            for name in (JOB_HEADER, SLOT_HEADER, TRIGGER_HEADER)
            if getattr(request, name, None) is not None
        }
        delivery = request.delivery_info or {}
        task.apply_async(
            args=list(args),
            kwargs=dict(kwargs or {}),
            task_id=request.id,
            retries=request.retries or 0,
            countdown=delay,
            headers=headers,
            queue=delivery.get("routing_key") or None,
        )

    def _finish(self, task_id, attempt):
        try:
            self.store.finish(task_id, attempt)
        except Exception as exc:
            # Only acks_late takeovers read it; the claim itself is what matters.
            log.warning("kube-beat guard: marking %s done failed (%s)", task_id, exc)


def _base_call():
    from celery.app.task import Task

    return Task.__call__
