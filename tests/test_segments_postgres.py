"""Segments on PostgreSQL: what the membership table costs every apply (issue 19)."""

from __future__ import annotations

import pytest

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
        assert "(workspace, segment_id, contact_id)" in found[0]
    finally:
        await store.close()
        drop_schema(schema)
