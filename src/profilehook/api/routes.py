"""Read and operations routes (described at /docs), on Starlette: richer, and off the hot path."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import msgspec
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Scope

from profilehook import constants as c
from profilehook import erasure as erasure_lib
from profilehook.api import openapi
from profilehook.api.access import ScopedRoute
from profilehook.api.deadlines import Deadlines, within
from profilehook.api.responses import json_response
from profilehook.applier import StallWatch
from profilehook.erasure import Eraser
from profilehook.errors import BackendError, NotFound, StorageUnavailable, ValidationFailed
from profilehook.events import Version, now_us
from profilehook.service import Services
from profilehook.stores.base import KeyGrant
from profilehook.validation import problem, value_error
from profilehook.views import contact_view, erasure_view, event_status, event_view

READY_TIMEOUT_S = 1.0
Endpoint = Callable[[Request], Awaitable[Response]]


class _AnyTail(PathConvertor):
    """The rest of the path, line breaks included: Starlette's ``path`` (``.*``) stops at a
    newline, so an id holding one (``nl%0Aid``, accepted at ingestion) would not be found."""

    regex = "(?s:.*)"


register_url_convertor("any_tail", _AnyTail())


def read_routes(
    services: Services,
    deadlines: Deadlines,
    applier: StallWatch | None = None,
    eraser: Eraser | None = None,
) -> list[ScopedRoute]:
    """The routes beside ingestion; ``applier`` watches this server's applier, if it has one;
    ``eraser`` executes this server's erasures (woken when one is requested here)."""
    store, queue = services.store, services.queue
    bounded = deadline(services.settings.backend_timeout_s)

    async def contact(request: Request, grant: KeyGrant) -> Response:
        workspace = grant.workspace
        contact_id, is_history = contact_path(request.scope)
        if is_history:
            return await _history(request, workspace, contact_id)
        found = await store.get_contact(workspace, contact_id)
        if found is None:
            raise NotFound("Contact not found")
        return json_response(contact_view(found))

    async def _history(request: Request, workspace: str, contact_id: str) -> Response:
        limit, before = _page(request)
        records = await store.history(workspace, contact_id, before, limit + 1)
        # (A contact whose history retention purged whole has no events left, and is found.)
        if (
            not records
            and before is None
            and await store.get_contact(workspace, contact_id) is None
        ):
            raise NotFound("Contact not found")
        page = records[:limit]
        more = len(records) > limit
        return json_response(
            {
                "contact_id": contact_id,
                "events": [event_view(r) for r in page],
                "next_cursor": history_cursor(page[-1].event.version) if more else None,
            }
        )

    async def event(request: Request, grant: KeyGrant) -> Response:
        view = await event_status(
            services.queue, services.store, grant.workspace, _raw_tail(request, "/v1/events/")
        )
        if view is None:
            raise NotFound("Event not found")
        return json_response(view)

    async def erase_contact(request: Request, grant: KeyGrant) -> Response:
        workspace = grant.workspace
        contact_id, is_history = contact_path(request.scope)
        if is_history:
            raise NotFound("Not Found")
        suppress = _flag(request, "suppress")
        erasure = await erasure_lib.request_erasure(store, workspace, contact_id, suppress)
        if eraser is not None:
            eraser.wake()
        return json_response(erasure_view(erasure), status_code=202)

    async def erasure(request: Request, grant: KeyGrant) -> Response:
        erasure_id = _raw_tail(request, "/v1/erasures/")
        found = await erasure_lib.get_erasure(store, grant.workspace, erasure_id)
        return json_response(erasure_view(found))

    async def unsuppress(request: Request, grant: KeyGrant) -> Response:
        contact_id = _raw_tail(request, "/v1/suppressions/")
        await erasure_lib.unsuppress(store, grant.workspace, contact_id)
        return json_response({"contact_id": contact_id, "suppressed": False})

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            if applier is not None:  # first: a stalled applier is the more telling answer
                pending = await within(READY_TIMEOUT_S, queue.depth())
                batches = services.metrics.applier_totals().batches
                stalled = applier.reason(batches, pending, time.monotonic())
                if stalled is not None:
                    raise StorageUnavailable(stalled)
            await within(READY_TIMEOUT_S, asyncio.gather(queue.ping(), store.ping()))
        except TimeoutError:
            raise StorageUnavailable("A backend did not answer within 1 s") from None
        failure = deadlines.failing()
        if failure is not None:
            raise StorageUnavailable(f"Durable writes are failing: {failure}")
        return json_response({"status": "ready"})

    async def metrics(request: Request) -> Response:
        services.metrics.queue_depth.set(await queue.depth())
        try:  # the destinations' figures, unless the store does not answer now
            stats = await within(READY_TIMEOUT_S, store.delivery_stats())
        except (TimeoutError, BackendError):
            pass
        else:
            services.metrics.set_deliveries(stats, now_us())
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi_json(request: Request) -> Response:
        return json_response(openapi.document(services.settings.base_url))

    async def docs(request: Request) -> Response:
        return HTMLResponse(openapi.html(openapi.document(services.settings.base_url)))

    return [
        ScopedRoute(
            "/v1/contacts/{rest:any_tail}", contact, access="read", store=store, bound=bounded
        ),
        ScopedRoute(
            "/v1/contacts/{rest:any_tail}",
            erase_contact,
            access="admin",
            methods=["DELETE"],
            store=store,
            bound=bounded,
        ),
        ScopedRoute(
            "/v1/erasures/{rest:any_tail}", erasure, access="admin", store=store, bound=bounded
        ),
        ScopedRoute(
            "/v1/suppressions/{rest:any_tail}",
            unsuppress,
            access="admin",
            methods=["DELETE"],
            store=store,
            bound=bounded,
        ),
        ScopedRoute("/v1/events/{rest:any_tail}", event, access="read", store=store, bound=bounded),
        ScopedRoute("/healthz", healthz, access="public"),
        ScopedRoute("/readyz", readyz, access="public"),
        ScopedRoute("/metrics", metrics, access="public"),
        ScopedRoute("/openapi.json", openapi_json, access="public"),
        ScopedRoute("/docs", docs, access="public"),
    ]


def deadline(timeout_s: float) -> Callable[[Endpoint], Endpoint]:
    """A read that waits longer than ``timeout_s`` for a backend is answered 503."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def bounded(request: Request) -> Response:
            try:
                return await within(timeout_s, endpoint(request))
            except TimeoutError:
                raise StorageUnavailable(
                    f"Storage did not answer within {timeout_s:g} s, retry later"
                ) from None

        return bounded

    return wrap


def _raw_tail(request: Request, prefix: str) -> str:
    """The path after ``prefix``, percent-decoded once: ids may contain an encoded ``/``."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    tail = raw.decode("latin-1").split("?", 1)[0][len(prefix) :]
    try:
        value = unquote(tail, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        value = ""
    if not value or "\x00" in value:  # no id holds NUL (refused at ingestion)
        raise NotFound("Not Found")
    return value


def contact_path(scope: Scope) -> tuple[str, bool]:
    """The contact id of a ``/v1/contacts/…`` request (percent-decoded once: ids may hold an
    encoded ``/``), and whether it asks for the history page. Raises ``NotFound``."""
    raw = scope.get("raw_path") or scope["path"].encode()
    tail = raw.decode("latin-1").split("?", 1)[0][len("/v1/contacts/") :]
    is_history = tail.endswith("/history")
    if is_history:
        tail = tail[: -len("/history")]
    if not tail or "/" in tail:
        raise NotFound("Not Found")
    try:
        contact_id = unquote(tail, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise NotFound("Contact not found") from None
    if "\x00" in contact_id:  # no id holds NUL (refused at ingestion)
        raise NotFound("Contact not found")
    return contact_id, is_history


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter: ``true`` or ``false`` (absent: false)."""
    raw = request.query_params.get(name, "false")
    if raw.lower() not in ("true", "false", "1", "0"):
        raise ValidationFailed(
            [problem("bool_parsing", ("query", name), "Input should be true or false", raw)]
        )
    return raw.lower() in ("true", "1")


def _page(request: Request) -> tuple[int, Version | None]:
    problems = []
    raw_limit = request.query_params.get("limit", str(c.HISTORY_PAGE_DEFAULT))
    limit = int(raw_limit) if raw_limit.isdigit() else 0
    if not 1 <= limit <= c.HISTORY_PAGE_MAX:
        problems.append(
            problem(
                "int_range",
                ("query", "limit"),
                f"Input should be a whole number from 1 to {c.HISTORY_PAGE_MAX}",
                raw_limit,
            )
        )
    before = None
    raw_cursor = request.query_params.get("cursor")
    if raw_cursor:  # an empty cursor (``?cursor=``) is the first page, as an absent one
        before = decode_history_cursor(raw_cursor)
        if before is None:
            problems.append(value_error(("query", "cursor"), raw_cursor, "not a cursor we issued"))
    if problems:
        raise ValidationFailed(problems)
    return limit, before


def history_cursor(version: Version) -> str:
    """The cursor of the history page after the event of ``version`` (``next_cursor``)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(version)).decode().rstrip("=")


def decode_history_cursor(raw: str) -> Version | None:
    """The version a ``history_cursor`` holds; None for anything else."""
    try:
        ts_us, event_id = msgspec.json.decode(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, TypeError, msgspec.DecodeError):
        return None
    if type(ts_us) is not int or not 0 <= ts_us < 2**62 or not isinstance(event_id, str):
        return None
    return (ts_us, event_id)
