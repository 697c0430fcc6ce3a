"""Propagation confirmation: what ``revoke(..., wait=)`` costs over a plain ``revoke()``.

N app processes (spawned, N = 1, 4, 16; quick: 1, 2) each embed a client with
the default ``presence_interval`` (5 s); one worker runs in its own process, as
deployed. Before the trials, every process is listed by ``live_clients()``.
Each trial makes, in alternating order, with a pause between:

- a confirmed revocation, ``revoke(jti=..., wait=5.0)``: its wall time (the
  commit, the worker's relay, every process applying it, each one's presence
  report, and the revoker's polling of the presence hash, from 2 ms backing
  off to 50 ms);
- a plain revocation, ``revoke(jti=...)``: its wall time, and from its return
  to the last of the N processes having applied it (``on_applied``, as in
  ``propagation.py``), the earliest a confirmation could possibly be given.

The ratio is confirmation / (plain + propagation to the last process), the
denominator taken per plain trial. "tail" is, per confirmed trial, from the
last process applying it to ``revoke()`` returning: the price of the presence
reports and the polling.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.common import (
    AppliedTimes,
    Section,
    ms,
    percentile,
    private_settings,
    start_worker_process,
    stop_children,
    summary,
)
from revocation import PropagationTimeout, RevocationClient, Revoker, Settings
from revocation.redis_server import RedisServer
from revocation.settings import to_environment

WAIT = 5.0
"""``wait=`` of the confirmed revocations (seconds)."""
PAUSE = 0.02
"""Seconds between revocations, so that one trial's propagation is over before the next."""
WARMUP = 3
"""Untimed revocations of each kind per scenario (connections, scripts, caches)."""


def _child(env: dict[str, str], conn: Connection) -> None:
    """One app process: a client that records when each seq was applied here."""
    os.environ.update(env)
    applied = AppliedTimes()
    client = RevocationClient(Settings(), on_applied=applied).start()
    synced = client.wait_synced(30)
    applied.last = max(applied.last, client.status().applied_seq)
    conn.send(("ready", synced, client.id, os.getpid()))
    while True:
        command = conn.recv()
        if command == "report":
            conn.send(dict(applied.times))
        elif command == "stop":
            break
    client.close()
    conn.close()


def _wait_live(revoker: Revoker, ids: set[str], timeout: float = 30.0) -> float:
    """Block until ``live_clients()`` lists exactly ``ids``; returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        live = {member.id for member in revoker.live_clients()}
        if live == ids:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"live_clients() lists {len(live)} clients, {len(live & ids)} of the "
                f"{len(ids)} started, after {timeout:g}s"
            )
        time.sleep(0.05)


def _scenario(
    settings: Settings, env: dict[str, str], processes: int, trials: int
) -> dict[str, Any]:
    """Spawn ``processes`` app processes, run the trials, return the figures."""
    context = multiprocessing.get_context("spawn")
    children: list[tuple[Any, Connection]] = []
    for _ in range(processes):
        parent, child = context.Pipe()
        process = context.Process(target=_child, args=(env, child), daemon=True)
        process.start()
        children.append((process, parent))
    confirmed: list[float] = []
    plain: list[float] = []
    timeouts = 0
    plain_returned: dict[int, float] = {}  # seq -> monotonic time revoke() returned
    confirm_returned: dict[int, float] = {}
    prefix = f"confirmation-{uuid.uuid4().hex[:8]}"
    try:
        ids: set[str] = set()
        for _, conn in children:
            if not conn.poll(60):
                raise RuntimeError("an app process did not start within 60 s")
            _, synced, client_id, _pid = conn.recv()
            if not synced or client_id is None:
                raise RuntimeError("an app process did not sync")
            ids.add(client_id)
        with Revoker(settings) as revoker:
            waited = _wait_live(revoker, ids)
            for i in range(WARMUP):
                revoker.revoke(jti=f"{prefix}-warm-c{i}", wait=WAIT)
                time.sleep(PAUSE)
                revoker.revoke(jti=f"{prefix}-warm-p{i}")
                time.sleep(PAUSE)
            for trial in range(trials):
                order = ("confirmed", "plain") if trial % 2 == 0 else ("plain", "confirmed")
                for kind in order:
                    jti = f"{prefix}-{kind}-{trial}"
                    if kind == "confirmed":
                        started = time.monotonic()
                        try:
                            record = revoker.revoke(jti=jti, wait=WAIT)
                        except PropagationTimeout as exc:
                            timeouts += 1
                            record = exc.revocation
                        returned = time.monotonic()
                        confirmed.append(returned - started)
                        confirm_returned[record.seq] = returned
                    else:
                        started = time.monotonic()
                        record = revoker.revoke(jti=jti)
                        returned = time.monotonic()
                        plain.append(returned - started)
                        plain_returned[record.seq] = returned
                    time.sleep(PAUSE)
        time.sleep(0.2)
        reports: list[dict[int, float]] = []
        for _, conn in children:
            conn.send("report")
            reports.append(conn.recv())
    finally:
        stop_children(children)
    propagation: list[float] = []  # plain: from revoke() returning to the last process
    missing = 0
    plain_total: list[float] = []  # plain wall time + propagation, per trial
    for (seq, returned), took in zip(plain_returned.items(), plain, strict=True):
        seen = [report.get(seq) for report in reports]
        if any(t is None for t in seen):
            missing += 1
            continue
        last = max(t for t in seen if t is not None)
        propagation.append(last - returned)
        plain_total.append(took + last - returned)
    tail: list[float] = []  # confirmed: from the last process applying to revoke() returning
    for seq, returned in confirm_returned.items():
        seen = [report.get(seq) for report in reports]
        if all(t is not None for t in seen):
            tail.append(returned - max(t for t in seen if t is not None))
    return {
        "confirmed": confirmed,
        "plain": plain,
        "propagation_to_last": propagation,
        "plain_plus_propagation": plain_total,
        "confirm_tail": tail,
        "timeouts": timeouts,
        "not_applied_everywhere": missing,
        "live_wait": waited,
    }


def run(quick: bool, charts: bool = False) -> Section:
    """Measure; ``charts`` is accepted for ``run.py`` and unused (no chart is drawn)."""
    del charts
    trials = 5 if quick else 200
    sizes = [1, 2] if quick else [1, 4, 16]
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"trials": trials, "wait": WAIT, "pause": PAUSE}
    notes: list[str] = []
    with RedisServer() as server:
        settings = private_settings(server)
        env = to_environment(settings)
        worker = start_worker_process(env)
        try:
            for processes in sizes:
                figures = _scenario(settings, env, processes, trials)
                series = {
                    name: figures[name]
                    for name in (
                        "confirmed",
                        "plain",
                        "propagation_to_last",
                        "plain_plus_propagation",
                        "confirm_tail",
                    )
                }
                stats = {name: summary(values) for name, values in series.items()}
                base = series["plain_plus_propagation"]
                ratio_p50 = percentile(series["confirmed"], 50) / percentile(base, 50)
                ratio_p99 = percentile(series["confirmed"], 99) / percentile(base, 99)
                data[str(processes)] = {
                    "summary": stats,
                    "ratio_p50": ratio_p50,
                    "ratio_p99": ratio_p99,
                    "timeouts": figures["timeouts"],
                    "not_applied_everywhere": figures["not_applied_everywhere"],
                    "live_wait": figures["live_wait"],
                    "raw": {k: [round(v, 7) for v in vs] for k, vs in series.items()},
                }
                rows.append(
                    [
                        processes,
                        ms(stats["confirmed"]["p50"]),
                        ms(stats["confirmed"]["p99"]),
                        ms(stats["plain"]["p50"]),
                        ms(stats["plain"]["p99"]),
                        ms(stats["propagation_to_last"]["p50"]),
                        ms(stats["propagation_to_last"]["p99"]),
                        ms(stats["plain_plus_propagation"]["p50"]),
                        ms(stats["plain_plus_propagation"]["p99"]),
                        f"{ratio_p50:.2f}x",
                        f"{ratio_p99:.2f}x",
                        ms(stats["confirm_tail"]["p50"]),
                        len(series["confirmed"]),
                    ]
                )
                if figures["timeouts"] or figures["not_applied_everywhere"]:
                    notes.append(
                        f"{processes} processes: {figures['timeouts']} confirmed revocations "
                        f"timed out after {WAIT:g} s, {figures['not_applied_everywhere']} plain "
                        "ones were not applied by every process."
                    )
        finally:
            worker.terminate()
            worker.wait(timeout=10)
    notes.append(
        "The revoker reads the presence hash once, then polls the entries still behind "
        "0.5 ms later and every 1.5x longer (0.75, 1.1, 1.7... ms, at most 50 ms): a "
        "confirmation is given at the first poll after the last report, so its time "
        "moves in those steps."
    )
    return Section(
        title="Propagation confirmation",
        intro=(
            f"{trials} trials per scenario, alternating a confirmed `revoke(jti=..., "
            f"wait={WAIT:g})` and a plain `revoke(jti=...)` in the same processes, "
            f"{PAUSE * 1e3:.0f} ms apart. Confirmed: the call's wall time, until every live "
            "client reported applying it. Plain: the call's wall time; propagation: from its "
            "return to the last process having applied it; their sum per trial is the "
            "earliest a confirmation could come. Ratio: confirmed / (plain + propagation). "
            "Tail: from the last process applying a confirmed revocation to `revoke()` "
            "returning (presence report and polling)."
        ),
        headers=[
            "processes",
            "confirmed p50",
            "confirmed p99",
            "plain p50",
            "plain p99",
            "to last p50",
            "to last p99",
            "plain + to last p50",
            "plain + to last p99",
            "ratio p50",
            "ratio p99",
            "tail p50",
            "trials",
        ],
        rows=rows,
        notes=notes,
        data=data,
    )
