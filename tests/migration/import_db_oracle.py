"""The source schedulers' own view, for tests/import_db.rs: creates job definitions with
django-celery-beat (Django ORM, after `migrate`) or APScheduler (SQLAlchemyJobStore through a
paused BackgroundScheduler), and prints the next fire times each library computes itself,
driven by a fixed clock.

    import_db_oracle.py django-setup DB_URL
    import_db_oracle.py django-next DB_URL NAME FROM N
    import_db_oracle.py aps-setup DB_URL
    import_db_oracle.py aps-next DB_URL ID FROM N

Times are RFC 3339 UTC, one per line.
"""
import datetime
import os
import sys
import zoneinfo

UTC = datetime.timezone.utc


def iso(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def django(url):
    os.environ["KBT_DJANGO_DB_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kbt_django_settings")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import django as dj

    dj.setup()
    from django_celery_beat import models

    return models


# The definitions: (name, task, schedule kind, schedule fields, options).
DJANGO_TASKS = [
    ("berlin-0230", "app.tasks.report", "crontab",
     dict(minute="30", hour="2", timezone="Europe/Berlin"), {}),
    ("berlin-quarter-hours", "app.tasks.report", "crontab",
     dict(minute="*/15", hour="1-3", day_of_week="sat-mon", timezone="Europe/Berlin"),
     dict(queue="reports", priority=3)),
    ("new-york-0130", "app.tasks.sync", "crontab",
     dict(minute="30", hour="1", timezone="America/New_York"),
     dict(kwargs='{"full": true}', headers='{"x-team": "a"}', exchange="ex", routing_key="rk")),
    ("new-york-weekdays", "app.tasks.sync", "crontab",
     dict(minute="0", hour="*/4", day_of_week="mon-fri", timezone="America/New_York"),
     dict(args='[1, "two"]', expire_seconds=60)),
    ("every-90-minutes", "app.tasks.poll", "interval", dict(every=90, period="minutes"),
     dict(start_time=datetime.datetime(2026, 3, 1, 0, 0, tzinfo=UTC))),
    ("once", "app.tasks.poll", "clocked",
     dict(clocked_time=datetime.datetime(2026, 12, 31, 23, 0, tzinfo=UTC)), dict(one_off=True)),
    ("sunrise", "app.tasks.poll", "solar",
     dict(event="sunrise", latitude=52.5, longitude=13.4), {}),
]


def django_setup(url):
    from django.core.management import call_command

    os.environ["KBT_DJANGO_DB_URL"] = url
    models = django(url)
    call_command("migrate", verbosity=0)
    for name, task, kind, fields, opts in DJANGO_TASKS:
        model = {
            "crontab": models.CrontabSchedule,
            "interval": models.IntervalSchedule,
            "clocked": models.ClockedSchedule,
            "solar": models.SolarSchedule,
        }[kind]
        if kind == "crontab":
            fields = dict(fields, timezone=zoneinfo.ZoneInfo(fields["timezone"]))
        sched = model.objects.create(**fields)
        models.PeriodicTask.objects.create(name=name, task=task, **{kind: sched}, **opts)


def django_next(url, name, start, n):
    models = django(url)
    task = models.PeriodicTask.objects.get(name=name)
    sched = task.schedule
    clock = [parse(start)]
    sched.nowfun = lambda: clock[0].astimezone(getattr(sched, "tz", UTC))
    last = clock[0]
    out = []
    if task.interval is not None and task.start_time is not None:
        # django-celery-beat's first run is at start_time (last_run_at is set far in the past).
        last = task.start_time - sched.run_every
    while len(out) < n:
        # Beat runs the entry when remaining_estimate(last_run_at) reaches zero, then records
        # the run at that instant as last_run_at: walk that loop with the clock at each run.
        clock[0] = max(last, parse(start))
        due = clock[0] + sched.remaining_estimate(last)
        if due > parse(start):
            out.append(due)
        last = due
    print("\n".join(iso(t) for t in out[:n]))


def aps_scheduler(url):
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    url = url.replace("postgres://", "postgresql+psycopg2://", 1)
    s = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=url)}, timezone="UTC")
    return s


def aps_setup(url):
    s = aps_scheduler(url)
    s.start(paused=True)
    common = dict(replace_existing=True, misfire_grace_time=60, coalesce=True, max_instances=1)
    s.add_job("logging:info", "cron", id="berlin-0230", hour=2, minute=30,
              timezone="Europe/Berlin", args=["report"], **common)
    s.add_job("logging:info", "cron", id="berlin-weekdays-quarter", day_of_week="mon-fri",
              hour="1-3", minute="*/15", timezone="Europe/Berlin", args=["q"], **common)
    s.add_job("logging:info", "cron", id="new-york-0130", hour=1, minute=30,
              timezone="America/New_York", args=["ny"], **common)
    s.add_job("logging:info", "interval", id="every-7-hours", hours=7,
              start_date=datetime.datetime(2026, 3, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
              args=["i"], **common)
    s.add_job("logging:info", "date", id="once",
              run_date=datetime.datetime(2026, 12, 31, 23, 0, tzinfo=UTC), args=["d"], **common)
    s.add_job("logging:info", "cron", id="last-day", day="last", hour=1, args=["l"], **common)
    s.shutdown(wait=False)


def aps_next(url, job_id, start, n):
    s = aps_scheduler(url)
    s.start(paused=True)
    job = s.get_job(job_id)
    now = parse(start)
    prev = None
    out = []
    while len(out) < n:
        t = job.trigger.get_next_fire_time(prev, now)
        if t is None:
            break
        out.append(t)
        prev = now = t
    s.shutdown(wait=False)
    print("\n".join(iso(t) for t in out))


if __name__ == "__main__":
    cmd, url, *rest = sys.argv[1:]
    if cmd == "django-setup":
        django_setup(url)
    elif cmd == "django-next":
        django_next(url, rest[0], rest[1], int(rest[2]))
    elif cmd == "aps-setup":
        aps_setup(url)
    elif cmd == "aps-next":
        aps_next(url, rest[0], rest[1], int(rest[2]))
    else:
        sys.exit(f"unknown command {cmd}")
