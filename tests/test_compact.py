from __future__ import annotations

import threading
import uuid

from revocation.compact import HashedExpirySet


def test_entries_are_found_before_and_after_a_merge() -> None:
    entries = HashedExpirySet(merge_at=100)
    subjects = [uuid.uuid4().hex for _ in range(1000)]
    for i, subject in enumerate(subjects):
        assert entries.add(subject, 2000.0 + i)
    assert len(entries) == 1000
    for i, subject in enumerate(subjects):
        assert entries.get(subject) == 2000.0 + i  # whole seconds survive a merge exactly
    assert all(entries.get(uuid.uuid4().hex) is None for _ in range(1000))


def test_expiries_round_up_to_the_second_once_merged() -> None:
    entries = HashedExpirySet(merge_at=1)
    entries.add("a", 1000.2)
    assert entries.get("a") == 1001.0  # never earlier than asked


def test_the_later_expiry_wins_across_merges() -> None:
    entries = HashedExpirySet(merge_at=2)
    entries.add("a", 1000.0)
    entries.add("b", 1000.0)  # merged
    assert not entries.add("a", 900.0)
    assert entries.add("a", 1500.0)
    entries.add("c", 1.0)  # merged again, "a" twice in the arrays
    assert entries.get("a") == 1500.0 and len(entries) == 3


def test_sweep_drops_expired_entries_and_compacts_the_arrays() -> None:
    entries = HashedExpirySet(merge_at=10, compact_every=0.0)
    for i in range(25):
        entries.add(f"s{i}", 1000.0 if i % 2 else 3000.0)
    assert len(entries) == 25
    dropped = entries.sweep(now=2000.0)
    assert dropped == 12 and len(entries) == 13
    assert entries.get("s1") is None and entries.get("s0") == 3000.0
    assert entries.sweep(now=4000.0) == 13 and len(entries) == 0


def test_readers_never_miss_an_entry_while_merges_run() -> None:
    entries = HashedExpirySet(merge_at=64)
    present = [f"p{i}" for i in range(2000)]
    for subject in present:
        entries.add(subject, 9000.0)
    stop = threading.Event()
    misses: list[str] = []

    def read() -> None:
        while not stop.is_set():
            for subject in present[::50]:
                if entries.get(subject) is None:
                    misses.append(subject)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(6_000):  # about a hundred merges meanwhile
        entries.add(f"n{i}", 9000.0)
    stop.set()
    reader.join()
    assert misses == []
