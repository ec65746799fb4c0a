"""The HTTP layer's own CPU per request, in process: what a leaner protocol could save.

    .venv/bin/python benchmarks/protocol_cost.py [--requests 64000] [--rounds 3]

Feeds C's request (its headers, a 120-byte body) to a protocol instance per connection, 64
connections, on uvloop, through a transport that only counts writes (no sockets, no kernel), and
answers it with A's app (apps/ceiling.py: read the body, answer 202). Prints CPU microseconds a
request (this process) for:

- ``profilehook``: profilehook's protocol (api/protocol.py: uvicorn's, one write a response);
- ``uvicorn``: uvicorn's own httptools protocol, as A runs it;
- ``lean-asgi``: the least an ASGI server can do (httptools, one task a request, the scope, the
  messages, one write), a floor for any ASGI protocol rather than a server (no keep-alive
  deadlines, flow control, pipelining or errors);
- ``raw``: httptools and a fixed answer written from its callbacks, no ASGI at all.

The gap between the first and the third is what a leaner ASGI protocol could save on every
request (C, D, R alike); A's wrk run pays uvicorn's. Compare checkouts with ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httptools
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.apps.ceiling import BODY, HEADERS
from benchmarks.apps.ceiling import app as ceiling_app

from profilehook.api.protocol import http_protocol

CONNECTIONS = 64
REQUEST = (
    b"POST /v1/properties HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"Authorization: Bearer phk_0123456789abcdef0123456789abcdef\r\n"
    b"Content-Type: application/json\r\nContent-Length: 120\r\n\r\n" + b"x" * 120
)
RAW_ANSWER = b"HTTP/1.1 202 Accepted\r\n%s\r\n%s" % (
    b"".join(b"%s: %s\r\n" % header for header in HEADERS),
    BODY,
)


class _Transport(asyncio.Transport):
    """Counts writes; what a socket's transport would send is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _LeanAsgi:
    """The least an ASGI server does for a request (see the module's text)."""

    def __init__(self, transport: _Transport, loop: asyncio.AbstractEventLoop):
        self.transport = transport
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.tasks: set[asyncio.Task[None]] = set()
        self.url = b""
        self.body = b""
        self.head = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.scope: dict[str, Any] = {}

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers, self.url, self.body = [], b"", b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        url = httptools.parse_url(self.url)
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": self.parser.get_method().decode(),
            "scheme": "http",
            "path": url.path.decode(),
            "raw_path": url.path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": self.headers,
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 40000),
            "state": {},
        }

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        task = self.loop.create_task(ceiling_app(self.scope, self.receive, self.send))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": self.body, "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            head = [b"HTTP/1.1 %d Accepted\r\n" % message["status"]]
            for name, value in message["headers"]:
                head += (name, b": ", value, b"\r\n")
            head.append(b"\r\n")
            self.head = b"".join(head)
        else:
            self.transport.write(self.head + message["body"])


class _Raw:
    """httptools, and a fixed answer written when a request is complete."""

    def __init__(self, transport: _Transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        self.transport.write(RAW_ANSWER)


def _connections(kind: str, loop: asyncio.AbstractEventLoop) -> list[tuple[Any, _Transport]]:
    made: list[tuple[Any, _Transport]] = []
    if kind in ("profilehook", "uvicorn"):
        protocol_class = http_protocol(10.0, 5.0) if kind == "profilehook" else HttpToolsProtocol
        config = uvicorn.Config(
            ceiling_app,
            http=protocol_class,
            access_log=False,
            proxy_headers=False,
            log_config=None,
            lifespan="off",
        )
        config.load()
        state = ServerState()
        state.default_headers = [
            (b"date", b"Fri, 04 Dec 2026 14:00:00 GMT"),
            (b"server", b"uvicorn"),
        ]
        for _ in range(CONNECTIONS):
            transport = _Transport()
            protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
            protocol.connection_made(transport)
            made.append((protocol, transport))
    else:
        for _ in range(CONNECTIONS):
            transport = _Transport()
            made.append(
                (_LeanAsgi(transport, loop) if kind == "lean-asgi" else _Raw(transport), transport)
            )
    return made


async def _measure(kind: str, requests: int) -> float:
    """CPU microseconds a request; every request answered."""
    connections = _connections(kind, asyncio.get_running_loop())
    passes = requests // CONNECTIONS
    cpu0 = time.process_time()
    for _ in range(passes):
        for protocol, _ in connections:
            protocol.data_received(REQUEST)
        for _ in range(3):  # the requests' tasks run, answer, and the writes are flushed
            await asyncio.sleep(0)
    cpu = time.process_time() - cpu0
    assert all(t.writes >= passes for _, t in connections), "a request was not answered"
    return 1e6 * cpu / (passes * CONNECTIONS)


async def main(args: argparse.Namespace) -> None:
    kinds = ("profilehook", "uvicorn", "lean-asgi", "raw")
    for kind in kinds:
        await _measure(kind, args.requests // 4)  # warm up
    for round_ in range(args.rounds):
        row: dict[str, Any] = {"round": round_ + 1, "loadavg": os.getloadavg()[0]}
        for kind in kinds:
            row[f"{kind}_us"] = round(await _measure(kind, args.requests), 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64_000)
    parser.add_argument("--rounds", type=int, default=3)
    uvloop.run(main(parser.parse_args()))
