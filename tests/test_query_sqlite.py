"""SQLite reads a page of a one-condition filter from the property's rows of
``contact_values`` in contact_id order, then only those contacts (stores/sqlite_values.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from profilehook.events import Event
from profilehook.filters import Query, parse_filter
from profilehook.stores import sqlite_values
from profilehook.stores.sqlite import _ROW_COLUMNS, SqliteStore

PLAN_B = {"property": "plan", "op": "eq", "value": "b"}


def node(raw: dict[str, object]) -> object:
    found, problems = parse_filter(raw)
    assert found is not None, problems
    return found


def test_given_an_equality_then_its_keys_come_in_contact_order_unsorted() -> None:
    sql, params = sqlite_values.driven_sql("w", node(PLAN_B), None, 101, _ROW_COLUMNS)  # type: ignore[arg-type]
    conn = sqlite3.connect(":memory:")
    conn.execute(sqlite_values.TABLE)
    conn.execute(
        "CREATE TABLE contacts (workspace, contact_id, last_ts_us, last_event_id, deleted_ts_us,"
        " deleted_event_id, properties, ops_ts_us, ops_event_id, marks,"
        " PRIMARY KEY (workspace, contact_id)) WITHOUT ROWID"
    )
    plan = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    (coroutine,) = [row[0] for row in plan if row[3].startswith("CO-ROUTINE")]
    inner = [row[3] for row in plan if row[1] == coroutine]
    # The key (workspace, name, kind, value, contact_id) gives the order: no sort of matches
    assert any("contact_id>?" in step for step in inner), plan
    assert not any("TEMP B-TREE" in step for step in inner), plan


async def test_given_contacts_gone_under_their_values_then_pages_skip_them(tmp_path: Path) -> None:
    # Given 600 contacts, half on plan "b", the first 200 of those then marked deleted while
    # their rows in contact_values stay (beyond what apply leaves: the code path for when it does)
    path = tmp_path / "q.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.apply(
        [Event("w", f"e{i}", f"c{i:04d}", 1_000_000 + i, {"plan": "ab"[i % 2]}) for i in range(600)]
    )
    on_b = [f"c{i:04d}" for i in range(600) if i % 2]
    await store.close()
    conn = sqlite3.connect(path)
    conn.executemany(
        "UPDATE contacts SET deleted_ts_us = last_ts_us + 1, deleted_event_id = 'x'"
        " WHERE contact_id = ?",
        [(i,) for i in on_b[:200]],
    )
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    await store.open()
    # When pages of 7 are read
    found, after = [], None
    while True:
        page = await store.query_contacts("w", Query(node(PLAN_B), 7, after))  # type: ignore[arg-type]
        found += [c.contact_id for c in page.contacts]
        if page.next_after is None:
            break
        after = page.next_after
    await store.close()
    # Then they hold every contact on "b" that exists, none repeated
    assert found == on_b[200:]
