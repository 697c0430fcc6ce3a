"""Failover under a burst of revocations, measured: Redis Cluster and Sentinel.

    python scripts/failover.py                 # 3 rounds per topology and replica_acks
    python scripts/failover.py --rounds 5
    python scripts/failover.py --rounds 1 --no-write

Uses the test harness (``tests/topologies.py``): a Cluster of 3 masters and 3
replicas (node timeout 1 s) and a Sentinel group (master, replica, 3 sentinels;
down-after as the harness sets it, printed and recorded), each started once.
For each topology and ``replica_acks`` in {0, 1}, each round, in a namespace
of its own: a ``Publisher`` in a thread, two clients (one subscribing through
a replica), and a thread revoking issued tokens one by one, retrying the same
token on ``StoreUnavailable`` (which includes ``NotReplicated``). Once 50 are
confirmed, the master of the namespace's slot is SIGKILLed; once the
promotion is seen it is restarted with the harness's ``restart()`` (it
rejoins as a replica). Measured from the kill:

- promotion: until the harness sees the replica take the master role (it polls
  every 50 ms);
- first revoke: until a ``revoke()`` returns successfully again (the first
  success after the first failure that followed the kill);
- reconverged: until both clients are fresh, have had a heartbeat since the
  kill, and report ``applied_seq`` equal to the store's head (read before and
  after, unchanged); polled every 10 ms while the burst goes on;
- restarted: until the killed node is back and the harness finds the topology
  healthy again (its ``restart()`` returned);
- settled: reconverged, checked again after the burst stopped (it stops after
  the restart, so this is never before "restarted"; in the JSON only).

Then: ``revoke()`` failures, confirmed revocations, confirmed ones missing from
the store's records hash (and how many of those were confirmed before the
kill), confirmed tokens the two clients still accept with
``check_database=True``, the same for a client started after the round (it
knows only the store), and the promotions the servers logged (more than one:
the topology failed over back and forth). Prints a markdown table (median /
max over rounds) and writes every round's figures to
docs/benchmarks/failover.json. Exit status 1 when something went wrong: a
round failed, a confirmed revocation was lost with replica_acks=1 (or a new
client accepts one), a client accepted a confirmed revocation's token, a
client never reconverged, or a round saw more than one promotion.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import redis  # noqa: E402

from revocation import (  # noqa: E402
    NotReplicated,
    RevocationClient,
    RevocationUnavailable,
    Revoker,
    Settings,
    StoreUnavailable,
    TokenIssuer,
    TokenRevoked,
    TokenVerifier,
)
from revocation.store import Store  # noqa: E402
from revocation.topology import Topology  # noqa: E402
from tests import topologies  # noqa: E402
from tests.conftest import WorkerThread  # noqa: E402
from tests.topologies import Cluster, SentinelGroup, Server, tools_available  # noqa: E402

HARNESS_SOURCE = Path(topologies.__file__).read_bytes()
"""tests/topologies.py as imported: the harness these figures come from."""

OUTPUT = ROOT / "docs" / "benchmarks" / "failover.json"
SIGNING_KEY = "s" * 16 + secrets.token_hex(16)
EVENT_KEY = "e" * 16 + secrets.token_hex(16)
BEFORE_KILL = 50
"""Confirmed revocations before the kill."""
AFTER_KILL = 100
"""Confirmed revocations after the kill before the burst stops."""
ROUND_TIMEOUT = 60.0
"""Most seconds a round waits for the burst to recover and the clients to reconverge."""
SETTLE_TIMEOUT = 30.0
"""Most seconds to wait for reconvergence once the burst stopped."""
POLL = 0.01


def make_settings(redis_url: str, replica_acks: int) -> Settings:
    """As tests/conftest.py's ``make_settings``, in a namespace of its own."""
    return Settings(
        redis_url=redis_url,
        namespace=f"failover-{uuid.uuid4().hex[:10]}",
        signing_key=SIGNING_KEY,
        event_key=EVENT_KEY,
        heartbeat_interval=0.05,
        max_staleness=0.5,
        fallback_timeout=0.2,
        replica_acks=replica_acks,
    )


class Burst:
    """Revokes issued tokens one by one; retries the same token on StoreUnavailable."""

    def __init__(self, settings: Settings) -> None:
        self._revoker = Revoker(settings)
        self._issuer = TokenIssuer(settings)
        self._verifier = TokenVerifier(settings)
        self.confirmed: list[tuple[str, str, float]] = []
        """(token, jti, monotonic time revoke() returned), in order."""
        self.unavailable: list[float] = []
        """Monotonic times of StoreUnavailable (other than NotReplicated)."""
        self.not_replicated: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="burst", daemon=True)

    def start(self) -> Burst:
        self._thread.start()
        return self

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            token = self._issuer.issue(f"user-{number}")
            jti = self._verifier.verify(token).jti
            number += 1
            while not self._stop.is_set():
                try:
                    self._revoker.revoke(token=token)
                except NotReplicated:
                    self.not_replicated.append(time.monotonic())
                except StoreUnavailable:
                    self.unavailable.append(time.monotonic())
                else:
                    self.confirmed.append((token, jti, time.monotonic()))
                    break
                self._stop.wait(0.02)  # failover under way: the same token again

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError("the burst thread did not stop")
        self._revoker.close()


def _converged(store: Store, clients: list[RevocationClient], since: float) -> bool:
    """Both clients fresh, heartbeating since ``since``, at the store's (unchanged) head."""
    try:
        head = store.head()
        statuses = [client.status() for client in clients]
        again = store.head()
    except (redis.RedisError, OSError):
        return False
    now = time.monotonic()
    return head == again and all(
        s.fresh
        and s.applied_seq == head
        and s.last_heartbeat_age is not None
        and now - s.last_heartbeat_age > since
        for s in statuses
    )


class Monitor:
    """Polls from the kill on; notes when the clients first reconverge."""

    def __init__(self, store: Store, clients: list[RevocationClient]) -> None:
        self._store = store
        self._clients = clients
        self.killed_at: float | None = None
        self.converged_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self, killed_at: float) -> Monitor:
        self.killed_at = killed_at
        self._thread.start()
        return self

    def _run(self) -> None:
        killed_at = self.killed_at
        assert killed_at is not None
        while not self._stop.is_set() and self.converged_at is None:
            if _converged(self._store, self._clients, killed_at):
                self.converged_at = time.monotonic()
            self._stop.wait(POLL)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


@dataclass
class Round:
    """One round's figures; times in seconds from the kill."""

    topology: str
    replica_acks: int
    round: int
    namespace: str
    promotion: float = float("nan")
    restarted: float = float("nan")
    """The killed node back and the topology healthy again (the harness's restart)."""
    first_failure: float = float("nan")
    first_revoke: float | None = None
    """The first successful revoke() after the first failure that followed the kill."""
    reconverged: float | None = None
    settled: float | None = None
    """Reconverged, checked after the burst stopped (None: never, within the timeout)."""
    failures: int = 0
    unavailable: int = 0
    not_replicated: int = 0
    confirmed: int = 0
    confirmed_after_kill: int = 0
    lost: int = 0
    lost_jtis: list[str] = field(default_factory=list)
    lost_before_kill: int = 0
    """Of ``lost``, those confirmed before the kill (replicated for a while already)."""
    accepted: int = 0
    """(client, confirmed token) pairs accepted by verify(check_database=True)."""
    accepted_by_new_client: int = 0
    """Confirmed tokens accepted by a client started after the round (it knows only the
    store): what every process started later would accept."""
    failovers: int = 0
    """Promotions during the round, from the servers' logs (sentinel ``+switch-master``,
    cluster ``Failover election won``): more than one is a failover back and forth."""
    unavailable_checks: int = 0
    """(client, confirmed token) pairs answered RevocationUnavailable."""
    head: int = 0
    log: int = 0
    records: int = 0
    clients: list[dict[str, Any]] = field(default_factory=list)
    restart_error: str | None = None
    """The harness's restart() failed (the round was measured all the same)."""
    error: str | None = None
    """The round could not be measured."""


def _kill_and_restart(
    harness: Cluster | SentinelGroup, namespace: str
) -> tuple[Callable[[], Server], Callable[[Server], None]]:
    """How to SIGKILL the namespace's master (returns it once the promotion is seen),
    and how to bring it back (it rejoins as a replica; returns once healthy)."""
    if isinstance(harness, Cluster):
        cluster = harness
        return (
            lambda: cluster.kill_master_of(f"{{{namespace}}}:seq")[0],
            cluster.restart,
        )
    group = harness
    return (lambda: group.kill_master()[0], group.restart)


def run_round(kind: str, harness: Cluster | SentinelGroup, acks: int, number: int) -> Round:
    settings = make_settings(harness.url, acks)
    result = Round(kind, acks, number, settings.namespace)
    kill, restart = _kill_and_restart(harness, settings.namespace)
    worker = WorkerThread(settings).start()
    near = RevocationClient(settings).start()
    far = RevocationClient(settings.model_copy(update={"subscribe_from": "replica"})).start()
    clients = [near, far]
    probe = Store(Topology(settings).client("fallback"), settings.namespace)
    admin = Store(Topology(settings).client("admin"), settings.namespace)
    burst: Burst | None = None
    monitor = Monitor(probe, clients)
    failovers_before = _failovers(harness)
    try:
        for client in clients:
            if not client.wait_synced(10):
                raise RuntimeError(f"a client did not sync: {client.status()}")
        burst = Burst(settings).start()
        deadline = time.monotonic() + 20
        while len(burst.confirmed) < BEFORE_KILL:
            if time.monotonic() > deadline:
                raise RuntimeError("the burst did not start")
            time.sleep(POLL)
        killed_at = time.monotonic()
        monitor.start(killed_at)
        killed = kill()
        result.promotion = time.monotonic() - killed_at
        confirmed_at_kill = len(burst.confirmed)
        try:
            restart(killed)
        except Exception as exc:  # measured anyway: what the burst and clients saw
            result.restart_error = f"{type(exc).__name__}: {exc}"
        else:
            result.restarted = time.monotonic() - killed_at
        deadline = killed_at + ROUND_TIMEOUT
        while time.monotonic() < deadline and (
            len(burst.confirmed) < confirmed_at_kill + AFTER_KILL or monitor.converged_at is None
        ):
            time.sleep(POLL)
        burst.stop()
        monitor.stop()
        if monitor.converged_at is not None:
            result.reconverged = monitor.converged_at - killed_at
        # The kill itself comes a few ms after killed_at (the harness first asks who the
        # master is): successes in between are not "again". Count from the first failure.
        failed_at = min(
            (t for t in burst.unavailable + burst.not_replicated if t > killed_at),
            default=killed_at,
        )
        first = next((t for _, _, t in burst.confirmed if t > failed_at), None)
        result.first_failure = failed_at - killed_at
        result.first_revoke = None if first is None else first - killed_at
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not _converged(probe, clients, killed_at):
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
        else:
            result.settled = time.monotonic() - killed_at
        result.unavailable = len(burst.unavailable)
        result.not_replicated = len(burst.not_replicated)
        result.failures = result.unavailable + result.not_replicated
        result.confirmed = len(burst.confirmed)
        result.confirmed_after_kill = sum(1 for _, _, t in burst.confirmed if t > killed_at)
        _check_store(admin, burst, result)
        before_kill = {jti for _, jti, t in burst.confirmed if t <= killed_at}
        result.lost_before_kill = sum(1 for jti in result.lost_jtis if jti in before_kill)
        _check_clients(clients, burst, result)
        result.accepted_by_new_client = _new_client_accepts(settings, burst)
        result.failovers = _failovers(harness) - failovers_before
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.clients = [_status(c) for c in clients]
    finally:
        monitor.stop()
        if burst is not None:
            burst.stop()
        for client in clients:
            client.close()
        worker.stop()
        probe.client.close()
        admin.client.close()
        for server in _data_servers(harness):
            if not server.alive:  # a round that failed half-way: leave the topology whole
                restart(server)
    return result


def _data_servers(harness: Cluster | SentinelGroup) -> list[Server]:
    return harness.nodes if isinstance(harness, Cluster) else [harness.master, harness.replica]


def _check_store(store: Store, burst: Burst, result: Round) -> None:
    """Confirmed revocations missing from the records hash (the point checks' source)."""
    jtis = [jti for _, jti, _ in burst.confirmed]
    for start in range(0, len(jtis), 1000):
        chunk = jtis[start : start + 1000]
        found = store.client.hmget(store.keys.records, [f"token:{jti}" for jti in chunk])
        result.lost_jtis += [jti for jti, value in zip(chunk, found, strict=True) if value is None]
    result.lost = len(result.lost_jtis)
    counts = store.counts()
    result.head, result.log, result.records = counts["head"], counts["log"], counts["token"]


def _new_client_accepts(settings: Settings, burst: Burst) -> int:
    """Confirmed tokens a client started now (the round's worker still runs) accepts
    with check_database=True."""
    with RevocationClient(settings) as client:
        if not client.wait_synced(10):
            raise RuntimeError(f"a new client did not sync: {client.status()}")
        accepted = 0
        for token, _, _ in burst.confirmed:
            try:
                client.verify(token, check_database=True)
            except (TokenRevoked, RevocationUnavailable):
                continue
            accepted += 1
        return accepted


def _failovers(harness: Cluster | SentinelGroup) -> int:
    """Promotions so far, counted in the servers' logs."""
    if isinstance(harness, Cluster):
        servers, marker = harness.nodes, "Failover election won"
    else:
        servers, marker = harness.sentinels[:1], "+switch-master"
    count = 0
    for server in servers:
        log = server.directory / "server.log"
        if log.exists():
            count += log.read_text(errors="replace").count(marker)
    return count


def _check_clients(clients: list[RevocationClient], burst: Burst, result: Round) -> None:
    """Confirmed tokens each client still accepts with check_database=True."""
    for client in clients:
        for token, _, _ in burst.confirmed:
            try:
                client.verify(token, check_database=True)
            except TokenRevoked:
                continue
            except RevocationUnavailable:
                result.unavailable_checks += 1
                continue
            result.accepted += 1
        result.clients.append(_status(client))


def _status(client: RevocationClient) -> dict[str, Any]:
    status = client.status()
    return {
        "node": status.node,
        "fresh": status.fresh,
        "applied_seq": status.applied_seq,
        "head_seq": status.head_seq,
        "size": status.size,
        "rebases": status.rebases,
        "reconnects": status.reconnects,
        "catch_ups": status.catch_ups,
        "fallbacks": status.fallbacks,
        "stale_denied": status.stale_denied,
    }


def _cell(values: list[float | None], digits: int = 2) -> str:
    """``median / max`` of the values; a missing one (never happened) shows as never."""
    present = [v for v in values if v is not None]
    never = len(values) - len(present)
    if not present:
        return "never"
    text = f"{statistics.median(present):.{digits}f} / {max(present):.{digits}f}"
    return text + (f" ({never} never)" if never else "")


def table(rounds: list[Round]) -> str:
    headers = [
        "topology",
        "replica_acks",
        "promotion s",
        "first revoke s",
        "reconverged s",
        "restarted s",
        "revoke failures",
        "confirmed",
        "lost (before kill)",
        "accepted",
        "new client accepts",
        "rebases",
        "failovers",
        "rounds",
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    groups: dict[tuple[str, int], list[Round]] = {}
    for r in rounds:
        groups.setdefault((r.topology, r.replica_acks), []).append(r)
    for (kind, acks), group in groups.items():
        ok = [r for r in group if r.error is None]
        rebases: list[float | None] = [
            float(sum(c["rebases"] for c in r.clients)) for r in ok if r.clients
        ]
        row = [
            kind,
            str(acks),
            _cell([r.promotion for r in ok]),
            _cell([r.first_revoke for r in ok]),
            _cell([r.reconverged for r in ok]),
            _cell([r.restarted for r in ok]),
            _cell([float(r.failures) for r in ok], 0),
            _cell([float(r.confirmed) for r in ok], 0),
            _cell([float(r.lost) for r in ok], 0)
            + f" ({_cell([float(r.lost_before_kill) for r in ok], 0)})",
            _cell([float(r.accepted) for r in ok], 0),
            _cell([float(r.accepted_by_new_client) for r in ok], 0),
            _cell(rebases, 0),
            _cell([float(r.failovers) for r in ok], 0),
            f"{len(ok)}" + (f" ({len(group) - len(ok)} failed)" if len(ok) < len(group) else ""),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine() -> str:
    server = shutil.which("redis-server") or "redis-server"
    version = subprocess.run(
        [server, "--version"], check=False, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"redis-py {redis.__version__}, {version}"
    )


def harness_info() -> dict[str, Any]:
    """Which harness ran: its timeouts, and the file's hash against the commit's."""
    git = shutil.which("git") or "git"

    def read(*args: str) -> bytes:
        done = subprocess.run([git, *args], cwd=ROOT, check=False, capture_output=True)
        return done.stdout if done.returncode == 0 else b""

    committed = read("show", "HEAD:tests/topologies.py")
    return {
        "commit": read("rev-parse", "HEAD").decode().strip(),
        "topologies_py_sha256": hashlib.sha256(HARNESS_SOURCE).hexdigest()[:16],
        "topologies_py_as_committed": committed == HARNESS_SOURCE,
        "cluster_node_timeout_ms": Cluster.NODE_TIMEOUT_MS,
        # Before the harness had the attribute it wrote 500 into the sentinel config.
        "sentinel_down_after_ms": getattr(SentinelGroup, "DOWN_AFTER_MS", 500),
    }


def anomalies(rounds: list[Round]) -> list[str]:
    found = []
    for r in rounds:
        name = f"{r.topology} replica_acks={r.replica_acks} round {r.round}"
        if r.error is not None:
            found.append(f"{name}: failed: {r.error}; clients {r.clients}")
            continue
        if r.restart_error is not None:
            found.append(f"{name}: the harness's restart failed: {r.restart_error}")
        if r.lost and r.replica_acks >= 1:
            found.append(f"{name}: {r.lost} confirmed revocations lost: {r.lost_jtis[:5]}")
        if r.accepted:
            found.append(f"{name}: clients accepted {r.accepted} revoked tokens; {r.clients}")
        if r.accepted_by_new_client and r.replica_acks >= 1:
            found.append(f"{name}: a new client accepts {r.accepted_by_new_client} revoked tokens")
        if r.failovers > 1:
            found.append(f"{name}: {r.failovers} promotions (a failover back and forth)")
        if r.settled is None:
            found.append(f"{name}: the clients never reconverged; {r.clients}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per topology and acks")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {OUTPUT.name}")
    parser.add_argument(
        "--topology", choices=["cluster", "sentinel"], nargs="+", default=["cluster", "sentinel"]
    )
    args = parser.parse_args(argv)
    reason = tools_available()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    started = time.monotonic()
    used = harness_info()
    print(f"harness: {used}", flush=True)
    rounds: list[Round] = []
    for kind in args.topology:
        harness: Cluster | SentinelGroup = Cluster() if kind == "cluster" else SentinelGroup()
        print(f"== {kind}: starting", flush=True)
        harness.start()
        try:
            for acks in (0, 1):
                for number in range(1, args.rounds + 1):
                    result = run_round(kind, harness, acks, number)
                    rounds.append(result)
                    print(_line(result), flush=True)
                    if result.error is not None:
                        harness.wait_healthy()  # the next round needs it whole again
        finally:
            harness.stop()
    print()
    print(table(rounds))
    found = anomalies(rounds)
    for line in found:
        print(f"ANOMALY: {line}")
    if not args.no_write:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        payload = {
            "machine": machine(),
            "run": stamp,
            "seconds": round(time.monotonic() - started),
            "rounds_per_case": args.rounds,
            "harness": used,
            "settings": {
                "heartbeat_interval": 0.05,
                "max_staleness": 0.5,
                "fallback_timeout": 0.2,
                "replica_ack_timeout": 1.0,
                "confirmed_before_kill": BEFORE_KILL,
                "confirmed_after_kill": AFTER_KILL,
            },
            "table": table(rounds),
            "anomalies": found,
            "rounds": [asdict(r) for r in rounds],
        }
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {OUTPUT}")
    return 1 if found else 0


def _line(r: Round) -> str:
    if r.error is not None:
        return f"{r.topology} acks={r.replica_acks} round {r.round}: FAILED {r.error}"
    restart = "" if r.restart_error is None else f" (RESTART FAILED: {r.restart_error})"

    def s(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f}s"

    rebases = [c["rebases"] for c in r.clients]
    return (
        f"{r.topology} acks={r.replica_acks} round {r.round}: promotion {s(r.promotion)}, "
        f"first revoke {s(r.first_revoke)}, reconverged {s(r.reconverged)}, "
        f"settled {s(r.settled)}, restarted {s(r.restarted)}; failures {r.failures} "
        f"({r.not_replicated} not replicated), confirmed {r.confirmed} "
        f"({r.confirmed_after_kill} after the kill), lost {r.lost} ({r.lost_before_kill} "
        f"before the kill), accepted {r.accepted}, new client {r.accepted_by_new_client}, "
        f"failovers {r.failovers}, "
        f"unavailable checks {r.unavailable_checks}, rebases {rebases}{restart}"
    )


if __name__ == "__main__":
    sys.exit(main())
