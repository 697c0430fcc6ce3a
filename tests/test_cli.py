from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from revocation import RevocationClient, Settings, TokenRevoked, TokenVerifier
from revocation.settings import to_environment

from .conftest import WorkerThread

ROOT = Path(__file__).resolve().parents[1]


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "revocation", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def env_of(settings: Settings) -> dict[str, str]:
    return to_environment(settings)


@pytest.mark.parametrize("command", [[], ["worker"], ["issue"], ["revoke"], ["status"], ["demo"]])
def test_help_everywhere(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0 and "usage: revocation" in result.stdout


def test_revoke_needs_exactly_one_target() -> None:
    result = cli("revoke", "--user", "a", "--jti", "b")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_a_bad_setting_is_a_clear_error_not_a_traceback() -> None:
    result = cli("status", env={"REVOCATION_STALE_POLICY": "sometimes"})
    assert result.returncode == 2
    assert "stale_policy" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_issue_revoke_and_status_from_the_command_line(
    settings: Settings, worker: WorkerThread, client: RevocationClient
) -> None:
    env = env_of(settings)
    issued = cli("issue", "alice", "--session", "laptop", env=env)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert TokenVerifier(settings).verify(token).session_handle == "laptop"

    revoked = cli("revoke", "--session", "laptop", "--reason", "lost", env=env)
    assert revoked.returncode == 0, revoked.stderr
    record = json.loads(revoked.stdout)
    assert record["kind"] == "session" and record["subject"] == "laptop" and record["seq"] == 1
    assert client.wait_applied(1, 5)
    with pytest.raises(TokenRevoked):
        client.verify(token, check_database=True)

    status = cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    assert counts["head"] == 1 and counts["session"] == 1 and counts["subscribers"] >= 1
    table = cli("status", env=env)
    assert "committed head (seq)" in table.stdout


@pytest.mark.integration
def test_the_demo_starts_everything_itself_and_passes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOCATION_")}
    result = subprocess.run(
        [sys.executable, "-m", "revocation", "demo", "--processes", "2"],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("token", "session", "user", "all"):
        assert any(line.startswith(kind) and "ms" in line for line in result.stdout.splitlines())
    assert "demo passed" in result.stdout
