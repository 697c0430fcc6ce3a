"""Logging helpers: stable logger names, and warnings that cannot flood a log."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any


class ThrottledLogger:
    """Logs one warning per ``key`` per ``every`` seconds, counting the rest.

    Hostile input (a flood of forged bus messages) must not turn into a flood
    of log lines; the count of what was suppressed goes with the next line.
    """

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._logger = logger
        self._every = every
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._every) < self._every:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        suffix = f" ({more} more since the last report)" if more else ""
        self._logger.warning(message + suffix, *args, extra={"reason": key})
