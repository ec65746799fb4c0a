"""The history retention contract (``ProfileStore.purge_history``): what is purged is folded into
per-contact snapshots, profiles do not change, ``rebuild`` still reproduces them exactly, and
last-writer-wins keeps holding against what was purged. Every backend passes this one suite
(tests/store_backends.py: memory, SQLite, PostgreSQL).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from profilehook.events import Event
from profilehook.stores.base import Contact, ProfileStore
from profilehook.stores.memory import MemoryStore
from tests.store_backends import S, StoreBackend
from tests.support import event


@pytest.fixture
def store(backend: StoreBackend) -> ProfileStore:
    return backend.store


async def profiles(store: ProfileStore, workspace: str = "acme") -> dict[str, Contact]:
    found: dict[str, Contact] = {}
    after = None
    while True:
        page, after = await store.contacts_page(workspace, after, 100)
        found.update((c.contact_id, c) for c in page)
        if after is None:
            return found


async def purge_all(store: ProfileStore, before_us: int, limit: int) -> int:
    total = 0
    while purged := await store.purge_history(before_us, limit):
        total += purged
    return total


def random_history(seed: int, count: int = 300) -> list[Event]:
    """Sets, unsets, deletes and ties of time over a few contacts and properties."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        contact = f"c{rng.randrange(6)}"
        ts_us = rng.randrange(1, 40) * S  # many events share a time: event_ids decide
        if rng.random() < 0.06:
            events.append(event(contact, f"e{i:04d}", ts_us, kind="delete"))
            continue
        properties = {
            f"p{rng.randrange(5)}": rng.choice([None, i, f"v{i}", {"n": i}, [i, "x"], True])
            for _ in range(rng.randrange(1, 4))
        }
        events.append(event(contact, f"e{i:04d}", ts_us, **properties))
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_given_a_history_when_its_older_part_is_purged_then_profiles_stay_and_rebuild_reproduces_them(
    store: ProfileStore, seed: int
) -> None:
    events = random_history(seed)
    rng = random.Random(seed)
    shuffled = events[:]
    rng.shuffle(shuffled)
    for start in range(0, len(shuffled), 37):  # applied in several batches, in any order
        await store.apply(shuffled[start : start + 37])
    before = await profiles(store)
    cutoff = 20 * S

    purged = await purge_all(store, cutoff, limit=23)  # many small batches

    assert purged == sum(1 for e in events if e.ts_us < cutoff)
    assert await profiles(store) == before  # purging never touches a profile
    await store.rebuild()
    assert await profiles(store) == before  # the snapshots hold what the purge took


async def test_given_everything_purged_when_rebuilt_then_every_profile_comes_back_from_the_snapshots(
    store: ProfileStore,
) -> None:
    await store.apply(
        [
            event("u1", "a", 1 * S, plan="free", seats=1),
            event("u1", "b", 2 * S, plan="pro", seats=None),
            event("u2", "c", 3 * S, plan="trial"),
            event("u2", "d", 4 * S, kind="delete"),
            event("u3", "e", 5 * S, plan="gone"),
            event("u3", "f", 6 * S, kind="delete"),
            event("u3", "g", 7 * S, colour="red"),
        ]
    )
    before = await profiles(store)
    assert set(before) == {"u1", "u3"}

    assert await purge_all(store, 100 * S, limit=1000) == 7
    await store.rebuild()

    assert await profiles(store) == before
    assert await store.get_contact("acme", "u2") is None  # its delete is in the snapshot


async def test_given_purged_events_when_the_history_and_the_events_are_read_then_only_what_is_left_shows(
    store: ProfileStore,
) -> None:
    await store.apply([event("u1", f"e{i}", i * S, n=i) for i in range(1, 11)])

    assert await store.purge_history(6 * S, 1000) == 5

    history = await store.history("acme", "u1", None, 100)
    assert [r.event.event_id for r in history] == ["e10", "e9", "e8", "e7", "e6"]
    assert await store.get_event("acme", "e5") is None  # purged: unknown (GET -> 404)
    kept = await store.get_event("acme", "e6")
    assert kept is not None and kept.status == "applied"


async def test_given_a_snapshot_when_a_late_event_older_than_it_arrives_then_it_loses_now_and_after_rebuild(
    store: ProfileStore,
) -> None:
    await store.apply(
        [
            event("u1", "a", 10 * S, plan="pro"),
            event("u1", "b", 11 * S, kind="delete"),
            event("u1", "c", 12 * S, colour="blue"),
            event("u1", "d", 30 * S, size="L"),
        ]
    )
    await purge_all(store, 20 * S, limit=1000)
    before = await profiles(store)
    assert before["u1"].properties == {"colour": "blue", "size": "L"}

    # Accepted just inside the window and applied after the purge passed its time: older than
    # the snapshot's colour, and older than the contact's delete.
    await store.apply(
        [event("u1", "late1", 5 * S, colour="green"), event("u1", "late2", 10 * S, plan="x")]
    )
    assert await profiles(store) == before
    await store.rebuild()
    assert await profiles(store) == before
    await purge_all(store, 20 * S, limit=1000)  # the late ones fold into the snapshot too
    await store.rebuild()
    assert await profiles(store) == before


async def test_given_a_purged_event_when_it_is_applied_again_then_nothing_changes(
    store: ProfileStore,
) -> None:
    first = event("u1", "a", 10 * S, plan="pro")
    await store.apply([first, event("u1", "b", 30 * S, seats=3)])
    await purge_all(store, 20 * S, limit=1000)
    before = await profiles(store)

    result = await store.apply([first])  # a re-delivery after the purge: recorded anew

    assert result.written == 0
    assert await profiles(store) == before
    await purge_all(store, 20 * S, limit=1000)
    await store.rebuild()
    assert await profiles(store) == before


async def test_given_a_purged_add_when_the_log_delivers_it_again_then_it_is_refused_not_counted_twice(
    store: ProfileStore,
) -> None:
    """A log redelivered after a long outage: the ``add`` whose record retention purged would
    otherwise count twice (its event_id is no longer known). It is kept ``failed``, saying why."""
    logins = Event("acme", "a", "u1", 10 * S, {"logins": 1}, ops={"logins": "add"})
    later = Event("acme", "a2", "u1", 12 * S, {"logins": 1}, ops={"logins": "add"})
    await store.apply([logins, later, event("u1", "b", 30 * S, plan="pro")])
    assert await purge_all(store, 20 * S, limit=1000) == 2

    again = await store.apply([logins, event("u1", "c", 40 * S, seats=3)])

    contact = await store.get_contact("acme", "u1")
    assert contact is not None and contact.properties == {"logins": 2, "plan": "pro", "seats": 3}
    await store.rebuild()
    assert await store.get_contact("acme", "u1") == contact
    assert (again.applied, again.refused, again.duplicates) == (1, 1, 0)
    record = await store.get_event("acme", "a")
    assert record is not None and record.status == "failed"
    assert record.error is not None and record.error.startswith("too_old: ")
    assert "PROFILEHOOK_HISTORY_RETENTION_DAYS" in record.error
    # Delivered once more, the failed record is recognised: a repeat, still not applied.
    thrice = await store.apply([logins])
    assert (thrice.applied, thrice.refused, thrice.duplicates) == (0, 0, 1)
    contact = await store.get_contact("acme", "u1")
    assert contact is not None and contact.properties["logins"] == 2


async def test_given_a_purge_when_a_never_seen_event_newer_than_the_purged_arrives_then_it_applies(
    store: ProfileStore,
) -> None:
    await store.apply([event("u1", "a", 10 * S, plan="pro"), event("u1", "b", 30 * S, seats=1)])
    await purge_all(store, 20 * S, limit=1000)

    late = await store.apply([event("u2", "x", 11 * S, plan="free")])  # after 10 s: not purged

    assert (late.applied, late.refused) == (1, 0)
    contact = await store.get_contact("acme", "u2")
    assert contact is not None and contact.properties == {"plan": "free"}


async def test_given_failed_events_when_purged_then_they_are_forgotten_and_never_applied(
    store: ProfileStore,
) -> None:
    bad = event("u1", "bad", 1 * S, plan="broken")
    await store.record_failure(bad, "ValueError: no")
    await store.apply([event("u1", "good", 2 * S, plan="ok")])

    assert await purge_all(store, 10 * S, limit=1000) == 2
    await store.rebuild()

    assert await store.get_event("acme", "bad") is None
    contact = await store.get_contact("acme", "u1")
    assert contact is not None and contact.properties == {"plan": "ok"}


async def test_given_nothing_older_than_the_cutoff_when_purging_then_nothing_is_purged(
    store: ProfileStore,
) -> None:
    await store.apply([event("u1", "a", 10 * S, plan="pro")])

    assert await store.purge_history(10 * S, 1000) == 0  # at the cut-off: kept
    assert await store.purge_history(0, 1000) == 0
    assert await store.get_event("acme", "a") is not None


async def test_given_two_processes_purging_at_once_when_done_then_each_event_is_folded_once(
    backend: StoreBackend,
) -> None:
    store = backend.store
    other = await backend.open_another()
    events = random_history(7, count=600)
    await store.apply(events)
    before = await profiles(store)

    totals = await asyncio.gather(
        purge_all(store, 25 * S, limit=40), purge_all(other, 25 * S, limit=40)
    )

    assert sum(totals) == sum(1 for e in events if e.ts_us < 25 * S)
    await store.rebuild()
    assert await profiles(store) == before


async def test_given_applying_and_purging_at_once_when_both_are_done_then_rebuild_gives_the_profiles(
    backend: StoreBackend,
) -> None:
    """An applier (another process) applies new events and re-delivers old ones while a purger
    takes the old history: nothing waits forever, and the profiles are what rebuild gives."""
    store = backend.store
    applier = await backend.open_another()
    events = random_history(11, count=900)
    old = [e for e in events if e.ts_us < 20 * S]
    await store.apply(old)

    async def apply_the_rest() -> None:
        rest = [e for e in events if e.ts_us >= 20 * S]
        for start in range(0, len(rest), 30):
            await applier.apply(rest[start : start + 30] + old[start : start + 5])  # + repeats

    await asyncio.wait_for(
        asyncio.gather(apply_the_rest(), purge_all(store, 20 * S, limit=25)), timeout=60
    )
    await purge_all(store, 20 * S, limit=1000)  # what came again after the purge passed
    before = await profiles(store)
    await store.rebuild()
    reference = MemoryStore()
    await reference.apply(events)  # the same events, applied once in one batch

    assert await profiles(store) == before == await profiles(reference)
    assert await store.history("acme", "c0", (20 * S, ""), 10) == []
