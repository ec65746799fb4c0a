"""The hot requests' direct path (api/protocol.py ``_Direct``): the same requests sent to one
app through two servers, one whose protocol answers them without uvicorn's request cycle and
one that takes uvicorn's path for everything, get the same bytes back (the ``date`` header
aside), one by one on keep-alive connections and pipelined, for every answer: 202, 200, 401,
403, 404, 413, 415, 422, 429, a 503 at the backend deadline, ``Connection: close``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import msgspec
import pytest
import uvicorn
import uvloop
from hypothesis import strategies as st

from profilehook.api import protocol as protocol_module
from profilehook.api.app import create_app
from profilehook.api.deadlines import Deadlines
from profilehook.api.ingest import direct_handlers
from profilehook.api.protocol import http_protocol
from profilehook.api.ratelimit import RateLimiter
from profilehook.keys import create_key
from profilehook.service import running
from profilehook.settings import Settings
from tests.support import examples, free_port, responses, wait_until
from tests.test_contact_read import scoped_key

WORKSPACE = "acme"
BACKEND_TIMEOUT_S = 0.3
BURST = 200


class _Served:
    """One app behind two servers: ``ports[True]`` with the direct path, ``ports[False]``
    without; ``keys`` by name; ``direct`` counts the answers written by the direct path."""

    def __init__(self, tmp: Path, **overrides: Any):
        settings = Settings(
            **{
                "data_dir": tmp / "data",
                "backend_timeout_s": BACKEND_TIMEOUT_S,
                "rate_limit_per_s": 1,
                "rate_limit_burst": BURST,
                "max_single_body_bytes": 1000,
                **overrides,
            }
        )
        self.settings = settings
        self.keys = {
            name: scoped_key(settings, WORKSPACE, scopes)
            for name, scopes in {
                "all": ("ingest", "read"),
                "ingest": ("ingest",),
                "read": ("read",),
                "limited-direct": ("ingest",),
                "limited-uvicorn": ("ingest",),
                "any-direct": ("ingest", "read"),
                "any-uvicorn": ("ingest", "read"),
            }.items()
        }
        self.app = create_app(settings)
        self.ports = {True: free_port(), False: free_port()}
        self.direct = 0
        self.tasks = 0  # the direct requests that ran in a task of their own
        self._servers: list[uvicorn.Server] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: len(self._servers) == 2 and all(s.started for s in self._servers))
        queue = self.app.services.queue
        publish = queue.publish

        async def slow_publish(events: list[Any]) -> None:
            if events and events[0].contact_id == "slow":
                await asyncio.sleep(1.0)  # past the backend deadline
            await publish(events)

        queue.publish = slow_publish  # type: ignore[method-assign]

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        self._thread.join(timeout=30)

    def _run(self) -> None:
        uvloop.run(self._serve())

    async def _serve(self) -> None:
        tasks = []
        for direct, port in self.ports.items():
            config = uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=port,
                http=http_protocol(5.0, 5.0, direct=direct),
                lifespan="on" if direct else "off",  # (one app: one lifespan)
                access_log=False,
                proxy_headers=False,
                log_config=None,
            )
            server = uvicorn.Server(config)
            self._servers.append(server)
            tasks.append(asyncio.create_task(server.serve()))
            while not server.started:
                await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)


@contextlib.contextmanager
def counting(found: _Served) -> Iterator[None]:
    """While inside, ``found.direct`` counts the answers the direct path gives and
    ``found.tasks`` the tasks it starts."""
    counted = protocol_module._Direct

    class Counted(counted):  # type: ignore[valid-type, misc]
        __slots__ = ()

        def response(self, *args: Any) -> bytes:
            found.direct += 1
            return super().response(*args)  # type: ignore[no-any-return]

        async def run(self, *args: Any) -> None:
            found.tasks += 1
            await super().run(*args)

    protocol_module._Direct = Counted  # type: ignore[misc]
    try:
        yield
    finally:
        protocol_module._Direct = counted  # type: ignore[misc]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Served]:
    found = _Served(tmp_path_factory.mktemp("direct"))
    with counting(found):
        found.start()
        try:
            yield found
        finally:
            found.stop()


def connect(port: int) -> socket.socket:
    """A connection to ``port``, with uvicorn's access log off as ``serve`` has it: pytest's
    log capture gives that logger handlers during a test, and with them the protocol leaves
    every request to uvicorn's cycle (which writes that log)."""
    logging.getLogger("uvicorn.access").handlers = []
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def event(contact_id: str, event_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "event_name": "update",
        "timestamp": 1_700_000_000,
        "event_id": event_id,
        "user_properties": properties or {"plan": "pro"},
    }


def post(
    key: str,
    body: bytes,
    path: str = "/v1/properties",
    content_type: str = "application/json",
    extra: str = "",
) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def get(key: str | None, path: str, extra: str = "") -> bytes:
    auth = "" if key is None else f"Authorization: Bearer {key}\r\n"
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}\r\n".encode()


_DATE = re.compile(rb"\r\ndate: [^\r]*\r\n")


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` whole answers (each with a content-length), the date header blanked."""
    return [_DATE.sub(b"\r\ndate: -\r\n", answer) for answer in responses(sock, count)]


def requests(keys: dict[str, str]) -> list[bytes]:
    """One of each answer of the three hot routes."""
    all_, ingest, read = keys["all"], keys["ingest"], keys["read"]
    batch = msgspec.json.encode({"events": [event("b1", "eb1"), event("b2", "eb2")]})
    mixed = msgspec.json.encode({"events": [event("b3", "eb3"), {"contact_id": "b4"}]})
    return [
        post(all_, msgspec.json.encode(event("c1", "e1"))),  # 202
        post(all_, batch, "/v1/properties/batch"),  # 202, all accepted
        post(all_, mixed, "/v1/properties/batch"),  # 202, one rejected
        post(all_, b"{"),  # 422
        post(all_, msgspec.json.encode({"contact_id": "c1"})),  # 422
        post("phk_wrong", msgspec.json.encode(event("c1", "e2"))),  # 401
        post(read, msgspec.json.encode(event("c1", "e3"))),  # 403
        post(all_, msgspec.json.encode(event("c1", "e4")), content_type="text/plain"),  # 415
        post(all_, msgspec.json.encode(event("c1", "e5", blob="x" * 2000))),  # 413
        get(all_, "/v1/contacts/seeded"),  # 200
        get(all_, "/v1/contacts/nobody"),  # 404
        get(None, "/v1/contacts/seeded"),  # 401
        get("phk_wrong", "/v1/contacts/seeded"),  # 401
        get(ingest, "/v1/contacts/seeded"),  # 403
        get(all_, "/v1/contacts/seeded/history"),  # 200, Starlette's (not a direct one)
        get(all_, "/v1/contacts/see%64ed"),  # 200, the id decoded (not a direct one)
        get(all_, "/v1/contacts/seeded", "Authorization: Bearer phk_other\r\n"),  # 401
        post(all_, msgspec.json.encode(event("slow", "e6"))),  # 503 at the deadline
    ]


@pytest.fixture(scope="module")
def seeded(served: _Served) -> _Served:
    with connect(served.ports[True]) as sock:
        sock.sendall(post(served.keys["all"], msgspec.json.encode(event("seeded", "s1"))))
        assert read_answers(sock, 1)[0].startswith(b"HTTP/1.1 202 ")

    def applied() -> bool:
        with connect(served.ports[True]) as sock:
            sock.sendall(get(served.keys["all"], "/v1/contacts/seeded"))
            return read_answers(sock, 1)[0].startswith(b"HTTP/1.1 200 ")

    wait_until(applied)
    return served


def one_by_one(port: int, sent: list[bytes]) -> list[bytes]:
    with connect(port) as sock:
        found = []
        for request in sent:
            sock.sendall(request)
            found += read_answers(sock, 1)
        return found


def pipelined(port: int, sent: list[bytes]) -> list[bytes]:
    with connect(port) as sock:
        sock.sendall(b"".join(sent))
        return read_answers(sock, len(sent))


def counted(served: _Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The app's counters (accepted and rejected events, refused requests), by labels."""
    time.sleep(0.2)  # (the 503's handler counts it as its cancellation arrives, after the answer)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in served.app.services.metrics.registry.collect()
        if metric.type == "counter"
        for sample in metric.samples
        if sample.name == "profilehook_requests_rejected_total"
        or sample.labels.get("outcome") in ("accepted", "rejected")  # (not the applier's)
    }


def test_given_each_answer_one_by_one_then_both_paths_write_the_same_bytes(seeded):
    sent = requests(seeded.keys)
    before, counts = seeded.direct, [counted(seeded)]
    direct = one_by_one(seeded.ports[True], sent)
    assert seeded.direct - before == len(sent) - 2  # all but the history and the escaped id
    counts.append(counted(seeded))
    uvicorn_s = one_by_one(seeded.ports[False], sent)
    assert seeded.direct - before == len(sent) - 2  # (the other server took uvicorn's path)
    counts.append(counted(seeded))
    deltas = [
        {name: after[name] - earlier.get(name, 0.0) for name in after}
        for earlier, after in itertools.pairwise(counts)
    ]
    assert deltas[0] == deltas[1]  # the same requests counted the same way
    assert any(deltas[0].values())
    statuses = [answer.split(b" ", 2)[1] for answer in direct]
    assert statuses == [
        *(b"202", b"202", b"202", b"422", b"422", b"401", b"403", b"415", b"413"),
        *(b"200", b"404", b"401", b"401", b"403", b"200", b"200", b"401", b"503"),
    ]
    assert b"retry-after: " in direct[-1]
    assert direct == uvicorn_s


def test_given_pipelined_requests_then_both_paths_write_the_same_bytes_in_order(seeded):
    sent = requests(seeded.keys)
    direct = pipelined(seeded.ports[True], sent)
    assert direct == pipelined(seeded.ports[False], sent)
    assert direct == one_by_one(seeded.ports[True], sent)


def test_given_a_body_split_from_its_head_then_the_answer_is_the_same(seeded):
    request = post(seeded.keys["all"], msgspec.json.encode(event("c2", "e7")))
    head_end = request.index(b"\r\n\r\n") + 4
    answers = []
    for port in seeded.ports.values():
        with connect(port) as sock:
            sock.sendall(request[: head_end + 5])
            time.sleep(0.05)
            sock.sendall(request[head_end + 5 :])
            answers += read_answers(sock, 1)
    assert answers[0] == answers[1] and answers[0].startswith(b"HTTP/1.1 202 ")


def _sent_in_pieces(port: int, request: bytes, pieces: int, pause_s: float) -> bytes:
    """``request`` sent in ``pieces`` parts (the first its head and a little of its body),
    ``pause_s`` apart; its answer."""
    head_end = request.index(b"\r\n\r\n") + 4
    cuts = [0, head_end + 5] + [
        head_end + 5 + (len(request) - head_end - 5) * i // (pieces - 1) for i in range(1, pieces)
    ]
    with connect(port) as sock:
        for start, end in itertools.pairwise(cuts):
            sock.sendall(request[start:end])
            time.sleep(pause_s)
        [answer] = read_answers(sock, 1)
    return answer


def test_given_a_batch_whose_body_comes_in_pieces_then_the_direct_path_serves_it(seeded):
    """A body within its limit that does not come whole with its head is awaited by the
    protocol, not handed to uvicorn's cycle (which copied it over and over, and woke the
    handler for every 64 KB of it); the answer is the same."""
    events = [event(f"p{i}", f"ep{i}", note="x" * 200) for i in range(300)]
    batch = post(
        seeded.keys["all"], msgspec.json.encode({"events": events}), "/v1/properties/batch"
    )
    assert len(batch) > 64 * 1024  # more than one read, and past uvicorn's high-water mark
    answered = seeded.direct
    direct = _sent_in_pieces(seeded.ports[True], batch, pieces=4, pause_s=0.02)
    assert seeded.direct == answered + 1
    assert direct == _sent_in_pieces(seeded.ports[False], batch, pieces=4, pause_s=0.02)
    assert direct.startswith(b"HTTP/1.1 202 ") and b'"accepted":300' in direct


def test_given_a_single_event_whose_body_comes_in_pieces_then_no_task_serves_it(seeded):
    request = post(seeded.keys["all"], msgspec.json.encode(event("c8", "e8")))
    tasks, answered = seeded.tasks, seeded.direct
    answer = _sent_in_pieces(seeded.ports[True], request, pieces=3, pause_s=0.02)
    assert answer.startswith(b"HTTP/1.1 202 ")
    assert (seeded.direct, seeded.tasks) == (answered + 1, tasks)


def test_given_a_body_slower_than_a_sweep_then_uvicorns_path_reads_the_rest(seeded):
    """One still incomplete at a sweep (1 s with these deadlines) goes to uvicorn's path, where
    the handler's body deadline holds (tests/test_slow_clients.py); it is served as ever."""
    request = post(seeded.keys["all"], msgspec.json.encode(event("c9", "e9")))
    answered = seeded.direct
    answer = _sent_in_pieces(seeded.ports[True], request, pieces=2, pause_s=2.2)
    assert answer.startswith(b"HTTP/1.1 202 ")
    assert seeded.direct == answered  # answered by uvicorn's cycle


def test_given_a_body_over_its_limit_then_413_comes_on_the_head_as_before(seeded):
    """Only a body within its endpoint's limit is awaited: a larger one is refused as soon as
    its head is in, by the handler on uvicorn's path, without waiting for the body."""
    request = post(seeded.keys["all"], msgspec.json.encode(event("c1", "e5", blob="x" * 2000)))
    head = request[: request.index(b"\r\n\r\n") + 4]
    answers = []
    for port in seeded.ports.values():
        with connect(port) as sock:
            sock.sendall(head)  # and no body
            sock.settimeout(0.5)  # well within a sweep (1 s)
            answers += read_answers(sock, 1)
    assert answers[0] == answers[1] and answers[0].startswith(b"HTTP/1.1 413 ")


def test_given_a_client_gone_mid_body_then_the_server_serves_the_next(seeded):
    request = post(seeded.keys["all"], msgspec.json.encode(event("c10", "e10")))
    with connect(seeded.ports[True]) as sock:
        sock.sendall(request[: request.index(b"\r\n\r\n") + 6])
        time.sleep(0.05)
    answers = one_by_one(seeded.ports[True], [request])
    assert answers[0].startswith(b"HTTP/1.1 202 ")


def test_given_connection_close_then_both_paths_answer_with_it_and_close(seeded):
    sent = [
        post(
            seeded.keys["all"],
            msgspec.json.encode(event("c3", "e8")),
            extra="Connection: close\r\n",
        ),
        get(seeded.keys["all"], "/v1/contacts/seeded", "Connection: close\r\n"),
    ]
    for request in sent:
        answers = []
        for port in seeded.ports.values():
            with connect(port) as sock:
                sock.sendall(request)
                answers += read_answers(sock, 1)
                assert sock.recv(100) == b""  # closed
        assert answers[0] == answers[1] and b"\r\nconnection: close\r\n" in answers[0]


def test_given_a_key_past_its_rate_then_both_paths_answer_429_alike(seeded):
    answers = {}
    for direct, port in seeded.ports.items():
        key = seeded.keys["limited-direct" if direct else "limited-uvicorn"]
        sent = [post(key, msgspec.json.encode(event("c4", f"r{i}"))) for i in range(BURST + 3)]
        answers[direct] = pipelined(port, sent)
    statuses = [answer.split(b" ", 2)[1] for answer in answers[True]]
    assert statuses[:BURST] == [b"202"] * BURST and statuses[-1] == b"429"
    assert answers[True] == answers[False]


def test_given_a_client_gone_before_its_answer_then_the_event_is_stored_and_the_server_serves(
    seeded,
):
    with connect(seeded.ports[True]) as sock:
        sock.sendall(post(seeded.keys["all"], msgspec.json.encode(event("slow", "gone"))))
    with connect(seeded.ports[True]) as sock:
        sock.sendall(post(seeded.keys["all"], msgspec.json.encode(event("c5", "e9"))))
        assert read_answers(sock, 1)[0].startswith(b"HTTP/1.1 202 ")


def test_given_a_reader_that_does_not_read_then_the_server_holds_little_and_answers_all(seeded):
    """Pipelined reads answered from the data callback stop being read from the client once
    the transport pauses writing (and go to uvicorn's path, which waits for it to drain)."""
    request = get(seeded.keys["all"], "/v1/contacts/seeded")
    count = 30_000  # ~2.6 MB of requests, ~9 MB of answers
    [server] = [s for s in seeded._servers if s.config.port == seeded.ports[True]]
    with connect(seeded.ports[True]) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.sendall(request)
        read_answers(sock, 1)
        for connection in server.server_state.connections:  # the kernel holds little either
            found = connection.transport.get_extra_info("socket")
            found.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            found.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        data, sent, held = request * count, 0, 0
        deadline = time.monotonic() + 2
        while sent < len(data) and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):  # (the server stopped reading)
                sent += sock.send(data[sent : sent + 65536])
            time.sleep(0.01)
            held = max(
                [held]
                + [c.transport.get_write_buffer_size() for c in server.server_state.connections]
            )
        assert sent < len(data)  # the server stopped reading
        assert held < 1_000_000, held
        sock.setblocking(True)
        sock.settimeout(10)
        rest = threading.Thread(target=sock.sendall, args=(data[sent:],))
        rest.start()  # (the reader reads now, while the rest goes out)
        answers = read_answers(sock, count)
        rest.join()
    assert len(set(answers)) == 1 and answers[0].startswith(b"HTTP/1.1 200 ")


IDS = st.text(st.sampled_from("ab-_.~%2F?#/é\x01 "), min_size=0, max_size=6)
VALUES = st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans(), st.floats())
BODIES = st.one_of(
    st.builds(
        lambda contact_id, event_id, properties: msgspec.json.encode(
            event(contact_id or "c", event_id or "e", **properties)
        ),
        IDS,
        IDS,
        st.dictionaries(st.text(min_size=1, max_size=4), VALUES, min_size=1, max_size=3),
    ),
    st.builds(
        lambda items: msgspec.json.encode({"events": items}),
        st.lists(st.builds(lambda i: event(f"h{i}", f"hb{i}"), st.integers(0, 9)), max_size=3),
    ),
    st.binary(max_size=30),
)


@hypothesis.settings(max_examples=examples(100), deadline=None)
@hypothesis.given(
    kind=st.sampled_from(["single", "batch", "read"]),
    body=BODIES,
    contact_id=IDS,
    close=st.booleans(),
)
def test_given_any_hot_request_then_both_paths_answer_the_same_bytes(
    seeded, kind, body, contact_id, close
):
    """Any body to either POST, any id to the read, with or without ``Connection: close``."""
    extra = "Connection: close\r\n" if close else ""
    answers = []
    for direct, port in seeded.ports.items():
        key = seeded.keys["any-direct" if direct else "any-uvicorn"]
        if kind == "read":
            request = get(key, "/v1/contacts/" + contact_id, extra)
        else:
            path = "/v1/properties" + ("/batch" if kind == "batch" else "")
            request = post(key, body, path, extra=extra)
        with connect(port) as sock:
            sock.sendall(request)
            answers += read_answers(sock, 1)
    assert answers[0] == answers[1]


def test_given_plain_single_events_then_they_are_answered_without_a_task(seeded):
    """The single POST's handler runs from the parser's callback and answers from its append's
    callback (api/ingest.py ``direct_handlers``): no task, unless it is refused."""
    sent = [post(seeded.keys["all"], msgspec.json.encode(event("c6", f"t{i}"))) for i in range(5)]
    tasks, answered = seeded.tasks, seeded.direct
    answers = one_by_one(seeded.ports[True], sent)
    assert all(answer.startswith(b"HTTP/1.1 202 ") for answer in answers)
    assert seeded.direct - answered == 5
    assert seeded.tasks == tasks
    refused = one_by_one(seeded.ports[True], [post(seeded.keys["all"], b"{")])
    assert refused[0].startswith(b"HTTP/1.1 422 ") and seeded.tasks == tasks + 1


def test_given_a_reader_too_slow_for_the_answer_then_it_is_written_once_it_drains():
    """A direct answer meets a paused transport: it waits in a task, as ``send`` would."""

    async def scenario() -> list[bytes]:
        written: list[bytes] = []
        drained = asyncio.Event()

        class Flow:
            write_paused = True

            async def drain(self) -> None:
                await drained.wait()

        class Transport:
            def write_now(self, data: bytes) -> None:
                written.append(data)

            def close(self) -> None:
                pass

        class Protocol:
            flow = Flow()
            transport = Transport()
            loop = asyncio.get_running_loop()
            tasks: set[asyncio.Task[None]] = set()
            server_state = type("State", (), {"default_headers": [(b"server", b"x")]})()
            logger = logging.getLogger("test")

            def on_response_complete(self) -> None:
                written.append(b"complete")

        protocol = Protocol()
        direct = protocol_module._Direct(protocol, None, {}, True)
        direct.answer(202, b"{}")
        await asyncio.sleep(0.01)
        assert written == [] and len(protocol.tasks) == 1
        protocol.flow.write_paused = False
        drained.set()
        await asyncio.sleep(0.01)
        return written

    written = asyncio.run(scenario())
    assert written == [
        b"HTTP/1.1 202 Accepted\r\nserver: x\r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\n\r\n{}",
        b"complete",
    ]


async def test_single_events_parsed_in_one_pass_are_appended_together_after_it(tmp_path):
    """Appended one by one as they were parsed, the first woke the log's writer for a commit
    of its own (C's commits held a third of the requests); they wait for the pass's end, and
    go in one append (one future, one job, one deadline), each answered with its own id."""
    settings = Settings(data_dir=tmp_path / "data")
    async with running(settings) as services:
        key, _ = await create_key(services.store, WORKSPACE, ("ingest",))
        single = direct_handlers(services, Deadlines.from_settings(settings), RateLimiter(0, 1))[
            "/v1/properties"
        ]
        parsed, appended_after = [0], []
        publish = services.queue.publish

        def recording(events: Any) -> Any:
            appended_after.append((parsed[0], [e.event_id for e in events]))
            return publish(events)

        services.queue.publish = recording  # type: ignore[method-assign]
        answers: list[tuple[int, bytes]] = []

        class Request:
            scope = {
                "headers": [
                    (b"authorization", f"Bearer {key}".encode()),
                    (b"content-type", b"application/json"),
                ]
            }

            async def send(self, message: Any) -> None:
                raise AssertionError(message)

            def answer(self, status: int, body: bytes) -> None:
                answers.append((status, body))

            def later(self, work: Any) -> None:
                raise AssertionError(work)

        for i in range(3):
            single(Request(), msgspec.json.encode(event("c7", f"p{i}")))
            parsed[0] += 1
        assert appended_after == []  # nothing appended while the pass parses
        await wait_for(lambda: len(answers) == 3)
        assert appended_after == [(3, ["p0", "p1", "p2"])]
        assert [status for status, _ in answers] == [202, 202, 202]
        # each answer names its own request's event, and each is in the log
        assert [msgspec.json.decode(body)["event_id"] for _, body in answers] == ["p0", "p1", "p2"]
        for i in range(3):
            assert await services.queue.find(WORKSPACE, f"p{i}") is not None


async def test_a_pass_whose_append_misses_the_deadline_gets_a_503_on_each_request(tmp_path):
    """The pass's requests share one append and its deadline: at the deadline the watchdog
    answers every one of them 503 (a slow reader's drain holding back none), each counted."""
    settings = Settings(data_dir=tmp_path / "data")
    async with running(settings) as services:
        key, _ = await create_key(services.store, WORKSPACE, ("ingest",))
        single = direct_handlers(services, Deadlines(10.0, 0.05, tick_s=0.01), RateLimiter(0, 1))[
            "/v1/properties"
        ]
        publish = services.queue.publish

        async def slow(events: Any) -> None:
            await asyncio.sleep(0.5)  # past the backend deadline
            await publish(events)

        services.queue.publish = slow  # type: ignore[method-assign]
        rejected = services.metrics.requests_rejected.labels("503")
        before = rejected._value.get()
        tasks: list[asyncio.Task[Any]] = []

        class Request:
            scope = {
                "headers": [
                    (b"authorization", f"Bearer {key}".encode()),
                    (b"content-type", b"application/json"),
                ]
            }

            def __init__(self, drain_s: float) -> None:
                self.drain_s = drain_s
                self.sent: list[dict[str, Any]] = []

            async def send(self, message: Any) -> None:
                await asyncio.sleep(self.drain_s)  # (a slow reader's transport)
                self.sent.append(message)

            def answer(self, status: int, body: bytes) -> None:
                raise AssertionError((status, body))

            def later(self, work: Any) -> None:
                tasks.append(asyncio.get_running_loop().create_task(work))

        requests = [Request(drain_s) for drain_s in (1.0, 0.0, 0.0)]
        for i, request in enumerate(requests):
            single(request, msgspec.json.encode(event("c8", f"q{i}")))
        await wait_for(lambda: all(len(r.sent) == 2 for r in requests[1:]), timeout_s=0.9)
        for request in requests[1:]:
            assert request.sent[0]["status"] == 503
            assert b"Storage did not answer within 0.05 s" in request.sent[1]["body"]
        await wait_for(lambda: len(requests[0].sent) == 2)
        assert requests[0].sent[0]["status"] == 503
        await asyncio.gather(*tasks)
        assert rejected._value.get() - before == 3


async def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
