"""Slow clients (SPEC 5): the request head and the body must each arrive in time.

The body deadline is the app's (api/deadlines.py), so it holds under any ASGI server; the
head deadline is the HTTP protocol's (api/protocol.py), so it holds under ``profilehook
serve``. Both are checked against a real server on a raw socket, the body one in-process too.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from profilehook import keys
from profilehook.api.deadlines import TICK_S, Deadlines, Watch
from profilehook.api.ingest import ingest_handlers
from profilehook.service import Services
from profilehook.settings import Settings
from tests.support import ServerProcess, create_key

TIMEOUT_S = 1.0
EVENT = msgspec.json.encode(
    {"contact_id": "c", "event_name": "e", "timestamp": 1, "user_properties": {"a": 1}}
)


def test_the_defaults_are_10_s_for_the_head_and_the_body_and_backends_answer_within_1_s():
    settings = Settings()
    assert (settings.header_timeout_s, settings.body_timeout_s) == (10.0, 10.0)
    assert settings.backend_timeout_s + TICK_S < 1.0


# -- in process: the body deadline of the ingest handler ---------------------------------------


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
    found = Services.from_settings(settings)
    await found.open()
    yield found
    await found.close()


async def call(
    services: Services, deadlines: Deadlines, chunks: list[bytes], stall: bool
) -> tuple[dict[str, Any], float]:
    """POST /v1/properties straight into the raw handler; the body arrives as ``chunks``,
    then, when ``stall``, never completes. Returns the answer's start message and its time."""
    key, _ = await keys.create_key(services.store, "acme")
    handler = ingest_handlers(services, deadlines)["/v1/properties"]
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return {
                "type": "http.request",
                "body": pending.pop(0),
                "more_body": stall or bool(pending),
            }
        await asyncio.Event().wait()  # the client stalls: no byte, no disconnect
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/properties",
        "headers": [(b"authorization", f"Bearer {key}".encode())],
    }
    started = time.monotonic()
    async with asyncio.timeout(5):
        await handler(scope, receive, send)
    return sent[0], time.monotonic() - started


async def test_a_body_that_stalls_midway_is_answered_408_at_the_deadline(services):
    answer, took_s = await call(services, Deadlines(0.3, 0.8), [EVENT[:10]], stall=True)
    assert answer["status"] == 408
    assert (b"connection", b"close") in answer["headers"]
    assert 0.3 <= took_s < 0.6


async def test_a_body_that_arrives_in_pieces_within_the_deadline_is_accepted(services):
    answer, _ = await call(services, Deadlines(0.3, 0.8), [EVENT[:10], EVENT[10:]], stall=False)
    assert answer["status"] == 202


async def test_after_a_timeout_the_next_request_is_not_cancelled(services):
    deadlines = Deadlines(0.2, 0.8)
    first, _ = await call(services, deadlines, [b"{"], stall=True)
    await asyncio.sleep(0.3)  # the watchdog ticks with nothing to do, and stops
    second, _ = await call(services, deadlines, [EVENT], stall=False)
    assert (first["status"], second["status"]) == (408, 202)


# -- a real server, raw sockets ---------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    data_dir = tmp_path_factory.mktemp("slow") / "data"
    key = create_key(data_dir)["key"]
    env = {
        "PROFILEHOOK_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "PROFILEHOOK_BODY_TIMEOUT_S": str(TIMEOUT_S),
    }
    server = ServerProcess(data_dir, extra_env=env).start()
    try:
        yield server, key
    finally:
        server.stop()


def exchange(server: ServerProcess, *parts: bytes) -> tuple[bytes, float]:
    """Send ``parts`` on a fresh connection, then stall; return everything the server sent
    until it closed the connection, and how long after the last part that took."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for part in parts:
            sock.sendall(part)
        sent_at = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - sent_at


@pytest.mark.slow
def test_given_a_client_that_stops_mid_body_then_it_gets_408_and_is_disconnected(slow_server):
    server, key = slow_server
    head = (
        f"POST /v1/properties HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(EVENT)}\r\n\r\n"
    ).encode()
    received, took_s = exchange(server, head, EVENT[:10])
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b'{"detail":"Request body not received within 1 s"}' in received
    assert TIMEOUT_S - 0.1 <= took_s < TIMEOUT_S + 1.0


@pytest.mark.slow
def test_given_a_batch_body_that_stops_after_a_first_piece_then_408_counts_from_its_start(
    slow_server,
):
    """The protocol awaits a hot POST's body itself for up to a sweep (a quarter of a second
    here) before the handler reads the rest: the body deadline still counts from the first
    piece, not from the hand-over."""
    server, key = slow_server
    body = b'{"events": [' + b",".join([EVENT] * 50) + b"]}"
    head = (
        f"POST /v1/properties/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    received, took_s = exchange(server, head + body[:100])
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert TIMEOUT_S - 0.1 <= took_s < TIMEOUT_S + 0.2  # (the hand-over: 0.25-0.5 s later)


def test_the_body_deadline_counts_from_when_the_body_began_to_be_awaited():
    watch = Watch(Deadlines(10.0, 1.0), None, None)  # type: ignore[arg-type]  (no task, no send)
    since = time.monotonic() - 4.0
    watch.reading_body(since)
    assert watch.deadline_s == since + 10.0
    watch.reading_body()
    assert since + 13.9 < watch.deadline_s <= time.monotonic() + 10.0


@pytest.mark.slow
def test_given_a_client_that_stops_mid_headers_then_it_gets_408_and_is_disconnected(slow_server):
    server, _ = slow_server
    received, took_s = exchange(server, b"POST /v1/properties HTTP/1.1\r\nHost: x\r\nAuthoriz")
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"Request headers not received within 1 s" in received
    assert TIMEOUT_S - 0.1 <= took_s < TIMEOUT_S + 1.0


@pytest.mark.slow
def test_given_a_connection_that_never_sends_a_byte_then_it_is_closed(slow_server):
    server, _ = slow_server
    received, took_s = exchange(server)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert took_s < TIMEOUT_S + 1.0


@pytest.mark.slow
def test_a_client_that_is_slow_but_within_the_deadlines_is_served(slow_server):
    server, key = slow_server
    head = (
        f"POST /v1/properties HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(EVENT)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for part in (head[:20], head[20:], EVENT[:10], EVENT[10:]):
            sock.sendall(part)
            time.sleep(TIMEOUT_S / 3)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 202 "), received


@pytest.mark.slow
def test_a_request_the_http_parser_refuses_gets_400_in_the_one_error_shape(slow_server):
    server, _ = slow_server
    received, _ = exchange(
        server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"
    )
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head
    assert msgspec.json.decode(body) == {"detail": "Invalid HTTP request received."}
