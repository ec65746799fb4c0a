"""A TCP proxy for fault tests: put it between a process and a server, then switch it.

Modes, for new connections and the open ones:

- ``pass``: forward everything (connections frozen before stay frozen: their path is dead);
- ``refuse``: connecting is refused, and open connections are reset (a server that is down);
- ``blackhole``: connections are accepted and never answered; open ones keep working (a server
  whose accept queue is not served);
- ``freeze``: nothing is forwarded any more, and nothing is reset: open connections and new ones
  stay silent, the kernel acknowledging what is sent (a firewall or NAT that lost its state).

One connection can also be frozen or reset on its own (``freeze_connection``, ``reset_connection``),
found by the local port of its upstream side (``pg_stat_activity.client_port`` for PostgreSQL).

The proxy runs its own event loop in a thread: a test drives it from plain synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Mode = Literal["pass", "refuse", "blackhole", "freeze"]
CHUNK_BYTES = 65_536
T = TypeVar("T")


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    frozen: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def upstream_port(self) -> int | None:
        if self.upstream is None:
            return None
        return int(self.upstream.get_extra_info("sockname")[1])

    def reset(self) -> None:
        """Close both sides; the client gets a reset, not an orderly end."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """``with TcpProxy("127.0.0.1", 5432) as proxy:`` listens on ``proxy.port``."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.port = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def url(self, scheme_and_auth: str, path_and_query: str) -> str:
        """``url("postgresql://postgres@", "/test?schema=s")`` through the proxy."""
        return f"{scheme_and_auth}127.0.0.1:{self.port}{path_and_query}"

    def set_mode(self, mode: Mode) -> None:
        self._call(self._set_mode(mode))

    def upstream_ports(self) -> list[int]:
        """The local ports of the upstream side of the open connections."""
        return self._call(self._upstream_ports())

    def freeze_connection(self, upstream_port: int) -> None:
        self._call(self._on_link(upstream_port, freeze=True))

    def reset_connection(self, upstream_port: int) -> None:
        self._call(self._on_link(upstream_port, freeze=False))

    # -- inside the proxy's loop -----------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        await self._stop_listening()
        for link in list(self._links):
            link.reset()
        self._links.clear()

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "refuse":
            await self._stop_listening()
            for link in list(self._links):
                link.reset()
            self._links.clear()
            return
        if self._server is None:
            await self._listen()
        if mode == "freeze":
            for link in self._links:
                link.frozen = True

    async def _upstream_ports(self) -> list[int]:
        return [port for link in self._links if (port := link.upstream_port) is not None]

    async def _on_link(self, upstream_port: int, freeze: bool) -> None:
        for link in list(self._links):
            if link.upstream_port == upstream_port:
                if freeze:
                    link.frozen = True
                else:
                    link.reset()
                    self._links.discard(link)
                return
        raise LookupError(f"no connection from upstream port {upstream_port}")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer, frozen=self.mode in ("blackhole", "freeze"))
        self._links.add(link)
        if link.frozen:
            return  # accepted, never answered (the link holds the socket open)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            link.reset()
            self._links.discard(link)
            return
        link.upstream = up_writer
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer)),
            asyncio.create_task(self._pump(link, up_reader, writer)),
        ]

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(CHUNK_BYTES):
                if link.frozen:
                    await asyncio.Event().wait()  # dropped, and nothing more read: silence
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        if not link.frozen:  # an orderly end on one side ends the other
            with contextlib.suppress(OSError):
                writer.close()
            self._links.discard(link)
