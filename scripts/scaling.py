"""Capacity model of the revocation bus: how many revocations/s a Redis deployment fans out.

    python scripts/scaling.py                   # the tables of docs/scaling.md
    python scripts/scaling.py --check           # the model against the measured points
    python scripts/scaling.py --target 0.7 --heartbeat-interval 1 --rate 500
    python scripts/scaling.py --b 1.2 --cpu-scale 0.6   # override constants (µs, bytes)

The constants come from docs/benchmarks/fanout.json (``python benchmarks/run.py
--only fanout``); every one can be overridden on the command line. Model, per
Redis node, as a share of one core (Redis serves commands on one thread):

    utilisation = λ·(per-revocation cost) + (W/h)·(per-heartbeat cost) + (S/p)·(per presence write)

with λ revocations/s, W workers each sending a heartbeat every h seconds, and S
app processes each reporting its presence every p seconds (to the primary). A
fan-out to S subscribers on a node costs a + b·S up to the knee (the second
largest subscriber count measured) and b2 per subscriber beyond it, b2 being
the slope measured between the two largest counts (``--linear``: the single
least-squares line). The capacity is the largest λ that keeps every node at or
under the target utilisation. The delay is simulated: Poisson revocations, each
a job of the node's per-revocation cost on a single-server FIFO queue (the
primary, then the replica that serves the subscriber), heartbeats and presence
writes in the same queues, the k-th subscriber served a + b·k into its fan-out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "benchmarks" / "fanout.json"
US = 1e-6
MAX_HORIZON = 3600.0
"""Seconds of traffic simulated at most (low rates then have fewer revocations)."""
PRESENCE_SLOT = 0.01
"""Seconds of presence writes the simulation serves as one job."""
SUBSCRIBERS_PER_EVENT = 10


@dataclass(frozen=True)
class Constants:
    """Measured costs: CPU in seconds (µs on the command line), sizes in bytes."""

    a: float = field(metadata={"doc": "PUBLISH of a revocation frame: per frame"})
    b: float = field(metadata={"doc": "... per subscriber, up to the knee"})
    a_hb: float = field(metadata={"doc": "PUBLISH of a heartbeat: per frame"})
    b_hb: float = field(metadata={"doc": "... per subscriber, up to the knee"})
    a_s: float = field(metadata={"doc": "SPUBLISH (cluster) of a revocation frame: per frame"})
    b_s: float = field(metadata={"doc": "... per subscriber, up to the knee"})
    a_s_hb: float = field(metadata={"doc": "SPUBLISH of a heartbeat: per frame"})
    b_s_hb: float = field(metadata={"doc": "... per subscriber, up to the knee"})
    a_r: float = field(
        metadata={"doc": "replica, fan-out of a replicated revocation frame: per frame"}
    )
    b_r: float = field(metadata={"doc": "... per subscriber, up to the knee"})
    a_r_hb: float = field(metadata={"doc": "replica, fan-out of a replicated heartbeat: per frame"})
    b_r_hb: float = field(metadata={"doc": "... per subscriber, up to the knee"})
    publish0: float = field(metadata={"doc": "primary: a PUBLISH nobody subscribes to"})
    replica0: float = field(metadata={"doc": "replica: applying a PUBLISH nobody subscribes to"})
    repl: float = field(metadata={"doc": "primary: each replica, per replicated PUBLISH"})
    store: float = field(
        metadata={"doc": "primary: commit, wake and relay of one revocation, beyond its PUBLISH"}
    )
    store_repl: float = field(
        metadata={"doc": "primary: each replica, per revocation (its store writes and PUBLISH)"}
    )
    store_replica: float = field(
        metadata={"doc": "replica: applying one revocation's store writes, beyond the PUBLISH"}
    )
    pending: float = field(
        metadata={"doc": "primary: the worker's pending-records script, once per heartbeat"}
    )
    presence: float = field(metadata={"doc": "primary: one presence report (TIME, then HSET)"})
    presence_repl: float = field(metadata={"doc": "primary: each replica, per presence report"})
    presence_replica: float = field(metadata={"doc": "replica: applying one presence report"})
    client_event: float = field(
        metadata={"doc": "app process: one revocation applied, alone in its frame"}
    )
    client_event_batched: float = field(
        metadata={"doc": "app process: one revocation applied, in a frame of 100"}
    )
    client_heartbeat: float = field(metadata={"doc": "app process: one heartbeat"})
    wire_event: int = field(
        metadata={"doc": "bytes a subscriber receives per revocation frame (RESP)"}
    )
    wire_hb: int = field(metadata={"doc": "bytes a subscriber receives per heartbeat (RESP)"})
    repl_event: int = field(
        metadata={"doc": "replication stream per revocation (store writes and PUBLISH)"}
    )
    repl_hb: int = field(metadata={"doc": "replication stream per heartbeat"})
    repl_presence: int = field(metadata={"doc": "replication stream per presence report"})
    packet_overhead: int = field(
        metadata={"doc": "Ethernet, IPv4 and TCP headers per message delivered (assumed)"}
    )
    connection_memory: float = field(
        metadata={"doc": "Redis memory per idle subscriber connection"}
    )
    a_batch: float = field(
        metadata={"doc": "PUBLISH of a frame of --batch-events revocations: per frame"}
    )
    b_batch: float = field(metadata={"doc": "... per subscriber (measured up to the knee)"})
    batch_events: int = field(metadata={"doc": "revocations in that frame"})
    knee: int = field(metadata={"doc": "subscribers beyond which each one costs b2 instead of b"})
    b2: float = field(
        metadata={"doc": "PUBLISH of a revocation frame: per subscriber beyond the knee"}
    )
    b2_hb: float = field(metadata={"doc": "PUBLISH of a heartbeat: per subscriber beyond the knee"})
    b2_s: float = field(
        metadata={"doc": "SPUBLISH of a revocation frame: per subscriber beyond the knee"}
    )
    b2_s_hb: float = field(
        metadata={"doc": "SPUBLISH of a heartbeat: per subscriber beyond the knee"}
    )
    b2_r: float = field(
        metadata={"doc": "replica, revocation frame: per subscriber beyond the knee"}
    )
    b2_r_hb: float = field(metadata={"doc": "replica, heartbeat: per subscriber beyond the knee"})


BYTE_FIELDS = {
    "wire_event",
    "wire_hb",
    "repl_event",
    "repl_hb",
    "repl_presence",
    "packet_overhead",
    "connection_memory",
}
COUNT_FIELDS = {"batch_events", "knee"}


def line(a: float, b: float, b2: float, knee: float, subscribers: float) -> float:
    """a + b·S up to the knee, then b2 per subscriber beyond it."""
    return a + b * min(subscribers, knee) + b2 * max(0.0, subscribers - knee)


def _marginal(result: dict[str, Any], node: str, kind: str, fitted: float) -> float:
    """Slope between the two largest subscriber counts measured (at least the fit's)."""
    points = sorted(result["points"], key=lambda p: p["subscribers"])[-2:]
    (s1, c1), (s2, c2) = [(p["subscribers"], p[kind][node]) for p in points]
    return max(fitted, float(c2 - c1) / float(s2 - s1))


def load(path: Path) -> tuple[Constants, dict[str, Any], str]:
    """The constants, the raw figures and the machine line of the last full fan-out run."""
    stored = json.loads(path.read_text())
    data = stored["section"]["data"]
    pub, spub, rep = data["publish"]["fit"], data["spublish"]["fit"], data["replica"]["fit"]
    bare = data["replica"]["bare_publish_by_replicas"]
    store = data["replica"]["store_path"]
    presence = data["replica"]["presence"]
    client = data["client"]
    frames = data["frames"]
    hb_shorter = frames["event_bytes"] - frames["heartbeat_bytes"]
    constants = Constants(
        a=pub["event"]["a"],
        b=pub["event"]["b"],
        a_hb=pub["heartbeat"]["a"],
        b_hb=pub["heartbeat"]["b"],
        a_s=spub["event"]["a"],
        b_s=spub["event"]["b"],
        a_s_hb=spub["heartbeat"]["a"],
        b_s_hb=spub["heartbeat"]["b"],
        a_r=rep["event"]["a"],
        b_r=rep["event"]["b"],
        a_r_hb=rep["heartbeat"]["a"],
        b_r_hb=rep["heartbeat"]["b"],
        publish0=bare["0"]["primary"],
        replica0=bare["1"]["replica"],
        repl=max(0.0, data["replica"]["replication_per_replica"]),
        store=max(0.0, store["0"]["primary"] - bare["0"]["primary"]),
        store_repl=max(0.0, store["1"]["primary"] - store["0"]["primary"]),
        store_replica=max(0.0, store["1"]["replica"] - bare["1"]["replica"]),
        pending=store["0"]["pending_script"],
        presence=presence["0"]["primary"],
        presence_repl=max(0.0, presence["1"]["primary"] - presence["0"]["primary"]),
        presence_replica=presence["1"]["replica"],
        client_event=client["per_event_single"],
        client_event_batched=client["per_event_batched"],
        client_heartbeat=client["per_heartbeat"],
        wire_event=frames["event_wire"],
        wire_hb=frames["heartbeat_wire"],
        repl_event=round(store["1"]["repl_bytes"]),
        repl_hb=round(bare["1"]["repl_bytes"] - hb_shorter),
        repl_presence=round(presence["1"]["repl_bytes"]),
        packet_overhead=66,
        connection_memory=data["memory"].get("per_subscriber", 0.0),
        a_batch=data["publish_batch"]["fit"]["batch"]["a"],
        b_batch=data["publish_batch"]["fit"]["batch"]["b"],
        batch_events=frames["batch_events"],
        knee=sorted(data["subscriber_counts"])[-2],
        b2=_marginal(data["publish"], "primary", "event", pub["event"]["b"]),
        b2_hb=_marginal(data["publish"], "primary", "heartbeat", pub["heartbeat"]["b"]),
        b2_s=_marginal(data["spublish"], "primary", "event", spub["event"]["b"]),
        b2_s_hb=_marginal(data["spublish"], "primary", "heartbeat", spub["heartbeat"]["b"]),
        b2_r=_marginal(data["replica"], "replica", "event", rep["event"]["b"]),
        b2_r_hb=_marginal(data["replica"], "replica", "heartbeat", rep["heartbeat"]["b"]),
    )
    return constants, data, stored["machine"]


def straight(c: Constants) -> Constants:
    """The single least-squares line over every subscriber count (no knee)."""
    return replace(
        c, b2=c.b, b2_hb=c.b_hb, b2_s=c.b_s, b2_s_hb=c.b_s_hb, b2_r=c.b_r, b2_r_hb=c.b_r_hb
    )


# -- the model --------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What one Redis node does: utilisation = rate·per_event + fixed."""

    name: str
    subscribers: int
    per_event: float  # CPU seconds per revocation
    fixed: float  # CPU seconds per second, whatever the revocation rate
    bytes_per_event: float  # egress per revocation
    bytes_fixed: float  # egress per second, whatever the revocation rate
    offset: float  # from the start of a revocation's job to its first delivery, minus b
    b: float  # per subscriber within the fan-out, up to the knee
    b2: float  # per subscriber beyond the knee
    knee: float
    heartbeat_job: float  # CPU seconds of one heartbeat on this node
    presence_job: float  # CPU seconds of one presence write (or its replication) here

    def utilisation(self, rate: float) -> float:
        return rate * self.per_event + self.fixed

    def capacity(self, target: float) -> float:
        return max(0.0, (target - self.fixed) / self.per_event)

    def position(self, k: np.ndarray | int) -> np.ndarray:
        """CPU from the first subscriber's delivery to the k-th's."""
        return np.asarray(
            self.b * np.minimum(k, self.knee) + self.b2 * np.maximum(0, np.subtract(k, self.knee))
        )


@dataclass(frozen=True)
class Options:
    heartbeat_interval: float
    presence_interval: float
    workers: int
    target: float
    rate: float
    confirmed: float = 0.0  # share of revocations made with revoke(wait=...)
    sharded: bool = False


def fanout(c: Constants, subscribers: int, *, sharded: bool, heartbeat: bool) -> float:
    """CPU of one PUBLISH (SPUBLISH when sharded) to ``subscribers`` on the primary."""
    if subscribers == 0:
        return c.publish0
    if sharded:
        a, b, b2 = (c.a_s_hb, c.b_s_hb, c.b2_s_hb) if heartbeat else (c.a_s, c.b_s, c.b2_s)
    else:
        a, b, b2 = (c.a_hb, c.b_hb, c.b2_hb) if heartbeat else (c.a, c.b, c.b2)
    return line(a, b, b2, c.knee, subscribers)


def nodes(c: Constants, processes: int, replicas: int, o: Options) -> list[Load]:
    """The primary and one replica (they all carry the same share) of a topology."""
    beats = o.workers / o.heartbeat_interval
    writes = processes / o.presence_interval
    wire = c.wire_event + c.packet_overhead
    wire_hb = c.wire_hb + c.packet_overhead
    on_primary = processes if replicas == 0 else 0
    a, b, b2 = (c.a_s, c.b_s, c.b2_s) if o.sharded else (c.a, c.b, c.b2)
    heartbeat = (
        c.pending + fanout(c, on_primary, sharded=o.sharded, heartbeat=True) + replicas * c.repl
    )
    presence = c.presence + replicas * c.presence_repl
    # revoke(wait=...): every live client reports its presence at once on applying it.
    confirmations = o.confirmed * processes
    primary = Load(
        name="primary",
        subscribers=on_primary,
        per_event=c.store
        + fanout(c, on_primary, sharded=o.sharded, heartbeat=False)
        + replicas * c.store_repl
        + confirmations * presence,
        fixed=beats * heartbeat + writes * presence,
        bytes_per_event=on_primary * wire + replicas * c.repl_event,
        bytes_fixed=beats * (on_primary * wire_hb + replicas * c.repl_hb)
        + writes * replicas * c.repl_presence,
        offset=c.store + a,
        b=b,
        b2=b2,
        knee=c.knee,
        heartbeat_job=heartbeat,
        presence_job=presence,
    )
    if replicas == 0:
        return [primary]
    share = math.ceil(processes / replicas)
    replica_heartbeat = line(c.a_r_hb, c.b_r_hb, c.b2_r_hb, c.knee, share) if share else c.replica0
    replica = Load(
        name="replica",
        subscribers=share,
        per_event=c.store_replica
        + line(c.a_r, c.b_r, c.b2_r, c.knee, share)
        + confirmations * c.presence_replica,
        fixed=beats * replica_heartbeat + writes * c.presence_replica,
        bytes_per_event=share * wire,
        bytes_fixed=beats * share * wire_hb,
        offset=c.store_replica + c.a_r,
        b=c.b_r,
        b2=c.b2_r,
        knee=c.knee,
        heartbeat_job=replica_heartbeat,
        presence_job=c.presence_replica,
    )
    return [primary, replica]


def capacity(loads: list[Load], target: float) -> tuple[float, str]:
    """The largest revocation rate keeping every node at or under ``target``, and the node."""
    best = min(loads, key=lambda load: load.capacity(target))
    return best.capacity(target), best.name


def client_share(c: Constants, rate: float, o: Options) -> float:
    """One app process's CPU share (of a core) for applying ``rate`` revocations/s."""
    return rate * c.client_event + o.workers / o.heartbeat_interval * c.client_heartbeat


# -- the delay simulation ---------------------------------------------------------------


def _queue(arrivals: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Start times of FIFO jobs on one server (arrivals sorted): a vectorised Lindley."""
    done = np.cumsum(service)
    before = done - service  # work of earlier jobs
    departures = done + np.maximum.accumulate(arrivals - before)
    starts: np.ndarray = departures - service
    return starts


def _jobs(
    rng: np.random.Generator,
    *,
    rate: float,
    horizon: float,
    period: float,
    presence_rate: float,
    event_job: float,
    heartbeat_job: float,
    presence_job: float,
    event_times: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged arrivals, services and an index of the revocation jobs, sorted by time."""
    if event_times is None:
        event_times = np.cumsum(rng.exponential(1 / rate, size=int(rate * horizon * 1.2) + 10))
        event_times = event_times[event_times < horizon]
    beats = np.arange(rng.uniform(0, period), horizon, period)
    # Presence writes are small and many: those of each PRESENCE_SLOT are one job.
    slots = np.arange(0.0, horizon, PRESENCE_SLOT) + rng.uniform(0, PRESENCE_SLOT)
    counts = rng.poisson(presence_rate * PRESENCE_SLOT, size=slots.size)
    writes, counts = slots[counts > 0], counts[counts > 0]
    arrivals = np.concatenate([event_times, beats, writes])
    service = np.concatenate(
        [
            np.full(event_times.size, event_job),
            np.full(beats.size, heartbeat_job),
            counts * presence_job,
        ]
    )
    kind = np.concatenate(
        [np.arange(event_times.size), np.full(beats.size + writes.size, -1)]
    )  # revocation jobs carry their index, others -1
    order = np.argsort(arrivals, kind="stable")
    return arrivals[order], service[order], kind[order]


def simulate(
    loads: list[Load], rate: float, o: Options, *, processes: int, events: int, seed: int
) -> dict[str, float] | None:
    """Delay from a revocation reaching the primary to each subscriber's delivery.

    ``None`` when a node is saturated (utilisation >= 1). Percentiles over
    (revocation, subscriber) pairs, SUBSCRIBERS_PER_EVENT random subscribers per
    revocation, and over revocations for the last subscriber; the first 10% of
    the simulated time is warm-up. At most MAX_HORIZON seconds are simulated.
    """
    if any(load.utilisation(rate) >= 1 for load in loads):
        return None
    rng = np.random.default_rng(seed)
    horizon = min(events / rate, MAX_HORIZON)
    period = o.heartbeat_interval / o.workers
    presence_rate = processes / o.presence_interval
    primary = loads[0]
    arrivals, service, kind = _jobs(
        rng,
        rate=rate,
        horizon=horizon,
        period=period,
        presence_rate=presence_rate,
        event_job=primary.per_event,
        heartbeat_job=primary.heartbeat_job,
        presence_job=primary.presence_job,
    )
    starts = _queue(arrivals, service)
    mask = kind >= 0
    event_arrival = arrivals[mask]
    server = primary
    first = starts[mask] + primary.offset
    if len(loads) > 1:
        server = loads[1]
        # A replica gets a revocation once the primary has served it (replication).
        r_arrivals, r_service, r_kind = _jobs(
            rng,
            rate=rate,
            horizon=horizon,
            period=period,
            presence_rate=presence_rate,
            event_job=server.per_event,
            heartbeat_job=server.heartbeat_job,
            presence_job=server.presence_job,
            event_times=(starts + service)[mask],
        )
        r_starts = _queue(r_arrivals, r_service)
        r_mask = r_kind >= 0
        first = np.empty(event_arrival.size)
        first[r_kind[r_mask]] = r_starts[r_mask] + server.offset
    keep = slice(event_arrival.size // 10, None)
    base = (first - event_arrival)[keep]
    k = rng.integers(1, server.subscribers + 1, size=(SUBSCRIBERS_PER_EVENT, base.size))
    each = base + server.position(k)
    last = base + server.position(server.subscribers)
    return {
        "p50": float(np.percentile(each, 50)),
        "p99": float(np.percentile(each, 99)),
        "p99_last": float(np.percentile(last, 99)),
    }


# -- output -----------------------------------------------------------------------------


def _rate(value: float) -> str:
    if value <= 0:
        return "none"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.1 else f"{seconds * 1e3:,.0f} ms"


def _mbytes(per_second: float) -> str:
    return f"{per_second / 1e6:,.1f} MB/s"


def _share(value: float) -> str:
    return f"{value * 100:.2f}%" if value < 0.01 else f"{value * 100:.1f}%"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _topology(replicas: int) -> str:
    return "1 primary" if replicas == 0 else f"primary + {replicas} replicas"


def capacity_table(
    c: Constants,
    o: Options,
    processes: list[int],
    topologies: list[int],
    *,
    events: int,
    seed: int,
) -> str:
    rows = []
    for count in processes:
        for replicas in topologies:
            loads = nodes(c, count, replicas, o)
            best, bottleneck = capacity(loads, o.target)
            busiest = max(load.utilisation(o.rate) for load in loads)
            delay = simulate(loads, o.rate, o, processes=count, events=events, seed=seed)
            egress = " / ".join(
                _mbytes(o.rate * load.bytes_per_event + load.bytes_fixed) for load in loads
            )
            rows.append(
                [
                    f"{count:,}",
                    _topology(replicas),
                    _rate(best),
                    bottleneck,
                    _share(busiest) if busiest < 1 else f"{busiest:,.0%} (saturated)",
                    "saturated" if delay is None else _ms(delay["p99"]),
                    "saturated" if delay is None else _ms(delay["p99_last"]),
                    egress,
                    _share(client_share(c, o.rate, o)),
                ]
            )
    rate = f"{o.rate:,.0f}/s"
    return _table(
        [
            "app processes",
            "topology",
            f"max revocations/s at {o.target:.0%} CPU",
            "limited by",
            f"busiest node's CPU at {rate}",
            f"p99 delay at {rate}",
            f"p99 delay, last subscriber, at {rate}",
            f"egress at {rate}: primary / each replica",
            f"client CPU per process at {rate}",
        ],
        rows,
    )


def cluster_table(c: Constants, o: Options, processes: list[int]) -> str:
    sharded = replace(o, sharded=True)
    rows = []
    for count in processes:
        one, _ = capacity(nodes(c, count, 0, sharded), o.target)
        plain, _ = capacity(nodes(c, count, 0, o), o.target)
        rows.append([f"{count:,}", _rate(one), _rate(plain)])
    return _table(
        [
            "app processes of the deployment",
            f"SPUBLISH, shard master alone: max revocations/s at {o.target:.0%}",
            "PUBLISH, standalone primary (for comparison)",
        ],
        rows,
    )


def delay_table(
    c: Constants,
    o: Options,
    processes: list[int],
    topologies: list[int],
    *,
    events: int,
    seed: int,
) -> str:
    rows = []
    for count in processes:
        for replicas in topologies:
            loads = nodes(c, count, replicas, o)
            best, _ = capacity(loads, o.target)
            cells = [f"{count:,}", _topology(replicas)]
            for rate in (0.1 * best, 0.5 * best, best, 1.5 * best):
                delay = (
                    simulate(loads, rate, o, processes=count, events=events, seed=seed)
                    if rate > 0
                    else None
                )
                cells.append(
                    "saturated" if delay is None else f"{_ms(delay['p50'])} / {_ms(delay['p99'])}"
                )
            rows.append(cells)
    share = f"{o.target:.0%}"
    return _table(
        [
            "app processes",
            "topology",
            "rate = 10% of the capacity: p50 / p99",
            "50% of it",
            f"100% (busiest node at {share} CPU)",
            "150%",
        ],
        rows,
    )


def heartbeat_table(c: Constants, o: Options, processes: int, topologies: list[int]) -> str:
    rows = []
    for interval in (0.1, 0.25, 0.5, 1.0, 2.0):
        opts = replace(o, heartbeat_interval=interval, rate=0.0)
        cells = [f"{interval:g} s"]
        for replicas in topologies:
            loads = nodes(c, processes, replicas, opts)
            beats = opts.workers / interval
            cells.append(" / ".join(_share(beats * load.heartbeat_job) for load in loads))
        cells.append(_share(client_share(c, 0.0, opts)))
        rows.append(cells)
    return _table(
        ["heartbeat_interval"]
        + [f"{_topology(r)}: Redis CPU (primary / replica)" for r in topologies]
        + ["client CPU per process"],
        rows,
    )


def batching_table(c: Constants, processes: list[int], target: float) -> str:
    """Fan-out per revocation when revocations travel one per frame or batch_events per frame."""
    rows = []
    k = c.batch_events
    rise = c.b2 / c.b  # the batch series stops at the knee: assume the same rise beyond
    for count in processes:
        single = fanout(c, count, sharded=False, heartbeat=False)
        batched = line(c.a_batch, c.b_batch, c.b_batch * rise, c.knee, count) / k
        rows.append(
            [
                f"{count:,}",
                f"{single / US:,.0f} µs",
                f"{batched / US:,.1f} µs",
                f"{single / batched:,.0f}x",
                _rate(target / single),
                _rate(target / batched),
            ]
        )
    return _table(
        [
            "subscribers on the node",
            "fan-out per revocation, 1 per frame",
            f"{k} per frame",
            "ratio",
            f"revocations/s at {target:.0%}, fan-out alone: 1 per frame",
            f"{k} per frame",
        ],
        rows,
    )


def confirmed_table(c: Constants, processes: list[int], topologies: list[int]) -> str:
    """What one revoke(wait=...) adds on the primary: a presence write from every client."""
    rows = []
    for count in processes:
        cells = [f"{count:,}"]
        for replicas in topologies:
            cells.append(f"{count * (c.presence + replicas * c.presence_repl) * 1e3:,.1f} ms")
        rows.append(cells)
    return _table(["app processes"] + [f"{_topology(r)}" for r in topologies], rows)


def replicas_needed(
    c: Constants, processes: int, rate: float, o: Options, *, most: int = 64
) -> int | None:
    """The fewest replicas that carry ``rate`` at the target, or None (not with ``most``)."""
    for replicas in range(most + 1):
        if capacity(nodes(c, processes, replicas, o), o.target)[0] >= rate:
            return replicas
    return None


def replicas_table(c: Constants, o: Options, processes: list[int], rates: list[float]) -> str:
    rows = []
    for count in processes:
        cells = [f"{count:,}"]
        for rate in rates:
            needed = replicas_needed(c, count, rate, o)
            cells.append("none up to 64" if needed is None else f"{needed}")
        rows.append(cells)
    return _table(["app processes"] + [f"{rate:,.0f} revocations/s" for rate in rates], rows)


def memory_table(c: Constants, processes: list[int]) -> str:
    rows = []
    for count in processes:
        rows.append(
            [
                f"{count:,}",
                f"{count * c.connection_memory / 2**20:,.0f} MiB",
                f"{count * 32:,} MiB",
                f"{count * 8:,} MiB",
                f"{count:,} MiB",
            ]
        )
    return _table(
        [
            "subscribers on a node",
            "connections, idle (measured)",
            "worst case, default hard limit 32 MB",
            "soft limit 8 MB",
            "with a 1 MB hard limit",
        ],
        rows,
    )


def constants_table(c: Constants) -> str:
    rows = []
    for f in fields(c):
        value = getattr(c, f.name)
        if f.name in BYTE_FIELDS:
            shown = f"{value:,.0f} B"
        elif f.name in COUNT_FIELDS:
            shown = f"{value:,}"
        else:
            shown = f"{value / US:,.2f} µs"
        rows.append([f"`--{f.name.replace('_', '-')}`", shown, f.metadata["doc"]])
    return _table(["constant", "value", "what"], rows)


# -- the check ------------------------------------------------------------------------


def _error(predicted: float, measured: float) -> tuple[float, str]:
    error = predicted / measured - 1
    return error, f"{error * 100:+.1f}%"


def check(c: Constants, data: dict[str, Any]) -> tuple[str, float, float, float]:
    """Each measured point against the model.

    Returns the table, the largest |error| over the fan-out points of the model (the
    line, then b2 beyond the knee) and of the single straight line, and the largest
    over the other rows (the replica's primary, the mixed run, the store path).
    """
    series = [
        ("PUBLISH, revocation", data["publish"], "primary", "event", c.a, c.b, c.b2),
        ("PUBLISH, heartbeat", data["publish"], "primary", "heartbeat", c.a_hb, c.b_hb, c.b2_hb),
        ("SPUBLISH, revocation", data["spublish"], "primary", "event", c.a_s, c.b_s, c.b2_s),
        (
            "SPUBLISH, heartbeat",
            data["spublish"],
            "primary",
            "heartbeat",
            c.a_s_hb,
            c.b_s_hb,
            c.b2_s_hb,
        ),
        ("replica, revocation", data["replica"], "replica", "event", c.a_r, c.b_r, c.b2_r),
        (
            "replica, heartbeat",
            data["replica"],
            "replica",
            "heartbeat",
            c.a_r_hb,
            c.b_r_hb,
            c.b2_r_hb,
        ),
        (
            f"PUBLISH, frame of {c.batch_events} revocations",
            data["publish_batch"],
            "primary",
            "batch",
            c.a_batch,
            c.b_batch,
            c.b_batch,
        ),
    ]
    rows = []
    worst = worst_line = 0.0
    for name, result, node, kind, a, b, b2 in series:
        for point in result["points"]:
            count = point["subscribers"]
            measured = point[kind][node]
            straight_line = a + b * count
            model = line(a, b, b2, c.knee, count)
            line_error, line_text = _error(straight_line, measured)
            error, text = _error(model, measured)
            worst = max(worst, abs(error))
            worst_line = max(worst_line, abs(line_error))
            rows.append(
                [
                    name,
                    f"{count:,}",
                    f"{measured / US:,.1f} µs",
                    f"{straight_line / US:,.1f} µs",
                    line_text,
                    f"{model / US:,.1f} µs",
                    text,
                ]
            )

    worst_other = 0.0

    def single(name: str, count: str, measured: float, model: float, unit: str) -> None:
        nonlocal worst_other
        scale = 1e3 if unit == "ms" else 1 / US
        error, text = _error(model, measured)
        worst_other = max(worst_other, abs(error))
        shown = f"{model * scale:,.1f} {unit}"
        rows.append([name, count, f"{measured * scale:,.1f} {unit}", shown, text, shown, text])

    # The replica's primary: flat in S (it replicates, the replica fans out).
    for point in data["replica"]["points"]:
        single(
            "primary of the replica, revocation",
            f"{point['subscribers']:,} on the replica",
            point["event"]["primary"],
            c.publish0 + c.repl,
            "µs",
        )
    # Out of sample: the mixed run, and the store path seen from the client run.
    mixed = data["mixed"]
    count = mixed["subscribers"]
    single(
        f"mixed: {mixed['events']:,} revocations, {mixed['heartbeats']} heartbeats, "
        f"{mixed['presence_writes']} presence writes",
        f"{count:,}",
        mixed["cpu"],
        mixed["events"] * fanout(c, count, sharded=False, heartbeat=False)
        + mixed["heartbeats"] * fanout(c, count, sharded=False, heartbeat=True)
        + mixed["presence_writes"] * c.presence,
        "ms",
    )
    single(
        "store path + fan-out, real worker and client",
        "1",
        data["client"]["redis_per_revocation_single"],
        c.store + c.a + c.b,
        "µs",
    )
    table = _table(
        [
            "series",
            "subscribers",
            "measured",
            "straight line",
            "error",
            f"model (b2 beyond {c.knee:,})",
            "error",
        ],
        rows,
    )
    return table, worst, worst_line, worst_other


# -- the command line --------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measured", type=Path, default=MEASURED, help="the fan-out JSON")
    parser.add_argument("--check", action="store_true", help="model against measured points")
    parser.add_argument("--target", type=float, default=0.5, help="CPU share per node (0-1)")
    parser.add_argument("--rate", type=float, default=1000.0, help="revocations/s for delays")
    parser.add_argument("--heartbeat-interval", type=float, default=0.5, help="seconds")
    parser.add_argument("--presence-interval", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--workers", type=int, default=2, help="publisher workers (docs/operations.md: 2)"
    )
    parser.add_argument(
        "--confirmed",
        type=float,
        default=0.0,
        help="share of revocations made with revoke(wait=...) (0-1): each makes every "
        "live client write its presence at once",
    )
    parser.add_argument(
        "--processes", type=_ints, default=[100, 1000, 3000, 10000], help="e.g. 100,1000"
    )
    parser.add_argument("--replicas", type=_ints, default=[0, 2, 4], help="e.g. 0,2,4")
    parser.add_argument(
        "--cpu-scale",
        type=float,
        default=1.0,
        help="multiply every CPU cost (0.5: cores twice as fast as the measuring machine)",
    )
    parser.add_argument(
        "--linear",
        action="store_true",
        help="one straight line a + b·S over every subscriber count (no knee)",
    )
    parser.add_argument("--events", type=int, default=20_000, help="simulated revocations")
    parser.add_argument("--seed", type=int, default=1)
    for f in fields(Constants):
        unit = "bytes" if f.name in BYTE_FIELDS else "count" if f.name in COUNT_FIELDS else "µs"
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=float,
            default=None,
            help=f"{f.metadata['doc']} ({unit})",
        )
    return parser.parse_args(argv)


def constants_from(args: argparse.Namespace, measured: Constants) -> Constants:
    changes: dict[str, Any] = {}
    for f in fields(Constants):
        value = getattr(args, f.name)
        cpu = f.name not in BYTE_FIELDS | COUNT_FIELDS
        if value is None:
            value = getattr(measured, f.name)
        elif cpu:
            value = value * US
        if cpu:
            value = value * args.cpu_scale
        elif f.name != "connection_memory":
            value = round(value)
        changes[f.name] = value
    return replace(measured, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.measured.exists():
        print(f"{args.measured} not found: run python benchmarks/run.py --only fanout")
        return 2
    measured, data, machine = load(args.measured)
    c = constants_from(args, straight(measured) if args.linear else measured)
    options = Options(
        heartbeat_interval=args.heartbeat_interval,
        presence_interval=args.presence_interval,
        workers=args.workers,
        target=args.target,
        rate=args.rate,
        confirmed=args.confirmed,
    )
    print(f"Measured: {machine}.")
    if args.check:
        table, worst, worst_line, worst_other = check(measured, data)
        print()
        print(table)
        print()
        print(
            f"Fan-out points, largest relative error: {worst * 100:.1f}% for the model, "
            f"{worst_line * 100:.1f}% for the straight lines; the other rows: "
            f"{worst_other * 100:.1f}%."
        )
        return 0
    print()
    print(constants_table(c))
    print()
    print(
        f"Capacity: target {options.target:.0%} of one core per node, heartbeat every "
        f"{options.heartbeat_interval:g} s from {options.workers} worker(s), presence every "
        f"{options.presence_interval:g} s, {options.confirmed:.0%} of revocations confirmed "
        f"with revoke(wait=); delays simulated over at most {args.events:,} revocations "
        f"({MAX_HORIZON:g} s of traffic)."
    )
    print()
    print(
        capacity_table(
            c, options, args.processes, args.replicas, events=args.events, seed=args.seed
        )
    )
    print()
    print("Delay added by Redis, p50 / p99, at fractions of the capacity above:")
    print()
    print(
        delay_table(c, options, args.processes, args.replicas, events=args.events, seed=args.seed)
    )
    print()
    print(
        f"Replicas needed (subscribers spread over them, none on the primary) to carry a "
        f"revocation rate at {options.target:.0%} CPU; 0: the primary alone:"
    )
    print()
    print(replicas_table(c, options, args.processes, [10.0, 100.0, 1000.0]))
    print()
    print("Redis Cluster: one deployment on one shard (its keys and channel share one slot):")
    print()
    print(cluster_table(c, options, args.processes))
    print()
    largest = max(args.processes)
    print(f"Heartbeats alone, {largest:,} app processes, no revocations:")
    print()
    print(heartbeat_table(c, options, largest, args.replicas))
    print()
    print(
        f"Batching: the worker relays what is pending as one frame (at most 1,000); "
        f"fan-out cost per revocation in frames of {c.batch_events}:"
    )
    print()
    print(batching_table(c, args.processes, options.target))
    print()
    print(
        "A revocation confirmed with revoke(wait=...): primary CPU for the presence "
        "report every live client writes at once (the revoker's reads of the whole "
        "clients hash come on top):"
    )
    print()
    print(confirmed_table(c, args.processes, args.replicas))
    print()
    print("Redis memory for subscriber connections on one node:")
    print()
    print(memory_table(c, args.processes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
