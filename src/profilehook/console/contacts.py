"""Contacts: find one by id, see each property with its version and the event that set it
("why does this property have this value?"), its history with superseded writes marked, and
erase it. Each page calls the library function the API route calls (views.py, erasure.py).

(The filter builder over the contacts query plugs in here: a form on ``contacts.html`` whose handler
calls the query library and renders the matching contacts.)"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from profilehook import erasure as erasure_lib
from profilehook.api.access import ScopedRoute
from profilehook.api.routes import decode_history_cursor, history_cursor
from profilehook.console.web import Console, Viewer, form_of, redirect
from profilehook.constants import HISTORY_PAGE_DEFAULT
from profilehook.erasure import Eraser
from profilehook.errors import NotFound
from profilehook.events import iso
from profilehook.views import contact_view, erasure_view, event_status, event_view


def shown(value: Any) -> str:
    """A property's value as the pages print it: JSON, so a string is told from a number."""
    return json.dumps(value, ensure_ascii=False)


def contact_routes(console: Console, eraser: Eraser | None) -> list[ScopedRoute]:
    store, queue = console.store, console.services.queue

    async def lookup(request: Request, viewer: Viewer) -> Response:
        wanted = request.query_params.get("id", "")
        if wanted:
            return redirect(f"/console/contact?id={quote(wanted, safe='')}")
        return console.render(request, viewer, "contacts.html")

    async def contact(request: Request, viewer: Viewer) -> Response:
        contact_id = _id(request)
        found = await store.get_contact(viewer.workspace, contact_id)
        cursor = request.query_params.get("before", "")
        before = decode_history_cursor(cursor) if cursor else None
        page_size = HISTORY_PAGE_DEFAULT
        records = await store.history(viewer.workspace, contact_id, before, page_size + 1)
        older = (
            history_cursor(records[page_size - 1].event.version)
            if len(records) > page_size
            else None
        )
        records = records[:page_size]
        if found is None and not records:
            raise NotFound(f"No contact {contact_id!r} in workspace {viewer.workspace!r}")
        view = contact_view(found) if found is not None else None
        versions = view["versions"] if view else {}
        properties = [
            {
                "name": name,
                "value": shown(value),
                "timestamp": versions[name]["timestamp"],
                "at": iso(int(versions[name]["timestamp"] * 1_000_000)),
                "event_id": versions[name]["event_id"],
            }
            for name, value in sorted((view or {"properties": {}})["properties"].items())
            if name in versions
        ]
        history = [_history_row(event_view(r), versions) for r in records]
        return console.render(
            request,
            viewer,
            "contact.html",
            contact_id=contact_id,
            found=view,
            properties=properties,
            history=history,
            older=older,
            paged=before is not None,
        )

    async def event(request: Request, viewer: Viewer) -> Response:
        event_id = _id(request)
        view = await event_status(queue, store, viewer.workspace, event_id)
        if view is None:
            raise NotFound(f"No event {event_id!r} in workspace {viewer.workspace!r}")
        found = await store.get_contact(viewer.workspace, view["contact_id"])
        current = {
            name: event_id_ for name, (_, event_id_) in (found.versions if found else {}).items()
        }
        writes = [
            {
                "name": name,
                "operation": view["operations"].get(name, "set"),
                "argument": shown(value),
                "current": current.get(name) == event_id,
            }
            for name, value in sorted(view["properties"].items())
        ]
        return console.render(
            request,
            viewer,
            "event.html",
            event=view,
            writes=writes,
            metadata=shown(view["metadata"]) if view["metadata"] else None,
        )

    async def erase_form(request: Request, viewer: Viewer) -> Response:
        return console.render(request, viewer, "erase.html", contact_id=_id(request))

    async def erase(request: Request, viewer: Viewer) -> Response:
        form = await form_of(request)
        contact_id = form.get("contact_id", "")
        if not contact_id:
            raise NotFound("No contact named")
        if form.get("confirm", "") != contact_id:
            return console.render(
                request,
                viewer,
                "erase.html",
                status=422,
                contact_id=contact_id,
                error="Type the contact's id exactly to confirm.",
            )
        suppress = form.get("suppress") == "true"
        done = await erasure_lib.request_erasure(store, viewer.workspace, contact_id, suppress)
        if eraser is not None:
            eraser.wake()
        return redirect(f"/console/erasure?id={quote(done.erasure_id, safe='')}")

    async def erasure(request: Request, viewer: Viewer) -> Response:
        found = await erasure_lib.get_erasure(store, viewer.workspace, _id(request))
        return console.render(request, viewer, "erasure.html", erasure=erasure_view(found))

    return [
        console.page("/console/contacts", lookup),
        console.page("/console/contact", contact),
        console.page("/console/event", event),
        console.page("/console/erase", erase_form, admin=True),
        console.page("/console/erase", erase, methods=["POST"]),
        console.page("/console/erasure", erasure),
    ]


def _history_row(view: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any]:
    """A history entry, each of its writes marked ``current`` (it set the value shown now) or
    ``superseded`` (a later event set that property since; an operation such as ``add``
    folded into the value it set is ``folded``)."""
    writes = []
    for name, value in sorted(view["properties"].items()):
        operation = view["operations"].get(name, "set")
        if versions.get(name, {}).get("event_id") == view["event_id"]:
            state = "current"
        elif operation in ("add", "append", "remove"):
            state = "folded"
        else:
            state = "superseded"
        writes.append({"name": name, "operation": operation, "value": shown(value), "state": state})
    return {**view, "writes": writes}


def _id(request: Request) -> str:
    value = request.query_params.get("id", "")
    if not value or "\x00" in value:
        raise NotFound("No id given")
    return value
