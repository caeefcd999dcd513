"""kube-beat's worker-side guard: a broker redelivery of a run kube-beat sent never runs the
task body twice.

    from celery import Celery
    import kube_beat_celery

    app = Celery("proj")
    app.conf.kube_beat_guard_url = "postgresql://kube-beat@db/kube_beat"   # or redis://...
    kube_beat_celery.install(app)            # before the worker starts; tasks defined anywhere

Settings (arguments of :func:`install`, else these Celery config keys):
    kube_beat_guard_url          where claims are kept: redis://, rediss:// or postgresql://
                                 (kube-beat's own database: kube-beat then shows each run's
                                 suppressed duplicates)
    kube_beat_guard_policy       "fail-open" (default) or "fail-closed": what happens when the
                                 store cannot decide
    kube_beat_guard_ttl          seconds a claim is kept (default 7 days)
    kube_beat_guard_stale_after  seconds after which an acks_late run's claim is taken over by a
                                 redelivery, for tasks without a hard time limit (default 3600)

See :mod:`kube_beat_celery.guard` for exactly which deliveries are guarded.
"""

from . import stores
from .guard import (
    DEFAULT_STALE_AFTER,
    DEFAULT_TTL,
    FAIL_CLOSED,
    FAIL_OPEN,
    Guard,
    GuardUnavailable,
)

__version__ = "0.2.0"

__all__ = [
    "install",
    "Guard",
    "GuardUnavailable",
    "FAIL_OPEN",
    "FAIL_CLOSED",
    "stores",
    "__version__",
]


def _setting(app, name, given, default):
    if given is not None:
        return given
    value = app.conf.get(name)
    return default if value is None else value


def install(app, url=None, policy=None, ttl=None, stale_after=None, store=None):
    """Guard every task of ``app``: wraps each task class's ``__call__`` through Celery's task
    annotations (applied when the app is finalized, i.e. as the worker starts), or at once for an
    app already finalized. Returns the :class:`Guard` (its ``stats`` count what it did)."""
    if getattr(app, "_kube_beat_guard", None) is not None:
        return app._kube_beat_guard
    ttl = int(_setting(app, "kube_beat_guard_ttl", ttl, DEFAULT_TTL))
    if store is None:
        url = _setting(app, "kube_beat_guard_url", url, None)
        if not url:
            raise ValueError(
                "kube_beat_celery.install: no store: pass url= or set kube_beat_guard_url"
            )
        store = stores.open_store(url, ttl)
        if app.conf.get("kube_beat_guard_url"):
            # Celery shows its configuration (`celery inspect conf`, Flower) and masks only keys
            # it recognises as secret: keep the URL with its password masked.
            from kombu.utils.url import maybe_sanitize_url

            app.conf.kube_beat_guard_url = maybe_sanitize_url(app.conf.kube_beat_guard_url)
    guard = Guard(
        store,
        policy=_setting(app, "kube_beat_guard_policy", policy, FAIL_OPEN),
        stale_after=float(_setting(app, "kube_beat_guard_stale_after", stale_after, DEFAULT_STALE_AFTER)),
    )
    annotation = {"*": {"@__call__": guard.around}}
    if app.finalized:
        for task in app.tasks.values():
            type(task).add_around("__call__", guard.around)
    else:
        existing = app.conf.get("task_annotations")
        if existing is None:
            annotations = []
        elif isinstance(existing, (list, tuple)):
            annotations = list(existing)
        else:
            annotations = [existing]
        app.conf.task_annotations = annotations + [annotation]
        # Celery caches the prepared annotations on first use: forget them, so ours apply.
        app.__dict__.pop("annotations", None)
    app._kube_beat_guard = guard
    return guard
