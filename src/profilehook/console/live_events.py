"""Live events: the tail of what arrives (live.py's bus), as Server-Sent Events, per source
and contact, refused calls with their reason, each with a copy-as-curl."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from profilehook.api.access import ScopedRoute
from profilehook.api.responses import json_response
from profilehook.console.web import Console, Viewer, secured
from profilehook.events import iso
from profilehook.live import Call
from profilehook.views import event_status

PING_S = 15.0  # a comment this often keeps proxies from closing an idle stream
POLL_S = 0.5  # how soon an open stream ends when the server stops
MAX_STATUS_IDS = 50


def call_view(call: Call, base_url: str) -> dict[str, Any]:
    """A call as the tail shows it."""
    return {
        "seq": call.seq,
        "at": iso(call.at_us),
        "source": call.source,
        "source_id": call.source_id,
        "method": call.method,
        "target": call.target,
        "status": call.status,
        "accepted": call.accepted,
        "detail": call.detail,
        "event_ids": list(call.event_ids),
        "event_count": call.event_count,
        "contact_ids": list(call.contact_ids),
        "body": call.body.decode("utf-8", "replace"),
        "truncated": call.truncated,
        "curl": as_curl(call, base_url),
    }


def as_curl(call: Call, base_url: str) -> str:
    """A shell command that sends ``call`` again (its credential as ``$KEY``/``$SECRET``)."""
    parts = ["curl", "-X", call.method, shlex.quote(base_url.rstrip("/") + call.target)]
    for name, value in call.headers:
        if name == "content-encoding":
            continue  # the tail keeps the decoded body
        if name in ("authorization", "x-api-key") and value.endswith(("$KEY", "$SECRET")):
            parts += ["-H", f'"{name}: {value}"']  # the shell fills in the credential
        else:
            parts += ["-H", shlex.quote(f"{name}: {value}")]
    if call.body:
        parts += ["--data-binary", shlex.quote(call.body.decode("utf-8", "replace"))]
    return " ".join(parts)


def live_routes(console: Console) -> list[ScopedRoute]:
    services = console.services
    base_url = services.settings.base_url

    async def page(request: Request, viewer: Viewer) -> Response:
        return console.render(
            request,
            viewer,
            "live.html",
            source=request.query_params.get("source", ""),
            contact=request.query_params.get("contact", ""),
        )

    async def stream(request: Request, viewer: Viewer) -> Response:
        source = request.query_params.get("source") or None
        contact = request.query_params.get("contact") or None
        watcher = services.live.watch(viewer.workspace)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n: connected\n\n"
                idle_s = 0.0
                # Until the server stops (uvicorn would wait for an open stream forever).
                while not console.closing.is_set():
                    try:
                        call = await asyncio.wait_for(watcher.queue.get(), POLL_S)
                    except TimeoutError:
                        idle_s += POLL_S
                        if idle_s < PING_S:
                            continue
                        idle_s = 0.0
                        # The session ends with its key: checked here too, not only per page.
                        if await console.viewer(request) is None:
                            yield b"event: ended\ndata: {}\n\n"
                            return
                        yield b": ping\n\n"
                        continue
                    if source and source not in (call.source, call.source_id):
                        continue
                    if contact and contact not in call.contact_ids:
                        continue
                    data = msgspec.json.encode(call_view(call, base_url))
                    yield b"id: %d\nevent: call\ndata: %s\n\n" % (call.seq, data)
            finally:
                services.live.unwatch(watcher)

        response = StreamingResponse(events(), media_type="text/event-stream")
        response.headers["x-accel-buffering"] = "no"
        return secured(response)

    async def statuses(request: Request, viewer: Viewer) -> Response:
        found = {}
        for event_id in request.query_params.getlist("id")[:MAX_STATUS_IDS]:
            view = await event_status(services.queue, services.store, viewer.workspace, event_id)
            found[event_id] = None if view is None else view["status"]
        return secured(json_response(found))

    return [
        console.page("/console/live", page),
        console.page("/console/live/stream", stream),
        console.page("/console/live/status", statuses),
    ]
