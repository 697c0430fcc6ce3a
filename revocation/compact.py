"""A compact set of revoked subjects with expiries, for a million entries and more.

A ``dict[str, float]`` costs about 126 bytes per entry (the key string alone
is 81 for a 32-character jti), and a heap of expiries as much again. Here a
subject is kept as its 64-bit hash:

- recent additions sit in a small ``dict[int, float]``;
- once it holds ``merge_at`` entries, they are merged into a sorted
  ``int64`` array of hashes with a parallel ``uint32`` array of expiries
  (whole seconds, rounded up), expired entries dropped on the way;
- a bitmap of one bit per 16 entries, indexed by the hash, answers most
  misses without touching the arrays (about 6% of misses go on);
- an index of bucket starts by the hash's top bits narrows the binary search
  to about four entries, read through memoryviews (Python ints, no numpy
  call per lookup).

That is about 20 bytes per entry at a million. The price: a lookup hashes the
subject (Python caches a str's hash), and two different subjects share a
64-bit hash with probability about n / 2**64 (5e-14 at a million entries), in
which case the other one would be refused too. Hashes use the interpreter's
own ``hash``, salted per process, so no one can aim at a collision.

Thread-safety: one writer (the cache's, under its lock); readers take no
lock. A merge builds the new arrays and aids, publishes them as one object,
and only then drops the merged entries from ``recent``: a reader sees every
entry in one place or the other.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import numpy.typing as npt

_EMPTY_KEYS: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
_EMPTY_UNTILS: npt.NDArray[np.uint32] = np.empty(0, dtype=np.uint32)
_OFFSET = 1 << 63  # hashes are signed 64-bit; + _OFFSET orders them as unsigned


class Segment:
    """The merged entries: sorted hashes, their expiries, and the lookup aids. Immutable."""

    __slots__ = ("bitmap", "keys", "keys_view", "mask", "shift", "starts", "untils", "untils_view")

    def __init__(self, keys: npt.NDArray[np.int64], untils: npt.NDArray[np.uint32]) -> None:
        self.keys, self.untils = keys, untils
        self.bitmap, self.mask = _bitmap(keys)
        buckets = max(1, 1 << max(0, math.ceil(math.log2(max(1, len(keys)) / 4))))
        self.shift = 64 - int(math.log2(buckets))
        # starts[b] is the first index whose unsigned hash >> shift is >= b.
        unsigned_tops = (keys.view(np.uint64) ^ np.uint64(_OFFSET)) >> np.uint64(self.shift)
        starts = np.searchsorted(unsigned_tops, np.arange(buckets + 1, dtype=np.uint64))
        self.starts = starts.astype(np.int64).data
        self.keys_view = keys.data
        self.untils_view = untils.data


def _bitmap(keys: npt.NDArray[np.int64]) -> tuple[bytes, int]:
    """One bit per 16 keys (at least 2**16 bits), set at ``hash & mask``."""
    bits = max(1 << 16, 1 << math.ceil(math.log2(max(1, len(keys)) * 16)))
    mask = bits - 1
    flags = np.zeros(bits, dtype=bool)
    flags[keys & mask] = True
    return np.packbits(flags, bitorder="little").tobytes(), mask


class HashedExpirySet:
    """Subjects mapped to the time (Unix seconds) their entry expires."""

    def __init__(self, *, merge_at: int = 65_536, compact_every: float = 60.0) -> None:
        self._merge_at = merge_at
        self._compact_every = compact_every
        self._next_compaction = 0.0
        self._recent: dict[int, float] = {}
        self._segment: Segment | None = None

    def __len__(self) -> int:
        segment = self._segment
        return len(self._recent) + (0 if segment is None else len(segment.keys))

    def get(self, subject: str) -> float | None:
        """The expiry of ``subject``'s entry, or None."""
        key = hash(subject)
        until = self._recent.get(key)
        segment = self._segment
        if until is not None or segment is None:
            return until
        position = key & segment.mask
        if not (segment.bitmap[position >> 3] >> (position & 7)) & 1:
            return None
        bucket = (key + _OFFSET) >> segment.shift
        high = segment.starts[bucket + 1]
        keys = segment.keys_view
        index = bisect.bisect_left(keys, key, segment.starts[bucket], high)
        if index < high and keys[index] == key:
            return float(segment.untils_view[index])
        return None

    def add(self, subject: str, until: float) -> bool:
        """Record ``subject`` until ``until`` (the later of two wins). True if it changed."""
        key = hash(subject)
        current = self.get(subject)
        if current is not None and current >= until:
            return False
        self._recent[key] = until
        if len(self._recent) >= self._merge_at:
            self.merge(now=0.0)
        return True

    @staticmethod
    def hashed(
        subjects: list[str], untils: list[float]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32]]:
        """Subjects as the arrays hold them: hashes, and expiries in whole seconds."""
        keys = np.fromiter((hash(s) for s in subjects), dtype=np.int64, count=len(subjects))
        expiries = np.ceil(np.asarray(untils, dtype=np.float64)).astype(np.uint32)
        return keys, expiries

    def add_many(self, subjects: list[str], untils: list[float]) -> int:
        """Record many subjects at once (a catch-up): one merge. Returns how many."""
        return self.add_hashed(*self.hashed(subjects, untils))

    def add_hashed(self, keys: npt.NDArray[np.int64], untils: npt.NDArray[np.uint32]) -> int:
        """:meth:`add_many` for subjects already :meth:`hashed`."""
        if not len(keys):
            return 0
        self.merge(now=0.0, keys=keys, untils=untils)
        return len(keys)

    def merge(
        self,
        now: float,
        keys: npt.NDArray[np.int64] | None = None,
        untils: npt.NDArray[np.uint32] | None = None,
    ) -> int:
        """Move recent entries (and ``keys``/``untils``, if given) into the arrays,
        dropping entries expired by ``now``. Returns how many expired were dropped.
        """
        old_keys, old_untils = (
            (_EMPTY_KEYS, _EMPTY_UNTILS)
            if self._segment is None
            else (self._segment.keys, self._segment.untils)
        )
        recent = self._recent
        new_keys = np.fromiter(recent.keys(), dtype=np.int64, count=len(recent))
        new_untils = np.fromiter(
            (math.ceil(u) for u in recent.values()), dtype=np.uint32, count=len(recent)
        )
        extra_keys = _EMPTY_KEYS if keys is None else keys
        extra_untils = _EMPTY_UNTILS if untils is None else untils
        all_keys = np.concatenate((old_keys, extra_keys, new_keys))
        all_untils = np.concatenate((old_untils, extra_untils, new_untils))
        # Newest last, so that for a repeated key the later-merged (longer) expiry
        # can win; then keep the largest expiry per key.
        order = np.lexsort((all_untils, all_keys))
        all_keys, all_untils = all_keys[order], all_untils[order]
        last_of_key = np.ones(len(all_keys), dtype=bool)
        last_of_key[:-1] = all_keys[1:] != all_keys[:-1]
        live = last_of_key & (all_untils > now)
        dropped = int(np.count_nonzero(last_of_key & ~live))
        all_keys, all_untils = all_keys[live], all_untils[live]
        if len(all_keys):
            self._segment = Segment(all_keys, all_untils)
        else:
            self._segment = None
        self._recent = {}  # only after the segment holds them (single writer)
        return dropped

    def sweep(self, now: float) -> int:
        """Drop recent entries expired by ``now``, and compact the arrays at most
        every ``compact_every`` seconds (expired entries there match no valid
        token; they only take room). Returns how many were dropped."""
        expired = [key for key, until in self._recent.items() if until <= now]
        for key in expired:
            del self._recent[key]
        segment = self._segment
        if (
            segment is not None
            and now >= self._next_compaction
            and int(segment.untils.min()) <= now
        ):
            self._next_compaction = now + self._compact_every
            return len(expired) + self.merge(now)
        return len(expired)
