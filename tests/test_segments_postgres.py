"""Segments on PostgreSQL: what the membership table costs every apply (issue 19)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.segments_migrated import then_the_members_carried_over
from tests.support import POSTGRES_URL, drop_schema, postgres_url, require_server, unique_schema


@pytest.mark.slow
async def test_given_a_migrated_store_then_memberships_have_their_key_as_only_index() -> None:
    """Every membership an apply moves writes each index of segment_members at a random page;
    nothing reads memberships by contact alone, so the key is the only index kept."""
    require_server(POSTGRES_URL, 5432)
    from profilehook.stores.postgres import PostgresStore

    schema = unique_schema()
    store = PostgresStore(postgres_url(schema))
    await store.open()
    try:

        async def indexes(conn: object) -> list[str]:
            cur = await conn.execute(  # type: ignore[attr-defined]
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s"
                " AND tablename = 'segment_members'",
                (schema,),
            )
            return [row[0] for row in await cur.fetchall()]

        found = await store._run(indexes)
        assert len(found) == 1, found
        assert "(segment_key, contact_id)" in found[0]
    finally:
        await store.close()
        drop_schema(schema)


@pytest.mark.slow
async def test_given_memberships_keyed_by_segment_id_when_migrated_then_they_are_kept() -> None:
    """A store migrated before memberships were keyed by the segment's integer: its segments
    are numbered and their members copied; the applier, the backfill and the pages of
    members then work on the new key, each workspace's segment its own."""
    require_server(POSTGRES_URL, 5432)
    from profilehook.events import Event
    from profilehook.stores import postgres
    from profilehook.stores.postgres import PostgresStore

    def events(workspace: str, plans: dict[str, str], ts_us: int) -> list[Event]:
        return [
            Event(workspace, f"e-{workspace}-{c}-{ts_us}", c, ts_us + i, {"plan": p})
            for i, (c, p) in enumerate(plans.items())
        ]

    pro = '{"property":"plan","op":"eq","value":"pro"}'
    schema = unique_schema()
    # Given a store as the migration before left it, with a ready segment and its members in
    # one workspace and a building segment of the same id in another
    store = PostgresStore(postgres_url(schema))
    await store.open()
    try:
        await store.apply(events("a", {"c1": "pro", "c2": "free", "c3": "pro"}, 1))
        await store.apply(events("b", {"c1": "pro"}, 1))

        async def seed(conn: Any) -> None:
            await conn.execute(
                "DROP TABLE segment_members; DROP INDEX segments_by_key;"
                " ALTER TABLE segments DROP COLUMN segment_key;"
                " CREATE TABLE segment_members (workspace text NOT NULL,"
                ' segment_id text NOT NULL, contact_id text COLLATE "C" NOT NULL,'
                " PRIMARY KEY (workspace, segment_id, contact_id))"
            )
            await conn.execute(
                "DELETE FROM schema_migrations WHERE version = %s", (len(postgres.MIGRATIONS),)
            )
            await conn.execute(
                "INSERT INTO segments (workspace, segment_id, name, filter, created_us, status,"
                " scanned, backfill_after) VALUES ('a', 'seg_1', 'pros', %s, 1, 'ready', 3, 'c3'),"
                " ('b', 'seg_1', 'pros', %s, 1, 'building', 0, NULL)",
                (pro, pro),
            )
            await conn.execute(
                "INSERT INTO segment_members (workspace, segment_id, contact_id)"
                " VALUES ('a', 'seg_1', 'c1'), ('a', 'seg_1', 'c3')"
            )

        await store._run(seed)
    finally:
        await store.close()
    # When this version opens it
    store = PostgresStore(postgres_url(schema))
    await store.open()
    try:
        # Then the members are as they were, and kept on the new key
        await then_the_members_carried_over(store, events("a", {"c1": "free", "c2": "pro"}, 10))
    finally:
        await store.close()
        drop_schema(schema)
