"""The old scheduler's side of tests/migration_db_e2e.rs, with APScheduler's own API on the
SQLAlchemy job store the test imports from.

    migration_e2e.py aps-setup DB_URL START_ISO   an interval job every 5 s from START, a cron job
    migration_e2e.py aps-fire DB_URL ID FROM N     the job's next N fire times after FROM
    migration_e2e.py aps-next-run DB_URL ID        the job's stored next_run_time (or "paused")
    migration_e2e.py aps-pause DB_URL              scheduler.pause_job(id) for every job
    migration_e2e.py aps-resume DB_URL             scheduler.resume_job(id) for every job
    migration_e2e.py django-setup DB_URL START_ISO QUEUE   the same two with django-celery-beat's ORM
    migration_e2e.py django-fire DB_URL NAME FROM N        the fire times django-celery-beat computes
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


def main():
    cmd, url, *rest = sys.argv[1:]
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
