"""revocation.django with Django's own test client, on a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.test.utils import override_settings

from revocation import Revoker, Settings, TokenIssuer
from revocation.redis_server import RedisServer, free_port

from .conftest import EVENT_KEY, SIGNING_KEY, WorkerThread

pytestmark = pytest.mark.integration
PATHS = ["/db", "/async-db", "/class", "/async-class"]


@pytest.fixture(scope="module")
def revocation_settings(redis_server: RedisServer) -> Iterator[dict[str, Any]]:
    values: dict[str, Any] = {
        "redis_url": redis_server.url,
        "namespace": f"django-{uuid.uuid4().hex[:8]}",
        "signing_key": SIGNING_KEY,
        "event_key": EVENT_KEY,
        "heartbeat_interval": 0.05,
        "max_staleness": 0.5,
        "fallback_timeout": 0.2,
    }
    if not django_settings.configured:
        django_settings.configure(
            ROOT_URLCONF="tests.django_urls",
            INSTALLED_APPS=["revocation.django"],
            ALLOWED_HOSTS=["*"],
            MIDDLEWARE=[],
            REVOCATION=values,
        )
        django.setup()
    worker = WorkerThread(Settings(**values)).start()
    with override_settings(REVOCATION=values):
        yield values
    worker.stop()


@pytest.fixture
def http(revocation_settings: dict[str, Any]) -> Iterator[Client]:
    from revocation.django import close_client, get_client

    close_client()
    assert get_client().wait_synced(5)
    yield Client()
    close_client()


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_every_kind_of_view_accepts_a_valid_token(
    http: Client, revocation_settings: dict[str, Any]
) -> None:
    token = TokenIssuer(Settings(**revocation_settings)).issue("alice")
    assert http.get("/private", **bearer(token)).json() == {"user": "alice"}
    for path in PATHS:
        response = http.get(path, **bearer(token))
        assert response.status_code == 200 and response.json()["user"] == "alice", path
    http.cookies["access_token"] = token
    assert http.get("/async-class").json()["user"] == "alice"


def test_every_kind_of_view_refuses_a_revoked_token(
    http: Client, revocation_settings: dict[str, Any]
) -> None:
    from revocation.django import get_client

    settings = Settings(**revocation_settings)
    token = TokenIssuer(settings).issue("bob", session_handle="bob-phone")
    with Revoker(settings) as revoker:
        revocation = revoker.revoke(session_handle="bob-phone")
    assert get_client().wait_applied(revocation.seq, 5)
    for path in PATHS:
        response = http.get(path, **bearer(token))
        assert response.status_code == 401, path
        assert response.json()["code"] == "token_revoked"
        assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert http.get("/private", **bearer(token)).status_code == 200


def test_missing_invalid_and_expired_tokens(
    http: Client, revocation_settings: dict[str, Any]
) -> None:
    missing = http.get("/class")
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorised"
    assert missing["WWW-Authenticate"] == "Bearer"
    assert http.get("/async-db", **bearer("junk")).json()["code"] == "invalid_token"
    expired = TokenIssuer(Settings(**revocation_settings), clock=lambda: 1e6).issue("a", ttl=1)
    assert http.get("/db", **bearer(expired)).json()["code"] == "try_refresh_token"


def test_optional_sessions(http: Client, revocation_settings: dict[str, Any]) -> None:
    token = TokenIssuer(Settings(**revocation_settings)).issue("carol")
    for path in ("/optional", "/async-optional"):
        assert http.get(path).json() == {"user": None}
        assert http.get(path, **bearer(token)).json() == {"user": "carol"}


def test_unavailable_state_is_503_and_errors_can_be_overridden(
    revocation_settings: dict[str, Any],
) -> None:
    from revocation.django import close_client

    dead = {
        **revocation_settings,
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "fallback_timeout": 0.05,
    }
    token = TokenIssuer(Settings(**dead)).issue("dave")
    close_client()
    try:
        with override_settings(REVOCATION=dead):
            response = Client().get("/db", **bearer(token))
            assert response.status_code == 503 and response["Retry-After"] == "1"
            assert response.json()["code"] == "revocation_unavailable"
            with override_settings(REVOCATION_ERROR_HANDLER="tests.django_urls.teapot"):
                response = Client().get("/async-class")
                assert response.status_code == 418 and response.json() == {"error": "unauthorised"}
    finally:
        close_client()
