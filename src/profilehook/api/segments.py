"""Segments over HTTP (README, Segments): ``admin`` keys create and delete them, ``read`` keys
list them, show one (its size, and its backfill's progress) and page through its members."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from profilehook import segments
from profilehook.api.access import Access, ScopedRoute
from profilehook.api.management import _json_object
from profilehook.api.responses import json_response
from profilehook.api.routes import deadline
from profilehook.constants import QUERY_PAGE_DEFAULT, QUERY_PAGE_MAX
from profilehook.errors import ValidationFailed
from profilehook.filters import decode_cursor, encode_cursor
from profilehook.service import Services
from profilehook.stores.base import KeyGrant
from profilehook.validation import problem, value_error
from profilehook.views import contact_view


def segment_routes(services: Services, backfiller: segments.Backfiller | None) -> list[ScopedRoute]:
    store = services.store
    bounded = deadline(services.settings.backend_timeout_s)

    async def create(request: Request, grant: KeyGrant) -> Response:
        segment = await segments.create(store, grant.workspace, await _json_object(request))
        if backfiller is not None:
            backfiller.wake()
        return json_response(segments.view(segment), status_code=201)

    async def listed(request: Request, grant: KeyGrant) -> Response:
        found = await segments.of(store).list_segments(grant.workspace)
        return json_response({"segments": [segments.view(s) for s in found]})

    async def show(request: Request, grant: KeyGrant) -> Response:
        segment_id = request.path_params["segment_id"]
        return json_response(segments.view(await segments.get(store, grant.workspace, segment_id)))

    async def delete(request: Request, grant: KeyGrant) -> Response:
        segment_id = request.path_params["segment_id"]
        await segments.delete(store, grant.workspace, segment_id)
        return json_response({"segment_id": segment_id, "deleted": True})

    async def members(request: Request, grant: KeyGrant) -> Response:
        segment_id = request.path_params["segment_id"]
        limit, after = _page(request)
        await segments.get(store, grant.workspace, segment_id)  # 404 for an unknown one
        page, more = await segments.of(store).segment_members(
            grant.workspace, segment_id, after, limit
        )
        return json_response(
            {
                "segment_id": segment_id,
                "contacts": [contact_view(c) for c in page],
                "next_cursor": None if more is None else encode_cursor(more),
            }
        )

    def route(path: str, endpoint: object, access: Access, method: str) -> ScopedRoute:
        return ScopedRoute(
            path, endpoint, access=access, methods=[method], store=store, bound=bounded
        )

    return [
        route("/v1/segments", create, "admin", "POST"),
        route("/v1/segments", listed, "read", "GET"),
        route("/v1/segments/{segment_id}", show, "read", "GET"),
        route("/v1/segments/{segment_id}", delete, "admin", "DELETE"),
        route("/v1/segments/{segment_id}/contacts", members, "read", "GET"),
    ]


def _page(request: Request) -> tuple[int, str | None]:
    problems = []
    raw_limit = request.query_params.get("limit", str(QUERY_PAGE_DEFAULT))
    limit = int(raw_limit) if raw_limit.isdigit() else 0
    if not 1 <= limit <= QUERY_PAGE_MAX:
        problems.append(
            problem(
                "int_range",
                ("query", "limit"),
                f"Input should be a whole number from 1 to {QUERY_PAGE_MAX}",
                raw_limit,
            )
        )
    after = None
    raw_cursor = request.query_params.get("cursor")
    if raw_cursor:
        after = decode_cursor(raw_cursor)
        if after is None:
            problems.append(value_error(("query", "cursor"), raw_cursor, "not a cursor we issued"))
    if problems:
        raise ValidationFailed(problems)
    return limit, after
