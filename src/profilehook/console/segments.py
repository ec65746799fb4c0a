"""Segments: the list (name, size, building with its progress or ready), a segment's page with
its filter and its members a page at a time, and for admin keys: create one from the filter
builder (filter_form.py; the form counts the contacts it matches as it is edited, static/
segments.js) and delete one after confirming. Each action calls the library function the API
route calls (segments.py)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from profilehook import segments
from profilehook.api.access import ScopedRoute
from profilehook.console.contacts import RESULTS_PAGE, result_rows
from profilehook.console.filter_form import Builder, form_context, read_builder
from profilehook.console.web import Console, Viewer, form_lists, form_of, redirect
from profilehook.errors import NotFound, ValidationFailed
from profilehook.filters import decode_cursor, encode_cursor
from profilehook.stores.segments import Segment


def segment_routes(console: Console, backfiller: segments.Backfiller | None) -> list[ScopedRoute]:
    store = console.store

    async def listing(request: Request, viewer: Viewer) -> Response:
        found = await segments.of(store).list_segments(viewer.workspace)
        return console.render(request, viewer, "segments.html", segments=[_row(s) for s in found])

    def new_form(
        request: Request,
        viewer: Viewer,
        builder: Builder,
        name: str = "",
        name_problems: tuple[str, ...] = (),
        status: int = 200,
    ) -> Response:
        return console.render(
            request,
            viewer,
            "segment_new.html",
            status=status,
            builder=builder,
            name=name,
            name_problems=name_problems,
            **form_context(),
        )

    async def new(request: Request, viewer: Viewer) -> Response:
        return new_form(request, viewer, Builder())

    async def create(request: Request, viewer: Viewer) -> Response:
        fields = await form_lists(request)
        name = (fields.get("name") or [""])[-1].strip()
        builder = read_builder(fields)
        if builder.edited:
            return new_form(request, viewer, builder, name)
        if not builder.valid:
            return new_form(request, viewer, builder, name, status=422)
        try:
            segment = await segments.create(
                store, viewer.workspace, {"name": name, "filter": builder.filter_json}
            )
        except ValidationFailed as exc:
            problems = exc.detail if isinstance(exc.detail, list) else []
            named = tuple(p["msg"] for p in problems if list(p["loc"])[:2] == ["body", "name"])
            builder.place([p for p in problems if list(p["loc"])[:2] != ["body", "name"]], 2)
            return new_form(request, viewer, builder, name, named, status=422)
        if backfiller is not None:
            backfiller.wake()
        return redirect(f"/console/segment?id={quote(segment.segment_id, safe='')}")

    async def show(request: Request, viewer: Viewer) -> Response:
        segment = await segments.get(store, viewer.workspace, _id(request))
        raw_cursor = request.query_params.get("cursor", "")
        after = decode_cursor(raw_cursor) if raw_cursor else None
        if raw_cursor and after is None:
            raise NotFound("This page link is not one the console made")
        members, more = await segments.of(store).segment_members(
            viewer.workspace, segment.segment_id, after, RESULTS_PAGE
        )
        view = segments.view(segment)
        next_link = None
        if more is not None:
            next_link = (
                f"/console/segment?id={quote(segment.segment_id, safe='')}"
                f"&cursor={quote(encode_cursor(more), safe='')}"
            )
        return console.render(
            request,
            viewer,
            "segment.html",
            segment=_row(segment),
            filter_json=_json(view["filter"]),
            results=result_rows(members),
            next_link=next_link,
            paged=after is not None,
        )

    async def delete_form(request: Request, viewer: Viewer) -> Response:
        segment = await segments.get(store, viewer.workspace, _id(request))
        return console.render(request, viewer, "segment_delete.html", segment=_row(segment))

    async def delete(request: Request, viewer: Viewer) -> Response:
        segment_id = (await form_of(request)).get("segment_id", "")
        if not segment_id:
            raise NotFound("No segment named")
        await segments.delete(store, viewer.workspace, segment_id)
        return redirect("/console/segments")

    return [
        console.page("/console/segments", listing),
        console.page("/console/segments/new", new, admin=True),
        console.page("/console/segments/new", create, methods=["POST"]),
        console.page("/console/segment", show),
        console.page("/console/segment/delete", delete_form, admin=True),
        console.page("/console/segment/delete", delete, methods=["POST"]),
    ]


def _row(segment: Segment) -> dict[str, Any]:
    return {
        "segment_id": segment.segment_id,
        "name": segment.name,
        "size": segment.size,
        "status": segment.status,
        "scanned": segment.scanned,
    }


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _id(request: Request) -> str:
    value = request.query_params.get("id", "")
    if not value or "\x00" in value:
        raise NotFound("No segment id given")
    return value
