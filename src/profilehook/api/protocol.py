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
  end of the event loop's current pass, and go out as one. (A direct request's answer, whole
  and written from a callback or a task, goes out at once, after what the connection holds.)
- A request the parser refuses (``400``) is answered in the one error shape as well.
- **A cap on the request head's size.** uvicorn and httptools hold the request line and headers
  in memory until they are complete, without a limit (and join their pieces at a cost that
  grows with the square of their size); a request head past ``MAX_HEAD_BYTES`` gets a ``431``
  and the connection is closed.
- **A request asking to switch protocols is answered in HTTP/1.1.** No route speaks another
  protocol (WebSocket, h2c), and RFC 9110 §7.8 lets a server ignore ``Upgrade``; but httptools
  stops at such a request's head, skipping its body, and uvicorn then dropped what followed
  (``curl --http2 -d`` to a plain URL got a 422 for a body it sent, and requests pipelined
  behind it no answer until the keep-alive closed the connection; a POST with ``Upgrade:
  websocket`` hung). Here the head is parsed again without its ``Upgrade`` header, and the
  request, body and all, is served as if it had not asked. A ``CONNECT`` (which httptools
  always treats so) is answered, and the connection closed: what follows it is not HTTP.
- **A connection closed before its request's body is read lingers.** An answer given on the
  head (a ``401``, say) to a request whose connection then closes (HTTP/1.0, ``Connection:
  close``) left the rest of the body to meet a reset, which could destroy the answer before the
  client read it (and failed the client's send). The answer is followed by a half-close, and
  what the client still sends is read and dropped until it closes or ``LINGER_S`` has passed.
- **A client that half-closes is answered.** uvicorn closes the connection when the client
  shuts down its sending side, dropping the answers to the requests it sent whole; here they
  are written, then the connection closes.
- **The hot requests skip uvicorn's request cycle.** ``POST /v1/properties``, its batch and
  ``GET /v1/contacts/{id}`` (``direct_posts`` and ``direct_read`` of the app, api/app.py), when
  plain (HTTP/1.1, no ``Expect``, ``Transfer-Encoding``, ``Content-Encoding`` or upgrade, nothing
  in flight before it on the connection, a read's whole head in the bytes that brought it, a
  POST's body within its endpoint's limit), go to the same handlers without uvicorn's cycle, its
  event, its header checks and its done-callbacks:
  a single-event POST, when the store checks keys on this thread (SQLite), is checked as it is
  parsed, appended at the end of the pass in one append with the pass's others, and answered
  from that append's callback, with no task (``direct_at_once``, api/ingest.py); another
  ingest POST runs its ASGI handler in a task of its own with a send that writes the answer in
  one piece (``_Direct``); a read the store
  answers on this thread is written from the data callback, with no task at all. A POST's body
  that does not come whole with its head is gathered here as it arrives (a list of the parser's
  pieces, joined once: uvicorn's path copied a 200 KB body four times over, and woke the
  handler, paused and resumed reading for every 64 KB of it); one still incomplete after a
  sweep goes to uvicorn's path, and the handler's body deadline counts from when the body began
  to be awaited (``deadlines.BODY_SINCE``). Anything else, and a read that would wait, takes
  uvicorn's path as before, so the bytes on the wire are the same either way
  (tests/test_direct_path.py).

One timer per server sweeps the open connections every quarter of the shorter deadline (at
least 50 ms, at most 1 s), so each deadline holds to within that; the hot path pays attribute
writes only.

It relies on uvicorn's protocol callbacks and state (``connection_made``, ``on_message_begin``,
``on_headers_complete``, ``on_response_complete``, ``connection_lost``, ``send_400_response``,
``flow``, ``pipeline``, ``_start_asgi_task``, ``_should_upgrade``) and on httptools raising
``HttpParserUpgrade`` after such a head, at the offset of what follows it, with the message
complete, which constraints.txt pins;
tests/test_slow_clients.py and tests/test_http_protocol.py fail if they change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

import httptools
from starlette.types import ASGIApp, Message, Scope
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from profilehook.api.deadlines import BODY_SINCE
from profilehook.api.responses import error_body, json_headers, send_json
from profilehook.constants import LINGER_S, MAX_HEAD_BYTES

log = logging.getLogger(__name__)
MIN_SWEEP_S = 0.05


def http_protocol(
    header_timeout_s: float, keep_alive_s: float, direct: bool = True
) -> type[HttpToolsProtocol]:
    """An ``HttpToolsProtocol`` class for ``uvicorn.Config(http=...)``: a connection whose
    request head takes longer than ``header_timeout_s``, or that stays idle between requests
    longer than ``keep_alive_s``, is closed (the first with a ``408``), and so is one whose
    request head grows past ``MAX_HEAD_BYTES`` (with a ``431``). ``direct``: the hot
    requests skip uvicorn's request cycle (see the module's text; False only to compare)."""
    body = error_body(f"Request headers not received within {header_timeout_s:g} s")
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    too_large_body = error_body(f"Request line and headers larger than {MAX_HEAD_BYTES} bytes")
    too_large = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(too_large_body), too_large_body)
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
        body_too_slow = time.monotonic() - sweep_every_s
        for protocol in list(open_connections):
            started, idle = protocol.head_started, protocol.idle_since
            if started is not None and started <= head_too_old:
                protocol.head_timed_out()
            elif idle is not None and idle <= idle_too_long:
                protocol.idle_timed_out()
            elif (waiting := protocol.pending_since) is not None and waiting <= body_too_slow:
                protocol.body_to_asgi()  # a slow body: the handler's deadline holds
        sweeper.append(loop.call_later(sweep_every_s, sweep))

    class Protocol(HttpToolsProtocol):
        head_started: float | None = None  # loop time the pending request head began
        idle_since: float | None = None  # loop time the last response ended, while idle
        direct_app: Any = None  # the app, when its hot requests may skip uvicorn's cycle
        pending: _Direct | None = None  # a hot request whose head is in, its body coming
        pending_since: float | None = None  # when a pending body was first left waiting
        # (``time.monotonic()``, as the handler's deadlines)
        heads_begun = 0  # request heads begun on this connection
        head_bytes = 0  # bytes of the pending head read after the read it began in
        unupgraded: bytes | None = None  # a head that asked to upgrade, without its Upgrade
        lingering: asyncio.TimerHandle | None = None  # half-closed, dropping what comes (linger)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            app = self.app
            if (
                direct
                and hasattr(app, "direct_posts")
                and not self.access_log  # (uvicorn's access log is written by its cycle)
                and self.limit_concurrency is None
                and not self.root_path
                and not self.config.reset_contextvars
            ):
                self.direct_app = app
            # The request/response cycles write through this; the flow control (pausing
            # reads) keeps the transport itself.
            if not end_of_pass or end_of_pass[0].loop is not self.loop:
                end_of_pass[:] = [_EndOfPass(self.loop)]
            self.transport = _OneWritePerPass(transport, end_of_pass[0], self)  # type: ignore[assignment]
            self.head_started = self.loop.time()
            open_connections.add(self)
            if not sweeper:
                sweeper.append(self.loop.call_later(sweep_every_s, sweep))

        def data_received(self, data: bytes) -> None:
            if self.lingering is not None:
                return  # the rest of a body answered already: dropped (``linger``)
            self.idle_since = None  # any byte makes the connection busy, as under uvicorn
            head = self.heads_begun if self.head_started is not None else -1
            self._feed(data)
            if head == self.heads_begun and self.head_started is not None:  # all of it head
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                    self.head_started = None
                    self.transport.write(too_large)
                    self.transport.close()
                    return
            pending = self.pending
            if pending is None:
                return
            if pending.whole_within_limit and not self.transport.is_closing():
                if self.pending_since is None:  # the rest of its body is awaited here
                    self.pending_since = time.monotonic()
                return
            self.body_to_asgi()  # its body is uvicorn's path's to read

        def _feed(self, data: bytes) -> None:
            """uvicorn's ``data_received`` (but for its keep-alive timer, which this protocol
            never arms), except that a request that asked to upgrade is parsed again without
            asking, and what follows it with it."""
            parser, head = self.parser, None
            rest: bytes | memoryview = data
            while True:
                try:
                    if head is not None:
                        parser.feed_data(head)
                    parser.feed_data(rest)
                    return
                except httptools.HttpParserError:
                    msg = "Invalid HTTP request received."
                    self.logger.warning(msg)
                    self.send_400_response(msg)
                    return
                except httptools.HttpParserUpgrade as exc:
                    head, self.unupgraded = self.unupgraded, None
                    if head is None:  # a CONNECT: the connection closes after its answer
                        self._close_after_answer()
                        return
                    # A new parser: one that has seen ``Connection: close`` with the upgrade
                    # would drop the rest. (A view: many such requests in one read are not
                    # copied once each.)
                    parser = self.parser = httptools.HttpRequestParser(self)
                    parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn
                    rest = memoryview(rest)[exc.args[0] :]

        def _close_after_answer(self) -> None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                self.transport.close()
            else:
                cycle.keep_alive = False
                self.flow.pause_reading()  # (what comes next is not HTTP: a 400 would cut in)

        def _should_upgrade(self) -> bool:
            return False  # uvicorn's WebSocket hand-over: no route takes one

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.heads_begun += 1
            self.head_bytes = 0
            self.idle_since = None  # (a request answered in this pass noted the connection idle)
            if self.head_started is None:
                self.head_started = self.loop.time()

        def on_headers_complete(self) -> None:
            self.head_started = None
            parser = self.parser
            if parser.should_upgrade() and parser.get_method() != b"CONNECT":
                # httptools now skips the body: ``_feed`` parses the head again without asking.
                self.unupgraded = b"".join(self._head_without_upgrade())
                return
            app = self.direct_app
            if app is not None and (self.cycle is None or self.cycle.response_complete):
                self.pending = self._direct(app)
                if self.pending is not None:
                    return
            super().on_headers_complete()

        def _head_without_upgrade(self) -> Iterable[bytes]:
            parser = self.parser
            version = parser.get_http_version().encode("ascii")
            yield b"%s %s HTTP/%s\r\n" % (parser.get_method(), self.url, version)
            for name, value in self.headers:
                if name != b"upgrade":
                    yield b"%s: %s\r\n" % (name, value)
            yield b"\r\n"

        def _direct(self, app: Any) -> _Direct | None:
            """The request as a ``_Direct``, when it is a plain hot one (see the module's text)."""
            parser = self.parser
            # (A CONNECT, the one upgrade that gets here, is neither a POST nor a GET.)
            if parser.get_http_version() != "1.1":
                return None
            length: bytes | None = None
            for name, value in self.headers:
                if name in _NOT_PLAIN:
                    return None
                if name == b"content-length":
                    length = value
            method, target = parser.get_method(), self.url
            at_once, within = None, False
            if method == b"POST":
                handler = app.direct_posts.get(target)
                if handler is None or length is None:
                    return None
                at_once = app.direct_at_once.get(target)
                limit = app.direct_body_limits.get(target, -1)
                within = length.isdigit() and int(length) <= limit
            elif (
                method == b"GET"
                and length is None
                and target.startswith(_CONTACTS)
                and target.isascii()
            ):
                handler = None
            else:
                return None
            scope = self.scope
            scope["method"] = method.decode("ascii")
            scope["path"] = target.decode("ascii")
            scope["raw_path"] = target
            scope["query_string"] = b""
            direct = _Direct(self, handler, scope, parser.should_keep_alive())  # type: ignore[arg-type]
            direct.at_once = at_once
            direct.whole_within_limit = within
            return direct

        def on_body(self, body: bytes) -> None:
            pending = self.pending
            if pending is None:
                super().on_body(body)
            else:
                pending.chunks.append(body)

        def on_message_complete(self) -> None:
            direct = self.pending
            if direct is None:
                if self.unupgraded is None:  # (else its body comes when its head is fed again)
                    super().on_message_complete()
                return
            self.pending = self.pending_since = None
            if direct.handler is not None:
                self.cycle = direct  # type: ignore[assignment]
                chunks = direct.chunks
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                if direct.at_once is not None:  # answered from a callback, without a task
                    direct.at_once(direct, body)
                    return
                direct.body = body
                direct.later(direct.handler(direct.scope, direct.receive, direct.send))
                return
            answer = (
                None
                if self.flow.write_paused
                else self.direct_app.direct_read(self.url, direct.scope)
            )
            if type(answer) is not tuple:  # not known on this thread, or a slow reader
                self._to_asgi(direct, complete=True)
                return
            status, body, headers = answer
            self.transport.write(direct.response(status, json_headers(body, headers), body))
            if not direct.keep_alive:
                self.transport.close()
            self.on_response_complete()

        def body_to_asgi(self) -> None:
            """Hand the pending request, its body incomplete, to uvicorn's path."""
            pending, since = self.pending, self.pending_since
            self.pending = self.pending_since = None
            if pending is not None and not self.transport.is_closing():  # (else a 400 came)
                if since is not None:
                    pending.scope[BODY_SINCE] = since  # its body deadline counts from then
                self._to_asgi(pending, complete=False)

        def _to_asgi(self, direct: _Direct, complete: bool) -> None:
            """Hand ``direct`` to uvicorn's cycle, as if its head had just been read."""
            super().on_headers_complete()
            cycle = self.cycle
            if direct.chunks:
                cycle.body += b"".join(direct.chunks)
                if len(cycle.body) > HIGH_WATER_LIMIT:
                    self.flow.pause_reading()
            if complete:
                cycle.more_body = False
            cycle.message_event.set()

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

        def body_unread(self) -> bool:
            """Whether the request being answered has more body to come."""
            if self.pending is not None:
                return True
            cycle = self.cycle
            return cycle is not None and getattr(cycle, "more_body", False)

        def linger(self, transport: asyncio.Transport) -> None:
            """After ``transport``'s half-close: read and drop what the client still sends
            until it closes, or ``LINGER_S`` has passed (see the module's text)."""
            self.lingering = self.loop.call_later(LINGER_S, transport.close)
            self.flow.resume_reading()

        def eof_received(self) -> bool:  # type: ignore[override]
            if self.lingering is not None:
                self.transport.close()
                return True
            # A client that shuts down its sending side after whole requests still gets their
            # answers, the last with ``connection: close`` (as at uvicorn's shutdown). With
            # nothing in flight, or a request cut short (its body never complete), the
            # connection closes now, as under uvicorn, but through this protocol's transport,
            # so that answers written in this pass go out first. (True: asyncio leaves the
            # closing to the protocol.)
            cycle = self.cycle
            if cycle is None or cycle.response_complete or getattr(cycle, "more_body", False):
                self.transport.close()
            else:
                cycle.keep_alive = False
            return True

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
            self.head_started = self.idle_since = self.pending = self.pending_since = None
            if self.lingering is not None:
                self.lingering.cancel()
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


_NOT_PLAIN = frozenset((b"expect", b"transfer-encoding", b"content-encoding", b"upgrade"))
_CONTACTS = b"/v1/contacts/"


class _NoEvent:
    """What uvicorn's protocol sets when the client goes away; a ``_Direct`` waits on nothing."""

    @staticmethod
    def set() -> None:
        pass


class _Direct:
    """A hot request served without uvicorn's ``RequestResponseCycle``; it stands in its place
    as the protocol's ``cycle`` (uvicorn's code reads ``response_complete``, ``disconnected``,
    ``keep_alive``, ``message_event``). Its ASGI handler gets the whole body from one
    ``receive``, and ``send`` writes the answer as uvicorn's cycle would, in one piece, after
    waiting for a slow reader's transport to drain. An ``at_once`` handler (api/ingest.py
    ``DirectRequest``) takes it with the body instead, and answers through ``answer`` or in a
    task of its own (``later``)."""

    __slots__ = (
        "at_once",
        "body",
        "chunks",
        "default_headers",
        "disconnected",
        "handler",
        "headers",
        "keep_alive",
        "protocol",
        "response_complete",
        "scope",
        "started",
        "status",
        "whole_within_limit",
    )
    message_event = _NoEvent

    def __init__(
        self, protocol: Any, handler: ASGIApp | None, scope: Scope, keep_alive: bool
    ) -> None:
        self.protocol = protocol
        self.handler = handler
        self.scope = scope
        self.keep_alive = keep_alive
        self.default_headers: list[tuple[bytes, bytes]] = protocol.server_state.default_headers
        self.at_once: Any = None
        self.whole_within_limit = False  # a POST whose body may be awaited across reads
        self.chunks: list[bytes] = []
        self.body: bytes | None = None
        self.started = self.response_complete = self.disconnected = False
        self.status = 0
        self.headers: Iterable[tuple[bytes, bytes]] = ()

    def later(self, work: Awaitable[None]) -> None:
        """Run ``work`` (the request's ASGI handler, or what ends it) in a task, as uvicorn
        runs an app."""
        task = self.protocol.loop.create_task(self.run(work))
        self.protocol.tasks.add(task)

    async def run(self, work: Awaitable[None]) -> None:
        """uvicorn's ``RequestResponseCycle.run_asgi``, for a handler that answers in one body."""
        try:
            await work
        except BaseException as exc:
            self.protocol.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.started:
                await RequestResponseCycle.send_500_response(self)  # type: ignore[arg-type]
            else:
                self.protocol.transport.close()
        else:
            if not self.started and not self.disconnected:
                self.protocol.logger.error("ASGI callable returned without starting response.")
                await RequestResponseCycle.send_500_response(self)  # type: ignore[arg-type]
            elif not self.response_complete and not self.disconnected:
                self.protocol.logger.error("ASGI callable returned without completing response.")
                self.protocol.transport.close()
        finally:
            self.protocol.tasks.discard(asyncio.current_task())

    async def receive(self) -> Message:
        body = self.body
        if body is None or self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        self.body = None
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(self, message: Message) -> None:
        protocol = self.protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()
        if self.disconnected:
            return
        if not self.started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start', got {message['type']!r}.")
            self.started = True
            self.status = message["status"]
            self.headers = message.get("headers", ())
            return
        if (
            self.response_complete
            or message["type"] != "http.response.body"
            or message.get("more_body", False)
        ):
            raise RuntimeError(f"Unexpected ASGI message {message['type']!r} on a direct request.")
        self._write(self.status, self.headers, message.get("body", b""))

    def answer(self, status: int, body: bytes) -> None:
        """``send_json(self.send, status, body)``, written now unless the transport waits for a
        slow reader to drain (then in a task)."""
        if self.disconnected:
            return
        if self.protocol.flow.write_paused:
            self.later(send_json(self.send, status, body))
            return
        self.started = True
        self._write(status, json_headers(body), body)

    def _write(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        protocol = self.protocol
        # A whole answer, written from a callback or a task (never from the data callback):
        # held to the end of the pass, it would wait for the loop's next pass of reads too.
        protocol.transport.write_now(self.response(status, headers, body))
        self.response_complete = True
        if not self.keep_alive:
            protocol.transport.close()
        protocol.on_response_complete()

    def response(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> bytes:
        """The answer's bytes, as uvicorn's cycle writes them (for a body of known length)."""
        content = [STATUS_LINE[status]]
        closes = False
        for headers_ in (self.default_headers, headers):
            for name, value in headers_:
                name = name.lower()
                if name == b"connection" and b"close" in [
                    token.lower().strip() for token in value.split(b",")
                ]:
                    self.keep_alive = False
                    closes = True
                content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closes:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        return b"".join(content)


class _OneWritePerPass:
    """A transport whose writes are held until the end of the event loop's current pass, then
    written as one: a response's head and body leave in one ``send``. Closing writes what is
    held first; a transport already closing (its peer gone) drops it. The other transport
    calls that write (``writelines``, ``write_eof``) keep the order; the rest are the
    transport's own."""

    __slots__ = ("_held", "_held_bytes", "_lingers", "_pass", "_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, end_of_pass: _EndOfPass, protocol: Any = None):
        self._transport = transport
        self._pass = end_of_pass
        self._protocol = protocol
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        self._lingers = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer before the pass ends
        held = self._held
        if held is None:
            self._held = [data]
            self._held_bytes = len(data)
            self._pass.flush_later(self)
        else:
            held.append(data)
            self._held_bytes += len(data)
        # Many answers in one pass (pipelined reads answered from the data callback) leave
        # at once past the high-water mark, so that a reader slower than that makes the
        # transport pause the protocol's writes rather than this hold them without bound.
        if self._held_bytes >= HIGH_WATER_LIMIT:
            self.flush()

    def write_now(self, data: bytes) -> None:
        """Write ``data`` (a whole answer) at once, after what is held."""
        held = self._held
        if held is not None:
            held.append(data)
            self.flush()
        elif not self.is_closing():
            self._transport.write(data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self.is_closing():
                self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def discard(self) -> None:
        self._held = None

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Close after what is held; half-close and linger if the request being answered has
        more body to come (the protocol's ``linger``)."""
        self.flush()
        transport = self._transport
        if self._lingers or transport.is_closing():
            transport.close()
        elif (
            self._protocol is not None
            and self._protocol.body_unread()
            and transport.can_write_eof()
        ):
            self._lingers = True
            transport.write_eof()
            self._protocol.linger(transport)
        else:
            transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._lingers or self._transport.is_closing()

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
