"""Propagation: from ``revoke()`` returning to each app process having applied it.

N app processes (spawned, N = 1, 8, 32 idle; 2 and 8 busy) each run both our
client and the floor: a bare redis-py subscriber thread (``run_in_thread``)
receiving a direct PUBLISH. Trials alternate between the two, so both see the
same processes, load and noise:

- floor: ``t0`` just before PUBLISH, each process records when its
  subscriber thread received the message;
- ours: ``t0`` just after ``revoke()`` returned (the commit is done; the
  worker has yet to wake and relay), each process records when the revocation
  was applied (``on_applied``), by whichever of its threads applied it.

Busy processes run their main thread in a loop of ``verify(token,
check_database=True)``: the GIL's switch interval (5 ms) then delays any
other thread, the floor's subscriber included; ours drains its socket on the
request path.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import redis

from benchmarks.common import (
    CHARTS,
    AppliedTimes,
    Section,
    ms,
    percentile,
    private_settings,
    start_worker_process,
    stop_children,
)
from revocation import RevocationClient, Revoker, Settings, TokenIssuer
from revocation.redis_server import RedisServer
from revocation.settings import to_environment


def _child(
    env: dict[str, str], floor_channel: str, busy: bool, token: str, conn: Connection
) -> None:
    os.environ.update(env)
    ours = AppliedTimes()
    floor: dict[int, float] = {}

    settings = Settings()
    client = RevocationClient(settings, on_applied=ours).start()
    subscriber = redis.Redis.from_url(settings.redis_url)
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(
        **{floor_channel: lambda m: floor.__setitem__(int(m["data"]), time.monotonic())}
    )
    thread = pubsub.run_in_thread(sleep_time=1.0, daemon=True)
    synced = client.wait_synced(30)
    ours.last = client.status().applied_seq
    conn.send(("ready", synced))
    while True:
        if busy:
            while not conn.poll():
                for _ in range(200):
                    client.verify(token, check_database=True)
        command = conn.recv()
        if command == "report":
            conn.send((dict(ours.times), dict(floor)))
        elif command == "stop":
            break
    thread.stop()
    client.close()
    conn.close()


def _trials(
    settings: Settings, env: dict[str, str], processes: int, *, busy: bool, trials: int, token: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per-process latencies and per-trial all-processes latencies, floor and ours."""
    context = multiprocessing.get_context("spawn")
    floor_channel = f"floor-{uuid.uuid4().hex[:8]}"
    children = []
    for _ in range(processes):
        parent, child = context.Pipe()
        process = context.Process(
            target=_child, args=(env, floor_channel, busy, token, child), daemon=True
        )
        process.start()
        children.append((process, parent))
    publisher_client = redis.Redis.from_url(settings.redis_url)
    floor_t0: dict[int, float] = {}
    ours_t0: dict[int, float] = {}
    try:
        for _, conn in children:
            if not conn.poll(60) or not conn.recv()[1]:
                raise RuntimeError("an app process did not sync")
        with Revoker(settings) as revoker:
            for trial in range(trials):
                floor_t0[trial] = time.monotonic()
                publisher_client.publish(floor_channel, str(trial))
                time.sleep(0.01)
                revocation = revoker.revoke(jti=f"propagation-{uuid.uuid4().hex}")
                ours_t0[revocation.seq] = time.monotonic()
                time.sleep(0.01)
        time.sleep(0.2)
        reports = []
        for _, conn in children:
            conn.send("report")
            reports.append(conn.recv())
    finally:
        stop_children(children)
        publisher_client.close()
    floor_each, ours_each, floor_all, ours_all = [], [], [], []
    for trial, t0 in floor_t0.items():
        seen = [report[1].get(trial) for report in reports]
        floor_each += [t - t0 for t in seen if t is not None]
        if all(t is not None for t in seen):
            floor_all.append(max(seen) - t0)  # type: ignore[type-var]
    for seq, t0 in ours_t0.items():
        seen = [report[0].get(seq) for report in reports]
        ours_each += [t - t0 for t in seen if t is not None]
        if all(t is not None for t in seen):
            ours_all.append(max(seen) - t0)  # type: ignore[type-var]
    return floor_each, ours_each, floor_all, ours_all


def run(quick: bool, charts: bool) -> Section:
    trials = 15 if quick else 200
    scenarios = [(1, False), (8, False), (32, False), (2, True), (8, True)]
    if quick:
        scenarios = [(2, False), (2, True)]
    rows = []
    data: dict[str, Any] = {}
    notes = []
    with RedisServer() as server:
        settings = private_settings(server)
        env = to_environment(settings)
        token = TokenIssuer(settings).issue("busy-user")
        # The worker in its own process, as deployed: not competing for this one's GIL.
        worker = start_worker_process(env)
        try:
            for processes, busy in scenarios:
                floor_each, ours_each, floor_all, ours_all = _trials(
                    settings, env, processes, busy=busy, trials=trials, token=token
                )
                label = f"{processes} {'busy' if busy else 'idle'}"
                data[label] = {"floor": floor_each, "ours": ours_each}
                for name, each, every in (
                    ("floor", floor_each, floor_all),
                    ("ours", ours_each, ours_all),
                ):
                    rows.append(
                        [
                            label,
                            name,
                            ms(percentile(each, 50)),
                            ms(percentile(each, 99)),
                            ms(max(each)),
                            ms(percentile(every, 50)),
                            ms(percentile(every, 99)),
                            len(each),
                        ]
                    )
                p50 = percentile(ours_each, 50) / percentile(floor_each, 50)
                p99 = percentile(ours_each, 99) / percentile(floor_each, 99)
                target = "p99 below the floor" if busy else "p50 and p99 at most 1.5x the floor"
                met = p99 < 1 if busy else (p50 <= 1.5 and p99 <= 1.5)
                notes.append(
                    f"{label}: ours/floor = {p50:.2f}x at p50, {p99:.2f}x at p99 "
                    f"(target: {target}: {'met' if met else '**not met**'})."
                )
        finally:
            worker.terminate()
            worker.wait(timeout=10)
    chart_files = _chart(data) if charts else []
    return Section(
        title="Propagation to app processes",
        intro=(
            f"{trials} trials per scenario, alternating floor and ours in the same processes. "
            "'each' is every (trial, process) latency; 'all' is per trial, until the last "
            "process had it. Floor: a bare redis-py subscriber thread receiving a direct "
            "PUBLISH, from just before PUBLISH. Ours: from `revoke()` returning (store commit, "
            "then the worker's wake-up, read and relay) to the revocation being applied."
        ),
        headers=[
            "processes",
            "path",
            "each p50",
            "each p99",
            "each max",
            "all p50",
            "all p99",
            "samples",
        ],
        rows=rows,
        notes=notes,
        charts=chart_files,
        data={k: {n: sorted(v)[:5] for n, v in d.items()} for k, d in data.items()},
    )


def _chart(data: dict[str, dict[str, list[float]]]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    labels = list(data)
    figure, axis = plt.subplots(figsize=(8, 4))
    for offset, (name, colour) in enumerate((("floor", "tab:gray"), ("ours", "tab:blue"))):
        for i, label in enumerate(labels):
            values = data[label][name]
            position = i * 3 + offset
            axis.bar(
                position,
                percentile(values, 50) * 1e3,
                color=colour,
                alpha=0.8,
                label=f"{name} p50" if i == 0 else None,
            )
            axis.errorbar(
                position,
                percentile(values, 99) * 1e3,
                fmt="_",
                color="black",
                markersize=12,
                label="p99" if i == 0 and offset == 0 else None,
            )
    axis.set_xticks([i * 3 + 0.5 for i in range(len(labels))], labels)
    axis.set_ylabel("ms")
    axis.set_title("Propagation: p50 bars, p99 marks")
    axis.legend()
    figure.tight_layout()
    figure.savefig(CHARTS / "propagation.png", dpi=110)
    plt.close(figure)
    return ["propagation.png"]
