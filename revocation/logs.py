"""Logging: stable logger names, structured fields, JSON lines, no floods.

The library logs through the standard :mod:`logging` module, under these
names (stable: filter and route on them):

=========================  ===================================================
``revocation.client``      the request path: stale-policy decisions
``revocation.listener``    the bus: disconnects, dropped messages, rebases
``revocation.presence``    presence reports (debug only)
``revocation.worker``      the publisher worker: start, stop, store errors
=========================  ===================================================

Records carry structured fields as attributes (``extra=``): ``reason`` on
throttled warnings, ``worker``, ``error``, ``head``, ``applied_seq``,
``node``... :class:`JsonFormatter` writes them out; ``revocation`` commands
use it with ``--log-format json`` (or ``REVOCATION_LOG_FORMAT=json``).
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections import Counter
from typing import Any

import orjson

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO", *, json: bool = False) -> None:
    """Send log records to stderr, as text or as JSON lines (for the commands)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


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

    def warning(
        self, key: str, message: str, *args: Any, extra: dict[str, Any] | None = None
    ) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._every) < self._every:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        suffix = f" ({more} more since the last report)" if more else ""
        fields = {**(extra or {}), "reason": key, "suppressed": more}
        self._logger.warning(message + suffix, *args, extra=fields)
