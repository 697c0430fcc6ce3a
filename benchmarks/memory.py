"""Memory per active revocation in a client's cache, lookup cost, and cold start.

Memory: a :class:`~revocation.cache.RevocationCache` is filled in chunks, the
way events arrive (``load()`` with ``Revocation`` objects, 10,000 at a time)
and the way a cold start fills it (``load_raw()`` with store JSON, 100,000 at
a time); 90 % token, about 10 % session and a few user revocations. Each
baseline (``set[str]``, ``dict[str, float]``, ``cachetools.TTLCache``) holds
the same subjects. The subjects are generated first and kept as ``bytes``,
outside the measurement; every structure gets its own ``str`` objects decoded
from them, so the bytes counted are exactly what the structure retains and
nothing the generator, the ``Revocation`` objects or the JSON held (each chunk
is dropped before the next). Bytes per entry is the growth of tracemalloc's
traced memory (numpy's buffers included) divided by the entries held. The RSS
delta (``/proc/self/statm``) is measured in a fresh child process without
tracemalloc, whose own bookkeeping would otherwise count too.

Lookups run over 10,000 distinct sessions (not revoked: random jti and session
handle; revoked: a fresh string equal to a revoked jti), so the compact set's
bitmap false positives and the dict's cache misses are averaged in.

Cold start: a private redis-server holds the revocations, written through the
real commit script (``Store.commit_many``, 1,000 records per script call,
instead of one ``Revoker.revoke()`` each); a ``Publisher`` thread sends
heartbeats; the time is from ``RevocationClient.start()`` to ``wait_synced()``
returning. A separate experiment times the parts of the catch-up the listener
runs (``Store.since_raw(0)``, then ``RevocationCache.load_raw``), and, for
comparison, the model path (``Store.since(0)``, then ``RevocationCache.load``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.common import CHARTS, ROOT, Section, best_of, ratio, us
from revocation import Publisher, RevocationClient, Settings
from revocation.cache import RevocationCache
from revocation.events import Kind, Revocation, record_body
from revocation.redis_server import RedisServer
from revocation.store import Store, commit_args
from revocation.tokens import Session

CHUNK = 10_000
"""Revocations per ``load()`` call, and per ``commit_many()`` call."""
RAW_CHUNK = 100_000
"""Store records per ``load_raw()`` call (each call merges into the arrays)."""
USERS = 5
"""User revocations (with ``not_before``) among the entries."""
LOOKUP_KEYS = 10_000
TTL = 900.0
TARGET_BYTES = 32.0
TARGET_LOOKUP = 1e-6
TARGET_COLD_START = 3.0
TARGET_ENTRIES = 1_000_000
NAMESPACE = "bench-memory"
STATM = Path("/proc/self/statm")

Build = Callable[[list[bytes], float], Any]


# -- the entries -------------------------------------------------------------


def _kind(i: int) -> Kind:
    if i < USERS:
        return "user"
    return "session" if i % 10 == 0 else "token"


def _subject(i: int, kind: Kind) -> str:
    if kind == "token":
        return uuid.uuid4().hex
    if kind == "session":
        return str(uuid.uuid4())
    return f"user-{i}"


def _subjects(n: int) -> list[bytes]:
    """Every entry's subject, as bytes: each structure decodes its own strings."""
    return [_subject(i, _kind(i)).encode() for i in range(n)]


def _body(kind: Kind, subject: str, now: float) -> tuple[bytes, float, float | None]:
    """A record's JSON as the commit script takes it, its expiry and ``not_before``."""
    expires_at = now + TTL
    not_before = now if kind == "user" else None
    body = record_body(
        kind=kind,
        subject=subject,
        revoked_at=now,
        expires_at=expires_at,
        not_before=not_before,
        reason=None,
    )
    return body, expires_at, not_before


# -- the structures -------------------------------------------------------------


def _build_cache(raw: list[bytes], now: float) -> RevocationCache:
    """As events fill it: ``Revocation`` objects through ``load()``."""
    cache = RevocationCache()
    for start in range(0, len(raw), CHUNK):
        stop = min(start + CHUNK, len(raw))
        chunk: list[Revocation] = []
        for i in range(start, stop):
            kind = _kind(i)
            chunk.append(
                Revocation(
                    seq=i + 1,
                    kind=kind,
                    subject=raw[i].decode(),
                    revoked_at=now,
                    expires_at=now + TTL,
                    not_before=now if kind == "user" else None,
                )
            )
        cache.load(chunk, head=stop)
        del chunk
    return cache


def _build_cache_raw(raw: list[bytes], now: float) -> RevocationCache:
    """As a cold start fills it: store records (JSON with ``seq``) through ``load_raw()``."""
    cache = RevocationCache()
    for start in range(0, len(raw), RAW_CHUNK):
        stop = min(start + RAW_CHUNK, len(raw))
        records: list[bytes] = []
        for i in range(start, stop):
            body = _body(_kind(i), raw[i].decode(), now)[0]
            records.append(b'{"seq":%d,' % (i + 1) + body[1:])  # as the script splices it
        cache.load_raw([records], head=stop)
        del records
    return cache


def _build_set(raw: list[bytes], now: float) -> set[str]:
    return {subject.decode() for subject in raw}


def _build_dict(raw: list[bytes], now: float) -> dict[str, float]:
    return {subject.decode(): now + TTL for subject in raw}  # one float per entry


def _build_ttlcache(raw: list[bytes], now: float) -> Any:
    from cachetools import TTLCache

    cache: TTLCache[str, bool] = TTLCache(maxsize=len(raw), ttl=TTL)
    for subject in raw:
        cache[subject.decode()] = True
    return cache


def _have_cachetools() -> bool:
    try:
        import cachetools  # noqa: F401
    except ImportError:
        return False
    return True


CACHE = "RevocationCache, load()"
CACHE_RAW = "RevocationCache, load_raw()"
SET = "set[str]"
BUILDERS: dict[str, Build] = {
    CACHE: _build_cache,
    CACHE_RAW: _build_cache_raw,
    SET: _build_set,
    "dict[str, float]": _build_dict,
    "cachetools.TTLCache": _build_ttlcache,
}


def _entries(structure: Any) -> int:
    return int(structure.size) if isinstance(structure, RevocationCache) else len(structure)


def _traced(build: Build, raw: list[bytes], now: float) -> tuple[Any, int, int]:
    """The structure ``build`` makes, the traced bytes it retains, and the peak."""
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        structure = build(raw, now)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return structure, after - before, peak - before


def _rss() -> int:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_child(name: str, n: int) -> None:
    """In a fresh process: print the RSS growth while ``name`` is built, as JSON."""
    raw = _subjects(n)
    now = time.time()
    gc.collect()
    before = _rss()
    structure = BUILDERS[name](raw, now)
    gc.collect()
    after = _rss()
    print(json.dumps({"rss": after - before, "entries": _entries(structure)}))


def _rss_per_entry(name: str, n: int) -> float | None:
    if not STATM.exists():
        return None
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    code = f"from benchmarks.memory import _rss_child; _rss_child({name!r}, {n})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["rss"]) / int(result["entries"])


def _per_lookup(lookup: Callable[[Any], object], keys: list[Any], number: int) -> float:
    """Seconds per ``lookup(key)``, over every key in turn."""

    def loop() -> None:
        for key in keys:
            lookup(key)

    return best_of(loop, number) / len(keys)


def _lookups(
    name: str, structure: Any, revoked: list[str], now: float, number: int
) -> tuple[float, float]:
    """Seconds per lookup: subjects not revoked, and subjects revoked."""
    absent = [uuid.uuid4().hex for _ in revoked]
    if isinstance(structure, RevocationCache):
        check = structure.check
        misses = [Session("nobody", str(uuid.uuid4()), jti, now, now + TTL, {}) for jti in absent]
        hits = [Session("nobody", None, jti, now, now + TTL, {}) for jti in revoked]
        assert all(check(s) is None for s in misses), name
        assert all(check(s) == "token" for s in hits), name
        return _per_lookup(check, misses, number), _per_lookup(check, hits, number)
    contains = structure.__contains__
    assert not any(contains(k) for k in absent) and all(contains(k) for k in revoked), name
    return _per_lookup(contains, absent, number), _per_lookup(contains, revoked, number)


def _memory(sizes: list[int], number: int) -> list[dict[str, Any]]:
    names = [n for n in BUILDERS if n != "cachetools.TTLCache" or _have_cachetools()]
    results: list[dict[str, Any]] = []
    for n in sizes:
        raw = _subjects(n)
        tokens = [i for i in range(USERS, n) if _kind(i) == "token"]
        sample = random.Random(n).sample(tokens, min(LOOKUP_KEYS, len(tokens)))
        now = time.time()
        for name in names:
            print(f"    memory: {name}, {n:,} entries", flush=True)
            structure, traced, peak = _traced(BUILDERS[name], raw, now)
            entries = _entries(structure)
            assert entries == n, (name, entries, n)
            # Fresh strings equal to revoked jtis, as requests would bring them.
            revoked = [raw[i].decode() for i in sample]
            miss, hit = _lookups(name, structure, revoked, now, number)
            del structure, revoked
            gc.collect()
            results.append(
                {
                    "structure": name,
                    "entries": entries,
                    "traced_bytes": traced,
                    "bytes_per_entry": traced / entries,
                    "peak_bytes_per_entry": peak / entries,
                    "rss_bytes_per_entry": _rss_per_entry(name, n),
                    "lookup_not_revoked_s": miss,
                    "lookup_revoked_s": hit,
                }
            )
        del raw
    return results


# -- cold start ----------------------------------------------------------------


def _fill(store: Store, n: int, now: float) -> None:
    """``n`` revocations through the commit script, ``CHUNK`` per ``commit_many``."""
    for start in range(0, n, CHUNK):
        batch: list[list[Any]] = []
        for i in range(start, min(start + CHUNK, n)):
            kind = _kind(i)
            subject = _subject(i, kind)
            body, expires_at, not_before = _body(kind, subject, now)
            batch.append(
                commit_args(
                    kind=kind,
                    subject=subject,
                    body=body,
                    expires_at=expires_at,
                    not_before=not_before,
                )
            )
        store.commit_many(batch)


def _split(store: Store) -> dict[str, float]:
    """Seconds spent in each part of a full catch-up, outside any client."""
    gc.collect()
    started = time.perf_counter()
    head, raw = store.since_raw(0)
    since_raw = time.perf_counter() - started
    transferred = sum(len(r) for r in raw)
    cache = RevocationCache()
    started = time.perf_counter()
    cache.load_raw([raw[i : i + 10_000] for i in range(0, len(raw), 10_000)], head)
    load_raw = time.perf_counter() - started
    assert cache.size == len(raw), (cache.size, len(raw))
    del cache
    gc.collect()
    started = time.perf_counter()
    orjson.loads(b"[" + b",".join(raw) + b"]")
    json_only = time.perf_counter() - started
    del raw
    gc.collect()
    # The model path, for comparison: a Revocation per record.
    started = time.perf_counter()
    head, revocations = store.since(0)
    since = time.perf_counter() - started
    cache = RevocationCache()
    started = time.perf_counter()
    cache.load(revocations, head)
    load = time.perf_counter() - started
    del revocations, cache
    gc.collect()
    tracemalloc.start(1)  # the listener's catch-up again, for its peak memory
    try:
        head, raw = store.since_raw(0)
        cache = RevocationCache()
        cache.load_raw([raw[i : i + 10_000] for i in range(0, len(raw), 10_000)], head)
        del raw
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del cache
    gc.collect()
    return {
        "since_raw_s": since_raw,
        "load_raw_s": load_raw,
        "orjson_only_s": json_only,
        "since_s": since,
        "load_s": load,
        "transferred_bytes": float(transferred),
        "catch_up_peak_bytes": float(peak),
        "catch_up_retained_bytes": float(retained),
    }


def _settings(url: str) -> Settings:
    return Settings(
        redis_url=url,
        namespace=NAMESPACE,
        signing_key="memory-benchmark-signing-key-0123456789",
        event_key="memory-benchmark-event-key-0123456789",
    )


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM``-style figure of /proc/self/status, in bytes."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _cold_child(url: str) -> None:
    """In a fresh process: start a client, wait until fresh, print the figures as JSON."""
    client = RevocationClient(_settings(url))
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    client.start()
    synced = client.wait_synced(120)
    elapsed = time.perf_counter() - started
    status = client.status()
    peak = _status_kib("VmHWM")
    client.close()
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "synced": synced,
                "size": status.size,
                "catch_ups": status.catch_ups,
                "reconnects": status.reconnects,
                "peak_rss_growth": None
                if peak is None or rss_before is None
                else peak - rss_before,
            }
        )
    )


def _cold_run(url: str) -> dict[str, Any]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", f"from benchmarks.memory import _cold_child; _cold_child({url!r})"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["log"] = done.stderr.strip().splitlines()
    return result


def _cold_start(n: int, runs: int) -> dict[str, Any]:
    worker_log = logging.getLogger("revocation.worker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)  # the publisher rightly warns that it skips the backlog
    with RedisServer() as server:
        settings = _settings(server.url)
        admin = redis.Redis.from_url(server.url, socket_timeout=60)
        publisher: Publisher | None = None
        thread: threading.Thread | None = None
        try:
            store = Store(admin, settings.namespace)
            print(f"    cold start: committing {n:,} revocations", flush=True)
            started = time.perf_counter()
            _fill(store, n, time.time())
            fill = time.perf_counter() - started
            assert store.head() == n
            publisher = Publisher(settings)
            thread = threading.Thread(target=publisher.run, name="bench-publisher", daemon=True)
            thread.start()
            deadline = time.monotonic() + 10
            while publisher.stats.heartbeats == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # a thread we cannot get an event from
            results: list[dict[str, Any]] = []
            for run in range(runs):
                print(f"    cold start: run {run + 1} of {runs}, in a fresh process", flush=True)
                results.append(_cold_run(server.url))
            print("    cold start: timing the catch-up's parts", flush=True)
            split = _split(store)
        finally:
            if publisher is not None:
                publisher.stop()
                if thread is not None:
                    thread.join(timeout=settings.heartbeat_interval + 10)
                publisher.close()
            admin.close()
            worker_log.setLevel(level)
    return {"entries": n, "fill_s": fill, "runs": results, "split": split}


# -- the section -----------------------------------------------------------------


def _chart(memory: list[dict[str, Any]], sizes: list[int]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(dict.fromkeys(r["structure"] for r in memory))
    per_entry = {(r["structure"], r["entries"]): r["bytes_per_entry"] for r in memory}
    width = 0.8 / len(sizes)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for j, n in enumerate(sizes):
        bars = ax.bar(
            [i + j * width for i in range(len(names))],
            [per_entry[name, n] for name in names],
            width,
            label=f"{n:,} entries",
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.axhline(TARGET_BYTES, color="red", linestyle="--", linewidth=1, label="target: 32 B")
    ax.set_xticks(
        [i + width * (len(sizes) - 1) / 2 for i in range(len(names))],
        [name.replace(", ", "\n") for name in names],
        fontsize=8,
    )
    ax.set_ylabel("bytes per entry (tracemalloc)")
    ax.set_title("Memory per active revocation")
    ax.legend()
    fig.tight_layout()
    CHARTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(CHARTS / "memory.png", dpi=120)
    plt.close(fig)
    return True


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def run(quick: bool, charts: bool) -> Section:
    sizes = [10_000, 50_000] if quick else [100_000, 1_000_000]
    cold_entries, runs = (20_000, 1) if quick else (1_000_000, 2)
    number = 5 if quick else 20  # passes over the 10,000 lookup keys

    memory = _memory(sizes, number)
    cold = _cold_start(cold_entries, runs)

    set_bytes = {r["entries"]: r["bytes_per_entry"] for r in memory if r["structure"] == SET}
    headers = [
        "what",
        "entries",
        "bytes/entry (traced)",
        "bytes/entry (RSS)",
        "vs set[str]",
        "lookup, not revoked",
        "lookup, revoked",
    ]
    rows: list[list[Any]] = []
    for r in memory:
        rss = r["rss_bytes_per_entry"]
        rows.append(
            [
                r["structure"],
                f"{r['entries']:,}",
                f"{r['bytes_per_entry']:.0f}",
                "n/a" if rss is None else f"{rss:.0f}",
                ratio(r["bytes_per_entry"], set_bytes[r["entries"]]),
                us(r["lookup_not_revoked_s"]),
                us(r["lookup_revoked_s"]),
            ]
        )

    seconds = [r["seconds"] for r in cold["runs"]]
    best = min(seconds)
    split = cold["split"]
    n_cold = f"{cold_entries:,}"
    rows += [
        ["**cold start**", "**entries**", "**seconds**", "**vs best start**", "", "", ""],
        [
            f"`start()` → `wait_synced()`, best of {len(seconds)} fresh processes",
            n_cold,
            f"{best:.2f} s",
            "100%",
            "all: " + ", ".join(f"{s:.2f} s" for s in seconds),
            "",
            "",
        ],
    ]
    parts = [
        # Timed apart, outside a client: the client streams pages from one into the other.
        ("parts: `Store.since_raw(0)`, Redis transfer", split["since_raw_s"]),
        ("parts: `RevocationCache.load_raw`, parse + apply", split["load_raw_s"]),
        ("not on the start path: `Store.since(0)` (transfer + pydantic)", split["since_s"]),
        ("not on the start path: `RevocationCache.load`", split["load_s"]),
    ]
    rows += [[what, n_cold, f"{t:.2f} s", f"{t / best:.0%}", "", "", ""] for what, t in parts]

    caches = [
        r for r in memory if r["entries"] == sizes[-1] and r["structure"] in (CACHE, CACHE_RAW)
    ]
    worst_bytes = max(r["bytes_per_entry"] for r in caches)
    worst_lookup = max(max(r["lookup_not_revoked_s"], r["lookup_revoked_s"]) for r in caches)
    bytes_ok = worst_bytes <= TARGET_BYTES
    lookup_ok = worst_lookup < TARGET_LOOKUP
    cold_ok = best <= TARGET_COLD_START and all(r["synced"] for r in cold["runs"])
    scale = "" if not quick else " (quick run: measured at the sizes shown, not at 1,000,000)"
    reconnects = [r["reconnects"] for r in cold["runs"]]
    peaks = [r["peak_rss_growth"] for r in cold["runs"] if r["peak_rss_growth"] is not None]
    per_cache = ", ".join(f"{r['bytes_per_entry']:.1f} with {r['structure']}" for r in caches)
    notes = [
        f"Target: at most {TARGET_BYTES:.0f} bytes per active revocation at "
        f"{TARGET_ENTRIES:,} entries, lookups under 1 µs{scale}. Memory: {_met(bytes_ok)}, "
        f"{per_cache} at {sizes[-1]:,} entries (a `set[str]` of the same subjects takes "
        f"{set_bytes[sizes[-1]]:.0f}). Lookups: {_met(lookup_ok)}, {us(worst_lookup)} at "
        "most (a revoked subject found in the sorted arrays costs a numpy `searchsorted` "
        "and two numpy scalar operations).",
        f"Target: fresh in at most {TARGET_COLD_START:.0f} s with {TARGET_ENTRIES:,} active "
        f"revocations{scale}: {_met(cold_ok)}, best {best:.2f} s, all runs "
        + ", ".join(f"{t:.2f} s" for t in seconds)
        + f", each in a fresh process, with {cold_entries:,} in the store (cache size "
        f"after start: {cold['runs'][0]['size']:,}).",
        f"Listener reconnects during each start: {', '.join(map(str, reconnects))}. "
        + (
            "A catch-up longer than `max_staleness` (2 s) ends with the listener dropping "
            "its connection as silent (it counts the catch-up as silence), then it "
            "reconnects, catches up again and waits for another heartbeat. "
            if any(reconnects)
            else ""
        )
        + "The rest of a start is mostly "
        "the wait for a heartbeat on the new subscription (one every `heartbeat_interval`, "
        "0.5 s by default) and `wait_synced`'s 50 ms polling.",
        f"The catch-up transfers {split['transferred_bytes'] / 1e6:.0f} MB of JSON. Timed "
        "apart, with every page held at once (a client streams them page by page), traced "
        f"allocations peak at {split['catch_up_peak_bytes'] / cold_entries:.0f} bytes per "
        f"entry ({split['catch_up_peak_bytes'] / 1e6:.0f} MB) and "
        f"{split['catch_up_retained_bytes'] / cold_entries:.0f} bytes per entry stay"
        + (
            f"; a fresh client process's peak RSS grows by {max(peaks) / 1e6:.0f} MB."
            if peaks
            else "."
        ),
        "Bytes per entry: tracemalloc's traced memory grown while building, with the "
        "generated subjects, `Revocation` objects and JSON chunks outside the count; every "
        "structure holds its own strings. RSS: the same build in a fresh process without "
        "tracemalloc; it also counts what freed chunks leave to the allocators (pymalloc "
        "arenas, glibc's heap), which weighs most for the compact set. Lookups: the mean "
        "over 10,000 distinct keys, best of 7 passes, one Python call each (`check` or "
        "`__contains__`).",
    ]
    section = Section(
        title="Memory and cold start",
        intro=(
            "What one active revocation costs in a client's local cache, against plain "
            "Python containers holding the same subjects; what a lookup costs; and how "
            "long a new client takes to become fresh when the store holds many "
            "revocations."
        ),
        headers=headers,
        rows=rows,
        notes=notes,
        data={
            "memory": memory,
            "cold_start": cold,
            "targets": {
                "bytes_per_entry": TARGET_BYTES,
                "lookup_s": TARGET_LOOKUP,
                "cold_start_s": TARGET_COLD_START,
                "entries": TARGET_ENTRIES,
                "bytes_met": bytes_ok,
                "lookup_met": lookup_ok,
                "cold_start_met": cold_ok,
            },
        },
    )
    if charts and _chart(memory, sizes):
        section.charts.append("memory.png")
    return section
