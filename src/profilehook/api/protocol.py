"""uvicorn's httptools protocol, plus a deadline for the request line and headers.

uvicorn has no such deadline: its ``timeout_keep_alive`` starts only after a response, so a
connection that sends nothing, or half a request head, is held until the client goes away
(slowloris). The head is parsed before any application code runs, so the app cannot help; this
subclass notes when a connection opens or a request's first byte arrives, forgets it when the
headers are complete, and one timer sweeps the connections for heads that took too long: such
a client gets a ``408`` and the connection is closed. The body has its own deadline inside the app (api/deadlines.py), which works under
any ASGI server; this one exists only under ``profilehook serve``. A request the parser
refuses (``400``) is answered in the one error shape as well.

It relies on uvicorn's protocol callbacks (``connection_made``, ``on_message_begin``,
``on_headers_complete``, ``connection_lost``, ``send_400_response``), which constraints.txt pins;
tests/test_slow_clients.py fails if they change.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from profilehook.api.responses import error_body


def with_header_timeout(timeout_s: float) -> type[HttpToolsProtocol]:
    """An ``HttpToolsProtocol`` class that closes a connection whose request head takes longer
    than ``timeout_s``; pass it to ``uvicorn.Config(http=...)``.

    A request only notes when its head began (an attribute write): one timer per server
    sweeps the open connections every ``timeout_s / 4`` (at most 1 s), so the deadline holds to
    within that, and the hot path pays no timer of its own per request.
    """
    body = error_body(f"Request headers not received within {timeout_s:g} s")
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    sweep_every_s = min(1.0, timeout_s / 4)
    open_connections: set[HeaderTimeoutProtocol] = set()
    sweeper: list[asyncio.TimerHandle] = []  # the pending sweep, while connections are open

    def sweep() -> None:
        sweeper.clear()
        if not open_connections:
            return
        loop = next(iter(open_connections)).loop
        too_old = loop.time() - timeout_s
        for protocol in list(open_connections):
            started = protocol.head_started
            if started is not None and started <= too_old:
                protocol.head_timed_out()
        sweeper.append(loop.call_later(sweep_every_s, sweep))

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        head_started: float | None = None  # loop time the pending request head began

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.head_started = self.loop.time()
            open_connections.add(self)
            if not sweeper:
                sweeper.append(self.loop.call_later(sweep_every_s, sweep))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.head_started is None:
                self.head_started = self.loop.time()

        def on_headers_complete(self) -> None:
            self.head_started = None
            super().on_headers_complete()

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
            self.head_started = None
            open_connections.discard(self)
            super().connection_lost(exc)

        def head_timed_out(self) -> None:
            self.head_started = None
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return HeaderTimeoutProtocol
