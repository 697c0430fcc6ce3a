"""The Django app config: validates settings at start-up, closes the client at exit."""

from __future__ import annotations

import atexit

from django.apps import AppConfig


class RevocationConfig(AppConfig):
    name = "revocation.django"
    label = "revocation"
    verbose_name = "Revocation"

    def ready(self) -> None:
        from . import build_settings, close_client  # noqa: PLC0415 (after settings load)

        build_settings()  # a bad setting stops start-up with a ConfigError naming it
        atexit.register(close_client)
