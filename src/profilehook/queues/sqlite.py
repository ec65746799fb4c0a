"""The embedded default log: a SQLite file, WAL, synchronous=FULL, group commit.

Acknowledged events are removed from the log; the store keeps the history. One consumer
(the applier of ``serve`` or one ``worker``) reads the log at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec

from profilehook import constants as c
from profilehook.events import ID_RUN_CHARS, Event, encode_events, erased_stub, predates
from profilehook.plain_batch import KeptBatch, PlainBatch
from profilehook.plain_segment_batch import PlainSegmentBatch
from profilehook.queues.base import Delivery, HandsOverAcknowledgements, Queue, TellsOfAppends
from profilehook.sqlite_db import MAX_RECORDS_PER_ROW, SqliteDatabase

# 1: one row per event (before group-commit rows); 2: written without secure_delete; 3: before
# plain batches' records; 4: before Segment's (plain_segment_batch.py)
SCHEMA_VERSION = 5
SCHEMA = """
-- One row per group commit: the events of every publish that shared it, each encoded
-- (msgpack), one after the other; a kept batch's as one record of its body (``_decode``)
-- and a nil for each of its other events. A row is written in one SQLite step, and read
-- whole.
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    events INTEGER NOT NULL,
    body BLOB NOT NULL
);
-- seq: the position (see SqliteQueue) of the last event acknowledged.
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
INSERT OR IGNORE INTO cursors (name, seq) VALUES ('applier_position', 0);
-- A row: the file was written by a version that deleted without secure_delete (schema 2), so
-- its pages may hold deleted content. Kept for those files; every scrub runs VACUUM now.
CREATE TABLE IF NOT EXISTS vacuum_due (since_schema INTEGER NOT NULL);
"""


def _written_without_secure_delete_2_to_3(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE vacuum_due (since_schema INTEGER NOT NULL)")
    conn.execute("INSERT INTO vacuum_due (since_schema) VALUES (2)")


def _plain_batch_records_3_to_4(conn: sqlite3.Connection) -> None:
    """Nothing to change: schema 3's rows read as they did. The version keeps a file that may
    hold plain batches' records from a version that cannot read them."""


def _segment_batch_records_4_to_5(conn: sqlite3.Connection) -> None:
    """Nothing to change, as for 3 to 4: a file that may hold Segment batches' records."""


class SqliteQueue(Queue, HandsOverAcknowledgements, TellsOfAppends):
    """A delivery's token is its position in the log, ``seq << INDEX_BITS | index in its row``;
    the cursor in the file is the position of the last event acknowledged. Another process
    (``serve``'s) may write the acknowledgements: see ``HandsOverAcknowledgements``; and its
    appends may wake this consumer: see ``TellsOfAppends``."""

    def __init__(self, path: Path):
        self._wake = asyncio.Event()  # set after each commit: a fetch in this process wakes
        # Checkpoints run on a thread of their own, every 10 ms while events arrive. Run only by
        # the commit that crossed the WAL's size, one held every commit behind it for its copy
        # and fsync (what that cost the batch endpoint's p99: benchmarks/README.md).
        self.db = SqliteDatabase(
            path,
            SCHEMA,
            SCHEMA_VERSION,
            after_commit=self._committed,
            background_checkpoints=True,
            migrations={
                2: _written_without_secure_delete_2_to_3,
                3: _plain_batch_records_3_to_4,
                4: _segment_batch_records_4_to_5,
            },
            # What a commit deletes is overwritten with zeros, in the pages it frees too: FAST
            # leaves those as they were, and a later row that takes one as its last overflow page
            # keeps the old bytes after its own (tests/test_log_scrub.py).
            secure_delete="ON",
            # A 1,000-event batch's row is four pages instead of ~55: a commit writes a
            # sixteenth of the WAL frames: on a disk whose syncs of megabytes are slow, the
            # batch endpoint on such bodies went 1.01-1.49 x as fast, round for round
            # (benchmarks/README.md, session 18). A log made before keeps its 4 KiB pages.
            page_size=LOG_PAGE_SIZE,
        )
        self._delivered = 0
        self._record_ack: Callable[[int], None] | None = None
        self._tell_fd: int | None = None  # tell_appends_to's pipe
        self._woken_by_fd: int | None = None  # woken_by's pipe

    def _committed(self) -> None:
        self._wake.set()
        if self._tell_fd is not None:
            # One write a commit (about a microsecond; commits are 20-60 requests each under
            # load). A full pipe (the consumer is busy, not waiting) already holds a wake-up.
            with contextlib.suppress(OSError):
                os.write(self._tell_fd, b"\x01")

    def tell_appends_to(self, fd: int | None) -> None:
        self._tell_fd = fd

    def woken_by(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._woken_by_fd = fd

    async def open(self) -> None:
        await self.db.open()
        self._delivered = await self.db.read(_cursor)

    async def close(self) -> None:
        await self.db.close()

    def publish(self, events: Sequence[Event]) -> Awaitable[None]:
        count = len(events)
        if not count:  # no row: a row of no events holds no position, and nothing to wait for
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if isinstance(events, KeptBatch):
            # (A record is one row's: a Segment batch may hold more messages than a row.)
            if 1 < count <= MAX_RECORDS_PER_ROW and b"\\" not in events.body:  # (_plain_record)
                return self.db.append(_APPEND, [(count, _plain_record(events))])
            events = events.events()
        # A chunk of up to a row's size is encoded in one msgspec call, not one per event: the
        # same bytes, less CPU.
        if count <= MAX_RECORDS_PER_ROW:
            return self.db.append(_APPEND, [(count, encode_events(events))])
        chunks = [events[i : i + MAX_RECORDS_PER_ROW] for i in range(0, count, MAX_RECORDS_PER_ROW)]
        return self.db.append(_APPEND, [(len(chunk), encode_events(chunk)) for chunk in chunks])

    async def fetch(self, max_events: int, wait_s: float) -> list[Delivery]:
        deadline = time.monotonic() + wait_s
        while True:
            self._wake.clear()
            # Before the read: a byte written after it is a commit the read may not have seen.
            self._read_wake_ups()
            rows = await self.db.read(lambda conn: _rows_from(conn, self._delivered, max_events))
            if rows or time.monotonic() >= deadline:
                break
            await self._wait_for_appends()
        deliveries: list[Delivery] = []
        for seq, count, body in rows:
            first = seq << INDEX_BITS
            for index, event in enumerate(_decode(count, body)):
                if first + index > self._delivered and len(deliveries) < max_events:
                    deliveries.append(Delivery(event, first + index))
        if deliveries:
            self._delivered = deliveries[-1].token
        return deliveries

    async def _wait_for_appends(self) -> None:
        """Woken at once by a publish in this process, and by a byte from another process's
        (``woken_by``); otherwise an append by another process is seen within POLL_INTERVAL_S."""
        fd = self._woken_by_fd
        loop = asyncio.get_running_loop()
        if fd is not None:
            loop.add_reader(fd, self._wake.set)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
        finally:
            if fd is not None:
                loop.remove_reader(fd)

    def _read_wake_ups(self) -> None:
        """Empty ``woken_by``'s pipe; at its end (the writer is gone) stop reading it."""
        fd = self._woken_by_fd
        if fd is None:
            return
        try:
            while data := os.read(fd, 65_536):
                if len(data) < 65_536:
                    return
        except BlockingIOError:  # empty
            return
        except OSError:
            pass
        self._woken_by_fd = None  # ended or unreadable: appends are seen by polling

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        # Without this, the next fetch would start after them and a later ack would delete
        # them unapplied.
        if deliveries:
            self._delivered = min(self._delivered, min(d.token for d in deliveries) - 1)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        last = max(d.token for d in deliveries)
        if self._record_ack is not None:
            self._record_ack(last)
        else:
            await self.acknowledge_upto(last)

    def hand_acknowledgements_to(self, record: Callable[[int], None]) -> None:
        # The applier process of `serve` runs at the lowest priority: writing the log, it could
        # be preempted while it holds the write lock that every commit of the server needs.
        self._record_ack = record

    async def acknowledge_upto(self, position: int) -> None:
        def advance(conn: sqlite3.Connection) -> None:
            top = conn.execute(
                "SELECT seq, events FROM batches ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if top is None:
                return  # nothing was ever logged: nothing to acknowledge
            # Never past the last event logged: events logged later must still be delivered.
            upto = min(position, top[0] << INDEX_BITS | top[1] - 1)
            conn.execute(
                "UPDATE cursors SET seq = ? WHERE name = 'applier_position' AND seq < ?",
                (upto, upto),
            )
            # Rows before the cursor's are done. Its own row stays: so does the top row,
            # and rowids never go back.
            conn.execute("DELETE FROM batches WHERE seq < ?", (upto >> INDEX_BITS,))

        await self.db.write(advance)

    async def find(self, workspace: str, event_id: str) -> Event | None:
        def lookup(conn: sqlite3.Connection) -> tuple[int, list[tuple[int, int, bytes]]]:
            cursor = _cursor(conn)
            # instr() skips, in SQLite's C, every row that cannot hold the id: a made id starts
            # with its run's first characters, which a plain batch's record holds (_MAY_HOLD_ID).
            return cursor, conn.execute(
                "SELECT seq, events, body FROM batches WHERE seq >= ? AND " + _MAY_HOLD_ID,
                (cursor >> INDEX_BITS, event_id.encode(), event_id[:ID_RUN_CHARS].encode()),
            ).fetchall()

        cursor, rows = await self.db.read(lookup)
        for seq, count, body in rows:
            for index, event in enumerate(_decode(count, body)):
                found = event.event_id == event_id and event.workspace == workspace
                if found and seq << INDEX_BITS | index > cursor:
                    return event
        return None

    async def erase_pending(
        self, workspace: str, contact_id: str, upto_us: int, everything: bool = False
    ) -> int:
        # Each matching event is replaced by its stub in its row, in place: every position
        # stays what it was (a consumer may have read part of the row). Written by whichever
        # process erases (the server, normally): an erasure is rare and short.
        def rewrite(conn: sqlite3.Connection) -> int:
            cursor = _cursor(conn)
            found = contact_id.encode(errors="surrogatepass")
            rows = conn.execute(
                "SELECT seq, events, body FROM batches WHERE seq >= ? AND " + _MAY_HOLD,
                (cursor >> INDEX_BITS, found),
            ).fetchall()
            erased = 0
            for seq, count, body in rows:
                records = _records(count, body)
                events = _events_of(records, count)
                # A plain batch's record holding the contact's id is rewritten whatever its
                # events say: its body may hold bytes no event has (a key given twice in an
                # object: the last is the one decoded).
                changed = None in records
                for index, event in enumerate(events):
                    if (
                        (event.workspace, event.contact_id) == (workspace, contact_id)
                        and (everything or predates(event, upto_us))
                        and (event.properties or event.metadata or event.event_name)
                    ):
                        events[index] = erased_stub(event)
                        changed = True
                        erased += 1
                if changed:
                    conn.execute(
                        "UPDATE batches SET body = ? WHERE seq = ?",
                        (encode_events(events), seq),
                    )
            return erased

        return await self.db.write(rewrite)

    async def scrub(self) -> None:
        # The file is copied into a new one (SqliteDatabase.scrub): its time grows with the
        # events waiting (~2 ms a thousand; benchmarks/README.md, session 18) and appends wait
        # for it. Erasures are rare, and the log is short while the applier keeps up.
        await self.db.scrub(_vacuumed)

    async def depth(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            cursor = _cursor(conn)
            seq, index = cursor >> INDEX_BITS, cursor & INDEX_MASK
            total, done = conn.execute(
                "SELECT COALESCE(SUM(events), 0), COALESCE(SUM(seq = ?) * (? + 1), 0)"
                " FROM batches WHERE seq >= ?",
                (seq, index, seq),
            ).fetchone()
            return max(0, int(total) - int(done))

        return await self.db.read(count)


POLL_INTERVAL_S = 0.02
INDEX_BITS = 20  # room for an event's index in its row
INDEX_MASK = (1 << INDEX_BITS) - 1
assert MAX_RECORDS_PER_ROW <= INDEX_MASK, "a row's events must fit in a position's index bits"
assert c.MAX_BATCH_EVENTS <= MAX_RECORDS_PER_ROW, "a plain batch's record must fit in one row"
_APPEND = "INSERT INTO batches (events, body) VALUES (?, ?)"
# Only a row that holds the value (UTF-8) may hold what is looked for: the log's records hold
# every string as it is (a plain batch's body holds no escape: _plain_record). An event id may
# also be one made from a run, which a plain batch's record holds instead (its first chars).
_MAY_HOLD = "instr(body, ?) > 0"
_MAY_HOLD_ID = "(instr(body, ?) > 0 OR instr(body, ?) > 0)"
# The kept batches' shapes by the msgpack extension type of their records (``RECORD``).
_KEPT: dict[int, type[KeptBatch]] = {kind.RECORD: kind for kind in (PlainBatch, PlainSegmentBatch)}
LOG_PAGE_SIZE = 65_536  # bytes: SQLite's largest page


class _PlainRecord(msgspec.Struct, array_like=True):
    workspace: str
    received_us: int
    id_start: str
    id_high: int
    id_low: int
    body: bytes


_encode = msgspec.msgpack.Encoder().encode
_decode_plain_record = msgspec.msgpack.Decoder(_PlainRecord).decode
_decode_records = msgspec.msgpack.Decoder(list[Event | msgspec.msgpack.Ext | None]).decode


def _plain_record(batch: KeptBatch) -> bytes:
    """A kept batch's records: its body (as the client sent it) with what its events share,
    as one msgpack extension of its shape's type, and a nil for each of its other events, so that a row still
    holds one record an event (its positions and counts are as before). Of two events or
    more: a row with a nil in it is one to look into (``_decode``). Of a body with no
    backslash: its strings are in it as they are (no JSON escape), so that a lookup or an
    erasure finds an id or a contact's id in it as in any record (``_MAY_HOLD``, ``_MAY_HOLD_ID``)."""
    start, high, low = batch.id_run
    record = _PlainRecord(batch.workspace, batch.received_us, start, high, low, batch.body)
    return _encode(msgspec.msgpack.Ext(batch.RECORD, _encode(record))) + _NILS[: len(batch) - 1]


_NILS = b"\xc0" * MAX_RECORDS_PER_ROW


def _decode(count: int, body: bytes) -> list[Event]:
    """The events of a row: its records are one msgpack array once the array's header is put
    in front; a plain batch's record gives its events in its place and the nils after it.
    Raises ``msgspec.DecodeError`` on a corrupt row."""
    return _events_of(_records(count, body), count)


def _records(count: int, body: bytes) -> list[Event | msgspec.msgpack.Ext | None]:
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 2**16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return _decode_records(header + body)


def _events_of(records: list[Event | msgspec.msgpack.Ext | None], count: int) -> list[Event]:
    if None not in records:  # (no plain batch in it: a search of identities, in C)
        return records  # type: ignore[return-value]
    events: list[Event] = []
    for record in records:
        if type(record) is Event:
            events.append(record)
        elif type(record) is msgspec.msgpack.Ext:
            events += _plain_events(record)
    if len(events) != count:
        raise msgspec.DecodeError(f"a row of {count} events holds {len(events)}")
    return events


def _plain_events(ext: msgspec.msgpack.Ext) -> list[Event]:
    kind = _KEPT.get(ext.code)
    if kind is None:
        raise msgspec.DecodeError(f"an unknown record (extension type {ext.code})")
    r = _decode_plain_record(ext.data)
    run = (r.id_start, r.id_high, r.id_low)
    return kind.from_record(r.workspace, r.received_us, run, r.body).events()


def _vacuumed(conn: sqlite3.Connection) -> None:
    """After ``scrub``'s copy: a file of schema 2 asked for one (``vacuum_due``), done."""
    conn.execute("DELETE FROM vacuum_due")


def _cursor(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute("SELECT seq FROM cursors WHERE name = 'applier_position'").fetchone()[0]
    )


def _rows_from(
    conn: sqlite3.Connection, position: int, max_events: int
) -> list[tuple[int, int, bytes]]:
    """The rows holding the next ``max_events`` events after ``position`` (the first may be
    the rest of a row delivered in part)."""
    seq, index = position >> INDEX_BITS, position & INDEX_MASK
    rows, events = [], 0
    for row in conn.execute(
        "SELECT seq, events, body FROM batches WHERE seq >= ? ORDER BY seq", (seq,)
    ):
        left = row[1] - (index + 1 if row[0] == seq else 0)
        if left <= 0:
            continue
        rows.append(row)
        events += left
        if events >= max_events:
            break
    return rows
