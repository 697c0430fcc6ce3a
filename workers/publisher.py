"""The publisher worker: ``python -m workers.publisher``.

Configured from ``REVOCATION_*`` environment variables (see
``revocation.Settings``). Stops cleanly on SIGTERM or SIGINT, within about one
heartbeat interval.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from revocation import ConfigError, Publisher, Settings


def run(settings: Settings) -> int:
    """Run a publisher in this process until SIGTERM/SIGINT; returns an exit code."""
    publisher = Publisher(settings)

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("revocation.worker").info("signal %d: stopping", signum)
        publisher.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        publisher.run()
    finally:
        publisher.close()
    return 0


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("REVOCATION_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        settings = Settings()
    except ConfigError as exc:
        print(f"revocation worker: {exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
