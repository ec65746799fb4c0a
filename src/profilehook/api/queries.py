"""``POST /v1/contacts/query`` (README, Querying profiles): the contacts that match a filter,
paged, each as ``GET /v1/contacts/{id}`` shows it."""

from __future__ import annotations

from typing import cast

from starlette.requests import Request
from starlette.responses import Response

from profilehook.api.access import ScopedRoute
from profilehook.api.management import _json_object
from profilehook.api.responses import json_response
from profilehook.api.routes import deadline
from profilehook.errors import ValidationFailed
from profilehook.filters import encode_cursor, parse_query
from profilehook.service import Services
from profilehook.stores.base import KeyGrant
from profilehook.stores.query import ContactQueries
from profilehook.views import contact_view


def query_routes(services: Services) -> list[ScopedRoute]:
    store = services.store
    queries = cast(ContactQueries, store)  # every backend implements it (test_query_contract)
    bounded = deadline(services.settings.backend_timeout_s)

    async def query_contacts(request: Request, grant: KeyGrant) -> Response:
        query, problems = parse_query(await _json_object(request))
        if query is None:
            raise ValidationFailed(problems)
        page = await queries.query_contacts(grant.workspace, query)
        return json_response(
            {
                "contacts": [contact_view(c) for c in page.contacts],
                "next_cursor": None if page.next_after is None else encode_cursor(page.next_after),
                "count": page.count,
            }
        )

    return [
        ScopedRoute(
            "/v1/contacts/query",
            query_contacts,
            access="read",
            methods=["POST"],
            store=store,
            bound=bounded,
        )
    ]
