"""Settings of the Django example (``DJANGO_SETTINGS_MODULE=examples.django_app.settings``)."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS = ["revocation.django"]
MIDDLEWARE: list[str] = []
USE_TZ = True
# Any Settings field; REVOCATION_* environment variables fill the rest.
REVOCATION: dict[str, object] = {}
