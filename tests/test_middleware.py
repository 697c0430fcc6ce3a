"""The plain ASGI and WSGI middleware, around bare apps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect
from werkzeug.test import Client as WSGIClient

from revocation import RevocationClient, Revoker, TokenIssuer
from revocation.http import ErrorResponse
from revocation.middleware import (
    WSGI_SESSION_KEY,
    RevocationASGIMiddleware,
    RevocationWSGIMiddleware,
)

pytestmark = pytest.mark.integration


async def whoami(request: Request) -> JSONResponse:
    session = request.state.revocation_session
    return JSONResponse({"user": session.user_id if session else None})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"user": websocket.state.revocation_session.user_id})
    await websocket.close()


@pytest.fixture
def asgi(client: RevocationClient) -> Iterator[TestClient]:
    app = Starlette(
        routes=[Route("/whoami", whoami), Route("/healthz", health), WebSocketRoute("/ws", socket)]
    )
    wrapped = RevocationASGIMiddleware(app, client, check_database=True, exempt_paths=["/healthz"])
    with TestClient(wrapped) as http:
        yield http


def test_asgi_requests_are_authenticated(
    asgi: TestClient, client: RevocationClient, issuer: TokenIssuer, revoker: Revoker
) -> None:
    token = issuer.issue("alice")
    assert asgi.get("/whoami", headers={"Authorization": f"Bearer {token}"}).json() == {
        "user": "alice"
    }
    asgi.cookies.set("access_token", token)
    assert asgi.get("/whoami").json() == {"user": "alice"}
    with asgi.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"user": "alice"}
    revocation = revoker.revoke(token=token)
    assert client.wait_applied(revocation.seq, 5)
    refused = asgi.get("/whoami")
    assert refused.status_code == 401 and refused.json()["code"] == "token_revoked"
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    with pytest.raises(WebSocketDisconnect) as closed, asgi.websocket_connect("/ws") as ws:
        ws.receive_json()
    assert closed.value.code == 1008
    asgi.cookies.clear()
    assert asgi.get("/whoami").json()["code"] == "unauthorised"
    assert asgi.get("/healthz").json() == {"ok": True}  # exempt


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    session = environ[WSGI_SESSION_KEY]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"user": session.user_id if session else None}).encode()]


def test_wsgi_requests_are_authenticated(
    client: RevocationClient, issuer: TokenIssuer, revoker: Revoker
) -> None:
    optional = WSGIClient(RevocationWSGIMiddleware(wsgi_app, client, session_required=False))
    assert optional.get("/").json == {"user": None}
    strict = WSGIClient(RevocationWSGIMiddleware(wsgi_app, client, check_database=True))
    token = issuer.issue("bob")
    assert strict.get("/", headers={"Authorization": f"Bearer {token}"}).json == {"user": "bob"}
    strict.set_cookie("access_token", token)
    assert strict.get("/").json == {"user": "bob"}
    revocation = revoker.revoke(user_id="bob")
    assert client.wait_applied(revocation.seq, 5)
    refused = strict.get("/")
    assert refused.status_code == 401 and refused.json["code"] == "token_revoked"
    assert strict.get("/", headers={"Authorization": "Bearer junk"}).json["code"] == "invalid_token"


def test_wsgi_errors_can_be_overridden(client: RevocationClient) -> None:
    def handler(exc: Exception) -> ErrorResponse:
        return ErrorResponse(401, (("Content-Type", "text/plain"),), b"go away")

    http = WSGIClient(RevocationWSGIMiddleware(wsgi_app, client, error_handler=handler))
    response = http.get("/")
    assert response.status_code == 401 and response.data == b"go away"
