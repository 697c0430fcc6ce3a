"""The client's bus listener: one connection, one thread, and request-path drains.

The thread SUBSCRIBEs, then treats every ``subscribe`` confirmation (the first
one, and any after a reconnect) as "catch up from the store now", so start-up
is subscribe-then-snapshot by construction and a reconnect can lose nothing.
A gap (an event or heartbeat ahead of ``applied_seq``) also triggers a
catch-up. Silence for two heartbeat intervals sends a PING; silence for
``max_staleness`` (no heartbeat, no PONG: a half-open socket) drops the
connection, and reconnection backs off from 50 ms to 2 s with jitter.

In a busy process the thread waits for the GIL for up to the interpreter's
switch interval (5 ms) after its socket becomes readable. So request threads
may also :meth:`drain` the socket: whoever holds ``_io_lock`` reads and
applies what has arrived. Only the thread does I/O that can block (catch-ups).

``fresh_until`` is what the request path compares with: a time on the
client's clock before which the local copy may be trusted. The thread keeps
it equal to "last heartbeat + ``max_staleness``" while nothing is missing,
and 0 otherwise; it recomputes it from the monotonic clock at least every
50 ms, so a wall-clock step is corrected within that.
"""

from __future__ import annotations

import logging
import random
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from .cache import RevocationCache
from .errors import StoreUnavailable
from .events import BadMessage, Codec, Events
from .histogram import Histogram
from .logs import ThrottledLogger
from .settings import Settings
from .store import Store
from .topology import Node, Topology

log = logging.getLogger("revocation.listener")
SWEEP_INTERVAL = 1.0
POLL_INTERVAL = 0.05
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


class Listener:
    """Keeps a :class:`RevocationCache` in sync with the bus and the store."""

    def __init__(
        self,
        settings: Settings,
        cache: RevocationCache,
        codec: Codec,
        topology: Topology,
        channel: str,
        *,
        clock: Callable[[], float],
        on_change: Callable[[], None],
        on_applied: Callable[[int], None] | None = None,
        on_report: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._codec = codec
        self._topology = topology
        self._store: Store | None = None
        self._channel = channel
        self._clock = clock
        self._on_change = on_change
        self._on_applied = on_applied
        self._on_report = on_report
        self.delays = Histogram()
        """Seconds from ``revoked_at`` (Redis clock) to receipt here, per bus event."""
        self._throttled = ThrottledLogger(log)
        self._io_lock = threading.Lock()
        self._connection: Any = None
        self._poller: Any = None
        self._broken = False
        self.stop = threading.Event()
        self.resync = threading.Event()
        self.fresh_until = 0.0
        """Client-clock time until which the local copy may be trusted (0: stale)."""
        self._newest_beat = 0.0
        """The newest heartbeat's date, on the Redis server's clock."""
        self._epoch: str | None = None
        """The master's replication id, from heartbeats and catch-ups."""
        self.last_heartbeat: float | None = None
        """Monotonic time the last heartbeat was received; None when disconnected."""
        self.last_received = 0.0
        self.connected = False
        self.node: Node | None = None
        """The server this listener subscribes to and catches up from."""
        self.dropped: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    # -- freshness ----------------------------------------------------------

    def is_fresh(self) -> bool:
        """The truth the request path's ``fresh_until`` approximates."""
        beat = self.last_heartbeat
        return (
            beat is not None
            and time.monotonic() - beat < self._settings.max_staleness
            and self._cache.complete
            and not self.resync.is_set()
        )

    def _refresh(self) -> None:
        beat = self.last_heartbeat
        if beat is None or not self._cache.complete or self.resync.is_set():
            self.fresh_until = 0.0
        else:
            remaining = beat + self._settings.max_staleness - time.monotonic()
            self.fresh_until = self._clock() + remaining if remaining > 0 else 0.0

    # -- the thread ----------------------------------------------------------

    def run_forever(self) -> None:
        """The listener thread's body: connect, listen, reconnect, until ``stop``."""
        backoff = BACKOFF_FIRST
        while not self.stop.is_set():
            topology = self._topology
            connection: Any = None
            pools: list[redis.ConnectionPool] = []
            started = time.monotonic()
            try:
                # The node is resolved on every (re)connection: after a failover the
                # master (or the replica picked) may be another server.
                node = topology.subscriber_node(self._settings.subscribe_from)
                pools = [topology.node_pool(node, "listener") for _ in range(2)]
                store = Store(redis.Redis.from_pool(pools[1]), self._settings.namespace)
                if node.replica and not _in_sync(store):
                    # A replica still loading (or cut off from its master) would serve
                    # an empty or old store and relay nothing: use the master this time.
                    self.counts["replicas_skipped"] += 1
                    for pool in pools:
                        pool.disconnect()
                    node = topology.primary()
                    pools = [topology.node_pool(node, "listener") for _ in range(2)]
                    store = Store(redis.Redis.from_pool(pools[1]), self._settings.namespace)
                self._store = store
                connection = pools[0].make_connection()
                connection.connect()
                connection.send_command(topology.subscribe_command, self._channel)
                poller = select.poll()
                poller.register(connection._sock, select.POLLIN)
                with self._io_lock:
                    self._connection, self._broken = connection, False
                    self._poller = poller
                    self.node = node
                self._listen(connection)
            except (redis.RedisError, OSError, StoreUnavailable) as exc:
                topology.invalidate()
                if not self.stop.is_set():
                    self.counts["reconnects"] += 1
                    self._throttled.warning("disconnected", "listener disconnected: %s", exc)
            finally:
                with self._io_lock:
                    self._connection = None
                    self._poller = None
                    self.connected = False
                    self.last_heartbeat = None
                    self.fresh_until = 0.0
                if connection is not None:
                    connection.disconnect()
                for pool in pools:
                    pool.disconnect()
                self._on_change()
            if time.monotonic() - started > BACKOFF_MAX * 2:
                backoff = BACKOFF_FIRST
            self.stop.wait(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _listen(self, connection: Any) -> None:
        settings = self._settings
        silence_ping = settings.heartbeat_interval * 2
        self.last_received = time.monotonic()
        ping_sent = False
        next_sweep = self.last_received + SWEEP_INTERVAL
        while not self.stop.is_set():
            sock = connection._sock  # readiness only; reading goes through redis-py
            if sock is not None:
                select.select([sock], [], [], POLL_INTERVAL)
            with self._io_lock:
                if self._broken or self._connection is not connection:
                    raise redis.ConnectionError("connection broken while draining")
                received_before = self.last_received
                self._read_available(connection)
                if self.last_received != received_before:
                    ping_sent = False
                if self.resync.is_set() or not self._cache.complete:
                    self._catch_up()
                now = time.monotonic()
                if now >= next_sweep:
                    self._cache.sweep()
                    next_sweep = now + SWEEP_INTERVAL
                self._refresh()
            silent = now - self.last_received
            if silent > settings.max_staleness:
                # Half-open sockets look like silence: heartbeats stopped and
                # PING went unanswered. Reconnect.
                raise redis.ConnectionError(f"no message or PONG for {silent:.1f}s")
            if silent > silence_ping and not ping_sent:
                with self._io_lock:
                    connection.send_command("PING")
                ping_sent = True

    def drain(self) -> None:
        """Apply what has arrived, from any thread; never blocks, never raises."""
        poller = self._poller
        try:
            if poller is None or not poller.poll(0):
                return  # nothing new on the socket (one syscall, no redis-py machinery)
        except (OSError, ValueError):
            return
        if not self._io_lock.acquire(blocking=False):
            return  # the listener (or another request) is at it
        try:
            connection = self._connection
            if connection is not None and not self._broken:
                self._read_available(connection)
                self._refresh()
        except (redis.RedisError, OSError):
            self._broken = True  # the thread reconnects
        finally:
            self._io_lock.release()

    def _read_available(self, connection: Any) -> None:
        """Read and handle every reply already received. Caller holds ``_io_lock``."""
        handled = False
        while connection.can_read(timeout=0):
            self._handle(connection.read_response())
            handled = True
        if handled:
            self.last_received = time.monotonic()
            self._refresh()  # before on_change: no window may reopen on a stale fresh_until
            self._on_change()

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind in (b"subscribe", b"ssubscribe"):
            self.connected = True
            self.resync.set()  # a (re)subscription may have missed events
            return
        if kind == b"sunsubscribe":
            # Redis Cluster ends shard-channel subscriptions when the slot moves.
            raise redis.ConnectionError("the shard channel moved to another node")
        if kind not in (b"message", b"smessage") or len(reply) < 3:
            return  # PONG
        try:
            message = self._codec.decode(reply[2])
        except BadMessage as exc:
            self.dropped[exc.reason] += 1
            self._throttled.warning(exc.reason, "dropped bus message: %s", exc)
            return
        if isinstance(message, Events):
            now = self._clock()
            horizon = now - self._settings.leeway
            applied = self._cache.applied_seq
            confirm = False
            for revocation in message.revocations:
                if revocation.expires_at > horizon and self._cache.offer(revocation):
                    self.delays.observe(now - revocation.revoked_at)
                    confirm = confirm or revocation.confirm
            if self._on_applied is not None and self._cache.applied_seq != applied:
                self._on_applied(self._cache.applied_seq)
            if confirm and self._on_report is not None:
                self._on_report()
        else:
            if message.sent_at <= self._newest_beat:
                # Not newer than what this client knows of the store's clock: a replay
                # (or a worker racing another by microseconds). It proves nothing.
                self.dropped["stale_heartbeat"] += 1
                return
            self._newest_beat = message.sent_at
            if self._note_epoch(message.epoch):
                return  # a full reload starts; this heartbeat vouches for nothing yet
            self._cache.note_head(message.head)
            first = self.last_heartbeat is None
            self.last_heartbeat = time.monotonic()
            if first and self._on_report is not None:
                self._on_report()  # (re)connected and heartbeating: worth a presence report

    def _note_epoch(self, epoch: str) -> bool:
        """Learn the master's epoch; True when it changed (a full reload is under way)."""
        if not epoch or epoch == self._epoch:
            return False
        known, self._epoch = self._epoch, epoch
        if known is None:
            return False
        self._rebase(f"the master changed (epoch {known[:8]} -> {epoch[:8]})")
        return True

    def _rebase(self, why: str) -> None:
        # Seqs after the fork point may name other revocations on the new master,
        # and the fork point is unknown: forget the seq bookkeeping (never the
        # revocations) and load the store's whole log again.
        self.counts["rebases"] += 1
        log.warning(
            "%s: reloading the revocation log",
            why,
            extra={"applied_seq": self._cache.applied_seq, "node": str(self.node)},
        )
        self._cache.rebase(0)
        self.resync.set()

    def _catch_up(self) -> None:
        """Load what the store has after ``applied_seq``. Caller holds ``_io_lock``."""
        self.resync.clear()
        applied = self._cache.applied_seq
        store = self._store
        if store is None:
            raise StoreUnavailable("catch-up before connecting")
        try:
            # Heartbeats up to the newest one sent say nothing this catch-up does not
            # (dated by the master's clock, like every heartbeat).
            beat, epoch = store.last_beat()
            self._newest_beat = max(self._newest_beat, beat)
            if self._note_epoch(epoch):
                applied = 0
            head, pages = store.pages_since(applied)
            if head < applied:
                # The store is behind this client: a failover lost writes the old
                # master had not replicated (new commits reuse their seqs), or
                # this replica is further behind than the last one. Reload it all.
                self._rebase(f"store head {head} is behind the {applied} applied here")
                head, pages = store.pages_since(0)
            self.resync.clear()  # a rebase above asked for the reload this is
            self._cache.load_raw(pages, head)
        except redis.RedisError as exc:
            self.resync.set()
            raise StoreUnavailable(f"catch-up failed: {exc}") from exc
        # Time spent reading the store is not silence on the bus: the messages
        # that arrived meanwhile wait in the socket, to be read next.
        self.last_received = time.monotonic()
        self.counts["catch_ups"] += 1
        if self._cache.applied_seq != applied:
            if self._on_applied is not None:
                self._on_applied(self._cache.applied_seq)
            if self._on_report is not None:
                self._on_report()  # it may hold a revocation someone waits for
        self._refresh()
        self._on_change()


def _in_sync(store: Store) -> bool:
    """Whether the replica behind ``store`` is connected to its master (``ROLE``)."""
    client: Any = store.client
    try:
        role = client.execute_command("ROLE")
    except redis.ResponseError:  # ROLE not allowed for this user: cannot tell
        return True
    return bool(role[0] == b"slave" and role[3] == b"connected")
