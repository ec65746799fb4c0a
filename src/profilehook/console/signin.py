"""Signing in with a key and out again (console/session.py holds what the cookie is)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from profilehook import keys
from profilehook.api.access import ScopedRoute
from profilehook.console.session import COOKIE
from profilehook.console.web import Console, Viewer, cross_site, form_of, redirect
from profilehook.constants import SCOPE_READ


def signin_routes(console: Console) -> list[ScopedRoute]:
    async def login_form(request: Request) -> Response:
        if await console.viewer(request) is not None:
            return redirect(_next(request.query_params.get("next")))
        return _form(console, request, request.query_params.get("next"), None, 200)

    async def login(request: Request) -> Response:
        form = await form_of(request)
        wanted = form.get("next")
        reason = cross_site(request, console.services.settings.public_url)
        if reason is None and not console.sessions.login_token_valid(
            form.get("csrf_token"), int(time.time())
        ):
            reason = "This form has expired: sign in again."
        if reason is not None:
            return _form(console, request, wanted, reason, 403)
        key = form.get("key", "").strip()
        header = f"Bearer {key}".encode("latin-1", "replace")
        grant = await keys.authenticate(console.store, header)
        if grant is None:
            return _form(console, request, wanted, "Invalid API Key", 401)
        if not grant.allows(SCOPE_READ):
            return _form(console, request, wanted, "This key lacks the 'read' scope", 403)
        key_hash = keys.key_hash_of(header)
        assert key_hash is not None  # authenticate found it
        response = redirect(_next(wanted))
        response.set_cookie(
            COOKIE,
            console.sessions.issue(key_hash, int(time.time())),
            max_age=console.sessions.lifetime_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=_https(console, request),
        )
        return response

    async def logout(request: Request, viewer: Viewer) -> Response:
        response = redirect(LOGIN)
        response.delete_cookie(
            COOKIE, path="/", httponly=True, samesite="strict", secure=_https(console, request)
        )
        return response

    return [
        console.public(LOGIN, login_form),
        console.public(LOGIN, login, methods=["POST"]),
        console.page("/console/logout", logout, methods=["POST"], admin=False),
    ]


LOGIN = "/console/login"


def _form(
    console: Console, request: Request, wanted: str | None, error: str | None, status: int
) -> Response:
    token = console.sessions.login_token(int(time.time()))
    return console.render(
        request, None, "login.html", status=status, error=error, next=_next(wanted), csrf=token
    )


def _next(wanted: str | None) -> str:
    """Where to go after signing in: a path of this site only (never ``//elsewhere``)."""
    if wanted and wanted.startswith("/") and not wanted.startswith("//") and "\\" not in wanted:
        return wanted
    return "/"


def _https(console: Console, request: Request) -> bool:
    return request.url.scheme == "https" or console.services.settings.public_url.startswith(
        "https:"
    )
