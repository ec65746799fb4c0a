"""The read ceiling: the least an ASGI app can do for ``GET /v1/contacts/{id}``. It answers
every GET with one fixed profile JSON (the shape and size of a loaded contact's answer, from
the environment's ``READ_CEILING_BODY``, else a built-in one), read nothing, looked up
nothing."""

from __future__ import annotations

import os
from typing import Any

BODY = os.environ.get(
    "READ_CEILING_BODY",
    '{"contact_id":"c0000000","properties":{"plan":"pro"},"updated_at":"2023-01-01T00:00:00Z",'
    '"versions":{"plan":{"timestamp":1672531200,"event_id":"load-0000000"}}}',
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
