"""The SDK-compatible endpoints (README, Speaking the SDKs you already use): Segment (and
RudderStack), PostHog and Amplitude, each at its peer's paths and answering as that peer's SDK
expects, so that pointing an SDK's host at profilehook is the only change an app needs.

Raw ASGI, like the native ingest path, with its deadlines: read the body (gzip as the SDKs send
it) -> the peer's source module finds the key and the calls -> the key must have the ``ingest``
scope -> rate limit -> the calls become events -> one durable append for the request -> the
peer's success answer. Every refusal is answered in the peer's own error shape and with the
status its SDK reads correctly (one it does not retry unless a retry can help).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from profilehook import constants as c
from profilehook import keys
from profilehook.api.access import Access
from profilehook.api.content_coding import coding_of, read_decoded_body
from profilehook.api.deadlines import AlreadyAnswered, Deadlines
from profilehook.api.ingest import Handler, read_body
from profilehook.api.ratelimit import RateLimiter
from profilehook.api.responses import encode, send_json
from profilehook.errors import (
    ClientDisconnected,
    InvalidApiKey,
    MissingScope,
    PayloadTooLarge,
    PeerRefused,
    ProfilehookError,
)
from profilehook.events import now_us
from profilehook.service import Services
from profilehook.sources import amplitude_http, posthog, segment
from profilehook.sources.peer_events import Mapped

ACCESS: Access = "ingest"
AMPLITUDE_PREFIX = "/amplitude"


@dataclass(frozen=True)
class Call:
    """What a peer's handler needs of one HTTP request."""

    path: str
    headers: dict[bytes, bytes]
    query: dict[str, list[str]]
    body: bytes


@dataclass(frozen=True)
class Peer:
    """One peer protocol: where its body's key is, how calls become events, its answers."""

    source: str
    max_body_bytes: int
    parse: Callable[[Call], tuple[Any, str | None]]  # -> (request, key)
    map: Callable[[Any, str, int, int], Mapped]
    ok: Callable[[Mapped, Call, Any], tuple[bytes, bytes]]  # (.., request) -> (type, body)
    error: Callable[[ProfilehookError], tuple[int, bytes]]
    implied_coding: Callable[[Call], str | None] = lambda call: None


# -- Segment and RudderStack -----------------------------------------------------------------


def _segment_parse(call: Call) -> tuple[Any, str | None]:
    kind = call.path.rsplit("/", 1)[1]
    request = (
        segment.parse_batch(call.body)
        if kind in ("batch", "import")
        else segment.parse_single(call.body, kind)
    )
    return request, _basic_user(call.headers.get(b"authorization")) or request.write_key


def _basic_user(authorization: bytes | None) -> str | None:
    """The user name of ``Authorization: Basic`` (the SDKs send ``key:``), or a Bearer token."""
    if not authorization:
        return None
    scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
    if scheme.lower() == "bearer":
        return keys.bearer_token(authorization)
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def _segment_error(exc: ProfilehookError) -> tuple[int, bytes]:
    # Segment answers 400 for any request it cannot take (oversize too); its SDKs give up on a
    # 400, 401 or 403 and retry 408, 429 and 5xx.
    status = exc.status_code if exc.status_code in (401, 403, 408, 429, 503) else 400
    code = {401: "unauthorized", 403: "forbidden", 429: "rate_limited"}.get(status)
    return status, encode({"code": code or "invalid_request", "message": _message(exc)})


SEGMENT = Peer(
    source=segment.SOURCE,
    max_body_bytes=c.SEGMENT_MAX_BATCH_BYTES,
    parse=_segment_parse,
    map=segment.map_messages,
    ok=lambda mapped, call, request: (b"application/json", b'{"success":true}'),
    error=_segment_error,
)
SEGMENT_PATHS = ("/v1/batch", "/v1/import", *(f"/v1/{t}" for t in segment.CALL_TYPES))


# -- PostHog ----------------------------------------------------------------------------------


def _posthog_parse(call: Call) -> tuple[Any, str | None]:
    request = posthog.parse(call.body)
    return request, request.api_key


def _posthog_coding(call: Call) -> str | None:
    """posthog-js marks a gzipped body in the query (``compression=gzip-js``), not a header."""
    wanted = call.query.get("compression", [""])[-1]
    return "gzip" if wanted in ("gzip", "gzip-js") else None


def _posthog_error(exc: ProfilehookError) -> tuple[int, bytes]:
    status = exc.status_code if exc.status_code != 415 else 400
    if status == 401:
        body = {
            "type": "authentication_error",
            "code": "invalid_api_key",
            "detail": "Project API key invalid: send a profilehook key with the 'ingest' scope"
            " as api_key",
            "attr": None,
        }
    else:
        kind = (
            "throttled" if status == 429 else "validation_error" if status < 500 else "server_error"
        )
        body = {"type": kind, "code": f"http_{status}", "detail": _message(exc), "attr": None}
    return status, encode(body)


POSTHOG = Peer(
    source=posthog.SOURCE,
    max_body_bytes=c.POSTHOG_MAX_BODY_BYTES,
    parse=_posthog_parse,
    map=posthog.map_events,
    ok=lambda mapped, call, request: (b"application/json", b'{"status":1}'),
    error=_posthog_error,
    implied_coding=_posthog_coding,
)
POSTHOG_PATHS = ("/batch/", "/capture/", "/e/", "/i/v0/e/")


def _posthog_v1_parse(call: Call) -> tuple[Any, str | None]:
    """Capture v1 (``capture_mode="v1"``): the key is a Bearer token, never in the body."""
    return posthog.parse(call.body), keys.bearer_token(call.headers.get(b"authorization"))


def _posthog_v1_ok(mapped: Mapped, call: Call, request: Any) -> tuple[bytes, bytes]:
    """Capture v1's per-event results, by uuid: ``ok`` (stored, or nothing to store) or
    ``drop`` with why (a call skipped or rejected: sending it again would not help)."""
    results: dict[str, dict[str, str]] = {}
    for index, event in enumerate(request.events):
        uid = str(event.get("uuid")) if type(event) is dict else str(index)
        reason = mapped.failures.get(index)
        results[uid] = {"result": "ok"} if reason is None else {"result": "drop", "details": reason}
    return b"application/json", encode({"results": results})


POSTHOG_V1 = Peer(
    source=posthog.SOURCE,
    max_body_bytes=c.POSTHOG_MAX_BODY_BYTES,
    parse=_posthog_v1_parse,
    map=posthog.map_events,
    ok=_posthog_v1_ok,
    error=_posthog_error,
)
POSTHOG_V1_PATHS = ("/i/v1/analytics/events",)


# -- Amplitude --------------------------------------------------------------------------------


def _amplitude_parse(call: Call) -> tuple[Any, str | None]:
    if call.path == f"{AMPLITUDE_PREFIX}/identify":
        request = amplitude_http.parse_identify_form(call.body)
    else:
        request = amplitude_http.parse_json(call.body)
    return request, request.api_key


def _amplitude_ok(mapped: Mapped, call: Call, request: Any) -> tuple[bytes, bytes]:
    if call.path == f"{AMPLITUDE_PREFIX}/identify":
        return b"text/plain; charset=utf-8", b"success"
    answer = {
        "code": 200,
        "events_ingested": mapped.calls,
        "payload_size_bytes": len(call.body),
        "server_upload_time": time.time_ns() // 1_000_000,
    }
    return b"application/json", encode(answer)


def _amplitude_error(exc: ProfilehookError) -> tuple[int, bytes]:
    # The SDK reads the JSON ``code``: 400 is never retried (and an error starting "Invalid API
    # key:" stops the client), 413 splits the batch, 429 and 5xx are retried.
    status = exc.status_code
    body: dict[str, Any] = {"code": status, "error": _message(exc)}
    if isinstance(exc, InvalidApiKey):
        status = 400  # as Amplitude answers a wrong key
        body = {"code": 400, "error": "Invalid API key: not a profilehook key"}
    elif isinstance(exc, MissingScope):
        # Amplitude has no scopes: the HTTP status is profilehook's, the JSON code (which the
        # SDK reads) Amplitude's answer to a key that cannot send, which stops the client.
        body = {"code": 400, "error": f"Invalid API key: {exc.detail}"}
    elif isinstance(exc, PayloadTooLarge):
        body = {"code": 413, "error": "Payload too large"}
    elif status not in (408, 413, 429, 503):
        status = body["code"] = 400
    if isinstance(exc, PeerRefused):
        body.update(exc.fields)
    return status, encode(body)


AMPLITUDE = Peer(
    source=amplitude_http.SOURCE,
    max_body_bytes=c.AMPLITUDE_HTTP_MAX_BODY_BYTES,
    parse=_amplitude_parse,
    map=amplitude_http.map_events,
    ok=_amplitude_ok,
    error=_amplitude_error,
)
AMPLITUDE_PATHS = tuple(f"{AMPLITUDE_PREFIX}/{p}" for p in ("2/httpapi", "batch", "identify"))


def _message(exc: ProfilehookError) -> str:
    return exc.detail if isinstance(exc.detail, str) else str(exc)


# -- the handlers -----------------------------------------------------------------------------


PEERS: tuple[tuple[Peer, tuple[str, ...]], ...] = (
    (SEGMENT, SEGMENT_PATHS),
    (POSTHOG, POSTHOG_PATHS),
    (POSTHOG_V1, POSTHOG_V1_PATHS),
    (AMPLITUDE, AMPLITUDE_PATHS),
)


_LEFT_OUT = ("ignored", "skipped", "rejected", "too_old")
"""The outcomes of the calls a request's events leave out (``Mapped``), as counted."""


def peer_handlers(
    services: Services, deadlines: Deadlines | None = None, limiter: RateLimiter | None = None
) -> dict[str, Handler]:
    """The raw-ASGI POST handlers of every peer protocol, by path (``limiter``: the keys'
    token buckets, shared with the native endpoints)."""
    settings = services.settings
    deadlines = deadlines or Deadlines.from_settings(settings)
    limiter = limiter or RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    handlers: dict[str, Handler] = {}
    for peer, paths in PEERS:
        handler = _handler(services, deadlines, limiter, peer)
        handlers.update(dict.fromkeys(paths, handler))
    return handlers


def _handler(services: Services, deadlines: Deadlines, limiter: RateLimiter, peer: Peer) -> Handler:
    settings = services.settings
    counter = services.metrics.events
    accepted = counter.labels(peer.source, "accepted")

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with deadlines.watch(send) as watch:
                watch.reading_body()
                call = await _call(scope, receive, peer)
                watch.unwatched()  # parsing is bounded by the body cap
                # A large body is decoded (a piece at a time) and mapped in a thread, so that
                # the event loop every other request needs keeps answering meanwhile.
                large = len(call.body) > c.OFF_LOOP_BODY_BYTES
                request, key = (
                    await asyncio.to_thread(peer.parse, call) if large else peer.parse(call)
                )
                watch.awaiting_backend()
                grant = await keys.grant_of_key(services.store, key)
                if grant is None:
                    raise InvalidApiKey()
                if not grant.allows(ACCESS):
                    raise MissingScope(ACCESS)
                limiter.admit(keys.hash_key(key or ""))
                now = now_us()
                oldest_us = settings.oldest_accepted_us(now)
                if large:
                    watch.unwatched()
                    mapped = await asyncio.to_thread(
                        peer.map, request, grant.workspace, now, oldest_us
                    )
                else:
                    mapped = peer.map(request, grant.workspace, now, oldest_us)
                stored = None
                if mapped.events:
                    watch.awaiting_backend(len(mapped.events))
                    stored = services.queue.publish(mapped.events)
                # As the native batch does (api/ingest.py): what follows the commit is taken
                # before it, and the request let go, its events and the calls they were mapped
                # from (which their properties are part of), freed while still in the CPU's
                # caches.
                content_type, body = peer.ok(mapped, call, request)
                accepted_count = len(mapped.events)
                left_out = [(o, getattr(mapped, o)) for o in _LEFT_OUT if getattr(mapped, o)]
                del call, request, mapped
                if stored is not None:
                    await stored
        except ProfilehookError as exc:
            await _refuse(services, send, peer, exc)
            return
        accepted.inc(accepted_count)
        for outcome, count in left_out:
            counter.labels(peer.source, outcome).inc(count)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return handle


async def _refuse(services: Services, send: Send, peer: Peer, exc: ProfilehookError) -> None:
    if isinstance(exc, ClientDisconnected):
        return
    if isinstance(exc, AlreadyAnswered):
        services.metrics.requests_rejected.labels(str(exc.error.status_code)).inc()
        await exc.answer  # the deadline watchdog answered (408 or 503, in the one error shape)
        return
    status, body = peer.error(exc)
    services.metrics.requests_rejected.labels(str(status)).inc()
    await send_json(send, status, body, exc.headers)


async def _call(scope: Scope, receive: Receive, peer: Peer) -> Call:
    headers = dict(scope["headers"])
    try:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=32)
    except ValueError:  # too many fields: none of them is one a peer needs
        query = {}
    call = Call(scope["path"], headers, query, b"")
    declared = b", ".join(v for k, v in scope["headers"] if k == b"content-encoding")
    coding = coding_of(declared.decode("latin-1")) if declared else None
    coding = coding or peer.implied_coding(call)
    length = headers.get(b"content-length")
    if coding is None:
        body = await read_body(receive, length, peer.max_body_bytes)
    else:
        body = await read_decoded_body(receive, coding, length, peer.max_body_bytes)
    return Call(call.path, headers, query, body)
