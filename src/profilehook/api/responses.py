"""Building HTTP answers: the one error body shape, and raw-ASGI sends for the hot path."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response
from starlette.types import Send

from profilehook.errors import ProfilehookError

_encode = msgspec.json.Encoder().encode
JSON = b"application/json"


def error_body(detail: Any) -> bytes:
    """Every error answer is ``{"detail": ...}`` (a message, or FastAPI's problem list)."""
    return _encode({"detail": detail})


def error_response(exc: ProfilehookError) -> Response:
    return Response(
        error_body(exc.detail),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(_encode(content), status_code=status_code, media_type="application/json")


def json_headers(body: bytes, headers: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    """A JSON answer's headers: its type, its length, then ``headers``."""
    raw_headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    if headers:
        raw_headers.extend((k.encode(), v.encode()) for k, v in headers.items())
    return raw_headers


async def send_json(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": json_headers(body, headers)}
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: ProfilehookError) -> None:
    await send_json(send, exc.status_code, error_body(exc.detail), exc.headers)


def encode(content: Any) -> bytes:
    return _encode(content)
