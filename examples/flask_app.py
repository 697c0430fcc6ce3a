"""A Flask app protected by revocation.

    REVOCATION_SIGNING_KEY=... REVOCATION_EVENT_KEY=... REVOCATION_ADMIN_KEY=... \
        gunicorn --workers 2 examples.flask_app:app

Same routes as ``examples/fastapi_app.py``: ``POST /login``, ``GET /profile``
(stateless), ``POST /transfer`` (``check_database=True``), ``POST
/admin/revoke`` (``X-Admin-Key``). Every response carries ``X-Pid``.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from flask import Flask, Response, abort, g, jsonify, request

from revocation import PropagationTimeout, Revoker, Settings, TokenIssuer
from revocation.flask import FlaskRevocation, verify_session

settings = Settings()
app = Flask(__name__)
FlaskRevocation(app, settings)
issuer = TokenIssuer(settings)
revoker = Revoker(settings)
ADMIN_KEY = os.environ.get("REVOCATION_ADMIN_KEY", "")


@app.after_request
def add_pid(response: Response) -> Response:
    response.headers["X-Pid"] = str(os.getpid())
    return response


@app.post("/login")
def login() -> Any:
    body = request.get_json(force=True)
    token = issuer.issue(body["user_id"], session_handle=body.get("session_handle"))
    response = jsonify(access_token=token)
    response.set_cookie(settings.cookie_name, token, httponly=True, samesite="Strict")
    return response


@app.get("/profile")
@verify_session()
def profile() -> Any:
    session = g.revocation_session
    return {"user_id": session.user_id, "session_handle": session.session_handle}


@app.post("/transfer")
@verify_session(check_database=True)
def transfer() -> Any:
    return {"ok": True, "user_id": g.revocation_session.user_id}


@app.post("/admin/revoke")
def admin_revoke() -> Any:
    if not ADMIN_KEY or not hmac.compare_digest(request.headers.get("X-Admin-Key", ""), ADMIN_KEY):
        abort(403)
    try:
        revocation = revoker.revoke(**request.get_json(force=True))
    except (TypeError, ValueError) as exc:
        return {"message": str(exc)}, 400
    except PropagationTimeout as exc:  # with "wait": some app processes are behind
        return {"message": str(exc), "behind": [m.id for m in exc.behind]}, 504
    return revocation.model_dump()
