"""The publisher worker: ordering, several at once, restarts, signals, forks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from revocation import RevocationClient, Revoker, Settings, TokenIssuer, TokenRevoked
from revocation.events import Codec, Events, bus_key
from revocation.settings import to_environment
from revocation.store import Store
from revocation.topology import Topology

from .conftest import EVENT_KEY, WorkerThread, poll

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def env_of(settings: Settings) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **to_environment(settings)}


class Tap:
    """A raw subscriber that records the seqs it sees, in arrival order."""

    def __init__(self, settings: Settings, revoker: Revoker) -> None:
        self.codec = Codec(bus_key(EVENT_KEY, settings.namespace), require_signature=True)
        self.sharded = Topology(settings).sharded
        self.pubsub = revoker._store.client.pubsub()
        channel = Store(revoker._store.client, settings.namespace).keys.channel
        if self.sharded:
            self.pubsub.ssubscribe(channel)
        else:
            self.pubsub.subscribe(channel)
        self.seqs: list[int] = []
        self.heads: list[int] = []

    def drain(self) -> None:
        while (message := self._next()) is not None:
            if message["type"] not in ("message", "smessage"):
                continue
            decoded = self.codec.decode(message["data"])
            if isinstance(decoded, Events):
                self.seqs.extend(r.seq for r in decoded.revocations)
            else:
                self.heads.append(decoded.head)

    def _next(self) -> dict[str, Any] | None:
        if self.sharded:
            return self.pubsub.get_sharded_message(timeout=0.01)  # type: ignore[no-any-return]
        return self.pubsub.get_message(timeout=0.01)

    def close(self) -> None:
        self.pubsub.close()


@pytest.mark.topologies
def test_each_worker_publishes_in_seq_order_and_heartbeats_follow_the_events(
    settings: Settings, worker: WorkerThread, revoker: Revoker
) -> None:
    tap = Tap(settings, revoker)
    for i in range(50):
        revoker.revoke(jti=f"j{i}")

    def all_relayed() -> bool:
        tap.drain()
        return bool(tap.heads) and tap.heads[-1] == 50 and len(set(tap.seqs)) == 50

    assert poll(all_relayed)
    assert tap.seqs == sorted(tap.seqs)
    tap.close()


@pytest.mark.topologies
def test_several_workers_at_once_lose_and_reorder_nothing(
    settings: Settings,
    start_worker: Callable[..., WorkerThread],
    start_client: Callable[..., RevocationClient],
    revoker: Revoker,
) -> None:
    workers = [start_worker(), start_worker(), start_worker()]
    clients = [start_client() for _ in range(3)]
    assert all(c.wait_synced(5) for c in clients)
    issuer = TokenIssuer(settings)
    tokens = [issuer.issue(f"user{i}") for i in range(300)]

    def burst(part: list[str]) -> None:
        with Revoker(settings) as own:
            for token in part:
                own.revoke(token=token)

    threads = [threading.Thread(target=burst, args=(tokens[i::3],)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        assert client.wait_applied(300, 10)
        status = client.status()
        assert status.size == 300 and status.applied_seq == 300
        for token in tokens:
            with pytest.raises(TokenRevoked):
                client.verify(token, check_database=True)
    assert sum(w.publisher.stats.relayed_events for w in workers) >= 300


@pytest.mark.topologies
def test_a_worker_restart_loses_nothing(
    settings: Settings, start_worker: Callable[..., WorkerThread], revoker: Revoker
) -> None:
    first = start_worker()
    revoker.revoke(jti="before")
    tap = Tap(settings, revoker)
    assert poll(lambda: Store(revoker._store.client, settings.namespace).counts()["relayed"] == 1)
    first.stop()
    for i in range(20):  # committed while no worker runs: they wait in the outbox
        revoker.revoke(jti=f"during{i}")
    start_worker()

    def relayed() -> bool:
        tap.drain()
        return set(range(2, 22)) <= set(tap.seqs)

    assert poll(relayed)
    tap.close()


@pytest.mark.topologies
def test_a_long_backlog_is_skipped_and_clients_catch_up_from_the_store(
    settings: Settings,
    start_worker: Callable[..., WorkerThread],
    start_client: Callable[..., RevocationClient],
    revoker: Revoker,
) -> None:
    for i in range(40):
        revoker.revoke(jti=f"j{i}")
    worker = start_worker(batch=5, max_backlog=10)
    client = start_client()
    assert client.wait_synced(5) and client.wait_applied(40, 5)
    assert worker.publisher.stats.skipped_events == 35
    assert client.status().size == 40


def test_the_worker_entry_point_stops_cleanly_on_sigterm(settings: Settings) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.publisher"],
        env=env_of(settings),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with RevocationClient(settings) as client:
            assert client.wait_synced(10)  # its heartbeats arrive
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "stopped" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def run_script(
    settings: Settings, body: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        env=env_of(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_an_app_process_with_a_client_stops_cleanly_on_sigterm(
    settings: Settings, worker: WorkerThread
) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import signal, sys, threading
                from revocation import RevocationClient, Settings
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                with RevocationClient(Settings()) as client:
                    assert client.wait_synced(10)
                    print("synced", flush=True)
                    stop.wait(30)
                print("closed", flush=True)
                """
            ),
        ],
        env=env_of(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "synced"
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=10)
        assert process.returncode == 0
        assert stdout.strip() == "closed"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_process_that_forgets_close_still_exits(settings: Settings, worker: WorkerThread) -> None:
    result = run_script(
        settings,
        """
        from revocation import RevocationClient, Settings
        client = RevocationClient(Settings()).start()
        assert client.wait_synced(10)
        print("done")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


@pytest.mark.parametrize("started_before_fork", [False, True])
def test_a_client_works_in_a_forked_child(
    settings: Settings, worker: WorkerThread, revoker: Revoker, started_before_fork: bool
) -> None:
    token = TokenIssuer(settings).issue("alice")
    script = textwrap.dedent(
        f"""
        import os, sys
        from revocation import RevocationClient, Settings, TokenRevoked
        client = RevocationClient(Settings())
        if {started_before_fork}:
            client.start()
            assert client.wait_synced(10)
        pid = os.fork()
        if pid == 0:
            if not {started_before_fork}:
                client.start()
            ok = client.wait_synced(10)
            print("child synced" if ok else "child not synced", flush=True)
            sys.stdin.readline()
            ok = client.wait_applied(1, 10)
            try:
                client.verify({token!r}, check_database=True)
                os._exit(3)
            except TokenRevoked:
                os._exit(0 if ok else 4)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env_of(settings),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "child synced"
        revoker.revoke(token=token)
        process.communicate("go\n", timeout=20)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
