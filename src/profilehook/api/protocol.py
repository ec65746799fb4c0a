"""uvicorn's httptools protocol, plus a deadline for the request line and headers.

uvicorn has no such deadline: its ``timeout_keep_alive`` starts only after a response, so a
connection that sends nothing, or half a request head, is held until the client goes away
(slowloris). The head is parsed before any application code runs, so the app cannot help; this
subclass arms one timer when a connection opens or a request's first byte arrives, and cancels
it when the headers are complete. When it fires the client gets a ``408`` and the connection
is closed. The body has its own deadline inside the app (api/deadlines.py), which works under
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
    than ``timeout_s``; pass it to ``uvicorn.Config(http=...)``."""
    body = error_body(f"Request headers not received within {timeout_s:g} s")
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            # A request the parser refused never reaches the app; answer it in the one error
            # shape too, rather than uvicorn's plain text.
            self._disarm()
            body = error_body(msg)
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return HeaderTimeoutProtocol
