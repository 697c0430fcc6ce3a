"""A fixed-bucket histogram of seconds, cheap enough for the listener thread.

Kept by every client for the propagation delay (the revocation's
``revoked_at``, on the Redis server's clock, to the moment this process
received it). :mod:`revocation.metrics` exports it as a Prometheus histogram;
this module needs no Prometheus library.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

DELAY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds in seconds (and +Inf): from half a millisecond to a catch-up's seconds."""


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    """Per bucket, not cumulative; one more than ``buckets`` (the +Inf bucket)."""
    total: float
    count: int

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None when empty)."""
        if not self.count:
            return None
        rank, seen = q * self.count, 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")


class Histogram:
    """Counts per bucket, a sum and a count. One writer at a time; readers take snapshots."""

    def __init__(self, buckets: tuple[float, ...] = DELAY_BUCKETS) -> None:
        self._buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._total = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._buckets, value)] += 1
        self._total += value
        self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self._buckets, tuple(self._counts), self._total, self._count)
