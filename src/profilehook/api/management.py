"""The management API (``admin`` keys): the CLI's keys and sources abilities over HTTP, in the
same JSON forms, on the key's own workspace only (another workspace's key or source is a 404).
Each route calls the library function its CLI command calls (keys.py, sources/management.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from profilehook import keys
from profilehook.api.access import ScopedRoute
from profilehook.api.responses import json_response
from profilehook.api.routes import deadline
from profilehook.errors import PayloadTooLarge, ValidationFailed
from profilehook.service import Services
from profilehook.sources import management
from profilehook.stores.base import KeyGrant
from profilehook.validation import (
    Problem,
    check_json_content_type,
    decode_json,
    dict_type,
    problem,
    same_workspace,
)

MAX_BODY_BYTES = 64 * 1024  # a source's pinned PEM keys are the largest thing sent here


def management_routes(services: Services) -> list[ScopedRoute]:
    store, base_url = services.store, services.settings.base_url
    bounded = deadline(services.settings.backend_timeout_s)

    async def list_keys(request: Request, grant: KeyGrant) -> Response:
        return json_response(await keys.list_keys(store, grant.workspace))

    async def create_key(request: Request, grant: KeyGrant) -> Response:
        body = await _json_object(request, empty_is={})
        problems: list[Problem] = []
        _only(body, ("scopes", "workspace"), problems)
        same_workspace(body, grant.workspace, problems)
        scopes = keys.scopes_from_json(body.get("scopes"), ("body", "scopes"), problems)
        if problems:
            raise ValidationFailed(problems)
        key, record = await keys.create_key(store, grant.workspace, scopes)
        return json_response(keys.created_view(key, record), 201)

    async def revoke_key(request: Request, grant: KeyGrant) -> Response:
        key_id = request.path_params["key_id"]
        return json_response(await keys.revoke_key(store, key_id, grant.workspace))

    async def list_sources(request: Request, grant: KeyGrant) -> Response:
        return json_response(await management.list_views(store, base_url, grant.workspace))

    async def create_source(request: Request, grant: KeyGrant) -> Response:
        body = await _json_object(request)
        kind, values = management.values_from_json(body, grant.workspace)
        created = await management.create(store, base_url, kind, grant.workspace, values)
        return json_response(created, 201)

    async def show_source(request: Request, grant: KeyGrant) -> Response:
        source_id = request.path_params["source_id"]
        return json_response(await management.show(store, base_url, source_id, grant.workspace))

    async def delete_source(request: Request, grant: KeyGrant) -> Response:
        source_id = request.path_params["source_id"]
        return json_response(await management.delete(store, base_url, source_id, grant.workspace))

    async def rotate_source(request: Request, grant: KeyGrant) -> Response:
        source_id = request.path_params["source_id"]
        body = await _json_object(request, empty_is={})
        problems: list[Problem] = []
        _only(body, ("revoke_oldest", "drop_previous"), problems)
        flags = {name: _flag(body, name, problems) for name in ("revoke_oldest", "drop_previous")}
        if flags["revoke_oldest"] and flags["drop_previous"]:
            problems.append(
                problem(
                    "value_error",
                    ("body",),
                    "Value error, revoke_oldest and drop_previous are two different rotations:"
                    " give one",
                    body,
                )
            )
        if problems:
            raise ValidationFailed(problems)
        workspace = grant.workspace
        if flags["drop_previous"]:
            answer = await management.drop_previous(store, base_url, source_id, workspace)
        else:
            answer = await management.rotate(
                store, base_url, source_id, workspace, revoke_oldest=flags["revoke_oldest"]
            )
        return json_response(answer)

    def admin(path: str, endpoint: Any, method: str) -> ScopedRoute:
        return ScopedRoute(
            path, endpoint, access="admin", methods=[method], store=store, bound=bounded
        )

    return [
        admin("/v1/keys", list_keys, "GET"),
        admin("/v1/keys", create_key, "POST"),
        admin("/v1/keys/{key_id}", revoke_key, "DELETE"),
        admin("/v1/sources", list_sources, "GET"),
        admin("/v1/sources", create_source, "POST"),
        admin("/v1/sources/{source_id}", show_source, "GET"),
        admin("/v1/sources/{source_id}", delete_source, "DELETE"),
        admin("/v1/sources/{source_id}/rotate", rotate_source, "POST"),
    ]


async def _json_object(request: Request, empty_is: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request's JSON object body (``empty_is`` when it has none and that is allowed).
    Raises 413, 415, 422."""
    content_type = request.headers.get("content-type")
    check_json_content_type(content_type.encode("latin-1") if content_type else None)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise PayloadTooLarge(MAX_BODY_BYTES)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(MAX_BODY_BYTES)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip() and empty_is is not None:
        return dict(empty_is)
    value, problems = decode_json(raw)
    if problems:
        raise ValidationFailed(problems)
    if not isinstance(value, dict):
        raise ValidationFailed([dict_type(("body",), value)])
    return value


def _only(body: dict[str, Any], fields: tuple[str, ...], problems: list[Problem]) -> None:
    for name, value in body.items():
        if name not in fields:
            problems.append(
                problem("extra_forbidden", ("body", name), "Extra inputs are not permitted", value)
            )


def _flag(body: dict[str, Any], name: str, problems: list[Problem]) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        problems.append(
            problem("bool_type", ("body", name), "Input should be a valid boolean", value)
        )
        return False
    return value
