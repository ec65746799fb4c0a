"""The SQLite catalog's cached answers (keys, sources) are checked against commits without a
statement on the event loop.

Checking with ``PRAGMA data_version`` let go of the GIL on the event loop, which then waited
for the log's threads to give it back: 15-19 % of the loop's time in a profile of the batch
endpoint (benchmarks/README.md). The WAL-index header tells the same (sqlite_commits.py). These
tests pin that it does, that a commit by any other connection is still seen, and that without
an index to map the check falls back to SQLite's.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from profilehook.sqlite_commits import CommitWatch
from profilehook.sqlite_db import SqliteDatabase
from profilehook.stores.base import ApiKey, KeyGrant
from profilehook.stores.sqlite import CATALOG_CHECK_INTERVAL_S, SqliteStore

SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER);"


def commit_elsewhere(path: Path, value: int) -> None:
    """A commit by another connection (as the CLI's, in another process, would be)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("INSERT INTO t (x) VALUES (?)", (value,))
    finally:
        conn.close()


async def test_given_commits_by_another_connection_then_each_moves_the_mark(
    tmp_path: Path,
) -> None:
    db = SqliteDatabase(tmp_path / "c.sqlite3", SCHEMA, 1)
    await db.open()
    try:
        first = db.commit_mark()
        looked = db.commit_mark()
        assert db.commit_mark() == looked  # nothing committed: the same mark
        seen = {repr(first), repr(looked)}
        for value in range(3):
            commit_elsewhere(db.path, value)
            mark = db.commit_mark()
            assert repr(mark) not in seen
            seen.add(repr(mark))
        await db.write(lambda conn: conn.execute("INSERT INTO t (x) VALUES (9)"))
        assert repr(db.commit_mark()) not in seen  # the writer's own commits too
    finally:
        await db.close()


async def test_given_a_cached_key_then_checking_it_runs_no_statement_on_the_loop(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        await store.add_key(ApiKey("k1", "acme", created_us=1), "hash-1")
        grant = KeyGrant("k1", "acme", ApiKey("k1", "acme", created_us=1).scopes)
        assert await store.key_grant("hash-1") == grant
        assert await store.key_grant("hash-1") == grant  # the mapping is made by now
        statements: list[str] = []
        local = store.catalog._local_conn
        assert local is not None
        local.set_trace_callback(statements.append)
        for _ in range(3):
            time.sleep(CATALOG_CHECK_INTERVAL_S * 2)  # each lookup checks for commits
            assert await store.key_grant("hash-1") == grant
        assert statements == []

        # When the key is revoked by another connection, then the next check sees it.
        conn = sqlite3.connect(store.catalog.path, isolation_level=None)
        try:
            conn.execute("UPDATE api_keys SET revoked_us = 5 WHERE key_id = 'k1'")
        finally:
            conn.close()
        time.sleep(CATALOG_CHECK_INTERVAL_S * 2)
        assert await store.key_grant("hash-1") is None
    finally:
        await store.close()


async def test_given_no_wal_index_to_map_then_sqlite_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CommitWatch, "mark", lambda self: None)
    db = SqliteDatabase(tmp_path / "c.sqlite3", SCHEMA, 1)
    await db.open()
    try:
        before = db.commit_mark()
        assert isinstance(before, int)  # PRAGMA data_version
        assert db.commit_mark() == before
        commit_elsewhere(db.path, 1)
        assert db.commit_mark() != before
    finally:
        await db.close()


def test_given_no_index_file_then_the_watch_has_no_mark(tmp_path: Path) -> None:
    watch = CommitWatch(tmp_path / "absent.sqlite3")
    assert watch.mark() is None
    watch.close()
