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

from profilehook.queues.sqlite import SqliteQueue
from profilehook.sqlite_db import CHECKPOINT_PAGES, WAL_SIZE_LIMIT_BYTES
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
    assert PAYLOAD_BYTES < CHECKPOINT_PAGES * 4096 // 10
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
    assert largest <= max(WAL_SIZE_LIMIT_BYTES, CHECKPOINT_PAGES * 4096 * 3 // 2)


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
