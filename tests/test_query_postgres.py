"""PostgreSQL answers equality and range conditions on any property from its indexes
(stores/postgres_query.py), not by scanning every property row."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import psycopg
import pytest

from profilehook.events import Event
from profilehook.filters import Query, parse_filter
from profilehook.stores import postgres_query
from profilehook.stores.postgres import _VERSION_COLUMNS, PostgresStore
from tests.support import POSTGRES_URL, drop_schema, postgres_url, require_server, unique_schema


@pytest.fixture(scope="module")
def loaded_schema() -> Iterator[str]:
    """20,000 contacts, each with an email, a score, a flag and a plan; analysed."""
    require_server(POSTGRES_URL, 5432)
    schema = unique_schema()

    async def load() -> None:
        store = PostgresStore(postgres_url(schema))
        await store.open()
        rng = random.Random(3)
        for start in range(0, 20_000, 2_000):
            await store.apply(
                [
                    Event(
                        "w",
                        f"e{i}",
                        f"c{i:05d}",
                        1_000_000 + i,
                        {
                            "email": f"u{i}@example.com",
                            "score": i,
                            "vip": i == 17,
                            "plan": rng.choice(["a", "b"]),
                        },
                    )
                    for i in range(start, start + 2_000)
                ]
            )
        await store.close()

    asyncio.run(load())
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'ANALYZE "{schema}".properties')
        conn.execute(f'ANALYZE "{schema}".contacts')
    yield schema
    drop_schema(schema)


@pytest.mark.parametrize(
    ("raw", "index"),
    [
        ({"property": "email", "op": "eq", "value": "u17@example.com"}, "properties_strings"),
        ({"property": "score", "op": "gte", "value": 19_990}, "properties_numbers"),
        ({"property": "email", "op": "starts_with", "value": "u1234"}, "properties_strings"),
        ({"property": "vip", "op": "eq", "value": True}, "properties_booleans"),
    ],
)
def test_given_many_contacts_when_a_selective_condition_then_an_index_finds_them(
    loaded_schema: str, raw: dict[str, object], index: str
) -> None:
    node, _ = parse_filter(raw)
    assert node is not None
    sql, params = postgres_query.select_sql("w", Query(node, 100), _VERSION_COLUMNS)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{loaded_schema}"')
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params))
    assert index in plan, plan
    assert "Seq Scan on properties" not in plan, plan
