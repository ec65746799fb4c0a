"""What every console page shares: who is looking (the session's key, checked on each request),
the same-origin and CSRF checks on every form, rendering with autoescaped templates, and the
security headers of every answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from profilehook.api.access import ScopedRoute
from profilehook.console.session import COOKIE, Session, Sessions
from profilehook.constants import SCOPE_ADMIN, SCOPE_READ
from profilehook.errors import ProfilehookError
from profilehook.service import Services
from profilehook.stores.base import KeyGrant

MAX_FORM_BYTES = 64 * 1024
# The navigation: (path, title, admin only).
NAV: tuple[tuple[str, str, bool], ...] = (
    ("/", "Overview", False),
    ("/console/live", "Live events", False),
    ("/console/contacts", "Contacts", False),
    ("/console/segments", "Segments", False),
    ("/console/sources", "Sources", True),
    ("/console/keys", "Keys", True),
    ("/console/destinations", "Destinations", True),
    ("/console/reference", "API reference", False),
)
LOGIN_PATH = "/console/login"

# Scripts only from this origin's files (no inline script, no eval); no framing; forms post here.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    """The signed-in key of a request: its grant, and the session's CSRF token."""

    grant: KeyGrant
    session: Session
    csrf_token: str

    @property
    def workspace(self) -> str:
        return self.grant.workspace

    @property
    def admin(self) -> bool:
        return self.grant.allows(SCOPE_ADMIN)


PageEndpoint = Callable[[Request, Viewer], Awaitable[Response]]


class Console:
    """The console's shared parts, built once per app."""

    def __init__(self, services: Services, sessions: Sessions | None = None):
        self.services = services
        self.store = services.store
        self.sessions = sessions or Sessions.from_settings(services.settings)
        self.templates = Environment(
            loader=PackageLoader("profilehook.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
        )
        self.templates.filters["q"] = lambda value: quote(str(value), safe="")
        # Set when the server stops: open event streams end (see ``close_streams``).
        self.closing = asyncio.Event()

    def close_streams(self) -> None:
        """End every open live tail: the server is stopping, and waits for open responses."""
        self.closing.set()

    # -- routes ------------------------------------------------------------------------------

    def page(
        self,
        path: str,
        endpoint: PageEndpoint,
        *,
        methods: Sequence[str] = ("GET",),
        admin: bool | None = None,
    ) -> ScopedRoute:
        """A route for signed-in viewers. ``admin`` (by default: when it takes a POST) needs
        an admin key for its POST, and a POST must come from this console's own page with its
        CSRF token."""
        changes = any(m not in ("GET", "HEAD") for m in methods)
        needs_admin = changes if admin is None else admin

        async def checked(request: Request) -> Response:
            viewer = await self.viewer(request)
            if viewer is None:
                if changes:
                    return self.refusal(request, None, "Sign in again: your session has ended.")
                return RedirectResponse(
                    f"{LOGIN_PATH}?next={quote(_here(request), safe='')}", status_code=303
                )
            if changes and request.method not in ("GET", "HEAD"):
                reason = await self.forged(request, viewer)
                if reason is not None:
                    return self.refusal(request, viewer, reason)
            if needs_admin and (admin or request.method == "POST") and not viewer.admin:
                return self.refusal(
                    request, viewer, "This key is read-only here: it lacks the 'admin' scope."
                )
            try:
                return await endpoint(request, viewer)
            except ProfilehookError as exc:
                return self.render(
                    request, viewer, "error.html", status=exc.status_code, detail=exc.detail
                )

        checked.__name__ = getattr(endpoint, "__name__", "page")
        return ScopedRoute(
            path, checked, access="session", methods=methods, include_in_schema=False
        )

    def public(self, path: str, endpoint: Any, methods: Sequence[str] = ("GET",)) -> ScopedRoute:
        """A console route for anyone (the sign-in form, the assets)."""
        return ScopedRoute(
            path, endpoint, access="session", methods=methods, include_in_schema=False
        )

    # -- who is looking ----------------------------------------------------------------------

    async def viewer(self, request: Request) -> Viewer | None:
        """The request's signed-in key, when its session is valid and the key is live and may
        read; None otherwise (a revoked key's session ends here, on its next request)."""
        session = self.sessions.read(request.cookies.get(COOKIE), int(time.time()))
        if session is None:
            return None
        grant = await self.store.key_grant(session.key_hash)
        if grant is None or not grant.allows(SCOPE_READ):
            return None
        return Viewer(grant, session, self.sessions.csrf_token(session))

    async def forged(self, request: Request, viewer: Viewer | None) -> str | None:
        """Why a state-changing request is refused as not coming from this console's own form
        (another site, a missing or wrong CSRF token); None when it is fine."""
        reason = cross_site(request, self.services.settings.public_url)
        if reason is not None:
            return reason
        token = request.headers.get("x-csrf-token")
        if token is None:
            token = (await form_of(request)).get("csrf_token")
        if viewer is None:
            valid = self.sessions.login_token_valid(token, int(time.time()))
        else:
            valid = self.sessions.csrf_valid(viewer.session, token)
        return (
            None if valid else "This form has expired or was not sent by this console: reload it."
        )

    # -- answers -----------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        viewer: Viewer | None,
        template: str,
        status: int = 200,
        **context: Any,
    ) -> Response:
        html = self.templates.get_template(template).render(
            viewer=viewer, path=request.url.path, nav=NAV, status=status, **context
        )
        return secured(HTMLResponse(html, status_code=status))

    def refusal(self, request: Request, viewer: Viewer | None, detail: str) -> Response:
        return self.render(request, viewer, "error.html", status=403, detail=detail)


def secured(response: Response) -> Response:
    """``response`` with the console's security headers."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def redirect(url: str) -> Response:
    return secured(RedirectResponse(url, status_code=303))


def cross_site(request: Request, public_url: str = "") -> str | None:
    """Why a request looks sent by another site (browsers say so in ``Sec-Fetch-Site`` and
    ``Origin``); None when it came from this origin."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return "Refused: this request came from another site."
    origin = request.headers.get("origin")
    if origin is not None:
        own = {f"{request.url.scheme}://{request.url.netloc}"}
        if public_url:
            parts = urlsplit(public_url)
            own.add(f"{parts.scheme}://{parts.netloc}")
        if origin not in own:
            return "Refused: this request came from another site."
    return None


async def form_of(request: Request) -> dict[str, str]:
    """The request's URL-encoded form (each field's last value), read once; {} for another
    content type or a body over ``MAX_FORM_BYTES``."""
    cached = request.scope.get("profilehook.form")
    if cached is not None:
        return dict(cached)
    fields: dict[str, str] = {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        body: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                body = []
                break
            body.append(chunk)
        text = b"".join(body).decode("utf-8", "replace")
        pairs = parse_qsl(text, keep_blank_values=True)
        fields = dict(pairs)
        lists: dict[str, list[str]] = {}
        for name, value in pairs:
            lists.setdefault(name, []).append(value)
        request.scope["profilehook.form_lists"] = lists
    request.scope["profilehook.form"] = fields
    return dict(fields)


async def form_lists(request: Request) -> dict[str, list[str]]:
    """Like ``form_of``, every value of each field (checkboxes)."""
    await form_of(request)
    return dict(request.scope.get("profilehook.form_lists", {}))


def _here(request: Request) -> str:
    query = request.url.query
    return f"{request.url.path}?{query}" if query else request.url.path
