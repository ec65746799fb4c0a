"""Destinations over HTTP (README, Getting changes out), all ``admin``: create (the secret is
in that answer only), list, show, delete, the delivery log, and replay from a cursor."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from profilehook.api.access import ScopedRoute
from profilehook.api.management import _json_object
from profilehook.api.responses import json_response
from profilehook.api.routes import deadline
from profilehook.destinations import registry
from profilehook.errors import ValidationFailed
from profilehook.service import Services
from profilehook.stores.base import KeyGrant
from profilehook.validation import problem

DELIVERIES_PAGE_DEFAULT = 100
DELIVERIES_PAGE_MAX = 1_000


def destination_routes(services: Services) -> list[ScopedRoute]:
    store = services.store
    allow_private = services.settings.destinations_allow_private
    bounded = deadline(services.settings.backend_timeout_s)

    async def create(request: Request, grant: KeyGrant) -> Response:
        body = await _json_object(request)
        destination, secret = await registry.create(
            store, grant.workspace, body, allow_private=allow_private
        )
        return json_response({**registry.view(destination), "secret": secret}, status_code=201)

    async def listed(request: Request, grant: KeyGrant) -> Response:
        found = await store.list_destinations(grant.workspace)
        return json_response({"destinations": [registry.view(d) for d in found]})

    async def show(request: Request, grant: KeyGrant) -> Response:
        destination_id = request.path_params["destination_id"]
        found = await registry.get(store, grant.workspace, destination_id)
        return json_response(registry.view(found))

    async def delete(request: Request, grant: KeyGrant) -> Response:
        destination_id = request.path_params["destination_id"]
        await registry.delete(store, grant.workspace, destination_id)
        return json_response({"destination_id": destination_id, "deleted": True})

    async def deliveries(request: Request, grant: KeyGrant) -> Response:
        destination_id = request.path_params["destination_id"]
        raw = request.query_params.get("limit", str(DELIVERIES_PAGE_DEFAULT))
        limit = int(raw) if raw.isdigit() else 0
        if not 1 <= limit <= DELIVERIES_PAGE_MAX:
            raise ValidationFailed(
                [
                    problem(
                        "int_range",
                        ("query", "limit"),
                        f"Input should be a whole number from 1 to {DELIVERIES_PAGE_MAX}",
                        raw,
                    )
                ]
            )
        found = await registry.deliveries(
            store, grant.workspace, destination_id, request.query_params.get("status"), limit
        )
        return json_response(
            {
                "destination_id": destination_id,
                "deliveries": [registry.delivery_view(d) for d in found],
            }
        )

    async def replay(request: Request, grant: KeyGrant) -> Response:
        destination_id = request.path_params["destination_id"]
        after = await registry.replay(
            store, grant.workspace, destination_id, await _json_object(request)
        )
        return json_response({"destination_id": destination_id, "after": after})

    def route(path: str, endpoint: object, method: str) -> ScopedRoute:
        return ScopedRoute(
            path, endpoint, access="admin", methods=[method], store=store, bound=bounded
        )

    return [
        route("/v1/destinations", create, "POST"),
        route("/v1/destinations", listed, "GET"),
        route("/v1/destinations/{destination_id}", show, "GET"),
        route("/v1/destinations/{destination_id}", delete, "DELETE"),
        route("/v1/destinations/{destination_id}/deliveries", deliveries, "GET"),
        route("/v1/destinations/{destination_id}/replay", replay, "POST"),
    ]
