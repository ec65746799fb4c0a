"""The ingest hot path, as raw ASGI: auth -> rate limit -> bounded body -> validate -> durable
append -> 202, each wait under a deadline (api/deadlines.py).

Starlette's routing and request objects cost about as much CPU as everything else on this
path together (benchmarks/README.md), so the two POST endpoints are plain ASGI callables.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from starlette.types import Message, Receive, Scope, Send

from profilehook import constants as c
from profilehook import keys
from profilehook.api.access import Access
from profilehook.api.content_coding import coding_of, read_decoded_body
from profilehook.api.deadlines import BODY_SINCE, AlreadyAnswered, Deadlines, Watch
from profilehook.api.ratelimit import RateLimiter
from profilehook.api.responses import encode, send_error, send_json
from profilehook.errors import (
    ClientDisconnected,
    InvalidApiKey,
    MissingScope,
    PayloadTooLarge,
    ProfilehookError,
)
from profilehook.events import Event, now_us
from profilehook.live import Call, LiveCalls, body_excerpt, first_ids, kept_headers
from profilehook.plain_batch import PlainBatch
from profilehook.service import Services
from profilehook.sources import native
from profilehook.stores.base import KeyGrant
from profilehook.validation import check_json_content_type

log = logging.getLogger(__name__)

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
ACCESS: Access = "ingest"
"""What every handler here needs: the app declares it for their routes (api/access.py), and
``_authorized_body`` checks it on the lookup that finds the key."""


def ingest_handlers(
    services: Services, deadlines: Deadlines | None = None, limiter: RateLimiter | None = None
) -> dict[str, Handler]:
    """The raw-ASGI POST handlers by path (``limiter``: the keys' token buckets, when shared
    with other endpoints)."""
    accepted = services.metrics.events.labels(native.SOURCE, "accepted")
    rejected = services.metrics.events.labels(native.SOURCE, "rejected")
    settings = services.settings
    deadlines = deadlines or Deadlines.from_settings(settings)
    limiter = limiter or RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)

    live = services.live

    async def single(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        try:
            with deadlines.watch(send) as watch:
                workspace, body = await _authorized_body(
                    services, scope, receive, settings.max_single_body_bytes, limiter, watch
                )
                now = now_us()
                event = native.parse_single(body, workspace, now, settings.oldest_accepted_us(now))
                watch.awaiting_backend()
                await services.queue.publish([event])
        except ProfilehookError as exc:
            await refuse_told(services, scope, body, exc, send)
            return
        accepted.inc()
        if live.watched:
            tell_accepted(live, workspace, scope, body, 202, Shown.of([event]))
        await send_json(send, 202, _single_answer(event))

    async def batch(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        try:
            with deadlines.watch(send) as watch:
                workspace, body = await _authorized_body(
                    services, scope, receive, settings.max_batch_body_bytes, limiter, watch
                )
                now = now_us()
                oldest = settings.oldest_accepted_us(now)
                # Every item valid (the everyday case): no per-item sorting out, and a
                # lighter answer.
                items: list[native.BatchItem] | None = None
                events: Sequence[Event] | None = native.whole_batch(body, workspace, now, oldest)
                if events is None:
                    items = native.batch_in_general(body, workspace, now, oldest)
                    events = [item for item in items if isinstance(item, Event)]
                watch.awaiting_backend(len(events))
                stored = services.queue.publish(events)
                # What follows the commit is taken before it, and the events are let go:
                # freed now, while the CPU's caches still hold them, they cost a fraction of
                # what they do after the wait, when other requests have pushed them out (a
                # third of the event loop's CPU a request: benchmarks/README.md). The log's own
                # copy is encoded (or held) by ``publish``. The peers' and webhooks' handlers
                # do the same (api/peers.py, api/webhooks.py). A plain batch's events are not
                # made at all when the log keeps its body (plain_batch.py).
                answer = _batch_answer(events, items)
                accepted_count = len(events)
                rejected_count = 0 if items is None else len(items) - accepted_count
                # (a tail opened meanwhile misses it)
                shown = Shown.of(events) if live.watched else None
                del events, items
                await stored
        except ProfilehookError as exc:
            await refuse_told(services, scope, body, exc, send)
            return
        accepted.inc(accepted_count)
        if rejected_count:
            rejected.inc(rejected_count)
        if shown is not None and live.watched:  # (watched at the publish and still)
            tell_accepted(live, workspace, scope, body, 202, shown)
        await send_json(send, 202, answer)

    return {"/v1/properties": single, "/v1/properties/batch": batch}


class DirectRequest(Protocol):
    """A request whose head and whole body are in hand, handled without a task of its own
    (api/protocol.py ``_Direct``)."""

    scope: Scope

    async def send(self, message: Message) -> None:
        """ASGI's ``send``, for answers given in a task (``later``)."""

    def answer(self, status: int, body: bytes) -> None:
        """Answer with the JSON ``body`` now (after the transport drains, when its reader is
        slow)."""

    def later(self, work: Awaitable[None]) -> None:
        """Run ``work`` as the request's task, to end it (as an ASGI handler would)."""


AtOnce = Callable[[DirectRequest, bytes], None]


def direct_handlers(
    services: Services, deadlines: Deadlines, limiter: RateLimiter
) -> dict[str, AtOnce]:
    """``POST /v1/properties`` for a request whose whole body is in hand (``DirectRequest``),
    when the store checks keys on the calling thread (``keys.GrantsAtOnce``; else none): see
    ``_SingleAtOnce``. The same answers and counts as ``ingest_handlers``' ``single`` with the
    same ``deadlines`` and ``limiter`` (tests/test_direct_path.py)."""
    if not isinstance(services.store, keys.GrantsAtOnce):
        return {}
    return {"/v1/properties": _SingleAtOnce(services, services.store, deadlines, limiter)}


class _SingleAtOnce:
    """The single-event POST without a task or a coroutine: the checks run as the request is
    parsed, its event is appended at the end of the event loop's pass with the others of that
    pass, in one append under one deadline, and the 202s are written from that append's
    callback. A refusal, or a reader too slow to take the answer at once, ends in a task, as
    under ``single``.

    The appends wait for the pass's end because made one by one as requests are parsed, the
    first woke the log's writer for a commit of its own: C committed ~10 requests at a time
    instead of ~28, and the writer's CPU per request rose by half (benchmarks/README.md)."""

    def __init__(
        self,
        services: Services,
        store: keys.GrantsAtOnce,
        deadlines: Deadlines,
        limiter: RateLimiter,
    ):
        self.services = services
        self.deadlines = deadlines
        self.limiter = limiter
        self.accepted = services.metrics.events.labels(native.SOURCE, "accepted")
        self.key_grant = store.key_grant_at_once
        self.max_body_bytes = services.settings.max_single_body_bytes
        self.pending: list[tuple[DirectRequest, bytes, str, Event]] = []

    def __call__(self, request: DirectRequest, body: bytes) -> None:
        scope = request.scope
        try:
            headers, authorization = _credentials(scope)
            key_hash = keys.key_hash_of(authorization)
            grant = None if key_hash is None else self.key_grant(key_hash)
            workspace = _admitted(grant, authorization, headers, self.limiter)
            length, most = headers.get(b"content-length"), self.max_body_bytes
            if _too_large(length, most) or len(body) > most:
                raise PayloadTooLarge(most)
            now = now_us()
            oldest = self.services.settings.oldest_accepted_us(now)
            event = native.parse_single(body, workspace, now, oldest)
        except ProfilehookError as exc:
            self.deadlines.failed(exc)  # (as the watch of ``single`` notes a backend's failure)
            request.later(refuse_told(self.services, scope, body, exc, request.send))
            return
        except Exception as exc:  # (as the task of ``single`` would end)
            request.later(_raise(exc))
            return
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._publish)
        self.pending.append((request, body, workspace, event))

    def _publish(self) -> None:
        """Append the pass's events in one append, watched by one deadline, and answer them all
        from its one callback: a future, a job, a watch and a callback a pass, not one each a
        request (benchmarks/README.md, session 22)."""
        pending, self.pending = self.pending, []
        publish, events = self.services.queue.publish, [event for _, _, _, event in pending]
        try:
            stored = asyncio.ensure_future(publish(events))
        except ProfilehookError as exc:
            self.deadlines.failed(exc)
            for request, body, _, _ in pending:
                request.later(refuse_told(self.services, request.scope, body, exc, request.send))
            return
        except Exception as exc:
            for request, _, _, _ in pending:
                request.later(_raise(exc))
            return
        watch = self.deadlines.watch(_SendToAll([request for request, _, _, _ in pending]), stored)
        stored.add_done_callback(functools.partial(self._answer, pending, watch))

    def _answer(
        self,
        pending: list[tuple[DirectRequest, bytes, str, Event]],
        watch: Watch,
        done: asyncio.Future[None],
    ) -> None:
        """The append of the pass's events is ``done``: answer each 202, or what it failed
        with."""
        services = self.services
        try:
            failure = asyncio.CancelledError() if done.cancelled() else done.exception()
            watch.ended(failure)  # (raises AlreadyAnswered past the deadline)
            if failure is not None:
                raise failure
        except ProfilehookError as exc:
            for request, body, _, _ in pending:
                request.later(refuse_told(services, request.scope, body, exc, request.send))
            return
        except BaseException as exc:  # (as the task of ``single`` would end)
            for request, _, _, _ in pending:
                request.later(_raise(exc))
            return
        self.accepted.inc(len(pending))
        live = services.live
        for request, body, workspace, event in pending:
            if live.watched:
                tell_accepted(live, workspace, request.scope, body, 202, Shown.of([event]))
            request.answer(202, _single_answer(event))


class _SendToAll:
    """One ``send`` for the requests of a pass, which share an append and its deadline: the
    answer the deadline's watchdog sends goes to each of them, whole, each at its own pace (a
    slow reader's drain holds back no other answer)."""

    __slots__ = ("requests", "start")

    def __init__(self, requests: list[DirectRequest]):
        self.requests = requests
        self.start: Message | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        assert self.start is not None, "an answer's head comes before its body"
        await asyncio.gather(
            *[_send_whole(request, self.start, message) for request in self.requests]
        )


async def _send_whole(request: DirectRequest, start: Message, body: Message) -> None:
    await request.send(start)
    await request.send(body)


def _single_answer(event: Event) -> bytes:
    return b'{"status":"accepted","event_id":%s}' % encode(event.event_id)


async def _raise(exc: BaseException) -> None:
    raise exc


async def refuse_told(
    services: Services, scope: Scope, body: bytes, exc: ProfilehookError, send: Send
) -> None:
    """Answer ``exc`` (``refuse``), told first to the console's live tail when it is watched."""
    if services.live.watched:
        await tell_refused(services, scope, body, exc)
    await refuse(services, send, exc)


def _batch_answer(events: Sequence[Event], items: list[native.BatchItem] | None) -> bytes:
    """The batch endpoint's answer (README, Sending updates): ``items`` each accepted or
    rejected, or when None, ``events`` all accepted."""
    if items is None:
        ids = (
            events.event_ids()
            if isinstance(events, PlainBatch)
            else [event.event_id for event in events]
        )
        answer = _all_accepted(ids)
        if answer is not None:
            return answer
        accepted: list[_Accepted | _Rejected] = [
            _Accepted(i, "accepted", event_id) for i, event_id in enumerate(ids)
        ]
        return encode(_BatchAnswer(len(events), 0, accepted))
    results: list[_Accepted | _Rejected] = [
        _Accepted(i, "accepted", item.event_id)
        if isinstance(item, Event)
        else _Rejected(i, "rejected", item)
        for i, item in enumerate(items)
    ]
    return encode(_BatchAnswer(len(events), len(items) - len(events), results))


def _all_accepted(ids: list[str]) -> bytes | None:
    """The answer to a batch whose events were all accepted, ``ids`` theirs, byte for byte as
    ``_BatchAnswer`` encodes (tests/test_batch_answer.py), but from a template with the ids set
    in it as they are, when none needs escaping in JSON (the ids made here never do; a client's
    rarely): half the CPU. None when one does."""
    count = len(ids)
    if not 0 < count <= c.MAX_BATCH_EVENTS or "".join(ids).encode(errors="surrogatepass").translate(
        None, _PLAIN
    ):
        return None
    parts = _ACCEPTED_HEADS[: 2 * count]  # (a copy) every other one an id's place
    parts[1::2] = ids
    return b'{"accepted":%d,"rejected":0,"results":[%s"}]}' % (count, "".join(parts).encode())


def _accepted_heads() -> list[str]:
    """For each index, what comes before its id in an all-accepted answer (from the end of the
    previous id on), then "" where the id goes."""
    parts: list[str] = []
    for index in range(c.MAX_BATCH_EVENTS):
        parts += (
            ('"},' if index else "") + f'{{"index":{index},"status":"accepted","event_id":"',
            "",
        )
    return parts


_ACCEPTED_HEADS = _accepted_heads()
_PLAIN = bytes(byte for byte in range(0x20, 0x7F) if byte not in b'"\\')
"""The bytes msgspec writes as they are in a JSON string (printable ASCII but quote and backslash)."""


class _Accepted(msgspec.Struct, frozen=True):
    index: int
    status: str
    event_id: str


class _Rejected(msgspec.Struct, frozen=True):
    index: int
    status: str
    detail: list[Any]


class _BatchAnswer(msgspec.Struct, frozen=True):
    """The batch endpoint's answer (README, Sending updates); Structs encode several times faster than dicts."""

    accepted: int
    rejected: int
    results: list[_Accepted | _Rejected]


@dataclass(frozen=True)
class Shown:
    """What the live tail shows of a call's events: the first ids of them and of their
    contacts, and how many. Taken before their commit is awaited, so that the events need not
    be held across it (see ``ingest_handlers``' ``batch``)."""

    event_ids: tuple[str, ...]
    contact_ids: tuple[str, ...]
    event_count: int

    @classmethod
    def of(cls, events: Sequence[Event]) -> Shown:
        return cls(
            first_ids(e.event_id for e in events),
            first_ids(e.contact_id for e in events),
            len(events),
        )


def tell_accepted(
    live: LiveCalls,
    workspace: str,
    scope: Scope,
    body: bytes,
    status: int,
    shown: Shown,
    source: str = native.SOURCE,
    source_id: str | None = None,
) -> None:
    """Post an accepted call, ``shown`` of its events, to the console's live tail (live.py)."""
    excerpt, truncated = body_excerpt(body)
    live.publish(
        Call(
            workspace=workspace,
            at_us=now_us(),
            source=source,
            source_id=source_id,
            method=scope["method"],
            target=_target(scope),
            headers=kept_headers(scope["headers"], "$KEY" if source_id is None else "$SECRET"),
            body=excerpt,
            truncated=truncated,
            status=status,
            detail=None,
            event_ids=shown.event_ids,
            contact_ids=shown.contact_ids,
            event_count=shown.event_count,
        )
    )


async def tell_refused(
    services: Services,
    scope: Scope,
    body: bytes,
    exc: ProfilehookError,
    source: str = native.SOURCE,
    source_id: str | None = None,
    workspace: str | None = None,
) -> None:
    """Post a refused call to the live tail of the workspace it belongs to: the key's (a call
    without a valid key belongs to nobody and is not shown) or the webhook source's."""
    if isinstance(exc, ClientDisconnected):
        return
    if workspace is None:
        authorization = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(authorization) != 1:
            return
        grant = await keys.authenticate(services.store, authorization[0])
        if grant is None:
            return
        workspace = grant.workspace
    excerpt, truncated = body_excerpt(body)
    status = exc.status_code
    services.live.publish(
        Call(
            workspace=workspace,
            at_us=now_us(),
            source=source,
            source_id=source_id,
            method=scope["method"],
            target=_target(scope),
            headers=kept_headers(scope["headers"], "$KEY" if source_id is None else "$SECRET"),
            body=excerpt,
            truncated=truncated,
            status=status,
            detail=exc.detail,
        )
    )


def _target(scope: Scope) -> str:
    raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{raw_path}?{query}" if query else raw_path


async def refuse(services: Services, send: Send, exc: ProfilehookError) -> None:
    if isinstance(exc, ClientDisconnected):
        return
    services.metrics.requests_rejected.labels(str(exc.status_code)).inc()
    if isinstance(exc, AlreadyAnswered):
        await exc.answer  # sent by the deadline watchdog: the request ends when it is out
        return
    await send_error(send, exc)


async def _authorized_body(
    services: Services,
    scope: Scope,
    receive: Receive,
    max_body_bytes: int,
    limiter: RateLimiter,
    watch: Watch,
) -> tuple[str, bytes]:
    """Check the key (and its scope), its rate, the content type, then read the body up to the cap."""
    headers, authorization = _credentials(scope)
    grant = await keys.authenticate(services.store, authorization)
    workspace = _admitted(grant, authorization, headers, limiter)
    watch.reading_body(scope.get(BODY_SINCE))
    if b"content-encoding" in headers:
        return workspace, await _decoded_body(receive, scope, headers, max_body_bytes)
    return workspace, await read_body(receive, headers.get(b"content-length"), max_body_bytes)


async def _decoded_body(
    receive: Receive, scope: Scope, headers: dict[bytes, bytes], max_body_bytes: int
) -> bytes:
    """The body of a request that declares a Content-Encoding, decoded. Raises 400, 413, 415."""
    declared = b", ".join(v for k, v in scope["headers"] if k == b"content-encoding")
    coding = coding_of(declared.decode("latin-1"))
    length = headers.get(b"content-length")
    if coding is None:  # identity
        return await read_body(receive, length, max_body_bytes)
    return await read_decoded_body(receive, coding, length, max_body_bytes)


def _credentials(scope: Scope) -> tuple[dict[bytes, bytes], bytes | None]:
    """The request's headers by name, and its Authorization header (None when repeated: two
    keys are refused, rather than choosing one of them)."""
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization")
    if len(headers) != len(scope["headers"]) and _repeated(scope["headers"], b"authorization"):
        authorization = None
    return headers, authorization


def _admitted(
    grant: KeyGrant | None,
    authorization: bytes | None,
    headers: dict[bytes, bytes],
    limiter: RateLimiter,
) -> str:
    """The workspace of a request whose key ``grant``s ingestion within the key's rate and
    whose content type is JSON. Raises 401, 403, 429, 415 (in that order)."""
    if grant is None:
        raise InvalidApiKey()
    if not grant.allows(ACCESS):
        raise MissingScope(ACCESS)
    limiter.admit(keys.key_hash_of(authorization) or "")
    check_json_content_type(headers.get(b"content-type"))
    return grant.workspace


def _repeated(headers: list[tuple[bytes, bytes]], name: bytes) -> bool:
    """True when header ``name`` appears more than once (only called when some header does)."""
    return sum(1 for key, _ in headers if key == name) > 1


async def read_body(receive: Receive, content_length: bytes | None, limit_bytes: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed ``limit_bytes``."""
    if _too_large(content_length, limit_bytes):
        raise PayloadTooLarge(limit_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLarge(limit_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(content_length: bytes | None, limit_bytes: int) -> bool:
    """Whether a Content-Length header declares a body over ``limit_bytes``."""
    return (
        content_length is not None
        and content_length.isdigit()
        and int(content_length) > limit_bytes
    )
