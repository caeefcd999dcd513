"""Minimal Django settings for the import fidelity tests: django-celery-beat's models and
migrations against the Postgres database named by KBT_DJANGO_DB_URL (a per-test database)."""
import os
from urllib.parse import urlparse

_u = urlparse(os.environ["KBT_DJANGO_DB_URL"])
SECRET_KEY = "kbt-tests-only"
USE_TZ = True
TIME_ZONE = os.environ.get("KBT_DJANGO_TIME_ZONE", "UTC")
INSTALLED_APPS = ["django_celery_beat", "django.contrib.contenttypes"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _u.path.lstrip("/"),
        "USER": _u.username or "postgres",
        "PASSWORD": _u.password or "",
        "HOST": _u.hostname or "127.0.0.1",
        "PORT": str(_u.port or 5432),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
