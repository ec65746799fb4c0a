"""The delivery claim on PostgreSQL reads only what it claims (postgres_destinations.HEADS):
20,000 pending deliveries of 3,000 contacts, whose heads wait for a retry, so every other row is
due but waits behind its contact's head. The claim walks the due heads' index and reads none of
the rows waiting behind them (before: all 14,000, 40-57 ms)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from profilehook.stores.destinations import Destination, NewDelivery
from tests.support import POSTGRES_URL, drop_schema, postgres_url, require_server, unique_schema

T0 = 1_700_000_000_000_000


@pytest.fixture(scope="module")
def loaded_schema() -> Iterator[str]:
    require_server(POSTGRES_URL, 5432)
    from profilehook.stores.postgres import PostgresStore

    schema = unique_schema()

    async def load() -> None:
        store = PostgresStore(postgres_url(schema))
        await store.open()
        for k in range(2):
            d = Destination(f"d{k}", "w", "https://example.com/h", "whsec_eA==", T0)
            await store.create_destination(d, 50)
            cursor = None
            for start in range(0, 10_000, 2_000):
                rows = [
                    NewDelivery(f"ch{i}", str(i + 1), f"c{i % 3000}", T0 + i, b"{}")
                    for i in range(start, start + 2_000)
                ]
                end = str(start + 2_000)
                assert await store.enqueue_deliveries(f"d{k}", cursor, end, rows, T0)
                cursor = end
        # Each contact's head failed once and waits for its retry.
        heads = await store.claim_deliveries("w", T0, T0 + 30_000_000, 10_000)
        assert len(heads) == 6_000
        from profilehook.stores.destinations import Finished

        await store.finish_deliveries(
            "w",
            T0,
            [Finished(h.destination_id, h.position, False, T0 + 10**9, 500) for h in heads],
        )
        await store.close()

    asyncio.run(load())
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'ANALYZE "{schema}".deliveries')
    yield schema
    drop_schema(schema)


def test_the_claim_reads_the_due_heads_only(loaded_schema: str) -> None:
    import psycopg

    from profilehook.stores import postgres_destinations

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{loaded_schema}"')
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN ANALYZE " + postgres_destinations._CLAIMABLE, (T0 + 1, [], T0 + 1, 500)
            )
        )
    assert "deliveries_heads_due" in plan, plan
    assert "Sort" not in plan, plan
    read = [
        int(n) for n in re.findall(r"Index Scan using deliveries_heads_due.*rows=(\d+) loops", plan)
    ]
    assert read == [0], plan  # none due: every head waits for its retry


async def test_a_claim_still_gives_every_contacts_next_change_once_the_head_is_done(
    loaded_schema: str,
) -> None:
    """Heads move on: when a head is delivered, its contact's next row is claimable; and a row
    enqueued for a contact with nothing pending is claimable at once."""
    from profilehook.stores.postgres import PostgresStore

    store = PostgresStore(postgres_url(loaded_schema))
    await store.open()
    try:
        later = T0 + 10**9
        due = await store.claim_deliveries("w2", later, later + 30_000_000, 10)
        assert len(due) == 10 and all(d.attempts == 1 for d in due)
        first = due[0]
        assert await store.finish_delivery(
            first.destination_id, first.position, "w2", later, delivered=True, status=200
        )
        nxt = await store.claim_deliveries("w3", later, later + 30_000_000, 10_000)
        mine = [
            d
            for d in nxt
            if (d.destination_id, d.contact_id) == (first.destination_id, first.contact_id)
        ]
        assert [d.position for d in mine] == [first.position + 3000]
        found = await store.get_destination("w", "d0")
        assert found is not None
        fresh = NewDelivery("chx", "10001", "brand-new", T0, b"{}")
        assert await store.enqueue_deliveries("d0", found.cursor, "10001", [fresh], later)
        got = await store.claim_deliveries("w4", later, later + 30_000_000, 10_000)
        assert [d.change_id for d in got] == ["chx"]
    finally:
        await store.close()


async def test_deliveries_from_before_the_heads_are_claimable_after_the_migration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The migration flags each contact's earliest pending row of an existing database."""
    require_server(POSTGRES_URL, 5432)
    import psycopg

    from profilehook.stores import postgres as postgres_module

    schema = unique_schema()
    try:
        with monkeypatch.context() as old_code:
            heads = postgres_module.MIGRATIONS.index(postgres_module.postgres_destinations.HEADS)
            old_code.setattr(postgres_module, "MIGRATIONS", postgres_module.MIGRATIONS[:heads])
            old = postgres_module.PostgresStore(postgres_url(schema))
            await old.open()
            d = Destination("d0", "w", "https://example.com/h", "whsec_eA==", T0)
            await old.create_destination(d, 50)
            await old.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            for position, contact, status in [
                (1, "a", "delivered"),
                (2, "a", "pending"),
                (3, "a", "pending"),
                (4, "b", "pending"),
            ]:
                conn.execute(
                    "INSERT INTO deliveries (destination_id, position, change_id, cursor,"
                    " contact_id, applied_us, payload, status, attempts, next_attempt_us,"
                    " updated_us) VALUES ('d0', %s, %s, %s, %s, %s, '{}', %s, 0, %s, %s)",
                    (position, f"ch{position}", str(position), contact, T0, status, T0, T0),
                )
        store = postgres_module.PostgresStore(postgres_url(schema))
        await store.open()
        try:
            claimed = await store.claim_deliveries("w", T0, T0 + 30_000_000, 10)
            assert [d.position for d in claimed] == [2, 4]
        finally:
            await store.close()
    finally:
        drop_schema(schema)
