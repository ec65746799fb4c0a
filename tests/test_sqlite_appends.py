"""Appends to a SQLite database reach its writer at the end of the event loop's pass.

The single-event POST appends as its request is parsed, one connection after another; handed
to the writer one by one, the first of them woke it for a commit of its own, and C's log
committed ~10 requests at a time instead of ~28 (with the writer's CPU per request up by
half: benchmarks/README.md). These tests pin the hand-over: held to the pass's end, in order
before any later write, and never lost at close.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from profilehook.sqlite_db import SqliteDatabase

SCHEMA = "CREATE TABLE IF NOT EXISTS rows (n INTEGER NOT NULL, body BLOB NOT NULL);"
APPEND = "INSERT INTO rows (n, body) VALUES (?, ?)"


def rows(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT n, body FROM rows ORDER BY rowid").fetchall()


async def test_appends_of_one_pass_reach_the_writer_together_at_its_end(tmp_path):
    db = SqliteDatabase(tmp_path / "log.sqlite3", SCHEMA, 1)
    await db.open()
    try:
        held = threading.Event()
        busy = asyncio.ensure_future(db.write(lambda conn: held.wait(10)))  # the writer waits
        await asyncio.sleep(0.05)
        appended = [db.append(APPEND, [(1, b"%d" % i)]) for i in range(3)]
        assert db._jobs.qsize() == 0  # held to the end of this pass
        await asyncio.sleep(0)
        assert db._jobs.qsize() == 3
        held.set()
        await asyncio.gather(busy, *appended)
        assert rows(db.path) == [(3, b"012")]  # one row: one commit
    finally:
        await db.close()


async def test_a_write_after_appends_comes_after_them(tmp_path):
    db = SqliteDatabase(tmp_path / "log.sqlite3", SCHEMA, 1)
    await db.open()
    try:
        appended = db.append(APPEND, [(1, b"a")])
        seen = await db.write(lambda conn: conn.execute("SELECT count(*) FROM rows").fetchone())
        await appended
        assert seen == (1,)
    finally:
        await db.close()


async def test_appends_still_held_at_close_are_committed(tmp_path):
    db = SqliteDatabase(tmp_path / "log.sqlite3", SCHEMA, 1)
    await db.open()
    appended = db.append(APPEND, [(1, b"a")])
    await db.close()
    await appended
    assert rows(db.path) == [(1, b"a")]
