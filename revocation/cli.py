"""The ``revocation`` command: worker, issue, revoke, status, watch, demo.

Settings come from ``REVOCATION_*`` environment variables; ``--redis-url`` and
``--namespace`` override them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from . import presence
from .errors import PropagationTimeout, RevocationError
from .logs import configure_logging
from .revoker import Revoker
from .settings import Settings
from .store import Store
from .tokens import TokenIssuer
from .topology import Topology


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.redis_url:
        overrides["redis_url"] = args.redis_url
    if args.namespace:
        overrides["namespace"] = args.namespace
    return Settings(**overrides)


def _worker(args: argparse.Namespace) -> int:
    from workers.publisher import run  # noqa: PLC0415  (the entry point wires the worker)

    return run(_settings(args), metrics_port=args.metrics_port, metrics_host=args.metrics_host)


def _issue(args: argparse.Namespace) -> int:
    issuer = TokenIssuer(_settings(args))
    print(issuer.issue(args.user, session_handle=args.session, ttl=args.ttl))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    target: dict[str, Any] = {
        "token": args.token,
        "jti": args.jti,
        "session_handle": args.session,
        "user_id": args.user,
        "everyone": args.everyone,
    }
    with Revoker(_settings(args)) as revoker:
        started = time.monotonic()
        try:
            revocation = revoker.revoke(**target, reason=args.reason, wait=args.wait)
        except PropagationTimeout as exc:
            print(exc.revocation.model_dump_json())
            print(f"revocation revoke: {exc}", file=sys.stderr)
            return 3
        took = time.monotonic() - started
        print(revocation.model_dump_json())
        if args.wait is not None:
            live = revoker.live_clients()
            print(
                f"applied by all {len(live)} live clients {took * 1000:.1f} ms after the call",
                file=sys.stderr,
            )
    return 0


def gather(settings: Settings) -> dict[str, Any]:
    """Everything ``status`` shows: the store, the channel, workers and clients."""
    topology = Topology(settings)
    client: Any = topology.client("admin")
    try:
        store = Store(client, settings.namespace)
        counts = store.counts()
        numsub = "PUBSUB SHARDNUMSUB" if topology.sharded else "PUBSUB NUMSUB"
        reply = client.execute_command(numsub, store.keys.channel)
        # redis-py pairs up NUMSUB's reply; SHARDNUMSUB's comes flat.
        subscribers = int(reply[0][1] if isinstance(reply[0], tuple | list) else reply[1])
        workers, _ = presence.members(client, store.keys, "worker")
        clients, dead = presence.members(client, store.keys, "client")
    finally:
        client.close()
    return {
        "namespace": settings.namespace,
        "topology": topology.kind,
        **counts,
        "backlog": max(0, counts["head"] - counts["relayed"]),
        "subscribers": subscribers,
        "workers": [m.to_json() for m in workers],
        "clients": [m.to_json() for m in clients],
        "dead_entries": len(dead),
    }


def render(state: dict[str, Any]) -> Group:
    """``status`` as rich tables: the store, the workers, every live client."""
    store = Table(title=f"revocation: {state['namespace']} ({state['topology']})", box=None)
    store.add_column("store", style="bold")
    store.add_column("", justify="right")
    for name, value in (
        ("committed head (seq)", state["head"]),
        ("relayed up to", state["relayed"]),
        ("outbox backlog", state["backlog"]),
        ("live log entries", state["log"]),
        ("records: token / session / user / all",
         f"{state['token']} / {state['session']} / {state['user']} / {state['all']}"),
        ("subscribers on the master", state["subscribers"]),
    ):  # fmt: skip
        store.add_row(name, str(value))
    workers = Table(title=f"workers ({len(state['workers'])})")
    for column in ("id", "relayed", "head", "reported"):
        workers.add_column(column, justify="left" if column == "id" else "right", no_wrap=True)
    for worker in state["workers"]:
        workers.add_row(
            worker["id"],
            str(worker["applied_seq"]),
            str(worker["head_seq"]),
            f"{worker['age']:.1f}s ago",
        )
    clients = Table(title=f"clients ({len(state['clients'])} live)")
    for column in ("id", "node", "applied", "lag", "state", "entries", "reported"):
        left = column in ("id", "node", "state")
        clients.add_column(column, justify="left" if left else "right", no_wrap=True)
    for client in state["clients"]:
        lagging = client["lag"] > 0 or not client["fresh"]
        clients.add_row(
            client["id"],
            str(client["node"] or "-"),
            str(client["applied_seq"]),
            str(client["lag"]),
            "[green]fresh[/green]" if client["fresh"] else "[red]stale[/red]",
            str(client["size"]),
            f"{client['age']:.1f}s ago",
            style="yellow" if lagging else None,
        )
    return Group(store, workers, clients)


def _console() -> Console:
    # Piped or logged, a table keeps whole ids rather than the 80 columns rich assumes.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _status(args: argparse.Namespace) -> int:
    state = gather(_settings(args))
    if args.json:
        print(json.dumps(state))
        return 0
    _console().print(render(state))
    return 0


def _watch(args: argparse.Namespace) -> int:
    settings = _settings(args)
    shown = 0
    with Live(render(gather(settings)), console=_console(), auto_refresh=False) as live:
        shown = 1
        try:
            while args.count is None or shown < args.count:
                time.sleep(args.interval)  # the refresh period of a display, not a synchronisation
                live.update(render(gather(settings)), refresh=True)
                shown += 1
        except KeyboardInterrupt:
            pass
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # noqa: PLC0415  (starts processes; only when asked)

    return run_demo(processes=args.processes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revocation",
        description="Near-instant JWT revocation: worker, admin and demo commands. "
        "Configured from REVOCATION_* environment variables.",
    )
    parser.add_argument("--redis-url", help="overrides REVOCATION_REDIS_URL")
    parser.add_argument("--namespace", help="overrides REVOCATION_NAMESPACE")
    parser.add_argument("--log-level", default=os.environ.get("REVOCATION_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("REVOCATION_LOG_FORMAT", "text"),
        help="json: one JSON object per line (also REVOCATION_LOG_FORMAT)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run the publisher worker until SIGTERM")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ["REVOCATION_METRICS_PORT"])
        if os.environ.get("REVOCATION_METRICS_PORT")
        else None,
        help="serve /metrics and /healthz on this port (needs the metrics extra)",
    )
    worker.add_argument(
        "--metrics-host",
        default=os.environ.get("REVOCATION_METRICS_HOST", "127.0.0.1"),
        help="address to serve them on (default 127.0.0.1)",
    )
    worker.set_defaults(func=_worker)

    issue = commands.add_parser("issue", help="issue an access token (needs signing_key)")
    issue.add_argument("user", help="the user id (sub)")
    issue.add_argument("--session", help="session handle (sid); new when omitted")
    issue.add_argument("--ttl", type=float, help="seconds; at most access_token_ttl")
    issue.set_defaults(func=_issue)

    revoke = commands.add_parser("revoke", help="revoke one target; prints the committed record")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--token", help="a token (its signature is verified)")
    target.add_argument("--jti", help="a token id")
    target.add_argument("--session", help="a session handle: every token of the session")
    target.add_argument("--user", help="a user id: every token of the user issued before now")
    target.add_argument("--everyone", action="store_true", help="every token issued before now")
    revoke.add_argument("--reason", help="free text kept with the record")
    revoke.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="return once every live client applied it; exit 3 naming those behind if not",
    )
    revoke.set_defaults(func=_revoke)

    status = commands.add_parser(
        "status", help="the store, the workers and every live client with its lag"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_status)

    watch = commands.add_parser("watch", help="status, refreshed until Ctrl-C")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    watch.add_argument("--count", type=int, help="stop after this many refreshes")
    watch.set_defaults(func=_watch)

    demo = commands.add_parser(
        "demo",
        help="start Redis (unless REVOCATION_REDIS_URL is set), a worker and app processes, "
        "revoke one token of each kind and show how long each process took to reject it",
    )
    demo.add_argument("--processes", type=int, default=4, help="app processes (default 4)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(str(args.log_level), json=args.log_format == "json")
    try:
        return int(args.func(args))
    except (RevocationError, ValueError) as exc:
        print(f"revocation {args.command}: {exc}", file=sys.stderr)
        return 2
