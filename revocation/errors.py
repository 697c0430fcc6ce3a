"""The exception tree.

Every error the library raises on purpose descends from :class:`RevocationError`
and carries a machine-readable ``code`` that the framework integrations put in
their JSON error bodies::

    RevocationError
    ├── Unauthorised                (the request is not authenticated: HTTP 401)
    │   ├── MissingToken            code "unauthorised"  (no token at all)
    │   ├── InvalidToken            code "invalid_token"
    │   ├── TryRefreshToken         code "try_refresh_token"  (expired)
    │   └── TokenRevoked            code "token_revoked"
    ├── RevocationUnavailable       code "revocation_unavailable" (HTTP 503)
    ├── ConfigError                 code "config_error" (also a ValueError)
    ├── StoreUnavailable            code "store_unavailable"
    │   └── NotReplicated           code "not_replicated" (committed, replicas behind)
    └── PropagationTimeout          code "propagation_timeout" (committed, clients behind)
"""

from __future__ import annotations

from typing import Any


class RevocationError(Exception):
    """Root of every error this library raises on purpose."""

    code: str = "revocation_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorised(RevocationError):
    """The token does not authenticate the request (HTTP 401)."""

    code = "unauthorised"


class MissingToken(Unauthorised):
    """The request carries no access token (neither header nor cookie)."""

    code = "unauthorised"


class InvalidToken(Unauthorised):
    """Malformed token, bad signature, wrong claim types, wrong issuer or
    audience, unknown ``kid``, or an algorithm that is not allowed."""

    code = "invalid_token"


class TryRefreshToken(Unauthorised):
    """The token has expired: the caller should refresh it."""

    code = "try_refresh_token"


class TokenRevoked(Unauthorised):
    """The token is valid but has been revoked.

    ``kind`` says which revocation matched: ``token``, ``session``, ``user`` or ``all``.
    """

    code = "token_revoked"

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class RevocationUnavailable(RevocationError):
    """``check_database=True`` could not be answered: the local copy is stale,
    the store did not answer within ``fallback_timeout``, and the stale policy
    is ``deny`` (HTTP 503)."""

    code = "revocation_unavailable"


class ConfigError(RevocationError, ValueError):
    """A setting is missing or has a bad value. ``field`` names it."""

    code = "config_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StoreUnavailable(RevocationError):
    """The store could not be reached or did not answer in time."""

    code = "store_unavailable"


class NotReplicated(StoreUnavailable):
    """``revoke()`` with ``replica_acks``: the master committed the revocation, but
    fewer replicas than asked acknowledged it within ``replica_ack_timeout``.

    The revocation is in force (``committed`` holds the records), but a failover
    before a replica has it could lose it. Revoking the same target again is safe.
    """

    code = "not_replicated"

    def __init__(self, message: str, *, committed: list[Any], acknowledged: int) -> None:
        super().__init__(message)
        self.committed = committed
        self.acknowledged = acknowledged


class PropagationTimeout(RevocationError):
    """``revoke(..., wait=seconds)``: the revocation is committed, but some live
    clients had not applied it when the time ran out; ``behind`` lists them."""

    code = "propagation_timeout"

    def __init__(self, message: str, *, revocation: Any, behind: list[Any]) -> None:
        super().__init__(message)
        self.revocation = revocation
        self.behind = behind
