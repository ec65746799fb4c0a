"""Contacts: find one by id, see each property with its version and the event that set it
("why does this property have this value?"), its history with superseded writes marked, and
erase it; find contacts with the filter builder (filter_form.py), a page at a time, and count
them as a filter is edited. Each page calls the library function the API route calls (views.py,
erasure.py, the store's ``query_contacts``)."""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from profilehook import erasure as erasure_lib
from profilehook.api.access import ScopedRoute
from profilehook.api.routes import decode_history_cursor, history_cursor
from profilehook.console.filter_form import builder_query, form_context, read_builder
from profilehook.console.web import Console, Viewer, form_of, redirect, secured
from profilehook.constants import HISTORY_PAGE_DEFAULT
from profilehook.erasure import Eraser
from profilehook.errors import NotFound
from profilehook.events import iso
from profilehook.filters import Query, decode_cursor, encode_cursor
from profilehook.stores.base import Contact
from profilehook.stores.query import ContactQueries
from profilehook.views import contact_view, erasure_view, event_status, event_view


def shown(value: Any) -> str:
    """A property's value as the pages print it: JSON, so a string is told from a number."""
    return json.dumps(value, ensure_ascii=False)


RESULTS_PAGE = 25
SHOWN_PROPERTIES = 4  # of each contact in a list of results


def result_rows(contacts: list[Contact]) -> list[dict[str, Any]]:
    """Contacts as a list of results shows them: the id, when last updated, a few properties."""
    rows = []
    for contact in contacts:
        names = sorted(contact.properties)
        rows.append(
            {
                "contact_id": contact.contact_id,
                "updated_at": iso(contact.updated_us),
                "properties": [(n, shown(contact.properties[n])) for n in names[:SHOWN_PROPERTIES]],
                "more": max(0, len(names) - SHOWN_PROPERTIES),
            }
        )
    return rows


def query_fields(request: Request) -> dict[str, list[str]]:
    params = request.query_params
    return {name: params.getlist(name) for name in params}


def contact_routes(console: Console, eraser: Eraser | None) -> list[ScopedRoute]:
    store, queue = console.store, console.services.queue
    queries = cast(ContactQueries, store)  # every backend implements it (test_query_contract)

    async def lookup(request: Request, viewer: Viewer) -> Response:
        wanted = request.query_params.get("id", "")
        if wanted:
            return redirect(f"/console/contact?id={quote(wanted, safe='')}")
        fields = query_fields(request)
        builder = read_builder(fields)
        results: list[dict[str, Any]] | None = None
        count = None
        next_link = None
        raw_cursor = request.query_params.get("cursor", "")
        after = decode_cursor(raw_cursor) if raw_cursor else None
        if raw_cursor and after is None:
            builder.problems.append("This page link is not one the console made: search again.")
        if builder.valid and builder.node is not None:
            page = await queries.query_contacts(
                viewer.workspace, Query(builder.node, RESULTS_PAGE, after, count=True)
            )
            results, count = result_rows(page.contacts), page.count
            if page.next_after is not None:
                next_link = "/console/contacts?" + builder_query(
                    fields, cursor=encode_cursor(page.next_after)
                )
        failed = builder.submitted and not builder.edited and not builder.valid
        return console.render(
            request,
            viewer,
            "contacts.html",
            status=422 if failed else 200,
            builder=builder,
            results=results,
            count=count,
            next_link=next_link,
            paged=after is not None,
            first_query=builder_query({k: v for k, v in fields.items() if k != "cursor"}),
            **form_context(),
        )

    async def count(request: Request, viewer: Viewer) -> Response:
        """How many contacts the builder's filter matches (the segment form's live count):
        always a 200, so a filter still being typed is no failed request in the browser."""
        builder = read_builder(query_fields(request))
        answer: dict[str, Any] = {"count": None, "problems": builder.problem_list()}
        if builder.valid and builder.node is not None:
            page = await queries.query_contacts(
                viewer.workspace, Query(builder.node, 1, None, count=True)
            )
            answer["count"] = page.count
        return secured(JSONResponse(answer))

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
        console.page("/console/contacts/count", count),
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
