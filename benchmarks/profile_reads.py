"""Where a read's time goes: ``GET /v1/contacts/{id}`` called in process on the whole app (no
HTTP server, no wrk), random ids of the loaded contacts (contacts_loader.py), 64 at a time,
timed; then the direct path through the protocol (below) under cProfile (sorted by own time). "Handler alone" drives the app's
coroutine without the event loop (a read that runs at once never suspends): the handler's CPU
without the tasks and the gathering this script adds around it. "Through the protocol" feeds
the requests' bytes to profilehook's HTTP protocol (api/protocol.py), 64 connections, through
a transport that only counts 200s (no sockets, no kernel): the read as the server's event loop
does it, with the hot requests' direct path and, alternated, without it (uvicorn's cycle).

    .venv/bin/python benchmarks/profile_reads.py [--contacts 1000000] [--requests 20000]
        [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.contacts_loader import contact_id, data_dir_with_contacts

CONCURRENCY = 64


def read_scope(contact: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of ``GET /v1/contacts/{contact}`` as uvicorn gives it."""
    path = f"/v1/contacts/{contact}"
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 1),
        "root_path": "",
        "asgi": {"version": "3.0"},
    }


async def run(args: argparse.Namespace, data_dir: Path) -> None:
    from profilehook.api.app import create_app
    from profilehook.keys import create_key
    from profilehook.service import running
    from profilehook.settings import Settings

    settings = Settings(data_dir=data_dir)
    async with running(settings) as services:
        key, _ = await create_key(services.store, "bench")
    app = create_app(settings, applies_in="nowhere")
    lifespan = _Lifespan(app)
    await lifespan.start()
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"host", b"bench")]
    rng = random.Random(23)

    async def one() -> int:
        scope = read_scope(contact_id(rng.randrange(args.contacts)), headers)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return int(sent[0]["status"])

    async def many(count: int) -> float:
        t0 = time.perf_counter()
        for _ in range(count // CONCURRENCY):
            statuses = await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
            assert set(statuses) == {200}, statuses
        return time.perf_counter() - t0

    await many(CONCURRENCY * 10)  # warm
    cpu0 = time.process_time()
    wall = await many(args.requests)
    cpu = time.process_time() - cpu0
    print(
        f"{args.requests:,} reads: {1e6 * wall / args.requests:.0f} us wall,"
        f" {1e6 * cpu / args.requests:.0f} us CPU per read ({args.requests / wall:,.0f}/s)"
    )
    print(f"handler alone: {handler_alone(app, headers, rng, args):.1f} us CPU per read")
    for _ in range(3):
        for direct in (True, False):
            cpu_us = await through_protocol(app, key, rng, args, direct)
            if cpu_us is not None:
                path = "the direct path" if direct else "uvicorn's cycle"
                print(f"through the protocol, {path}: {cpu_us:.1f} us CPU per read")
    if args.profile:
        profiler = cProfile.Profile(time.thread_time)  # (the event loop's CPU, not waits)
        profiler.enable()
        await through_protocol(app, key, rng, args, True)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    await lifespan.stop()


def handler_alone(
    app: Any, headers: list[tuple[bytes, bytes]], rng: random.Random, args: Any
) -> float:
    """CPU per read (µs) of ``app`` called on ``args.requests`` random contacts, each call's
    coroutine run to its end by one ``send(None)`` (no event loop: it must not suspend)."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scopes = [
        read_scope(contact_id(rng.randrange(args.contacts)), headers) for _ in range(args.requests)
    ]
    cpu0 = time.process_time()
    for scope in scopes:
        try:
            app(scope, receive, send).send(None)
        except StopIteration:
            continue
        raise AssertionError("a read suspended: it did not run at once")
    cpu = time.process_time() - cpu0
    assert set(statuses) == {200}, set(statuses)
    return 1e6 * cpu / args.requests


async def through_protocol(
    app: Any, key: str, rng: random.Random, args: Any, direct: bool
) -> float | None:
    """CPU per read (µs) of ``args.requests`` reads fed to the HTTP protocol (see the module's
    text); None when the protocol has no direct path to switch (an older checkout)."""
    import uvicorn
    from benchmarks.protocol_cost import _Transport
    from uvicorn.server import ServerState

    from profilehook.api.protocol import http_protocol

    try:
        protocol_class = http_protocol(10.0, 5.0, direct=direct)  # type: ignore[call-arg]
    except TypeError:
        if not direct:
            return None
        protocol_class = http_protocol(10.0, 5.0)
    config = uvicorn.Config(
        app, http=protocol_class, access_log=False, proxy_headers=False, log_config=None
    )
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Fri, 04 Dec 2026 14:00:00 GMT"), (b"server", b"uvicorn")]
    loop = asyncio.get_running_loop()

    class Counted(_Transport):
        def write(self, data: Any) -> None:
            self.writes += bytes(data).startswith(b"HTTP/1.1 200 ")

    connections = []
    for _ in range(CONCURRENCY):
        transport = Counted()
        protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
        protocol.connection_made(transport)
        connections.append((protocol, transport))
    passes = args.requests // CONCURRENCY
    sent = [
        f"GET /v1/contacts/{contact_id(rng.randrange(args.contacts))} HTTP/1.1\r\n"
        f"Host: bench\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        for _ in range(passes * CONCURRENCY)
    ]
    cpu0 = time.process_time()
    for at in range(0, len(sent), CONCURRENCY):
        for (protocol, _), request in zip(connections, sent[at : at + CONCURRENCY], strict=True):
            protocol.data_received(request)
        for _ in range(3):  # the requests' tasks run, answer, and the writes are flushed
            await asyncio.sleep(0)
    cpu = time.process_time() - cpu0
    assert all(t.writes == passes for _, t in connections), "a read was not answered 200"
    for protocol, _ in connections:
        protocol.connection_lost(None)
    return 1e6 * cpu / (passes * CONCURRENCY)


class _Lifespan:
    def __init__(self, app: Any):
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def start(self) -> None:
        self.task = asyncio.create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self._put)
        )
        await self.inbox.put({"type": "lifespan.startup"})
        assert (await self.outbox.get())["type"] == "lifespan.startup.complete"

    async def stop(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.task

    async def _put(self, message: dict[str, Any]) -> None:
        await self.outbox.put(message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profilehook-reads-") as tmp:
        data_dir = data_dir_with_contacts(Path(tmp) / "data", args.contacts)
        asyncio.run(run(args, data_dir))


if __name__ == "__main__":
    main()
