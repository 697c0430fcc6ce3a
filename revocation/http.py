"""What every framework integration shares: finding the token, mapping errors to HTTP.

- The token comes from ``Authorization: Bearer <token>``, else from the cookie
  named by ``Settings.cookie_name``. The header wins when both are present: it
  is what API clients set on purpose, while a browser sends cookies along
  whether the caller meant to or not.
- Errors become JSON ``{"message": ..., "code": ...}``: 401 for
  :class:`Unauthorised` (with ``WWW-Authenticate`` as RFC 6750 section 3
  describes: ``error="invalid_token"`` for a bad, expired or revoked token,
  and a bare ``Bearer`` challenge when the request carries no token at all,
  as section 3.1 asks), 503 with ``Retry-After`` for
  :class:`RevocationUnavailable`, 500 for anything else the library raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

import orjson

from .client import RevocationClient
from .errors import MissingToken, RevocationError, RevocationUnavailable, Unauthorised
from .tokens import Session

SESSION_ATTRIBUTE = "revocation_session"
"""Where the integrations put the :class:`Session` (request/state attribute, ``flask.g``)."""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """One cookie's value from a raw ``Cookie`` header (for ASGI/WSGI)."""
    if not cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None and morsel.value else None


def find_token(authorization: str | None, cookie: str | None) -> str | None:
    """The header's bearer token, else the cookie's value."""
    return bearer_token(authorization) or cookie or None


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A framework-neutral HTTP error: status, headers, JSON body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def payload(self) -> dict[str, str]:
        data: dict[str, str] = orjson.loads(self.body)
        return data


def error_response(exc: RevocationError, *, retry_after: float = 1.0) -> ErrorResponse:
    """The HTTP answer to ``exc``."""
    body = orjson.dumps({"message": exc.message, "code": exc.code})
    json_type = ("Content-Type", "application/json")
    if isinstance(exc, MissingToken):
        return ErrorResponse(401, (json_type, ("WWW-Authenticate", "Bearer")), body)
    if isinstance(exc, Unauthorised):
        challenge = 'Bearer error="invalid_token"'
        return ErrorResponse(401, (json_type, ("WWW-Authenticate", challenge)), body)
    if isinstance(exc, RevocationUnavailable):
        seconds = str(max(1, math.ceil(retry_after)))
        return ErrorResponse(503, (json_type, ("Retry-After", seconds)), body)
    return ErrorResponse(500, (json_type,), body)


def authenticate(
    client: RevocationClient,
    token: str | None,
    *,
    check_database: bool,
    session_required: bool,
) -> Session | None:
    """Verify ``token``; ``None`` when it is absent and not required.

    A token that is present but bad raises even when no session is required:
    a client that sends a broken or revoked token should be told so.
    """
    if token is None:
        if session_required:
            raise MissingToken("no access token")
        return None
    return client.verify(token, check_database=check_database)


async def aauthenticate(
    client: RevocationClient,
    token: str | None,
    *,
    check_database: bool,
    session_required: bool,
) -> Session | None:
    """:func:`authenticate` for asyncio code."""
    if token is None:
        if session_required:
            raise MissingToken("no access token")
        return None
    return await client.averify(token, check_database=check_database)
