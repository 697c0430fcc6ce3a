"""Memory per active revocation in a client's cache, lookup cost, and cold start.

Memory: a :class:`~revocation.cache.RevocationCache` is filled through
``load()`` in chunks of 10,000 records (90 % token, about 10 % session and a
few user revocations), and so is each baseline (``set[str]``,
``dict[str, float]``, ``cachetools.TTLCache``) with the same subjects. The
subjects are generated first and kept as ``bytes``, outside the measurement;
every structure gets its own ``str`` objects decoded from them, so the bytes
counted are exactly what the structure retains (strings included) and nothing
the generator or the ``Revocation`` objects held (each chunk is dropped before
the next). Bytes per entry is the growth of tracemalloc's traced memory,
divided by the entries held. The RSS delta (``/proc/self/statm``) is measured
in a fresh child process without tracemalloc, whose own bookkeeping would
otherwise count too.

Cold start: a private redis-server holds the revocations, written through the
real commit script (pipelined, 10,000 per round trip, instead of one
``Revoker.revoke()`` each); a ``Publisher`` thread sends heartbeats; the time
is from ``RevocationClient.start()`` to ``wait_synced()`` returning. A separate
experiment times the parts of the catch-up: ``Store.since(0)`` (Redis transfer,
then parsing) and ``RevocationCache.load``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
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
from revocation.events import Kind, Revocation, parse_records, record_body
from revocation.redis_server import RedisServer
from revocation.store import SINCE_PAGE, Store, commit_args
from revocation.tokens import Session

CHUNK = 10_000
"""Records per ``load()`` call, and commits per pipeline round trip."""
USERS = 5
"""User revocations (with ``not_before``) among the entries."""
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


def _revocations(raw: list[bytes], start: int, stop: int, now: float) -> list[Revocation]:
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
    return chunk


# -- the structures -------------------------------------------------------------


def _build_cache(raw: list[bytes], now: float) -> RevocationCache:
    cache = RevocationCache()
    for start in range(0, len(raw), CHUNK):
        stop = min(start + CHUNK, len(raw))
        chunk = _revocations(raw, start, stop, now)
        cache.load(chunk, head=stop)
        del chunk
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


BUILDERS: dict[str, Build] = {
    "RevocationCache": _build_cache,
    "set[str]": _build_set,
    "dict[str, float]": _build_dict,
    "cachetools.TTLCache": _build_ttlcache,
}


def _entries(structure: Any) -> int:
    return int(structure.size) if isinstance(structure, RevocationCache) else len(structure)


def _traced(build: Build, raw: list[bytes], now: float) -> tuple[Any, int]:
    """The structure ``build`` makes and the traced bytes it retains."""
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        structure = build(raw, now)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return structure, after - before


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


def _cache_breakdown(cache: RevocationCache) -> dict[str, float]:
    """Where the cache's bytes go, per entry (``sys.getsizeof``, GC headers included)."""
    tables: list[dict[str, Any]] = [cache._tokens, cache._sessions, cache._users]
    size = cache.size
    return {
        "subject strings": sum(sys.getsizeof(k) for t in tables for k in t) / size,
        "dict tables": sum(sys.getsizeof(t) for t in tables) / size,
        "expiry floats": sum(sys.getsizeof(v) for t in tables for v in t.values()) / size,
        "expiry heap tuples": sum(sys.getsizeof(e) for e in cache._expiries) / size,
        "expiry heap list": sys.getsizeof(cache._expiries) / size,
    }


def _session(jti: str, now: float) -> Session:
    return Session("user-not-revoked", str(uuid.uuid4()), jti, now, now + TTL, {})


def _lookups(name: str, structure: Any, hit: str, now: float, number: int) -> tuple[float, float]:
    """Seconds per lookup: a subject not revoked, and one revoked."""
    miss = uuid.uuid4().hex
    if name == "RevocationCache":
        check = structure.check
        absent, present = _session(miss, now), _session(hit, now)
        assert check(absent) is None and check(present) == "token"
        return (
            best_of(lambda: check(absent), number),
            best_of(lambda: check(present), number),
        )
    contains = structure.__contains__
    assert not contains(miss) and contains(hit)
    return best_of(lambda: contains(miss), number), best_of(lambda: contains(hit), number)


def _memory(sizes: list[int], number: int) -> list[dict[str, Any]]:
    names = [n for n in BUILDERS if n != "cachetools.TTLCache" or _have_cachetools()]
    results: list[dict[str, Any]] = []
    for n in sizes:
        raw = _subjects(n)
        token = next(i for i in range(n // 2, n) if _kind(i) == "token")
        now = time.time()
        for name in names:
            print(f"    memory: {name}, {n:,} entries", flush=True)
            structure, traced = _traced(BUILDERS[name], raw, now)
            entries = _entries(structure)
            assert entries == n, (name, entries, n)
            # A fresh str equal to a revoked jti, as a request would bring.
            miss, hit = _lookups(name, structure, raw[token].decode(), now, number)
            result: dict[str, Any] = {
                "structure": name,
                "entries": entries,
                "traced_bytes": traced,
                "bytes_per_entry": traced / entries,
                "lookup_not_revoked_s": miss,
                "lookup_revoked_s": hit,
            }
            if name == "RevocationCache":
                result["breakdown_per_entry"] = _cache_breakdown(structure)
            del structure
            gc.collect()
            result["rss_bytes_per_entry"] = _rss_per_entry(name, n)
            results.append(result)
        del raw
    return results


# -- cold start ----------------------------------------------------------------


def _fill(store: Store, n: int, now: float) -> None:
    """``n`` revocations through the commit script, pipelined ``CHUNK`` at a time."""
    pipe = store.client.pipeline(transaction=False)
    for i in range(n):
        kind = _kind(i)
        subject = _subject(i, kind)
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
        args = commit_args(
            kind=kind, subject=subject, body=body, expires_at=expires_at, not_before=not_before
        )
        store._commit(keys=store.keys.commit_keys, args=args, client=pipe)
        if len(pipe) >= CHUNK:
            pipe.execute()
    if len(pipe):
        pipe.execute()


def _fetch(store: Store, head: int) -> list[bytes]:
    """The raw records ``Store.since(0)`` transfers, paged the same way."""
    client: Any = store.client
    records: list[bytes] = []
    cursor = 0
    while cursor < head:
        chunk = client.zrangebyscore(
            store.keys.log, f"({cursor}", head, start=0, num=SINCE_PAGE, withscores=True
        )
        records.extend(member for member, _ in chunk)
        if len(chunk) < SINCE_PAGE:
            break
        cursor = int(chunk[-1][1])
    return records


def _split(store: Store) -> dict[str, float]:
    """Seconds spent in each part of a full catch-up, outside any client."""
    gc.collect()
    started = time.perf_counter()
    head, revocations = store.since(0)
    since = time.perf_counter() - started
    cache = RevocationCache()
    started = time.perf_counter()
    cache.load(revocations, head)
    load = time.perf_counter() - started
    del revocations, cache
    gc.collect()
    started = time.perf_counter()
    raw = _fetch(store, head)
    fetch = time.perf_counter() - started
    transferred = sum(len(r) for r in raw)
    started = time.perf_counter()
    parse_records(raw)
    parse = time.perf_counter() - started
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        parse_records(raw)
        parse_no_gc = time.perf_counter() - started
    finally:
        gc.enable()
    gc.collect()
    started = time.perf_counter()
    orjson.loads(b"[" + b",".join(raw) + b"]")
    json_only = time.perf_counter() - started
    del raw
    gc.collect()
    tracemalloc.start(1)  # the whole catch-up again, for its peak memory
    try:
        head, revocations = store.since(0)
        cache = RevocationCache()
        cache.load(revocations, head)
        del revocations
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del cache
    gc.collect()
    return {
        "since_s": since,
        "fetch_s": fetch,
        "parse_s": parse,
        "parse_gc_disabled_s": parse_no_gc,
        "orjson_only_s": json_only,
        "load_s": load,
        "transferred_bytes": float(transferred),
        "catch_up_peak_bytes": float(peak),
        "catch_up_retained_bytes": float(retained),
    }


def _cold_start(n: int, runs: int) -> dict[str, Any]:
    worker_log = logging.getLogger("revocation.worker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)  # the publisher rightly warns that it skips the backlog
    with RedisServer() as server:
        settings = Settings(
            redis_url=server.url,
            namespace=NAMESPACE,
            signing_key="memory-benchmark-signing-key-0123456789",
            event_key="memory-benchmark-event-key-0123456789",
        )
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
                print(f"    cold start: run {run + 1} of {runs}", flush=True)
                client = RevocationClient(settings)
                started = time.perf_counter()
                client.start()
                synced = client.wait_synced(120)
                elapsed = time.perf_counter() - started
                status = client.status()
                client.close()
                results.append(
                    {
                        "seconds": elapsed,
                        "synced": synced,
                        "size": status.size,
                        "catch_ups": status.catch_ups,
                        "reconnects": status.reconnects,
                    }
                )
                del client, status
                gc.collect()
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
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for j, n in enumerate(sizes):
        bars = ax.bar(
            [i + j * width for i in range(len(names))],
            [per_entry[name, n] for name in names],
            width,
            label=f"{n:,} entries",
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.axhline(TARGET_BYTES, color="red", linestyle="--", linewidth=1, label="target: 32 B")
    ax.set_xticks([i + width * (len(sizes) - 1) / 2 for i in range(len(names))], names)
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
    number = 50_000 if quick else 200_000

    memory = _memory(sizes, number)
    cold = _cold_start(cold_entries, runs)

    set_bytes = {r["entries"]: r["bytes_per_entry"] for r in memory if r["structure"] == "set[str]"}
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
    rest = best - split["since_s"] - split["load_s"]
    n_cold = f"{cold_entries:,}"
    rows += [
        ["**cold start**", "**entries**", "**seconds**", "**share of best**", "", "", ""],
        [
            f"`start()` → `wait_synced()`, best of {len(seconds)}",
            n_cold,
            f"{best:.2f} s",
            "100%",
            "all: " + ", ".join(f"{s:.2f} s" for s in seconds),
            "",
            "",
        ],
    ]
    parts = [
        ("`Store.since(0)`: transfer + parse", split["since_s"]),
        ("… of which ZRANGEBYSCORE pages (timed alone)", split["fetch_s"]),
        ("… of which `parse_records` (timed alone)", split["parse_s"]),
        ("`RevocationCache.load`", split["load_s"]),
        ("rest: connect, subscribe, heartbeat, threads", rest),
    ]
    rows += [[what, n_cold, f"{t:.2f} s", f"{t / best:.0%}", "", "", ""] for what, t in parts]

    at_max = [r for r in memory if r["entries"] == sizes[-1]]
    cache_max = next(r for r in at_max if r["structure"] == "RevocationCache")
    worst_lookup = max(cache_max["lookup_not_revoked_s"], cache_max["lookup_revoked_s"])
    bytes_ok = cache_max["bytes_per_entry"] <= TARGET_BYTES
    lookup_ok = worst_lookup < TARGET_LOOKUP
    cold_ok = best <= TARGET_COLD_START and all(r["synced"] for r in cold["runs"])
    scale = "" if not quick else " (quick run: measured at the sizes shown, not at 1,000,000)"
    breakdown = cache_max["breakdown_per_entry"]
    reconnects = sum(r["reconnects"] for r in cold["runs"])
    notes = [
        f"Target: at most {TARGET_BYTES:.0f} bytes per active revocation at "
        f"{TARGET_ENTRIES:,} entries, lookups under 1 µs{scale}. Memory: "
        f"{_met(bytes_ok)}, {cache_max['bytes_per_entry']:.0f} bytes per entry at "
        f"{sizes[-1]:,} ({cache_max['bytes_per_entry'] / TARGET_BYTES:.1f}x the target; "
        f"a `set[str]` of the same subjects alone takes {set_bytes[sizes[-1]]:.0f}). "
        f"Lookups: {_met(lookup_ok)}, {us(worst_lookup)} at most.",
        f"Target: fresh in at most {TARGET_COLD_START:.0f} s with {TARGET_ENTRIES:,} active "
        f"revocations{scale}: {_met(cold_ok)}, {best:.2f} s with {cold_entries:,} "
        f"(cache size after start: {cold['runs'][0]['size']:,}; listener reconnects during "
        f"start: {reconnects}).",
        "Where the cache's bytes go at "
        f"{sizes[-1]:,} (`sys.getsizeof`, per entry): "
        + ", ".join(f"{k} {v:.0f}" for k, v in breakdown.items())
        + ".",
        f"The catch-up transfers {split['transferred_bytes'] / 1e6:.0f} MB of JSON; "
        f"`orjson.loads` alone parses it in {split['orjson_only_s']:.2f} s against "
        f"{split['parse_s']:.2f} s for `parse_records` (pydantic), "
        f"{split['parse_gc_disabled_s']:.2f} s with the garbage collector off. "
        f"A catch-up holds every record at once: traced memory peaks at "
        f"{split['catch_up_peak_bytes'] / cold_entries:.0f} bytes per entry "
        f"({split['catch_up_peak_bytes'] / 1e6:.0f} MB) and keeps "
        f"{split['catch_up_retained_bytes'] / cold_entries:.0f}. The rest of the start is "
        "mostly the wait for a heartbeat on the new subscription (one every "
        "`heartbeat_interval`, 0.5 s by default) and `wait_synced`'s 50 ms polling.",
        "Bytes per entry: tracemalloc's traced memory grown while building, with the "
        "generated subjects and `Revocation` chunks outside the count; every structure "
        "holds its own strings. RSS: the same build in a fresh process without "
        "tracemalloc; it also counts what the freed `Revocation` chunks leave in the "
        "allocator's arenas, which weighs most at small sizes. Lookups: best of 7, one "
        "Python call each (a lambda around `check` or `__contains__`), the revoked "
        "subject a fresh string equal to the jti.",
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
