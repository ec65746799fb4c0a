"""Where the server's event loop spends its time on C and D's requests (issue 23): cProfile.

    .venv/bin/python benchmarks/profile_ingest.py
        [single|batch|segment|posthog|amplitude|cohort] [--requests N]
        [--concurrency N] [--top N] [--no-profile] [--pieces] [--python-gc]

Calls profilehook's ASGI app in process (no HTTP server: uvicorn's share, which the ceiling A
pays too, is not in it) with C's body on ``POST /v1/properties`` or D's 100-event body on the
batch endpoint, ``--concurrency`` requests at a time, on the embedded default backends (the
durable SQLite log, its writer thread committing groups of requests; the SQLite store; no
applier; the garbage collector set as serve sets it, ``cli._settle_heap``, unless
``--python-gc``). Prints requests/s, the CPU per request (this process, every thread: the
log's writer and checkpointer included) and the functions by own and cumulative time of the event loop's
thread (CPU time, so that waiting for the GIL or the machine does not count). ``--no-profile``
gives the rate and CPU per request without the profiler (and of it the event loop's thread's), and beside them those of an app that
only reads the body and decodes it with msgspec (the batch ceiling's app, the same way), for a
ratio; ``--compare-with`` is done with ``PYTHONPATH=<other checkout>/src``. ``--pieces``: each
step of C's handler alone (``batch``: each step of D's per-event work, on its 100-event body),
in a loop, in CPU microseconds of the calling thread (what no profiler's overhead distorts).
``segment``, ``posthog``, ``amplitude``: the same 100 updates as D's on the SDK-compatible batch
endpoints (api/peers.py: ``/v1/batch`` as segment-analytics-python sends them, run.py's scenario
I; PostHog's ``/batch/`` as ``$identify`` events; ``/amplitude/batch``); ``cohort``: E's
Amplitude cohort webhook of 10,000 users (api/webhooks.py; use fewer ``--requests``). Answered
200; neither ``--pieces`` nor ``--through-protocol``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
import uvloop
from run import EVENT, _segment_identify

from profilehook.api.app import create_app
from profilehook.cli import _settle_heap
from profilehook.keys import create_key
from profilehook.settings import Settings
from profilehook.sources.registry import create_source

PATHS = {"single": "/v1/properties", "batch": "/v1/properties/batch"}
PEER_PATHS = {
    "segment": "/v1/batch",
    "posthog": "/batch/",
    "amplitude": "/amplitude/batch",
    "cohort": "/v1/webhooks/",  # and the source's id
}


def _body(kind: str, key: str = "") -> bytes:
    """The request's body: C's, D's, or D's 100 updates as a peer's SDK sends them (the key in
    the body where the peer puts it)."""
    if kind == "single":
        return json.dumps(EVENT).encode()
    users = [f"user{i}" for i in range(100)]
    traits = EVENT["user_properties"]
    if kind == "segment":
        body: Any = {"batch": [_segment_identify(i) for i in range(100)], "writeKey": key}
    elif kind == "posthog":
        body = {
            "api_key": key,
            "batch": [
                {"event": "$identify", "distinct_id": user, "uuid": f"0190b6a4-4e0c-7bd4-9d8a-{i:012d}",
                 "timestamp": "2023-01-01T00:00:00+00:00", "$set": traits}
                for i, user in enumerate(users)
            ],
        }  # fmt: skip
    elif kind == "amplitude":
        body = {
            "api_key": key,
            "events": [
                {"user_id": user, "insert_id": f"i{i}", "time": 1672531200000,
                 "event_type": "$identify", "user_properties": {"$set": traits}}
                for i, user in enumerate(users)
            ],
        }  # fmt: skip
    elif kind == "cohort":  # run.py's scenario E
        body = {
            "cohort_name": "Bench cohort",
            "cohort_id": "bench1",
            "in_cohort": True,
            "computed_time": "1692206763",
            "message_id": "m1",
            "users": [{"user_id": f"user_{i}@example.com"} for i in range(10_000)],
        }
    else:
        body = {"events": [{**EVENT, "contact_id": user} for user in users]}
    return json.dumps(body).encode()


async def _call(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _lifespan(app: Any) -> tuple[asyncio.Task[None], asyncio.Queue[Any]]:
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    message = await outbox.get()
    assert message["type"] == "lifespan.startup.complete", message
    return task, inbox


async def _drive(
    app: Any,
    path: str,
    headers: Any,
    body: bytes,
    requests: int,
    concurrency: int,
    status_expected: int = 202,
) -> tuple[float, float]:
    """Requests/s, and CPU seconds per request (this process, every thread: the log's
    writer included)."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status = await _call(app, path, headers, body)
            assert status == status_expected, status

    t0, cpu0, loop0 = time.perf_counter(), time.process_time(), time.thread_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    _loop_cpu[0] = (time.thread_time() - loop0) / requests
    return requests / (time.perf_counter() - t0), (time.process_time() - cpu0) / requests


_loop_cpu = [0.0]  # the event loop's own CPU per request in the last ``_drive`` (its thread's)


async def _decode_only(body: bytes, requests: int, concurrency: int) -> tuple[float, float]:
    """The batch ceiling's work, as an ASGI app: read the body, decode it, answer 202."""
    decode = msgspec.json.decode

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        decode(message["body"])
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return await _drive(app, "/", [], body, requests, concurrency)


async def _pieces(app: Any, key: str, kind: str, times: int) -> dict[str, float]:
    """CPU microseconds of this thread for each step of C's handler (``single``) or of the
    per-event work of D's (``batch``: its 100-event body), done ``times`` times."""
    from profilehook.api.deadlines import Deadlines
    from profilehook.api.ingest import _batch_answer
    from profilehook.api.responses import encode, send_json
    from profilehook.events import encode_events, new_event_ids, now_us
    from profilehook.keys import authenticate, key_hash_of
    from profilehook.plain_batch import PlainBatch
    from profilehook.sources import native
    from profilehook.validation import check_json_content_type

    store, queue = app.services.store, app.services.queue
    body = _body(kind)
    now = now_us()
    steps: dict[str, Any]
    if kind == "batch":
        from profilehook.plain_batch import decode_plain_body
        from profilehook.queues.sqlite import _plain_record

        plain = decode_plain_body(body)
        batch: Any = native.whole_batch(body, "bench", now)
        assert isinstance(batch, PlainBatch)
        events = list(batch)
        steps = {
            "decode (msgspec into plain_batch's Structs)": lambda: decode_plain_body(body),
            "new_event_ids": lambda: new_event_ids(len(plain.events)),
            "whole_batch (decode, the ids' run)": lambda: native.whole_batch(body, "bench", now),
            "the answer's ids (PlainBatch.event_ids)": batch.event_ids,
            "the answer (_batch_answer)": lambda: _batch_answer(batch, None),
            "the log's record of it (the body as it came)": lambda: _plain_record(batch),
            "(not made now) the Events (PlainBatch.events)": lambda: PlainBatch.from_record(
                "bench", now, batch.id_run, body
            ).events(),
            "(not made now) encode_events": lambda: encode_events(events),
        }
    else:
        authorization = f"Bearer {key}".encode()
        deadlines = Deadlines(10.0, 10.0)
        accepted = app.services.metrics.events.labels("api", "accepted")

        async def nothing(message: Any) -> None:
            pass

        def watched() -> None:
            with deadlines.watch(nothing) as watch:
                watch.awaiting_backend()

        event = native.parse_single(body, "bench", now)
        events = [event]
        answer = b'{"status":"accepted","event_id":%s}' % encode(event.event_id)
        steps = {
            "deadline watch (enter, phase, exit)": watched,
            "parse_single (decode, validate, event id)": lambda: native.parse_single(
                body, "bench", now
            ),
            "key grant, keys.authenticate": lambda: authenticate(store, authorization),
            "key grant, key_grant_at_once": lambda: store.key_grant_at_once(
                key_hash_of(authorization)
            ),
            "content type": lambda: check_json_content_type(b"application/json"),
            "accepted counter": accepted.inc,
            "send_json (both messages)": lambda: send_json(nothing, 202, answer),
        }
    found: dict[str, float] = {}
    for name, step in steps.items():
        awaited = asyncio.iscoroutine(probe := step())
        if awaited:
            await probe
        cpu0 = time.thread_time()
        for _ in range(times):
            if awaited:
                await step()
            else:
                step()
        found[name] = round(1e6 * (time.thread_time() - cpu0) / times, 2)
    # The log's append as the handler makes it (record, future, job), 64 at a time as C's
    # connections make them (thousands outstanding would time the garbage collector instead;
    # 16 for D's), their commits left to the writer thread: the loop's side only.
    at_once = 64 if kind == "single" else 16
    rounds = max(1, times // at_once)
    spent = 0.0
    for _ in range(rounds):
        cpu0 = time.thread_time()
        appended = [queue.publish(batch if kind == "batch" else events) for _ in range(at_once)]
        spent += time.thread_time() - cpu0
        await asyncio.gather(*appended)
    found["queue.publish, the loop's side"] = round(1e6 * spent / (rounds * at_once), 2)
    return found


async def _through_protocol(
    app: Any, key: str, kind: str, body: bytes, requests: int, direct: bool = True
) -> dict[str, float]:
    """CPU per request (µs) of ``requests`` requests fed as bytes to profilehook's HTTP
    protocol (api/protocol.py, the hot requests' direct path on), 64 connections at a time,
    through transports that only count 202s (no sockets, no kernel, no wrk): the event loop's
    thread, and the process (the log's writer and checkpointer included). Each pass feeds one
    request to every connection and waits for their answers (the group commit)."""
    import uvicorn
    from protocol_cost import _Transport
    from uvicorn.server import ServerState

    from profilehook.api.protocol import http_protocol

    config = uvicorn.Config(
        app,
        http=http_protocol(10.0, 5.0, direct=direct),
        access_log=False,
        proxy_headers=False,
        log_config=None,
    )
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Fri, 04 Dec 2026 14:00:00 GMT"), (b"server", b"uvicorn")]
    loop = asyncio.get_running_loop()

    answered = [0]
    all_answered: list[asyncio.Future[None]] = []

    class Counted(_Transport):
        def write(self, data: Any) -> None:
            assert bytes(data).startswith(b"HTTP/1.1 202 "), bytes(data)
            answered[0] += 1
            if answered[0] == CONCURRENCY:
                all_answered[0].set_result(None)

    connections = []
    for _ in range(CONCURRENCY):
        transport = Counted()
        protocol = config.http_protocol_class(
            config=config, server_state=state, app_state={}, _loop=loop
        )
        protocol.connection_made(transport)
        connections.append((protocol, transport))
    request = (
        f"POST {PATHS[kind]} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    passes = max(1, requests // CONCURRENCY)
    cpu0, loop0 = time.process_time(), time.thread_time()
    for _ in range(passes):
        answered[0] = 0
        all_answered[:] = [loop.create_future()]
        for protocol, _ in connections:
            protocol.data_received(request)
        await all_answered[0]
    cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
    for protocol, _ in connections:
        protocol.connection_lost(None)
    count = passes * CONCURRENCY
    return {"loop_us": round(1e6 * loop_cpu / count, 2), "process_us": round(1e6 * cpu / count, 2)}


CONCURRENCY = 64


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), rate_limit_per_s=0)
        app = create_app(settings, applies_in="nowhere")
        task, inbox = await _lifespan(app)
        if not args.python_gc:
            _settle_heap()  # the collector as serve sets it once started
        key, _ = await create_key(app.services.store, "bench")
        body = _body(args.kind, key)
        path = {**PATHS, **PEER_PATHS}[args.kind]
        ok = 200 if args.kind in PEER_PATHS else 202
        if args.kind == "cohort":
            source, key = await create_source(app.services.store, "amplitude", "bench", {}, True)
            path += source.source_id
        headers = [
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if args.through_protocol:
            await _through_protocol(app, key, args.kind, body, 2_000)
            for _ in range(args.rounds):
                found = await _through_protocol(app, key, args.kind, body, args.requests)
                print(json.dumps({"loadavg": os.getloadavg()[0], **found}), flush=True)
            await inbox.put({"type": "lifespan.shutdown"})
            await task
            return
        if args.pieces:
            for _ in range(args.rounds):
                found = await _pieces(app, key, args.kind, args.requests)
                print(json.dumps({"loadavg": os.getloadavg()[0], **found}), flush=True)
            await inbox.put({"type": "lifespan.shutdown"})
            await task
            return
        await _drive(app, path, headers, body, min(args.requests, 2_000), args.concurrency, ok)
        if args.no_profile:
            for _ in range(args.rounds):
                ours, cpu = await _drive(
                    app, path, headers, body, args.requests, args.concurrency, ok
                )
                loop_cpu = _loop_cpu[0]
                ceiling, ceiling_cpu = await _decode_only(body, args.requests, args.concurrency)
                print(
                    json.dumps(
                        {
                            "kind": args.kind,
                            "loadavg": os.getloadavg()[0],
                            "requests_per_s": round(ours),
                            "decode_only_per_s": round(ceiling),
                            "ratio": round(ours / ceiling, 3),
                            "cpu_us_per_request": round(cpu * 1e6, 1),
                            "of_it_event_loop_us": round(loop_cpu * 1e6, 1),
                            "decode_only_cpu_us_per_request": round(ceiling_cpu * 1e6, 1),
                            "cpu_ratio": round(ceiling_cpu / cpu, 3),
                        }
                    ),
                    flush=True,
                )
        else:
            profile = cProfile.Profile(time.thread_time)  # the event loop's CPU, not waits
            profile.enable()
            rate, cpu = await _drive(app, path, headers, body, args.requests, args.concurrency, ok)
            profile.disable()
            print(
                f"{args.kind}: {rate:,.0f} requests/s, {cpu * 1e6:,.0f} µs of CPU a request,"
                " under the profiler"
            )
            stats = pstats.Stats(profile).strip_dirs()
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)
        await inbox.put({"type": "lifespan.shutdown"})
        await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", nargs="?", default="single", choices=[*PATHS, *PEER_PATHS])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--pieces", action="store_true")
    parser.add_argument("--through-protocol", action="store_true")
    parser.add_argument(
        "--python-gc",
        action="store_true",
        help="leave the collector at Python's defaults (before 2026-12-04 17:20 UTC, the only way)",
    )
    arguments = parser.parse_args()
    if arguments.kind in PEER_PATHS and (arguments.pieces or arguments.through_protocol):
        parser.error(f"{arguments.kind}: neither --pieces nor --through-protocol")
    uvloop.run(main(arguments))
