"""The durable log's contract: every queue backend passes this one suite.

Each test runs once per backend (ids ``memory``, ``sqlite``). A new backend joins by adding one
fixture ``<name>_queue_backend`` and one ``pytest.param`` to ``backend`` (as litestar does for its
channel backends); NATS JetStream will add ``nats`` and skip locally when the server is absent.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from profilehook import plain_batch, plain_segment_batch
from profilehook.errors import ConfigurationError
from profilehook.events import Event, encode_event, encode_events
from profilehook.plain_batch import PlainBatch
from profilehook.plain_segment_batch import PlainSegmentBatch
from profilehook.queues.base import HandsOverAcknowledgements, Queue
from profilehook.queues.memory import MemoryQueue
from profilehook.queues.sqlite import SCHEMA_VERSION, SqliteQueue
from profilehook.sources import native, segment
from profilehook.sqlite_db import MAX_RECORDS_PER_ROW
from tests.support import NATS_URL, SHORT_ACK_WAIT_S, event, require_server

NO_WAIT_S = 0.0


@dataclass
class QueueBackend:
    """The open queue, and a way to restart its consumer as a crash and a new process would."""

    name: str
    queue: Queue
    _restart: Callable[[Queue], Awaitable[Queue]]
    redelivery_wait_s: float = NO_WAIT_S  # how long a restarted consumer waits for redelivery

    async def restart(self) -> Queue:
        """Drop the consumer without acknowledging anything, then open the log again."""
        self.queue = await self._restart(self.queue)
        return self.queue


@pytest.fixture
async def memory_queue_backend() -> AsyncIterator[QueueBackend]:
    async def restart(queue: Queue) -> Queue:
        assert isinstance(queue, MemoryQueue)
        queue.redeliver_unacked()  # the log lives in this process: only the consumer restarts
        return queue

    queue = MemoryQueue()
    await queue.open()
    backend = QueueBackend("memory", queue, restart)
    yield backend
    await backend.queue.close()


@pytest.fixture
async def sqlite_queue_backend(tmp_path: Path) -> AsyncIterator[QueueBackend]:
    path = tmp_path / "queue.sqlite3"

    async def restart(queue: Queue) -> Queue:
        await queue.close()
        reopened = SqliteQueue(path)
        await reopened.open()
        return reopened

    queue = SqliteQueue(path)
    await queue.open()
    backend = QueueBackend("sqlite", queue, restart)
    yield backend
    await backend.queue.close()


@pytest.fixture
async def nats_queue_backend() -> AsyncIterator[QueueBackend]:
    require_server(NATS_URL, 4222)
    from profilehook.queues.nats import NatsQueue

    url = f"{NATS_URL}?stream=T{uuid.uuid4().hex[:12].upper()}&ack_wait_s={SHORT_ACK_WAIT_S}"

    async def restart(queue: Queue) -> Queue:
        await queue.close()  # no ack: JetStream redelivers after the consumer's first backoff
        reopened = NatsQueue(url)
        await reopened.open()
        return reopened

    queue = NatsQueue(url)
    await queue.open()
    backend = QueueBackend("nats", queue, restart, redelivery_wait_s=8.0)
    yield backend
    await backend.queue._js.delete_stream(backend.queue.stream)  # type: ignore[attr-defined]
    await backend.queue.close()


@pytest.fixture(
    params=[
        pytest.param("memory_queue_backend", id="memory"),
        pytest.param("sqlite_queue_backend", id="sqlite"),
        pytest.param("nats_queue_backend", id="nats"),
    ]
)
def backend(request: pytest.FixtureRequest) -> QueueBackend:
    found: QueueBackend = request.getfixturevalue(request.param)
    return found


def ids(events: Any) -> list[str]:
    return [getattr(e, "event", e).event_id for e in events]


def numbered(count: int, prefix: str = "e", workspace: str = "acme") -> list[Event]:
    return [
        event(event_id=f"{prefix}{i:03d}", ts_us=i + 1, workspace=workspace, n=i)
        for i in range(count)
    ]


# -- publish and fetch ---------------------------------------------------------------------------


async def test_given_published_events_when_fetched_then_they_come_in_log_order(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    first, second = numbered(3, "a"), numbered(2, "b")
    await queue.publish(first)
    await queue.publish(second)

    deliveries = await queue.fetch(10, NO_WAIT_S)

    assert [d.event for d in deliveries] == first + second


async def test_given_more_events_than_max_events_then_fetch_pages_through_them_in_order(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    events = numbered(5)
    await queue.publish(events)

    pages = [ids(await queue.fetch(2, NO_WAIT_S)) for _ in range(4)]

    assert pages == [["e000", "e001"], ["e002", "e003"], ["e004"], []]


async def test_given_one_publish_of_thousands_then_it_comes_back_whole_and_in_order(
    backend: QueueBackend,
) -> None:
    # As an Amplitude cohort of 10,000 users does: more than one row, page or message batch.
    events = numbered(2_500)
    await backend.queue.publish(events)

    delivered = await fetch_all(backend.queue, 2_500, NO_WAIT_S)

    assert [d.event for d in delivered] == events
    assert await backend.queue.depth() == 2_500


async def test_given_an_empty_publish_then_nothing_is_logged_and_later_events_come_as_ever(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    await queue.publish([])
    if isinstance(queue, SqliteQueue):  # no row: a row of no events holds no position
        assert await queue.db.read(_rows) == []
    assert await queue.depth() == 0
    assert await queue.fetch(10, NO_WAIT_S) == []

    await asyncio.gather(queue.publish(numbered(2)), queue.publish([]))
    await queue.publish([])

    assert ids(await fetch_all(queue, 2, backend.redelivery_wait_s)) == ["e000", "e001"]
    assert await queue.depth() == 2


def _rows(conn: Any) -> list[tuple[int, bytes]]:
    return conn.execute("SELECT events, body FROM batches ORDER BY seq").fetchall()


async def test_given_concurrent_publishes_then_the_rows_hold_each_event_as_encoded_alone(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """The log's rows are what they always were (readers and older versions read them): each
    event's own msgpack encoding, one after the other, at most MAX_RECORDS_PER_ROW to a row;
    however the publishes that share a commit are encoded."""
    queue = sqlite_queue_backend.queue
    assert isinstance(queue, SqliteQueue)
    sizes = [1, 15, 16, 100, 2_500, 1_999, 3, 4_001]
    published = [numbered(n, f"s{i}-") for i, n in enumerate(sizes)]

    await asyncio.gather(*(queue.publish(events) for events in published))

    rows = await queue.db.read(_rows)
    everything = [e for events in published for e in events]
    assert b"".join(body for _, body in rows) == b"".join(encode_event(e) for e in everything)
    assert sum(count for count, _ in rows) == len(everything)
    assert all(0 < count <= MAX_RECORDS_PER_ROW for count, _ in rows)
    delivered = await fetch_all(queue, len(everything), NO_WAIT_S)
    assert [d.event for d in delivered] == everything


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 2**16 - 1, 2**16])
def test_a_publishs_events_encoded_at_once_are_the_bytes_of_each_encoded_alone(
    count: int,
) -> None:
    # Where msgpack's array header grows (16 and 65,536 elements), the bytes stay the same.
    events = [event(event_id=str(i), n=i) for i in range(count)]
    assert encode_events(events) == b"".join(encode_event(e) for e in events)


async def test_given_an_empty_log_when_fetching_then_it_waits_up_to_wait_s_and_returns_nothing(
    backend: QueueBackend,
) -> None:
    started = time.monotonic()

    assert await backend.queue.fetch(10, 0.2) == []

    assert 0.15 <= time.monotonic() - started < 5.0


async def test_given_a_waiting_fetch_when_an_event_is_published_then_it_returns_before_wait_s(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    waiting = asyncio.create_task(queue.fetch(10, 30.0))
    await asyncio.sleep(0)  # let the fetch start waiting
    started = time.monotonic()

    await queue.publish([event(event_id="wake")])

    assert ids(await asyncio.wait_for(waiting, 10.0)) == ["wake"]
    assert time.monotonic() - started < 10.0


# -- acknowledgement, find, depth ----------------------------------------------------------------


async def test_given_fetched_events_when_acked_then_find_and_depth_forget_them(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    events = numbered(3)
    await queue.publish(events)
    assert await queue.depth() == 3

    delivered = await queue.fetch(2, NO_WAIT_S)
    assert await queue.depth() == 3, "fetched is not done: only an ack takes an event off the log"
    assert await queue.find("acme", "e000") == events[0]

    await queue.ack(delivered)

    async def forgotten() -> bool:
        return (
            await queue.depth() == 1
            and await queue.find("acme", "e000") is None
            and await queue.find("acme", "e001") is None
        )

    # A broker removes acknowledged messages a moment after the ack; a local log at once.
    for _ in range(200):
        if await forgotten():
            break
        await asyncio.sleep(0.01)
    assert await forgotten()
    assert await queue.find("acme", "e002") == events[2]


async def test_given_no_deliveries_when_acking_then_nothing_changes(backend: QueueBackend) -> None:
    await backend.queue.publish(numbered(2))

    await backend.queue.ack([])

    assert await backend.queue.depth() == 2


async def test_given_acknowledgements_handed_over_then_only_their_writer_moves_the_log(
    backend: QueueBackend,
) -> None:
    # `serve`'s applier process hands its acknowledgements to the server, which writes them.
    queue = backend.queue
    handed: list[int] = []
    await queue.publish(numbered(4))

    # A capability of the SQLite log alone (its file can be written by another process).
    assert isinstance(queue, HandsOverAcknowledgements) == (backend.name == "sqlite")
    if not isinstance(queue, HandsOverAcknowledgements):
        # A backend only the consumer can acknowledge to: ack goes on doing it.
        await queue.ack(await queue.fetch(2, NO_WAIT_S))
        assert handed == []
        assert not hasattr(queue, "acknowledge_upto")
        return

    queue.hand_acknowledgements_to(handed.append)
    await queue.ack(await queue.fetch(2, NO_WAIT_S))
    assert len(handed) == 1
    assert await queue.depth() == 4, "the consumer itself wrote nothing"

    await queue.acknowledge_upto(handed[0])  # as the server does, in its own process
    await queue.acknowledge_upto(handed[0] - 1)  # a stale one moves nothing back
    assert await queue.depth() == 2

    queue = await backend.restart()
    assert ids(await queue.fetch(10, NO_WAIT_S)) == ["e002", "e003"]


async def test_given_an_acknowledgement_past_the_end_then_later_events_are_still_delivered(
    sqlite_queue_backend: QueueBackend,
) -> None:
    # The server writes positions another process hands it: one beyond what was logged (or too
    # large for SQLite) must not make the log skip, forever, the events logged after it.
    queue = sqlite_queue_backend.queue
    await queue.acknowledge_upto(5)  # an empty log: nothing to acknowledge
    await queue.publish(numbered(3))

    await queue.acknowledge_upto(2**70)

    assert await queue.depth() == 0
    await queue.publish([event(event_id="later")])
    queue = await sqlite_queue_backend.restart()
    assert ids(await queue.fetch(10, NO_WAIT_S)) == ["later"]


async def test_given_pending_events_then_find_looks_them_up_by_workspace_and_event_id(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    acme = event(workspace="acme", event_id="same-id", name="acme's")
    globex = event(workspace="globex", event_id="same-id", name="globex's")
    await queue.publish([acme, globex])

    assert await queue.find("acme", "same-id") == acme
    assert await queue.find("globex", "same-id") == globex
    assert await queue.find("initech", "same-id") is None
    assert await queue.find("acme", "never-sent") is None


# -- crash and resume ----------------------------------------------------------------------------


async def test_given_unacked_deliveries_when_the_consumer_restarts_then_they_are_redelivered(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    events = numbered(5)
    await queue.publish(events)
    await queue.ack(await queue.fetch(2, NO_WAIT_S))
    unacked = await queue.fetch(2, NO_WAIT_S)
    assert ids(unacked) == ["e002", "e003"]

    queue = await backend.restart()

    redelivered = await fetch_all(queue, 3, backend.redelivery_wait_s)
    # A broker redelivers after a backoff, so events never delivered may overtake them.
    assert sorted((d.event for d in redelivered), key=lambda e: e.event_id) == events[2:]
    assert await queue.depth() == 3
    assert await queue.find("acme", "e002") == events[2]
    assert await queue.find("acme", "e001") is None


async def test_given_everything_acked_when_the_consumer_restarts_then_nothing_is_redelivered(
    backend: QueueBackend,
) -> None:
    await backend.queue.publish(numbered(3))
    await backend.queue.ack(await backend.queue.fetch(10, NO_WAIT_S))

    queue = await backend.restart()

    assert await queue.fetch(10, NO_WAIT_S) == []
    assert await queue.depth() == 0
    await queue.publish([event(event_id="after-restart")])
    assert ids(await queue.fetch(10, NO_WAIT_S)) == ["after-restart"]


async def test_given_200_concurrent_publishes_then_all_are_durable_and_share_commits(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    commits: list[int] = []
    if isinstance(queue, SqliteQueue):
        commit = queue.db._commit

        def counting_commit(conn: Any, batch: Any) -> Any:
            commits.append(len(batch))
            return commit(conn, batch)

        queue.db._commit = counting_commit  # type: ignore[method-assign]
    events = numbered(200, "p")

    await asyncio.gather(*(queue.publish([e]) for e in events))

    if isinstance(queue, SqliteQueue):
        assert sum(commits) == 200
        assert len(commits) < 50, f"200 concurrent publishes took {len(commits)} commits"
    queue = await backend.restart()
    delivered = await fetch_all(queue, 200, backend.redelivery_wait_s)
    assert sorted(ids(delivered)) == ids(events)
    assert await queue.depth() == 200


async def fetch_all(queue: Queue, count: int, wait_s: float) -> list[Any]:
    """Fetch until ``count`` deliveries came (a broker may hand them over in several pulls)."""
    delivered: list[Any] = []
    for _ in range(20):
        delivered += await queue.fetch(count - len(delivered), wait_s)
        if len(delivered) >= count:
            break
    return delivered


# -- payload -------------------------------------------------------------------------------------


ROUND_TRIP = [
    Event(
        workspace="wörk-space",
        event_id="ïd/with spaces?&#",
        contact_id="contact ✉ 42",
        ts_us=1_700_000_000_123_456,
        properties={
            "name": "Zoë 😀",
            "nested": {"list": [1, 2.5, None, True, {"deep": ["x", {"y": "z"}]}], "empty": {}},
            "unset": None,
            "big": 2**53 + 1,
            "negative": -7,
            "": "empty name",
        },
        source="copernica",
        event_name="profile.updated",
        metadata={"ip": "203.0.113.9", "headers": {"x-ü": ["1", "2"]}},
        received_us=1_700_000_001_000_000,
    ),
    Event(
        workspace="acme",
        event_id="delete-1",
        contact_id="c1",
        ts_us=5,
        properties={},
        kind="delete",
    ),
]


async def test_given_an_event_with_every_field_then_it_round_trips_exactly(
    backend: QueueBackend,
) -> None:
    queue = backend.queue
    await queue.publish(ROUND_TRIP)

    assert [d.event for d in await queue.fetch(10, NO_WAIT_S)] == ROUND_TRIP
    assert await queue.find("wörk-space", "ïd/with spaces?&#") == ROUND_TRIP[0]
    queue = await backend.restart()
    redelivered = sorted(
        (d.event for d in await fetch_all(queue, len(ROUND_TRIP), backend.redelivery_wait_s)),
        key=ROUND_TRIP.index,
    )
    assert redelivered == ROUND_TRIP
    assert redelivered[1].kind == "delete"
    assert redelivered[0].properties["nested"]["list"][4] == {"deep": ["x", {"y": "z"}]}


# -- erasure ---------------------------------------------------------------------------------------


async def test_given_a_contacts_pending_events_when_erased_then_none_says_anything_any_more(
    backend: QueueBackend,
) -> None:
    """Up to the erasure's time (all of them with ``everything``): removed, or delivered as
    stubs without properties; other contacts' events and later ones are untouched."""
    queue = backend.queue
    await queue.publish(
        [
            event("gone", "g1", 1, secret="MARKER"),
            event("kept", "k1", 2, plan="free"),
            event("gone", "g2", 3, secret="MARKER"),
            event("gone", "g3", 50, fresh="after"),  # after the erasure's time
            event("gone", "g4", 4, workspace="globex", other="workspace"),
            # Future-dated, but received before the erasure: the contact's data all the same.
            msgspec.structs.replace(event("gone", "g5", 60, secret="MARKER"), received_us=5),
        ]
    )

    assert await queue.erase_pending("acme", "gone", upto_us=10) == 3
    assert await queue.erase_pending("acme", "gone", upto_us=10) == 0  # nothing left to say

    for event_id in ("g1", "g2", "g5"):
        found = await queue.find("acme", event_id)
        assert found is None or found.properties == {}
    delivered = {d.event.event_id: d.event for d in await queue.fetch(10, 1.0)}
    assert all(delivered[i].properties == {} for i in ("g1", "g2", "g5") if i in delivered)
    assert delivered["k1"].properties == {"plan": "free"}
    assert delivered["g3"].properties == {"fresh": "after"}
    assert delivered["g4"].properties == {"other": "workspace"}
    assert await queue.erase_pending("acme", "gone", upto_us=10, everything=True) == 1


async def test_given_nats_events_published_under_the_old_subjects_then_they_are_found_and_fetched(
    nats_queue_backend: QueueBackend,
) -> None:
    """Before subjects named the contact, an event's subject was ``<prefix>.<event digest>``:
    such events, still in a stream when profilehook is upgraded, are found and applied."""
    from profilehook.events import encode_event
    from profilehook.queues.nats import NatsQueue

    queue = nats_queue_backend.queue
    assert isinstance(queue, NatsQueue)
    old = event("c1", "old-1", 1, x=1)
    await queue._js.publish(queue._subject("acme", "old-1"), encode_event(old))  # type: ignore[attr-defined]
    await queue.publish([event("c1", "new-1", 2, x=2)])

    assert await queue.find("acme", "old-1") == old
    assert (found := await queue.find("acme", "new-1")) is not None and found.properties == {"x": 2}
    assert ids(await queue.fetch(10, 1.0)) == ["old-1", "new-1"]


# -- plain batches (plain_batch.py) ------------------------------------------------------------
#
# The SQLite log keeps a plain batch's body as it came, and gives back the events the handler
# answered for; every other log takes them as events. A client may escape its ids in its JSON
# ("\\u0061" for "a"), and its contacts' ids: a lookup or an erasure finds them all the same.

_ITEM = {"event_name": "signup", "timestamp": 1_700_000_000, "user_properties": {"plan": "pro"}}


def _body(*items: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"events": list(items)})


def _escaped(body: bytes, text: str) -> bytes:
    """``body`` with ``text`` (a JSON string's content in it) written as \\u escapes."""
    escaped = "".join(f"\\u{ord(ch):04x}" for ch in text).encode()
    assert text.encode() in body
    return body.replace(text.encode(), escaped)


def _plain(body: bytes, workspace: str = "acme", received_us: int = 5) -> PlainBatch:
    batch = native.whole_batch(body, workspace, received_us)
    assert isinstance(batch, PlainBatch)
    return batch


async def _log_rows(queue: SqliteQueue) -> list[tuple[int, bytes]]:
    return await queue.db.read(
        lambda conn: conn.execute("SELECT events, body FROM batches ORDER BY seq").fetchall()
    )


async def test_given_a_plain_batch_then_every_log_gives_back_the_events_answered_for(
    backend: QueueBackend,
) -> None:
    body = _escaped(
        _body(
            {**_ITEM, "contact_id": "ann"},
            {**_ITEM, "contact_id": "bob", "event_id": "client-1", "metadata": {"ip": "x"}},
            {**_ITEM, "contact_id": "cy", "timestamp": 1_700_000_000.25},
        ),
        "client-1",
    )
    batch = _plain(body)
    answered = batch.event_ids()
    before, after = [event("zed", "z1", 1)], [event("zed", "z2", 2)]
    queue = backend.queue

    await asyncio.gather(queue.publish(before), queue.publish(batch), queue.publish(after))

    delivered = [d.event for d in await fetch_all(queue, 5, NO_WAIT_S)]
    made = [e for e in delivered if e.contact_id != "zed"]
    assert [e.event_id for e in made] == answered
    assert answered[1] == "client-1"
    assert made == [
        Event("acme", answered[0], "ann", 1_700_000_000_000_000, {"plan": "pro"}, "api", "signup",
              None, 5),
        Event("acme", "client-1", "bob", 1_700_000_000_000_000, {"plan": "pro"}, "api", "signup",
              {"ip": "x"}, 5),
        Event("acme", answered[2], "cy", 1_700_000_000_250_000, {"plan": "pro"}, "api", "signup",
              None, 5),
    ]  # fmt: skip
    assert await queue.find("acme", answered[0]) == made[0]  # an id made for it
    assert await queue.find("acme", "client-1") == made[1]  # escaped in the body
    assert await queue.find("acme", answered[2]) == made[2]
    assert await queue.find("other", "client-1") is None

    queue = await backend.restart()
    again = await fetch_all(queue, 5, backend.redelivery_wait_s)
    assert sorted(d.event.event_id for d in again) == sorted(e.event_id for e in delivered)
    assert {d.event.event_id: d.event for d in again}["client-1"] == made[1]


async def test_given_a_plain_batch_then_its_row_holds_the_clients_body_not_its_events_encoded(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """The event loop neither makes the events nor encodes them: the row holds the body as it
    came, one record for the batch and a nil for each other event (one record an event)."""
    queue = sqlite_queue_backend.queue
    assert isinstance(queue, SqliteQueue)
    body = _body(*({**_ITEM, "contact_id": f"c{i}"} for i in range(1_000)))
    batch = _plain(body)

    await queue.publish(batch)

    ((count, row),) = await _log_rows(queue)
    assert count == 1_000
    assert body in row
    assert row.endswith(b"\xc0" * 999)
    assert len(row) < len(body) + 1_100  # no copy of the events besides
    assert [d.event for d in await queue.fetch(1_000, NO_WAIT_S)] == list(batch)
    assert batch._events is not None  # (made by the test's list(batch) only)


async def test_given_a_plain_batch_of_one_event_then_its_row_holds_the_event_itself(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """One event is kept as any event is: a row with a nil in it is one to look into."""
    queue = sqlite_queue_backend.queue
    assert isinstance(queue, SqliteQueue)
    batch = _plain(_body({**_ITEM, "contact_id": "solo"}))

    await queue.publish(batch)

    ((count, row),) = await _log_rows(queue)
    assert (count, row) == (1, msgspec.msgpack.encode(batch[0]))
    assert [d.event for d in await queue.fetch(10, NO_WAIT_S)] == list(batch)


async def test_given_a_plain_batch_fetched_in_parts_then_each_event_comes_once_in_order(
    sqlite_queue_backend: QueueBackend,
) -> None:
    queue = sqlite_queue_backend.queue
    batch = _plain(_body(*({**_ITEM, "contact_id": f"c{i}"} for i in range(10))))
    await queue.publish([event("a", "first", 1)])
    await queue.publish(batch)

    parts = [await queue.fetch(4, NO_WAIT_S) for _ in range(3)]

    assert [len(p) for p in parts] == [4, 4, 3]
    got = [d.event.event_id for p in parts for d in p]
    assert got == ["first", *batch.event_ids()]
    assert await queue.depth() == 11
    await queue.ack(parts[0])
    assert await queue.depth() == 7


@pytest.mark.parametrize("escaped", [False, True])
async def test_given_a_contact_in_a_plain_batch_when_erased_then_its_events_say_nothing(
    sqlite_queue_backend: QueueBackend, escaped: bool
) -> None:
    """The erasure finds the contact in the row (its id escaped in the body too: such a body
    is kept as its events), and leaves the row's other events where they were; no byte of
    what the contact's event said stays in the log's files."""
    queue = sqlite_queue_backend.queue
    body = _body(
        {**_ITEM, "contact_id": "kept", "user_properties": {"a": 1}},
        {**_ITEM, "contact_id": "gøne", "user_properties": {"secret": "MARKER"}},
        {**_ITEM, "contact_id": "kept", "user_properties": {"a": 2}},
    )
    batch = _plain(_escaped(body, "gøne") if escaped else body)
    answered = batch.event_ids()
    await queue.publish(batch)
    first = await queue.fetch(1, NO_WAIT_S)  # a consumer holds part of the row

    assert await queue.erase_pending("acme", "gøne", upto_us=2_000_000_000_000_000) == 1
    await queue.scrub()

    rest = [d.event for d in await queue.fetch(10, NO_WAIT_S)]
    assert [d.event.event_id for d in first] + [e.event_id for e in rest] == answered
    assert rest[0].contact_id == "gøne" and rest[0].properties == {}
    assert rest[1].properties == {"a": 2}
    await _assert_gone_from_files(queue, b"MARKER")


async def test_given_a_contact_id_given_twice_in_an_item_when_erased_then_no_byte_of_it_stays(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """JSON decoders keep the last of two values of a key: the body holds a contact's id
    that no event has. Its row is rewritten all the same when that contact is erased."""
    queue = sqlite_queue_backend.queue
    item = {**_ITEM, "contact_id": "other"}
    twice = _body({**_ITEM, "contact_id": "kept"}, item).replace(
        b'"contact_id":"other"}', b'"contact_id":"victim-MARKER","contact_id":"other"}'
    )
    batch = _plain(twice)
    assert [e.contact_id for e in batch] == ["kept", "other"]
    await queue.publish(batch)
    assert b"victim-MARKER" in (await _log_rows(queue))[0][1]

    assert await queue.erase_pending("acme", "victim-MARKER", upto_us=2**62) == 0
    await queue.scrub()

    assert [d.event for d in await queue.fetch(10, NO_WAIT_S)] == list(batch)
    await _assert_gone_from_files(queue, b"victim-MARKER")


async def _assert_gone_from_files(queue: Any, marker: bytes) -> None:
    """No row, and neither the log's file nor its WAL, holds ``marker`` (closes the queue)."""
    assert marker not in b"".join(row for _, row in await _log_rows(queue))
    path = queue.db.path
    await queue.close()
    for name in (path.name, f"{path.name}-wal"):
        file = path.with_name(name)
        assert not file.exists() or marker not in file.read_bytes()


async def test_given_a_body_with_an_escape_then_the_log_keeps_its_events_as_any_events(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """Only a body without escapes is kept as it came: in it every id is as it is, which is
    how a lookup and an erasure find a row (SQLite's instr) without decoding the others."""
    queue = sqlite_queue_backend.queue
    body = _escaped(_body(*({**_ITEM, "contact_id": f"c{i}"} for i in range(3))), "c1")
    batch = _plain(body)

    await queue.publish(batch)

    ((count, row),) = await _log_rows(queue)
    assert (count, row) == (3, encode_events(list(batch)))
    assert await queue.find("acme", batch.event_ids()[1]) == batch[1]


async def test_given_a_kept_body_past_the_limits_of_a_later_version_then_it_still_reads(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """A row accepted once reads the same whatever limits a later version sets: the reader
    decodes a kept body without the limits the request's was checked against."""
    queue = sqlite_queue_backend.queue
    assert isinstance(queue, SqliteQueue)
    long_id = "x" * 10_000  # past today's limit on a contact's id
    items = [
        {**_ITEM, "contact_id": long_id},
        {**_ITEM, "contact_id": "b", "user_properties": {f"p{i}": i for i in range(1_001)}},
    ]
    body = _body(*items)
    assert native.whole_batch(body, "acme", 5) is None  # (today's limits refuse it)
    kept = PlainBatch("acme", 5, ("run-", 0, 0), body, [])
    kept.items = [msgspec.convert(item, plain_batch.StoredItem) for item in items]
    await queue.publish(kept)

    delivered = [d.event for d in await queue.fetch(10, NO_WAIT_S)]

    assert [e.contact_id for e in delivered] == [long_id, "b"]
    assert len(delivered[1].properties) == 1_001


async def test_given_a_log_of_the_schema_before_then_it_opens_and_delivers_what_waits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.sqlite3"
    queue = SqliteQueue(path)
    await queue.open()
    await queue.publish([event("a", "waiting", 1)])
    await queue.close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")

    queue = SqliteQueue(path)
    await queue.open()

    assert [d.event.event_id for d in await queue.fetch(10, NO_WAIT_S)] == ["waiting"]
    await queue.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_given_a_log_of_a_later_schema_then_it_is_refused_with_why(tmp_path: Path) -> None:
    """A version that cannot read a plain batch's record does not open a log that may hold one
    (this one, for a log of a later version: the same check)."""
    path = tmp_path / "log.sqlite3"
    queue = SqliteQueue(path)
    await queue.open()
    await queue.close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(ConfigurationError, match="another profilehook version"):
        await SqliteQueue(path).open()


async def test_given_a_corrupt_plain_record_then_fetch_says_so(
    sqlite_queue_backend: QueueBackend,
) -> None:
    queue = sqlite_queue_backend.queue
    assert isinstance(queue, SqliteQueue)
    await queue.publish(_plain(_body({**_ITEM, "contact_id": "a"}, {**_ITEM, "contact_id": "b"})))
    ((_, row),) = await _log_rows(queue)
    await queue.db.write(
        lambda conn: conn.execute("UPDATE batches SET events = 3, body = ?", (row + b"\xc0",))
    )

    with pytest.raises(msgspec.DecodeError, match="a row of 3 events holds 2"):
        await queue.fetch(10, NO_WAIT_S)


# -- Segment batches kept as they came (plain_segment_batch.py) --------------------------------
#
# A /v1/batch body whose every message is an identify that sets traits is kept by the SQLite
# log as the SDK sent it (context, integrations and all), and read back as the same events.


def _identify(user: str, traits: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An identify as segment-analytics-python sends it."""
    return {
        "integrations": {},
        "anonymousId": None,
        "timestamp": "2026-12-03T10:00:00.5+00:00",
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "type": "identify",
        "userId": user,
        "traits": traits,
        "messageId": f"msg-{user}",
        **extra,
    }


def _segment_body(*messages: dict[str, Any]) -> bytes:
    return msgspec.json.encode(
        {"batch": list(messages), "sentAt": "2026-12-03T10:00:01+00:00", "writeKey": "k"}
    )


def _kept_segment(body: bytes, received_us: int = 5) -> PlainSegmentBatch:
    mapped = segment.map_messages(segment.parse_batch(body), "acme", received_us, 0)
    assert isinstance(mapped.kept, PlainSegmentBatch)
    return mapped.kept


TEN_HALF_US = 1_796_292_000_500_000  # 2026-12-03T10:00:00.5Z


async def test_given_a_kept_segment_batch_then_every_log_gives_back_its_identifies_as_events(
    backend: QueueBackend,
) -> None:
    body = _segment_body(
        _identify("ann", {"plan": "pro"}),
        _identify("bob", {"n": 2}, messageId=None, timestamp="2026-12-03T12:00:00.5+02:00"),
        {**_identify("x", {}), "userId": None, "anonymousId": "anon-1",
         "traits": None, "context": {"traits": {"t": True}, "ip": "1.2.3.4"}},
        _identify("cy", {"a": None}, timestamp=None),
        _identify("dee", {"a": 1.5}, timestamp="2026-12-03T10:00:00.5"),  # no zone: UTC
    )  # fmt: skip
    batch = _kept_segment(body)
    queue = backend.queue
    other = event("zed", "z1", 1)

    await asyncio.gather(queue.publish([other]), queue.publish(batch), queue.publish([]))

    made = [d.event for d in await fetch_all(queue, 6, NO_WAIT_S) if d.event.contact_id != "zed"]
    bob_id = made[1].event_id
    assert bob_id.startswith(batch.id_run[0])  # made from the batch's run: the same each time
    assert made == [
        Event("acme", "msg-ann", "ann", TEN_HALF_US, {"plan": "pro"}, "segment", "identify",
              None, 5),
        Event("acme", bob_id, "bob", TEN_HALF_US, {"n": 2}, "segment", "identify", None, 5),
        Event("acme", "msg-x", "anon-1", TEN_HALF_US, {"t": True}, "segment", "identify",
              None, 5),
        Event("acme", "msg-cy", "cy", 5, {"a": None}, "segment", "identify", None, 5),
        Event("acme", "msg-dee", "dee", TEN_HALF_US, {"a": 1.5}, "segment", "identify",
              None, 5),
    ]  # fmt: skip
    assert made == list(batch)
    assert await queue.find("acme", "msg-ann") == made[0]
    assert await queue.find("acme", bob_id) == made[1]
    assert await queue.find("other", "msg-ann") is None

    queue = await backend.restart()
    again = [d.event for d in await fetch_all(queue, 6, backend.redelivery_wait_s)]
    assert sorted(again, key=lambda e: e.event_id) == sorted(
        [other, *made], key=lambda e: e.event_id
    )


async def test_given_a_kept_segment_batch_then_its_row_holds_the_sdks_body_not_events(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """The event loop neither makes the events nor encodes them (the reader makes them)."""
    queue = sqlite_queue_backend.queue
    assert isinstance(queue, SqliteQueue)
    body = _segment_body(*(_identify(f"c{i}", {"plan": "pro", "n": i}) for i in range(100)))
    batch = _kept_segment(body)

    await queue.publish(batch)

    assert batch._events is None
    ((count, row),) = await _log_rows(queue)
    assert count == 100 and body in row and row.endswith(b"\xc0" * 99)
    assert len(row) < len(body) + 200  # no copy of the events besides
    delivered = [d.event for d in await queue.fetch(100, NO_WAIT_S)]
    assert [(e.contact_id, e.properties) for e in delivered] == [
        (f"c{i}", {"plan": "pro", "n": i}) for i in range(100)
    ]


async def test_given_a_contact_in_a_kept_segment_batch_when_erased_then_nothing_of_it_stays(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """What the SDK sent beside the traits (its context: an IP address) goes with them."""
    queue = sqlite_queue_backend.queue
    body = _segment_body(
        _identify("kept", {"a": 1}),
        _identify("gone", {"secret": "MARKER"}, context={"ip": "MARKER-IP"}),
        _identify("kept", {"a": 2}, messageId="msg-kept-2"),
    )
    batch = _kept_segment(body)
    await queue.publish(batch)
    first = await queue.fetch(1, NO_WAIT_S)  # a consumer holds part of the row

    assert await queue.erase_pending("acme", "gone", upto_us=2**62) == 1
    await queue.scrub()

    rest = [d.event for d in await queue.fetch(10, NO_WAIT_S)]
    assert [d.event.event_id for d in first] + [e.event_id for e in rest] == [
        "msg-kept", "msg-gone", "msg-kept-2"
    ]  # fmt: skip
    assert rest[0].contact_id == "gone" and rest[0].properties == {}
    assert rest[1].properties == {"a": 2}
    await _assert_gone_from_files(queue, b"MARKER")


async def test_given_a_segment_batch_of_more_messages_than_a_row_then_the_log_keeps_its_events(
    sqlite_queue_backend: QueueBackend,
) -> None:
    queue = sqlite_queue_backend.queue
    messages = [{"type": "identify", "userId": f"u{i}", "traits": {"n": i}} for i in range(2_500)]
    assert len(messages) > MAX_RECORDS_PER_ROW
    batch = _kept_segment(_segment_body(*messages))

    await queue.publish(batch)

    rows = await _log_rows(queue)
    assert [count for count, _ in rows] == [MAX_RECORDS_PER_ROW, 500]
    delivered = [d.event for d in await fetch_all(queue, 2_500, NO_WAIT_S)]
    assert delivered == list(batch)
    assert [e.properties for e in delivered[-2:]] == [{"n": 2_498}, {"n": 2_499}]


async def test_given_a_kept_segment_body_past_the_limits_of_a_later_version_then_it_still_reads(
    sqlite_queue_backend: QueueBackend,
) -> None:
    """As for the native batch: the reader decodes a kept body without today's limits."""
    queue = sqlite_queue_backend.queue
    long_id = "x" * 10_000  # past today's limit on a contact's id
    messages = [
        {"type": "identify", "userId": long_id, "traits": {"a": 1}},
        {"type": "identify", "userId": "b", "traits": {f"p{i}": i for i in range(1_001)}},
    ]
    body = _segment_body(*messages)
    assert segment.map_messages(segment.parse_batch(body), "acme", 5, 0).kept is None
    items = [msgspec.convert(m, plain_segment_batch.StoredMessage) for m in messages]
    await queue.publish(PlainSegmentBatch("acme", 5, ("run-", 0, 0), body, items))

    delivered = [d.event for d in await queue.fetch(10, NO_WAIT_S)]

    assert [e.contact_id for e in delivered] == [long_id, "b"]
    assert len(delivered[1].properties) == 1_001
