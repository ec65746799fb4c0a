"""The change feed's contract (``ChangeFeed``, SPEC 2.10): ``apply`` records one change per
applied event that changed a profile, with each property's old and new value, in its
transaction; none for an event that changed nothing; the feed serves them in apply order per
workspace from any cursor it handed out; retention purges them (an older cursor is expired);
an erasure removes the contact's. Every backend passes this one suite (tests/store_backends.py).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from profilehook.changes import Change
from profilehook.errors import CursorExpired, InvalidCursor
from profilehook.events import Event
from profilehook.stores.base import Erasure, Store
from tests.store_backends import S, StoreBackend
from tests.support import event


@pytest.fixture
def store(backend: StoreBackend) -> Store:
    return backend.store


def op(contact_id: str, event_id: str, ts_us: int, name: str, kind: str, arg: Any) -> Event:
    return Event(
        workspace="acme",
        event_id=event_id,
        contact_id=contact_id,
        ts_us=ts_us,
        properties={name: arg},
        ops={name: kind},  # type: ignore[dict-item]
    )


async def everything(store: Store, workspace: str = "acme", page: int = 3) -> list[Change]:
    """Every change of the workspace, read page by page from the start, following cursors."""
    found: list[Change] = []
    after = None
    while batch := await store.read_changes(workspace, after, page):
        found += batch
        after = batch[-1].cursor
    return found


def summary(changes: list[Change]) -> list[tuple[str, str, bool, dict[str, tuple[Any, Any]]]]:
    return [
        (
            c.contact_id,
            c.event_id,
            c.body.deleted,
            {n: (p.old, p.new) for n, p in c.body.properties.items()},
        )
        for c in changes
    ]


async def test_given_events_when_applied_then_each_change_says_old_and_new_per_property(
    store: Store,
) -> None:
    await store.apply([event("c1", "e1", 1 * S, plan="free", seats=1)])
    await store.apply([event("c1", "e2", 2 * S, plan="pro", seats=1)])

    changes = await everything(store)

    assert summary(changes) == [
        ("c1", "e1", False, {"plan": (None, "free"), "seats": (None, 1)}),
        ("c1", "e2", False, {"plan": ("free", "pro")}),  # seats set to what it was: no change
    ]
    view = changes[1].view()
    assert view["properties"] == {"plan": {"old": "free", "new": "pro"}}
    assert view["segments"] == {"entered": [], "exited": []}
    assert view["source"] == "api" and view["deleted"] is False
    assert view["applied_at"].endswith("Z")
    assert changes[0].change_id != changes[1].change_id


async def test_given_an_event_that_changes_nothing_then_it_makes_no_change(store: Store) -> None:
    await store.apply([event("c1", "e1", 5 * S, plan="pro")])
    await store.apply([event("c1", "e2", 6 * S, plan="pro")])  # the same value
    await store.apply([event("c1", "e3", 1 * S, plan="free")])  # late: a newer version wins
    await store.apply([event("c1", "e1", 5 * S, plan="pro")])  # a repeat
    await store.apply([event("c1", "e4", 7 * S, gone=None)])  # unsets what it never had

    assert [c.event_id for c in await everything(store)] == ["e1"]


async def test_given_a_delete_then_its_change_says_deleted_and_empties_each_property(
    store: Store,
) -> None:
    await store.apply([event("c1", "e1", 1 * S, plan="pro", seats=3)])
    await store.apply([event("c1", "e2", 2 * S, kind="delete")])
    await store.apply([event("c1", "e3", 3 * S, kind="delete")])  # nothing left to delete

    changes = await everything(store)
    assert summary(changes)[1:] == [
        ("c1", "e2", True, {"plan": ("pro", None), "seats": (3, None)}),
    ]


async def test_given_operations_then_changes_carry_the_folded_values(store: Store) -> None:
    await store.apply([op("c1", "e1", 1 * S, "n", "add", 2)])
    await store.apply(
        [op("c1", "e2", 2 * S, "n", "add", 3), op("c1", "e3", 3 * S, "t", "append", ["a"])]
    )
    await store.apply([op("c1", "e4", 4 * S, "t", "append", ["a"])])  # already there

    assert summary(await everything(store)) == [
        ("c1", "e1", False, {"n": (None, 2)}),
        ("c1", "e2", False, {"n": (2, 5)}),
        ("c1", "e3", False, {"t": (None, ["a"])}),
    ]


async def test_given_one_batch_then_it_makes_the_changes_of_its_events_applied_one_by_one(
    backend: StoreBackend,
) -> None:
    """The changes do not depend on the batching: events in any order (late ones, deletes,
    operations, several per contact) make the same changes in one batch as one batch each."""
    rng = random.Random(20)
    events = []
    for i in range(120):
        contact = rng.choice(["c1", "c2", "c3"])
        ts = rng.randint(1, 40) * S
        roll = rng.random()
        if roll < 0.1:
            events.append(event(contact, f"e{i:03d}", ts, kind="delete"))
        elif roll < 0.3:
            events.append(op(contact, f"e{i:03d}", ts, rng.choice("ab"), "add", rng.randint(1, 3)))
        else:
            values = {rng.choice("abc"): rng.choice([None, 1, "x", "y", 2.5]) for _ in range(2)}
            events.append(event(contact, f"e{i:03d}", ts, **values))
    one_by_one = backend.store
    for e in events:
        await one_by_one.apply([e])
    together = await backend.open_another()
    # Another workspace of the same data gets the same events in three batches.
    shifted = [
        Event(
            workspace="globex",
            event_id=e.event_id,
            contact_id=e.contact_id,
            ts_us=e.ts_us,
            properties=e.properties,
            kind=e.kind,
            ops=e.ops,
        )
        for e in events
    ]
    await together.apply(shifted[:50])
    await together.apply(shifted[50:51])
    await together.apply(shifted[51:])

    expected = summary(await everything(one_by_one, "acme"))
    assert expected  # the sequence does change profiles
    assert summary(await everything(together, "globex")) == expected
    # Replaying the changes onto nothing gives each profile.
    for contact in ("c1", "c2", "c3"):
        profile: dict[str, Any] = {}
        for change in await everything(one_by_one, "acme"):
            if change.contact_id != contact:
                continue
            for name, p in change.body.properties.items():
                assert profile.get(name) == p.old
                if p.new is None:
                    profile.pop(name, None)
                else:
                    profile[name] = p.new
        found = await one_by_one.get_contact("acme", contact)
        assert profile == ({} if found is None else found.properties)


async def test_given_cursors_then_pages_cover_every_change_once_in_apply_order(
    backend: StoreBackend,
) -> None:
    store = backend.store
    for i in range(10):
        await store.apply(
            [
                event(f"c{i}", f"e{i}", 1 * S, n=i),
                event(f"c{i}", f"g{i}", 1 * S, workspace="globex", n=i),
            ]
        )
    other = await backend.open_another()

    first = await other.read_changes("acme", None, 4)
    assert [c.event_id for c in first] == ["e0", "e1", "e2", "e3"]
    rest = await other.read_changes("acme", first[-1].cursor, 100)
    assert [c.event_id for c in rest] == [f"e{i}" for i in range(4, 10)]
    assert await other.read_changes("acme", rest[-1].cursor, 100) == []
    assert [c.workspace for c in await everything(other, "globex")] == ["globex"] * 10

    await store.apply([event("c0", "e10", 2 * S, n=10)])
    assert [c.event_id for c in await other.read_changes("acme", rest[-1].cursor, 100)] == ["e10"]


async def test_given_a_cursor_this_feed_never_issued_then_it_is_refused(store: Store) -> None:
    for cursor in ("x", "", "-1", "1.2.3", "\u0661"):  # an Arabic-Indic digit one
        with pytest.raises(InvalidCursor):
            await store.read_changes("acme", cursor, 10)


async def test_given_purged_changes_then_a_cursor_behind_them_is_expired(store: Store) -> None:
    await store.apply([event("c1", "e1", 1 * S, n=1)])
    await store.apply([event("c1", "e2", 2 * S, n=2)])
    first = (await store.read_changes("acme", None, 1))[0]
    await store.apply([event("c1", "e3", 3 * S, n=3)])
    old = await everything(store)

    purged = await store.purge_changes(old[1].applied_us + 1, 100)

    assert purged == 2  # e1 and e2 were applied before the cutoff
    with pytest.raises(CursorExpired):
        await store.read_changes("acme", first.cursor, 10)
    # From the newest purged on, and from the start, the feed goes on.
    assert [c.event_id for c in await store.read_changes("acme", old[1].cursor, 10)] == ["e3"]
    assert [c.event_id for c in await store.read_changes("acme", None, 10)] == ["e3"]
    assert [c.event_id for c in await store.read_changes("globex", None, 10)] == []


async def test_given_an_erased_contact_then_none_of_its_changes_remain(store: Store) -> None:
    await store.apply([event("c1", "e1", 1 * S, secret="MARKER"), event("c2", "e2", 1 * S, n=1)])
    await store.request_erasure(Erasure("era_1", "acme", "c1", 10 * S, False))

    await store.erase_contacts([Erasure("era_1", "acme", "c1", 10 * S, False)])

    assert [c.contact_id for c in await everything(store)] == ["c2"]


async def test_given_changes_after_the_erasure_time_then_they_go_too_and_the_new_profile_stays(
    store: Store,
) -> None:
    """SPEC 2.11: once an erasure is done nothing of the contact remains, changes included. A
    change of an event after the erasure's time T, applied before the eraser ran, goes as well:
    its ``old`` values are the erased profile's (here the MARKER). The new profile that event
    started stays (it is not the erased contact's data), and its later changes flow as usual."""
    await store.apply([event("c1", "e1", 1 * S, secret="MARKER")])
    await store.request_erasure(Erasure("era_1", "acme", "c1", 10 * S, False))
    await store.apply([event("c1", "e2", 20 * S, secret="NEW")])  # after T, before execution
    assert any("MARKER" in repr(c.body) for c in await everything(store))

    await store.erase_contacts([Erasure("era_1", "acme", "c1", 10 * S, False)])

    assert await everything(store) == []
    contact = await store.get_contact("acme", "c1")
    assert contact is not None and contact.properties["secret"] == "NEW"
    await store.apply([event("c1", "e3", 30 * S, secret="NEWER")])
    (after,) = await everything(store)
    assert after.body.properties["secret"].old == "NEW" and after.event_id == "e3"
