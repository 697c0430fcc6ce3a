"""The publisher worker: relays the store's outbox to the channel.

One loop, several of which may run at once against the same store:

1. block on the wake list (each commit pushes its record there, keeping only
   the newest) for at most the time left until the next heartbeat;
2. when the popped record is the one right after what this worker knows was
   relayed, sign and PUBLISH it at once and advance the cursor: one round trip
   from commit to channel;
3. otherwise, and when a heartbeat is due, read what is pending after the
   shared ``relayed`` cursor, sign it, PUBLISH it as one frame, advance the
   cursor (never backwards), and when due PUBLISH a heartbeat with the head
   read;
4. purge expired records about once a second.

Each worker publishes in ``seq`` order, and every record up to the head in
its heartbeat was published, by it or (the cursor says so) by another worker,
before that heartbeat. Two workers that read the cursor at the same time both
publish the same records: clients drop the duplicates. A worker killed between
PUBLISH and advancing the cursor is repeated by the next one: at-least-once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from . import presence
from .errors import ConfigError
from .events import Codec, bus_key
from .settings import Settings
from .store import Store
from .topology import Topology

log = logging.getLogger("revocation.worker")


@dataclass(slots=True)
class WorkerStats:
    """Counters since the worker started."""

    relayed_events: int = 0
    frames: int = 0
    heartbeats: int = 0
    skipped_events: int = 0
    purged_log: int = 0
    purged_records: int = 0
    pruned_members: int = 0
    errors: int = 0
    head: int = 0
    """The committed head at the last relay."""
    backlog: int = 0
    """Committed but not yet relayed, at the last relay."""


def _seq_of(record: bytes) -> int:
    # Records start with {"seq":N, as the commit script writes them.
    return int(record[7 : record.index(b",")])


class Publisher:
    """Relays committed revocations, sends heartbeats, purges expired records.

    ``run()`` blocks until ``stop()`` (thread-safe) is called.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        batch: int = 1000,
        max_backlog: int = 100_000,
        purge_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        worker_id: str | None = None,
    ) -> None:
        if settings.event_key is None and not settings.allow_unsigned_events:
            raise ConfigError(
                "the worker signs bus messages with event_key; set it "
                "(or allow_unsigned_events=True to run without)",
                field="event_key",
            )
        key = (
            bus_key(settings.event_key.get_secret_value(), settings.namespace)
            if settings.event_key is not None
            else None
        )
        self._codec = Codec(key, require_signature=False)
        self._settings = settings
        self.topology = Topology(settings)
        self._client = self.topology.client(
            "worker", socket_timeout=settings.heartbeat_interval + 5.0
        )
        self._publish = self.topology.publish_command
        self.store = Store(self._client, settings.namespace)
        self._batch = batch
        self._max_backlog = max_backlog
        self._purge_interval = purge_interval
        self._clock = clock
        self._stop = threading.Event()
        self.worker_id = worker_id or presence.process_id()
        self.stats = WorkerStats()
        self._last_success: float | None = None
        """Monotonic time of the last relay or heartbeat that reached Redis."""
        self._running = False
        self._next_presence = 0.0
        self._next_prune = 0.0
        self._known_relayed: int | None = None
        """Everything up to here was published (by this worker or, per the cursor, another)."""

    def relay_once(self, *, heartbeat: bool) -> int:
        """Publish what is pending (at most one batch); returns how many records."""
        pending = self.store.pending(self._batch, self._max_backlog, heartbeat=heartbeat)
        if pending.skipped:
            self.stats.skipped_events += pending.skipped
            log.warning(
                "backlog of %d events skipped; clients catch up from the store",
                pending.skipped,
                extra={"skipped": pending.skipped, "head": pending.head},
            )
        pipe: Any = self._client.pipeline(transaction=False)
        channel = self.store.keys.channel
        if pending.records:
            pipe.execute_command(self._publish, channel, self._codec.events(pending.records))
        done = pending.head if len(pending.records) < self._batch else _seq_of(pending.records[-1])
        if done > pending.relayed:
            self.store.advance(done, pipe=pipe)
        presence_due = heartbeat and time.monotonic() >= self._next_presence
        if presence_due:
            interval = max(self._settings.presence_interval, self._settings.heartbeat_interval)
            fields = presence.entry(
                "worker",
                self.worker_id,
                interval * presence.TTL_INTERVALS,
                applied_seq=max(done, pending.relayed),
                head_seq=pending.head,
                fresh=True,
            )
            presence.queue_report(pipe, self.store.keys, "worker", fields, pending.time)
        if heartbeat:
            # Dated by the Redis server's clock: clients refuse a heartbeat that is not
            # newer than every one they have seen, so a replayed one proves nothing.
            beat = self._codec.heartbeat(pending.head, pending.time, pending.epoch)
            pipe.execute_command(self._publish, channel, beat)
        if len(pipe):
            pipe.execute()
        if presence_due:
            self._next_presence = time.monotonic() + self._settings.presence_interval
        self._known_relayed = max(done, pending.relayed)
        self.stats.head = pending.head
        self.stats.backlog = max(0, pending.head - self._known_relayed)
        self._last_success = time.monotonic()
        if pending.records:
            self.stats.frames += 1
            self.stats.relayed_events += len(pending.records)
        if heartbeat:
            self.stats.heartbeats += 1
        return len(pending.records)

    def relay_popped(self, record: bytes) -> bool:
        """Publish a record popped from the wake list if it is the next one.

        Returns False when it is not (a gap: other commits came first, or
        another worker relays): the caller then relays what is pending.
        """
        seq = _seq_of(record)
        if self._known_relayed is None or seq != self._known_relayed + 1:
            return False
        pipe: Any = self._client.pipeline(transaction=False)
        pipe.execute_command(self._publish, self.store.keys.channel, self._codec.events([record]))
        self.store.advance(seq, pipe=pipe)
        pipe.execute()
        self._known_relayed = seq
        self._last_success = time.monotonic()
        self.stats.frames += 1
        self.stats.relayed_events += 1
        return True

    def purge_once(self, now: float | None = None) -> tuple[int, int]:
        """Purge records that no longer match any valid token."""
        at = (self._clock() if now is None else now) - self._settings.leeway
        log_entries, records = self.store.purge(at)
        self.stats.purged_log += log_entries
        self.stats.purged_records += records
        if self._settings.presence_interval > 0 and time.monotonic() >= self._next_prune:
            # Dead processes' presence entries, about once per presence ttl.
            self.stats.pruned_members += presence.prune(self.store.client, self.store.keys)
            self._next_prune = time.monotonic() + self._settings.presence_interval
        return log_entries, records

    @property
    def settings(self) -> Settings:
        return self._settings

    def last_success_age(self) -> float | None:
        """Seconds since a relay or heartbeat last reached Redis; None before the first."""
        last = self._last_success
        return None if last is None else time.monotonic() - last

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, detail)``: running, and a relay or heartbeat reached Redis lately."""
        age = self.last_success_age()
        limit = max(3 * self._settings.heartbeat_interval, 1.0)
        detail: dict[str, Any] = {
            "worker": self.worker_id,
            "last_relay_age": None if age is None else round(age, 3),
            "head": self.stats.head,
            "backlog": self.stats.backlog,
        }
        if not self._running:
            return False, {**detail, "reason": "not running"}
        if age is None or age > limit:
            return False, {**detail, "reason": f"no relay reached Redis for over {limit:g}s"}
        return True, detail

    def stop(self) -> None:
        """Ask ``run()`` to return (within about one heartbeat interval)."""
        self._stop.set()

    def close(self) -> None:
        self._client.close()

    def run(self) -> None:
        """Relay, heartbeat and purge until :meth:`stop`. Survives Redis outages."""
        interval = self._settings.heartbeat_interval
        next_heartbeat = next_purge = time.monotonic()
        backoff = 0.05
        full_relay = True
        log.info(
            "worker %s relaying on %s",
            self.worker_id,
            self.store.keys.channel,
            extra={"worker": self.worker_id, "channel": self.store.keys.channel},
        )
        self._running = True
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                due = now >= next_heartbeat
                if due or full_relay:
                    full_relay = self.relay_once(heartbeat=due) >= self._batch
                    if due:
                        next_heartbeat = now + interval
                if now >= next_purge:
                    self.purge_once()
                    next_purge = now + self._purge_interval
                backoff = 0.05
                if full_relay:
                    continue
                wait = next_heartbeat - time.monotonic()
                if wait > 0.001:
                    popped = self.store.wait_for_commit(wait)
                    full_relay = popped is not None and not self.relay_popped(popped)
            except redis.RedisError as exc:
                self.stats.errors += 1
                self._known_relayed = None
                full_relay = True
                log.warning(
                    "store unavailable (%s); retrying in %.2fs",
                    exc,
                    backoff,
                    extra={"worker": self.worker_id, "error": str(exc)},
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        self._running = False
        with contextlib.suppress(redis.RedisError):
            presence.withdraw(self.store.client, self.store.keys, "worker", self.worker_id)
        log.info("worker %s stopped", self.worker_id, extra={"worker": self.worker_id})
