"""A webhook receiver for the tests: a local HTTP server that verifies every call's signature with
the reference Standard Webhooks library (``standardwebhooks``, not our code), keeps what it got,
and answers what a test tells it to (a status, a redirect, or nothing at all for a while)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h11
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: Any | None  # the payload when the signature verified, else None


@dataclass
class Tally:
    """What a receiver got, change by change: each distinct change's payload (first arrival
    order), the calls that repeated one, and the first arrivals that came after a later change
    of the same contact (by the ``n`` the tests' events set)."""

    first: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    out_of_order: int = 0

    @property
    def distinct(self) -> int:
        return len(self.first)


def tally(calls: list[Received]) -> Tally:
    """Count ``calls``; every signature must have verified, each ``webhook-id`` be its change's
    id, and a repeated change be the same change, byte for byte."""
    found = Tally()
    last: dict[str, int] = {}
    for call in calls:
        assert call.verified is not None, "a signature did not verify"
        data = json.loads(call.body)["data"]
        assert call.headers["webhook-id"] == data["change_id"]
        if data["change_id"] in found.first:
            found.duplicates += 1
            assert found.first[data["change_id"]] == data
            continue
        found.first[data["change_id"]] = data
        n = data["properties"]["n"]["new"]
        if n < last.get(data["contact_id"], -1):
            found.out_of_order += 1
        last[data["contact_id"]] = n
    return found


@dataclass
class Receiver:
    secret: str | None = None
    answers: list[int | str] = field(default_factory=list)  # next answers: a status, or "hang"
    received: list[Received] = field(default_factory=list)
    port: int = 0
    delay_s: float = 0.0  # before reading each call: so that a kill finds calls in flight
    # Calls answered per connection before it is closed (1: a connection per call, the
    # receiver closing it without saying so, as many servers do).
    calls_per_connection: int = 1
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            for _ in range(self.calls_per_connection):
                if not await self._one_call(conn, reader, writer):
                    return
                conn.start_next_cycle()
        finally:
            writer.close()

    async def _one_call(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read, verify and answer one call; False when the connection is done."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return False
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert request is not None
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        verified = None
        if self.secret is not None:
            with contextlib.suppress(WebhookVerificationError):
                verified = Webhook(self.secret).verify(body, headers)
        self.received.append(Received(request.target.decode(), headers, body, verified))
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "hang":
            await asyncio.sleep(3600)
            return False
        status = int(answer)
        extra = [("location", "http://127.0.0.1:1/elsewhere")] if 300 <= status < 400 else []
        writer.write(
            conn.send(h11.Response(status_code=status, headers=[("content-length", "0"), *extra]))
            + conn.send(h11.EndOfMessage())
        )
        await writer.drain()
        return True


@contextlib.asynccontextmanager
async def receiving(secret: str | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(secret)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
