"""The callable the migration e2e test's APScheduler jobs name (`kb:echo`): APScheduler resolves
a job's textual reference when the job is added, so it must be importable. kube-beat sends the
Celery task `kb.echo` instead, which tests/celery_app/kb_worker.py registers."""


def echo(*args, **kwargs):
    return args, kwargs
