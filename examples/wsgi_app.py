"""A minimal WSGI app (standard library only) protected by ``check_database=True``.

    REVOCATION_SIGNING_KEY=... REVOCATION_EVENT_KEY=... python examples/wsgi_app.py

``GET /whoami`` with ``Authorization: Bearer <token>``: 200 with the user, 401
with a reason (invalid, expired, revoked), or 503 while revocation state is
unavailable under the ``deny`` policy. ``GET /healthz``: the client's status.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

from revocation import RevocationClient, RevocationUnavailable, Settings, Unauthorised

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

client = RevocationClient(Settings())


def respond(
    start: StartResponse, status: str, body: dict[str, Any], *extra: tuple[str, str]
) -> list[bytes]:
    start(status, [("Content-Type", "application/json"), ("X-Pid", str(os.getpid())), *extra])
    return [json.dumps(body).encode()]


def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/healthz":
        status = client.status()
        return respond(
            start,
            "200 OK" if status.fresh else "503 Service Unavailable",
            {
                "fresh": status.fresh,
                "applied_seq": status.applied_seq,
                "head_seq": status.head_seq,
            },
        )
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return respond(
            start,
            "401 Unauthorized",
            {"message": "missing bearer token", "code": "invalid_token"},
            ("WWW-Authenticate", 'Bearer error="invalid_token"'),
        )
    try:
        session = client.verify(token.strip(), check_database=True)
    except Unauthorised as exc:
        return respond(
            start,
            "401 Unauthorized",
            {"message": str(exc), "code": exc.code},
            ("WWW-Authenticate", 'Bearer error="invalid_token"'),
        )
    except RevocationUnavailable as exc:
        return respond(
            start,
            "503 Service Unavailable",
            {"message": str(exc), "code": exc.code},
            ("Retry-After", "1"),
        )
    return respond(start, "200 OK", {"user_id": session.user_id, "session": session.session_handle})


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    with client, make_server("0.0.0.0", port, app) as server:  # noqa: S104 (a container's port)
        print(f"serving on :{port}")
        server.serve_forever()
