"""Prometheus metrics for clients and workers (``pip install "revocation[metrics]"``).

Both collectors read state the client and the worker keep anyway, at scrape
time: nothing is added to the request path. Names (all prefixed
``revocation_``) are listed in ``docs/operations.md`` with the alert to set on
each.

- Clients: ``register_client(client)`` (or ``Settings(metrics=True)``, which
  registers every started client in the default registry); expose the
  registry as the app already does (``prometheus_client.make_asgi_app()``,
  ``make_wsgi_app()``), or with :func:`serve`.
- Workers: ``revocation worker --metrics-port 9108`` serves ``/metrics`` and
  ``/healthz`` (see :func:`serve`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import presence

if TYPE_CHECKING:
    from .client import RevocationClient
    from .worker import Publisher

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _gauge(name: str, doc: str, value: float, labels: dict[str, str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, doc: str, value: float, labels: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


class ClientCollector(Collector):
    """A client's state as Prometheus metrics, labelled with its namespace."""

    def __init__(self, client: RevocationClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        client = self._client
        status = client.status()
        labels = {"namespace": client.settings.namespace}
        yield _gauge(
            "revocation_client_applied_seq",
            "Every revocation up to this seq is applied here.",
            status.applied_seq,
            labels,
        )
        yield _gauge(
            "revocation_client_head_seq",
            "The store's committed head as last heard here.",
            status.head_seq,
            labels,
        )
        yield _gauge(
            "revocation_client_lag",
            "Revocations committed but not yet applied here (head - applied).",
            max(0, status.head_seq - status.applied_seq),
            labels,
        )
        yield _gauge(
            "revocation_client_fresh",
            "1 while check_database=True is answered locally, 0 while stale.",
            int(status.fresh),
            labels,
        )
        yield _gauge(
            "revocation_client_connected",
            "1 while the listener holds a subscription.",
            int(status.connected),
            labels,
        )
        yield _gauge(
            "revocation_client_heartbeat_age_seconds",
            "Seconds since the last heartbeat (NaN before the first).",
            float("nan") if status.last_heartbeat_age is None else status.last_heartbeat_age,
            labels,
        )
        yield _gauge(
            "revocation_client_cache_entries",
            "Active revocations held in memory.",
            status.size,
            labels,
        )
        for name, value, doc in (
            ("store_fallbacks", status.fallbacks, "check_database=True answered by the store."),
            ("stale_denied", status.stale_denied, "Requests denied: stale and store unreachable."),
            ("stale_allowed", status.stale_allowed, "Requests allowed by stale_policy=allow."),
            ("reconnects", status.reconnects, "Listener reconnections."),
            ("catch_ups", status.catch_ups, "Catch-ups from the store."),
            ("rebases", status.rebases, "Full reloads after the store's history forked."),
        ):
            yield _counter(f"revocation_client_{name}", doc, value, labels)
        dropped = CounterMetricFamily(
            "revocation_client_dropped_messages",
            "Bus messages dropped, by reason.",
            labels=["namespace", "reason"],
        )
        for reason, count in sorted(status.dropped_messages.items()):
            dropped.add_metric([labels["namespace"], reason], count)
        yield dropped
        snapshot = client.propagation
        cumulative, buckets = 0, []
        for bound, count in zip((*snapshot.buckets, float("inf")), snapshot.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        histogram = HistogramMetricFamily(
            "revocation_propagation_delay_seconds",
            "From revoked_at (Redis clock) to receipt here, per revocation received on the bus.",
            labels=["namespace"],
        )
        histogram.add_metric([labels["namespace"]], buckets, snapshot.total)
        yield histogram


class WorkerCollector(Collector):
    """A worker's counters, and the fleet it sees in the presence entries."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        # Its own connection, with a short timeout: a scrape while Redis is down
        # must answer (with the worker's own figures) rather than hang.
        self._redis = publisher.topology.client(
            "presence", socket_timeout=1.0, socket_connect_timeout=1.0
        )

    def close(self) -> None:
        self._redis.close()

    def collect(self) -> Iterator[Metric]:
        publisher = self._publisher
        stats = publisher.stats
        labels = {"namespace": publisher.settings.namespace}
        for name, value, doc in (
            ("relayed_events", stats.relayed_events, "Revocations published on the channel."),
            ("frames", stats.frames, "Event frames published."),
            ("heartbeats", stats.heartbeats, "Heartbeats published."),
            ("skipped_events", stats.skipped_events, "Backlog left to clients' catch-ups."),
            ("purged_records", stats.purged_records, "Expired records purged from the store."),
            ("purged_log", stats.purged_log, "Expired log entries purged from the store."),
            ("errors", stats.errors, "Store errors (each followed by a retry)."),
        ):
            yield _counter(f"revocation_worker_{name}", doc, value, labels)
        yield _gauge(
            "revocation_worker_head_seq",
            "The committed head at the last relay.",
            stats.head,
            labels,
        )
        yield _gauge(
            "revocation_worker_outbox_backlog",
            "Committed revocations not yet relayed, at the last relay.",
            stats.backlog,
            labels,
        )
        age = publisher.last_success_age()
        yield _gauge(
            "revocation_worker_last_relay_age_seconds",
            "Seconds since the last successful relay or heartbeat (NaN before the first).",
            float("nan") if age is None else age,
            labels,
        )
        yield _gauge(
            "revocation_worker_healthy",
            "1 while /healthz answers 200.",
            int(publisher.healthy()[0]),
            labels,
        )
        try:
            live, _ = presence.members(self._redis, publisher.store.keys, "client")
        except (redis.RedisError, OSError):
            return  # a scrape must not fail while Redis is down; the gauges above tell
        yield _gauge(
            "revocation_clients_live", "Clients that reported within their ttl.", len(live), labels
        )
        yield _gauge(
            "revocation_clients_stale",
            "Live clients that reported themselves stale.",
            sum(not m.fresh for m in live),
            labels,
        )
        yield _gauge(
            "revocation_clients_max_lag",
            "The largest lag (head - applied) a live client reported.",
            max((m.lag for m in live), default=0),
            labels,
        )


def register_client(
    client: RevocationClient, registry: CollectorRegistry = REGISTRY
) -> ClientCollector:
    """Export ``client``'s metrics from ``registry``; returns the collector."""
    collector = ClientCollector(client)
    collector.registry = registry  # type: ignore[attr-defined]
    registry.register(collector)
    return collector


def register_worker(
    publisher: Publisher, registry: CollectorRegistry = REGISTRY
) -> WorkerCollector:
    """Export ``publisher``'s metrics from ``registry``; returns the collector."""
    collector = WorkerCollector(publisher)
    collector.registry = registry  # type: ignore[attr-defined]
    registry.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    """Undo :func:`register_client` / :func:`register_worker`."""
    getattr(collector, "registry", REGISTRY).unregister(collector)
    if isinstance(collector, WorkerCollector):
        collector.close()


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` over HTTP, from a thread."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        health: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
    ) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE, generate_latest(registry))
                elif path == "/healthz":
                    ok, detail = health() if health is not None else (True, {})
                    body = json.dumps({"status": "ok" if ok else "unhealthy", **detail})
                    self._send(200 if ok else 503, "application/json", body.encode())
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                owner.requests += 1

        self.requests = 0
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="revocation-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    registry: CollectorRegistry = REGISTRY,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    health: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
) -> MetricsServer:
    """Start a :class:`MetricsServer` (port 0: a free one; see ``.port``)."""
    return MetricsServer(registry, host=host, port=port, health=health).start()
