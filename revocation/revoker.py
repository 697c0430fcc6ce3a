"""The admin API: ``revoke(...)`` commits a revocation to the store.

It never publishes: the worker relays what the store committed, so a
revocation cannot be announced without being durable first.

``not_before`` (for ``user_id=`` and ``everyone=True``) and ``revoked_at`` are
read from the Redis server's clock (TIME), the one clock every admin host
shares. Tokens carry ``iat`` from the issuing host's clock, so skew between
that host and the Redis server shifts the cut-off by the skew: an issuer
running *behind* Redis by d seconds mints tokens that look issued before a
revocation made up to d seconds earlier (they are rejected until the clock
catches up); an issuer *ahead* by d lets tokens it issued up to d seconds
before the revocation through. Keep the hosts on NTP (typical skew: ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import redis

from . import presence
from .errors import PropagationTimeout, StoreUnavailable
from .events import EVERYONE, Kind, Revocation, record_body
from .presence import Member
from .settings import Settings
from .store import Store, commit_args
from .tokens import TokenVerifier
from .topology import sync_client


class Revoker:
    """Commits revocations. Thread-safe; use one per process.

    ``revoke()`` returns only once the revocation is committed to the store.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store = Store(sync_client(settings, "admin"), settings.namespace)
        self._verifier: TokenVerifier | None = None

    def __enter__(self) -> Revoker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the connections."""
        self._store.client.close()

    def revoke(
        self,
        *,
        token: str | None = None,
        jti: str | None = None,
        session_handle: str | None = None,
        user_id: str | None = None,
        everyone: bool = False,
        reason: str | None = None,
        wait: float | None = None,
    ) -> Revocation:
        """Revoke exactly one target and return the committed record.

        - ``token``: that token (its signature is verified, its expiry is not);
        - ``jti``: the token with that id;
        - ``session_handle``: every token of the session;
        - ``user_id``: every token of the user issued before now;
        - ``everyone=True``: every token issued before now.

        With ``wait`` (seconds), it returns only once every live client (see
        :mod:`revocation.presence`) has applied the revocation.

        Raises:
            ValueError: not exactly one target, or an empty one.
            InvalidToken: ``token`` is not a token signed by a known key.
            StoreUnavailable: the store could not commit it (nothing was revoked).
            NotReplicated: with ``replica_acks``, committed on the master but not
                acknowledged by enough replicas in time (in force; revoking again is safe).
            PropagationTimeout: with ``wait``, committed, but some live clients had
                not applied it in time; ``.behind`` lists them.
        """
        kind, subject, exp = self._target(token, jti, session_handle, user_id, everyone)
        confirm = wait is not None
        try:
            revoked_at = self._store.time()
            record = self._commit(
                [self._args(kind, subject, exp, revoked_at, reason, confirm=confirm)]
            )[0]
        except redis.RedisError as exc:
            raise StoreUnavailable(f"revocation not committed: {exc}") from exc
        if wait is not None:
            self.await_propagation(record, wait)
        return record

    async def arevoke(
        self,
        *,
        token: str | None = None,
        jti: str | None = None,
        session_handle: str | None = None,
        user_id: str | None = None,
        everyone: bool = False,
        reason: str | None = None,
        wait: float | None = None,
    ) -> Revocation:
        """:meth:`revoke` for asyncio code (the commit and the wait run on a worker thread)."""
        return await asyncio.to_thread(
            self.revoke,
            token=token,
            jti=jti,
            session_handle=session_handle,
            user_id=user_id,
            everyone=everyone,
            reason=reason,
            wait=wait,
        )

    def revoke_many(
        self,
        targets: Iterable[Mapping[str, Any]],
        *,
        reason: str | None = None,
        wait: float | None = None,
    ) -> list[Revocation]:
        """Revoke many targets in one round trip; returns once all are committed.

        Each target is a mapping of :meth:`revoke`'s keywords (``{"user_id":
        "alice"}``, ``{"token": ...}``...). All are validated before anything is
        committed; they share one ``revoked_at``. ``wait``: as for :meth:`revoke`,
        for the last of them (clients apply revocations in order).

        Raises:
            ValueError, InvalidToken: a bad target (nothing was committed).
            StoreUnavailable: the store failed part-way; some may be committed,
                and revoking them again is harmless.
        """
        resolved = [
            self._target(
                target.get("token"),
                target.get("jti"),
                target.get("session_handle"),
                target.get("user_id"),
                bool(target.get("everyone", False)),
            )
            for target in targets
        ]
        if not resolved:
            return []
        confirm = wait is not None
        try:
            revoked_at = self._store.time()
            records = self._commit(
                [
                    self._args(kind, subject, exp, revoked_at, reason, confirm=confirm)
                    for kind, subject, exp in resolved
                ]
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"revocations not (all) committed: {exc}") from exc
        if wait is not None:
            self.await_propagation(records[-1], wait)
        return records

    def live_clients(self) -> list[Member]:
        """The clients that reported themselves within their ttl, oldest report first."""
        try:
            return presence.members(self._store.client, self._store.keys, "client")[0]
        except redis.RedisError as exc:
            raise StoreUnavailable(f"presence not readable: {exc}") from exc

    def await_propagation(self, revocation: Revocation, timeout: float) -> list[Member]:
        """Block until every live client has applied ``revocation``; returns them.

        A client counts as live while its last presence report is younger than
        its ttl (3 ``presence_interval``): a process that died, or froze, for
        longer drops out of the list, and a frozen one is stale (it asks the
        store) once it runs again. The clients waited for are those live when the
        wait starts (one started later catches up from the store, which has the
        revocation). No live client at all: returns ``[]`` at once.

        Raises:
            PropagationTimeout: some live clients had not applied it after
                ``timeout`` seconds; ``.behind`` lists them.
        """
        deadline = time.monotonic() + timeout
        pause = 0.0005
        live = self.live_clients()
        behind = [m for m in live if m.applied_seq < revocation.seq]
        while behind:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(
                    f"{m.id} (applied {m.applied_seq}, reported {m.age:.1f}s ago)" for m in behind
                )
                raise PropagationTimeout(
                    f"revocation seq {revocation.seq} is committed, but {len(behind)} of "
                    f"{len(live)} live clients had not applied it after {timeout:g}s: {names}",
                    revocation=revocation,
                    behind=behind,
                )
            time.sleep(min(pause, remaining))  # reports come ~1 ms after the commit
            pause = min(pause * 1.5, 0.05)
            # Only the clients still behind are read again; one that ages out meanwhile
            # (dead, or frozen past its ttl: stale, so it asks the store) drops out.
            try:
                current, _ = presence.members(
                    self._store.client, self._store.keys, "client", [m.id for m in behind]
                )
            except redis.RedisError as exc:
                raise StoreUnavailable(f"presence not readable: {exc}") from exc
            behind = [m for m in current if m.applied_seq < revocation.seq]
        return live

    def _commit(self, args: list[list[Any]]) -> list[Revocation]:
        settings = self._settings
        return self._store.commit_many(
            args, replicas=settings.replica_acks, replica_timeout=settings.replica_ack_timeout
        )

    def _target(
        self,
        token: str | None,
        jti: str | None,
        session_handle: str | None,
        user_id: str | None,
        everyone: bool,
    ) -> tuple[Kind, str, float | None]:
        given = [
            name
            for name, value in (
                ("token", token),
                ("jti", jti),
                ("session_handle", session_handle),
                ("user_id", user_id),
            )
            if value is not None
        ] + (["everyone"] if everyone else [])
        if len(given) != 1:
            raise ValueError(
                "revoke() takes exactly one target: token=, jti=, session_handle=, user_id= "
                f"or everyone=True (got {', '.join(given) or 'none'})"
            )
        if everyone:
            return "all", EVERYONE, None
        value = token if token is not None else jti or session_handle or user_id
        if not isinstance(value, str) or not value:
            raise ValueError(f"{given[0]} must be a non-empty string")
        if token is not None:
            if self._verifier is None:
                self._verifier = TokenVerifier(self._settings)
            session = self._verifier.verify(token, verify_exp=False)
            return "token", session.jti, session.expires_at
        if jti is not None:
            return "token", jti, None
        if session_handle is not None:
            return "session", session_handle, None
        return "user", value, None

    def _args(
        self,
        kind: Kind,
        subject: str,
        exp: float | None,
        revoked_at: float,
        reason: str | None,
        *,
        confirm: bool = False,
    ) -> list[Any]:
        expires_at = exp if exp is not None else revoked_at + self._settings.access_token_ttl
        not_before = revoked_at if kind in ("user", "all") else None
        body = record_body(
            kind=kind,
            subject=subject,
            revoked_at=revoked_at,
            expires_at=expires_at,
            not_before=not_before,
            reason=reason,
            confirm=confirm,
        )
        return commit_args(
            kind=kind, subject=subject, body=body, expires_at=expires_at, not_before=not_before
        )
