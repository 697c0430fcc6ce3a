"""Requests/s of the FastAPI example app, with and without ``check_database=True``.

The app is ``examples/fastapi_app.py`` under uvicorn with one worker process,
against a private redis-server holding 10,000 committed revocations and a
publisher worker (a thread of this process) relaying them. ``GET /profile``
verifies the token only (``check_database=False``); ``GET /balance`` also asks
the process's in-memory revocation set (``check_database=True``). The load
comes from another process: ``wrk`` (1 thread, 16 keep-alive connections)
when ``/usr/bin/wrk`` exists, else a small multiprocessing + ``http.client``
load generator (2 processes of 8 keep-alive connections each).

After a warm-up burst, the two routes are measured in interleaved rounds,
alternating which goes first; the report gives each route's median and best
requests/s and the ratio ``check_database=True`` / ``False`` (target: at
least 0.95). Before measuring, a revoked token is checked to be refused by
``/balance`` and accepted by ``/profile``, so the lookup really happens.
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.pool import Pool
from typing import IO, TYPE_CHECKING, Any

from benchmarks.common import CHARTS, ROOT, Section, ratio

if TYPE_CHECKING:
    from revocation import Settings

WRK = "/usr/bin/wrk"
CONNECTIONS = 16
REVOCATIONS = 10_000
TARGET = 0.95
ROUTES = {"profile": False, "balance": True}  # path -> check_database
HOST = "127.0.0.1"

# A load generator: (path, seconds) -> (requests/s, non-2xx or failed requests).
Load = Callable[[str, int], tuple[float, int]]


# --- HTTP helpers ------------------------------------------------------------


def _get(port: int, path: str, token: str, timeout: float = 2.0) -> int:
    """Status of one GET with the token as a bearer."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _wait_status(
    port: int, path: str, token: str, status: int, *, timeout: float, alive: Callable[[], bool]
) -> bool:
    """Poll until a GET answers ``status``; False at the deadline or when the app died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(OSError, http.client.HTTPException):
            if _get(port, path, token) == status:
                return True
        time.sleep(0.05)  # polling a server we get no readiness event from
    return False


# --- load generators ----------------------------------------------------------


def _wrk_load(port: int, token: str) -> Load:
    def load(path: str, seconds: int) -> tuple[float, int]:
        completed = subprocess.run(
            [
                WRK, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s",
                "-H", f"Authorization: Bearer {token}",
                f"http://{HOST}:{port}/{path}",
            ],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        )  # fmt: skip
        found = re.search(r"^Requests/sec:\s*([\d.]+)", completed.stdout, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no Requests/sec in wrk's output:\n{completed.stdout}")
        bad = sum(
            int(count)
            for count in re.findall(r"Non-2xx or 3xx responses:\s*(\d+)", completed.stdout)
        )
        errors = re.search(r"Socket errors:(.*)$", completed.stdout, re.MULTILINE)
        if errors is not None:
            bad += sum(int(count) for count in re.findall(r"\d+", errors.group(1)))
        return float(found.group(1)), bad

    return load


@dataclass(frozen=True, slots=True)
class _Job:
    """What each load process does: GET ``path`` from ``start_at`` to ``stop_at``."""

    port: int
    path: str
    token: str
    start_at: float  # time.time(): every process starts its window together
    stop_at: float
    connections: int


def _connection_loop(job: _Job, counts: list[int]) -> None:
    """One keep-alive connection: GET until ``job.stop_at``; counts [ok, bad]."""
    headers = {"Authorization": f"Bearer {job.token}"}
    connection = http.client.HTTPConnection(HOST, job.port, timeout=10)
    time.sleep(max(0.0, job.start_at - time.time()))
    try:
        while time.time() < job.stop_at:
            try:
                connection.request("GET", job.path, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                counts[1] += 1
                connection.close()  # reconnects on the next request
                continue
            counts[0 if response.status == 200 else 1] += 1
    finally:
        connection.close()


def _load_process(job: _Job) -> tuple[int, int]:
    """Run in a child process: one thread per connection; returns (ok, bad)."""
    counts = [[0, 0] for _ in range(job.connections)]
    threads = [threading.Thread(target=_connection_loop, args=(job, count)) for count in counts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(count[0] for count in counts), sum(count[1] for count in counts)


def _python_load(pool: Pool, port: int, token: str, processes: int, per_process: int) -> Load:
    def load(path: str, seconds: int) -> tuple[float, int]:
        start_at = time.time() + 0.5  # the processes are already up: a common start
        job = _Job(port, f"/{path}", token, start_at, start_at + seconds, per_process)
        results = pool.map(_load_process, [job] * processes)
        ok = sum(result[0] for result in results)
        return ok / seconds, sum(result[1] for result in results)

    return load


# --- the processes under test -----------------------------------------------------


@contextlib.contextmanager
def _publisher(settings: Settings) -> Iterator[None]:
    from revocation import Publisher

    publisher = Publisher(settings)
    thread = threading.Thread(target=publisher.run, name="bench-publisher", daemon=True)
    thread.start()
    try:
        yield
    finally:
        publisher.stop()
        thread.join(timeout=settings.heartbeat_interval + 10.0)
        publisher.close()


@contextlib.contextmanager
def _uvicorn(settings: Settings, port: int, log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """The example app under uvicorn, 1 worker; stopped by its pid on exit."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("REVOCATION_")}
    assert settings.signing_key is not None and settings.event_key is not None
    env.update(
        REVOCATION_REDIS_URL=settings.redis_url,
        REVOCATION_NAMESPACE=settings.namespace,
        REVOCATION_SIGNING_KEY=settings.signing_key.get_secret_value(),
        REVOCATION_EVENT_KEY=settings.event_key.get_secret_value(),
        PYTHONPATH=str(ROOT),
    )
    process = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "examples.fastapi_app:app",
            "--host", HOST, "--port", str(port), "--workers", "1",
            "--log-level", "warning", "--no-access-log",
        ],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _app_log(log: IO[bytes]) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


# --- the benchmark ----------------------------------------------------------------


def _measure(load: Load, rounds: int, seconds: int) -> dict[str, list[float]]:
    """Interleaved rounds, alternating which route goes first."""
    results: dict[str, list[float]] = {path: [] for path in ROUTES}
    for round_ in range(rounds):
        order = list(ROUTES) if round_ % 2 == 0 else list(reversed(ROUTES))
        for path in order:
            rate, bad = load(path, seconds)
            if bad:
                raise RuntimeError(f"GET /{path}: {bad} failed or non-200 responses under load")
            results[path].append(rate)
    return results


def _chart(medians: dict[str, float], best: dict[str, float]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [f"/{path}\ncheck_database={ROUTES[path]}" for path in ROUTES]
    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.bar(labels, [medians[path] for path in ROUTES], color=["#8da0cb", "#66c2a5"])
    axes.scatter(labels, [best[path] for path in ROUTES], color="black", marker="_", s=400)
    axes.set_ylabel("requests/s (bar: median, line: best)")
    axes.set_title("FastAPI example, 1 uvicorn worker")
    figure.tight_layout()
    CHARTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(CHARTS / "http.png", dpi=120)
    plt.close(figure)
    return "http.png"


def run(quick: bool, charts: bool) -> Section:
    from revocation import Revoker, Settings, TokenIssuer
    from revocation.redis_server import RedisServer, free_port

    rounds, seconds, warmup = (1, 1, 1) if quick else (3, 5, 2)
    use_wrk = os.path.exists(WRK) and os.access(WRK, os.X_OK)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(RedisServer())
        settings = Settings(
            redis_url=server.url,
            namespace=f"bench-http-{secrets.token_hex(4)}",
            signing_key=secrets.token_urlsafe(32),
            event_key=secrets.token_urlsafe(32),
        )
        stack.enter_context(_publisher(settings))
        issuer = TokenIssuer(settings)
        token, revoked = issuer.issue("alice"), issuer.issue("mallory")
        with Revoker(settings) as revoker:
            for i in range(REVOCATIONS):
                revoker.revoke(jti=f"j{i}")
            revoker.revoke(token=revoked)

        port = free_port()
        log = stack.enter_context(tempfile.TemporaryFile(prefix="bench-http-uvicorn-"))
        app = stack.enter_context(_uvicorn(settings, port, log))

        def alive() -> bool:
            return app.poll() is None

        if not _wait_status(port, "/profile", token, 200, timeout=30.0, alive=alive):
            raise RuntimeError(f"the app did not answer GET /profile:\n{_app_log(log)}")
        if (status := _get(port, "/balance", token)) != 200:
            raise RuntimeError(f"GET /balance answered {status}:\n{_app_log(log)}")
        if not _wait_status(port, "/balance", revoked, 401, timeout=10.0, alive=alive):
            raise RuntimeError("GET /balance did not refuse a revoked token")
        if (status := _get(port, "/profile", revoked)) != 200:
            raise RuntimeError(f"GET /profile answered {status} to a revoked token")

        if use_wrk:
            load = _wrk_load(port, token)
            generator = f"wrk (1 thread, {CONNECTIONS} connections)"
        else:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(2))
            load = _python_load(pool, port, token, processes=2, per_process=CONNECTIONS // 2)
            generator = (
                f"a Python load generator (2 processes, {CONNECTIONS // 2} connections each)"
            )
        for path in ROUTES:  # warm-up: caches, the client's sync, CPU frequency
            load(path, warmup)
        results = _measure(load, rounds, seconds)

    medians = {path: statistics.median(rates) for path, rates in results.items()}
    best = {path: max(rates) for path, rates in results.items()}
    median_ratio = medians["balance"] / medians["profile"]
    best_ratio = best["balance"] / best["profile"]
    met = median_ratio >= TARGET
    rows: list[list[Any]] = [
        [
            f"`GET /{path}`",
            f"`{ROUTES[path]}`",
            f"{medians[path]:,.0f}",
            f"{best[path]:,.0f}",
            "1.00x (baseline)"
            if not ROUTES[path]
            else f"{ratio(medians[path], medians['profile'])} (best: {best_ratio:.2f}x)",
        ]
        for path in ROUTES
    ]
    intro = (
        f"Requests/s of the FastAPI example app (`examples/fastapi_app.py`) under uvicorn "
        f"with 1 worker process, load from {generator} in another process on the same "
        f"{os.cpu_count()}-core machine. `GET /profile` verifies the token only; "
        f"`GET /balance` also checks it with `check_database=True` against the process's "
        f"in-memory set, which follows {REVOCATIONS:,} committed revocations. "
        f"{rounds} interleaved round{'s' if rounds > 1 else ''} of {seconds} s per route "
        f"after a {warmup} s warm-up, alternating which route goes first; a revoked token "
        f"was checked to be refused by `/balance` and accepted by `/profile` first."
    )
    notes = [
        f"Target: `check_database=True` serves at least {TARGET:.0%} of the requests/s "
        f"of `check_database=False`. Median ratio {median_ratio:.1%}: "
        + ("met." if met else "not met in this run.")
    ]
    if quick:
        notes.append("Quick run: one short round, a smoke test rather than a measurement.")
    section = Section(
        title="HTTP throughput: check_database=True against stateless",
        intro=intro,
        headers=["route", "check_database", "requests/s (median)", "best", "ratio vs False"],
        rows=rows,
        notes=notes,
        data={
            "generator": "wrk" if use_wrk else "python",
            "connections": CONNECTIONS,
            "rounds": rounds,
            "seconds": seconds,
            "revocations": REVOCATIONS,
            "requests_per_s": results,
            "median": medians,
            "best": best,
            "median_ratio": median_ratio,
            "best_ratio": best_ratio,
            "target": TARGET,
            "target_met": met,
        },
    )
    if charts and (chart := _chart(medians, best)) is not None:
        section.charts.append(chart)
    return section
