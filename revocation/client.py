"""The embedded client: a local revocation set kept in sync from the bus.

``verify(token, check_database=True)`` on a *fresh* client is a signature
check plus a few dict lookups: no I/O. Fresh means: the last heartbeat is
younger than ``max_staleness`` and every event up to the head it announced is
applied. Otherwise the client is *stale*: it asks the store (a point check,
bounded by ``fallback_timeout``), asks its listener to resync, and when the
store does not answer either, ``stale_policy`` decides.

The listener is one daemon thread with one Redis connection of its own. It
SUBSCRIBEs first and loads the snapshot after the subscription is confirmed,
so no event can fall between the two; every (re)subscription is followed by a
catch-up from the store, as is any gap in ``seq``; a silent connection (no
heartbeat, no answer to PING) is dropped and reopened with backoff.

Thread-safety: ``verify``, ``averify`` and ``status`` may be called from any
thread; ``start`` and ``close`` from one at a time. After ``os.fork()`` a
started client restarts its listener in the child on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import redis
import redis.asyncio

from .cache import RevocationCache
from .connections import options, sync_client
from .errors import ConfigError, RevocationUnavailable, StoreUnavailable, TokenRevoked
from .events import BadMessage, Codec, Events, Revocation, bus_key
from .settings import Settings
from .store import Keys, Store
from .tokens import Session, TokenVerifier

log = logging.getLogger("revocation.client")
SWEEP_INTERVAL = 1.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


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
    dropped_messages: Mapping[str, int]
    """Bus messages dropped, by reason (``malformed``, ``bad_signature``...)."""


class _Throttled:
    """Logs one warning per ``key`` per ``every`` seconds, with a count of the rest."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._every) < self._every:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        suffix = f" ({more} more since the last report)" if more else ""
        log.warning(message + suffix, *args, extra={"reason": key})


class RevocationClient:
    """Embedded in every app process; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        verifier: TokenVerifier | None = None,
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
        self._verifier = verifier or TokenVerifier(settings, clock=clock)
        self._cache = RevocationCache(leeway=settings.leeway, clock=clock)
        self._max_staleness = settings.max_staleness
        self._channel = Keys.for_namespace(settings.namespace).channel
        self._throttled = _Throttled()
        self._changed = threading.Condition()
        self._dropped: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._started = False
        self._forked = False
        self._init_process_state()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _mark_forked(ref))

    def _init_process_state(self) -> None:
        """Everything that belongs to one process: threads, sockets, flags."""
        self._stop = threading.Event()
        self._resync = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_heartbeat: float | None = None
        self._connected = False
        self._store_down_until = 0.0
        self._listener_store: Store | None = None
        self._fallback_store: Store | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def settings(self) -> Settings:
        """The settings this client was built with."""
        return self._settings

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> RevocationClient:
        """Start the listener thread (idempotent). Returns ``self``."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._started = True
        self._stop.clear()
        settings = self._settings
        self._listener_store = Store(sync_client(settings, "listener"), settings.namespace)
        self._fallback_store = Store(sync_client(settings, "fallback"), settings.namespace)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="revocation-fallback"
        )
        self._thread = threading.Thread(
            target=self._listen_forever, name="revocation-listener", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the listener and release connections. The client is then stale."""
        self._started = False
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._max_staleness + 5.0)
        self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for store in (self._listener_store, self._fallback_store):
            if store is not None:
                store.client.close()
        self._last_heartbeat = None
        self._connected = False
        self._notify()

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
        self._changed = threading.Condition()
        if was_started:
            self.start()

    # -- state -------------------------------------------------------------

    def _is_fresh(self) -> bool:
        beat = self._last_heartbeat
        return (
            beat is not None
            and time.monotonic() - beat < self._max_staleness
            and self._cache.applied_seq >= self._cache.known_head
            and not self._resync.is_set()
        )

    def status(self) -> Status:
        """A snapshot of this client's state."""
        if self._forked:
            self._after_fork_in_child()
        beat = self._last_heartbeat
        return Status(
            fresh=self._is_fresh(),
            applied_seq=self._cache.applied_seq,
            head_seq=self._cache.known_head,
            last_heartbeat_age=None if beat is None else time.monotonic() - beat,
            size=self._cache.size,
            connected=self._connected,
            fallbacks=self._counts["fallbacks"],
            stale_denied=self._counts["stale_denied"],
            stale_allowed=self._counts["stale_allowed"],
            reconnects=self._counts["reconnects"],
            catch_ups=self._counts["catch_ups"],
            dropped_messages=MappingProxyType(dict(self._dropped)),
        )

    def wait_synced(self, timeout: float) -> bool:
        """Block until the client is fresh, at most ``timeout`` seconds."""
        return self._wait(self._is_fresh, timeout)

    def wait_applied(self, seq: int, timeout: float) -> bool:
        """Block until every revocation up to ``seq`` is applied here."""
        return self._wait(lambda: self._cache.applied_seq >= seq, timeout)

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        if self._forked:
            self._after_fork_in_child()
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Freshness also changes with time alone: re-check at least every 50 ms.
                self._changed.wait(min(remaining, 0.05))
        return True

    def _notify(self) -> None:
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
        session = self._verifier.verify(token)
        if not check_database:
            return session
        if self._forked:
            self._after_fork_in_child()
        if self._answer_locally(session):
            return session
        try:
            found = self._check_store(session)
        except StoreUnavailable as exc:
            return self._stale_policy(session, exc)
        return self._store_answer(session, found)

    async def averify(self, token: str, *, check_database: bool = False) -> Session:
        """:meth:`verify` for asyncio code: the store fallback does not block the loop."""
        session = self._verifier.verify(token)
        if not check_database:
            return session
        if self._forked:
            self._after_fork_in_child()
        if self._answer_locally(session):
            return session
        try:
            found = await self._acheck_store(session)
        except StoreUnavailable as exc:
            return self._stale_policy(session, exc)
        return self._store_answer(session, found)

    def _answer_locally(self, session: Session) -> bool:
        """True when the local set answered (raises if revoked); False: ask the store."""
        kind = self._cache.check(session)
        if kind is not None:
            # A revocation once seen here is final, fresh or not.
            raise TokenRevoked(f"token revoked ({kind})", kind=kind)
        if self._is_fresh():
            return True
        if self._started:
            self._resync.set()
        return False

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
        store, executor = self._fallback_store, self._executor
        if store is None or executor is None or self._store_is_down():
            raise StoreUnavailable("store not reachable")
        try:
            return executor.submit(store.check, session, self._clock(), self._settings.leeway)
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

    # -- the listener thread -----------------------------------------------

    def _listen_forever(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            pool = redis.ConnectionPool.from_url(
                self._settings.redis_url, **options(self._settings, "listener")
            )
            connection: Any = pool.make_connection()
            started = time.monotonic()
            try:
                connection.connect()
                connection.send_command("SUBSCRIBE", self._channel)
                self._listen(connection)
            except (redis.RedisError, OSError, StoreUnavailable) as exc:
                if not self._stop.is_set():
                    self._counts["reconnects"] += 1
                    self._throttled.warning("disconnected", "listener disconnected: %s", exc)
            finally:
                self._connected = False
                self._last_heartbeat = None
                connection.disconnect()
                pool.disconnect()
                self._notify()
            if time.monotonic() - started > BACKOFF_MAX * 2:
                backoff = BACKOFF_FIRST
            self._stop.wait(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _listen(self, connection: Any) -> None:
        settings = self._settings
        silence_ping = settings.heartbeat_interval * 2
        last_received = time.monotonic()
        ping_sent = False
        next_sweep = last_received + SWEEP_INTERVAL
        while not self._stop.is_set():
            if connection.can_read(timeout=0.05):
                while True:
                    self._handle(connection.read_response())
                    if not connection.can_read(timeout=0):
                        break
                last_received = time.monotonic()
                ping_sent = False
            if self._resync.is_set() or not self._cache.complete:
                self._catch_up()
            now = time.monotonic()
            if now >= next_sweep:
                self._cache.sweep()
                next_sweep = now + SWEEP_INTERVAL
            silent = now - last_received
            if silent > settings.max_staleness:
                # Half-open sockets look like silence: heartbeats stopped and
                # PING went unanswered. Reconnect.
                raise redis.ConnectionError(f"no message or PONG for {silent:.1f}s")
            if silent > silence_ping and not ping_sent:
                connection.send_command("PING")
                ping_sent = True

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind == b"subscribe":
            self._connected = True
            self._resync.set()  # a (re)subscription may have missed events
            return
        if kind != b"message" or len(reply) < 3:
            return  # PONG
        try:
            message = self._codec.decode(reply[2])
        except BadMessage as exc:
            self._dropped[exc.reason] += 1
            self._throttled.warning(exc.reason, "dropped bus message: %s", exc)
            return
        if isinstance(message, Events):
            horizon = self._clock() - self._settings.leeway
            for revocation in message.revocations:
                if revocation.expires_at > horizon:
                    self._cache.offer(revocation)
        else:
            self._cache.note_head(message.head)
            self._last_heartbeat = time.monotonic()
        self._notify()

    def _catch_up(self) -> None:
        assert self._listener_store is not None
        self._resync.clear()
        try:
            head, revocations = self._listener_store.since(self._cache.applied_seq)
        except redis.RedisError as exc:
            self._resync.set()
            raise StoreUnavailable(f"catch-up failed: {exc}") from exc
        self._cache.load(revocations, head)
        self._counts["catch_ups"] += 1
        self._notify()


def _mark_forked(ref: weakref.ReferenceType[RevocationClient]) -> None:
    client = ref()
    if client is not None:
        client._forked = True
