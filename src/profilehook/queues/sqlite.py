"""The embedded default log: a SQLite file, WAL, synchronous=FULL, group commit.

Acknowledged events are removed from the log; the store keeps the history. One consumer
(the applier of ``serve`` or one ``worker``) reads the log at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from profilehook.events import Event, decode_event, encode_event
from profilehook.queues.base import Delivery, Queue
from profilehook.sqlite_db import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY,
    workspace TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
INSERT OR IGNORE INTO cursors (name, seq) VALUES ('applier', 0);
"""


class SqliteQueue(Queue):
    def __init__(self, path: Path):
        self.db = SqliteDatabase(path, SCHEMA)
        self._delivered = 0
        self._wake = asyncio.Event()

    async def open(self) -> None:
        await self.db.open()
        self._delivered = await self.db.read(_cursor)

    async def close(self) -> None:
        await self.db.close()

    async def publish(self, events: Sequence[Event]) -> None:
        rows = [(e.workspace, e.event_id, encode_event(e)) for e in events]
        await self.db.insert(_APPEND, rows)
        self._wake.set()

    async def fetch(self, max_events: int, wait_s: float) -> list[Delivery]:
        self._wake.clear()
        rows = await self.db.read(lambda conn: _rows_after(conn, self._delivered, max_events))
        if not rows:
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                return []
            rows = await self.db.read(lambda conn: _rows_after(conn, self._delivered, max_events))
        if rows:
            self._delivered = rows[-1][0]
        return [Delivery(decode_event(body), seq) for seq, body in rows]

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        # Without this, the next fetch would start after them and a later ack would delete
        # them unapplied.
        if deliveries:
            self._delivered = min(self._delivered, min(d.token for d in deliveries) - 1)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        upto = max(d.token for d in deliveries)

        def advance(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE cursors SET seq = ? WHERE name = 'applier' AND seq < ?", (upto, upto)
            )
            conn.execute(
                "DELETE FROM log WHERE seq < ?", (upto,)
            )  # keep the top row: rowids never go back

        await self.db.write(advance)

    async def find(self, workspace: str, event_id: str) -> Event | None:
        def lookup(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT body FROM log WHERE seq > (SELECT seq FROM cursors WHERE name = 'applier')"
                " AND event_id = ? AND workspace = ? LIMIT 1",
                (event_id, workspace),
            ).fetchone()
            return None if row is None else row[0]

        body = await self.db.read(lookup)
        return None if body is None else decode_event(body)

    async def depth(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM log").fetchone()[0]
            return max(0, int(top) - _cursor(conn))

        return await self.db.read(count)


_APPEND = "INSERT INTO log (workspace, event_id, body) VALUES (?, ?, ?)"


def _cursor(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT seq FROM cursors WHERE name = 'applier'").fetchone()[0])


def _rows_after(conn: sqlite3.Connection, seq: int, limit: int) -> list[tuple[int, bytes]]:
    return conn.execute(
        "SELECT seq, body FROM log WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
    ).fetchall()
