"""SQLite keeps segment memberships by (segment_key, contact_id), the segment's integer and the
contact (stores/sqlite_segments.py): an apply reads and writes a membership by that whole key,
and a smaller key puts more memberships on a page. A file of schema 7 (memberships keyed by
(workspace, segment_id, contact_id), with an index by contact) is migrated at open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from profilehook.events import Event
from profilehook.stores.sqlite import SqliteStore
from tests.segments_migrated import then_the_members_carried_over

# The segments' tables as schema 7 made them.
SCHEMA_7 = """
CREATE TABLE segments (
    workspace TEXT NOT NULL,
    segment_id TEXT NOT NULL,
    name TEXT NOT NULL,
    filter TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    status TEXT NOT NULL,
    scanned INTEGER NOT NULL,
    backfill_after TEXT,
    PRIMARY KEY (workspace, segment_id)
) WITHOUT ROWID;
CREATE TABLE segment_members (
    workspace TEXT NOT NULL,
    segment_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    PRIMARY KEY (workspace, segment_id, contact_id)
) WITHOUT ROWID;
CREATE INDEX segment_members_by_contact ON segment_members (workspace, contact_id);
"""
PRO = '{"property":"plan","op":"eq","value":"pro"}'


def _event(workspace: str, contact_id: str, ts_us: int, plan: str) -> Event:
    return Event(
        workspace, f"e-{workspace}-{contact_id}-{ts_us}", contact_id, ts_us, {"plan": plan}
    )


async def test_given_a_schema_7_file_with_segments_when_opened_then_its_members_are_kept(
    tmp_path: Path,
) -> None:
    # Given a store file of schema 7: two workspaces' segments of the same id, one ready with
    # its members, one still building
    path = tmp_path / "p.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.apply(
        [
            _event("a", "c1", 1, "pro"),
            _event("a", "c2", 2, "free"),
            _event("a", "c3", 3, "pro"),
            _event("b", "c1", 4, "pro"),
        ]
    )
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE segments")
    conn.execute("DROP TABLE segment_members")
    conn.executescript(SCHEMA_7)
    conn.executemany(
        "INSERT INTO segments VALUES (?, 'seg_1', 'pros', ?, 1, ?, ?, ?)",
        [("a", PRO, "ready", 3, "c3"), ("b", PRO, "building", 0, None)],
    )
    conn.executemany("INSERT INTO segment_members VALUES ('a', 'seg_1', ?)", [("c1",), ("c3",)])
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    # When it is opened by this version
    store = SqliteStore(path)
    await store.open()
    try:
        # Then the segments and their members are as they were, and kept on the new key
        await then_the_members_carried_over(
            store, [_event("a", "c1", 10, "free"), _event("a", "c2", 11, "pro")]
        )
    finally:
        await store.close()
    # and the members table has its primary key alone (the index by contact is gone)
    conn = sqlite3.connect(path)
    indexes = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'segment_members'"
        )
    ]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 8
    conn.close()
    assert indexes == [], indexes
