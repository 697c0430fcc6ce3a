"""FastAPI: a lifespan-managed client and SuperTokens-style dependencies.

::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from revocation import Session
    from revocation.fastapi import init_app, verify_session

    app = FastAPI()
    init_app(app)                      # Settings() from REVOCATION_* by default

    @app.post("/transfer")
    async def transfer(session: Annotated[Session, Depends(verify_session(check_database=True))]):
        return {"user": session.user_id}

``init_app`` wraps the app's lifespan, so the client starts in each worker
process at startup (after uvicorn/gunicorn fork) and closes at shutdown, and
registers the JSON error handler. The session is the dependency's value and
also ``request.state.revocation_session``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .client import RevocationClient
from .errors import RevocationError
from .http import SESSION_ATTRIBUTE, aauthenticate, error_response, find_token
from .settings import Settings
from .tokens import Session

ErrorHandler = Callable[[Request, RevocationError], Response | Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Config:
    client: RevocationClient
    cookie_name: str
    retry_after: float


def init_app(
    app: FastAPI,
    settings: Settings | None = None,
    *,
    client: RevocationClient | None = None,
    error_handler: ErrorHandler | None = None,
) -> RevocationClient:
    """Attach a client to ``app``: started by the lifespan, errors as JSON.

    ``error_handler(request, exc)`` replaces the default JSON error response.
    """
    settings = settings or (client.settings if client is not None else Settings())
    client = client or RevocationClient(settings)
    app.state.revocation = _Config(client, settings.cookie_name, settings.max_staleness)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        client.start()
        try:
            async with inner(app_) as state:
                yield state
        finally:
            await asyncio.to_thread(client.close)

    app.router.lifespan_context = lifespan

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RevocationError)
        if error_handler is not None:
            answer = error_handler(request, exc)
            return await answer if isinstance(answer, Awaitable) else answer
        error = error_response(exc, retry_after=settings.max_staleness)
        return Response(error.body, status_code=error.status, headers=dict(error.headers))

    app.add_exception_handler(RevocationError, handle)
    return client


def _config(request: Request) -> _Config:
    config = getattr(request.app.state, "revocation", None)
    if config is None:
        raise RuntimeError("call revocation.fastapi.init_app(app) before using its dependencies")
    assert isinstance(config, _Config)
    return config


async def get_session(
    request: Request, check_database: bool = False, session_required: bool = False
) -> Session | None:
    """The request's :class:`Session`, or ``None`` when it carries no token.

    Raises the library's errors (rendered as JSON by ``init_app``'s handler).
    """
    config = _config(request)
    token = find_token(
        request.headers.get("authorization"), request.cookies.get(config.cookie_name)
    )
    session = await aauthenticate(
        config.client, token, check_database=check_database, session_required=session_required
    )
    setattr(request.state, SESSION_ATTRIBUTE, session)
    return session


def verify_session(
    check_database: bool = False, session_required: bool = True
) -> Callable[[Request], Awaitable[Session | None]]:
    """A dependency: ``Depends(verify_session(check_database=True))``."""

    async def dependency(request: Request) -> Session | None:
        return await get_session(
            request, check_database=check_database, session_required=session_required
        )

    return dependency
