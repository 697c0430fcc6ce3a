"""Issuing and verifying access tokens (JWS compact serialisation).

Verification parses the token itself rather than through ``jwt.decode``: the
header is read once (``jwt.get_unverified_header`` alone costs more than the
HMAC), every claim's type is checked (pyjwt accepts floats and numeric strings
for ``exp``), and tokens already verified are kept in a bounded cache so a
repeated token costs a dictionary lookup plus the expiry check, which runs on
every call. The signature itself is checked with pyjwt's algorithm objects.
"""

from __future__ import annotations

import binascii
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from .errors import ConfigError, InvalidToken, TryRefreshToken
from .keys import KeyRing
from .settings import Settings

Clock = Callable[[], float]
MAX_TOKEN_LENGTH = 8192
"""Longer tokens are refused before any parsing (a real one is well under 2 KB)."""
RESERVED_CLAIMS = frozenset({"sub", "sid", "jti", "iat", "exp", "nbf", "iss", "aud"})
_B64_TRANSLATE = bytes.maketrans(b"-_", b"+/")
_B64URL_TRANSLATE = bytes.maketrans(b"+/", b"-_")


@dataclass(frozen=True, slots=True)
class Session:
    """A verified access token.

    ``claims`` is a read-only view of the whole payload. ``session_handle`` is
    the ``sid`` claim (``None`` for tokens from issuers that set none).
    """

    user_id: str
    session_handle: str | None
    jti: str
    issued_at: float
    expires_at: float
    claims: Mapping[str, Any]

    def get_user_id(self) -> str:
        """The token's subject (``sub``)."""
        return self.user_id

    def get_handle(self) -> str | None:
        """The session handle (``sid``)."""
        return self.session_handle

    def get_access_token_payload(self) -> Mapping[str, Any]:
        """Every claim of the token, read-only."""
        return self.claims


def _b64encode(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).translate(_B64URL_TRANSLATE).rstrip(b"=")


def _b64decode(part: bytes, what: str) -> bytes:
    try:
        padded = part.translate(_B64_TRANSLATE) + b"=" * (-len(part) % 4)
        return binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error:
        raise InvalidToken(f"malformed token: {what} is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidToken(f"malformed token: {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"malformed token: {what} is not a JSON object")
    return value


def _number(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken(f"claim {name!r} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"claim {name!r} must be a number")
    return float(value)


def _string(claims: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken(f"claim {name!r} is missing")
        return None
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"claim {name!r} must be a non-empty string")
    return value


class TokenIssuer:
    """Issues signed access tokens with the settings' signing key.

    Thread-safe (it holds no mutable state). ``clock`` returns Unix time in
    seconds; ``iat`` keeps its sub-second part, as RFC 7519 allows, so a token
    issued right after ``revoke(user_id=...)`` is told apart from one issued
    right before it even within the same second.
    """

    def __init__(self, settings: Settings, *, clock: Clock = time.time) -> None:
        self._settings = settings
        signing = KeyRing(settings).signing
        if signing is None:
            raise ConfigError("issuing tokens needs signing_key", field="signing_key")
        self._key = signing
        self._header = _b64encode(
            orjson.dumps({"alg": signing.alg, "typ": "JWT", "kid": signing.kid})
        )
        self._clock = clock

    def issue(
        self,
        user_id: str,
        *,
        session_handle: str | None = None,
        ttl: float | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A new signed token for ``user_id``.

        A new session handle and ``jti`` are made unless given. ``ttl`` defaults
        to ``access_token_ttl`` and may not exceed it. ``claims`` adds custom
        claims; the registered ones (``sub``, ``exp``...) cannot be overridden.

        Raises:
            ValueError: empty ``user_id``, bad ``ttl``, or a reserved claim in ``claims``.
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        limit = self._settings.access_token_ttl
        ttl = limit if ttl is None else ttl
        if not 0 < ttl <= limit:
            raise ValueError(f"ttl must be in (0, {limit}] seconds (access_token_ttl)")
        extra = dict(claims or {})
        clash = RESERVED_CLAIMS.intersection(extra)
        if clash:
            raise ValueError(f"claims may not set registered claims: {sorted(clash)}")
        now = round(self._clock(), 6)
        payload: dict[str, Any] = {
            **extra,
            "sub": user_id,
            "sid": session_handle or str(uuid.uuid4()),
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": round(now + ttl, 6),
        }
        if self._settings.issuer is not None:
            payload["iss"] = self._settings.issuer
        if self._settings.audience is not None:
            payload["aud"] = self._settings.audience
        signing_input = self._header + b"." + _b64encode(orjson.dumps(payload))
        return (signing_input + b"." + _b64encode(self._key.sign(signing_input))).decode()


class TokenVerifier:
    """Verifies signatures and claims; no I/O.

    Thread-safe: the verified-token cache is a dict whose single-key reads and
    writes are atomic; eviction takes a lock. Cached entries are only ever
    tokens whose signature and claims checked out; expiry is checked again on
    every call. A new ``Settings`` (key rotation) means a new verifier and so
    an empty cache.
    """

    def __init__(
        self, settings: Settings, *, clock: Clock = time.time, cache_size: int = 10_000
    ) -> None:
        self._keys = KeyRing(settings).by_kid
        if not self._keys:
            raise ConfigError(
                "verifying tokens needs signing_key or verification_keys", field="signing_key"
            )
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._leeway = settings.leeway
        self._clock = clock
        self._cache: dict[str, Session] = {}
        self._cache_size = cache_size
        self._evict_lock = threading.Lock()

    def verify(self, token: str, *, verify_exp: bool = True) -> Session:
        """The :class:`Session` of a token whose signature and claims are valid.

        Raises:
            InvalidToken: malformed, bad signature, wrong claim types, wrong
                ``iss``/``aud``, unknown ``kid``, algorithm not allowed, or not
                yet valid (``nbf``).
            TryRefreshToken: expired (only when ``verify_exp``).
        """
        session = self._cache.get(token) if verify_exp else None
        if session is None:
            session = self._verify_uncached(token)
            if verify_exp:
                self._check_expiry(session)
                self._remember(token, session)
        else:
            self._check_expiry(session)
        return session

    def verify_fresh(self, token: str) -> Session:
        """:meth:`verify` without the verified-token cache (for callers with their own)."""
        session = self._verify_uncached(token)
        self._check_expiry(session)
        return session

    def _check_expiry(self, session: Session) -> None:
        if self._clock() >= session.expires_at + self._leeway:
            raise TryRefreshToken("token has expired")

    def _remember(self, token: str, session: Session) -> None:
        if len(self._cache) >= self._cache_size:
            with self._evict_lock:
                # Drop the oldest half: insertion order is age order.
                for old in list(self._cache)[: self._cache_size // 2]:
                    self._cache.pop(old, None)
        self._cache[token] = session

    def _verify_uncached(self, token: str) -> Session:
        if not isinstance(token, str):
            raise InvalidToken("token must be a string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken(f"token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidToken("malformed token: not ASCII") from None
        parts = raw.split(b".")
        if len(parts) != 3:
            raise InvalidToken("malformed token: expected three dot-separated parts")
        header = _json_object(_b64decode(parts[0], "header"), "header")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise InvalidToken("header 'alg' must be a string")
        if "crit" in header:
            raise InvalidToken("header 'crit' names extensions this verifier does not support")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("header 'kid' must be a string")
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown key id (kid)")
        if alg != key.alg:
            raise InvalidToken(f"algorithm {alg[:16]!r} is not allowed for this key")
        signature = _b64decode(parts[2], "signature")
        if _b64encode(signature) != parts[2]:
            # Padding or stray low bits: one token, one spelling (anything keyed
            # on the token string, like the verified-token cache, relies on it).
            raise InvalidToken("malformed token: signature is not canonical base64url")
        if not key.verify(raw[: len(parts[0]) + 1 + len(parts[1])], signature):
            raise InvalidToken("bad signature")
        claims = _json_object(_b64decode(parts[1], "payload"), "payload")
        return self._session(claims)

    def _session(self, claims: dict[str, Any]) -> Session:
        user_id = _string(claims, "sub", required=True)
        jti = _string(claims, "jti", required=True)
        sid = _string(claims, "sid", required=False)
        iat = _number(claims, "iat", required=True)
        exp = _number(claims, "exp", required=True)
        nbf = _number(claims, "nbf", required=False)
        assert user_id is not None and jti is not None and iat is not None and exp is not None
        if nbf is not None and self._clock() + self._leeway < nbf:
            raise InvalidToken("token is not yet valid (nbf)")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise InvalidToken("wrong issuer (iss)")
        aud = claims.get("aud")
        if self._audience is None:
            if aud is not None:
                raise InvalidToken("token has an audience (aud) but none is configured")
        elif not (aud == self._audience or (isinstance(aud, list) and self._audience in aud)):
            raise InvalidToken("wrong audience (aud)")
        return Session(user_id, sid, jti, iat, exp, MappingProxyType(claims))
