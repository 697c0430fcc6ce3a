"""Plain ASGI and WSGI middleware, for any other framework.

Every HTTP request (and, for ASGI, websocket connection) outside
``exempt_paths`` is authenticated; the session lands in
``scope["state"]["revocation_session"]`` (ASGI; Starlette's
``request.state.revocation_session``) or ``environ["revocation.session"]``
(WSGI). Errors are answered with the JSON error response (a websocket is
closed with code 1008, policy violation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .client import RevocationClient
from .errors import RevocationError
from .http import (
    SESSION_ATTRIBUTE,
    ErrorResponse,
    aauthenticate,
    authenticate,
    cookie_value,
    error_response,
    find_token,
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
WSGI_SESSION_KEY = "revocation.session"


class _Options:
    def __init__(
        self,
        client: RevocationClient,
        check_database: bool,
        session_required: bool,
        exempt_paths: Iterable[str],
        error_handler: Callable[[RevocationError], ErrorResponse] | None,
    ) -> None:
        self.client = client
        self.check_database = check_database
        self.session_required = session_required
        self.exempt_paths = frozenset(exempt_paths)
        self.cookie_name = client.settings.cookie_name
        self._error_handler = error_handler
        self._started = False

    def ensure_started(self) -> None:
        if not self._started:
            self.client.start()  # in the serving process, after any fork
            self._started = True

    def error(self, exc: RevocationError) -> ErrorResponse:
        if self._error_handler is not None:
            return self._error_handler(exc)
        return error_response(exc, retry_after=self.client.settings.max_staleness)


class RevocationASGIMiddleware:
    """Authenticates ASGI requests; see the module docstring.

    ``error_handler(exc)`` may return another :class:`ErrorResponse`.
    """

    def __init__(
        self,
        app: ASGIApp,
        client: RevocationClient,
        *,
        check_database: bool = False,
        session_required: bool = True,
        exempt_paths: Iterable[str] = (),
        error_handler: Callable[[RevocationError], ErrorResponse] | None = None,
    ) -> None:
        self.app = app
        self._options = _Options(
            client, check_database, session_required, exempt_paths, error_handler
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        options = self._options
        if scope["type"] not in ("http", "websocket") or scope.get("path") in options.exempt_paths:
            await self.app(scope, receive, send)
            return
        options.ensure_started()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = find_token(
            headers.get("authorization"), cookie_value(headers.get("cookie"), options.cookie_name)
        )
        try:
            session = await aauthenticate(
                options.client,
                token,
                check_database=options.check_database,
                session_required=options.session_required,
            )
        except RevocationError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            error = options.error(exc)
            await send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in error.headers],
                }
            )
            await send({"type": "http.response.body", "body": error.body})
            return
        scope.setdefault("state", {})[SESSION_ATTRIBUTE] = session
        await self.app(scope, receive, send)


_REASONS = {401: "Unauthorized", 500: "Internal Server Error", 503: "Service Unavailable"}


class RevocationWSGIMiddleware:
    """Authenticates WSGI requests; see the module docstring."""

    def __init__(
        self,
        app: WSGIApp,
        client: RevocationClient,
        *,
        check_database: bool = False,
        session_required: bool = True,
        exempt_paths: Iterable[str] = (),
        error_handler: Callable[[RevocationError], ErrorResponse] | None = None,
    ) -> None:
        self.app = app
        self._options = _Options(
            client, check_database, session_required, exempt_paths, error_handler
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        options = self._options
        if environ.get("PATH_INFO") in options.exempt_paths:
            return self.app(environ, start_response)
        options.ensure_started()
        token = find_token(
            environ.get("HTTP_AUTHORIZATION"),
            cookie_value(environ.get("HTTP_COOKIE"), options.cookie_name),
        )
        try:
            session = authenticate(
                options.client,
                token,
                check_database=options.check_database,
                session_required=options.session_required,
            )
        except RevocationError as exc:
            error = options.error(exc)
            status = f"{error.status} {_REASONS.get(error.status, 'Error')}"
            start_response(status, list(error.headers))
            return [error.body]
        environ[WSGI_SESSION_KEY] = session
        return self.app(environ, start_response)
