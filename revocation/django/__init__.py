"""Django: an app, settings, and a ``verify_session`` view decorator.

::

    INSTALLED_APPS = [..., "revocation.django"]
    REVOCATION = {"redis_url": "redis://...", "signing_key": ..., "event_key": ...}
    # (or REVOCATION_* environment variables; both may be combined)

    from revocation.django import verify_session

    @verify_session(check_database=True)
    def transfer(request):
        return JsonResponse({"user": request.revocation_session.user_id})

The decorator works on function views, async views and class-based views
(sync or async). The session lands in ``request.revocation_session``. The
client is built from settings when the app loads (bad settings fail start-up)
and started on first use in each process, so it runs in every gunicorn or
uvicorn worker after the fork.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from ..client import RevocationClient
from ..errors import RevocationError
from ..http import SESSION_ATTRIBUTE, aauthenticate, authenticate, error_response, find_token
from ..settings import Settings
from ..tokens import Session

Target = TypeVar("Target", bound=Callable[..., Any])
_lock = threading.Lock()
_client: RevocationClient | None = None
_started = False


def build_settings() -> Settings:
    """``Settings`` from ``settings.REVOCATION`` (a dict) over ``REVOCATION_*`` env vars."""
    return Settings(**getattr(django_settings, "REVOCATION", {}))


def get_client() -> RevocationClient:
    """This process's client, started on first use."""
    global _client, _started  # noqa: PLW0603 (one client per process, as Django settings are)
    client = _client
    if client is None or not _started:
        with _lock:
            if _client is None:
                _client = RevocationClient(build_settings())
            if not _started:
                _client.start()
                _started = True
            client = _client
    return client


def close_client() -> None:
    """Stop this process's client (called at exit)."""
    global _client, _started
    with _lock:
        if _client is not None:
            _client.close()
        _client, _started = None, False


def _token(request: HttpRequest, client: RevocationClient) -> str | None:
    return find_token(
        request.headers.get("Authorization"), request.COOKIES.get(client.settings.cookie_name)
    )


def get_session(
    request: HttpRequest, check_database: bool = False, session_required: bool = False
) -> Session | None:
    """The request's :class:`Session` (also ``request.revocation_session``), or ``None``."""
    client = get_client()
    session = authenticate(
        client,
        _token(request, client),
        check_database=check_database,
        session_required=session_required,
    )
    setattr(request, SESSION_ATTRIBUTE, session)
    return session


async def aget_session(
    request: HttpRequest, check_database: bool = False, session_required: bool = False
) -> Session | None:
    """:func:`get_session` for async views."""
    client = get_client()
    session = await aauthenticate(
        client,
        _token(request, client),
        check_database=check_database,
        session_required=session_required,
    )
    setattr(request, SESSION_ATTRIBUTE, session)
    return session


def error_as_response(exc: RevocationError) -> HttpResponse:
    """The JSON error response, or ``settings.REVOCATION_ERROR_HANDLER(exc)`` when set."""
    custom = getattr(django_settings, "REVOCATION_ERROR_HANDLER", None)
    if custom:
        handler = import_string(custom) if isinstance(custom, str) else custom
        return cast(HttpResponse, handler(exc))
    retry_after = get_client().settings.max_staleness
    error = error_response(exc, retry_after=retry_after)
    response = HttpResponse(error.body, status=error.status, content_type="application/json")
    for name, value in error.headers:
        if name != "Content-Type":
            response[name] = value
    return response


def _request_of(args: tuple[Any, ...]) -> HttpRequest:
    for arg in args[:2]:  # (request, ...) or (self, request, ...)
        if isinstance(arg, HttpRequest):
            return arg
    raise TypeError("verify_session: the view was not called with a request")


def _wrap_function(view: Target, check_database: bool, session_required: bool) -> Target:
    if inspect.iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_view(*args: Any, **kwargs: Any) -> Any:
            try:
                await aget_session(_request_of(args), check_database, session_required)
            except RevocationError as exc:
                return error_as_response(exc)
            return await view(*args, **kwargs)

        return cast(Target, async_view)

    @functools.wraps(view)
    def sync_view(*args: Any, **kwargs: Any) -> Any:
        try:
            get_session(_request_of(args), check_database, session_required)
        except RevocationError as exc:
            return error_as_response(exc)
        return view(*args, **kwargs)

    return cast(Target, sync_view)


def _wrap_class(view: type[Any], check_database: bool, session_required: bool) -> type[Any]:
    dispatch = view.dispatch
    if getattr(view, "view_is_async", False):
        # Async class-based views: dispatch returns the handler's coroutine.
        @functools.wraps(dispatch)
        def async_dispatch(self: Any, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            async def run() -> Any:
                try:
                    await aget_session(request, check_database, session_required)
                except RevocationError as exc:
                    return error_as_response(exc)
                return await dispatch(self, request, *args, **kwargs)

            return run()

        view.dispatch = async_dispatch
    else:
        view.dispatch = _wrap_function(dispatch, check_database, session_required)
    return view


@overload
def verify_session(view: Target, /) -> Target: ...
@overload
def verify_session(
    *, check_database: bool = False, session_required: bool = True
) -> Callable[[Target], Target]: ...
def verify_session(
    view: Any = None, /, *, check_database: bool = False, session_required: bool = True
) -> Any:
    """Protect a view: function, async function or class-based view.

    Use bare (``@verify_session``) or with options
    (``@verify_session(check_database=True)``). Errors become JSON responses.
    """

    def decorate(target: Any) -> Any:
        if isinstance(target, type):
            return _wrap_class(target, check_database, session_required)
        return _wrap_function(target, check_database, session_required)

    return decorate(view) if view is not None else decorate
