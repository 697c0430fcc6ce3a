"""A real deployment on one machine, and the faults to inject into it.

Used by ``tests/test_faults.py`` (each fault once, small) and by
``scripts/campaign.py`` (a long seeded campaign that writes
``docs/reliability.md``).

A :class:`Deployment` is a redis-server with AOF on and ``appendfsync always``
(the durable setting), publisher worker processes (``python -m
workers.publisher``) and app processes, each with a ``RevocationClient``,
which watch every token whose revocation ``revoke()`` confirmed: they verify
each one with ``check_database=True`` in a loop and record the last moment
they accepted it after its confirmation. Clocks are ``time.time()`` on one
machine, so those moments compare across processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

from revocation import (
    RevocationClient,
    RevocationUnavailable,
    Revoker,
    Settings,
    StoreUnavailable,
    TokenIssuer,
    TokenRevoked,
)
from revocation.events import Codec, bus_key
from revocation.redis_server import RedisServer
from revocation.settings import to_environment
from revocation.store import Keys, Store

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT = 0.1
MAX_STALENESS = 0.5


def _observer(env: dict[str, str], skew: float, conn: Connection) -> None:
    """An app process: watch confirmed-revoked tokens, report acceptances after confirmation."""
    os.environ.update(env)
    client = RevocationClient(Settings(), clock=lambda: time.time() + skew).start()
    watched: dict[str, float] = {}  # token -> confirmation time (unix, this machine)
    late: dict[str, float] = {}  # token -> seconds after confirmation it was last accepted
    conn.send(("ready", client.wait_synced(30)))
    while True:
        while conn.poll():
            command, payload = conn.recv()
            if command == "watch":
                watched.update(payload)
            elif command == "status":
                status = client.status()
                rejected = 0
                for token in watched:
                    with contextlib.suppress(RevocationUnavailable):
                        try:
                            client.verify(token, check_database=True)
                        except TokenRevoked:
                            rejected += 1
                conn.send(
                    (
                        "status",
                        {
                            "fresh": status.fresh,
                            "applied_seq": status.applied_seq,
                            "size": status.size,
                            "rejected": rejected,
                            "watched": len(watched),
                            "late": dict(late),
                            "reconnects": status.reconnects,
                            "dropped": dict(status.dropped_messages),
                        },
                    )
                )
            elif command == "stop":
                client.close()
                return
        for token, confirmed_at in watched.items():
            try:
                client.verify(token, check_database=True)
            except (TokenRevoked, RevocationUnavailable):
                continue
            now = time.time()  # the machine's clock, not the skewed one
            if now > confirmed_at:
                late[token] = max(late.get(token, 0.0), now - confirmed_at)
        time.sleep(0.001)


@dataclass
class Report:
    """What a scenario or a campaign measured."""

    revocations: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    longest_reconverge: float = 0.0
    longest_late_acceptance: float = 0.0
    details: list[str] = field(default_factory=list)

    def merge(self, other: Report) -> None:
        self.revocations += other.revocations
        self.faults.update(other.faults)
        self.lost += other.lost
        self.longest_reconverge = max(self.longest_reconverge, other.longest_reconverge)
        self.longest_late_acceptance = max(
            self.longest_late_acceptance, other.longest_late_acceptance
        )
        self.details += other.details


class Deployment:
    """Redis (AOF, fsync always), workers and observing app processes."""

    def __init__(self, *, clients: int = 3, skews: list[float] | None = None) -> None:
        self.server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
        self.clients = clients
        self.skews = skews or [0.0] * clients
        self.workers: list[subprocess.Popen[bytes]] = []
        self.observers: list[tuple[Any, Connection]] = []
        self.report = Report()
        self.confirmed: dict[str, float] = {}

    def __enter__(self) -> Deployment:
        self.server.start()
        try:
            return self._start()
        except BaseException:
            self.__exit__()  # stop what started; nothing outlives a failed start
            raise

    def _start(self) -> Deployment:
        self.settings = Settings(
            redis_url=self.server.url,
            namespace=f"faults-{uuid.uuid4().hex[:8]}",
            signing_key=secrets.token_urlsafe(32),
            event_key=secrets.token_urlsafe(32),
            heartbeat_interval=HEARTBEAT,
            max_staleness=MAX_STALENESS,
            fallback_timeout=0.1,
        )
        self.env = to_environment(self.settings)
        self.issuer = TokenIssuer(self.settings)
        self.start_worker()
        context = multiprocessing.get_context("spawn")
        for skew in self.skews[: self.clients]:
            parent, child = context.Pipe()
            process = context.Process(target=_observer, args=(self.env, skew, child), daemon=True)
            process.start()
            self.observers.append((process, parent))
        for _, conn in self.observers:
            if not conn.poll(60) or not conn.recv()[1]:
                raise RuntimeError("an app process did not sync")
        return self

    def __exit__(self, *exc: object) -> None:
        for process, conn in self.observers:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
            process.join(timeout=10)
            if process.is_alive():
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
        for worker in self.workers:
            self._stop_worker(worker)
        self.server.stop()

    # -- parts --------------------------------------------------------------

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.publisher"],
            cwd=ROOT,
            env={
                **os.environ,
                **self.env,
                "PYTHONPATH": str(ROOT),
                "REVOCATION_LOG_LEVEL": "ERROR",
            },
        )
        self.workers.append(worker)
        return worker

    @staticmethod
    def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    def revoke_burst(self, count: int) -> None:
        """Revoke ``count`` tokens (and a user's), retrying while the store is down.

        Only revocations ``revoke()`` confirmed are watched: the guarantee is about them.
        """
        with Revoker(self.settings) as revoker:
            for _ in range(count):
                user = f"user-{uuid.uuid4().hex[:6]}"
                token = self.issuer.issue(user)
                target = {"token": token} if random.random() < 0.8 else {"user_id": user}
                deadline = time.monotonic() + 30
                while True:
                    try:
                        revoker.revoke(**target)
                        break
                    except StoreUnavailable:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                confirmed = time.time()
                self.confirmed[token] = confirmed
                for _, conn in self.observers:
                    conn.send(("watch", {token: confirmed}))
                self.report.revocations += 1

    def store(self) -> Store:
        return Store(redis.Redis.from_url(self.settings.redis_url), self.settings.namespace)

    # -- faults -------------------------------------------------------------

    def kill_pubsub(self) -> None:
        self.server.client().client_kill_filter(_type="pubsub")

    def pause_redis(self, seconds: float = MAX_STALENESS * 2) -> None:
        self.server.pause()
        try:
            time.sleep(seconds)  # the fault is the pause itself
        finally:
            self.server.resume()

    def restart_redis(self) -> None:
        self.server.restart()

    def kill9_worker(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        self.workers = [w for w in self.workers if w.poll() is None]
        self.start_worker()

    def second_worker(self) -> None:
        self.start_worker()

    def slow_subscriber(self) -> None:
        """Freeze one app process while a burst goes out, past a small pub/sub buffer limit."""
        self.server.client().config_set("client-output-buffer-limit", "pubsub 4kb 2kb 1")
        process, _ = self.observers[0]
        os.kill(process.pid, signal.SIGSTOP)
        try:
            self.revoke_burst(60)
        finally:
            os.kill(process.pid, signal.SIGCONT)
            self.server.client().config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")

    def tamper_events(self) -> None:
        """Duplicated, reordered and missing events on the channel."""
        store = self.store()
        codec = Codec(
            bus_key(self.env["REVOCATION_EVENT_KEY"], self.settings.namespace),
            require_signature=True,
        )
        raw = store.client.zrange(store.keys.log, -6, -1)
        if raw:
            channel = Keys.for_namespace(self.settings.namespace).channel
            for frame in [raw[::-1], raw, raw[::2], raw[-1:], raw[:1]]:  # reversed, dup, gaps
                store.client.publish(channel, codec.events(list(frame)))
        store.client.close()

    # -- checks -------------------------------------------------------------

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for _, conn in self.observers:
            conn.send(("status", None))
            if not conn.poll(60):
                raise RuntimeError("an app process did not answer")
            out.append(conn.recv()[1])
        return out

    def converge(self, timeout: float = 30.0) -> float:
        """Seconds until every app process is fresh, at the store's head, and rejects
        every confirmed revocation; raises if that does not happen within ``timeout``."""
        started = time.monotonic()
        store = self.store()
        try:
            while True:
                head = store.head()
                statuses = self.statuses()
                if all(
                    s["fresh"] and s["applied_seq"] >= head and s["rejected"] == s["watched"]
                    for s in statuses
                ):
                    return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"no convergence in {timeout}s: head {head}, {statuses}")
                time.sleep(0.05)  # polling other processes' state
        finally:
            store.client.close()

    def check(self, scenario: str) -> Report:
        """Converge, then measure: lost revocations, reconvergence, late acceptances."""
        report = Report()
        report.faults[scenario] += 1
        report.longest_reconverge = self.converge()
        statuses = self.statuses()
        store = self.store()
        counts = store.counts()
        store.client.close()
        live = counts["token"] + counts["session"] + counts["user"] + counts["all"]
        for status in statuses:
            report.lost += status["watched"] - status["rejected"]
            if status["size"] != live:  # exactly the store's set (nothing expires here)
                report.details.append(f"{scenario}: a client holds {status['size']} of {live}")
            for seconds in status["late"].values():
                report.longest_late_acceptance = max(report.longest_late_acceptance, seconds)
        return report


SCENARIOS = {
    "pubsub connections killed": Deployment.kill_pubsub,
    "redis paused (half-open)": Deployment.pause_redis,
    "redis restarted (AOF)": Deployment.restart_redis,
    "worker killed -9 and restarted": Deployment.kill9_worker,
    "second worker started": Deployment.second_worker,
    "slow subscriber cut off": Deployment.slow_subscriber,
    "duplicated, reordered, missing events": Deployment.tamper_events,
}


def run_scenario(deployment: Deployment, name: str, burst: int) -> Report:
    """A burst, then the fault injected while a second burst runs, then the checks."""
    deployment.revoke_burst(burst)
    failures: list[BaseException] = []

    def second_burst() -> None:
        try:
            deployment.revoke_burst(burst)
        except BaseException as exc:  # reported by the caller
            failures.append(exc)

    thread = threading.Thread(target=second_burst)
    thread.start()
    SCENARIOS[name](deployment)
    thread.join(timeout=120)
    if failures:
        raise failures[0]
    return deployment.check(name)
