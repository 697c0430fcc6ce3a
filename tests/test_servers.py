"""End to end: the examples under real servers with several worker processes.

FastAPI under uvicorn with 2 workers, Flask under gunicorn with 2 sync workers
(with and without --preload), each against a real redis-server and a running
worker. After a revocation through the admin route, every worker process must
answer 401 token_revoked for that token while other users' tokens keep working.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from revocation import Settings
from revocation.redis_server import free_port
from revocation.settings import to_environment

from .conftest import WorkerThread

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "admin-" + "k" * 26


def call(
    port: int, method: str, path: str, *, token: str | None = None, body: Any = None
) -> tuple[int, int, dict[str, Any]]:
    """One request on a new connection (so the kernel spreads them over workers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", "X-Admin-Key": ADMIN_KEY}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(
            method, path, body=json.dumps(body) if body is not None else None, headers=headers
        )
        response = connection.getresponse()
        payload = json.loads(response.read() or b"{}")
        return response.status, int(response.headers.get("X-Pid", "0")), payload
    finally:
        connection.close()


def serve(command: list[str], settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        **to_environment(settings),
        "REVOCATION_ADMIN_KEY": ADMIN_KEY,
    }
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode() if process.stderr else "server died")
        try:
            call(port, "GET", "/profile")
            return process
        except OSError:
            time.sleep(0.05)  # polling a server that gives no readiness event
    process.kill()
    raise RuntimeError("server did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def every_worker_rejects_the_revoked_token(port: int, workers: int) -> None:
    _, _, alice = call(port, "POST", "/login", body={"user_id": "alice"})
    _, _, bob = call(port, "POST", "/login", body={"user_id": "bob"})
    alice_token, bob_token = alice["access_token"], bob["access_token"]

    accepted: set[int] = set()
    deadline = time.monotonic() + 30
    while len(accepted) < workers and time.monotonic() < deadline:
        status, pid, _ = call(port, "POST", "/transfer", token=alice_token)
        assert status == 200
        accepted.add(pid)
    assert len(accepted) == workers, f"only reached workers {accepted}"

    # "wait": the admin route answers once every live worker process applied it...
    status, _, record = call(port, "POST", "/admin/revoke", body={"token": alice_token, "wait": 10})
    assert status == 200 and record["kind"] == "token" and record["confirm"]

    # ...so from here on, every worker process rejects it: not one 200.
    rejected: set[int] = set()
    deadline = time.monotonic() + 30
    while rejected != accepted and time.monotonic() < deadline:
        status, pid, body = call(port, "POST", "/transfer", token=alice_token)
        assert status == 401, f"worker {pid} accepted a revocation it had confirmed"
        assert body["code"] == "token_revoked"
        rejected.add(pid)
    assert rejected == accepted, f"workers {accepted - rejected} never answered"

    still_fine: set[int] = set()
    deadline = time.monotonic() + 30
    while still_fine != accepted and time.monotonic() < deadline:
        status, pid, body = call(port, "POST", "/transfer", token=bob_token)
        assert status == 200 and body["user_id"] == "bob"
        still_fine.add(pid)
        status, _, body = call(port, "GET", "/profile", token=alice_token)
        assert status == 200  # stateless verification still accepts it
    assert still_fine == accepted


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def server_settings(settings: Settings, worker: WorkerThread) -> Iterator[Settings]:
    yield settings


def test_fastapi_under_uvicorn_with_two_workers(server_settings: Settings, port: int) -> None:
    command = [
        sys.executable, "-m", "uvicorn", "examples.fastapi_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning",
    ]  # fmt: skip
    process = serve(command, server_settings, port)
    try:
        every_worker_rejects_the_revoked_token(port, workers=2)
    finally:
        stop(process)


@pytest.mark.parametrize("preload", [False, True])
def test_flask_under_gunicorn_with_two_sync_workers(
    server_settings: Settings, port: int, preload: bool
) -> None:
    command = [
        sys.executable, "-m", "gunicorn", "examples.flask_app:app",
        "--bind", f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "sync",
        "--log-level", "warning", *(["--preload"] if preload else []),
    ]  # fmt: skip
    process = serve(command, server_settings, port)
    try:
        every_worker_rejects_the_revoked_token(port, workers=2)
    finally:
        stop(process)
