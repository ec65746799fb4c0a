"""The change feed with several appliers on one PostgreSQL (README, Getting changes out): a
change's cursor comes from a sequence, and transactions commit in any order, so a reader
following cursors must never pass a change whose transaction commits later with a smaller
position. The store serves only transactions older than every one still running.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from profilehook.changes import Change
from profilehook.stores.base import Store
from tests.store_backends import S, StoreBackend
from tests.support import event


async def read_all(
    store: Store, after: str | None, limit: int = 50
) -> tuple[list[Change], str | None]:
    found: list[Change] = []
    while batch := await store.read_changes("acme", after, limit):
        found += batch
        after = batch[-1].cursor
    return found, after


async def count_changes(store: Store) -> int:
    async def count(conn: Any) -> int:
        cur = await conn.execute("SELECT count(*) FROM changes")
        row = await cur.fetchone()
        return int(row[0])

    return await store._run(count)  # type: ignore[attr-defined, no-any-return]


async def test_given_an_apply_not_yet_committed_then_a_later_one_waits_and_no_reader_passes_it(
    postgres_store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from profilehook.stores import postgres

    store = postgres_store_backend.store
    other = await postgres_store_backend.open_another()
    inserted, release = asyncio.Event(), asyncio.Event()
    insert = postgres._insert_changes

    async def held(conn: Any, changes: Any, applied_us: int) -> None:
        await insert(conn, changes, applied_us)
        if any(r.event_id == "slow" for r in changes.records()):
            inserted.set()  # its changes have their positions; not committed yet
            await release.wait()

    monkeypatch.setattr(postgres, "_insert_changes", held)
    slow = asyncio.create_task(store.apply([event("c1", "slow", 1 * S, n=1)]))
    await inserted.wait()
    fast = asyncio.create_task(other.apply([event("c2", "fast", 1 * S, n=2)]))
    await asyncio.sleep(0.3)

    assert not fast.done()  # it takes its positions once the earlier apply has committed
    seen, cursor = await read_all(other, None)
    assert seen == [] and cursor is None

    release.set()
    await slow
    await fast
    seen, cursor = await read_all(other, cursor)
    assert [c.event_id for c in seen] == ["slow", "fast"]
    assert [c.cursor for c in seen] == ["1", "2"]


async def test_given_concurrent_appliers_then_a_reader_following_cursors_sees_every_change_once(
    postgres_store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four appliers on one contact set, transactions of random length, a reader following
    cursors all along: every change once, each contact's in the order they were applied."""
    from profilehook.stores import postgres

    insert = postgres._insert_changes
    rng = random.Random(7)

    async def slowed(conn: Any, changes: Any, applied_us: int) -> None:
        await insert(conn, changes, applied_us)
        await asyncio.sleep(rng.random() * 0.05)  # commits in another order than seq

    monkeypatch.setattr(postgres, "_insert_changes", slowed)
    appliers = [postgres_store_backend.store] + [
        await postgres_store_backend.open_another() for _ in range(3)
    ]
    reader = await postgres_store_backend.open_another()
    done = asyncio.Event()
    seen: list[Change] = []

    async def apply(index: int, applier: Store) -> None:
        for i in range(40):
            contact = f"c{rng.randrange(6)}"
            # increasing times per contact: each event changes its contact's n
            await applier.apply(
                [event(contact, f"a{index}-{i:03d}", (i * 10 + index) * S, n=i * 10 + index)]
            )

    async def read() -> None:
        cursor = None
        total = None
        while total is None or len(seen) < total:
            if total is None and done.is_set():
                total = await count_changes(reader)
            batch, cursor = await read_all(reader, cursor, 7)
            seen.extend(batch)
            await asyncio.sleep(0.005)

    reading = asyncio.create_task(read())
    await asyncio.gather(*(apply(i, a) for i, a in enumerate(appliers)))
    done.set()
    await asyncio.wait_for(reading, 10)

    every, _ = await read_all(reader, None)
    assert len(every) == len({c.change_id for c in every})
    assert [c.change_id for c in seen] == [c.change_id for c in every]  # once each, in order
    # Per contact, the changes chain: each one's old value is the previous one's new value.
    last: dict[str, Any] = {}
    for change in seen:
        n = change.body.properties.get("n")
        if n is None:
            continue
        assert last.get(change.contact_id) == n.old
        last[change.contact_id] = n.new
    assert len(seen) > 50
