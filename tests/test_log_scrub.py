"""An erasure leaves no byte of the erased contact's events in the SQLite log.

The log deletes with ``secure_delete=ON``: what a commit deletes is overwritten with zeros, in
the pages it writes and in those it frees. That is not enough: when SQLite's b-tree rebuilds a
page to move cells to a sibling, the moved cells' old bytes stay in the page's unused gap, and
a later erasure of the live copy does not reach them (found in session 18 by the logs of
``test_given_logs_of_varied_rows_and_acknowledgements_...``; an earlier version of the scrub only
truncated the WAL). So every scrub copies the file into a new one (VACUUM), then truncates the WAL.
Each test scans the raw bytes of the log file and its WAL for a marker.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from pathlib import Path

import pytest

from profilehook.events import Event
from profilehook.queues.sqlite import INDEX_BITS, SqliteQueue
from tests.support import event

CONTACT = "erase-me"


def marker() -> str:
    return f"MARKER{uuid.uuid4().hex}"


def hits(log: Path, needle: str) -> int:
    """The marker's occurrences in every file of the log (main file, -wal, -shm)."""
    return sum(
        path.read_bytes().count(needle.encode())
        for path in log.parent.iterdir()
        if path.name.startswith(log.name)
    )


def pages(log: Path) -> tuple[int, int]:
    with sqlite3.connect(log) as conn:
        return (
            int(conn.execute("PRAGMA page_count").fetchone()[0]),
            int(conn.execute("PRAGMA freelist_count").fetchone()[0]),
        )


async def write_log(queue: SqliteQueue, needle: str, rows: int, acked_share: float) -> int:
    """Rows of 1 to 200 events (small ones fit a b-tree page, large ones spill into overflow
    pages), the marker in about one event in fifty, all of CONTACT's; the first
    ``acked_share`` of the rows acknowledged, along the way and at the end. The number of other events
    pending."""
    await _write(queue, needle, random.Random(7), rows, acked_share, [1, 1, 3, 20, 200], 10)
    return await queue.depth()


async def _write(
    queue: SqliteQueue,
    needle: str,
    rnd: random.Random,
    rows: int,
    acked_share: float,
    sizes: list[int],
    every: int,
) -> None:
    """``rows`` rows of ``sizes`` events (as ``rnd`` picks), the marker in about one event in
    fifty; in the first half of the acknowledged share, every ``every`` rows acknowledged (pages
    freed, then taken again), then the whole share (pages left free)."""
    number = 0
    for row in range(rows):
        events: list[Event] = []
        for _ in range(rnd.choice(sizes)):
            number += 1
            erased = rnd.random() < 0.02
            events.append(
                event(
                    CONTACT if erased else f"c{number % 40}",
                    f"e{number}",
                    ts_us=number,
                    note=(needle if erased else "x") * rnd.randint(1, 40),
                )
            )
        await queue.publish(events)
        if row < rows * acked_share / 2 and row % every == every - 1:
            await queue.acknowledge_upto(row << INDEX_BITS)
    await queue.acknowledge_upto(int(rows * acked_share) << INDEX_BITS)


async def erase(queue: SqliteQueue) -> None:
    await queue.erase_pending("acme", CONTACT, upto_us=0, everything=True)
    await queue.scrub()


async def test_given_a_log_of_pending_events_around_an_erased_contact_when_scrubbed_then_no_byte_of_them_is_left(
    tmp_path: Path,
) -> None:
    log, needle = tmp_path / "log.sqlite3", marker()
    queue = SqliteQueue(log)
    await queue.open()
    try:
        pending = await write_log(queue, needle, rows=600, acked_share=0.3)
        free = pages(log)[1]
        assert free > 0 and hits(log, needle) > 0  # what the scrub must overwrite is there
        await erase(queue)
        assert hits(log, needle) == 0
        assert pages(log)[1] == 0  # copied into a new file (VACUUM leaves no free page)
        assert await queue.depth() == pending  # every event still waits, the erased as stubs
        delivered = [d.event for d in await queue.fetch(100_000, 0.1)]
        assert (
            sum(
                e.contact_id != CONTACT
                and e.properties == {"note": "x" * len(e.properties["note"])}
                for e in delivered
            )
            > 10_000
        )
        assert all(not e.properties for e in delivered if e.contact_id == CONTACT)
    finally:
        await queue.close()


async def test_given_a_log_whose_acknowledged_rows_held_the_contact_when_scrubbed_then_its_free_pages_hold_no_byte_of_them(
    tmp_path: Path,
) -> None:
    log, needle = tmp_path / "log.sqlite3", marker()
    queue = SqliteQueue(log)
    await queue.open()
    try:
        await write_log(queue, needle, rows=600, acked_share=0.95)
        before, free = pages(log)
        assert free > before / 2
        await erase(queue)
        assert hits(log, needle) == 0
        assert pages(log) < (before, 0)  # copied into a new file, without what was deleted
    finally:
        await queue.close()


async def test_given_a_freed_page_taken_by_a_later_row_when_scrubbed_then_the_old_bytes_after_the_rows_are_gone(
    tmp_path: Path,
) -> None:
    # With secure_delete=FAST a freed overflow page kept its bytes; the next row that took it
    # as its last overflow page wrote only its own bytes at its start: the rest stayed, in a
    # page in use, where overwriting the free pages at the scrub does not reach.
    log, needle = tmp_path / "log.sqlite3", marker()
    queue = SqliteQueue(log)
    await queue.open()
    try:
        await queue.publish([event(CONTACT, "e1", ts_us=1, note=needle * 300)])
        await queue.publish([event("c1", "e2", ts_us=2, note="x")])
        await queue.acknowledge_upto(2 << INDEX_BITS)  # the first row is deleted
        await queue.publish([event("c1", "e3", ts_us=3, note="y" * 4_500)])
        await erase(queue)
        assert hits(log, needle) == 0
    finally:
        await queue.close()


async def test_given_a_log_written_by_a_version_without_secure_delete_when_scrubbed_then_nothing_deleted_is_left(
    tmp_path: Path,
) -> None:
    log, needle = tmp_path / "log.sqlite3", marker()
    queue = SqliteQueue(log)
    queue.db._secure_delete = "OFF"  # as schema 2 deleted, with SQLite built with its default
    await queue.open()
    await write_log(queue, needle, rows=300, acked_share=1.0)
    await queue.close()
    with sqlite3.connect(log) as conn:  # what schema 2 looked like
        conn.execute("DROP TABLE vacuum_due")
        conn.execute("PRAGMA user_version = 2")
    queue = SqliteQueue(log)
    await queue.open()
    try:
        await erase(queue)
        assert hits(log, needle) == 0
        assert pages(log)[1] == 0  # rewritten by VACUUM
        with sqlite3.connect(log) as conn:
            assert conn.execute("SELECT COUNT(*) FROM vacuum_due").fetchone()[0] == 0
        for number in range(10):
            await queue.publish([event("c1", f"later{number}", note="x" * 20_000)])
        top = await queue.db.read(lambda c: c.execute("SELECT MAX(seq) FROM batches").fetchone())
        await queue.acknowledge_upto(top[0] - 7 << INDEX_BITS)
        await queue.scrub()
        assert pages(log)[1] == 0  # every scrub copies the file into a new one
    finally:
        await queue.close()


async def varied_log(queue: SqliteQueue, needle: str, rnd: random.Random) -> None:
    """Rows of varied sizes, acknowledged along the way in steps and then in part, the marker in
    about one event in fifty (CONTACT's), as ``rnd`` chooses."""
    rows, share = rnd.choice([300, 600, 900]), rnd.choice([0.5, 0.8, 0.95])
    sizes = rnd.choice([[1, 1, 3, 20, 200], [1, 2, 5], [1, 1, 3, 20], [3, 20, 200]])
    await _write(queue, needle, rnd, rows, share, sizes, rnd.choice([5, 10, 20]))


# Seeds whose logs of 4 KiB pages (every log made before session 18 keeps them) kept 8 and 9
# copies of the marker in rebuilt pages' gaps with the scrub of before (secure_delete and a
# truncated WAL only), found among 100 by a probe of this shape. (With 64 KiB pages these two
# leave nothing; the acknowledged-rows test above is the one that did.)
@pytest.mark.parametrize("seed", [126, 131])
async def test_given_logs_of_varied_rows_and_acknowledgements_when_scrubbed_then_no_byte_of_the_contact_is_left(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("profilehook.queues.sqlite.LOG_PAGE_SIZE", None)  # SQLite's 4 KiB
    log, needle = tmp_path / "log.sqlite3", marker()
    queue = SqliteQueue(log)
    await queue.open()
    try:
        await varied_log(queue, needle, random.Random(seed))
        assert hits(log, needle) > 0
        await erase(queue)
        assert hits(log, needle) == 0
        assert pages(log)[1] == 0
    finally:
        await queue.close()
