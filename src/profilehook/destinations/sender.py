"""Webhook calls: a POST to a destination, on a keep-alive connection to an address ``resolve``
allowed, answered within a deadline. Any 2xx is a success; anything else, redirects included
(never followed), a failure with its reason.

``Senders`` keeps a few idle connections per destination (``DESTINATION_CONNECTIONS``) and
sends each call on one of them: a new TCP (and TLS) connection per call cost most of a call's
time. A **new** connection is made only after the name is resolved again and every address it
gave is checked (addresses.py): a reused one goes to an address that was checked when it was
made. A connection the receiver closed while idle is noticed and dropped; a call that finds its
reused connection dead before any answer came is sent once more on a new one (at least once
allows it: the receiver dedupes by ``webhook-id``).

The HTTP/1.1 client is a small ``asyncio.Protocol`` rather than a library: it writes a request
it built itself (every header value is ours, the URL was checked for control characters) and
reads only the status line, the headers and a body of known length, which is all a call needs;
a general client (or h11, 75 µs a call on this machine) cost more than the rest of a delivery.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import cast

from profilehook.constants import (
    DESTINATION_CONNECTION_IDLE_S,
    DESTINATION_CONNECTIONS,
    DESTINATION_MAX_ANSWER_BYTES,
)
from profilehook.destinations.addresses import Resolver, Target, resolve
from profilehook.errors import DestinationRefused

USER_AGENT = "profilehook-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """What one call came to: the status (None: no answer) and, unless 2xx, why it failed."""

    status_code: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class AnswerError(Exception):
    """The receiver's answer is not HTTP/1.x the client can read."""


class _Closed(ConnectionError):
    """The connection closed before any byte of the answer: on a reused connection, the call
    is sent again on a new one."""


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, answers read up to their end so that the
    connection can take the next request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._lost: Exception | None = None
        self.reusable = True
        self.idle_since_s = time.monotonic()

    @property
    def alive(self) -> bool:
        return self._lost is None and self.transport is not None and self.reusable

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not subclasses of asyncio's: no isinstance check here)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            self._parse()
        elif self._waiter is None:
            self.reusable = False  # bytes nobody asked for: never reuse this one

    def connection_lost(self, exc: Exception | None) -> None:
        # A reset or a close before any byte of the answer: the receiver had closed the
        # connection (idle) when the request went out; the call is made again (``_Closed``).
        why = "the connection closed before an answer" + (f" ({exc})" if exc else "")
        self._lost = _Closed(why)
        if self._waiter is not None and not self._waiter.done():
            if self._buffer:
                self._waiter.set_exception(ConnectionError("the connection closed mid-answer"))
            else:
                self._waiter.set_exception(self._lost)

    async def request(self, data: bytes) -> int:
        """Send ``data`` (a whole request); the answer's status. Raises ``ConnectionError``
        (``_Closed`` when nothing of an answer came), ``AnswerError``."""
        if self._lost is not None or self.transport is None:
            raise _Closed("the connection closed before an answer")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            self.idle_since_s = time.monotonic()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> None:
        assert self._waiter is not None
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > DESTINATION_MAX_ANSWER_BYTES:
                    self._fail(AnswerError("the answer's headers are too long"))
                return
            try:
                status, length, close = _head(bytes(buffer[:end]))
            except AnswerError as exc:
                self._fail(exc)
                return
            if 100 <= status < 200 and status != 101:  # informational: the answer follows
                del buffer[: end + 4]
                continue
            if status in (204, 304):
                length = 0
            if length is None or length > DESTINATION_MAX_ANSWER_BYTES:
                self.reusable = False  # its end is unknown (or too far): not read, not reused
                self._waiter.set_result(status)
                return
            if len(buffer) < end + 4 + length:
                return  # the rest of the body is on its way
            del buffer[: end + 4 + length]
            if close or buffer:
                self.reusable = False
            self._waiter.set_result(status)
            return

    def _fail(self, exc: Exception) -> None:
        assert self._waiter is not None
        self.close()
        self._waiter.set_exception(exc)


def _head(head: bytes) -> tuple[int, int | None, bool]:
    """An answer's status, its body's length (None: not given) and whether the receiver closes
    the connection after it. Raises ``AnswerError``."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise AnswerError("the answer is not HTTP/1.x")
    status = int(parts[1])
    length: int | None = None
    close = parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit():
                raise AnswerError("the answer's content-length is not a number")
            length = int(value)
        elif name == b"transfer-encoding":
            length = None
            close = True
        elif name == b"connection":
            tokens = value.strip().lower()
            close = b"close" in tokens or (close and b"keep-alive" not in tokens)
    return status, length, close


@dataclass
class _Pool:
    head: bytes  # the request's start line and fixed headers (``_head_of``): made once
    idle: list[Connection] = field(default_factory=list)
    slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(DESTINATION_CONNECTIONS)
    )


class Senders:
    """Keep-alive connections per destination URL (module doc), for one delivery loop.
    ``resolver``/``tls`` replace the system's (tests)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        self.allow_private = allow_private
        self.resolver = resolver
        self.tls = tls
        self._pools: dict[Target, _Pool] = {}
        self.connections_made = 0

    async def post(
        self, target: Target, body: bytes, headers: dict[str, str], *, timeout_s: float
    ) -> Outcome:
        """POST ``body`` to ``target`` within ``timeout_s`` (module doc). Never raises for the
        call's own failures."""
        pool = self._pools.get(target)
        if pool is None:
            pool = self._pools[target] = _Pool(_head_of(target))
        request = _request(pool.head, body, headers)
        connection: Connection | None = None
        try:
            async with asyncio.timeout(timeout_s), pool.slots:
                while True:
                    connection, reused = await self._connection(target, pool)
                    try:
                        status = await connection.request(request)
                        break
                    except _Closed:
                        connection.close()
                        if not reused:
                            raise
            if connection.alive:
                pool.idle.append(connection)
            else:
                connection.close()
            connection = None
            if 200 <= status < 300:
                return Outcome(status)
            why = "a redirect, not followed" if 300 <= status < 400 else f"answered {status}"
            return Outcome(status, why)
        except TimeoutError:
            return Outcome(None, f"no answer within {timeout_s:g} s")
        except DestinationRefused as exc:
            return Outcome(None, str(exc.detail))
        except _Closed as exc:
            return Outcome(None, str(exc))
        except AnswerError as exc:
            return Outcome(None, str(exc))
        except (OSError, ssl.SSLError) as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}")
        finally:
            if connection is not None:
                connection.close()  # a call that failed or timed out leaves nothing to reuse

    async def _connection(self, target: Target, pool: _Pool) -> tuple[Connection, bool]:
        """An idle connection that is still open (True), else a new one (False)."""
        stale_s = time.monotonic() - DESTINATION_CONNECTION_IDLE_S
        while pool.idle:
            connection = pool.idle.pop()
            if connection.alive and connection.idle_since_s > stale_s:
                return connection, True
            connection.close()
        addresses = await resolve(target, self.allow_private, self.resolver)
        connection = await _connect(target, addresses, self.tls)
        self.connections_made += 1
        return connection, False

    def close(self) -> None:
        """Close every idle connection."""
        for pool in self._pools.values():
            for connection in pool.idle:
                connection.close()
            pool.idle.clear()
        self._pools.clear()


async def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    allow_private: bool,
    resolver: Resolver | None = None,
    tls: ssl.SSLContext | None = None,
) -> Outcome:
    """One call on a connection of its own (``Senders.post``), closed after it."""
    senders = Senders(allow_private=allow_private, resolver=resolver, tls=tls)
    try:
        return await senders.post(target, body, headers, timeout_s=timeout_s)
    finally:
        senders.close()


def _head_of(target: Target) -> bytes:
    """What every request to ``target`` starts with: the start line and the fixed headers."""
    host = target.host if ":" not in target.host else f"[{target.host}]"
    default_port = 443 if target.tls else 80
    authority = host if target.port == default_port else f"{host}:{target.port}"
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"host: {authority}",
        f"user-agent: {USER_AGENT}",
        "content-type: application/json",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def _request(head: bytes, body: bytes, headers: dict[str, str]) -> bytes:
    varying = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return b"%scontent-length: %d\r\n%s\r\n%s" % (head, len(body), varying.encode(), body)


async def _connect(target: Target, addresses: list[str], tls: ssl.SSLContext | None) -> Connection:
    """A connection to the first of ``addresses`` that answers (TLS for the host's name)."""
    context = (tls or ssl.create_default_context()) if target.tls else None
    loop = asyncio.get_running_loop()
    failure: OSError | None = None
    for address in addresses:
        try:
            _, connection = await loop.create_connection(
                Connection,
                address,
                target.port,
                ssl=context,
                server_hostname=target.host if context is not None else None,
            )
            return connection
        except OSError as exc:
            failure = exc
    assert failure is not None
    raise failure
