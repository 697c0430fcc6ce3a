"""Any WSGI framework: a bare WSGI app behind ``RevocationWSGIMiddleware``.

    REVOCATION_SIGNING_KEY=... REVOCATION_EVENT_KEY=... python examples/wsgi_app.py

``GET /whoami`` with ``Authorization: Bearer <token>`` (or the cookie): 200 with
the user, 401 with a reason (missing, invalid, expired, revoked), or 503 while
revocation state is unavailable under the ``deny`` policy. ``GET /healthz`` is
exempt and reports the client's state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

from revocation import RevocationClient, Settings
from revocation.middleware import WSGI_SESSION_KEY, RevocationWSGIMiddleware

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
client = RevocationClient(Settings())


def whoami(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/healthz":
        status = client.status()
        body = {"fresh": status.fresh, "applied_seq": status.applied_seq}
    else:
        session = environ[WSGI_SESSION_KEY]
        body = {"user_id": session.user_id, "session_handle": session.session_handle}
    start("200 OK", [("Content-Type", "application/json"), ("X-Pid", str(os.getpid()))])
    return [json.dumps(body).encode()]


app = RevocationWSGIMiddleware(whoami, client, check_database=True, exempt_paths=["/healthz"])

if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    with client, make_server("127.0.0.1", port, app) as server:
        print(f"serving on 127.0.0.1:{port}")
        server.serve_forever()
