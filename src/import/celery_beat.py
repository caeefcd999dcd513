# kube-beat import --from celery-beat: the helper run with the user's own Python and Celery.
#
# argv[1] is a module (`proj.celery`, `proj.celery:app`) or a path to a Python file. The module is
# imported (its top-level code runs, as it does under `celery beat`); no task is ever called or
# sent. The beat schedule is read through Celery's own schedule objects and printed as one JSON
# document on standard output: {"timezone": ..., "entries": [...]} where each entry is either
# {"name", "task", "schedule", "args", "kwargs", "options", "relative", "timezone"} or
# {"name", "error"}. Interpreting it (what kube-beat can express) is the Rust side's job, so this
# script only reports facts.
import datetime
import importlib
import json
import os
import sys


def fail(msg):
    sys.stderr.write(msg + "\n")
    sys.exit(2)


def tz_name(tz):
    """An IANA name for a tzinfo (zoneinfo, pytz, dateutil) or None."""
    if tz is None:
        return None
    for attr in ("key", "zone"):
        v = getattr(tz, attr, None)
        if isinstance(v, str) and v:
            return v
    if tz is datetime.timezone.utc:
        return "UTC"
    try:
        if tz.utcoffset(None) == datetime.timedelta(0) and str(tz) in ("UTC", "utc"):
            return "UTC"
    except Exception:
        pass
    return None


def load(target):
    sys.path.insert(0, os.getcwd())
    attr = None
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            fail("no such file: %s" % target)
        sys.path.insert(0, os.path.dirname(path))
        modname = os.path.splitext(os.path.basename(path))[0]
    else:
        modname, _, attr = target.partition(":")
    module = importlib.import_module(modname)
    return module, attr


def find_app(module, attr):
    from celery import Celery

    if attr:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        if callable(obj) and not isinstance(obj, Celery):
            obj = obj()
        return obj
    for name in ("app", "celery"):
        obj = getattr(module, name, None)
        if isinstance(obj, Celery):
            return obj
    apps = [v for v in vars(module).values() if isinstance(v, Celery)]
    if len(apps) == 1:
        return apps[0]
    if len(apps) > 1:
        fail("%s defines several Celery apps; name one as MODULE:ATTR" % module.__name__)
    # A configuration module: build an app from it, as `config_from_object` would.
    if hasattr(module, "beat_schedule") or hasattr(module, "CELERYBEAT_SCHEDULE"):
        app = Celery(set_as_current=True)
        app.config_from_object(module)
        return app
    fail(
        "%s has no Celery app (an `app` or `celery` attribute, or MODULE:ATTR) and no "
        "beat_schedule/CELERYBEAT_SCHEDULE" % module.__name__
    )


def jsonable(v, what):
    try:
        return json.loads(json.dumps(v))
    except (TypeError, ValueError) as e:
        raise ValueError("%s is not JSON-serializable: %s" % (what, e))


def named(v):
    """A kombu Queue/Exchange (or a plain string) as its name."""
    if v is None or isinstance(v, str):
        return v
    name = getattr(v, "name", None)
    if isinstance(name, str):
        return name
    raise ValueError("unsupported %s" % type(v).__name__)


def field(v):
    """A crontab field as given: a string, a number, or (a set or list) a sorted list."""
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return v
    if isinstance(v, (set, frozenset, list, tuple)):
        return sorted(int(x) for x in v)
    raise ValueError("unsupported crontab field %r" % (v,))


def schedule_of(app, sched, relative):
    from celery import schedules

    # As celery.schedules.maybe_schedule: the entry's `relative` applies to numbers and
    # timedeltas only; a schedule object keeps its own.
    if isinstance(sched, (int, float)) and not isinstance(sched, bool):
        sched = schedules.schedule(datetime.timedelta(seconds=sched), relative, app=app)
    elif isinstance(sched, datetime.timedelta):
        sched = schedules.schedule(sched, relative, app=app)
    # Subclasses of these (django-celery-beat's, RedBeat's rrule) are not the classes whose
    # semantics are mapped: refuse them by their own type name.
    if type(sched) is schedules.crontab:
        return {
            "type": "crontab",
            "minute": field(sched._orig_minute),
            "hour": field(sched._orig_hour),
            "day_of_week": field(sched._orig_day_of_week),
            "day_of_month": field(sched._orig_day_of_month),
            "month_of_year": field(sched._orig_month_of_year),
        }, sched
    if type(sched) is schedules.schedule:
        return {
            "type": "interval",
            "seconds": sched.run_every.total_seconds(),
            "relative": bool(sched.relative),
        }, sched
    if isinstance(sched, schedules.solar):
        return {"type": "solar", "event": sched.event}, sched
    return {"type": "other", "type_name": type(sched).__module__ + "." + type(sched).__qualname__}, sched


def schedule_tz(app, sched):
    """The zone the schedule is evaluated in: its nowfun's, else the app's."""
    nowfun = getattr(sched, "nowfun", None)
    if nowfun is not None:
        now = nowfun()
        if getattr(now, "tzinfo", None) is not None:
            return tz_name(now.tzinfo), "nowfun"
    return tz_name(app.timezone), "app"


def entry(app, name, e):
    if not isinstance(e, dict):
        raise ValueError("entry is a %s, not a dict" % type(e).__name__)
    task = e.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError("no task name")
    if "schedule" not in e:
        raise ValueError("no schedule")
    sched, obj = schedule_of(app, e["schedule"], bool(e.get("relative", False)))
    tz, tz_from = schedule_tz(app, obj)
    out = {
        "name": str(name),
        "task": task,
        "schedule": sched,
        "timezone": tz,
        "timezone_from": tz_from,
        "args": jsonable(list(e.get("args") or ()), "args"),
        "kwargs": jsonable(dict(e.get("kwargs") or {}), "kwargs"),
    }
    options = dict(e.get("options") or {})
    opts = {}
    for key in ("queue", "exchange"):
        if key in options:
            opts[key] = named(options.pop(key))
    expires = options.pop("expires", None)
    if isinstance(expires, datetime.datetime):
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=app.timezone)
        opts["expires_at"] = expires.astimezone(datetime.timezone.utc).isoformat()
    elif isinstance(expires, (int, float)):
        opts["expires"] = float(expires)
    elif expires is not None:
        raise ValueError("options.expires is a %s" % type(expires).__name__)
    for key, value in options.items():
        opts[key] = jsonable(value, "options." + key)
    out["options"] = opts
    return out


def main():
    if len(sys.argv) != 2:
        fail("usage: celery_beat.py MODULE|MODULE:ATTR|PATH")
    module, attr = load(sys.argv[1])
    app = find_app(module, attr)
    conf = app.conf
    beat = conf.beat_schedule or {}
    entries = []
    for name, e in beat.items():
        try:
            entries.append(entry(app, name, e))
        except Exception as err:
            entries.append({"name": str(name), "error": "%s: %s" % (type(err).__name__, err)})
    json.dump(
        {
            "timezone": tz_name(app.timezone),
            "enable_utc": bool(conf.enable_utc),
            "celery": __import__("celery").__version__,
            "entries": entries,
        },
        sys.stdout,
    )


main()
