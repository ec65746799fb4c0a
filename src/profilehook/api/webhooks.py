"""POST /v1/webhooks/{source_id}: find the source, let its kind authenticate the request and
turn it into events, check the source's rate, store the events durably, answer as that kind's
sender expects. Raw ASGI, like the ingest path, with the same deadlines."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from profilehook.api.content_coding import coding_of, read_decoded_body
from profilehook.api.deadlines import Deadlines
from profilehook.api.ingest import (
    Handler,
    Shown,
    read_body,
    refuse,
    tell_accepted,
    tell_refused,
)
from profilehook.api.ratelimit import RateLimiter
from profilehook.api.responses import encode, send_json
from profilehook.errors import (
    ExtraMissing,
    NotFound,
    ProfilehookError,
)
from profilehook.events import now_us
from profilehook.service import Services
from profilehook.sources.kinds import KINDS
from profilehook.sources.webhooks import Released, WebhookRequest, WebhookSource
from profilehook.stores.base import Source

log = logging.getLogger(__name__)

PATH_PREFIX = "/v1/webhooks/"


def load_kinds(services: Services) -> dict[str, WebhookSource | ExtraMissing]:
    """Every kind's handler, or the error that says what to install for it."""
    kinds: dict[str, WebhookSource | ExtraMissing] = {}
    for name, kind in KINDS.items():
        try:
            kinds[name] = kind.load(services.settings, services.store)
        except ExtraMissing as exc:
            # Said once, at start-up; each call of such a source is answered 501 with the same.
            log.warning("%s webhooks unavailable (%s): %s", name, exc.cause, exc.detail)
            kinds[name] = exc
    return kinds


def webhook_handler(services: Services, deadlines: Deadlines | None = None) -> Handler:
    kinds = load_kinds(services)
    settings = services.settings
    deadlines = deadlines or Deadlines.from_settings(settings)
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        undo: Callable[[], Awaitable[None]] | None = None
        source: Source | None = None
        request: WebhookRequest | None = None
        try:
            with deadlines.watch(send) as watch:
                source_id = scope["path"][len(PATH_PREFIX) :]
                source = await services.store.get_source(source_id) if source_id else None
                kind = kinds.get(source.kind) if source is not None else None
                if source is None or kind is None:
                    raise NotFound("Source not found")
                if isinstance(kind, ExtraMissing):  # a fresh error: its traceback is this call's
                    raise ExtraMissing(kind.kind, kind.extra, kind.cause)
                watch.reading_body()
                request = await _request(scope, receive, kind.max_body_bytes)
                # Authenticating and parsing is bounded by the body cap, the signature check
                # by its DNS timeout: no deadline, so a large body is not cut mid-parse.
                watch.unwatched()
                result = await kind.handle(source, request)
                undo = result.undo
                await release(services, source.kind, result.released)
                # After authentication, so that nobody but the sender can spend its tokens.
                limiter.admit(source.source_id)
                stored = None
                if result.events:
                    watch.awaiting_backend(len(result.events))
                    stored = services.queue.publish(result.events)
                # As the native batch does (api/ingest.py): what follows the commit is taken
                # before it, and the events let go, freed while still in the CPU's caches.
                answer, status = encode(result.body), result.status
                shown = Shown.of(result.events)
                counts = [
                    ("accepted", shown.event_count),
                    ("ignored", result.ignored),
                    ("skipped", result.skipped),
                ]
                if result.too_old:
                    counts.append(("too_old", result.too_old))
                del result
                if stored is not None:
                    await stored
        except ProfilehookError as exc:
            if undo is not None:
                await undo()
            if source is not None:  # a call to no source belongs to no workspace
                await tell_refused(
                    services,
                    scope,
                    request.body if request is not None else b"",
                    exc,
                    source.kind,
                    source.source_id,
                    source.workspace,
                )
            await refuse(services, send, exc)
            return
        for outcome, count in counts:
            services.metrics.events.labels(source.kind, outcome).inc(count)
        await send_json(send, status, answer)
        # Always (not only when watched): a source's page shows its recent calls.
        tell_accepted(
            services.live,
            source.workspace,
            scope,
            request.body,
            status,
            shown,
            source.kind,
            source.source_id,
        )

    return handle


async def release(services: Services, kind: str, released: list[Released]) -> None:
    """Publish the events a source released, then forget them as parked: in this order, so
    that a crash in between releases them again (a duplicate) rather than losing them."""
    for batch in released:
        await services.queue.publish(batch.events)
        await services.store.unpark(
            batch.workspace, batch.source_id, batch.profile_id, [e.event_id for e in batch.events]
        )
        services.metrics.events.labels(kind, "accepted").inc(len(batch.events))
        log.info(
            "%s source %s: released %d parked events of profile %s",
            kind,
            batch.source_id,
            len(batch.events),
            batch.profile_id,
        )


async def _request(scope: Scope, receive: Receive, max_body_bytes: int) -> WebhookRequest:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    length = headers.get("content-length")
    declared = headers.get("content-encoding")
    coding = coding_of(declared) if declared is not None else None
    if coding is None:
        body = await read_body(receive, length.encode() if length else None, max_body_bytes)
    else:
        # Sources see the decoded body: what a signature covers, and what event ids digest.
        body = await read_decoded_body(
            receive, coding, length.encode() if length else None, max_body_bytes
        )
    raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query_string = scope.get("query_string", b"").decode("latin-1")
    return WebhookRequest(
        method=scope["method"],
        target=f"{raw_path}?{query_string}" if query_string else raw_path,
        headers=headers,
        body=body,
        received_us=now_us(),
        query=dict(parse_qsl(query_string, keep_blank_values=True)),
    )
