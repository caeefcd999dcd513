"""The old scheduler's side of tests/migration_e2e.rs, with each source's own library.

    migration_e2e.py aps-setup DB_URL START_ISO   an interval job every 5 s from START, a cron job
    migration_e2e.py aps-fire DB_URL ID FROM N     the job's next N fire times after FROM
    migration_e2e.py aps-next-run DB_URL ID        the job's stored next_run_time (or "paused")
    migration_e2e.py aps-pause DB_URL              scheduler.pause_job(id) for every job
    migration_e2e.py aps-resume DB_URL             scheduler.resume_job(id) for every job
    migration_e2e.py django-setup DB_URL START_ISO QUEUE   the same two with django-celery-beat's ORM
    migration_e2e.py django-fire DB_URL NAME FROM N        the fire times django-celery-beat computes
    migration_e2e.py celery-fire MODULE NAME FROM N   Celery's fire times of a beat_schedule entry
                                                      (run in the module's directory)
    migration_e2e.py redbeat-setup URL PREFIX START QUEUE   the two jobs as RedBeatSchedulerEntry
    migration_e2e.py redbeat-fire URL PREFIX NAME FROM N    RedBeat's fire times of a saved entry
                                                            (FROM "-": from its last_run_at)

Fire times come from the library's own schedule objects, asked as celery.beat does: with a fixed
clock (nowfun), `remaining_estimate(last_run_at)`, a run whenever nothing remains.
"""

import datetime
import sys
import zoneinfo

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

UTC = datetime.timezone.utc


def iso(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def scheduler(url):
    url = url.replace("postgres://", "postgresql+psycopg2://", 1)
    s = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=url)}, timezone="UTC")
    # Paused: the store is edited and read, no job runs in this process.
    s.start(paused=True)
    return s


def django_setup(url, start, queue):
    from django.core.management import call_command

    import import_db_oracle

    models = import_db_oracle.django(url)
    call_command("migrate", verbosity=0)
    every = models.IntervalSchedule.objects.create(every=5, period="seconds")
    models.PeriodicTask.objects.create(name="every-5s", task="kb.echo", interval=every,
                                       start_time=parse(start), args='["interval"]', queue=queue)
    minute = models.CrontabSchedule.objects.create(minute="*", hour="*",
                                                   timezone=zoneinfo.ZoneInfo("Europe/Berlin"))
    models.PeriodicTask.objects.create(name="every-minute", task="kb.echo", crontab=minute,
                                       args='["cron"]', queue=queue)


def fire_times(app, sched, last_run_at, n):
    clock = [last_run_at.astimezone(UTC)]
    sched.nowfun = lambda: clock[0].astimezone(app.timezone)
    sched.app = app
    last, out = last_run_at.astimezone(app.timezone), []
    while len(out) < n:
        rem = sched.remaining_estimate(last)
        if rem.total_seconds() <= 0:
            out.append(clock[0])
            last = clock[0].astimezone(app.timezone)
        else:
            clock[0] = clock[0] + rem
    print("\n".join(iso(t) for t in out))


def celery_fire(module, name, start, n):
    import importlib
    import os

    from celery.schedules import maybe_schedule

    sys.path.insert(0, os.getcwd())
    app = importlib.import_module(module).app
    e = app.conf.beat_schedule[name]
    fire_times(app, maybe_schedule(e["schedule"], e.get("relative", False), app=app), parse(start), n)


def redbeat_app(url, prefix):
    from celery import Celery

    app = Celery("kbt", set_as_current=True)
    app.conf.redbeat_redis_url = url
    app.conf.redbeat_key_prefix = prefix
    # RedBeat records last_run_at in the app's zone: the import reads the crontab's zone from it.
    app.conf.timezone = "Europe/Berlin"
    return app


def redbeat_setup(url, prefix, start, queue):
    from celery.schedules import crontab, schedule
    from redbeat import RedBeatSchedulerEntry

    app = redbeat_app(url, prefix)
    every = RedBeatSchedulerEntry("every-5s", "kb.echo", schedule(datetime.timedelta(seconds=5), app=app),
                                  args=["interval"], options={"queue": queue}, app=app)
    every.save()
    # Its last run 5 s before START: RedBeat's next run is START.
    every.reschedule(last_run_at=(parse(start) - datetime.timedelta(seconds=5)).astimezone(app.timezone))
    minute = RedBeatSchedulerEntry("every-minute", "kb.echo", crontab(minute="*"), args=["cron"],
                                   options={"queue": queue}, app=app)
    minute.save()
    minute.reschedule(last_run_at=datetime.datetime.now(UTC).astimezone(app.timezone))


def redbeat_fire(url, prefix, name, start, n):
    from redbeat import RedBeatSchedulerEntry

    app = redbeat_app(url, prefix)
    e = RedBeatSchedulerEntry.from_key(prefix + name, app=app)
    fire_times(app, e.schedule, e.last_run_at if start == "-" else parse(start), n)


def main():
    cmd, url, *rest = sys.argv[1:]
    if cmd == "celery-fire":
        return celery_fire(url, rest[0], rest[1], int(rest[2]))
    if cmd == "redbeat-setup":
        return redbeat_setup(url, *rest)
    if cmd == "redbeat-fire":
        return redbeat_fire(url, rest[0], rest[1], rest[2], int(rest[3]))
    if cmd == "django-setup":
        return django_setup(url, rest[0], rest[1])
    if cmd == "django-fire":
        import import_db_oracle

        return import_db_oracle.django_next(url, rest[0], rest[1], int(rest[2]))
    s = scheduler(url)
    try:
        if cmd == "aps-setup":
            s.add_job("kb:echo", "interval", id="every-5s", seconds=5, start_date=parse(rest[0]),
                      args=["interval"], misfire_grace_time=30, coalesce=True, max_instances=1)
            s.add_job("kb:echo", "cron", id="every-minute", minute="*", timezone="Europe/Berlin",
                      args=["cron"], misfire_grace_time=30, coalesce=True, max_instances=1)
        elif cmd == "aps-fire":
            job = s.get_job(rest[0])
            now, prev, out = parse(rest[1]), None, []
            while len(out) < int(rest[2]):
                t = job.trigger.get_next_fire_time(prev, now)
                out.append(t)
                prev = now = t
            print("\n".join(iso(t) for t in out))
        elif cmd == "aps-next-run":
            t = s.get_job(rest[0]).next_run_time
            print(iso(t) if t else "paused")
        elif cmd == "aps-pause":
            for job in s.get_jobs():
                s.pause_job(job.id)
        elif cmd == "aps-resume":
            for job in s.get_jobs():
                s.resume_job(job.id)
        else:
            sys.exit(f"unknown command {cmd}")
    finally:
        s.shutdown(wait=False)


if __name__ == "__main__":
    main()
