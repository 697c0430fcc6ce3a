"""Throughput: revocations per second end to end, and the backlogs meanwhile.

One producer commits revocations as fast as it can with ``revoke_many``
(batches of 500, one round trip each); the worker (its own process) relays
them; 8 app processes, each with a client, apply them. The rate is counted
from the first commit to the moment the last client had applied the last
revocation. While it runs, the store's backlog (committed head minus the
relay cursor) and the channel's (the largest pub/sub output buffer Redis
holds for a subscriber, from CLIENT LIST) are sampled every 20 ms, and each
client reports how far behind the head it was.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from multiprocessing.connection import Connection

import redis

from benchmarks.common import Section, private_settings, start_worker_process, stop_children
from revocation import RevocationClient, Revoker, Settings
from revocation.redis_server import RedisServer
from revocation.settings import to_environment
from revocation.store import Store

BATCH = 500


def _child(env: dict[str, str], conn: Connection) -> None:
    os.environ.update(env)
    progress: list[tuple[float, int]] = []

    def on_applied(seq: int) -> None:
        progress.append((time.monotonic(), seq))

    client = RevocationClient(Settings(), on_applied=on_applied).start()
    conn.send(("ready", client.wait_synced(30)))
    conn.recv()  # "report"
    conn.send(progress)
    conn.recv()  # "stop"
    client.close()


class Sampler(threading.Thread):
    """Samples the store's and the channel's backlog until stopped."""

    def __init__(self, store: Store) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stopped = threading.Event()
        self.samples: list[tuple[float, int, int]] = []

    def run(self) -> None:
        client = self.store.client
        while not self.stopped.wait(0.02):
            head, relayed = client.mget(self.store.keys.seq, self.store.keys.relayed)
            subscribers = client.client_list(_type="pubsub")
            buffered = max((int(c.get("omem", 0)) for c in subscribers), default=0)
            self.samples.append((time.monotonic(), int(head or 0) - int(relayed or 0), buffered))


def run(quick: bool, charts: bool) -> Section:
    total = 5_000 if quick else 100_000
    clients = 2 if quick else 8
    with RedisServer() as server:
        settings = private_settings(server)
        env = to_environment(settings)
        worker = start_worker_process(env)
        context = multiprocessing.get_context("spawn")
        children = []
        try:
            for _ in range(clients):
                parent, child = context.Pipe()
                process = context.Process(target=_child, args=(env, child), daemon=True)
                process.start()
                children.append((process, parent))
            for _, conn in children:
                if not conn.poll(60) or not conn.recv()[1]:
                    raise RuntimeError("an app process did not sync")
            store = Store(redis.Redis.from_url(server.url), settings.namespace)
            sampler = Sampler(store)
            sampler.start()
            with Revoker(settings) as revoker:
                started = time.monotonic()
                committed = 0
                while committed < total:
                    size = min(BATCH, total - committed)
                    revoker.revoke_many(
                        [{"jti": f"t-{committed + i}-{uuid.uuid4().hex}"} for i in range(size)]
                    )
                    committed += size
                commit_done = time.monotonic()
            deadline = time.monotonic() + 120
            reports: list[list[tuple[float, int]]] = []
            while time.monotonic() < deadline:
                time.sleep(0.05)
                head = store.head()
                if head >= total:
                    break
            time.sleep(0.5)
            for _, conn in children:
                conn.send("report")
                reports.append(conn.recv())
            sampler.stopped.set()
            sampler.join()
            store.client.close()
        finally:
            stop_children(children)
            worker.terminate()
            worker.wait(timeout=10)
    finished = [next((t for t, seq in report if seq >= total), None) for report in reports]
    if any(t is None for t in finished):
        raise RuntimeError("a client never applied every revocation")
    end = max(t for t in finished if t is not None)
    commit_rate = total / (commit_done - started)
    end_to_end = total / (end - started)
    lags = []
    for report in reports:
        # How far behind the producer each client was: committed count at time t is
        # interpolated from the commit rate; lag = committed - applied.
        worst = 0.0
        for t, seq in report:
            committed_then = min(total, (t - started) * commit_rate)
            worst = max(worst, committed_then - seq)
        lags.append(worst)
    store_backlog = max((s[1] for s in sampler.samples), default=0)
    channel_backlog = max((s[2] for s in sampler.samples), default=0)
    rows = [
        ["revocations committed", f"{total:,}"],
        ["commit rate (revoke_many, batches of 500)", f"{commit_rate:,.0f} /s"],
        [f"end to end, until all {clients} clients applied the last", f"{end_to_end:,.0f} /s"],
        ["last client done after the last commit", f"{(end - commit_done) * 1000:.0f} ms"],
        ["largest client lag behind the producer", f"{max(lags):,.0f} revocations"],
        ["largest store backlog (head - relayed)", f"{store_backlog:,}"],
        ["largest pub/sub output buffer of a subscriber", f"{channel_backlog / 1024:,.0f} KiB"],
    ]
    met = "met" if end_to_end >= 10_000 else "NOT met"
    return Section(
        title="Throughput",
        intro=(
            f"One producer, the worker in its own process, {clients} app processes; "
            "all on this 2-core machine with Redis."
        ),
        headers=["what", "figure"],
        rows=rows,
        notes=[f"Target: >= 10,000 revocations/s end to end with 8 clients keeping up: {met}."],
        data={
            "commit_rate": commit_rate,
            "end_to_end": end_to_end,
            "lags": lags,
            "store_backlog": store_backlog,
            "channel_backlog": channel_backlog,
        },
    )
