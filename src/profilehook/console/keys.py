"""Keys: create one with scopes (the key is shown once), list them, revoke one. Each action
calls the function its CLI command and management route call (keys.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from profilehook import keys
from profilehook.api.access import ScopedRoute
from profilehook.console.web import Console, Viewer, form_lists, form_of
from profilehook.constants import SCOPES
from profilehook.errors import ValidationFailed
from profilehook.validation import Problem


def key_routes(console: Console) -> list[ScopedRoute]:
    store = console.store

    async def listing(
        request: Request, viewer: Viewer, status: int = 200, **context: object
    ) -> Response:
        found = await keys.list_keys(store, viewer.workspace)
        found.sort(key=lambda k: (k["revoked_at"] is not None, k["created_at"]), reverse=False)
        return console.render(
            request,
            viewer,
            "keys.html",
            status=status,
            keys=found,
            scopes=SCOPES,
            own_key=viewer.grant.key_id,
            **{"problems": [], "revoked": None, **context},
        )

    async def show(request: Request, viewer: Viewer) -> Response:
        return await listing(request, viewer)

    async def create(request: Request, viewer: Viewer) -> Response:
        chosen = (await form_lists(request)).get("scope", [])
        problems: list[Problem] = []
        scopes = keys.scopes_from_json(chosen, ("body", "scopes"), problems)
        if problems:
            return await listing(request, viewer, 422, problems=ValidationFailed(problems).detail)
        key, record = await keys.create_key(store, viewer.workspace, scopes)
        return console.render(
            request, viewer, "key_created.html", created=keys.created_view(key, record)
        )

    async def revoke(request: Request, viewer: Viewer) -> Response:
        key_id = (await form_of(request)).get("key_id", "")
        answer = await keys.revoke_key(store, key_id, viewer.workspace)
        return await listing(request, viewer, revoked=answer)

    return [
        console.page("/console/keys", show, admin=True),
        console.page("/console/keys", create, methods=["POST"]),
        console.page("/console/keys/revoke", revoke, methods=["POST"]),
    ]
