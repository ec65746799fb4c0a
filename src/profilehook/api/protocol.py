"""uvicorn's httptools protocol, with deadlines kept by one sweep and one write per response.

- **A deadline for the request line and headers.** uvicorn has none: its ``timeout_keep_alive``
  starts only after a response, so a connection that sends nothing, or half a request head, is
  held until the client goes away (slowloris). The head is parsed before any application code
  runs, so the app cannot help; this protocol notes when a connection opens or a request's
  first byte arrives, forgets it when the headers are complete, and a client whose head took
  too long gets a ``408`` and the connection is closed. (The body has its own deadline inside
  the app, api/deadlines.py, which works under any ASGI server.)
- **Idle keep-alive connections are closed by the same sweep.** uvicorn arms and cancels a
  timer per request for this; here a response only notes when the connection fell idle.
- **One write per response.** uvicorn writes a response's head and its body separately, which
  is two ``send`` system calls for every small answer. Writes wait in the connection until the
  end of the event loop's current pass, and go out as one.
- A request the parser refuses (``400``) is answered in the one error shape as well.

One timer per server sweeps the open connections every quarter of the shorter deadline (at
least 50 ms, at most 1 s), so each deadline holds to within that; the hot path pays attribute
writes only.

It relies on uvicorn's protocol callbacks and state (``connection_made``, ``on_message_begin``,
``on_headers_complete``, ``on_response_complete``, ``connection_lost``, ``send_400_response``,
``flow``, ``pipeline``, ``_start_asgi_task``), which constraints.txt pins;
tests/test_slow_clients.py and tests/test_http_protocol.py fail if they change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from profilehook.api.responses import error_body

log = logging.getLogger(__name__)
MIN_SWEEP_S = 0.05


def http_protocol(header_timeout_s: float, keep_alive_s: float) -> type[HttpToolsProtocol]:
    """An ``HttpToolsProtocol`` class for ``uvicorn.Config(http=...)``: a connection whose
    request head takes longer than ``header_timeout_s``, or that stays idle between requests
    longer than ``keep_alive_s``, is closed (the first with a ``408``)."""
    body = error_body(f"Request headers not received within {header_timeout_s:g} s")
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    # (A keep-alive of 0 closes a connection at the first sweep after its response.)
    sweep_every_s = max(MIN_SWEEP_S, min(1.0, header_timeout_s / 4, keep_alive_s / 4))
    open_connections: set[Protocol] = set()
    sweeper: list[asyncio.TimerHandle] = []  # the pending sweep, while connections are open
    end_of_pass: list[_EndOfPass] = []  # one per server (its loop)

    def sweep() -> None:
        sweeper.clear()
        if not open_connections:
            return
        loop = next(iter(open_connections)).loop
        now = loop.time()
        head_too_old, idle_too_long = now - header_timeout_s, now - keep_alive_s
        for protocol in list(open_connections):
            started, idle = protocol.head_started, protocol.idle_since
            if started is not None and started <= head_too_old:
                protocol.head_timed_out()
            elif idle is not None and idle <= idle_too_long:
                protocol.idle_timed_out()
        sweeper.append(loop.call_later(sweep_every_s, sweep))

    class Protocol(HttpToolsProtocol):
        head_started: float | None = None  # loop time the pending request head began
        idle_since: float | None = None  # loop time the last response ended, while idle

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # The request/response cycles write through this; the flow control (pausing
            # reads) keeps the transport itself.
            if not end_of_pass or end_of_pass[0].loop is not self.loop:
                end_of_pass[:] = [_EndOfPass(self.loop)]
            self.transport = _OneWritePerPass(transport, end_of_pass[0])  # type: ignore[assignment]
            self.head_started = self.loop.time()
            open_connections.add(self)
            if not sweeper:
                sweeper.append(self.loop.call_later(sweep_every_s, sweep))

        def data_received(self, data: bytes) -> None:
            self.idle_since = None  # any byte makes the connection busy, as under uvicorn
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.head_started is None:
                self.head_started = self.loop.time()

        def on_headers_complete(self) -> None:
            self.head_started = None
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # uvicorn's, with the keep-alive timer replaced by a note for the sweep.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            elif self.head_started is None:  # (a next request's head is under its own deadline)
                self.idle_since = self.loop.time()

        def send_400_response(self, msg: str) -> None:
            # A request the parser refused never reaches the app; answer it in the one error
            # shape too, rather than uvicorn's plain text.
            self.head_started = None
            body = error_body(msg)
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.head_started = self.idle_since = None
            if isinstance(self.transport, _OneWritePerPass):
                self.transport.discard()  # nobody to write to any more
            open_connections.discard(self)
            super().connection_lost(exc)

        def head_timed_out(self) -> None:
            self.head_started = None
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

        def idle_timed_out(self) -> None:
            self.idle_since = None
            if not self.transport.is_closing():
                self.transport.close()

    return Protocol


class _OneWritePerPass:
    """A transport whose writes are held until the end of the event loop's current pass, then
    written as one: a response's head and body leave in one ``send``. Closing writes what is
    held first; a transport already closing (its peer gone) drops it. The other transport
    calls that write (``writelines``, ``write_eof``) keep the order; the rest are the
    transport's own."""

    __slots__ = ("_held", "_pass", "_transport")

    def __init__(self, transport: asyncio.Transport, end_of_pass: _EndOfPass):
        self._transport = transport
        self._pass = end_of_pass
        self._held: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer before the pass ends
        held = self._held
        if held is None:
            self._held = [data]
            self._pass.flush_later(self)
        else:
            held.append(data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def discard(self) -> None:
        self._held = None

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _EndOfPass:
    """The connections holding writes; one callback at the end of the pass flushes them all."""

    __slots__ = ("_holding", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._holding: list[_OneWritePerPass] = []

    def flush_later(self, connection: _OneWritePerPass) -> None:
        if not self._holding:
            self.loop.call_soon(self._flush)
        self._holding.append(connection)

    def _flush(self) -> None:
        holding, self._holding = self._holding, []
        for connection in holding:
            try:
                connection.flush()
            except Exception:  # one connection's failure must not strand the others' answers
                log.exception("writing to a connection failed")
                connection.discard()
