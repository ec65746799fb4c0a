"""The SQLite log copies its WAL into the file on a thread of its own.

SQLite's automatic checkpoint runs inside the commit that crosses the WAL's size limit, and every
commit queued behind that one waited for the copy and its fsync: under the batch endpoint's load
the p99 latency was 100 ms (benchmarks/README.md). These tests pin what replaced it: the copy
happens without any commit crossing a limit, a failing checkpoint is reported once and retried,
closing the log stops the thread, and the WAL stays as bounded as SQLite's own checkpoint kept it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from profilehook.queues.sqlite import LOG_PAGE_SIZE, SqliteQueue
from profilehook.sqlite_db import CHECKPOINT_WAL_BYTES, WAL_SIZE_LIMIT_BYTES
from tests.support import event

PAYLOAD_BYTES = 2_000_000  # far below the 10,000 pages (40 MB) of SQLite's own checkpoint here


def big_events(count: int, prefix: str) -> list[Any]:
    size = PAYLOAD_BYTES // count
    return [event(event_id=f"{prefix}{i}", ts_us=i + 1, blob="x" * size) for i in range(count)]


async def wait_for_file_size(path: Path, at_least: int, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (size := path.stat().st_size) < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return size


def checkpoint_threads(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"sqlite-checkpoint-{path.name}"]


async def test_given_appends_far_below_the_wal_limit_then_they_are_copied_into_the_file(
    tmp_path: Path,
) -> None:
    assert PAYLOAD_BYTES < CHECKPOINT_WAL_BYTES // 10
    path = tmp_path / "log.sqlite3"
    queue = SqliteQueue(path)
    await queue.open()
    try:
        for n in range(10):
            await queue.publish(big_events(20, f"b{n}-"))

        # Only a checkpoint writes the file itself: the commits went to the WAL.
        assert await wait_for_file_size(path, PAYLOAD_BYTES) >= PAYLOAD_BYTES
        assert len(await queue.fetch(1_000, 0.0)) == 200
    finally:
        await queue.close()
    assert checkpoint_threads(path) == []


async def test_given_commits_without_pause_then_the_wal_stays_within_its_limit(
    tmp_path: Path,
) -> None:
    """Commits that never pause outrun the thread's copies: only a checkpoint between two
    commits lets the WAL start again from its beginning (it grew to 400 MB before)."""
    path = tmp_path / "log.sqlite3"
    wal = path.with_name("log.sqlite3-wal")
    queue = SqliteQueue(path)
    await queue.open()
    largest = 0

    async def publisher(n: int) -> None:
        nonlocal largest
        for i in range(60):
            await queue.publish(
                [event(event_id=f"w{n}-{i}-{j}", blob="x" * 1_000) for j in range(300)]
            )
            largest = max(largest, wal.stat().st_size)

    try:
        await asyncio.gather(*(publisher(n) for n in range(8)))  # ~150 MB of events
    finally:
        await queue.close()
    assert largest <= max(WAL_SIZE_LIMIT_BYTES, CHECKPOINT_WAL_BYTES * 3 // 2)


class FlakyCheckpoints(sqlite3.Connection):
    failures_left = 0
    alternate = False  # fail every other call instead

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if "wal_checkpoint" in sql:
            if FlakyCheckpoints.alternate:
                FlakyCheckpoints.failures_left += 1
                if FlakyCheckpoints.failures_left % 2:
                    raise sqlite3.OperationalError("disk I/O error")
            elif FlakyCheckpoints.failures_left > 0:
                FlakyCheckpoints.failures_left -= 1
                raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


async def test_given_checkpoints_that_fail_then_it_warns_once_and_they_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    flaky_connections(monkeypatch)
    FlakyCheckpoints.failures_left, FlakyCheckpoints.alternate = 5, False
    path = tmp_path / "log.sqlite3"
    queue = SqliteQueue(path)
    with caplog.at_level(logging.WARNING, logger="profilehook.sqlite_db"):
        await queue.open()
        try:
            for n in range(10):
                await queue.publish(big_events(20, f"f{n}-"))
                await asyncio.sleep(0.02)  # commits apart, so that each wakes the checkpointer

            assert await wait_for_file_size(path, PAYLOAD_BYTES) >= PAYLOAD_BYTES
        finally:
            await queue.close()

    assert FlakyCheckpoints.failures_left == 0
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "fail" in m] == [
        "checkpoints of log.sqlite3 fail (retried): disk I/O error"
    ]
    assert "checkpoints of log.sqlite3 work again" in messages


async def test_given_checkpoints_that_fail_every_other_time_then_warnings_stay_rare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    flaky_connections(monkeypatch)
    FlakyCheckpoints.failures_left, FlakyCheckpoints.alternate = 0, True
    queue = SqliteQueue(tmp_path / "log.sqlite3")
    with caplog.at_level(logging.WARNING, logger="profilehook.sqlite_db"):
        await queue.open()
        try:
            for n in range(30):
                await queue.publish(big_events(2, f"a{n}-"))
                await asyncio.sleep(0.02)
        finally:
            await queue.close()

    assert FlakyCheckpoints.failures_left >= 20  # it kept trying
    assert len(caplog.records) == 2  # one failure, one recovery: not one per attempt


def flaky_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **kw: connect(*a, factory=FlakyCheckpoints, **kw)
    )


async def _page_pragmas(queue: SqliteQueue) -> list[int]:
    return await queue.db.write(
        lambda conn: [
            int(conn.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("page_size", "wal_autocheckpoint")
        ]
    )


async def test_a_new_log_has_large_pages_and_checkpoints_at_the_same_wal_size(
    tmp_path: Path,
) -> None:
    """A 1,000-event batch's row is four 64 KiB pages, not ~55 of 4 KiB: a commit writes far
    fewer WAL frames (benchmarks/README.md, session 18). SQLite counts its own checkpoint's
    threshold in pages: it stays at the same WAL size in bytes."""
    path = tmp_path / "log.sqlite3"
    queue = SqliteQueue(path)
    await queue.open()
    try:
        await queue.publish(big_events(20, "a-"))
        assert await _page_pragmas(queue) == [LOG_PAGE_SIZE, CHECKPOINT_WAL_BYTES // LOG_PAGE_SIZE]
        assert len(await queue.fetch(1_000, 0.0)) == 20
        await queue.scrub()  # (the copy keeps the page size)
    finally:
        await queue.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == LOG_PAGE_SIZE


async def test_a_log_made_with_small_pages_keeps_them_and_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log an earlier version made (SQLite's 4 KiB pages) opens as it is: its waiting events
    are read, new ones appended, and its checkpoint threshold is the same WAL size."""
    path = tmp_path / "log.sqlite3"
    with monkeypatch.context() as earlier:
        earlier.setattr("profilehook.queues.sqlite.LOG_PAGE_SIZE", None)
        queue = SqliteQueue(path)
        await queue.open()
        await queue.publish(big_events(20, "before-"))
        await queue.close()
    queue = SqliteQueue(path)
    await queue.open()
    try:
        await queue.publish(big_events(20, "after-"))
        assert await _page_pragmas(queue) == [4_096, CHECKPOINT_WAL_BYTES // 4_096]
        ids = [d.event.event_id for d in await queue.fetch(1_000, 0.0)]
        assert ids == [f"before-{i}" for i in range(20)] + [f"after-{i}" for i in range(20)]
    finally:
        await queue.close()
