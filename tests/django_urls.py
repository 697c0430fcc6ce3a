"""URLs and views for the Django tests: every kind of view users write."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views import View

from revocation.django import aget_session, get_session, verify_session


def user_of(request: HttpRequest) -> Any:
    session = request.revocation_session  # type: ignore[attr-defined]
    return session.user_id if session else None


@verify_session
def private(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"user": user_of(request)})


@verify_session(check_database=True)
def db(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"user": user_of(request)})


@verify_session(check_database=True)
async def async_db(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"user": user_of(request), "async": True})


@verify_session(check_database=True)
class ClassView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return JsonResponse({"user": user_of(request), "view": "class"})


@verify_session(check_database=True)
class AsyncClassView(View):
    async def get(self, request: HttpRequest) -> HttpResponse:
        return JsonResponse({"user": user_of(request), "view": "async class"})


def optional(request: HttpRequest) -> HttpResponse:
    session = get_session(request, check_database=True)
    return JsonResponse({"user": session.user_id if session else None})


async def async_optional(request: HttpRequest) -> HttpResponse:
    session = await aget_session(request, check_database=True)
    return JsonResponse({"user": session.user_id if session else None})


def teapot(exc: Exception) -> HttpResponse:
    return JsonResponse({"error": getattr(exc, "code", "?")}, status=418)


urlpatterns = [
    path("private", private),
    path("db", db),
    path("async-db", async_db),
    path("class", ClassView.as_view()),
    path("async-class", AsyncClassView.as_view()),
    path("optional", optional),
    path("async-optional", async_optional),
]
