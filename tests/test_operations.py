"""Operations: metrics scraped over HTTP, health, presence, propagation confirmation,
the status/watch commands and JSON logs, against a real redis-server."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from revocation import (
    PropagationTimeout,
    RevocationClient,
    Revoker,
    Settings,
    TokenIssuer,
    TokenRevoked,
)
from revocation.logs import configure_logging
from revocation.metrics import (
    MetricsServer,
    register_client,
    register_worker,
    serve,
    unregister,
)
from revocation.redis_server import RedisServer
from revocation.settings import to_environment

from .conftest import WorkerThread, poll, publish_raw

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def scrape(server: MetricsServer) -> dict[str, float]:
    """``/metrics`` as ``{"name{label=value,...}": value}`` (labels sorted, namespace left out)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(
                f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "namespace"
            )
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def health(server: MetricsServer) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to pause."""
    with RedisServer() as server:
        yield server


def test_the_worker_serves_metrics_and_health_that_follow_the_pipeline(
    own_server: RedisServer, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_url=own_server.url, presence_interval=0.2)
    registry = CollectorRegistry()
    worker = WorkerThread(settings).start()
    collector = register_worker(worker.publisher, registry)
    server = serve(registry, health=worker.publisher.healthy)
    try:
        assert poll(lambda: health(server)[0] == 200)
        first = scrape(server)
        assert first["revocation_worker_relayed_events_total"] == 0
        with RevocationClient(settings) as client, Revoker(settings) as revoker:
            assert client.wait_synced(5)
            last = revoker.revoke_many([{"jti": f"j{i}"} for i in range(5)])[-1]
            assert client.wait_applied(last.seq, 5)
            assert poll(lambda: scrape(server)["revocation_worker_relayed_events_total"] == 5)
            after = scrape(server)
            assert after["revocation_worker_head_seq"] == last.seq
            assert after["revocation_worker_outbox_backlog"] == 0
            assert (
                after["revocation_worker_heartbeats_total"]
                > first["revocation_worker_heartbeats_total"]
            )
            assert poll(lambda: scrape(server).get("revocation_clients_live") == 1)
            # A report is up to one interval old: the first one predates the first sync.
            assert poll(lambda: scrape(server)["revocation_clients_stale"] == 0)
            assert scrape(server)["revocation_worker_healthy"] == 1

            own_server.pause()  # Redis stops answering: the worker cannot relay
            try:
                assert poll(lambda: health(server)[0] == 503, 10)
                _, detail = health(server)
                assert detail["status"] == "unhealthy" and "no relay" in detail["reason"]
                assert scrape(server)["revocation_worker_healthy"] == 0
            finally:
                own_server.resume()
            assert poll(lambda: health(server)[0] == 200, 10)
            assert scrape(server)["revocation_worker_healthy"] == 1
    finally:
        server.stop()
        unregister(collector)
        worker.stop()


def test_client_metrics_follow_the_pipeline(
    own_server: RedisServer, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_url=own_server.url)
    issuer = TokenIssuer(settings)
    registry = CollectorRegistry()
    worker = WorkerThread(settings).start()
    client = RevocationClient(settings).start()
    register_client(client, registry)
    server = serve(registry)
    try:
        assert client.wait_synced(5)
        metrics = scrape(server)
        assert metrics["revocation_client_fresh"] == 1
        assert metrics["revocation_client_connected"] == 1
        assert metrics["revocation_propagation_delay_seconds_count"] == 0
        with Revoker(settings) as revoker:
            token = issuer.issue("alice")
            record = revoker.revoke(token=token)
            assert client.wait_applied(record.seq, 5)
        metrics = scrape(server)
        assert metrics["revocation_client_applied_seq"] == record.seq
        assert metrics["revocation_client_lag"] == 0
        assert metrics["revocation_client_cache_entries"] == 1
        assert metrics["revocation_propagation_delay_seconds_count"] == 1
        assert metrics["revocation_propagation_delay_seconds_bucket{le=+Inf}"] == 1

        publish_raw(settings, b'{"v":1,"type":"heartbeat","head":1,"sent_at":1}.AAAA')
        assert poll(
            lambda: (
                scrape(server).get("revocation_client_dropped_messages_total{reason=bad_signature}")
                == 1
            )
        )

        worker.stop()  # no heartbeats: the client goes stale and asks the store
        assert poll(lambda: scrape(server)["revocation_client_fresh"] == 0, 5)
        with pytest.raises(TokenRevoked):
            client.verify(token, check_database=True)  # known here: no need to ask
        assert client.verify(issuer.issue("carol"), check_database=True).user_id == "carol"
        assert scrape(server)["revocation_client_store_fallbacks_total"] == 1

        own_server.pause()  # neither the bus nor the store: stale_policy=deny decides
        try:
            with pytest.raises(Exception, match="revocation state unavailable"):
                client.verify(issuer.issue("bob"), check_database=True)
        finally:
            own_server.resume()
        assert scrape(server)["revocation_client_stale_denied_total"] == 1
    finally:
        server.stop()
        client.close()
        worker.stop()


def test_settings_metrics_registers_started_clients_in_the_default_registry(
    make_settings: Callable[..., Settings], worker: WorkerThread
) -> None:
    def fresh_gauges() -> int:
        return sum(
            1
            for family in REGISTRY.collect()
            if family.name == "revocation_client_fresh"
            for sample in family.samples
            if sample.labels["namespace"] == settings.namespace
        )

    settings = make_settings(metrics=True)
    with RevocationClient(settings) as client:
        assert client.wait_synced(5)
        assert fresh_gauges() == 1
    assert fresh_gauges() == 0


APP_PROCESS = """
import sys
from revocation import RevocationClient, Settings
client = RevocationClient(Settings()).start()
assert client.wait_synced(10), client.status()
print(client.id, flush=True)
sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


class AppProcess:
    """A client in a child process of its own (to kill or to freeze)."""

    def __init__(self, settings: Settings) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **to_environment(settings)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", APP_PROCESS],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.id = self.process.stdout.readline().strip()
        assert self.id, "the app process did not start"

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def app_processes() -> Iterator[Callable[[Settings], AppProcess]]:
    started: list[AppProcess] = []

    def start(settings: Settings) -> AppProcess:
        started.append(AppProcess(settings))
        return started[-1]

    yield start
    for app in started:
        app.stop()


def test_presence_lists_live_clients_and_ages_out_a_killed_one(
    make_settings: Callable[..., Settings],
    app_processes: Callable[[Settings], AppProcess],
) -> None:
    settings = make_settings(presence_interval=0.2)
    worker = WorkerThread(settings).start()
    try:
        with RevocationClient(settings) as here, Revoker(settings) as revoker:
            assert here.wait_synced(5)
            there = app_processes(settings)
            assert poll(lambda: {m.id for m in revoker.live_clients()} == {here.id, there.id})
            member = next(m for m in revoker.live_clients() if m.id == there.id)
            assert member.pid == there.process.pid and member.fresh
            there.signal(signal.SIGKILL)
            # Gone from the live list after its ttl (3 intervals), then pruned by the worker.
            assert poll(lambda: [m.id for m in revoker.live_clients()] == [here.id], 5)
            entries = revoker._store.client.hkeys(revoker._store.keys.clients)
            assert poll(
                lambda: (
                    revoker._store.client.hkeys(revoker._store.keys.clients) == [here.id.encode()]
                ),
                5,
            ), entries
        # A clean close withdraws the entry at once.
        assert revoker_live_ids(settings) == []
    finally:
        worker.stop()


def revoker_live_ids(settings: Settings) -> list[str]:
    with Revoker(settings) as revoker:
        return [m.id for m in revoker.live_clients()]


def test_revoke_wait_returns_once_every_live_client_applied_it(
    make_settings: Callable[..., Settings], worker: WorkerThread
) -> None:
    # Reports every 30 s: only the applied revocation's wake-up can answer within 2 s.
    settings = make_settings(presence_interval=30)
    clients = [RevocationClient(settings).start() for _ in range(3)]
    try:
        assert all(c.wait_synced(5) for c in clients)
        with Revoker(settings) as revoker:
            assert poll(lambda: len(revoker.live_clients()) == 3)
            record = revoker.revoke(user_id="mallory", wait=2)
            # No waiting here: revoke() returned, so every client has it already.
            assert [c.status().applied_seq >= record.seq for c in clients] == [True] * 3
            assert record.confirm
            many = revoker.revoke_many([{"jti": "a"}, {"jti": "b"}], wait=2)
            assert all(c.status().applied_seq >= many[-1].seq for c in clients)
    finally:
        for client in clients:
            client.close()


def test_revoke_wait_times_out_naming_a_frozen_client(
    make_settings: Callable[..., Settings],
    worker: WorkerThread,
    app_processes: Callable[[Settings], AppProcess],
) -> None:
    settings = make_settings(presence_interval=1.0)  # ttl 3 s: longer than the wait
    with RevocationClient(settings) as here, Revoker(settings) as revoker:
        assert here.wait_synced(5)
        frozen = app_processes(settings)
        assert poll(lambda: len(revoker.live_clients()) == 2)
        frozen.signal(signal.SIGSTOP)
        with pytest.raises(PropagationTimeout) as raised:
            revoker.revoke(jti="during-the-freeze", wait=0.5)
        assert [m.id for m in raised.value.behind] == [frozen.id]
        assert frozen.id in str(raised.value)
        assert raised.value.revocation.subject == "during-the-freeze"
        assert here.status().applied_seq >= raised.value.revocation.seq  # in force here
        frozen.signal(signal.SIGCONT)
        # Thawed, it catches up and reports: the next wait succeeds.
        revoker.revoke(jti="after-the-thaw", wait=10)


def cli(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **to_environment(settings)}
    return subprocess.run(
        [sys.executable, "-m", "revocation", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_watch_and_revoke_wait_from_the_command_line(
    make_settings: Callable[..., Settings],
    app_processes: Callable[[Settings], AppProcess],
) -> None:
    settings = make_settings(presence_interval=1.0)
    worker = WorkerThread(settings).start()
    try:
        app = app_processes(settings)
        with Revoker(settings) as revoker:
            assert poll(lambda: len(revoker.live_clients()) == 1)

        done = cli("revoke", "--jti", "j1", "--wait", "5", settings=settings)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[0])["subject"] == "j1"
        assert "applied by all 1 live clients" in done.stderr

        state = json.loads(cli("status", "--json", settings=settings).stdout)
        assert state["head"] == 1 and state["token"] == 1 and state["backlog"] == 0
        assert [c["id"] for c in state["clients"]] == [app.id]
        assert state["clients"][0]["applied_seq"] == 1 and state["clients"][0]["lag"] == 0
        assert [w["id"] for w in state["workers"]] == [worker.publisher.worker_id]

        table = cli("status", settings=settings)
        assert table.returncode == 0, table.stderr
        assert app.id in table.stdout and "fresh" in table.stdout
        assert worker.publisher.worker_id in table.stdout

        watched = cli("watch", "--count", "2", "--interval", "0.1", settings=settings)
        assert watched.returncode == 0, watched.stderr
        assert app.id in watched.stdout

        app.signal(signal.SIGSTOP)
        behind = cli("revoke", "--jti", "j2", "--wait", "0.5", settings=settings)
        app.signal(signal.SIGCONT)
        assert behind.returncode == 3
        assert app.id in behind.stderr
        assert json.loads(behind.stdout)["subject"] == "j2"  # committed all the same
    finally:
        worker.stop()


def test_logs_can_be_json_lines_with_structured_fields(
    make_settings: Callable[..., Settings],
    client: RevocationClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", json=True)
    try:
        publish_raw(client.settings, b"not a frame")
        assert poll(lambda: client.status().dropped_messages.get("malformed") == 1)
    finally:
        for handler in root.handlers:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    dropped = [entry for entry in lines if entry.get("reason") == "malformed"]
    assert len(dropped) == 1
    assert dropped[0]["logger"] == "revocation.listener"
    assert dropped[0]["level"] == "WARNING" and "dropped bus message" in dropped[0]["message"]
    assert dropped[0]["time"].endswith("+00:00")


def test_unreadable_presence_entries_are_left_out_not_fatal(
    make_settings: Callable[..., Settings], start_worker: Callable[..., WorkerThread]
) -> None:
    settings = make_settings(presence_interval=0.2)
    start_worker(settings)  # prunes every 0.2 s
    with RevocationClient(settings) as client, Revoker(settings) as revoker:
        assert client.wait_synced(5)
        raw, keys = revoker._store.client, revoker._store.keys
        raw.hset(keys.clients, "garbage", b"\xff not json")
        raw.hset(keys.clients, "no-date", b'{"id": "no-date", "ttl": 5}')
        raw.hset(keys.clients, "wrong-types", b'{"seen_at": "soon", "ttl": []}')
        assert [m.id for m in revoker.live_clients()] == [client.id]
        revoker.revoke(jti="still-confirmed", wait=5)  # the junk does not hold it up
        # The worker prunes them with the dead.
        assert poll(lambda: raw.hkeys(keys.clients) == [client.id.encode()], 5)
        done = cli("status", "--json", settings=settings)
        assert done.returncode == 0 and [c["id"] for c in json.loads(done.stdout)["clients"]] == [
            client.id
        ]
