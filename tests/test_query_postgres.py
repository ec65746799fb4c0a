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


def plan_of(schema: str, raw: dict[str, object]) -> str:
    """EXPLAIN ANALYZE of the statement the store runs for the first page of ``raw``."""
    node, _ = parse_filter(raw)
    assert node is not None
    query = Query(node, 100)
    if postgres_query._drives(node):
        sql, params = postgres_query.driven_sql("w", node, None, 101, _VERSION_COLUMNS)
    else:
        sql, params = postgres_query.select_sql("w", query, _VERSION_COLUMNS)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        return "\n".join(row[0] for row in conn.execute("EXPLAIN ANALYZE " + sql, params))


@pytest.mark.parametrize(
    ("raw", "index"),
    [
        (
            {"property": "email", "op": "eq", "value": "u17@example.com"},
            "properties_strings_by_contact",
        ),
        ({"property": "score", "op": "gte", "value": 19_990}, "properties_numbers_by_contact"),
        (
            {"property": "email", "op": "starts_with", "value": "u1234"},
            "properties_strings_by_contact",
        ),
        ({"property": "vip", "op": "eq", "value": True}, "properties_booleans_by_contact"),
    ],
)
def test_given_many_contacts_when_a_selective_condition_then_an_index_finds_them(
    loaded_schema: str, raw: dict[str, object], index: str
) -> None:
    plan = plan_of(loaded_schema, raw)
    assert index in plan, plan
    assert "Seq Scan on properties" not in plan, plan


def test_given_an_equality_matching_many_then_the_page_comes_in_index_order_unsorted(
    loaded_schema: str,
) -> None:
    # Given half the contacts on plan "a": When the first page is read
    plan = plan_of(loaded_schema, {"property": "plan", "op": "eq", "value": "a"})
    # Then from the index in contact_id order, stopping after the page: no sort, no 10,000 rows
    assert "properties_strings_by_contact" in plan, plan
    assert "Sort" not in plan, plan
    assert "rows=101 loops=1" in plan, plan


def test_given_a_range_then_its_matches_come_from_the_index_alone(loaded_schema: str) -> None:
    plan = plan_of(loaded_schema, {"property": "score", "op": "gte", "value": 19_000})
    assert "Index Only Scan using properties_numbers_by_contact" in plan, plan
    assert "top-N heapsort" in plan, plan


def test_given_contacts_gone_under_their_property_rows_then_pages_skip_them() -> None:
    # Given 600 contacts, half on plan "b", the first 200 of those then marked deleted while
    # their property rows stay (beyond what apply leaves: the code path for when it does)
    require_server(POSTGRES_URL, 5432)
    schema = unique_schema()
    store = PostgresStore(postgres_url(schema))
    node, _ = parse_filter({"property": "plan", "op": "eq", "value": "b"})
    assert node is not None
    on_b = [f"c{i:04d}" for i in range(600) if i % 2]

    async def pages() -> list[str]:
        await store.open()
        await store.apply(
            [
                Event("w", f"e{i}", f"c{i:04d}", 1_000_000 + i, {"plan": "ab"[i % 2]})
                for i in range(600)
            ]
        )
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                f'UPDATE "{schema}".contacts SET deleted_ts_us = last_ts_us + 1,'
                " deleted_event_id = 'x' WHERE contact_id = ANY(%s)",
                (on_b[:200],),
            )
        # When pages of 7 are read
        found, after = [], None
        while True:
            page = await store.query_contacts("w", Query(node, 7, after))
            found += [c.contact_id for c in page.contacts]
            if page.next_after is None:
                await store.close()
                return found
            after = page.next_after

    try:
        found = asyncio.run(pages())
    finally:
        drop_schema(schema)
    # Then they hold every contact on "b" that exists, none repeated
    assert found == on_b[200:]
