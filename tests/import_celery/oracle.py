# The source schedulers' own fire times, for tests/import_celery.rs.
#
#   oracle.py celery MODULE START N        -> {entry name: [N fire times, UTC RFC 3339]}
#   oracle.py redbeat-write URL PREFIX TZ  -> writes entries with RedBeatSchedulerEntry.save()
#   oracle.py redbeat URL PREFIX TZ N        -> {entry name: [N fire times]} from the saved entries
#
# Fire times come from the library itself: a punctual beat (a fixed clock handed to the schedule
# as nowfun) asks `remaining_estimate(last_run_at)`, advances the clock by it, and records a run
# (last_run_at = now) whenever nothing remains, exactly as celery.beat.Scheduler does.
import datetime as dt
import importlib
import json
import os
import sys

from celery import Celery
from celery.schedules import crontab, maybe_schedule

UTC = dt.timezone.utc


def fire_times(app, sched, last_run_at, n):
    clock = [last_run_at.astimezone(UTC)]
    sched.nowfun = lambda: clock[0].astimezone(app.timezone)
    sched.app = app
    last = last_run_at.astimezone(app.timezone)
    out = []
    while len(out) < n:
        rem = sched.remaining_estimate(last)
        if rem.total_seconds() <= 0:
            out.append(clock[0])
            last = clock[0].astimezone(app.timezone)
        else:
            clock[0] = clock[0] + rem
    return [t.astimezone(UTC).isoformat() for t in out]


def celery_times(module, start, n):
    sys.path.insert(0, os.getcwd())
    app = importlib.import_module(module).app
    start = dt.datetime.fromisoformat(start)
    out = {}
    for name, e in app.conf.beat_schedule.items():
        sched = maybe_schedule(e["schedule"], e.get("relative", False), app=app)
        out[name] = fire_times(app, sched, start, n)
    return out


def redbeat_app(url, prefix, tz="UTC"):
    app = Celery("kbt", set_as_current=True)
    app.conf.redbeat_redis_url = url
    app.conf.redbeat_key_prefix = prefix
    app.conf.timezone = tz
    return app


def redbeat_write(url, prefix, tz):
    from redbeat import RedBeatSchedulerEntry

    app = redbeat_app(url, prefix, tz)
    zone = app.timezone
    last = {
        # An entry that ran: its next run is last_run_at + interval.
        "every-90-minutes": dt.datetime(2026, 3, 28, 13, 10, 0, tzinfo=UTC),
        "daily-0230": dt.datetime(2026, 3, 27, 12, 0, 0, tzinfo=UTC),
        "hourly": dt.datetime(2026, 10, 24, 20, 5, 0, tzinfo=UTC),
        "quarter-hours-1-3": dt.datetime(2026, 10, 24, 12, 0, 0, tzinfo=UTC),
        "weekdays-0900": dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC),
    }
    entries = {
        "every-90-minutes": dict(schedule=dt.timedelta(minutes=90), options={"queue": "reports", "priority": 5}),
        "daily-0230": dict(schedule=crontab(minute="30", hour="2"), options={"expires": 300}),
        "hourly": dict(schedule=crontab(minute="0"), options={"exchange": "ex", "routing_key": "rk"}),
        "quarter-hours-1-3": dict(schedule=crontab(minute="*/15", hour="1-3")),
        "weekdays-0900": dict(schedule=crontab(minute=0, hour=9, day_of_week="mon-fri")),
    }
    for name, kw in entries.items():
        from celery.schedules import schedule as interval

        s = kw.pop("schedule")
        if isinstance(s, dt.timedelta):
            s = interval(s, app=app)
        e = RedBeatSchedulerEntry(name, "tasks.report", s, args=[name], kwargs={"k": 1}, app=app, **kw)
        e.save()
        e.reschedule(last_run_at=last[name].astimezone(zone))


def redbeat_times(url, prefix, tz, n):
    from redbeat import RedBeatSchedulerEntry

    app = redbeat_app(url, prefix, tz)
    client = __import__("redis").Redis.from_url(url)
    out = {}
    for key in client.scan_iter(match=prefix + "*"):
        key = key.decode()
        if key.startswith(prefix + ":"):
            continue
        e = RedBeatSchedulerEntry.from_key(key, app=app)
        out[e.name] = fire_times(app, e.schedule, e.last_run_at, n)
    return out


def main():
    mode = sys.argv[1]
    if mode == "celery":
        print(json.dumps(celery_times(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    elif mode == "redbeat-write":
        redbeat_write(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "redbeat":
        print(json.dumps(redbeat_times(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
    else:
        sys.exit("unknown mode " + mode)


main()
