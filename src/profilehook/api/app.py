"""The ASGI application: the raw ingest handlers first, Starlette for every other route."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from profilehook.api.access import ScopedRoute
from profilehook.api.changes import change_routes
from profilehook.api.contact_read import PREFIX as CONTACT_PREFIX
from profilehook.api.contact_read import Answer, ContactRead, plain_contact_target
from profilehook.api.deadlines import Deadlines
from profilehook.api.destinations import destination_routes
from profilehook.api.ingest import ACCESS as INGEST_ACCESS
from profilehook.api.ingest import AtOnce, Handler, direct_handlers, ingest_handlers
from profilehook.api.management import management_routes
from profilehook.api.peers import peer_handlers
from profilehook.api.queries import query_routes
from profilehook.api.ratelimit import RateLimiter
from profilehook.api.responses import error_body, error_response
from profilehook.api.routes import read_routes
from profilehook.api.segments import segment_routes
from profilehook.api.webhooks import PATH_PREFIX, webhook_handler
from profilehook.applier import Applier, StallWatch
from profilehook.applier_process import ApplierProcess
from profilehook.console.overview import Series
from profilehook.console.routes import console_routes
from profilehook.console.web import Console
from profilehook.destinations.delivery import Deliverer
from profilehook.erasure import Eraser
from profilehook.errors import ProfilehookError
from profilehook.live_nats import LiveFanout
from profilehook.retention import ChangePurger, HistoryPurger
from profilehook.segments import Backfiller
from profilehook.service import Services
from profilehook.settings import Settings

log = logging.getLogger(__name__)

AppliesIn = Literal["process", "task", "nowhere"]
"""Where ``serve`` applies the log to the store: a child process (``serve``'s default, see
applier_process.py), a task of the server's own event loop (in-memory backends, tests), or
nowhere (``--no-applier``: ``profilehook worker`` processes do it)."""


class ProfilehookApp:
    """Dispatches the ingest POSTs and ``GET /v1/contacts/{id}`` without Starlette's routing;
    all else goes to Starlette."""

    def __init__(self, services: Services, applies_in: AppliesIn = "task"):
        self.services = services
        self.applies_in = applies_in
        self.deadlines = Deadlines.from_settings(services.settings)
        self.eraser = Eraser(services.queue, services.store)
        # The SDK-compatible endpoints (api/peers.py) take the same raw path as the native ones,
        # and a key has one rate limit across both.
        keys_limit = RateLimiter(
            services.settings.rate_limit_per_s, services.settings.rate_limit_burst
        )
        self._ingest = ingest_handlers(services, self.deadlines, keys_limit) | peer_handlers(
            services, self.deadlines, keys_limit
        )
        self.backfiller = Backfiller(services.store)
        self._webhooks = webhook_handler(services, self.deadlines)
        # The ingest paths are also known to Starlette, so that other methods get a 405.
        # Their handlers check what these routes declare (api/access.py).
        ingest_routes = [
            ScopedRoute(
                path, _AsgiEndpoint(handler), access=INGEST_ACCESS, methods=["POST"], raw=True
            )
            for path, handler in self._ingest.items()
        ] + [
            ScopedRoute(
                PATH_PREFIX + "{source_id}",
                _AsgiEndpoint(self._webhooks),
                access="source",
                methods=["POST"],
                raw=True,
            )
        ]
        self.console = Console(services)
        self.series = Series(services.metrics, services.queue)
        self._starlette = Starlette(
            routes=ingest_routes
            + query_routes(services)
            + segment_routes(services, self.backfiller)
            + read_routes(services, self.deadlines, self._stall_watch(), self.eraser)
            + management_routes(services)
            + change_routes(services)
            + destination_routes(services)
            + console_routes(self.console, self.series, self.eraser, self.backfiller),
            lifespan=self._lifespan,
            exception_handlers={
                HTTPException: _http_exception,
                ProfilehookError: _profilehook_error,
                Exception: _unexpected,
            },
        )
        self._contact_read = ContactRead(services, self._starlette)
        # The hot requests that the HTTP protocol (api/protocol.py) hands to their handlers
        # without uvicorn's request cycle, by their request target as it is.
        self.direct_posts: dict[bytes, Handler] = {
            path.encode(): self._ingest[path] for path in ("/v1/properties", "/v1/properties/batch")
        }
        # Their bodies' limits: a body within its limit that does not come whole with its
        # head is awaited by the protocol too (a larger one is refused by the handler, on
        # uvicorn's path, as soon as its head is in).
        self.direct_body_limits: dict[bytes, int] = {
            b"/v1/properties": services.settings.max_single_body_bytes,
            b"/v1/properties/batch": services.settings.max_batch_body_bytes,
        }
        # Of them, those whose handler answers from a callback, without a task, when the body
        # is in hand.
        self.direct_at_once: dict[bytes, AtOnce] = {
            path.encode(): handler
            for path, handler in direct_handlers(services, self.deadlines, keys_limit).items()
        }

    def direct_read(self, target: bytes, scope: Scope) -> Answer | object:
        """A contact's read answered on this thread, for the protocol to write; ``None`` when
        ``target`` is not a plain contact path, else as ``ContactRead.answer_at_once``."""
        if not plain_contact_target(target):
            return None
        return self._contact_read.answer_at_once(scope)

    def _stall_watch(self) -> StallWatch | None:
        if self.applies_in == "nowhere":
            return None  # appliers elsewhere: their progress is not this server's to judge
        return StallWatch(self.services.settings.applier_stall_s)

    def stopping(self) -> None:
        """The server stops taking requests: end the responses that would never end by
        themselves (the console's live tails), so that it is not kept waiting for them."""
        self.console.close_streams()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "POST":
                handler = self._ingest.get(scope["path"])
                if handler is not None:
                    await handler(scope, receive, send)
                    return
                if scope["path"].startswith(PATH_PREFIX):
                    await self._webhooks(scope, receive, send)
                    return
            elif method == "GET" and scope["path"].startswith(CONTACT_PREFIX):
                await self._contact_read(scope, receive, send)
                return
        await self._starlette(scope, receive, send)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.services.open()
        stop = asyncio.Event()
        task = purging = purging_changes = delivering = None
        services = self.services
        # Erasures are executed here (whatever applies): this process writes the embedded log.
        erasing = asyncio.create_task(self.eraser.run(stop), name="eraser")
        sampling = asyncio.create_task(self.series.run(stop), name="console-overview")
        # New segments are filled from the profiles here (any number of servers may: a
        # segment's chunks take its row's lock, or the one SQLite writer).
        backfilling = asyncio.create_task(self.backfiller.run(stop), name="segment-backfill")
        # Scaled out, the console's live tail shows what every server receives (live_nats.py).
        sharing = None
        if services.settings.queue_url.startswith(("nats://", "tls://")):
            fanout = LiveFanout(
                services.live, services.settings.queue_url, services.settings.connect_timeout_s
            )
            sharing = asyncio.create_task(fanout.run(stop), name="live-fanout")
        if self.applies_in == "task":
            applier = Applier(
                services.queue,
                services.store,
                services.metrics,
                services.settings.apply_batch_max_events,
            )
            task = asyncio.create_task(applier.run(stop), name="applier")
            purger = HistoryPurger(services.store, services.metrics, services.settings)
            purging = asyncio.create_task(purger.run(stop), name="history-purge")
            purging_changes = asyncio.create_task(
                ChangePurger(services.store, services.settings).run(stop), name="change-purge"
            )
            deliverer = Deliverer(services.store, services.settings)
            applier.on_applied = deliverer.changes_committed
            delivering = asyncio.create_task(deliverer.run(stop), name="destinations")
        elif self.applies_in == "process":
            process = ApplierProcess(services.settings, services.metrics, services.queue)
            task = asyncio.create_task(process.run(stop), name="applier-process")
        try:
            yield
        finally:
            stop.set()
            for running_task in (
                task,
                purging,
                purging_changes,
                delivering,
                erasing,
                sampling,
                backfilling,
                sharing,
            ):
                if running_task is not None:
                    with suppress(asyncio.CancelledError):
                        await running_task
            await self.services.close()


class _AsgiEndpoint:
    """Makes Starlette treat a handler function as a raw ASGI app, not a request handler."""

    def __init__(self, handler: Handler):
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


def create_app(settings: Settings, applies_in: AppliesIn = "task") -> ProfilehookApp:
    """The app for ``settings``; backends open in its lifespan. Raises ``ConfigurationError``."""
    return ProfilehookApp(Services.from_settings(settings), applies_in)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return Response(
        error_body(exc.detail),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


async def _profilehook_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProfilehookError)
    return error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return Response(error_body("Internal error"), status_code=500, media_type="application/json")
