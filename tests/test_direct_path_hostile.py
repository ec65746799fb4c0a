"""The hot requests' direct path (api/protocol.py) against hostile and sloppy clients: for
anything a client can send, both servers of one app (tests/test_direct_path.py: one with the
direct path, one taking uvicorn's path for everything) write the same bytes (the ``date``
header aside), never a 5xx, answers in request order, nothing answered 2xx that is not in the
log and nothing accepted from a request that never arrived whole; every wait is bounded.

Mixed pipelines where direct and uvicorn-path requests alternate, malformed and unusual request
heads, bodies cut short, clients that half-close, garbage after whole requests, requests that
ask to switch protocols (h2c, WebSocket, CONNECT), and random pipelines of all of these
(Hypothesis)."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable, Iterator

import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st
from starlette.routing import WebSocketRoute

from profilehook.constants import MAX_HEAD_BYTES
from tests.support import examples, wait_until
from tests.test_direct_path import _Served, connect, counting, event

ANSWER_WAIT_S = 10.0  # past the server's keep-alive (5 s): a hang fails rather than waits
BODY_TIMEOUT_S = 1.0
_DATE = re.compile(rb"\r\ndate: [^\r]*\r\n")
_HEAD_END = b"\r\n\r\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Served]:
    """Both servers, no rate limit (the same key on both paths), a short body deadline, and a
    contact ``seeded`` that no test writes (reads of it answer the same at any time)."""
    found = _Served(
        tmp_path_factory.mktemp("hostile"), rate_limit_per_s=0, body_timeout_s=BODY_TIMEOUT_S
    )
    with counting(found):
        found.start()
        try:
            with connect(found.ports[True]) as sock:
                sock.sendall(post(found.keys["all"], single("seeded", "s1")))
                assert read_stream(sock, 1)[0].startswith(b"HTTP/1.1 202 ")
            wait_until(lambda: stored(found, "seeded"))
            yield found
        finally:
            found.stop()


# -- requests ------------------------------------------------------------------------------------


def single(contact_id: str, event_id: str) -> bytes:
    return msgspec.json.encode(event(contact_id, event_id))


def batch(*contact_ids: str) -> bytes:
    return msgspec.json.encode({"events": [event(c, f"b-{c}") for c in contact_ids]})


def post(
    key: str,
    body: bytes,
    path: str = "/v1/properties",
    head: str = "",
    length: str | None = None,
    version: str = "HTTP/1.1",
    method: str = "POST",
) -> bytes:
    length = str(len(body)) if length is None else length
    return (
        f"{method} {path} {version}\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{head}\r\n"
    ).encode() + body


def chunked(key: str, body: bytes, path: str = "/v1/properties", head: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n{head}\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def get(key: str | None, path: str, head: str = "", method: str = "GET") -> bytes:
    auth = "" if key is None else f"Authorization: Bearer {key}\r\n"
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{head}\r\n".encode()


# -- reading answers -----------------------------------------------------------------------------


def read_stream(sock: socket.socket, count: int, head_only: tuple[int, ...] = ()) -> list[bytes]:
    """The next answers on ``sock`` up to ``count`` final ones (each ``100 Continue`` too, as an
    entry of its own), fewer when the server closes; the date header blanked. The ``head_only``-th
    final answers (a HEAD's) have no body. Fails when the server neither answers nor closes
    within ``ANSWER_WAIT_S``."""
    sock.settimeout(ANSWER_WAIT_S)
    buffer, found, finals = b"", [], 0
    while finals < count:
        while _HEAD_END in buffer and finals < count:
            head, _, rest = buffer.partition(_HEAD_END)
            if head.startswith(b"HTTP/1.1 1"):
                found.append(head + _HEAD_END)
                buffer = rest
                continue
            lengths = re.findall(rb"\r\ncontent-length: (\d+)", head.lower())
            length = 0 if finals in head_only else int(lengths[0])
            if len(rest) < length:
                break
            found.append(_DATE.sub(b"\r\ndate: -\r\n", head + _HEAD_END + rest[:length]))
            buffer, finals = rest[length:], finals + 1
        if finals == count:
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"no answer nor close within {ANSWER_WAIT_S} s after {found!r}")
        if not chunk:
            assert not buffer, f"closed within an answer: {buffer!r}"
            break
        buffer += chunk
    return found


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (within ``ANSWER_WAIT_S``) with nothing more to say."""
    sock.settimeout(ANSWER_WAIT_S)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def exchange(
    port: int, sent: bytes, count: int, head_only: tuple[int, ...] = (), shut: bool = False
) -> list[bytes]:
    """The answers to ``sent`` on a new connection (then its sending side shut down, with
    ``shut``). Fails unless the server closes the connection after an answer that says
    ``connection: close``, or after the last with ``shut``."""
    with connect(port) as sock:
        sock.sendall(sent)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        found = read_stream(sock, count, head_only)
        if shut or (found and b"\r\nconnection: close\r\n" in found[-1]):
            assert closed(sock)
        return found


def both(
    served: _Served, sent: bytes, count: int, head_only: tuple[int, ...] = (), shut: bool = False
) -> list[bytes]:
    """``exchange`` with both servers, which must answer alike; the direct one's answers."""
    direct = exchange(served.ports[True], sent, count, head_only, shut)
    assert direct == exchange(served.ports[False], sent, count, head_only, shut)
    return direct


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def stored(served: _Served, contact_id: str) -> bool:
    with connect(served.ports[True]) as sock:
        sock.sendall(get(served.keys["all"], f"/v1/contacts/{contact_id}"))
        return status(read_stream(sock, 1)[0]) == 200


def all_stored(served: _Served, contact_ids: list[str]) -> None:
    """Every one of ``contact_ids`` (each accepted with a 202) comes to be in the store."""
    for contact_id in contact_ids:
        wait_until(lambda contact_id=contact_id: stored(served, contact_id))


def never_stored(served: _Served, contact_ids: list[str]) -> None:
    """None of ``contact_ids`` is in the store once an event published after them is."""
    marker = f"marker-{time.monotonic_ns()}"
    time.sleep(0.2)  # (a request that was to be refused has had its chance to publish)
    with connect(served.ports[True]) as sock:
        sock.sendall(post(served.keys["all"], single(marker, marker)))
        assert status(read_stream(sock, 1)[0]) == 202
    all_stored(served, [marker])
    assert not [c for c in contact_ids if stored(served, c)]


# -- a pipeline mixing both paths ----------------------------------------------------------------


def test_given_a_pipeline_alternating_direct_and_uvicorn_requests_then_both_streams_match(
    served,
):
    """Given plain POSTs, an Expect: 100-continue one, reads, a chunked POST, a batch, a read
    with a query and one of an escaped id, a HEAD, a request in absolute form and an encoded
    body on one connection; when they are pipelined, then both servers write the same stream,
    in request order, the same as when sent one by one (where the plain ones take the direct
    path, the others uvicorn's, alternating), and every event answered 202 is stored."""
    key = served.keys["all"]
    sent = [
        post(key, single("mix-1", "m1")),  # direct
        post(key, single("mix-2", "m2"), head="Expect: 100-continue\r\n"),  # uvicorn's
        get(key, "/v1/contacts/seeded"),  # direct
        chunked(key, single("mix-3", "m3")),  # uvicorn's
        post(key, batch("mix-4", "mix-5"), "/v1/properties/batch"),  # direct
        get(key, "/v1/contacts/seeded?fields=all"),  # uvicorn's
        get(key, "/v1/contacts/nobody"),  # direct
        get(key, "/v1/contacts/see%64ed"),  # uvicorn's
        get(key, "/v1/contacts/seeded", method="HEAD"),  # uvicorn's
        post(key, single("mix-6", "m6"), path="http://x/v1/properties"),  # uvicorn's
        post(key, single("mix-7", "m7"), head="Content-Encoding: identity\r\n"),  # uvicorn's
        post(key, b"{", path="/v1/properties/batch"),  # direct, 422
        post(key, single("mix-8", "m8")),  # direct
    ]
    pipelined = both(served, b"".join(sent), len(sent), head_only=(8,))
    statuses = [status(answer) for answer in pipelined]
    assert statuses == [202, 100, 202, 200, 202, 202, 200, 404, 200, 200, 202, 202, 422, 202]
    finals = [answer for answer in pipelined if status(answer) != 100]
    one_by_one, before = [], served.direct
    with connect(served.ports[True]) as sock:
        for index, request in enumerate(sent):
            one_by_one += read_stream_after(sock, request, head_only=index == 8)
    assert served.direct - before == 6  # (pipelined, only the first: the rest wait behind it)
    assert [a for a in one_by_one if status(a) != 100] == finals
    all_stored(served, [f"mix-{n}" for n in range(1, 9)])


def read_stream_after(sock: socket.socket, request: bytes, head_only: bool) -> list[bytes]:
    sock.sendall(request)
    return read_stream(sock, 1, (0,) if head_only else ())


# -- unusual and malformed request heads ---------------------------------------------------------

BODY = single("head-case", "h1")
KEY = "$KEY"  # replaced by the "all" key


def _long_header() -> str:
    return "X-Padding: " + "a" * (MAX_HEAD_BYTES - 1000) + "\r\n"


# name -> (request, the status both must answer; None: the parser refuses it, 400 and close)
HEADS: dict[str, tuple[Callable[[str], bytes], int]] = {
    "two equal content-lengths": (
        lambda k: post(k, BODY, head=f"Content-Length: {len(BODY)}\r\n"),
        400,
    ),
    "two different content-lengths": (lambda k: post(k, BODY, head="Content-Length: 3\r\n"), 400),
    "content-length with a plus sign": (lambda k: post(k, BODY, length=f"+{len(BODY)}"), 400),
    "content-length with spaces": (lambda k: post(k, BODY, length=f"  {len(BODY)} "), 202),
    "content-length with leading zeros": (lambda k: post(k, BODY, length=f"000{len(BODY)}"), 202),
    "content-length past 2**64": (lambda k: post(k, BODY, length="9" * 25), 400),
    "negative content-length": (lambda k: post(k, BODY, length="-1"), 400),
    "content-length 0": (lambda k: post(k, b""), 422),
    "no content-length": (
        lambda k: post(k, b"").replace(b"Content-Length: 0\r\n", b""),
        422,
    ),
    "no host": (lambda k: post(k, BODY).replace(b"Host: x\r\n", b""), 202),
    "obs-fold": (lambda k: post(k, BODY, head="X-A: a\r\n b\r\n"), 400),
    "a header line just under the head's cap": (
        lambda k: post(k, BODY, head=_long_header()),
        202,
    ),
    "connection: keep-alive, close": (
        lambda k: post(k, BODY, head="Connection: keep-alive, close\r\n"),
        202,
    ),
    "connection: CLOSE": (lambda k: post(k, BODY, head="Connection: CLOSE\r\n"), 202),
    "HTTP/1.0": (lambda k: post(k, BODY, version="HTTP/1.0"), 202),
    "HTTP/1.0 keep-alive": (
        lambda k: post(k, BODY, version="HTTP/1.0", head="Connection: keep-alive\r\n"),
        202,
    ),
    "HTTP/1.2": (lambda k: post(k, BODY, version="HTTP/1.2"), 400),
    "HTTP/2.0 over HTTP/1": (lambda k: get(k, "/v1/contacts/seeded").replace(b"1.1", b"2.0"), 200),
    "HTTP/0.9 request line": (lambda k: b"GET /v1/contacts/seeded\r\n\r\n", 401),
    "bare LF line ends": (lambda k: get(k, "/v1/contacts/seeded").replace(b"\r\n", b"\n"), 400),
    "lowercase post": (lambda k: post(k, BODY, method="post"), 400),
    "lowercase get": (lambda k: get(k, "/v1/contacts/seeded", method="get"), 400),
    "absolute-form POST": (lambda k: post(k, BODY, path="http://x/v1/properties"), 202),
    "absolute-form GET": (lambda k: get(k, "http://x/v1/contacts/seeded"), 200),
    "POST with a query string": (lambda k: post(k, BODY, path="/v1/properties?x=1"), 202),
    "POST with a trailing slash": (lambda k: post(k, BODY, path="/v1/properties/"), 307),
    "POST to an escaped path": (lambda k: post(k, BODY, path="/v1/propertie%73"), 202),
    "batch with a trailing slash": (
        lambda k: post(k, batch("head-b"), path="/v1/properties/batch/"),
        307,
    ),
    "GET %2e%2e": (lambda k: get(k, "/v1/contacts/%2e%2e"), 404),
    "GET ..": (lambda k: get(k, "/v1/contacts/.."), 404),
    "GET a dot-dot path": (lambda k: get(k, "/v1/contacts/../contacts/seeded"), 404),
    "GET an empty id": (lambda k: get(k, "/v1/contacts/"), 404),
    "GET with a trailing slash": (lambda k: get(k, "/v1/contacts/seeded/"), 404),
    "GET with a query": (lambda k: get(k, "/v1/contacts/seeded?x=1&y"), 200),
    "GET with a fragment": (lambda k: get(k, "/v1/contacts/seeded#x"), 200),
    "GET a raw UTF-8 id": (lambda k: get(k, "/v1/contacts/é"), 400),
    "GET an escaped UTF-8 id": (lambda k: get(k, "/v1/contacts/%C3%A9"), 404),
    "GET an escaped invalid UTF-8 id": (lambda k: get(k, "/v1/contacts/%FF%FE"), 404),
    "GET an escaped NUL": (lambda k: get(k, "/v1/contacts/%00"), 404),
    "GET an escaped slash": (lambda k: get(k, "/v1/contacts/a%2Fb"), 404),
    "GET a bad escape": (lambda k: get(k, "/v1/contacts/%zz"), 404),
    "GET a 5000-byte id": (lambda k: get(k, "/v1/contacts/" + "a" * 5000), 404),
    "GET with a body": (
        lambda k: get(k, "/v1/contacts/seeded", "Content-Length: 3\r\n") + b"abc",
        200,
    ),
    "GET with a chunked body": (
        lambda k: get(k, "/v1/contacts/seeded", "Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
        200,
    ),
    "OPTIONS *": (lambda k: b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "CONNECT": (lambda k: b"CONNECT x:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "PUT to the ingest path": (lambda k: post(k, BODY, method="PUT"), 405),
    "DELETE of a contact without a key": (lambda k: get(None, "/v1/contacts/x", "", "DELETE"), 401),
    "Bearer with extra spaces": (lambda k: post(k, BODY).replace(b"Bearer ", b"Bearer   "), 202),
    "lowercase bearer": (lambda k: post(k, BODY).replace(b"Bearer ", b"bearer "), 202),
    "Bearer and a tab": (lambda k: post(k, BODY).replace(b"Bearer ", b"Bearer\t"), 401),
    "two Authorization headers": (
        lambda k: post(k, BODY, head=f"Authorization: Bearer {k}\r\n"),
        401,
    ),
    "Basic scheme": (lambda k: post(k, BODY).replace(b"Bearer ", b"Basic "), 401),
    "Authorization of bytes past ASCII": (
        lambda k: post(k, BODY).replace(k.encode(), k.encode() + b"\xff\xfe"),
        401,
    ),
    "Authorization with a NUL": (
        lambda k: post(k, BODY).replace(k.encode(), k.encode() + b"\x00"),
        400,
    ),
    "GET, Bearer with extra spaces": (
        lambda k: get(None, "/v1/contacts/seeded", f"Authorization:   Bearer   {k}  \r\n"),
        200,
    ),
    "GET, lowercase bearer": (
        lambda k: get(None, "/v1/contacts/seeded", f"Authorization: bearer {k}\r\n"),
        200,
    ),
    "GET, two Authorization headers": (
        lambda k: get(k, "/v1/contacts/seeded", f"Authorization: Bearer {k}\r\n"),
        401,
    ),
    "GET, empty Authorization": (
        lambda k: get(None, "/v1/contacts/seeded", "Authorization:\r\n"),
        401,
    ),
    "GET, Authorization of bytes past ASCII": (
        lambda k: (
            get(None, "/v1/contacts/seeded", "")[:-2]
            + b"Authorization: Bearer \xff"
            + k.encode()
            + b"\r\n\r\n"
        ),
        401,
    ),
    "Content-Type past ASCII": (
        lambda k: post(k, BODY).replace(b"application/json", b"application/json\xff"),
        415,
    ),
    "Content-Type with a charset": (
        lambda k: post(k, BODY).replace(b"application/json", b"application/json; charset=x"),
        202,
    ),
    "two Content-Types, the last not JSON": (
        lambda k: post(k, BODY, head="Content-Type: text/plain\r\n"),
        415,
    ),
    "a header name past ASCII": (lambda k: post(k, BODY, head="X-\xff: 1\r\n"), 400),
    "a DEL in the target": (lambda k: get(k, "/v1/contacts/se\x7feded"), 400),
    "Expect: something else": (lambda k: post(k, BODY, head="Expect: something\r\n"), 202),
    "Content-Encoding: identity": (
        lambda k: post(k, BODY, head="Content-Encoding: identity\r\n"),
        202,
    ),
    "Content-Encoding: gzip, not gzip": (
        lambda k: post(k, BODY, head="Content-Encoding: gzip\r\n"),
        400,
    ),
    "Content-Encoding past ASCII": (
        lambda k: post(k, BODY, head="Content-Encoding: \xff\r\n"),
        415,
    ),
    "chunked and a content-length": (
        lambda k: chunked(k, BODY).replace(b"Transfer-Encoding", b"Content-Length: 5\r\nTr"),
        400,
    ),
    "chunked with trailers": (
        lambda k: chunked(k, BODY)[:-2] + b"X-Trailer: 1\r\n\r\n",
        202,
    ),
    "single body past the limit, whole in the first packet": (
        lambda k: post(k, b'{"contact_id": "' + b"a" * 5000 + b'"}'),
        413,
    ),
    "batch body past the limit, whole in the first packet": (
        lambda k: post(k, b"x" * 1_100_000, path="/v1/properties/batch"),
        413,
    ),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_given_an_unusual_request_then_both_paths_answer_alike_and_never_a_5xx(served, name):
    """Given the request, followed on its connection by a read; then both servers write the
    same bytes: the expected status (no 5xx), then the read's answer, or a 400 and a close."""
    make, expected = HEADS[name]
    request = make(served.keys["all"])
    follow = get(served.keys["all"], "/v1/contacts/nobody")
    head_only = (0,) if request.startswith(b"HEAD ") else ()
    answers = both(served, request + follow, 2, head_only)
    assert [status(a) for a in answers][:1] == [expected]
    if expected == 400 and len(answers) == 1:  # refused by the parser: the connection closed
        assert b'"detail":"Invalid HTTP request received."' in answers[0]
        return
    closes = b"\r\nconnection: close\r\n" in answers[0]  # (then the connection closed)
    assert [status(a) for a in answers] == ([expected] if closes else [expected, 404])


def test_given_a_head_request_for_a_contact_then_both_paths_give_the_get_head_without_body(
    served,
):
    key = served.keys["all"]
    sent = get(key, "/v1/contacts/seeded", method="HEAD") + get(key, "/v1/contacts/seeded")
    [head, full] = both(served, sent, 2, head_only=(0,))
    assert status(head) == 200
    assert head.endswith(_HEAD_END) and full.partition(_HEAD_END)[2].startswith(b"{")
    length = re.compile(rb"\r\ncontent-length: \d+\r\n")
    assert length.findall(head) == length.findall(full)


@pytest.mark.parametrize("where", ["request line", "header"])
def test_given_a_request_head_that_never_ends_then_it_gets_431_and_is_closed(served, where):
    """Given a request line or a header that grows without end, sent as fast as the server
    reads; then both servers answer 431 and close once it is past ``MAX_HEAD_BYTES`` (and one
    read), long before the header deadline: neither holds it all in memory until then.
    (uvicorn and httptools hold a head in memory, and join its pieces in a time that grows with
    the square of its size: 70 MB of one header took 150 MB of memory in the 5 s of this
    server's header deadline.)"""
    start = b"GET /v1/contacts/" if where == "request line" else b"GET / HTTP/1.1\r\nX-A: "
    piece = b"a" * 65536
    answers = []
    for port in served.ports.values():
        with connect(port) as sock:
            started = time.monotonic()
            sock.sendall(start)
            with contextlib.suppress(OSError):  # (a reset, once refused)
                for _ in range(64):  # 4 MiB
                    sock.sendall(piece)
            answers += read_stream(sock, 1)
            assert closed(sock)
            assert time.monotonic() - started < 4  # (the header deadline is 5 s)
    assert answers[0] == answers[1] and status(answers[0]) == 431
    assert b'"detail":"Request line and headers larger than 65536 bytes"' in answers[0]


def test_given_a_pipeline_of_heads_near_the_cap_in_pieces_then_all_are_answered(served):
    """Given requests whose heads are each just under ``MAX_HEAD_BYTES``, pipelined and sent in
    small pieces; then every one is answered (the cap counts one head, not the connection)."""
    key = served.keys["all"]
    padding = f"X-Padding: {'p' * (MAX_HEAD_BYTES - 1000)}\r\n"
    sent = b"".join(get(key, "/v1/contacts/seeded", padding) for _ in range(5))
    for port in served.ports.values():
        with connect(port) as sock:
            for offset in range(0, len(sent), 4096):
                sock.sendall(sent[offset : offset + 4096])
            assert [status(a) for a in read_stream(sock, 5)] == [200] * 5


# -- bodies cut short, clients that half-close ---------------------------------------------------


@pytest.mark.parametrize("ending", ["close", "half-close", "idle past the body deadline"])
def test_given_a_body_shorter_than_its_length_then_nothing_is_accepted(served, ending):
    """Given a POST whose body stops 10 bytes short of its Content-Length, with the rest of
    its head and half its body in the first packet; when the client closes, half-closes or
    waits, then neither server accepts it (a 408 at the body deadline, else no answer)."""
    ids = []
    for direct, port in served.ports.items():
        contact_id = f"short-{ending[:4]}-{direct}"
        ids.append(contact_id)
        body = single(contact_id, contact_id)
        request = post(served.keys["all"], body, length=str(len(body) + 10))
        with connect(port) as sock:
            sock.sendall(request)
            if ending == "close":
                continue
            if ending == "half-close":
                sock.shutdown(socket.SHUT_WR)
                assert read_stream(sock, 1) == []  # closed, no answer
            else:
                started = time.monotonic()
                [answer] = read_stream(sock, 1)
                assert status(answer) == 408
                assert time.monotonic() - started < BODY_TIMEOUT_S + 2
    never_stored(served, ids)


@pytest.mark.parametrize(
    "kind", ["single", "read", "pipeline", "pipeline and half a head", "expect 100-continue"]
)
def test_given_a_client_that_half_closes_after_whole_requests_then_its_answers_arrive(served, kind):
    """Given whole requests, then the client's sending side shut down (``shutdown(SHUT_WR)``,
    as ``nc -N`` or a one-shot client does); then both servers answer every whole request, in
    order, and close the connection after the last; every event answered 202 is stored.
    (uvicorn closes the connection at the client's EOF, answering nothing.) Whether the last
    answer says ``connection: close`` depends on whether it was written before the EOF was
    read, so that header is left out of the comparison."""
    key = served.keys["all"]
    ids = [f"half-{kind[:6]}-{n}" for n in range(2)]
    sent = {
        "single": [post(key, single(ids[0], "hc1"))],
        "read": [get(key, "/v1/contacts/seeded")],
        "pipeline": [
            post(key, single(ids[0], "hc2")),
            get(key, "/v1/contacts/seeded"),
            post(key, batch(ids[1]), "/v1/properties/batch"),
        ],
        "pipeline and half a head": [
            post(key, single(ids[0], "hc3")),
            get(key, "/v1/contacts/seeded"),
            b"GET /v1/contacts/se",
        ],
        "expect 100-continue": [post(key, single(ids[0], "hc4"), head="Expect: 100-continue\r\n")],
    }[kind]
    whole = len([r for r in sent if r.endswith((_HEAD_END, b"}"))])
    found = {}
    for direct, port in served.ports.items():
        answers = exchange(port, b"".join(sent), whole, shut=True)
        found[direct] = [a.replace(b"connection: close\r\n", b"") for a in answers]
    assert found[True] == found[False]
    finals = [status(a) for a in found[True] if status(a) != 100]
    assert len(finals) == whole and 500 not in finals
    all_stored(served, [i for i in ids if any(i.encode() in r for r in sent)])


@pytest.mark.parametrize("closing", ["read", "post"])
def test_given_requests_after_a_closing_one_in_the_same_packet_then_only_it_is_answered(
    served, closing
):
    """Given a pipeline in one packet whose second request says ``Connection: close``; then
    both servers answer the first two alike, and close. (What follows in the packet is not
    answered; the direct path may have run it where uvicorn's did not, so an event there may be
    stored unanswered, as when a client goes away: its retry with the same event_id is exact.)"""
    key = served.keys["all"]
    close = "Connection: close\r\n"
    second = {
        "read": get(key, "/v1/contacts/seeded", close),
        "post": post(key, single("after-close-1", "ac1"), head=close),
    }[closing]
    sent = [
        post(key, single("after-close-0", "ac0")),
        second,
        post(key, single("after-close-2", "ac2")),
        get(key, "/v1/contacts/seeded"),
    ]
    answers = both(served, b"".join(sent), len(sent))
    assert [status(a) for a in answers] == [202, 200 if closing == "read" else 202]
    all_stored(served, ["after-close-0"] + (["after-close-1"] if closing == "post" else []))


def test_given_garbage_after_whole_requests_then_the_400_comes_last_after_answers_in_order(
    served,
):
    """Given whole requests then bytes the parser refuses, on one connection; then each server
    writes a prefix of the whole requests' answers, in order, then the 400, and closes. (The
    uvicorn path drops the answers still in flight when the 400 goes out; the direct path has
    written the reads it answered at once before it: the one way the two streams may differ.)"""
    key = served.keys["all"]
    sent = [get(key, "/v1/contacts/seeded"), post(key, single("garbage-1", "g1"))]
    expected = [200, 202]
    for port in served.ports.values():
        answers = exchange(port, b"".join(sent) + b"\x00\x01garbage\r\n\r\n", 3)
        statuses = [status(a) for a in answers]
        assert statuses[-1] == 400 and statuses[:-1] == expected[: len(statuses) - 1]
    # An event answered 202 would be stored; one not answered may be (a retry is exact).
    if 202 in statuses:
        all_stored(served, ["garbage-1"])


# -- requests that ask to switch protocols -------------------------------------------------------

# What `curl --http2` adds to a request to a plain-HTTP URL, and a WebSocket handshake's
# headers: no route takes either, so the answer is in HTTP/1.1, as if neither had been asked
# (RFC 9110 §7.8).
UPGRADES = {
    "h2c": "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "websocket": "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
}
PROMPT_S = 2.0  # well inside the keep-alive (5 s): an answer that waited for it is too late
MALFORMED = {
    "bad json": b'{"contact_id": ',
    "not an event": b'{"contact_id": 1}',
    "empty": b"",
    "past the limit": b"{" + b" " * 1200 + b"}",
}


def promptly(served: _Served, sent: bytes, count: int) -> list[bytes]:
    """``both``, each server's answers (and its close, after ``connection: close``) within
    ``PROMPT_S``."""
    started = time.monotonic()
    answers = both(served, sent, count)
    assert time.monotonic() - started < 2 * PROMPT_S
    return answers


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("upgrade", sorted(UPGRADES))
def test_given_a_post_asking_to_upgrade_then_it_and_what_follows_are_answered_in_http_1_1(
    served, upgrade, framing
):
    """Given a POST of a valid event that asks to upgrade (as `curl --http2 -d @event.json`
    does to a plain-HTTP URL), with a read and another POST pipelined behind it in the same
    packet; then both servers answer all three at once, in order, with the bytes the same
    requests get without the upgrade headers (202, 200, 202), and both events are stored."""
    key, tag = served.keys["all"], f"upgrade-{upgrade}-{framing}"

    send = post if framing == "content-length" else chunked

    def requests(head: str) -> bytes:
        return (
            send(key, single(f"{tag}-0", f"{tag}-0"), head=head)
            + get(key, "/v1/contacts/seeded")
            + post(key, single(f"{tag}-1", f"{tag}-1"))
        )

    answers = promptly(served, requests(UPGRADES[upgrade]), 3)
    assert [status(a) for a in answers] == [202, 200, 202]
    all_stored(served, [f"{tag}-0", f"{tag}-1"])
    assert answers == both(served, requests(""), 3)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("upgrade", sorted(UPGRADES))
def test_given_a_closing_post_asking_to_upgrade_then_it_is_answered_and_the_connection_closed(
    served, upgrade, framing
):
    """Given a POST that asks to upgrade and says ``Connection: close``, then a read; then
    both servers answer the POST (202, ``connection: close``) and close at once, as without
    the upgrade headers, and its event is stored."""
    key, tag = served.keys["all"], f"closing-upgrade-{upgrade}-{framing}"
    send = post if framing == "content-length" else chunked
    head = UPGRADES[upgrade] + "Connection: close\r\n"
    follow = get(key, "/v1/contacts/seeded")
    answers = promptly(served, send(key, single(tag, tag), head=head) + follow, 2)
    assert [status(a) for a in answers] == [202]
    assert b"\r\nconnection: close\r\n" in answers[0]
    all_stored(served, [tag])


@pytest.mark.parametrize("body", sorted(MALFORMED))
@pytest.mark.parametrize("upgrade", sorted(UPGRADES))
def test_given_a_malformed_body_asking_to_upgrade_then_it_gets_the_4xx_it_gets_without(
    served, upgrade, body
):
    """Given a POST asking to upgrade whose body is malformed, then a read, on one connection;
    then both servers answer at once with the bytes they give without the upgrade headers: the
    body's 4xx (not a "body missing" for a body that was sent), then the read's answer."""
    key = served.keys["all"]
    follow = get(key, "/v1/contacts/seeded")
    answers = promptly(served, post(key, MALFORMED[body], head=UPGRADES[upgrade]) + follow, 2)
    assert 400 <= status(answers[0]) < 500
    assert answers == both(served, post(key, MALFORMED[body]) + follow, 2)


@pytest.mark.parametrize("upgrade", sorted(UPGRADES))
def test_given_reads_asking_to_upgrade_then_they_are_answered_as_without(served, upgrade):
    """Given two reads without a body that ask to upgrade, then a plain one, pipelined; then both
    servers answer the three at once, with the bytes they give without the upgrade headers."""
    key = served.keys["all"]

    def requests(head: str) -> bytes:
        return (
            get(key, "/v1/contacts/seeded", head)
            + get(key, "/v1/contacts/nobody", head)
            + get(key, "/v1/contacts/seeded")
        )

    answers = promptly(served, requests(UPGRADES[upgrade]), 3)
    assert [status(a) for a in answers] == [200, 404, 200]
    assert answers == both(served, requests(""), 3)


def test_given_a_connect_then_it_is_answered_and_the_connection_closed_at_once(served):
    """Given a CONNECT to a path, then bytes (a tunnel's, to its client) and a read; then both
    servers answer the CONNECT (405: no route takes it) with ``connection: close`` and close
    at once, rather than leave the connection to the keep-alive."""
    key = served.keys["all"]
    connect = b"CONNECT /v1/properties HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
    answers = promptly(served, connect + b"abc" + get(key, "/v1/contacts/seeded"), 2)
    assert [status(a) for a in answers] == [405]
    assert b"\r\nconnection: close\r\n" in answers[0]


@pytest.mark.parametrize("closing", ["HTTP/1.0", "Connection: close"])
def test_given_an_answer_before_the_body_then_the_client_sends_the_rest_and_reads_it(
    served, closing
):
    """A request refused on its head (a wrong key: 401) on a connection that then closes, its
    body still coming in pieces: the client's sends do not meet a reset (the connection
    lingers, dropping them), it reads the whole answer, then the connection closes."""
    body = single("linger", "linger") + b" " * 2000
    version, head = (
        ("HTTP/1.0", "") if closing == "HTTP/1.0" else ("HTTP/1.1", "Connection: close\r\n")
    )
    request = post("phk_nope", body, version=version, head=head)
    cut = request.index(b"\r\n\r\n") + 4 + 100
    for port in served.ports.values():
        with connect(port) as sock:
            sock.sendall(request[:cut])
            time.sleep(0.1)  # the 401 is written, and the connection would close
            for start in range(cut, len(request), 700):
                sock.sendall(request[start : start + 700])
                time.sleep(0.05)
            answers = read_stream(sock, 1)
            assert status(answers[0]) == 401
            assert b"\r\nconnection: close\r\n" in answers[0]
            assert closed(sock)


def test_given_the_app_then_no_route_takes_a_websocket_so_ignoring_upgrades_loses_none(served):
    """The protocol answers every upgrade request in HTTP/1.1 (api/protocol.py): a WebSocket
    route would need it to hand such requests to uvicorn's WebSocket protocol again."""
    routes, found = list(served.app._starlette.routes), []
    while routes:
        route = routes.pop()
        routes += getattr(route, "routes", [])
        if isinstance(route, WebSocketRoute):
            found.append(route.path)
    assert found == []


# -- random pipelines ----------------------------------------------------------------------------

# Each kind: (request from the key and a fresh contact id, answers it writes, is it a HEAD).
KINDS: dict[str, Callable[[str, str], bytes]] = {
    "post": lambda k, c: post(k, single(c, c)),
    "batch": lambda k, c: post(k, batch(c, c + "-2"), "/v1/properties/batch"),
    "post, expect": lambda k, c: post(k, single(c, c), head="Expect: 100-continue\r\n"),
    "post, chunked": lambda k, c: chunked(k, single(c, c)),
    "post, absolute form": lambda k, c: post(k, single(c, c), path="http://h/v1/properties"),
    "post, identity coding": lambda k, c: post(
        k, single(c, c), head="Content-Encoding: identity\r\n"
    ),
    "post, lowercase bearer": lambda k, c: post(k, single(c, c)).replace(b"Bearer", b"bearer"),
    "post, bad json": lambda k, c: post(k, b'{"contact_id": '),
    "post, h2c upgrade": lambda k, c: post(k, single(c, c), head=UPGRADES["h2c"]),
    "post, chunked, websocket upgrade": lambda k, c: chunked(
        k, single(c, c), head=UPGRADES["websocket"]
    ),
    "post, no key": lambda k, c: post("phk_nope", single(c, c)),
    "post, too large": lambda k, c: post(k, b"{" + b" " * 1200 + b"}"),
    "post, text/plain": lambda k, c: post(k, single(c, c)).replace(b"application/json", b"text/a"),
    "read": lambda k, c: get(k, "/v1/contacts/seeded"),
    "read, nobody": lambda k, c: get(k, "/v1/contacts/nobody"),
    "read, query": lambda k, c: get(k, "/v1/contacts/seeded?a=b"),
    "read, escaped": lambda k, c: get(k, "/v1/contacts/seed%65d"),
    "read, history": lambda k, c: get(k, "/v1/contacts/seeded/history"),
    "read, no key": lambda k, c: get(None, "/v1/contacts/seeded"),
    "read, h2c upgrade": lambda k, c: get(k, "/v1/contacts/seeded", UPGRADES["h2c"]),
    "read, head": lambda k, c: get(k, "/v1/contacts/seeded", method="HEAD"),
    "read, with a body": lambda k, c: (
        get(k, "/v1/contacts/seeded", "Content-Length: 2\r\n") + b"{}"
    ),
}
_LAST = {
    "none": lambda r: r,
    "connection: close": lambda r: r.replace(b"\r\n", b"\r\nConnection: close\r\n", 1),
    "HTTP/1.0": lambda r: r.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1),
}


@hypothesis.settings(max_examples=examples(60), deadline=None)
@hypothesis.given(
    kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=8),
    last=st.sampled_from(sorted(_LAST)),
    cuts=st.lists(st.integers(1, 400), max_size=3),
    serial=st.booleans(),
    shut=st.booleans(),
)
def test_given_a_random_pipeline_then_both_paths_write_the_same_stream(
    served, kinds, last, cuts, serial, shut
):
    """Any sequence of these requests, the last closing the connection (or not), pipelined in
    one piece or cut into packets at random places, or sent one by one (each after the answer
    before it: the plain ones then take the direct path), with or without a half-close after
    it: both servers write the same answers in order (no 5xx), and the events answered 202 are
    stored."""
    key, tag = served.keys["all"], f"rnd{time.monotonic_ns()}"
    sent = [KINDS[kind](key, f"{tag}-{n}") for n, kind in enumerate(kinds)]
    sent[-1] = _LAST[last](sent[-1])
    found = {}
    for direct, port in served.ports.items():
        data = b"".join(sent)
        head_only = tuple(n for n, kind in enumerate(kinds) if kind == "read, head")
        with connect(port) as sock:
            answers = []
            if serial:
                for n, request in enumerate(sent[:-1]):
                    sock.sendall(request)
                    answers += read_stream(sock, 1, (0,) if n in head_only else ())
                data, head_only = sent[-1], (0,) if len(sent) - 1 in head_only else ()
            start = 0
            for cut in sorted(cuts):
                sock.sendall(data[start:cut])
                start = max(start, cut)
                time.sleep(0.01)
            sock.sendall(data[start:])
            if shut:
                with contextlib.suppress(OSError):  # (the server may have closed already)
                    sock.shutdown(socket.SHUT_WR)
            answers += read_stream(sock, 1 if serial else len(sent), head_only)
            found[direct] = [_DATE.sub(b"\r\ndate: -\r\n", a) for a in answers]
            if last != "none" or shut:
                assert closed(sock)
        if shut:  # (whether the last answer says connection: close is a matter of timing)
            found[direct] = [a.replace(b"connection: close\r\n", b"") for a in found[direct]]
    assert found[True] == found[False]
    finals = [status(a) for a in found[True] if status(a) != 100]
    assert len(finals) == len(sent) and max(finals) < 500
    accepted = [
        f"{tag}-{n}" for n, code in enumerate(finals) if code == 202 and kinds[n] != "post, no key"
    ]
    all_stored(served, accepted)
