"""The delivery claim on SQLite reads only what it claims (sqlite_destinations.HEADS): a few
contacts with a long backlog each, their earliest changes leased, must not make every claim
walk the backlog waiting behind them. Before, it did: in scenario S (10 contacts changing ~170
times a second each) delivery fell to ~80 a second and the backlog grew without end. And a
file written before heads were kept (version 2) gets them at open."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from profilehook.stores.destinations import Destination, Finished, NewDelivery
from profilehook.stores.sqlite import SqliteStore

T0 = 1_700_000_000_000_000
CONTACTS = 10


async def loaded(path: Path, per_contact: int) -> SqliteStore:
    """A store whose destination has ``per_contact`` pending changes for each of 10 contacts."""
    store = SqliteStore(path)
    await store.open()
    await store.create_destination(
        Destination("d1", "acme", "https://example.com/h", "whsec_eA==", T0), 50
    )
    total = per_contact * CONTACTS
    rows = [NewDelivery(f"ch{i}", str(i), f"c{i % CONTACTS}", T0 + i, b"{}") for i in range(total)]
    assert await store.enqueue_deliveries("d1", None, str(total), rows, T0)
    return store


async def steps(store: SqliteStore, call: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
    """SQLite's virtual machine steps (in thousands) that the destinations file's writer took
    for ``call``, and what it returned: work done, counted, not timed."""
    db = store.destinations_db
    write = db.write
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0

    async def counting_write(job: Callable[[sqlite3.Connection], Any]) -> Any:
        def counted_job(conn: sqlite3.Connection) -> Any:
            conn.set_progress_handler(tick, 1_000)
            try:
                return job(conn)
            finally:
                conn.set_progress_handler(None, 0)

        return await write(counted_job)

    db.write = counting_write  # type: ignore[method-assign]
    try:
        answer = await call()
    finally:
        del db.write
    return counted[0], answer


async def test_a_claim_does_not_read_the_backlog_behind_leased_heads(tmp_path: Path) -> None:
    work = {}
    for per_contact in (200, 2_000):
        store = await loaded(tmp_path / f"{per_contact}.sqlite3", per_contact)
        try:
            heads = await store.claim_deliveries("w1", T0, T0 + 10**9, 500)
            assert sorted(d.change_id for d in heads) == [f"ch{i}" for i in range(CONTACTS)]
            # Everything else waits behind those leased heads: nothing to claim, cheaply.
            work[per_contact], again = await steps(
                store, lambda s=store: s.claim_deliveries("w2", T0, T0 + 10**9, 500)
            )
            assert again == []
        finally:
            await store.close()
    # Ten times the backlog: about the same work (before: ten times as much).
    assert work[2_000] <= 2 * work[200] + 5, work


async def test_a_finished_head_hands_on_to_its_contacts_next_change(tmp_path: Path) -> None:
    store = await loaded(tmp_path / "p.sqlite3", 3)
    try:
        order: dict[str, list[str]] = {}
        for turn in range(4):
            claimed = await store.claim_deliveries("w", T0 + turn, T0 + 10**9, 500)
            for d in claimed:
                order.setdefault(d.contact_id, []).append(d.change_id)
            # Half delivered, half failed for good: either way the next change is the head.
            await store.finish_deliveries(
                "w",
                T0 + turn,
                [
                    Finished(d.destination_id, d.position, i % 2 == 0, None, 500)
                    for i, d in enumerate(claimed)
                ],
            )
        assert order == {
            f"c{k}": [f"ch{k}", f"ch{k + CONTACTS}", f"ch{k + 2 * CONTACTS}"]
            for k in range(CONTACTS)
        }
    finally:
        await store.close()


async def test_a_version_2_file_gets_its_heads_at_open(tmp_path: Path) -> None:
    store = await loaded(tmp_path / "p.sqlite3", 3)
    path = store.destinations_db.path
    (first,) = [
        d for d in await store.claim_deliveries("w", T0, T0 + 10**9, 500) if d.contact_id == "c0"
    ]
    await store.finish_deliveries("w", T0, [Finished("d1", first.position, True, None, 204)])
    await store.close()
    as_version_2(path)

    store = SqliteStore(tmp_path / "p.sqlite3")
    await store.open()
    try:
        # Leases ran out: the heads are c0's second change and every other contact's first.
        claimed = await store.claim_deliveries("w2", T0 + 2 * 10**9, T0 + 3 * 10**9, 500)
        assert sorted(d.change_id for d in claimed) == sorted(
            ["ch10"] + [f"ch{k}" for k in range(1, CONTACTS)]
        )
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "deliveries_heads_due" in indexes and "deliveries_due" not in indexes
    conn.close()


def as_version_2(path: Path) -> None:
    """The destinations file at ``path`` as version 2 left it: no head column, the due index."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP INDEX deliveries_heads_due")
        conn.execute("ALTER TABLE deliveries DROP COLUMN head")
        conn.execute(
            "CREATE INDEX deliveries_due ON deliveries (next_attempt_us, position)"
            " WHERE status = 'pending'"
        )
        conn.execute("PRAGMA user_version = 2")
