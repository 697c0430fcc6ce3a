"""Flask: an extension with ``init_app`` and a ``verify_session`` decorator.

::

    from flask import Flask, g
    from revocation.flask import FlaskRevocation, verify_session

    app = Flask(__name__)
    FlaskRevocation(app)               # Settings() from REVOCATION_* by default

    @app.post("/transfer")
    @verify_session(check_database=True)
    def transfer():
        return {"user": g.revocation_session.user_id}

The client starts on the first request a process serves, so under gunicorn
(with or without ``--preload``) it runs in each worker, after the fork. The
session lands in ``flask.g.revocation_session``; ``get_session()`` returns it.
"""

from __future__ import annotations

import atexit
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Flask, Request, Response, current_app, g, request

from .client import RevocationClient
from .errors import RevocationError
from .http import SESSION_ATTRIBUTE, aauthenticate, authenticate, error_response, find_token
from .settings import Settings
from .tokens import Session

View = TypeVar("View", bound=Callable[..., Any])
ErrorHandler = Callable[[RevocationError], Any]


class FlaskRevocation:
    """The Flask extension: one :class:`RevocationClient` per app and process."""

    def __init__(
        self,
        app: Flask | None = None,
        settings: Settings | None = None,
        *,
        client: RevocationClient | None = None,
        error_handler: ErrorHandler | None = None,
    ) -> None:
        self.settings = settings or (client.settings if client is not None else Settings())
        self.client = client or RevocationClient(self.settings)
        self._error_handler = error_handler
        self._started = False
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``: start hook, JSON error handler, shutdown."""
        app.extensions["revocation"] = self
        app.before_request(self._ensure_started)
        app.register_error_handler(RevocationError, self._handle)
        atexit.register(self.client.close)

    def _ensure_started(self) -> None:
        if not self._started:
            self.client.start()  # after a fork the client restarts itself
            self._started = True

    def _handle(self, exc: RevocationError) -> Any:
        if self._error_handler is not None:
            return self._error_handler(exc)
        error = error_response(exc, retry_after=self.settings.max_staleness)
        return Response(error.body, status=error.status, headers=list(error.headers))


def _extension() -> FlaskRevocation:
    extension = current_app.extensions.get("revocation")
    if extension is None:
        raise RuntimeError("initialise revocation.flask.FlaskRevocation(app) first")
    return cast(FlaskRevocation, extension)


def _token(req: Request, extension: FlaskRevocation) -> str | None:
    return find_token(
        req.headers.get("Authorization"), req.cookies.get(extension.settings.cookie_name)
    )


def get_session(
    req: Request | None = None, check_database: bool = False, session_required: bool = False
) -> Session | None:
    """The request's :class:`Session` (also put in ``g.revocation_session``), or ``None``."""
    extension = _extension()
    extension._ensure_started()
    session = authenticate(
        extension.client,
        _token(req or request, extension),
        check_database=check_database,
        session_required=session_required,
    )
    setattr(g, SESSION_ATTRIBUTE, session)
    return session


async def aget_session(
    req: Request | None = None, check_database: bool = False, session_required: bool = False
) -> Session | None:
    """:func:`get_session` for async views."""
    extension = _extension()
    extension._ensure_started()
    session = await aauthenticate(
        extension.client,
        _token(req or request, extension),
        check_database=check_database,
        session_required=session_required,
    )
    setattr(g, SESSION_ATTRIBUTE, session)
    return session


def verify_session(
    check_database: bool = False, session_required: bool = True
) -> Callable[[View], View]:
    """Decorator for sync and async views; errors become JSON responses."""

    def decorate(view: View) -> View:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                await aget_session(check_database=check_database, session_required=session_required)
                return await view(*args, **kwargs)

            return cast(View, async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            get_session(check_database=check_database, session_required=session_required)
            return view(*args, **kwargs)

        return cast(View, wrapper)

    return decorate
