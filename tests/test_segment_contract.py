"""The segments contract (``Segments``, README "Segments"): a segment's members are exactly the
contacts its filter matches, after the backfill and after any sequence of events (late ones,
deletes, property operations, erasures), each entry and exit reported by the apply that made
it. Runs on every backend (tests/store_backends.py).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from profilehook import segments
from profilehook.errors import ValidationFailed
from profilehook.events import Event
from profilehook.filters import Query
from profilehook.stores.base import Erasure, Store
from profilehook.stores.query import ContactQueries
from profilehook.stores.segments import Segment, Segments
from tests.store_backends import S, StoreBackend
from tests.support import event
from tests.support import parsed_filter as f

W = "acme"


@pytest.fixture
def store(backend: StoreBackend) -> Store:
    return backend.store


async def new_segment(store: Store, raw: dict[str, Any], chunk: int = 1000) -> str:
    assert isinstance(store, Segments)
    segment_id = f"seg_{uuid.uuid4().hex[:8]}"
    await store.create_segment(Segment(segment_id, W, "s", f(raw), 1))
    while not await store.backfill_segment(W, segment_id, chunk):
        pass
    return segment_id


async def members(store: Store, segment_id: str, limit: int = 3) -> list[str]:
    assert isinstance(store, Segments)
    found: list[str] = []
    after = None
    while True:
        page, after = await store.segment_members(W, segment_id, after, limit)
        found += [c.contact_id for c in page]
        if after is None:
            return found


async def matching(store: Store, raw: dict[str, Any]) -> list[str]:
    assert isinstance(store, ContactQueries)
    page = await store.query_contacts(W, Query(f(raw), 1000))
    return [c.contact_id for c in page.contacts]


PRO = {"property": "plan", "op": "eq", "value": "pro"}


async def test_given_profiles_when_a_segment_is_created_then_backfilled_and_ready(
    store: Store,
) -> None:
    await store.apply(
        [event(f"c{i}", f"e{i}", S * (i + 1), plan="pro" if i % 3 else "free") for i in range(10)]
    )
    assert isinstance(store, Segments)
    segment_id = f"seg_{uuid.uuid4().hex[:8]}"
    await store.create_segment(Segment(segment_id, W, "pro", f(PRO), 1))
    building = await store.get_segment(W, segment_id)
    assert building is not None and building.status == "building" and building.size == 0
    assert not await store.backfill_segment(W, segment_id, 4)
    progress = await store.get_segment(W, segment_id)
    assert progress is not None and progress.scanned == 4 and progress.status == "building"
    while not await store.backfill_segment(W, segment_id, 4):
        pass
    ready = await store.get_segment(W, segment_id)
    assert ready is not None and ready.status == "ready" and ready.size == 6
    assert await members(store, segment_id) == await matching(store, PRO)
    assert [s.segment_id for s in await store.list_segments(W)] == [segment_id]
    assert await store.list_segments("other") == []


async def test_given_a_segment_when_events_apply_then_entries_and_exits_are_reported(
    store: Store,
) -> None:
    segment_id = await new_segment(store, PRO)
    result = await store.apply([event("u1", "e1", 10 * S, plan="pro"), event("u2", "e2", 10 * S)])
    assert {k: v.view() for k, v in result.segment_moves.items()} == {
        (W, "u1"): {"entered": [segment_id], "exited": []}
    }
    result = await store.apply([event("u1", "e3", 20 * S, plan="free")])
    assert result.segment_moves[(W, "u1")].exited == (segment_id,)
    result = await store.apply([event("u1", "late", 15 * S, plan="pro")])  # loses: no move
    assert result.segment_moves == {}
    assert await members(store, segment_id) == []


async def test_given_a_rewrite_of_the_same_value_then_no_move_and_membership_kept(
    store: Store,
) -> None:
    """A ready segment whose properties keep their values is not decided again (SQLite skips
    it): the same value written again moves nothing, a value of another type that compares
    equal (True and 1) does."""
    one = {"property": "n", "op": "eq", "value": 1}
    in_pro, in_one = await new_segment(store, PRO), await new_segment(store, one)
    await store.apply([event("u1", "e1", 10 * S, plan="pro", n=1)])
    result = await store.apply([event("u1", "e2", 20 * S, plan="pro", n=1, other="x")])
    assert result.segment_moves == {}
    assert await members(store, in_pro) == ["u1"] and await members(store, in_one) == ["u1"]
    result = await store.apply([event("u1", "e3", 30 * S, n=True)])
    assert {k: v.view() for k, v in result.segment_moves.items()} == {
        (W, "u1"): {"entered": [], "exited": [in_one]}
    }
    result = await store.apply([event("u1", "e4", 40 * S, n=1.0)])  # a number equal to 1
    assert result.segment_moves[(W, "u1")].entered == (in_one,)
    assert await members(store, in_one) == await matching(store, one) == ["u1"]


async def test_given_a_segment_then_the_change_feed_says_which_segments_each_change_entered(
    store: Store,
) -> None:
    """A change carries its contact's entries and exits (SPEC 2.10), on the contact's last change
    of the batch: the one that left the profile as the segment judged it."""
    segment_id = await new_segment(store, PRO)
    await store.apply(
        [
            event("u1", "e1", 10 * S, plan="free"),
            event("u1", "e2", 11 * S, plan="pro"),
            event("u2", "e3", 10 * S, plan="free"),
        ]
    )
    await store.apply([event("u1", "e4", 20 * S, plan="free", tier="x")])
    changes = {c.event_id: c.view()["segments"] for c in await store.read_changes(W, None, 100)}
    assert changes == {
        "e1": {"entered": [], "exited": []},
        "e2": {"entered": [segment_id], "exited": []},
        "e3": {"entered": [], "exited": []},
        "e4": {"entered": [], "exited": [segment_id]},
    }


async def test_given_a_member_when_deleted_or_erased_then_it_leaves(store: Store) -> None:
    segment_id = await new_segment(store, PRO)
    await store.apply([event("a", "e1", 10 * S, plan="pro"), event("b", "e2", 10 * S, plan="pro")])
    await store.apply([event("a", "d1", 20 * S, kind="delete")])
    erasure = Erasure("er1", W, "b", 30 * S, suppress=False)
    await store.request_erasure(erasure)
    await store.erase_contacts([erasure])
    assert await members(store, segment_id) == []


async def test_given_a_deleted_segment_then_gone_with_its_members(store: Store) -> None:
    segment_id = await new_segment(store, PRO)
    await store.apply([event("a", "e1", 10 * S, plan="pro")])
    assert isinstance(store, Segments)
    assert await store.delete_segment(W, segment_id)
    assert await store.get_segment(W, segment_id) is None
    assert await store.segment_members(W, segment_id, None, 10) == ([], None)
    assert not await store.delete_segment(W, segment_id)
    assert (await store.apply([event("b", "e2", 20 * S, plan="pro")])).segment_moves == {}


async def test_given_creations_at_once_then_the_workspace_limit_holds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a limit of 3 segments per workspace, one there already
    monkeypatch.setattr(segments, "MAX_SEGMENTS_PER_WORKSPACE", 3)
    await segments.create(store, W, {"name": "first", "filter": PRO})
    # When 12 more are created at the same moment
    made = await asyncio.gather(
        *(segments.create(store, W, {"name": f"s{i}", "filter": PRO}) for i in range(12)),
        return_exceptions=True,
    )
    # Then 2 are made and the others refused as over the limit, whatever the interleaving
    assert sum(isinstance(m, Segment) for m in made) == 2
    refused = [m for m in made if not isinstance(m, Segment)]
    assert all(isinstance(m, ValidationFailed) for m in refused), refused
    assert len(await segments.of(store).list_segments(W)) == 3
    # And another workspace has its own limit
    assert isinstance(await segments.create(store, "other", {"name": "x", "filter": PRO}), Segment)


FILTERS = [
    PRO,
    {
        "any": [
            {"property": "n", "op": "gte", "value": 3},
            {"property": "tags", "op": "contains", "value": "x"},
        ]
    },
    {"not": {"property": "plan", "op": "exists"}},
    {
        "all": [
            {"property": "$updated_at", "op": "gt", "value": 50},
            {"property": "plan", "op": "ne", "value": "free"},
        ]
    },
    {"all": []},
    {"property": "n", "op": "eq", "value": 1},
    # Ranges on one number property, decided together by bisection once ready (with ties, an
    # int against a float, and values that are no number: booleans, a missing property).
    {"property": "n", "op": "gt", "value": 1},
    {"property": "n", "op": "gte", "value": 1.0},
    {"property": "n", "op": "gt", "value": 2.5},
    {"property": "n", "op": "lt", "value": 2.5},
    {"property": "n", "op": "lte", "value": 1},
    {"any": [{"property": "n", "op": "gte", "value": 5}]},
    # Values Python's == takes for one another (1 == 1.0 == True, 0 == -0.0 == False, as items
    # of a list too): a filter tells the booleans from the numbers (filters.py).
    {"property": "n", "op": "eq", "value": True},
    {"property": "n", "op": "in", "value": [False, "x"]},
    {"property": "n", "op": "ne", "value": 0},
    {"property": "tags", "op": "contains", "value": True},
    {"property": "tags", "op": "contains", "value": 1},
]


def random_event(rng: random.Random, i: int) -> Event:
    contact = f"c{rng.randrange(8)}"
    ts = rng.randrange(1, 100) * S
    roll = rng.random()
    if roll < 0.1:
        return event(contact, f"e{i}", ts, W, kind="delete")
    props: dict[str, Any] = {}
    ops: dict[str, Any] = {}
    if rng.random() < 0.6:
        props["plan"] = rng.choice(["pro", "free", None])
    if rng.random() < 0.4:
        props["n"] = rng.choice([1, 5, 2.5, 1.0, True, 0, -0.5, 7, False, -0.0, 0.0])
        if rng.random() < 0.5:
            ops["n"] = "add"
    if rng.random() < 0.3:
        props["tags"] = [rng.choice(["x", "y", 1, True, 1.0, 0, False])]
        ops["tags"] = rng.choice(["append", "remove"])
    built = event(contact, f"e{i}", ts, W, **props)
    return built if not ops else Event(**{**_fields(built), "ops": ops})


def _fields(e: Event) -> dict[str, Any]:
    return {name: getattr(e, name) for name in e.__struct_fields__}


# Without a filter on the last update, a store may decide an update from its plan alone.
NOT_ON_UPDATED = [raw for raw in FILTERS if "$updated_at" not in str(raw)]


@pytest.mark.parametrize(
    ("seed", "filters"),
    [(seed, FILTERS) for seed in range(4)] + [(seed, NOT_ON_UPDATED) for seed in range(4, 7)],
)
async def test_given_random_event_sequences_then_members_equal_the_filters_answer(
    store: Store, seed: int, filters: list[dict[str, Any]]
) -> None:
    rng = random.Random(seed)
    await store.apply([random_event(rng, i) for i in range(10)])
    # Some segments created before the rest of the events, backfilled between batches.
    assert isinstance(store, Segments)
    ids = []
    for raw in filters:
        segment_id = f"seg_{uuid.uuid4().hex[:8]}"
        await store.create_segment(Segment(segment_id, W, "s", f(raw), 1))
        ids.append(segment_id)
    i = 10
    for _ in range(12):
        batch = [random_event(rng, i + k) for k in range(rng.randrange(1, 6))]
        i += len(batch)
        await store.apply(batch)
        for segment_id in ids:
            await store.backfill_segment(W, segment_id, 3)
    for segment_id in ids:
        while not await store.backfill_segment(W, segment_id, 3):
            pass
    for _ in range(10):
        batch = [random_event(rng, i + k) for k in range(rng.randrange(1, 6))]
        i += len(batch)
        await store.apply(batch)
        for raw, segment_id in zip(filters, ids, strict=True):
            assert await members(store, segment_id) == await matching(store, raw), raw


async def test_given_a_backfill_and_appliers_at_once_then_members_equal_the_filters_answer(
    backend: StoreBackend,
) -> None:
    """The backfill's chunks and the applies decide the same contacts at the same time (on
    PostgreSQL from two store instances, as two processes would): none of them leaves a
    membership that an other one's change made wrong."""
    import asyncio

    store = backend.store
    other = await backend.open_another()
    rng = random.Random(11)
    await store.apply(
        [event(f"c{i:03d}", f"s{i}", S, W, plan=rng.choice(["pro", "free"])) for i in range(120)]
    )
    assert isinstance(store, Segments)
    segment_id = f"seg_{uuid.uuid4().hex[:8]}"
    await store.create_segment(Segment(segment_id, W, "pro", f(PRO), 1))

    async def backfill() -> None:
        while not await store.backfill_segment(W, segment_id, 7):
            await asyncio.sleep(0)

    async def apply() -> None:
        for b in range(15):
            batch = [
                event(
                    f"c{rng.randrange(120):03d}",
                    f"u{b}-{k}",
                    (2 + b) * S + k,
                    W,
                    plan=rng.choice(["pro", "free", None]),
                )
                for k in range(10)
            ]
            await other.apply(batch)
            await asyncio.sleep(0)

    await asyncio.gather(backfill(), apply())
    assert await members(store, segment_id) == await matching(store, PRO)
