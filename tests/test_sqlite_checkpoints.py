"""The SQLite log copies its WAL into the file on a thread of its own.

SQLite's automatic checkpoint runs inside the commit that crosses the WAL's size limit, and every
commit queued behind that one waited for the copy and its fsync: under the batch endpoint's load
the p99 latency was 100 ms (benchmarks/README.md). These tests pin what replaced it: the copy
happens without any commit crossing a limit, a failing checkpoint is reported once and retried,
and closing the log stops the thread.
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
from profilehook.sqlite_db import CHECKPOINT_PAGES
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


class FlakyCheckpoints(sqlite3.Connection):
    failures_left = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if "wal_checkpoint" in sql and FlakyCheckpoints.failures_left > 0:
            FlakyCheckpoints.failures_left -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


async def test_given_checkpoints_that_fail_then_it_warns_once_and_they_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **kw: connect(*a, factory=FlakyCheckpoints, **kw)
    )
    FlakyCheckpoints.failures_left = 5
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
