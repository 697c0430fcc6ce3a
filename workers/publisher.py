"""The publisher worker: ``python -m workers.publisher``.

Configured from ``REVOCATION_*`` environment variables (see
``revocation.Settings``); ``REVOCATION_METRICS_PORT`` (and
``REVOCATION_METRICS_HOST``, default 127.0.0.1) serve ``/metrics`` and
``/healthz``; ``REVOCATION_LOG_FORMAT=json`` logs JSON lines. Stops cleanly on
SIGTERM or SIGINT, within about one heartbeat interval.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from revocation import ConfigError, Publisher, Settings
from revocation.logs import configure_logging


def run(
    settings: Settings, *, metrics_port: int | None = None, metrics_host: str = "127.0.0.1"
) -> int:
    """Run a publisher in this process until SIGTERM/SIGINT; returns an exit code.

    With ``metrics_port``, also serve ``/metrics`` and ``/healthz`` there (needs
    the ``metrics`` extra).
    """
    publisher = Publisher(settings)
    server = None
    if metrics_port is not None:
        try:
            from revocation.metrics import register_worker, serve, unregister  # noqa: PLC0415
        except ImportError as exc:
            publisher.close()
            raise ConfigError(
                'metrics need prometheus_client: pip install "revocation[metrics]"'
            ) from exc
        collector = register_worker(publisher)
        server = serve(host=metrics_host, port=metrics_port, health=publisher.healthy)
        logging.getLogger("revocation.worker").info(
            "serving /metrics and /healthz on %s:%d",
            metrics_host,
            server.port,
            extra={"metrics_host": metrics_host, "metrics_port": server.port},
        )

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("revocation.worker").info("signal %d: stopping", signum)
        publisher.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        publisher.run()
    finally:
        if server is not None:
            server.stop()
            unregister(collector)
        publisher.close()
    return 0


def main() -> int:
    configure_logging(
        os.environ.get("REVOCATION_LOG_LEVEL", "INFO"),
        json=os.environ.get("REVOCATION_LOG_FORMAT", "text") == "json",
    )
    try:
        settings = Settings()
        port = os.environ.get("REVOCATION_METRICS_PORT")
        return run(
            settings,
            metrics_port=int(port) if port else None,
            metrics_host=os.environ.get("REVOCATION_METRICS_HOST", "127.0.0.1"),
        )
    except (ConfigError, ValueError) as exc:
        print(f"revocation worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
