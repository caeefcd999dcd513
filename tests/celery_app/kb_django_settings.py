"""A minimal Django project for Celery's `django-db` result backend (django-celery-results).

The database is named by KB_DJANGO_DATABASE_URL (postgresql://user[:password]@host:port/name).
Used by tests/brokers.rs: `python -m django migrate` creates django_celery_results_taskresult,
then the worker runs with DJANGO_SETTINGS_MODULE=kb_django_settings and
CELERY_RESULT_BACKEND=django-db.
"""

import os
from urllib.parse import unquote, urlparse

_url = urlparse(os.environ["KB_DJANGO_DATABASE_URL"])

SECRET_KEY = "kube-beat-tests-only"
INSTALLED_APPS = ["django_celery_results"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": _url.port or 5432,
    }
}
