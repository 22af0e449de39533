"""Minimal Django project with django-auditlog, used by the tests to write real LogEntry rows.

The database comes from DATABASE_URL (dj-database-url form, as structured-log-transfer reads it).
"""
import os

import dj_database_url

SECRET_KEY = "test-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "auditlog",
    "shop",
]
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
