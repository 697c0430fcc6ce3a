"""A FastAPI app protected by revocation.

    REVOCATION_SIGNING_KEY=... REVOCATION_EVENT_KEY=... REVOCATION_ADMIN_KEY=... \
        uvicorn examples.fastapi_app:app --workers 2

- ``POST /login`` ``{"user_id": "alice"}``: a token (also set as a cookie).
  A real app checks a password or a refresh token first.
- ``GET /profile``: stateless verification (``check_database=False``).
- ``POST /transfer`` and ``GET /balance``: verification with ``check_database=True``.
- ``POST /admin/revoke`` with ``X-Admin-Key``: one of ``{"token"|"jti"|
  "session_handle"|"user_id": ..., "everyone": true}``, and ``"wait": 2`` to answer
  only once every live app process applied it (504 naming those behind if not).
- ``GET /metrics`` with ``REVOCATION_METRICS=true``: this process's client metrics.

Every response carries ``X-Pid``, the serving worker process.
"""

from __future__ import annotations

import hmac
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response

from revocation import PropagationTimeout, Revoker, Session, Settings, TokenIssuer
from revocation.fastapi import init_app, verify_session

settings = Settings()
app = FastAPI(title="revocation example")
init_app(app, settings)
if settings.metrics:
    from prometheus_client import make_asgi_app

    app.mount("/metrics", make_asgi_app())
issuer = TokenIssuer(settings)
revoker = Revoker(settings)
ADMIN_KEY = os.environ.get("REVOCATION_ADMIN_KEY", "")


@app.middleware("http")
async def add_pid(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    response.headers["X-Pid"] = str(os.getpid())
    return response


@app.post("/login")
async def login(body: dict[str, str], response: Response) -> dict[str, str]:
    token = issuer.issue(body["user_id"], session_handle=body.get("session_handle"))
    response.set_cookie(settings.cookie_name, token, httponly=True, samesite="strict")
    return {"access_token": token}


@app.get("/profile")
async def profile(session: Annotated[Session, Depends(verify_session())]) -> dict[str, Any]:
    return {"user_id": session.user_id, "session_handle": session.session_handle}


@app.post("/transfer")
async def transfer(
    session: Annotated[Session, Depends(verify_session(check_database=True))],
) -> dict[str, Any]:
    return {"ok": True, "user_id": session.user_id}


@app.get("/balance")
async def balance(
    session: Annotated[Session, Depends(verify_session(check_database=True))],
) -> dict[str, Any]:
    return {"user_id": session.user_id, "balance": 100}


@app.post("/admin/revoke")
async def admin_revoke(
    body: dict[str, Any], x_admin_key: Annotated[str, Header()] = ""
) -> dict[str, Any]:
    if not ADMIN_KEY or not hmac.compare_digest(x_admin_key, ADMIN_KEY):
        raise HTTPException(status_code=403, detail="admin key required")
    try:
        revocation = await revoker.arevoke(**body)
    except (TypeError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    except PropagationTimeout as exc:
        raise HTTPException(
            status_code=504, detail={"error": str(exc), "behind": [m.id for m in exc.behind]}
        ) from exc
    return revocation.model_dump()
