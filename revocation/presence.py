"""Who is out there: clients and workers report themselves to the store.

Each started client writes one entry to ``{ns}:clients`` (a hash: id -> JSON)
every ``presence_interval`` seconds, and at once after applying a revocation
that ``revoke(..., wait=)`` waits for. Workers write to ``{ns}:workers`` with
their heartbeats. An entry carries its own ``ttl`` (3 intervals) and the
Redis server's time it was written, so readers need no clock of their own:
an entry older than its ttl is a dead (or frozen) process's, and is left out;
workers delete such entries now and then.

Nothing here is on the request path: a client reports from a thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson
import redis

from .store import Keys, server_time

log = logging.getLogger("revocation.presence")
Role = Literal["client", "worker"]
TTL_INTERVALS = 3
"""An entry not renewed for this many intervals is a dead process's."""


def process_id() -> str:
    """``host:pid:random``: unique per process (and per fork)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Member:
    """One live client or worker, as it last reported itself."""

    id: str
    role: Role
    host: str
    pid: int
    seen_at: float
    """Redis server time of the report."""
    ttl: float
    age: float
    """Seconds between the report and the read (on the Redis server's clock)."""
    applied_seq: int = 0
    """Clients: every revocation up to here is applied. Workers: relayed up to here."""
    head_seq: int = 0
    fresh: bool = False
    node: str | None = None
    size: int = 0

    @property
    def lag(self) -> int:
        return max(0, self.head_seq - self.applied_seq)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "lag": self.lag}


def _key(keys: Keys, role: Role) -> str:
    return keys.clients if role == "client" else keys.workers


def entry(role: Role, member_id: str, ttl: float, **state: Any) -> dict[str, Any]:
    """A presence entry's fields, less ``seen_at`` (the writer adds the server's time)."""
    return {
        "id": member_id,
        "role": role,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "ttl": ttl,
        **state,
    }


def report(
    client: Any, keys: Keys, role: Role, fields: dict[str, Any], *, now: float | None = None
) -> None:
    """Write one entry, dated by the Redis server's clock (one TIME first unless ``now``)."""
    seen_at = server_time(client.time()) if now is None else now
    client.hset(_key(keys, role), fields["id"], orjson.dumps({**fields, "seen_at": seen_at}))


def queue_report(pipe: Any, keys: Keys, role: Role, fields: dict[str, Any], now: float) -> None:
    """:func:`report` queued on a pipeline, with a server time the caller already has."""
    pipe.hset(_key(keys, role), fields["id"], orjson.dumps({**fields, "seen_at": now}))


def withdraw(client: Any, keys: Keys, role: Role, member_id: str) -> None:
    """Remove a member's entry (a clean shutdown)."""
    client.hdel(_key(keys, role), member_id)


def members(
    client: Any, keys: Keys, role: Role, ids: list[str] | None = None
) -> tuple[list[Member], list[str]]:
    """``(live members, ids of dead entries)``, oldest report first.

    With ``ids``, only those entries are read (HMGET instead of HGETALL): what a
    propagation wait polls, so that a large fleet is read in full only once.
    """
    pipe = client.pipeline(transaction=False)
    if ids is None:
        pipe.hgetall(_key(keys, role))
    else:
        pipe.hmget(_key(keys, role), ids)
    pipe.time()
    raw, now_reply = pipe.execute()
    now = server_time(now_reply)
    entries = raw.items() if ids is None else zip(ids, raw, strict=True)
    live: list[Member] = []
    dead: list[str] = []
    for member_id, value in entries:
        name = member_id.decode() if isinstance(member_id, bytes) else str(member_id)
        member = None if value is None else _parse(name, role, value, now)
        if member is not None and member.age <= member.ttl:
            live.append(member)
        else:
            dead.append(name)  # aged out, unreadable (nobody's), or gone
    live.sort(key=lambda m: m.seen_at)
    return live, dead


def _parse(name: str, role: Role, value: bytes, now: float) -> Member | None:
    try:
        data = orjson.loads(value)
        return Member(
            id=name,
            role=role,
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            seen_at=float(data["seen_at"]),
            ttl=float(data["ttl"]),
            age=max(0.0, now - float(data["seen_at"])),
            applied_seq=int(data.get("applied_seq", 0)),
            head_seq=int(data.get("head_seq", 0)),
            fresh=bool(data.get("fresh", False)),
            node=data.get("node"),
            size=int(data.get("size", 0)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def prune(client: Any, keys: Keys) -> int:
    """Delete the entries of dead clients and workers; returns how many."""
    removed = 0
    roles: tuple[Role, ...] = ("client", "worker")
    for role in roles:
        _, dead = members(client, keys, role)
        if dead:
            removed += int(client.hdel(_key(keys, role), *dead))
    return removed


class Reporter:
    """A client's presence thread: reports every ``interval`` and when woken."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        interval: float,
        state: Callable[[], dict[str, Any]],
    ) -> None:
        self._client = client
        self._keys = keys
        self._interval = interval
        self._state = state
        self.id = process_id()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reports = 0
        self.failures = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="revocation-presence", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Report now (a revocation someone waits for was applied)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop reporting and withdraw the entry (best effort)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None
        with contextlib.suppress(redis.RedisError):  # else it ages out
            withdraw(self._client, self._keys, "client", self.id)

    def _run(self) -> None:
        ttl = self._interval * TTL_INTERVALS
        while not self._stop.is_set():
            self._wake.clear()
            try:
                fields = entry("client", self.id, ttl, **self._state())
                report(self._client, self._keys, "client", fields)
                self.reports += 1
            except redis.RedisError as exc:
                self.failures += 1
                log.debug("presence report failed: %s", exc)
            self._wake.wait(self._interval)
