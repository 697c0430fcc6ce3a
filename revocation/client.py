"""The embedded client: a local revocation set kept in sync from the bus.

``verify(token, check_database=True)`` on a *fresh* client is a signature
check plus a few dict lookups: no I/O. Fresh means: the last heartbeat is
younger than ``max_staleness`` and every event up to the head it announced is
applied. Otherwise the client is *stale*: it asks the store (a point check,
bounded by ``fallback_timeout``), asks its listener to resync, and when the
store does not answer either, ``stale_policy`` decides.

A token seen before costs less still: the client remembers, per token, the
cache generation at which it was last found unrevoked. The request path keeps
a *window*: a generation and a time before which answers at that generation
stand (the listener closes the window after every change, and it is at most
0.5 ms long). Inside it, a repeated token costs one dict lookup and two
comparisons besides its expiry check. Reopening the window drains events
that have arrived on the listener's socket, so a process too busy to schedule
the listener thread still applies revocations within about 0.5 ms of their
arrival (see :mod:`revocation.listener`).

Thread-safety: ``verify``, ``averify`` and ``status`` may be called from any
thread; ``start`` and ``close`` from one at a time. After ``os.fork()`` a
started client restarts its listener in the child on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import redis

from .cache import RevocationCache
from .errors import (
    ConfigError,
    RevocationUnavailable,
    StoreUnavailable,
    TokenRevoked,
    TryRefreshToken,
)
from .events import Codec, Revocation, bus_key
from .histogram import HistogramSnapshot
from .listener import Listener
from .logs import ThrottledLogger
from .presence import Reporter
from .settings import Settings
from .store import Keys, Store
from .tokens import Session, TokenVerifier
from .topology import Topology

log = logging.getLogger("revocation.client")
DRAIN_INTERVAL = 0.0005
"""Seconds between request-path drains of the listener's socket."""


@dataclass(frozen=True, slots=True)
class Status:
    """A client's state at one moment."""

    fresh: bool
    """``check_database=True`` is answered locally."""
    applied_seq: int
    """Every revocation with ``seq <= applied_seq`` is applied here."""
    head_seq: int
    """The store's committed head, as the last heartbeat (or event) told it."""
    last_heartbeat_age: float | None
    """Seconds since a heartbeat was received here; ``None`` before the first."""
    size: int
    """Active entries in the local cache."""
    connected: bool
    """The listener holds a live subscription."""
    fallbacks: int
    """``check_database=True`` answered from the store because the client was stale."""
    stale_denied: int
    stale_allowed: int
    reconnects: int
    catch_ups: int
    rebases: int
    """Full reloads after the store's seq history forked (a failover that lost writes)."""
    node: str | None
    """The server the listener subscribes to (``host:port``, ``(replica)`` when one)."""
    dropped_messages: Mapping[str, int]
    """Bus messages dropped, by reason: ``malformed``, ``too_large``, ``unsigned``,
    ``bad_signature``, ``bad_version``, ``invalid``, ``stale_heartbeat`` (a heartbeat
    not newer than one already seen: a replay, or one overtaken by a catch-up)."""


class RevocationClient:
    """Embedded in every app process; see the module docstring.

    ``on_applied(seq)``, if given, is called from whichever thread applied
    events (usually the listener) with the new ``applied_seq``; keep it fast.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        verifier: TokenVerifier | None = None,
        on_applied: Callable[[int], None] | None = None,
        verified_cache_size: int = 10_000,
    ) -> None:
        if settings.event_key is None and not settings.allow_unsigned_events:
            raise ConfigError(
                "a client needs event_key to authenticate bus messages "
                "(or allow_unsigned_events=True to accept unsigned ones)",
                field="event_key",
            )
        key = (
            bus_key(settings.event_key.get_secret_value(), settings.namespace)
            if settings.event_key is not None
            else None
        )
        self._settings = settings
        self._codec = Codec(key, require_signature=key is not None)
        self._clock = clock
        self._leeway = settings.leeway
        self._verifier = verifier or TokenVerifier(settings, clock=clock)
        self._cache = RevocationCache(leeway=settings.leeway, clock=clock)
        # token -> [session, generation it was last found unrevoked at (-1: never)]:
        # one cache for both paths, so a first-seen token costs one insert either way.
        self._verified: dict[str, list[Any]] = {}
        self._verified_size = verified_cache_size
        self._channel = Keys.for_namespace(settings.namespace).channel
        self._on_applied = on_applied
        self._throttled = ThrottledLogger(log)
        self._counts: dict[str, int] = {"fallbacks": 0, "stale_denied": 0, "stale_allowed": 0}
        self._topology = Topology(settings)
        self._fallback_store = Store(self._topology.client("fallback"), settings.namespace)
        self._started = False
        self._forked = False
        self._presence_client: redis.Redis | None = None
        self._collector: Any = None
        self._init_process_state()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _mark_forked(ref))

    def _init_process_state(self) -> None:
        """Everything that belongs to one process: threads, locks, the listener."""
        self._changed = threading.Condition()
        self._waiters = 0
        self._listener = Listener(
            self._settings,
            self._cache,
            self._codec,
            self._topology,
            self._channel,
            clock=self._clock,
            on_change=self._invalidate_window,
            on_applied=self._on_applied,
            on_report=self._wake_presence,
        )
        self._presence: Reporter | None = None
        self._thread: threading.Thread | None = None
        self._next_drain = 0.0
        self._window_until = 0.0
        self._window_generation = -2
        self._store_down_until = 0.0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def settings(self) -> Settings:
        """The settings this client was built with."""
        return self._settings

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> RevocationClient:
        """Start the listener thread (idempotent). Returns ``self``."""
        if self._forked:
            self._after_fork_in_child()
        if self._thread is not None and self._thread.is_alive():
            return self
        self._started = True
        self._listener.stop.clear()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="revocation-fallback"
        )
        self._thread = threading.Thread(
            target=self._listener.run_forever, name="revocation-listener", daemon=True
        )
        self._thread.start()
        if self._settings.presence_interval > 0:
            if self._presence_client is None:
                self._presence_client = self._topology.client("presence")
            self._presence = Reporter(
                self._presence_client,
                Keys.for_namespace(self._settings.namespace),
                self._settings.presence_interval,
                self._presence_state,
            )
            self._presence.start()
        if self._settings.metrics and self._collector is None:
            from .metrics import register_client  # noqa: PLC0415  (optional dependency)

            self._collector = register_client(self)
        return self

    def close(self) -> None:
        """Stop the listener and release connections. The client is then stale."""
        self._started = False
        self._listener.stop.set()
        if self._presence is not None:
            self._presence.stop()
            self._presence = None
        if self._collector is not None:
            from .metrics import unregister  # noqa: PLC0415  (optional dependency)

            unregister(self._collector)
            self._collector = None
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._settings.max_staleness + 5.0)
        self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._fallback_store.client.close()
        if self._presence_client is not None:
            self._presence_client.close()
            self._presence_client = None
        self._listener.fresh_until = 0.0
        self._invalidate_window()

    def __enter__(self) -> RevocationClient:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork(); the cache does, but may have missed
        # events since, so the child resyncs before trusting it.
        self._forked = False
        was_started = self._started
        self._init_process_state()
        if was_started:
            self.start()

    # -- state -------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """This process's presence id (``host:pid:random``) while it reports one."""
        presence = self._presence
        return None if presence is None else presence.id

    @property
    def propagation(self) -> HistogramSnapshot:
        """Seconds from ``revoked_at`` to receipt here, for revocations received on the bus."""
        return self._listener.delays.snapshot()

    def _presence_state(self) -> dict[str, Any]:
        cache, listener = self._cache, self._listener
        return {
            "applied_seq": cache.applied_seq,
            "head_seq": cache.known_head,
            "fresh": listener.is_fresh(),
            "node": None if listener.node is None else str(listener.node),
            "size": cache.size,
        }

    def _wake_presence(self) -> None:
        presence = self._presence
        if presence is not None:
            presence.wake()

    def status(self) -> Status:
        """A snapshot of this client's state."""
        if self._forked:
            self._after_fork_in_child()
        listener = self._listener
        beat = listener.last_heartbeat
        return Status(
            fresh=listener.is_fresh(),
            applied_seq=self._cache.applied_seq,
            head_seq=self._cache.known_head,
            last_heartbeat_age=None if beat is None else time.monotonic() - beat,
            size=self._cache.size,
            connected=listener.connected,
            fallbacks=self._counts["fallbacks"],
            stale_denied=self._counts["stale_denied"],
            stale_allowed=self._counts["stale_allowed"],
            reconnects=listener.counts["reconnects"],
            catch_ups=listener.counts["catch_ups"],
            rebases=listener.counts["rebases"],
            node=None if listener.node is None else str(listener.node),
            dropped_messages=MappingProxyType(dict(listener.dropped)),
        )

    def wait_synced(self, timeout: float) -> bool:
        """Block until the client is fresh, at most ``timeout`` seconds."""
        # A lambda, not the bound method: after a fork _wait replaces the listener.
        return self._wait(lambda: self._listener.is_fresh(), timeout)  # noqa: PLW0108

    def wait_applied(self, seq: int, timeout: float) -> bool:
        """Block until every revocation up to ``seq`` is applied here."""
        return self._wait(lambda: self._cache.applied_seq >= seq, timeout)

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        if self._forked:
            self._after_fork_in_child()
        deadline = time.monotonic() + timeout
        with self._changed:
            self._waiters += 1
            try:
                while not predicate():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    # Freshness also changes with time alone: re-check at least every 50 ms.
                    self._changed.wait(min(remaining, 0.05))
            finally:
                self._waiters -= 1
        return True

    def _notify(self) -> None:
        if self._waiters:  # most of the time nobody waits: skip the lock
            with self._changed:
                self._changed.notify_all()

    # -- verification ------------------------------------------------------

    def verify(self, token: str, *, check_database: bool = False) -> Session:
        """The :class:`Session` of a valid token.

        ``check_database=False``: signature and claims only, no I/O.
        ``check_database=True``: also not revoked; local lookups when fresh,
        the store (within ``fallback_timeout``) when stale.

        Raises:
            InvalidToken, TryRefreshToken: see :class:`TokenVerifier`.
            TokenRevoked: a committed revocation covers the token.
            RevocationUnavailable: stale, the store did not answer, policy ``deny``.
        """
        now = self._clock()
        hit = self._verified.get(token)
        if hit is not None and (
            not check_database or (now < self._window_until and hit[1] == self._window_generation)
        ):
            if now >= hit[0].expires_at + self._leeway:
                raise TryRefreshToken("token has expired")
            return hit[0]  # type: ignore[no-any-return]
        if not check_database:
            return self._remember(token, self._verifier.verify_fresh(token), -1)
        session, answered = self._check_slow(token, hit, now)
        if answered:
            return session
        try:
            found = self._check_store(session)
        except StoreUnavailable as exc:
            return self._stale_policy(session, exc)
        return self._store_answer(session, found)

    async def averify(self, token: str, *, check_database: bool = False) -> Session:
        """:meth:`verify` for asyncio code: the store fallback does not block the loop."""
        if not check_database:
            return self.verify(token)
        now = self._clock()
        hit = self._verified.get(token)
        if hit is not None and now < self._window_until and hit[1] == self._window_generation:
            if now >= hit[0].expires_at + self._leeway:
                raise TryRefreshToken("token has expired")
            return hit[0]  # type: ignore[no-any-return]
        session, answered = self._check_slow(token, hit, now)
        if answered:
            return session
        try:
            found = await self._acheck_store(session)
        except StoreUnavailable as exc:
            return self._stale_policy(session, exc)
        return self._store_answer(session, found)

    def _invalidate_window(self) -> None:
        """The listener changed something: no answer made before it stands."""
        self._window_until = 0.0
        self._notify()

    def _open_window(self, now: float) -> int:
        """Drain if due, and reopen the fast-path window when fresh.

        Returns the cache generation the window vouches for. The window is
        ``[now, min(fresh_until, next drain))`` at that generation; the
        listener closes it (``_invalidate_window``) after every change, and
        re-reading the generation after opening it closes the race with a
        change made meanwhile.
        """
        listener = self._listener
        if now >= self._next_drain:
            self._next_drain = now + DRAIN_INTERVAL
            listener.drain()
        generation = self._cache.generation
        fresh_until = listener.fresh_until
        if now < fresh_until:
            self._window_generation = generation
            self._window_until = min(fresh_until, self._next_drain)
            if self._cache.generation != generation:
                self._window_until = 0.0
        return generation

    def _check_slow(self, token: str, hit: list[Any] | None, now: float) -> tuple[Session, bool]:
        """A token not answered by the window: verify it and look it up.

        ``hit`` is its entry in the verified-token cache, if any. Returns
        ``(session, True)`` when answered here, ``(session, False)`` when the
        store must be asked. Raises TokenRevoked when the local set covers it.
        """
        if hit is None:
            session = self._verifier.verify_fresh(token)
        else:  # its signature was verified already; only expiry and revocation can change
            session = hit[0]
            if now >= session.expires_at + self._leeway:
                raise TryRefreshToken("token has expired")
        if self._forked:
            self._after_fork_in_child()
        # The generation is read before the check it vouches for.
        generation = self._window_generation if now < self._window_until else self._open_window(now)
        kind = self._cache.check(session, now)
        if kind is not None:
            # A revocation once seen here is final, fresh or not.
            raise TokenRevoked(f"token revoked ({kind})", kind=kind)
        if now < self._listener.fresh_until:
            if hit is None:
                self._remember(token, session, generation)
            else:
                hit[1] = generation
            return session, True
        if self._started:
            self._listener.resync.set()
        return session, False

    def _remember(self, token: str, session: Session, generation: int) -> Session:
        verified = self._verified
        if len(verified) >= self._verified_size:
            # Drop the oldest half (insertion order); a racing thread at worst
            # re-verifies a token.
            for old in list(verified)[: self._verified_size // 2]:
                verified.pop(old, None)
        verified[token] = [session, generation]
        return session

    def _store_answer(self, session: Session, found: Revocation | None) -> Session:
        self._counts["fallbacks"] += 1
        if found is not None:
            raise TokenRevoked(f"token revoked ({found.kind})", kind=found.kind)
        return session

    def _stale_policy(self, session: Session, cause: Exception) -> Session:
        if self._settings.stale_policy == "allow":
            self._counts["stale_allowed"] += 1
            self._throttled.warning(
                "stale_allowed", "revocation state unavailable (%s); allowed by policy", cause
            )
            return session
        self._counts["stale_denied"] += 1
        raise RevocationUnavailable("revocation state unavailable; try again shortly") from cause

    def _store_is_down(self) -> bool:
        return time.monotonic() < self._store_down_until

    def _mark_store_down(self) -> None:
        # Fail fast for a moment rather than make every request wait the timeout.
        self._store_down_until = time.monotonic() + self._settings.heartbeat_interval

    def _submit_check(self, session: Session) -> concurrent.futures.Future[Revocation | None]:
        """The point check, on the fallback pool: the caller bounds the wait."""
        executor = self._executor
        if executor is None or self._store_is_down():
            raise StoreUnavailable("store not reachable")
        try:
            return executor.submit(
                self._fallback_store.check, session, self._clock(), self._settings.leeway
            )
        except RuntimeError as exc:  # closed meanwhile
            raise StoreUnavailable("client closed") from exc

    def _check_store(self, session: Session) -> Revocation | None:
        future = self._submit_check(session)
        try:
            return future.result(timeout=self._settings.fallback_timeout)
        except (TimeoutError, redis.RedisError, OSError) as exc:
            self._mark_store_down()
            raise StoreUnavailable(f"store did not answer: {type(exc).__name__}") from exc

    async def _acheck_store(self, session: Session) -> Revocation | None:
        future = asyncio.wrap_future(self._submit_check(session))
        try:
            return await asyncio.wait_for(future, self._settings.fallback_timeout)
        except (TimeoutError, redis.RedisError, OSError) as exc:
            self._mark_store_down()
            raise StoreUnavailable(f"store did not answer: {type(exc).__name__}") from exc


def _mark_forked(ref: weakref.ReferenceType[RevocationClient]) -> None:
    client = ref()
    if client is not None:
        client._forked = True
