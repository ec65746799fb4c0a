"""SQLite's apply: the searchable copy of the values (stores/sqlite_values.py) follows every
change of a value as JSON sees it, and a batch with no segment defined skips the segments' work
without missing a segment defined between batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from profilehook.errors import StorageUnavailable
from profilehook.filters import Query
from profilehook.sqlite_db import MAX_ROWS_PER_STATEMENT, insert_rows
from profilehook.stores.segments import Segment
from profilehook.stores.sqlite import _INSERT_EVENT, SqliteStore
from tests.store_backends import S
from tests.support import event
from tests.support import parsed_filter as f

W = "acme"
PRO = {"property": "plan", "op": "eq", "value": "pro"}


async def found(store: SqliteStore, raw: dict[str, Any]) -> list[str]:
    page = await store.query_contacts(W, Query(f(raw), 100, None))
    return [c.contact_id for c in page.contacts]


async def test_given_a_list_then_one_equal_in_python_only_when_set_then_the_copy_follows(
    tmp_path: Path,
) -> None:
    # [1] == [True] in Python, not in JSON: the later value must replace the earlier one in the
    # searchable copy, and the change feed must say so.
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        await store.apply([event("c1", "e1", 1 * S, W, tags=[1], box={"a": 1})])
        await store.apply([event("c1", "e2", 2 * S, W, tags=[True], box={"a": True})])
        assert await found(store, {"property": "tags", "op": "contains", "value": True}) == ["c1"]
        assert await found(store, {"property": "tags", "op": "contains", "value": 1}) == []
        changes = await store.read_changes(W, None, 10)
        assert [c.body.properties["tags"].new for c in changes] == [[1], [True]]
        # and back: the copy holds [1] again
        await store.apply([event("c1", "e3", 3 * S, W, tags=[1])])
        assert await found(store, {"property": "tags", "op": "contains", "value": True}) == []
        assert await found(store, {"property": "tags", "op": "contains", "value": 1}) == ["c1"]
    finally:
        await store.close()


async def test_given_no_segment_then_apply_skips_them_and_a_new_one_is_kept(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    statements: list[str] = []
    try:
        await store.db.write(lambda conn: conn.set_trace_callback(statements.append))
        await store.apply([event("c1", "e1", 1 * S, W, plan="free")])
        # Given no segment, one look at the table and nothing more of the segments' work
        segment_sql = [s for s in statements if "segment" in s]
        assert segment_sql == ["SELECT 1 FROM segments LIMIT 1"], segment_sql
        # When a segment is created (and built), then the next batch keeps it
        await store.create_segment(Segment("seg1", W, "pro", f(PRO), 1))
        while not await store.backfill_segment(W, "seg1"):
            pass
        await store.apply([event("c1", "e2", 2 * S, W, plan="pro")])
        members, _ = await store.segment_members(W, "seg1", None, 10)
        assert [c.contact_id for c in members] == ["c1"]
        changes = await store.read_changes(W, None, 10)
        assert changes[-1].body.segments.entered == ["seg1"]
        await store.apply([event("c1", "e3", 3 * S, W, plan="free")])
        members, _ = await store.segment_members(W, "seg1", None, 10)
        assert members == []
        assert (await store.read_changes(W, None, 10))[-1].body.segments.exited == ["seg1"]
    finally:
        await store.db.write(lambda conn: conn.set_trace_callback(None))
        await store.close()


async def test_given_a_batch_of_more_changes_than_a_statement_holds_then_all_are_kept_in_order(
    tmp_path: Path,
) -> None:
    # The change records and the copy's rows go in statements of many rows: a batch of more
    # than one statement holds keeps every change, in the batch's order, with seqs that only
    # grow (also past a purge of them all), and every value searchable.
    count = 2 * MAX_ROWS_PER_STATEMENT + 7
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        batch = [
            event(f"c{i:04}", f"e{i:04}", (i + 1) * S, W, plan="pro", n=i) for i in range(count)
        ]
        statements: list[str] = []
        await store.db.write(lambda conn: conn.set_trace_callback(statements.append))
        await store.apply(batch)
        await store.db.write(lambda conn: conn.set_trace_callback(None))
        # a statement per MAX_ROWS_PER_STATEMENT rows, not per row
        for table in ("changes", "contact_values"):
            writes = [s for s in statements if f"INTO {table} " in s]
            assert 0 < len(writes) <= 2 * 3, (table, len(writes))
        changes = await store.read_changes(W, None, 2 * count)
        assert [c.event_id for c in changes] == [e.event_id for e in batch]
        seqs = [int(c.cursor) for c in changes]
        assert seqs == sorted(set(seqs))
        assert len(await found(store, PRO)) == 100  # a page
        page = await store.query_contacts(
            W, Query(f({"property": "n", "op": "gte", "value": 0}), 1000, None)
        )
        assert len(page.contacts) == count
        end = seqs[-1]
        await store.db.write(lambda conn: conn.execute("DELETE FROM changes"))
        await store.apply([event("c0000", "x", (count + 1) * S, W, plan="free")])
        (after,) = await store.read_changes(W, str(end), 10)
        assert int(after.cursor) == end + 1
    finally:
        await store.close()


async def test_given_a_bad_row_in_a_multi_row_insert_then_it_raises_and_nothing_is_kept(
    tmp_path: Path,
) -> None:
    # The events' multi-row insert is OR FAIL (no statement journal): a violation must still
    # raise, not be skipped, and the rows before it in the statement go with the rollback.
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        good = (W, "c1", "e1", 1, "applied", 1, None, b"{}", 1, 1)
        bad = (W, "c1", "e2", 2, "applied", 1, None, None, 2, 1)  # body NOT NULL
        with pytest.raises(StorageUnavailable, match="NOT NULL"):
            await store.db.write(lambda conn: insert_rows(conn, _INSERT_EVENT, [good, bad]))
        count = await store.db.write(
            lambda conn: conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        )
        assert count == 0
    finally:
        await store.close()
