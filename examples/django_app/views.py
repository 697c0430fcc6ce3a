"""Views of the Django example: function, async and class-based, as users write them."""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from revocation import Revoker, TokenIssuer
from revocation.django import build_settings, verify_session

settings = build_settings()
issuer = TokenIssuer(settings)
revoker = Revoker(settings)
ADMIN_KEY = os.environ.get("REVOCATION_ADMIN_KEY", "")


def with_pid(response: HttpResponse) -> HttpResponse:
    response["X-Pid"] = str(os.getpid())
    return response


@csrf_exempt
def login(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body)
    token = issuer.issue(body["user_id"], session_handle=body.get("session_handle"))
    response = JsonResponse({"access_token": token})
    response.set_cookie(settings.cookie_name, token, httponly=True, samesite="Strict")
    return with_pid(response)


@verify_session
def profile(request: HttpRequest) -> HttpResponse:
    session = request.revocation_session  # type: ignore[attr-defined]
    return with_pid(JsonResponse({"user_id": session.user_id}))


@csrf_exempt
@verify_session(check_database=True)
async def transfer(request: HttpRequest) -> HttpResponse:
    session = request.revocation_session  # type: ignore[attr-defined]
    return with_pid(JsonResponse({"ok": True, "user_id": session.user_id}))


@verify_session(check_database=True)
class AccountView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        session = request.revocation_session  # type: ignore[attr-defined]
        return with_pid(JsonResponse({"user_id": session.user_id, "view": "class"}))


@csrf_exempt
def admin_revoke(request: HttpRequest) -> HttpResponse:
    given = request.headers.get("X-Admin-Key", "")
    if not ADMIN_KEY or not hmac.compare_digest(given, ADMIN_KEY):
        return with_pid(JsonResponse({"message": "admin key required"}, status=403))
    target: dict[str, Any] = json.loads(request.body)
    try:
        revocation = revoker.revoke(**target)
    except (TypeError, ValueError) as exc:
        return with_pid(JsonResponse({"message": str(exc)}, status=400))
    return with_pid(JsonResponse(revocation.model_dump()))
