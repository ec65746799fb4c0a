"""Sources: create a Copernica or Amplitude source with the exact values to paste into their
UIs, see a source's recent calls and their outcome, rotate its secret. Each action calls the
function its CLI command and management route call (sources/management.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from profilehook.api.access import ScopedRoute
from profilehook.console.live_events import call_view
from profilehook.console.web import Console, Viewer, form_of
from profilehook.errors import ValidationFailed
from profilehook.sources import management
from profilehook.sources.kinds import KINDS


def _body_of(form: dict[str, str]) -> dict[str, Any]:
    """The form as ``POST /v1/sources`` takes it (empty fields left out)."""
    kind = form.get("kind", "")
    body: dict[str, Any] = {"kind": kind}
    if kind == "copernica":
        for name in ("account", "contact_field"):
            if form.get(name, "").strip():
                body[name] = form[name].strip()
        if form.get("token") == "true":
            body["token"] = True
    return body


def source_routes(console: Console) -> list[ScopedRoute]:
    store, base_url = console.store, console.services.settings.base_url

    async def listing(request: Request, viewer: Viewer) -> Response:
        return await _listing(request, viewer)

    async def _listing(
        request: Request, viewer: Viewer, status: int = 200, **context: Any
    ) -> Response:
        sources = await management.list_views(store, base_url, viewer.workspace)
        return console.render(
            request,
            viewer,
            "sources.html",
            status=status,
            sources=sources,
            kinds=list(KINDS.values()),
            **{"problems": [], "form": {}, **context},
        )

    async def create(request: Request, viewer: Viewer) -> Response:
        form = await form_of(request)
        try:
            kind, values = management.values_from_json(_body_of(form), viewer.workspace)
            created = await management.create(store, base_url, kind, viewer.workspace, values)
        except ValidationFailed as exc:
            return await _listing(request, viewer, 422, problems=exc.detail, form=form)
        return console.render(request, viewer, "source_created.html", created=created)

    async def show(request: Request, viewer: Viewer) -> Response:
        source_id = request.query_params.get("id", "")
        view = await management.show(store, base_url, source_id, viewer.workspace)
        calls = [call_view(c, base_url) for c in console.services.live.recent(source_id)]
        return console.render(request, viewer, "source.html", source=view, calls=calls)

    async def rotate(request: Request, viewer: Viewer) -> Response:
        form = await form_of(request)
        source_id = form.get("source_id", "")
        if form.get("drop_previous") == "true":
            view = await management.drop_previous(store, base_url, source_id, viewer.workspace)
            return console.render(
                request, viewer, "source_created.html", created=view, dropped=True
            )
        rotated = await management.rotate(store, base_url, source_id, viewer.workspace)
        view = await management.show(store, base_url, source_id, viewer.workspace)
        return console.render(
            request, viewer, "source_created.html", created={**view, **rotated}, rotated=True
        )

    return [
        console.page("/console/sources", listing, admin=True),
        console.page("/console/sources", create, methods=["POST"]),
        console.page("/console/source", show, admin=True),
        console.page("/console/source/rotate", rotate, methods=["POST"]),
    ]
