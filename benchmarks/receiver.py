"""A fast webhook receiver for the destinations benchmark (scenario L): a raw asyncio protocol,
keep-alive, one change per request (nothing batched), that verifies every signature with the
Standard Webhooks algorithm (HMAC-SHA256 of ``{webhook-id}.{webhook-timestamp}.{body}`` under
the secret, compared in constant time with each ``v1,`` signature of the header) and answers 204.

It notes, per change, when it arrived (``time.monotonic``: the same clock in every process of
the machine) and checks the order per contact (a change's cursor below its contact's last one)
and duplicates (a ``webhook-id`` seen before). Run as a process of its own:

    python benchmarks/receiver.py SECRET_FILE REPORT_FILE

(the secret file is read at the first call). It prints its port on one line, then runs until its standard input closes, and then writes the
report (JSON: verified, refused, duplicates, out_of_order, arrivals {event_id: monotonic s}).
A ``GET`` (any path) answers the running counts, for the benchmark to watch progress.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

_decode = msgspec.json.Decoder().decode


class State:
    def __init__(self, secret_file: Path) -> None:
        self.secret_file = secret_file
        self._key: bytes | None = None
        self.verified = 0
        self.refused = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.seen: set[bytes] = set()
        self.last: dict[str, int] = {}
        self.arrivals: dict[str, float] = {}

    @property
    def key(self) -> bytes:
        """The secret's key, read at the first call: the destination (and its secret) is made
        once the receiver listens."""
        if self._key is None:
            secret = self.secret_file.read_text().strip()
            self._key = base64.b64decode(secret.removeprefix("whsec_"))
        return self._key

    def take(self, headers: dict[bytes, bytes], body: bytes) -> bool:
        webhook_id = headers.get(b"webhook-id", b"")
        stamp = headers.get(b"webhook-timestamp", b"")
        signed = b"%s.%s.%s" % (webhook_id, stamp, body)
        expected = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest())
        given = headers.get(b"webhook-signature", b"").split(b" ")
        if not any(s.startswith(b"v1,") and hmac.compare_digest(s[3:], expected) for s in given):
            self.refused += 1
            return False
        self.verified += 1
        if webhook_id in self.seen:
            self.duplicates += 1
            return True
        self.seen.add(webhook_id)
        data = _decode(body).get("data")
        if isinstance(data, dict):  # a benchmark's own signed probe (the ceiling) has none
            contact, cursor = data["contact_id"], int(data["cursor"])
            if cursor < self.last.get(contact, -1):
                self.out_of_order += 1
            self.last[contact] = cursor
            self.arrivals[data["event_id"]] = time.monotonic()
        return True

    def counts(self) -> dict[str, int]:
        return {
            "verified": self.verified,
            "refused": self.refused,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "changes": len(self.arrivals),
        }


class Receiving(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            if lines[0].startswith(b"GET"):
                counts = json.dumps(self.state.counts()).encode()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(counts), counts)
                )
            elif self.state.take(headers, body):
                self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                self.transport.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")


async def main(secret_file: Path, report_file: Path) -> None:
    state = State(secret_file)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiving(state), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes it
    server.close()
    report: dict[str, Any] = {**state.counts(), "arrivals": state.arrivals}
    report_file.write_text(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
