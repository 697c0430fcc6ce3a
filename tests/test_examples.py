"""The example WSGI app answers 200 / 401 with a reason / 503, never a 500."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from revocation import Revoker, Settings, TokenIssuer

from .conftest import WorkerThread

pytestmark = pytest.mark.integration
APP = Path(__file__).resolve().parents[1] / "examples" / "wsgi_app.py"


@pytest.fixture
def example(settings: Settings, worker: WorkerThread, monkeypatch: pytest.MonkeyPatch) -> Any:
    assert settings.signing_key and settings.event_key
    monkeypatch.setenv("REVOCATION_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("REVOCATION_NAMESPACE", settings.namespace)
    monkeypatch.setenv("REVOCATION_SIGNING_KEY", settings.signing_key.get_secret_value())
    monkeypatch.setenv("REVOCATION_EVENT_KEY", settings.event_key.get_secret_value())
    spec = importlib.util.spec_from_file_location("wsgi_app_example", APP)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module, ModuleType)
    with module.client:
        assert module.client.wait_synced(5)
        yield module


def call(module: Any, authorization: str | None, path: str = "/whoami") -> tuple[str, dict, dict]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    seen: dict[str, Any] = {}

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(module.app(environ, start))
    return seen["status"], seen["headers"], json.loads(body)


def test_the_example_app_speaks_http_errors(example: Any, settings: Settings) -> None:
    token = TokenIssuer(settings).issue("alice")
    status, _, body = call(example, f"Bearer {token}")
    assert status == "200 OK" and body["user_id"] == "alice"
    for auth in (None, "Basic abc"):
        status, headers, body = call(example, auth)
        assert status == "401 Unauthorized" and body["code"] == "unauthorised"
        assert headers["WWW-Authenticate"] == "Bearer"
    for auth in ("Bearer not-a-token", "Bearer " + "x" * 100_000):
        status, headers, body = call(example, auth)
        assert status == "401 Unauthorized" and body["code"] == "invalid_token" and body["message"]
        assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    with Revoker(settings) as revoker:
        revocation = revoker.revoke(token=token)
    assert example.client.wait_applied(revocation.seq, 5)
    status, _, body = call(example, f"Bearer {token}")
    assert status == "401 Unauthorized" and body["code"] == "token_revoked"
    assert call(example, None, "/healthz")[2]["fresh"] is True
