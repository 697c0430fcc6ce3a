"""What every benchmark shares: a result shape, timing helpers, a private Redis.

Every comparison is measured side by side in the same run, and reported as
ratios as well as times: this machine is shared and noisy, so only figures
from one run are compared with each other.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revocation import Settings
from revocation.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHARTS = DOCS / "benchmarks"


@dataclass
class Section:
    """One benchmark's results, as the report shows them."""

    title: str
    intro: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)  # file names under docs/benchmarks/
    data: dict[str, Any] = field(default_factory=dict)  # raw figures, for the summary


def private_settings(server: RedisServer, **overrides: Any) -> Settings:
    """Settings for a benchmark on ``server``: fresh keys, a namespace of its own."""
    return Settings(
        redis_url=server.url,
        namespace=f"bench-{uuid.uuid4().hex[:8]}",
        signing_key=secrets.token_urlsafe(32),
        event_key=secrets.token_urlsafe(32),
        **overrides,
    )


def start_worker_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The publisher worker in its own process, as deployed (not competing for this GIL).

    ``env``: the settings' ``REVOCATION_*`` variables (``to_environment``).
    """
    return subprocess.Popen(
        [sys.executable, "-m", "workers.publisher"],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT), "REVOCATION_LOG_LEVEL": "WARNING"},
    )


class AppliedTimes:
    """An ``on_applied`` hook: the monotonic time each seq was applied in this process."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.last = 0

    def __call__(self, seq: int) -> None:
        now = time.monotonic()
        for s in range(self.last + 1, seq + 1):
            self.times[s] = now
        self.last = max(self.last, seq)


def stop_children(children: Sequence[tuple[Any, Any]]) -> None:
    """Ask spawned app processes (process, pipe) to stop; terminate the ones that do not."""
    for process, conn in children:
        with contextlib.suppress(OSError):
            conn.send("stop")
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()


def best_of(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Seconds per call: the best of ``repeat`` runs of ``number`` calls."""
    gc.collect()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - started) / number)
    return best


def interleaved(
    candidates: dict[str, Callable[[], object]], number: int, rounds: int = 7
) -> dict[str, float]:
    """Seconds per call of each candidate, the best of ``rounds`` interleaved runs.

    Interleaving spreads the machine's noise over every candidate alike.
    """
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, fn in candidates.items():
            gc.collect()
            started = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter() - started) / number)
    return best


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x"


def machine() -> str:
    import redis

    from revocation.redis_server import RedisServer, find_redis_server

    with RedisServer(binary=find_redis_server()) as server:
        version = server.client().info("server")["redis_version"]
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"redis-py {redis.__version__}, Redis {version} on loopback"
    )
