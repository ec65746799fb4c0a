"""profilehook's HTTP protocol (api/protocol.py): idle keep-alive connections closed by the
sweep, pipelined requests answered in order, and each response written in one piece."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx2 as httpx
import msgspec
import pytest

from profilehook.api.protocol import _EndOfPass, _OneWritePerPass
from profilehook.errors import ConfigurationError
from profilehook.settings import Settings
from tests.support import ServerProcess, _in_ci, create_key, responses, wait_until

KEEP_ALIVE_S = 1.0
EVENT = msgspec.json.encode(
    {"contact_id": "c", "event_name": "e", "timestamp": 1, "user_properties": {"a": 1}}
)


class _Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


async def test_writes_of_one_pass_leave_as_one_write_at_its_end():
    transport = _Transport()
    connection = _OneWritePerPass(transport, _EndOfPass(asyncio.get_running_loop()))  # type: ignore[arg-type]
    connection.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
    connection.write(b"{}")
    assert transport.calls == []  # held until the pass ends
    await asyncio.sleep(0)
    assert transport.calls == [("write", b"HTTP/1.1 202 Accepted\r\n\r\n{}")]
    connection.write(b"next")
    await asyncio.sleep(0)
    assert transport.calls[1:] == [("write", b"next")]


async def test_a_whole_answer_written_now_leaves_at_once_after_what_is_held():
    transport = _Transport()
    connection = _OneWritePerPass(transport, _EndOfPass(asyncio.get_running_loop()))  # type: ignore[arg-type]
    connection.write_now(b"first")
    assert transport.calls == [("write", b"first")]  # not held to the end of the pass
    connection.write(b"held")
    connection.write_now(b"second")
    assert transport.calls[1:] == [("write", b"heldsecond")]  # in order, in one write
    await asyncio.sleep(0)
    assert len(transport.calls) == 2  # nothing left for the pass's end
    transport.closing = True
    connection.write_now(b"gone")
    assert len(transport.calls) == 2


async def test_closing_writes_what_is_held_first_and_other_calls_reach_the_transport():
    loop = asyncio.get_running_loop()
    end_of_pass = _EndOfPass(loop)
    first, second = _Transport(), _Transport()
    a = _OneWritePerPass(first, end_of_pass)  # type: ignore[arg-type]
    b = _OneWritePerPass(second, end_of_pass)  # type: ignore[arg-type]
    a.write(b"answer")
    b.write(b"other")
    a.close()
    assert first.calls == [("write", b"answer"), ("close", b"")]
    assert a.is_closing() and a.get_extra_info("peername") == "extra peername"
    await asyncio.sleep(0)
    assert first.calls == [("write", b"answer"), ("close", b"")]  # not written twice
    assert second.calls == [("write", b"other")]


# -- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    data_dir = tmp_path_factory.mktemp("protocol") / "data"
    key = create_key(data_dir)["key"]
    found = ServerProcess(data_dir, extra_env={"PROFILEHOOK_KEEP_ALIVE_S": str(KEEP_ALIVE_S)})
    found.start()
    try:
        yield found, key
    finally:
        found.stop()


def post(key: str, body: bytes = EVENT) -> bytes:
    return (
        f"POST /v1/properties HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.slow
def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive(server):
    server, key = server
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post(key))
        [answer] = responses(sock, 1)
        assert answer.startswith(b"HTTP/1.1 202 "), answer
        idle_from = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server, with nothing more sent
        idle_s = time.monotonic() - idle_from
    # The sweep runs every keep-alive / 4: the deadline holds to within that.
    assert KEEP_ALIVE_S - 0.05 <= idle_s < KEEP_ALIVE_S * 1.25 + 0.5


@pytest.mark.slow
def test_a_connection_in_use_is_kept_past_the_keep_alive(server):
    server, key = server
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 2.5 * KEEP_ALIVE_S:
            sock.sendall(post(key))
            [answer] = responses(sock, 1)
            assert answer.startswith(b"HTTP/1.1 202 "), answer
            sent += 1
            time.sleep(KEEP_ALIVE_S / 3)
    assert sent >= 6


@pytest.mark.slow
def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    server, key = server
    bodies = [
        msgspec.json.encode(
            {"contact_id": f"c{i}", "event_name": "e", "timestamp": 1, "user_properties": {}}
        )
        for i in range(3)
    ]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post(key, bodies[0]) + post(key, b"{") + post(key, bodies[2]))
        answers = responses(sock, 3)
    statuses = [answer.split(b" ", 2)[1] for answer in answers]
    assert statuses == [b"202", b"422", b"202"]
    ids = [msgspec.json.decode(a.partition(b"\r\n\r\n")[2]).get("event_id") for a in answers]
    assert ids[0] and ids[2] and ids[0] != ids[2]


@pytest.mark.parametrize(
    ("name", "value"),
    [("keep_alive_s", -1.0), ("header_timeout_s", 0.0), ("body_timeout_s", -2.0)],
)
def test_a_deadline_that_cannot_hold_is_refused_with_its_variable_named(name: str, value: float):
    with pytest.raises(ConfigurationError, match=f"PROFILEHOOK_{name.upper()} must be"):
        Settings(**{name: value})


async def test_writes_to_a_connection_whose_peer_is_gone_are_dropped_and_others_still_leave():
    """uvloop raises on a write to a closed transport: one reset client must not strand the
    answers of the others flushed in the same pass."""
    end_of_pass = _EndOfPass(asyncio.get_running_loop())
    gone, alive, broken = _Transport(), _Transport(), _Transport()
    gone.closing = True

    def refuse(data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    broken.write = refuse  # type: ignore[method-assign]
    connections = [_OneWritePerPass(t, end_of_pass) for t in (broken, gone, alive)]  # type: ignore[arg-type]
    for connection in connections:
        connection.write(b"answer")
    await asyncio.sleep(0)
    assert alive.calls == [("write", b"answer")]
    assert gone.calls == []
    connections[2].write(b"next")  # the connection after a failure still flushes
    await asyncio.sleep(0)
    assert alive.calls[1:] == [("write", b"next")]


async def test_a_reused_buffer_is_written_as_it_was_when_written():
    transport = _Transport()
    connection = _OneWritePerPass(transport, _EndOfPass(asyncio.get_running_loop()))  # type: ignore[arg-type]
    buffer = bytearray(b"first")
    connection.write(buffer)
    buffer[:] = b"XXXXX"
    connection.writelines([b"-", memoryview(b"second")])
    await asyncio.sleep(0)
    assert transport.calls == [("write", b"first-second")]


@pytest.mark.slow
def test_a_pipelined_head_begun_before_the_answer_is_under_the_head_deadline_not_keep_alive(
    server,
):
    server, key = server
    second = post(key)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post(key) + second[:20])  # the next request has begun
        [first] = responses(sock, 1)
        time.sleep(KEEP_ALIVE_S * 1.6)  # past the keep-alive, well within the head deadline
        sock.sendall(second[20:])
        [answer] = responses(sock, 1)
    assert first.startswith(b"HTTP/1.1 202 ") and answer.startswith(b"HTTP/1.1 202 ")


@pytest.mark.slow
def test_a_client_still_sending_a_refused_body_is_not_cut_off_by_the_keep_alive(server):
    server, key = server
    body = b"x" * 600
    head = (
        "POST /v1/properties HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        [refused] = responses(sock, 1)
        for start in range(0, len(body), 100):  # 1.8 keep-alives of uploading
            sock.sendall(body[start : start + 100])
            time.sleep(KEEP_ALIVE_S * 0.3)
        sock.sendall(post(key))
        [answer] = responses(sock, 1)
    assert refused.startswith(b"HTTP/1.1 401 ") and answer.startswith(b"HTTP/1.1 202 ")


# -- requests that ask to switch protocols ------------------------------------------------------

H2C = (
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
)


def applied(http: httpx.Client, event_id: str) -> bool:
    r = http.get(f"/v1/events/{event_id}")
    return r.status_code == 200 and r.json()["status"] == "applied"


@pytest.mark.slow
def test_requests_pipelined_after_an_h2c_upgrade_post_are_answered_at_once_by_serve(server):
    """Given `serve`, and on one connection in one packet a POST asking to upgrade to h2c, a
    plain POST and a read asking the same; then all three are answered in order before the
    keep-alive could close the connection, and both events are applied."""
    server, key = server
    bodies = [
        msgspec.json.encode(
            {"contact_id": f"h2c-{n}", "event_name": "e", "timestamp": 1, "event_id": f"h2c-{n}"}
            | {"user_properties": {"n": n}}
        )
        for n in range(2)
    ]
    read = f"GET /healthz HTTP/1.1\r\nHost: x\r\n{H2C}\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        asks = post(key, bodies[0]).replace(b"Host: x\r\n", b"Host: x\r\n" + H2C.encode())
        sock.sendall(asks + post(key, bodies[1]) + read)
        answers = responses(sock, 3)
        assert time.monotonic() - started < KEEP_ALIVE_S
    assert [answer.split(b" ", 2)[1] for answer in answers] == [b"202", b"202", b"200"]
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        wait_until(lambda: applied(http, "h2c-0") and applied(http, "h2c-1"))


@pytest.mark.slow
def test_curl_asking_for_http2_on_a_plain_url_gets_its_event_stored_over_http_1_1(server, tmp_path):
    """Given `serve` on plain HTTP, when `curl --http2 -d @event.json` posts an event (curl then
    asks to upgrade to h2c), then curl gets a 202 over HTTP/1.1 and the event is applied."""
    curl = shutil.which("curl")
    if curl is None:
        if _in_ci():
            pytest.fail("curl is not installed; CI must have it")
        pytest.skip("curl is not installed")
    server, key = server
    event = tmp_path / "event.json"
    event.write_bytes(
        msgspec.json.encode(
            {
                "contact_id": "curl-h2c",
                "event_name": "e",
                "timestamp": 1,
                "event_id": "curl-h2c-1",
                "user_properties": {"a": 1},
            }
        )
    )
    auth = {"Authorization": f"Bearer {key}"}
    command = [curl, "--silent", "--show-error", "--verbose", "--http2", "--max-time", "10"]
    command += ["-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json"]
    command += ["-d", f"@{event}", "--write-out", "\n%{http_code} %{http_version}"]
    run = subprocess.run(
        [*command, f"{server.base_url}/v1/properties"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert "> Upgrade: h2c" in run.stderr  # (else this curl did not ask, and proves nothing)
    body, _, written = run.stdout.rpartition("\n")
    assert written == "202 1.1", run.stdout
    assert msgspec.json.decode(body)["event_id"] == "curl-h2c-1"
    with httpx.Client(base_url=server.base_url, headers=auth) as http:
        wait_until(lambda: applied(http, "curl-h2c-1"))


# -- ids with control characters ------------------------------------------------------------

# One of each control-character class an id may hold (NUL is refused at ingestion): C0 (tab,
# line feed, carriage return and the others), DEL, C1 (NEL among them), and Unicode's line
# and paragraph separators.
CONTROL_CHARACTERS = {
    "soh": "\x01",
    "tab": "\t",
    "lf": "\n",
    "cr": "\r",
    "crlf": "\r\n",
    "us": "\x1f",
    "del": "\x7f",
    "c1-pad": "\x80",
    "nel": "\x85",
    "c1-apc": "\x9f",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
}


@pytest.mark.slow
@pytest.mark.parametrize("char", CONTROL_CHARACTERS.values(), ids=CONTROL_CHARACTERS.keys())
def test_an_id_with_a_control_character_is_readable_wherever_it_is_in_the_id(server, char):
    """Given an event whose contact id and event id hold a control character at the start,
    inside and at the end, when it is accepted, then the contact, its history and the event
    are readable over HTTP at the percent-encoded id (anything accepted must be readable)."""
    server, key = server
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base_url, headers=auth, timeout=10) as http:
        for n, (contact_id, event_id) in enumerate(
            [(f"{char}c", f"{char}e"), (f"c{char}id", f"e{char}id"), (f"c{char}", f"e{char}")]
        ):
            event = {
                "contact_id": contact_id,
                "event_name": "update",
                "timestamp": 1,
                "event_id": event_id,
                "user_properties": {"n": n},
            }
            r = http.post("/v1/properties", json=event)
            assert r.status_code == 202, r.text
            event_path = f"/v1/events/{quote(event_id, safe='')}"
            status = wait_until(
                lambda path=event_path: (
                    (r := http.get(path)).status_code == 200
                    and r.json()["status"] == "applied"
                    and r.json()
                )
            )
            assert status["event_id"] == event_id and status["contact_id"] == contact_id
            contact = http.get(f"/v1/contacts/{quote(contact_id, safe='')}")
            assert contact.status_code == 200, contact.text
            assert contact.json()["contact_id"] == contact_id
            history = http.get(f"/v1/contacts/{quote(contact_id, safe='')}/history")
            assert history.status_code == 200, history.text
            assert [e["event_id"] for e in history.json()["events"]] == [event_id]
