"""The server's CPU per batch request whose body arrives in pieces, as over a real network
(wrk on loopback writes each request whole, so the server reads most bodies with their heads:
D does not see this). 16 connections each send a request in three parts, 1 ms apart, and wait
for its 202; ``serve --no-applier``, CPU of the server process (every thread) per request over
``--seconds``. With ``--compare-with DIR`` (a checkout, or ``git archive`` of one, holding
``src``), that code's server and this one's alternate, ``--rounds`` pairs:

    .venv/bin/python benchmarks/split_bodies.py --events 100 --rounds 3 --compare-with /tmp/old
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import EVENT, Server, embedded, running, serve

CONNECTIONS = 16
PARTS = 3
PAUSE_S = 0.001


def batch_request(key: str, events: int) -> bytes:
    body = json.dumps(
        {"events": [{**EVENT, "contact_id": f"user{i}"} for i in range(events)]}
    ).encode()
    head = (
        f"POST /v1/properties/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _client(port: int, request: bytes, stop: asyncio.Event, done: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    cuts = [len(request) * i // PARTS for i in range(PARTS + 1)]
    while not stop.is_set():
        for start, end in itertools.pairwise(cuts):
            writer.write(request[start:end])
            await writer.drain()
            await asyncio.sleep(PAUSE_S)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 202 "):
            raise RuntimeError(f"not accepted: {head!r}")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        done[0] += 1
    writer.close()


async def _load(server: Server, request: bytes, seconds: float) -> dict[str, float]:
    stop, done = asyncio.Event(), [0]
    clients = [
        asyncio.create_task(_client(server.port, request, stop, done)) for _ in range(CONNECTIONS)
    ]
    await asyncio.sleep(1.0)  # warm-up
    cpu0, count0 = server.cpu_s(), done[0]
    await asyncio.sleep(seconds)
    cpu1, count1 = server.cpu_s(), done[0]
    stop.set()
    await asyncio.gather(*clients)
    requests = count1 - count0
    return {
        "requests_per_s": requests / seconds,
        "cpu_us_per_request": 1e6 * (cpu1 - cpu0) / requests,
    }


def measure(src: str | None, events: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env, key = embedded(Path(tmp), "split")
        if src is not None:
            env["PYTHONPATH"] = str(Path(src).resolve() / "src")
        with running(serve("profilehook", env, "--no-applier")) as server:
            time.sleep(0.5)
            return asyncio.run(_load(server, batch_request(key, events), seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100, help="events per request")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare-with", help="another checkout's directory (its src)")
    args = parser.parse_args()
    codes = [None] if args.compare_with is None else [args.compare_with, None]
    for round_no in range(1, args.rounds + 1):
        for src in codes:
            found = measure(src, args.events, args.seconds)
            label = "this checkout" if src is None else src
            print(json.dumps({"round": round_no, "code": label, "events": args.events, **found}))


if __name__ == "__main__":
    main()
