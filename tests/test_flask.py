"""revocation.flask with Flask's own test client, on a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, g

from revocation import RevocationError, Revoker, Settings, TokenIssuer
from revocation.flask import FlaskRevocation, get_session, verify_session
from revocation.redis_server import free_port

from .conftest import WorkerThread

pytestmark = pytest.mark.integration


def build(settings: Settings, **options: Any) -> tuple[Flask, FlaskRevocation]:
    app = Flask(__name__)
    extension = FlaskRevocation(app, settings, **options)

    @app.get("/private")
    @verify_session()
    def private() -> Any:
        return {"user": g.revocation_session.user_id}

    @app.post("/db")
    @verify_session(check_database=True)
    def db() -> Any:
        return {"user": g.revocation_session.user_id}

    @app.post("/async-db")
    @verify_session(check_database=True)
    async def async_db() -> Any:
        return {"user": g.revocation_session.user_id, "async": True}

    @app.get("/optional")
    def optional() -> Any:
        session = get_session(check_database=True)
        return {"user": session.user_id if session else None}

    return app, extension


@pytest.fixture
def app(settings: Settings, worker: WorkerThread) -> Iterator[tuple[Flask, FlaskRevocation]]:
    app, extension = build(settings)
    yield app, extension
    extension.client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def synced(extension: FlaskRevocation, http: Any) -> None:
    http.get("/optional")  # the first request starts the client
    assert extension.client.wait_synced(5)


def test_valid_tokens_pass_in_sync_and_async_views(
    app: tuple[Flask, FlaskRevocation], issuer: TokenIssuer
) -> None:
    flask_app, extension = app
    http = flask_app.test_client()
    synced(extension, http)
    token = issuer.issue("alice")
    assert http.get("/private", headers=bearer(token)).json == {"user": "alice"}
    assert http.post("/db", headers=bearer(token)).json == {"user": "alice"}
    assert http.post("/async-db", headers=bearer(token)).json == {"user": "alice", "async": True}
    http.set_cookie("access_token", token)
    assert http.post("/db").json == {"user": "alice"}


def test_every_error_code_as_json(
    app: tuple[Flask, FlaskRevocation], settings: Settings, revoker: Revoker
) -> None:
    flask_app, extension = app
    http = flask_app.test_client()
    synced(extension, http)
    missing = http.get("/private")
    assert missing.status_code == 401 and missing.json["code"] == "unauthorised"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    invalid = http.get("/private", headers=bearer("nope"))
    assert invalid.status_code == 401 and invalid.json["code"] == "invalid_token"
    assert invalid.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    expired = TokenIssuer(settings, clock=lambda: 1_000_000.0).issue("alice", ttl=5)
    assert http.get("/private", headers=bearer(expired)).json["code"] == "try_refresh_token"
    token = TokenIssuer(settings).issue("alice")
    revocation = revoker.revoke(user_id="alice")
    assert extension.client.wait_applied(revocation.seq, 5)
    for path in ("/db", "/async-db"):
        revoked = http.post(path, headers=bearer(token))
        assert revoked.status_code == 401 and revoked.json["code"] == "token_revoked"
    assert http.get("/private", headers=bearer(token)).status_code == 200


def test_optional_sessions(app: tuple[Flask, FlaskRevocation], issuer: TokenIssuer) -> None:
    flask_app, extension = app
    http = flask_app.test_client()
    synced(extension, http)
    assert http.get("/optional").json == {"user": None}
    assert http.get("/optional", headers=bearer(issuer.issue("bob"))).json == {"user": "bob"}
    assert http.get("/optional", headers=bearer("broken")).status_code == 401


def test_unavailable_state_is_503_and_errors_can_be_overridden(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", fallback_timeout=0.05)
    token = TokenIssuer(settings).issue("alice")
    flask_app, extension = build(settings)
    response = flask_app.test_client().post("/db", headers=bearer(token))
    assert response.status_code == 503 and response.json["code"] == "revocation_unavailable"
    assert response.headers["Retry-After"] == "1"
    extension.client.close()

    def handler(exc: RevocationError) -> Any:
        return {"error": exc.code}, 418

    custom_app, custom = build(settings, error_handler=handler)
    response = custom_app.test_client().get("/private")
    assert response.status_code == 418 and response.json == {"error": "unauthorised"}
    custom.client.close()
