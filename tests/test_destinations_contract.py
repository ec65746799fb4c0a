"""The destinations' contract (``Destinations``, SPEC 2.10): the registry (per workspace, at
most a given number), the cursor moved by compare-and-set with the deliveries it adds, claims
that lease only the earliest pending delivery per (destination, contact), outcomes recorded only
by the lease's holder, retries, failures, replay and disabling. Every backend passes this one
suite (tests/store_backends.py)."""

from __future__ import annotations

import asyncio

import pytest

from profilehook.changes import Change, ChangeBody, PropertyChange, SegmentChanges
from profilehook.stores.base import Erasure, Store
from profilehook.stores.destinations import DeliveryStats, Destination, Finished, NewDelivery
from tests.store_backends import S, StoreBackend

T0 = 1_700_000_000 * S


@pytest.fixture
def store(backend: StoreBackend) -> Store:
    return backend.store


def destination(destination_id: str = "d1", workspace: str = "acme", **kw: object) -> Destination:
    return Destination(
        destination_id, workspace, "https://example.com/hook", "whsec_c2VjcmV0", T0, **kw
    )  # type: ignore[arg-type]


def new(n: int, contact_id: str) -> NewDelivery:
    return NewDelivery(f"ch{n}", str(n), contact_id, T0 + n, b'{"n": %d}' % n)


async def enqueued(store: Store, *contacts: str, start: int = 1) -> None:
    found = await store.get_destination("acme", "d1")
    assert found is not None
    rows = [new(start + i, c) for i, c in enumerate(contacts)]
    assert await store.enqueue_deliveries("d1", found.cursor, str(start + len(rows) - 1), rows, T0)


async def test_registry_per_workspace_with_a_limit(store: Store) -> None:
    assert await store.create_destination(
        destination("d1", description="crm", properties=("plan",), segments=("vip",)), 2
    )
    assert await store.create_destination(destination("d2"), 2)
    assert not await store.create_destination(destination("d3"), 2)  # the workspace is full
    assert await store.create_destination(destination("d4", workspace="other"), 2)
    listed = await store.list_destinations("acme")
    assert [d.destination_id for d in listed] == ["d1", "d2"]
    got = await store.get_destination("acme", "d1")
    assert got is not None
    assert (got.url, got.secret, got.description) == (
        "https://example.com/hook",
        "whsec_c2VjcmV0",
        "crm",
    )
    assert (got.properties, got.segments, got.cursor) == (("plan",), ("vip",), None)
    assert await store.get_destination("other", "d1") is None
    assert not await store.delete_destination("other", "d1")
    assert await store.delete_destination("acme", "d1")
    assert await store.get_destination("acme", "d1") is None
    assert not await store.delete_destination("acme", "d1")
    assert {d.destination_id for d in await store.active_destinations()} == {"d2", "d4"}


async def test_cursor_moves_by_compare_and_set(store: Store) -> None:
    await store.create_destination(destination(), 50)
    assert await store.enqueue_deliveries("d1", None, "2", [new(1, "a"), new(2, "b")], T0)
    # A second worker that read the cursor before the move adds nothing.
    assert not await store.enqueue_deliveries("d1", None, "2", [new(1, "a"), new(2, "b")], T0)
    assert not await store.enqueue_deliveries("gone", None, "2", [new(1, "a")], T0)
    assert await store.enqueue_deliveries("d1", "2", "5", [], T0)  # nothing matched: cursor only
    got = await store.get_destination("acme", "d1")
    assert got is not None and got.cursor == "5"
    rows = await store.list_deliveries("d1", None, 10)
    assert [(r.change_id, r.contact_id, r.status, r.attempts) for r in rows] == [
        ("ch2", "b", "pending", 0),
        ("ch1", "a", "pending", 0),
    ]
    assert rows[0].position > rows[1].position
    assert rows[1].payload == b'{"n": 1}' and rows[1].cursor == "1"
    assert await store.delivery_stats() == {"d1": DeliveryStats(0, 0, 2, 0, T0 + 1)}


async def test_claims_the_earliest_pending_per_contact_only(store: Store) -> None:
    await store.create_destination(destination(), 50)
    await enqueued(store, "a", "b", "a", "c", "b")
    claimed = await store.claim_deliveries("w1", T0, T0 + 30 * S, 100)
    assert [(d.change_id, d.contact_id) for d in claimed] == [
        ("ch1", "a"),
        ("ch2", "b"),
        ("ch4", "c"),
    ]
    assert all(d.lease_owner == "w1" for d in claimed)
    # Leased: no one else gets them, nor the contacts' later changes.
    assert await store.claim_deliveries("w2", T0 + S, T0 + 31 * S, 100) == []
    first = claimed[0]
    assert await store.finish_delivery(
        "d1", first.position, "w1", T0 + S, delivered=True, status=204
    )
    again = await store.claim_deliveries("w2", T0 + S, T0 + 31 * S, 100)
    assert [d.change_id for d in again] == ["ch3"]  # a's next, now that ch1 went
    # A lease that ran out (its worker died) is claimed again.
    late = await store.claim_deliveries("w3", T0 + 40 * S, T0 + 70 * S, 100)
    assert sorted(d.change_id for d in late) == ["ch2", "ch3", "ch4"]
    # The first holder's outcome no longer counts.
    assert not await store.finish_delivery("d1", claimed[1].position, "w1", T0, delivered=True)


async def test_retries_failures_and_the_delivery_log(store: Store) -> None:
    await store.create_destination(destination(), 50)
    await enqueued(store, "a", "a")
    (one,) = await store.claim_deliveries("w", T0, T0 + 30 * S, 10)
    assert await store.finish_delivery(
        "d1", one.position, "w", T0 + S, delivered=False, next_attempt_us=T0 + 5 * S, status=500
    )
    got = await store.get_destination("acme", "d1")
    assert got is not None and got.failing_since_us == T0 + S
    assert await store.delivery_stats() == {"d1": DeliveryStats(0, 0, 2, 1, T0 + 1)}
    assert await store.claim_deliveries("w", T0 + 4 * S, T0 + 60 * S, 10) == []  # not due yet
    (two,) = await store.claim_deliveries("w", T0 + 5 * S, T0 + 60 * S, 10)
    assert (two.change_id, two.attempts, two.last_status) == ("ch1", 1, 500)
    assert await store.finish_delivery(
        "d1", two.position, "w", T0 + 6 * S, delivered=False, error="timed out after 10 s"
    )  # given up: failed, and the contact's next change goes
    got = await store.get_destination("acme", "d1")
    assert got is not None and got.failing_since_us == T0 + S  # still failing since the first
    failed = await store.list_deliveries("d1", "failed", 10)
    assert [(d.change_id, d.attempts, d.last_error) for d in failed] == [
        ("ch1", 2, "timed out after 10 s")
    ]
    (three,) = await store.claim_deliveries("w", T0 + 7 * S, T0 + 60 * S, 10)
    assert three.change_id == "ch2"
    assert await store.finish_delivery(
        "d1", three.position, "w", T0 + 8 * S, delivered=True, status=200
    )
    got = await store.get_destination("acme", "d1")
    assert got is not None and got.failing_since_us is None
    assert [d.change_id for d in await store.list_deliveries("d1", "delivered", 10)] == ["ch2"]
    assert await store.delivery_stats() == {"d1": DeliveryStats(1, 1, 0, 0, None)}


async def test_replay_and_disable(store: Store) -> None:
    await store.create_destination(destination(), 50)
    await enqueued(store, "a", "b")
    assert await store.replay_destination("acme", "d1", "1")
    assert not await store.replay_destination("other", "d1", "1")
    got = await store.get_destination("acme", "d1")
    assert got is not None and got.cursor == "1"
    assert await store.enqueue_deliveries("d1", "1", "2", [new(2, "b")], T0)  # b's again
    await store.disable_destination("d1", T0 + S, "failing for 5 days")
    got = await store.get_destination("acme", "d1")
    assert got is not None and (got.disabled_us, got.disabled_reason) == (
        T0 + S,
        "failing for 5 days",
    )
    assert await store.active_destinations() == []
    assert await store.claim_deliveries("w", T0 + S, T0 + 30 * S, 10) == []
    assert await store.delivery_stats() == {"d1": DeliveryStats(0, 0, 3, 0, T0 + 1)}


async def test_workers_on_the_same_data_never_claim_a_delivery_twice(
    backend: StoreBackend,
) -> None:
    store = backend.store
    await store.create_destination(destination(), 50)
    await enqueued(store, *[f"c{i}" for i in range(60)])
    others = [await backend.open_another() for _ in range(2)]
    batches = await asyncio.gather(
        *(s.claim_deliveries(f"w{i}", T0, T0 + 30 * S, 25) for i, s in enumerate([store, *others]))
    )
    ids = [d.change_id for batch in batches for d in batch]
    assert len(ids) == len(set(ids)) == 60


def change(
    properties: dict[str, tuple[object, object]],
    *,
    entered: tuple[str, ...] = (),
    deleted: bool = False,
) -> Change:
    body = ChangeBody(
        "api",
        deleted,
        {n: PropertyChange(o, v) for n, (o, v) in properties.items()},
        SegmentChanges(list(entered), []),
    )
    return Change("id", "1", "acme", "c", "e", T0, body)


def test_the_filter() -> None:
    everything = destination()
    by_plan = destination(properties=("plan",))
    by_vip = destination(segments=("vip",))
    either = destination(properties=("plan",), segments=("vip",))
    plan = change({"plan": ("free", "pro")})
    city = change({"city": (None, "Delft")})
    entered = change({"city": (None, "Delft")}, entered=["vip"])
    deleted = change({}, deleted=True)
    assert [everything.matches(c) for c in (plan, city, entered, deleted)] == [True] * 4
    assert [by_plan.matches(c) for c in (plan, city, entered, deleted)] == [
        True,
        False,
        False,
        True,
    ]
    assert [by_vip.matches(c) for c in (plan, city, entered, deleted)] == [
        False,
        False,
        True,
        False,
    ]
    assert [either.matches(c) for c in (plan, city, entered, deleted)] == [True, False, True, True]


async def test_an_erased_contacts_deliveries_are_gone_whatever_their_status(store: Store) -> None:
    """A delivery holds its change: erasing the contact (SPEC 2.11) removes them, delivered,
    failed or pending, in its workspace only."""
    await store.create_destination(destination(), 50)
    await store.create_destination(destination("d9", workspace="other"), 50)
    await enqueued(store, "gone", "kept", "gone")
    assert await store.enqueue_deliveries("d9", None, "1", [new(1, "gone")], T0)
    claimed = await store.claim_deliveries("w", T0, T0 + 10 * S, 10)
    first = next(d for d in claimed if (d.destination_id, d.contact_id) == ("d1", "gone"))
    assert await store.finish_delivery("d1", first.position, "w", T0, delivered=True)
    await store.request_erasure(Erasure("er1", "acme", "gone", T0, False))
    await store.erase_contacts([Erasure("er1", "acme", "gone", T0, False)])
    assert [r.contact_id for r in await store.list_deliveries("d1", None, 10)] == ["kept"]
    assert [r.contact_id for r in await store.list_deliveries("d9", None, 10)] == ["gone"]


async def test_a_late_outcome_of_an_erased_delivery_records_nothing_on_a_later_one(
    store: Store,
) -> None:
    """A position is never given twice: a worker's outcome of a delivery erased while it was
    being sent must not land on a later delivery the same worker holds (the memory store
    reused the erased row's position, and marked the later change delivered unsent)."""
    # Given w holds a's change, and a is erased while it is being sent
    await store.create_destination(destination(), 50)
    await enqueued(store, "a")
    (erased,) = await store.claim_deliveries("w", T0, T0 + 30 * S, 10)
    await store.forget_contact_deliveries("acme", "a")
    # And b's change, enqueued since, is held by w too
    await enqueued(store, "b", start=2)
    (later,) = await store.claim_deliveries("w", T0 + S, T0 + 30 * S, 10)
    # When w records the erased delivery's outcome
    recorded = await store.finish_delivery("d1", erased.position, "w", T0 + S, delivered=True)
    # Then nothing is recorded: b's change is still pending, w's to send
    assert not recorded and later.position != erased.position
    (row,) = await store.list_deliveries("d1", None, 10)
    assert (row.change_id, row.status, row.lease_owner) == ("ch2", "pending", "w")


async def test_a_batch_of_outcomes_is_recorded_at_once_and_a_lost_lease_is_skipped(
    store: Store,
) -> None:
    # Given three contacts' deliveries leased to w1, and one of them since leased to w2
    await store.create_destination(destination(), 50)
    await enqueued(store, "a", "b", "c", "a")
    claimed = await store.claim_deliveries("w1", T0, T0 + 100 * S, 2)
    claimed += await store.claim_deliveries("w1", T0, T0 + 30 * S, 1)
    assert [d.change_id for d in claimed] == ["ch1", "ch2", "ch3"]
    stolen = await store.claim_deliveries("w2", T0 + 40 * S, T0 + 70 * S, 100)
    assert [d.change_id for d in stolen] == ["ch3"]
    # When w1 records all three outcomes in one call: a success, a retry, and the lost lease
    a, b, c = claimed
    recorded = await store.finish_deliveries(
        "w1",
        T0 + 41 * S,
        [
            Finished("d1", b.position, False, T0 + 99 * S, 500, "answered 500"),
            Finished("d1", c.position, True, status=204),
            Finished("d1", a.position, True, status=204),
        ],
    )
    # Then two count: the stolen one stays w2's, pending; the last recorded (a success) leaves
    # the destination not failing
    assert recorded == 2
    log = {d.change_id: d for d in await store.list_deliveries("d1", None, 10)}
    assert (log["ch1"].status, log["ch1"].attempts) == ("delivered", 1)
    assert (log["ch2"].status, log["ch2"].last_error) == ("pending", "answered 500")
    assert (log["ch3"].status, log["ch3"].lease_owner) == ("pending", "w2")
    got = await store.get_destination("acme", "d1")
    assert got is not None and got.failing_since_us is None
    # And a's next change is claimable now that its first is recorded
    assert [
        d.change_id for d in await store.claim_deliveries("w3", T0 + 42 * S, T0 + 99 * S, 9)
    ] == ["ch4"]


async def test_retention_purges_finished_deliveries_only(store: Store) -> None:
    # Given a delivered, a failed and a pending delivery, finished at different times
    await store.create_destination(destination(), 50)
    await enqueued(store, "a", "b", "c")
    one, two, three = await store.claim_deliveries("w", T0, T0 + 30 * S, 10)
    await store.finish_delivery("d1", one.position, "w", T0 + S, delivered=True, status=204)
    await store.finish_delivery("d1", two.position, "w", T0 + 2 * S, delivered=False, error="x")
    await store.finish_delivery(
        "d1", three.position, "w", T0 + 2 * S, delivered=False, next_attempt_us=T0 + 9 * S
    )
    # When retention purges what finished before T0 + 1.5 s, then before T0 + 10 s
    assert await store.purge_deliveries(T0 + S + S // 2, 10) == 1
    assert [d.change_id for d in await store.list_deliveries("d1", None, 10)] == ["ch3", "ch2"]
    assert await store.purge_deliveries(T0 + 10 * S, 10) == 1
    # Then only the pending one is left, however old
    assert [d.change_id for d in await store.list_deliveries("d1", None, 10)] == ["ch3"]
    assert await store.purge_deliveries(T0 + 1_000 * S, 10) == 0


async def test_a_claim_looks_for_a_contacts_earlier_change_through_the_pending_index(
    tmp_path: object,
) -> None:
    """A claim checks each candidate for an earlier pending change of its contact: through
    the pending rows of that contact, not every earlier row of the destination (which made a
    claim of 500 take 7.5 s with 28,000 rows)."""
    import sqlite3

    from profilehook.stores import sqlite_destinations

    conn = sqlite3.connect(":memory:")
    conn.executescript(sqlite_destinations.SCHEMA)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN " + sqlite_destinations._CLAIMABLE + " LIMIT 10", (T0, T0)
    ).fetchall()
    searches = [row[3] for row in plan if "SEARCH e " in row[3]]
    assert searches and all("deliveries_pending" in s for s in searches), plan


async def test_the_feed_end_is_where_a_new_destination_starts(store: Store) -> None:
    """``feed_end``: reading after it finds the changes committed later, none from before; it
    does not move back when the changes before it are erased or purged (a destination there
    would otherwise be sent them again, or see its cursor expire)."""
    from tests.support import event

    assert await store.feed_end("acme") is None  # no change yet: from the start
    await store.apply([event("c1", "e1", 1 * S, plan="free")])
    await store.apply([event("c9", "o1", 1 * S, workspace="other", plan="free")])
    end = await store.feed_end("acme")
    assert end is not None
    assert await store.read_changes("acme", end, 10) == []
    await store.apply([event("c1", "e2", 2 * S, plan="pro")])
    assert [c.event_id for c in await store.read_changes("acme", end, 10)] == ["e2"]
    # The newest change erased, then all of them purged: the end stays past them.
    await store.apply([event("c2", "e3", 3 * S, plan="max")])
    before = await store.feed_end("acme")
    await store.erase_contacts([Erasure("era_1", "acme", "c2", 10 * S, False)])
    assert await store.feed_end("acme") == before
    await store.purge_changes(2**62, 100)
    assert await store.feed_end("acme") == before
    assert before is not None and await store.read_changes("acme", before, 10) == []
    await store.apply([event("c3", "e4", 4 * S, plan="pro")])
    assert [c.event_id for c in await store.read_changes("acme", before, 10)] == ["e4"]


async def test_a_change_committed_while_the_end_is_read_is_never_behind_it(store: Store) -> None:
    """Applies run while ends are read (several connections on PostgreSQL): every change that
    is behind an end once everything committed was already readable when that end was read,
    so a destination created there loses none."""
    from tests.support import event

    ends: list[tuple[str | None, set[str]]] = []
    done = asyncio.Event()

    async def apply_all() -> None:
        for i in range(40):
            await asyncio.gather(
                *(
                    store.apply([event(f"c{i}-{j}", f"e{i}-{j}", (i + 1) * S, n=i)])
                    for j in range(3)
                )
            )
        done.set()

    async def read_ends() -> None:
        while not done.is_set():
            end = await store.feed_end("acme")
            seen = await store.read_changes("acme", None, 10_000)
            behind = {c.event_id for c in seen if end is not None and int(c.cursor) <= int(end)}
            ends.append((end, behind))
            await asyncio.sleep(0)

    await asyncio.gather(apply_all(), read_ends(), read_ends())
    final = await store.read_changes("acme", None, 10_000)
    assert len(final) == 120 and len(ends) > 2
    for end, behind in ends:
        now_behind = {c.event_id for c in final if end is not None and int(c.cursor) <= int(end)}
        assert now_behind == behind, end


async def test_a_destination_created_by_the_registry_gets_only_later_changes_until_replayed(
    store: Store,
) -> None:
    """Created through ``registry.create`` (the API, the CLI and the console), a destination
    starts at the feed's end; a replay from null fills in every change kept."""
    from profilehook.destinations import registry
    from profilehook.destinations.delivery import Deliverer
    from profilehook.settings import Settings
    from tests.support import event

    await store.apply([event("c1", "e1", 1 * S, plan="free")])
    made, _ = await registry.create(
        store, "acme", {"url": "https://8.8.8.8/hook"}, allow_private=False
    )
    await store.apply([event("c1", "e2", 2 * S, plan="pro")])
    deliverer = Deliverer(store, Settings())
    await deliverer.fill()
    rows = await store.list_deliveries(made.destination_id, None, 10)
    assert [r.change_id for r in rows] == [
        c.change_id for c in await store.read_changes("acme", None, 10)
    ][1:]
    assert await registry.replay(store, "acme", made.destination_id, {"after": None}) is None
    deliverer = Deliverer(store, Settings())
    await deliverer.fill()
    rows = await store.list_deliveries(made.destination_id, None, 10)
    kept = await store.read_changes("acme", None, 10)
    assert sorted(r.change_id for r in rows) == sorted(
        [kept[1].change_id, kept[0].change_id, kept[1].change_id]
    )


async def test_rows_enqueued_while_heads_finish_are_all_delivered_in_order(
    backend: StoreBackend,
) -> None:
    """A fill adds a contact's changes while workers deliver that contact's earlier ones (on
    PostgreSQL a claim reads only each contact's head, which a finish and an enqueue hand on
    under the destination's lock): none is left waiting, each contact's arrive in order."""
    store = backend.store
    await store.create_destination(destination(), 50)
    workers = [store, *[await backend.open_another() for _ in range(2)]]
    total = 300
    done = asyncio.Event()
    delivered: list[tuple[str, int]] = []

    async def fill() -> None:
        cursor = None
        for start in range(1, total + 1, 10):
            rows = [new(n, f"c{n % 4}") for n in range(start, start + 10)]
            assert await store.enqueue_deliveries("d1", cursor, str(start + 9), rows, T0)
            cursor = str(start + 9)
            await asyncio.sleep(0)
        done.set()

    async def work(i: int, s: Store) -> None:
        idle = 0
        while idle < 50 or not done.is_set():
            batch = await s.claim_deliveries(f"w{i}", T0, T0 + 30 * S, 3)
            idle = 0 if batch else idle + 1
            for d in batch:
                delivered.append((d.contact_id, int(d.cursor)))
                assert await s.finish_delivery("d1", d.position, f"w{i}", T0, delivered=True)
            await asyncio.sleep(0)

    await asyncio.gather(fill(), *(work(i, s) for i, s in enumerate(workers)))
    assert sorted(n for _, n in delivered) == list(range(1, total + 1))
    for contact in {c for c, _ in delivered}:
        got = [n for c, n in delivered if c == contact]
        assert got == sorted(got), contact
