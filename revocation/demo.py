"""``revocation demo``: the whole pipeline on one machine, measured.

Starts a private redis-server (unless ``REVOCATION_REDIS_URL`` is set), the
publisher worker (``python -m workers.publisher``) and N app processes, each
embedding a :class:`RevocationClient`. Then, for each kind of revocation, it
revokes one token, and every app process reports how long after ``revoke()``
returned it first rejected the token (``verify(check_database=True)`` in a
polling loop), and that stateless verification still accepts it. Last, it
revokes with ``wait=``: ``revoke()`` returns once every live app process has
reported applying the revocation. Stops all it started. Exit status 0 only if
every process rejected every revoked token and confirmed the last one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .client import RevocationClient
from .errors import PropagationTimeout, TokenRevoked
from .redis_server import RedisServer
from .revoker import Revoker
from .settings import Settings, to_environment
from .tokens import TokenIssuer

WATCH_DEADLINE = 10.0
POLL_PAUSE = 0.0001  # releases the GIL between polls, like a real request loop


def _app_process(settings_env: dict[str, str], conn: Connection) -> None:
    """One app process: sync, then watch the tokens it is sent until each is rejected."""
    os.environ.update(settings_env)
    client = RevocationClient(Settings()).start()
    conn.send(("ready", os.getpid(), client.wait_synced(10.0)))
    while True:
        command, tokens = conn.recv()
        if command == "stop":
            break
        if command == "accepts":
            accepted = {}
            for name, token in tokens.items():
                try:
                    client.verify(token, check_database=True)
                    accepted[name] = True
                except TokenRevoked:
                    accepted[name] = False
            conn.send(("accepts", accepted))
            continue
        conn.send(("watching", None))
        rejected_at: dict[str, float | None] = dict.fromkeys(tokens)
        deadline = time.monotonic() + WATCH_DEADLINE
        while any(v is None for v in rejected_at.values()) and time.monotonic() < deadline:
            for name, token in tokens.items():
                if rejected_at[name] is None:
                    try:
                        client.verify(token, check_database=True)
                    except TokenRevoked:
                        rejected_at[name] = time.monotonic()
            time.sleep(POLL_PAUSE)
        stateless = {name: _accepts(client.verify, token) for name, token in tokens.items()}
        conn.send(("result", (rejected_at, stateless)))
    client.close()
    conn.close()


def _accepts(verify: Callable[[str], Any], token: str) -> bool:
    try:
        verify(token)
    except Exception:
        return False
    return True


def run_demo(*, processes: int = 4, out: Any = None) -> int:
    """Run the demo; returns the exit status."""
    out = out or sys.stdout
    server: RedisServer | None = None
    url = os.environ.get("REVOCATION_REDIS_URL")
    if not url:
        server = RedisServer().start()
        url = server.url
        print(f"started redis-server {server.binary} on {url} (pid {server.pid})", file=out)
    settings = Settings(
        redis_url=url,
        namespace=f"demo-{uuid.uuid4().hex[:8]}",
        signing_key=secrets.token_urlsafe(32),
        event_key=secrets.token_urlsafe(32),
        access_token_ttl=300,
    )
    env = to_environment(settings)
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.publisher"],
        env={**os.environ, **env, "REVOCATION_LOG_LEVEL": "WARNING"},
    )
    context = multiprocessing.get_context("spawn")
    apps: list[tuple[Any, Connection]] = []
    try:
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=_app_process, args=(env, child), daemon=True)
            process.start()
            apps.append((process, parent))
        pids = []
        for _, conn in apps:
            _, pid, synced = _recv(conn)
            pids.append(pid)
            if not synced:
                print(f"app process {pid} did not sync", file=out)
        print(f"worker pid {worker.pid}; {processes} app processes: {pids}", file=out)
        return _scenario(settings, apps, pids, out)
    finally:
        for process, conn in apps:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        if server is not None:
            server.stop()


def _recv(conn: Connection) -> Any:
    if not conn.poll(30):
        raise RuntimeError("an app process did not answer within 30 s")
    return conn.recv()


def _confirmation(revoker: Revoker, issuer: TokenIssuer, pids: list[int], out: Any) -> bool:
    """``revoke(..., wait=)``: returns once every live app process has applied it."""
    print("\npropagation confirmation: revoke(token=..., wait=2.0)", file=out)
    started = time.monotonic()
    try:
        record = revoker.revoke(token=issuer.issue("frank"), reason="demo", wait=2.0)
    except PropagationTimeout as exc:
        print(f"NOT CONFIRMED: {exc}", file=out)
        return False
    took = time.monotonic() - started
    live = revoker.live_clients()
    print(
        f"returned {took * 1000:.2f} ms after the call, once all {len(live)} live app "
        f"processes had applied seq {record.seq} (commit, relay, apply, presence report):",
        file=out,
    )
    for member in sorted(live, key=lambda m: m.pid):
        print(f"  pid {member.pid:<8} {member.id:<28} applied seq {member.applied_seq}", file=out)
    return sorted(m.pid for m in live) == sorted(pids) and all(
        m.applied_seq >= record.seq for m in live
    )


def _scenario(
    settings: Settings, apps: list[tuple[Any, Connection]], pids: list[int], out: Any
) -> int:
    issuer = TokenIssuer(settings)
    tokens = {
        "token": issuer.issue("alice"),
        "session": issuer.issue("bob", session_handle="bob-laptop"),
        "user": issuer.issue("carol"),
        "all": issuer.issue("dave"),
    }
    revocations: dict[str, Callable[[Revoker], Any]] = {
        "token": lambda r: r.revoke(token=tokens["token"], reason="demo"),
        "session": lambda r: r.revoke(session_handle="bob-laptop", reason="demo"),
        "user": lambda r: r.revoke(user_id="carol", reason="demo"),
        "all": lambda r: r.revoke(everyone=True, reason="demo"),
    }
    header = f"{'revoked':<9}" + "".join(f"{'pid ' + str(p):>12}" for p in pids)
    print("\ntime from revoke() returning to rejection, per app process", file=out)
    print(header + f"{'stateless verify':>19}", file=out)
    ok, negative = True, False
    with Revoker(settings) as revoker:
        for kind, revoke in revocations.items():
            watched = {kind: tokens[kind]}
            for _, conn in apps:
                conn.send(("watch", watched))
            for _, conn in apps:
                _recv(conn)
            revoke(revoker)
            returned = time.monotonic()
            cells, stateless_ok = [], True
            for _, conn in apps:
                _, (rejected_at, stateless) = _recv(conn)
                at = rejected_at[kind]
                stateless_ok &= stateless[kind]
                if at is None:
                    ok = False
                    cells.append("NOT REJECTED")
                else:
                    cells.append(f"{(at - returned) * 1000:.2f} ms")
                    negative |= at < returned
            line = f"{kind:<9}" + "".join(f"{c:>12}" for c in cells)
            print(line + f"{'accepts' if stateless_ok else 'REJECTS':>19}", file=out)
        if negative:
            print(
                "(a negative time: that process rejected the token before this one, "
                "descheduled after the commit, saw revoke() return)",
                file=out,
            )
        fresh = {"issued after": issuer.issue("erin")}
        for _, conn in apps:
            conn.send(("accepts", fresh))
        after_ok = all(_recv(conn)[1]["issued after"] for _, conn in apps)
        print(
            f"\na token issued after revoke(everyone=True) is "
            f"{'accepted' if after_ok else 'REJECTED'} by every process",
            file=out,
        )
        ok &= after_ok
        ok &= _confirmation(revoker, issuer, pids, out)
    print("demo passed" if ok else "demo FAILED", file=out)
    return 0 if ok else 1
