"""Redis connections, one configuration per purpose.

redis-py 8 retries a failed command 10 times with backoff by default (a GET
on a dead server took 4 s here). That is right for nobody on the request
path, so each purpose gets its own client:

- ``fallback``: the stale client's point check; timeouts of
  ``fallback_timeout`` and no retries at all.
- ``listener``: the pub/sub connection; no retries (the listener reconnects
  and resyncs itself, so a silent redis-py reconnect cannot lose events).
- ``admin`` and ``worker``: a few quick retries; a retried commit can at worst
  commit the same revocation twice, which is harmless.
"""

from __future__ import annotations

from typing import Any, Literal

from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from .settings import Settings

Purpose = Literal["admin", "worker", "fallback", "listener", "presence"]


def options(settings: Settings, purpose: Purpose) -> dict[str, Any]:
    """Connection options for ``purpose`` (timeouts and retry policy)."""
    if purpose == "fallback":
        timeout = settings.fallback_timeout
        return {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
    if purpose == "presence":
        # A client's presence reports: its own thread, a missed report is retried
        # at the next one.
        return {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 1.0,
            "retry": Retry(NoBackoff(), 0),
        }
    if purpose == "listener":
        return {
            "socket_timeout": settings.max_staleness,
            "socket_connect_timeout": max(settings.max_staleness, 1.0),
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
            # The listener reads raw replies; RESP2 gives pub/sub messages as
            # plain arrays (RESP3 would route them to a push handler).
            "protocol": 2,
        }
    return {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
    }
