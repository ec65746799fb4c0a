"""Keep-alive connections to destinations (destinations/sender.py, SPEC 2.10): calls reuse a
few connections per destination; a connection the receiver closed is replaced, and the call on
it is sent again; every new connection is made only after the name is resolved and checked
again; and the delivery loop is woken by the applier's commits rather than its poll."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from profilehook.applier import Applier
from profilehook.destinations import registry
from profilehook.destinations.addresses import parse_url
from profilehook.destinations.delivery import Deliverer
from profilehook.destinations.sender import Senders
from profilehook.destinations.signing import new_secret, secret_key, signed_headers
from profilehook.events import Event
from profilehook.metrics import Metrics
from profilehook.queues.memory import MemoryQueue
from profilehook.settings import Settings
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import S
from tests.webhook_receiver import receiving


def counting_resolver(calls: list[str]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    return resolve


async def test_given_a_keep_alive_receiver_then_calls_share_one_connection() -> None:
    secret = new_secret()
    resolved: list[str] = []
    async with receiving(secret) as receiver:
        receiver.calls_per_connection = 1_000
        senders = Senders(allow_private=True, resolver=counting_resolver(resolved))
        target = parse_url(f"http://hooks.example.com:{receiver.port}/in", allow_private=True)
        for n in range(20):
            body = b'{"n": %d}' % n
            headers = signed_headers(secret_key(secret), f"chg_{n}", int(time.time()), body)
            outcome = await senders.post(target, body, headers, timeout_s=5)
            assert outcome.delivered, outcome
        senders.close()
    assert len(receiver.received) == 20
    assert all(call.verified is not None for call in receiver.received)
    assert (senders.connections_made, receiver.connections, len(resolved)) == (1, 1, 1)


async def test_given_a_receiver_that_closes_connections_then_every_call_still_arrives() -> None:
    # Given a receiver that closes each connection after 3 calls, without saying so
    resolved: list[str] = []
    async with receiving() as receiver:
        receiver.calls_per_connection = 3
        senders = Senders(allow_private=True, resolver=counting_resolver(resolved))
        target = parse_url(f"http://hooks.example.com:{receiver.port}/in", allow_private=True)
        # When 10 calls are made one after the other
        outcomes = [
            await senders.post(target, b"{}", {"webhook-id": f"chg_{n}"}, timeout_s=5)
            for n in range(10)
        ]
        senders.close()
    # Then all arrive, and each new connection was preceded by a fresh resolution and check
    assert all(o.delivered for o in outcomes), outcomes
    ids = [call.headers["webhook-id"] for call in receiver.received]
    assert sorted(set(ids)) == sorted(f"chg_{n}" for n in range(10))
    assert receiver.connections >= 4
    assert len(resolved) == senders.connections_made >= receiver.connections


async def test_given_a_name_that_rebinds_then_the_next_new_connection_is_refused() -> None:
    # Given a destination name that resolves to loopback, then to a private address
    answers = iter([["127.0.0.1"], ["10.0.0.7"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    async with receiving() as receiver:
        senders = Senders(allow_private=False, resolver=rebinding)
        target = parse_url(f"https://hooks.example.com:{receiver.port}/in", allow_private=False)
        # When two calls are made (no connection was made for the first: each needs one)
        first = await senders.post(target, b"{}", {}, timeout_s=5)
        second = await senders.post(target, b"{}", {}, timeout_s=5)
        senders.close()
    # Then each was refused before sending, on what the name resolved to at that moment
    assert first.error is not None and "loopback" in first.error
    assert second.error is not None and "10.0.0.7" in second.error
    assert receiver.received == []


async def test_given_the_applier_commits_then_the_delivery_loop_sends_without_its_poll(
    tmp_path: Path,
) -> None:
    async with receiving() as receiver:
        receiver.calls_per_connection = 1_000
        store = SqliteStore(tmp_path / "p.sqlite3")
        await store.open()
        try:
            made, receiver.secret = await registry.create(
                store, "acme", {"url": f"http://127.0.0.1:{receiver.port}/in"}, allow_private=True
            )
            queue = MemoryQueue()
            applier = Applier(queue, store, Metrics(), 100)
            # Given a delivery loop that would look for changes only once a minute
            deliverer = Deliverer(store, Settings(destinations_allow_private=True), poll_s=60)
            applier.on_applied = deliverer.changes_committed
            stop = asyncio.Event()
            delivering = asyncio.create_task(deliverer.run(stop))
            await asyncio.sleep(0.2)  # its first pass is done: it waits
            # When the applier applies an event that changes a profile
            event = Event(
                workspace="acme", event_id="e1", contact_id="a", ts_us=100 * S, properties={"n": 1}
            )
            await queue.publish([event])
            sent_s = time.monotonic()
            assert await applier.step() == 1
            # Then its change arrives, verified, well before the poll would have found it
            async with asyncio.timeout(10):
                while not receiver.received:
                    await asyncio.sleep(0.005)
            assert time.monotonic() - sent_s < 5
            assert receiver.received[0].verified is not None
            stop.set()
            await delivering
            delivered = await store.list_deliveries(made.destination_id, "delivered", 10)
            assert len(delivered) == 1
        finally:
            await store.close()


@pytest.mark.parametrize(
    ("answer", "status", "reused"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, True),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", 200, True),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
            202,
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", 200, False),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", 200, False),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            200,
            False,
        ),
        (b"HTTP/1.1 500 Oops\r\ncontent-length: 2\r\n\r\nno", 500, True),
    ],
)
async def test_given_an_answer_then_its_status_counts_and_the_connection_is_reused_only_if_safe(
    answer: bytes, status: int, reused: bool
) -> None:
    """Only an answer whose end is known (a length, or none for 204) and that keeps the
    connection open leaves it for the next call."""
    ended: list[asyncio.Event] = []

    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = asyncio.Event()
        ended.append(done)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(answering, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    senders = Senders(allow_private=True)
    target = parse_url(f"http://127.0.0.1:{port}/in", allow_private=True)
    try:
        outcomes = [await senders.post(target, b"{}", {}, timeout_s=5) for _ in range(2)]
    finally:
        senders.close()
        server.close()
        async with asyncio.timeout(5):  # the server's side sees the close and ends
            for each in ended:
                await each.wait()
    assert [o.status_code for o in outcomes] == [status, status]
    assert senders.connections_made == (1 if reused else 2)


async def test_given_a_reused_connection_reset_at_the_next_call_then_it_is_sent_on_a_new_one() -> (
    None
):
    # Given a receiver that answers a connection's first call and resets it at the second
    # (as a server that dropped the idle connection does), unanswered
    async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                calls += 1
                if calls == 2:
                    writer.transport.abort()  # an RST, no answer
                    return
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(resetting, "127.0.0.1", 0)
    target = parse_url(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", True)
    senders = Senders(allow_private=True)
    try:
        # When three calls are made one after the other
        outcomes = [await senders.post(target, b"{}", {}, timeout_s=5) for _ in range(3)]
    finally:
        senders.close()
        server.close()
    # Then each is delivered: the reset one went again on a new connection, with no failure
    assert [o.status_code for o in outcomes] == [204, 204, 204], outcomes
    assert senders.connections_made == 3  # each connection takes one call and resets the next
