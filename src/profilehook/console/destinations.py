"""Destinations: the list (each with its status, enabled or disabled and why, and its deliveries
by outcome), create one (URL, description, the properties and segments it is for; its signing
secret is shown once), a destination's recent deliveries and failures, replay from a cursor and
delete, each after confirming. Every action calls the function the API route calls
(destinations/registry.py); all of it needs an ``admin`` key, as the API does (README, Getting
changes out)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from profilehook import segments
from profilehook.api.access import ScopedRoute
from profilehook.console.web import Console, Viewer, form_lists, form_of, redirect
from profilehook.destinations import registry
from profilehook.errors import CursorExpired, ValidationFailed
from profilehook.events import iso
from profilehook.stores.destinations import DELIVERY_STATUSES, DeliveryStats

DELIVERIES_SHOWN = 50
_NAMES = re.compile(r"[,\n]")


def body_of(form: dict[str, str], segment_ids: list[str]) -> dict[str, Any]:
    """The form as ``POST /v1/destinations`` takes it: properties are one per line or
    comma-separated; empty fields are left out."""
    body: dict[str, Any] = {"url": form.get("url", "").strip()}
    description = form.get("description", "").strip()
    if description:
        body["description"] = description
    properties = [p.strip() for p in _NAMES.split(form.get("properties", "")) if p.strip()]
    if properties:
        body["properties"] = properties
    if segment_ids:
        body["segments"] = segment_ids
    return body


def stats_view(stats: DeliveryStats | None) -> dict[str, Any]:
    found = stats or DeliveryStats()
    return {
        "delivered": found.delivered,
        "failed": found.failed,
        "pending": found.pending,
        "retrying": found.retrying,
        "oldest_pending_at": None
        if found.oldest_pending_us is None
        else iso(found.oldest_pending_us),
    }


def destination_routes(console: Console) -> list[ScopedRoute]:
    store = console.store
    allow_private = console.services.settings.destinations_allow_private

    async def segment_names(workspace: str) -> dict[str, str]:
        found = await segments.of(store).list_segments(workspace)
        return {s.segment_id: s.name for s in found}

    async def listing(
        request: Request, viewer: Viewer, status: int = 200, **context: Any
    ) -> Response:
        found = await store.list_destinations(viewer.workspace)
        stats = await store.delivery_stats()
        rows = [
            {**registry.view(d), "stats": stats_view(stats.get(d.destination_id))} for d in found
        ]
        return console.render(
            request,
            viewer,
            "destinations.html",
            status=status,
            destinations=rows,
            segments=await segment_names(viewer.workspace),
            deleted=request.query_params.get("deleted"),
            **{"problems": [], "form": {}, "chosen": [], **context},
        )

    async def show_list(request: Request, viewer: Viewer) -> Response:
        return await listing(request, viewer)

    async def create(request: Request, viewer: Viewer) -> Response:
        form = await form_of(request)
        chosen = (await form_lists(request)).get("segment", [])
        try:
            destination, secret = await registry.create(
                store, viewer.workspace, body_of(form, chosen), allow_private=allow_private
            )
        except ValidationFailed as exc:
            return await listing(
                request, viewer, 422, problems=exc.detail, form=form, chosen=chosen
            )
        return console.render(
            request,
            viewer,
            "destination_created.html",
            created={**registry.view(destination), "secret": secret},
        )

    async def show(request: Request, viewer: Viewer) -> Response:
        destination_id = request.query_params.get("id", "")
        wanted = request.query_params.get("status") or None
        status = wanted if wanted in DELIVERY_STATUSES else None
        found = await registry.get(store, viewer.workspace, destination_id)
        deliveries = await registry.deliveries(
            store, viewer.workspace, destination_id, status, DELIVERIES_SHOWN
        )
        stats = (await store.delivery_stats()).get(destination_id)
        names = await segment_names(viewer.workspace)
        return console.render(
            request,
            viewer,
            "destination.html",
            destination=registry.view(found),
            stats=stats_view(stats),
            deliveries=[registry.delivery_view(d) for d in deliveries],
            statuses=DELIVERY_STATUSES,
            shown_status=status,
            segment_names=names,
            replayed=request.query_params.get("replayed"),
            shown_max=DELIVERIES_SHOWN,
        )

    async def replay_form(request: Request, viewer: Viewer) -> Response:
        params = request.query_params
        found = await registry.get(store, viewer.workspace, params.get("id", ""))
        after = params.get("after", "").strip() if params.get("from") != "oldest" else ""
        return console.render(
            request,
            viewer,
            "destination_replay.html",
            destination=registry.view(found),
            after=after,
            problems=[],
        )

    async def replay(request: Request, viewer: Viewer) -> Response:
        form = await form_of(request)
        destination_id = form.get("destination_id", "")
        found = await registry.get(store, viewer.workspace, destination_id)
        after = form.get("after", "").strip()
        try:
            await registry.replay(store, viewer.workspace, destination_id, {"after": after or None})
        except (ValidationFailed, CursorExpired) as exc:
            problems = exc.detail if isinstance(exc.detail, list) else [{"msg": exc.detail}]
            return console.render(
                request,
                viewer,
                "destination_replay.html",
                status=exc.status_code,
                destination=registry.view(found),
                after=after,
                problems=problems,
            )
        return redirect(
            f"/console/destination?id={quote(destination_id, safe='')}"
            f"&replayed={quote(after or 'oldest', safe='')}"
        )

    async def delete_form(request: Request, viewer: Viewer) -> Response:
        found = await registry.get(store, viewer.workspace, request.query_params.get("id", ""))
        return console.render(
            request, viewer, "destination_delete.html", destination=registry.view(found)
        )

    async def delete(request: Request, viewer: Viewer) -> Response:
        destination_id = (await form_of(request)).get("destination_id", "")
        await registry.delete(store, viewer.workspace, destination_id)
        return redirect(f"/console/destinations?deleted={quote(destination_id, safe='')}")

    return [
        console.page("/console/destinations", show_list, admin=True),
        console.page("/console/destinations", create, methods=["POST"]),
        console.page("/console/destination", show, admin=True),
        console.page("/console/destination/replay", replay_form, admin=True),
        console.page("/console/destination/replay", replay, methods=["POST"]),
        console.page("/console/destination/delete", delete_form, admin=True),
        console.page("/console/destination/delete", delete, methods=["POST"]),
    ]
