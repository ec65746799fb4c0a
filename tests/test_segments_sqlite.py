"""SQLite keeps segment memberships by their whole key only (stores/sqlite_segments.py): an
apply reads and writes a membership by (workspace, segment_id, contact_id), so a second index
by contact would only double the cost of each membership it moves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from profilehook.stores.sqlite import SqliteStore


async def test_given_a_file_with_the_index_by_contact_when_opened_then_it_is_dropped(
    tmp_path: Path,
) -> None:
    # Given a store file whose members table has the index an earlier version made
    path = tmp_path / "p.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE INDEX segment_members_by_contact ON segment_members (workspace, contact_id)"
    )
    conn.commit()
    conn.close()
    # When it is opened again
    store = SqliteStore(path)
    await store.open()
    await store.close()
    # Then the members table has its primary key alone
    conn = sqlite3.connect(path)
    indexes = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'segment_members'"
        )
    ]
    conn.close()
    assert indexes == [], indexes
