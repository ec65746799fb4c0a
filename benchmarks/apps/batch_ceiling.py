"""The batch ceiling: the least an ASGI app can do with D's batch body. It reads the body,
decodes it with msgspec into typed Structs of the event's shape (what validating it takes at
the least) and answers 202 with the counts; nothing is stored."""

from __future__ import annotations

from typing import Any

import msgspec


class _Event(msgspec.Struct):
    contact_id: str
    event_name: str
    timestamp: float
    user_properties: dict[str, Any]
    metadata: dict[str, Any] | None = None
    event_id: str | None = None


class _Batch(msgspec.Struct):
    events: list[_Event]


_decode = msgspec.json.Decoder(_Batch).decode
HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    count = len(_decode(b"".join(chunks)).events)
    body = b'{"accepted":%d,"rejected":0}' % count
    headers = [*HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})
