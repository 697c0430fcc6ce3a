"""The ``revocation`` command: worker, issue, revoke, status, demo.

Settings come from ``REVOCATION_*`` environment variables; ``--redis-url`` and
``--namespace`` override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .errors import RevocationError
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

    return run(_settings(args))


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
        revocation = revoker.revoke(**target, reason=args.reason)
    print(revocation.model_dump_json())
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    topology = Topology(settings)
    client: Any = topology.client("admin")
    try:
        store = Store(client, settings.namespace)
        counts = store.counts()
        numsub = "PUBSUB SHARDNUMSUB" if topology.sharded else "PUBSUB NUMSUB"
        reply = client.execute_command(numsub, store.keys.channel)
        # redis-py pairs up NUMSUB's reply; SHARDNUMSUB's comes flat.
        subscribers = int(reply[0][1] if isinstance(reply[0], tuple | list) else reply[1])
    finally:
        client.close()
    if args.json:
        print(json.dumps({**counts, "subscribers": subscribers}))
        return 0
    rows = [
        ("namespace", settings.namespace),
        ("committed head (seq)", counts["head"]),
        ("relayed up to", counts["relayed"]),
        ("live log entries", counts["log"]),
        ("records: token", counts["token"]),
        ("records: session", counts["session"]),
        ("records: user", counts["user"]),
        ("records: all", counts["all"]),
        ("subscribed processes", subscribers),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
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
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run the publisher worker until SIGTERM")
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
    revoke.set_defaults(func=_revoke)

    status = commands.add_parser("status", help="the store's head, records and subscribers")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_status)

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
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(args.func(args))
    except (RevocationError, ValueError) as exc:
        print(f"revocation {args.command}: {exc}", file=sys.stderr)
        return 2
