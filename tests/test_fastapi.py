"""revocation.fastapi with FastAPI's own TestClient, on a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from revocation import RevocationError, Revoker, Session, Settings, TokenIssuer
from revocation.fastapi import get_session, init_app, verify_session
from revocation.redis_server import free_port

from .conftest import WorkerThread

pytestmark = pytest.mark.integration


def build(settings: Settings, **options: Any) -> FastAPI:
    app = FastAPI()
    init_app(app, settings, **options)

    @app.get("/private")
    async def private(session: Annotated[Session, Depends(verify_session())]) -> dict[str, Any]:
        return {"user": session.user_id}

    @app.post("/db")
    async def db(
        request: Request,
        session: Annotated[Session, Depends(verify_session(check_database=True))],
    ) -> dict[str, Any]:
        assert request.state.revocation_session is session
        return {"user": session.user_id}

    @app.get("/optional")
    async def optional(
        session: Annotated[Session | None, Depends(verify_session(session_required=False))],
    ) -> dict[str, Any]:
        return {"user": session.user_id if session else None}

    @app.get("/manual")
    async def manual(request: Request) -> dict[str, Any]:
        session = await get_session(request, check_database=True)
        return {"user": session.user_id if session else None}

    @app.get("/sync")
    def sync_route(
        session: Annotated[Session, Depends(verify_session(check_database=True))],
    ) -> dict[str, Any]:
        return {"user": session.user_id}

    return app


@pytest.fixture
def http(settings: Settings, worker: WorkerThread) -> Iterator[TestClient]:
    app = build(settings)
    with TestClient(app) as client:
        assert app.state.revocation.client.wait_synced(5)
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_valid_token_passes_in_header_or_cookie(http: TestClient, issuer: TokenIssuer) -> None:
    token = issuer.issue("alice")
    assert http.get("/private", headers=bearer(token)).json() == {"user": "alice"}
    http.cookies.set("access_token", token)
    assert http.post("/db").json() == {"user": "alice"}
    assert http.get("/sync").json() == {"user": "alice"}


def test_no_token_is_401_with_a_bare_bearer_challenge(http: TestClient) -> None:
    response = http.get("/private")
    assert response.status_code == 401
    assert response.json() == {"message": "no access token", "code": "unauthorised"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 10_000])
def test_an_invalid_token_is_401_invalid_token(http: TestClient, token: str) -> None:
    response = http.get("/private", headers=bearer(token))
    assert response.status_code == 401 and response.json()["code"] == "invalid_token"
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_an_expired_token_asks_for_a_refresh(http: TestClient, settings: Settings) -> None:
    expired = TokenIssuer(settings, clock=lambda: 1_000_000.0).issue("alice", ttl=5)
    response = http.get("/private", headers=bearer(expired))
    assert response.status_code == 401 and response.json()["code"] == "try_refresh_token"


def test_a_revoked_token_is_refused_where_the_database_is_checked(
    http: TestClient, issuer: TokenIssuer, revoker: Revoker
) -> None:
    token = issuer.issue("alice")
    revocation = revoker.revoke(token=token)
    assert http.app.state.revocation.client.wait_applied(revocation.seq, 5)  # type: ignore[attr-defined]
    response = http.post("/db", headers=bearer(token))
    assert response.status_code == 401 and response.json()["code"] == "token_revoked"
    assert http.get("/manual", headers=bearer(token)).json()["code"] == "token_revoked"
    assert http.get("/private", headers=bearer(token)).status_code == 200  # stateless


def test_the_header_wins_over_the_cookie(
    http: TestClient, issuer: TokenIssuer, revoker: Revoker
) -> None:
    good, revoked = issuer.issue("good"), issuer.issue("revoked")
    revocation = revoker.revoke(token=revoked)
    assert http.app.state.revocation.client.wait_applied(revocation.seq, 5)  # type: ignore[attr-defined]
    http.cookies.set("access_token", revoked)
    assert http.post("/db", headers=bearer(good)).json() == {"user": "good"}
    http.cookies.set("access_token", good)
    assert http.post("/db", headers=bearer(revoked)).status_code == 401


def test_optional_sessions(http: TestClient, issuer: TokenIssuer) -> None:
    assert http.get("/optional").json() == {"user": None}
    assert http.get("/manual").json() == {"user": None}
    assert http.get("/optional", headers=bearer(issuer.issue("alice"))).json() == {"user": "alice"}
    assert http.get("/optional", headers=bearer("broken")).status_code == 401


def test_unavailable_revocation_state_is_503_with_retry_after(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", fallback_timeout=0.05)
    app = build(settings)
    token = TokenIssuer(settings).issue("alice")
    with TestClient(app) as http:
        response = http.post("/db", headers=bearer(token))
        assert response.status_code == 503
        assert response.json()["code"] == "revocation_unavailable"
        assert response.headers["Retry-After"] == "1"
        assert http.get("/private", headers=bearer(token)).status_code == 200


def test_the_error_response_can_be_overridden(settings: Settings, worker: WorkerThread) -> None:
    def handler(request: Request, exc: RevocationError) -> JSONResponse:
        return JSONResponse({"error": exc.code.upper()}, status_code=418)

    with TestClient(build(settings, error_handler=handler)) as http:
        response = http.get("/private")
        assert response.status_code == 418 and response.json() == {"error": "UNAUTHORISED"}


def test_the_lifespan_starts_and_closes_the_client(
    settings: Settings, worker: WorkerThread
) -> None:
    app = build(settings)
    client = app.state.revocation.client
    assert not client.status().fresh
    with TestClient(app):
        assert client.wait_synced(5)
    assert not client.status().fresh and not client.status().connected


def test_dependencies_without_init_app_say_what_is_missing() -> None:
    app = FastAPI()

    @app.get("/")
    async def route(session: Annotated[Session, Depends(verify_session())]) -> None:
        return None

    with (
        TestClient(app, raise_server_exceptions=True) as http,
        pytest.raises(RuntimeError, match="init_app"),
    ):
        http.get("/")
