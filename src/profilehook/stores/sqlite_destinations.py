"""``Destinations`` on SQLite (stores/destinations.py), in a file of its own beside the store's
(``<name>.destinations.sqlite3``): delivery bookkeeping commits often, and must not queue behind
(or hold up) the applier's writes to the profiles file.

Its commits are not fsynced one by one (``synchronous=NORMAL``; still whole after a killed
process): a claim, an outcome or a cursor lost to a power cut only sends a change again, which
at least once allows. What an API call answers for (a destination created, deleted, replayed,
disabled) is fsynced before it returns.

**Heads.** Each (destination, contact)'s earliest pending row is its **head**, and only heads are
claimable, as on PostgreSQL (postgres_destinations.HEADS): the claim walks the due heads through
their own index and reads only what it claims. Walking every due row read the rows waiting
behind each leased or retrying head too, so a destination with a few busy contacts had a claim
cost that grew with their backlog: in scenario S (10 contacts changing ~170 times a second each)
delivery fell to ~80 a second and its backlog grew without end. ``enqueue_deliveries`` makes a
new row a head when its contact has no pending row; ``finish_deliveries`` makes the next
pending row one when a head is delivered or failed; an erasure or a destination's deletion
removes every row of the contact or destination. One writer: each sees what the other wrote.
The claim still checks for an earlier pending row, so the order never rests on the flag."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from profilehook.sqlite_db import SqliteDatabase
from profilehook.stores.destinations import (
    STATS_SQL,
    Delivery,
    DeliveryStats,
    DeliveryStatus,
    Destination,
    Destinations,
    Finished,
    NewDelivery,
    delivery_of,
    destination_of,
    failing_since,
    new_delivery_rows,
)

VERSION = 3  # 2: deliveries_due, deliveries_finished; 3: heads (module doc) for deliveries_due
SCHEMA = """
CREATE TABLE IF NOT EXISTS destinations (
    destination_id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    description TEXT NOT NULL,
    properties TEXT NOT NULL,  -- JSON list
    segments TEXT NOT NULL,  -- JSON list
    cursor TEXT,
    next_position INTEGER NOT NULL DEFAULT 1,
    failing_since_us INTEGER,
    disabled_us INTEGER,
    disabled_reason TEXT
);
CREATE INDEX IF NOT EXISTS destinations_by_workspace ON destinations (workspace, created_us);
CREATE TABLE IF NOT EXISTS deliveries (
    destination_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    change_id TEXT NOT NULL,
    cursor TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    applied_us INTEGER NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    lease_owner TEXT,
    lease_until_us INTEGER,
    head INTEGER NOT NULL DEFAULT 0,  -- 1: its contact's earliest pending row (module doc)
    PRIMARY KEY (destination_id, position)
) WITHOUT ROWID;
-- The pending rows, per contact in order: what a claim looks at.
CREATE INDEX IF NOT EXISTS deliveries_pending
    ON deliveries (destination_id, contact_id, position) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries (destination_id, status, position);
-- The heads by when they are due: a claim walks this and stops after its batch (module doc).
CREATE INDEX IF NOT EXISTS deliveries_heads_due
    ON deliveries (next_attempt_us, position) WHERE status = 'pending' AND head;
-- Finished rows by when: what retention purges.
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (updated_us) WHERE status <> 'pending';
"""

_DESTINATION = (
    "destination_id, workspace, url, secret, created_us, description, properties, segments,"
    " cursor, failing_since_us, disabled_us, disabled_reason"
)
_DELIVERY = (
    "destination_id, position, change_id, cursor, contact_id, applied_us, payload, status,"
    " attempts, next_attempt_us, updated_us, last_status, last_error, lease_owner, lease_until_us"
)


def destinations_database(store_path: Path) -> SqliteDatabase:
    path = store_path.with_name(f"{store_path.stem}.destinations{store_path.suffix}")
    # secure_delete: an erased contact's deliveries (their changes) leave no bytes in the file.
    # Version 2 only adds indexes, which the schema creates; 3 marks the heads.
    return SqliteDatabase(
        path,
        SCHEMA,
        VERSION,
        synchronous="NORMAL",
        migrations={1: _nothing, 2: _mark_heads},
        secure_delete="ON",
    )


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _mark_heads(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE deliveries ADD COLUMN head INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "UPDATE deliveries SET head = 1 WHERE status = 'pending' AND NOT EXISTS ("
        " SELECT 1 FROM deliveries e INDEXED BY deliveries_pending"
        " WHERE e.destination_id = deliveries.destination_id"
        " AND e.contact_id = deliveries.contact_id AND e.status = 'pending'"
        " AND e.position < deliveries.position)"
    )
    conn.execute("DROP INDEX IF EXISTS deliveries_due")


class SqliteDestinations(Destinations):
    destinations_db: SqliteDatabase  # set by the store, opened and closed with it

    async def create_destination(self, destination: Destination, most: int) -> bool:
        d = destination

        def insert(conn: sqlite3.Connection) -> bool:
            (count,) = conn.execute(
                "SELECT count(*) FROM destinations WHERE workspace = ?", (d.workspace,)
            ).fetchone()
            if count >= most:
                return False
            conn.execute(
                f"INSERT INTO destinations ({_DESTINATION}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    d.destination_id,
                    d.workspace,
                    d.url,
                    d.secret,
                    d.created_us,
                    d.description,
                    _list(d.properties),
                    _list(d.segments),
                    d.cursor,
                    d.failing_since_us,
                    d.disabled_us,
                    d.disabled_reason,
                ),
            )
            return True

        made = await self.destinations_db.write(insert)
        await self.destinations_db.fsync_wal()
        return made

    async def list_destinations(self, workspace: str) -> list[Destination]:
        rows = await self.destinations_db.read(
            lambda conn: conn.execute(
                f"SELECT {_DESTINATION} FROM destinations WHERE workspace = ?"
                " ORDER BY created_us, destination_id",
                (workspace,),
            ).fetchall()
        )
        return [destination_of(row, json.loads(row[6]), json.loads(row[7])) for row in rows]

    async def get_destination(self, workspace: str, destination_id: str) -> Destination | None:
        row = await self.destinations_db.read(
            lambda conn: conn.execute(
                f"SELECT {_DESTINATION} FROM destinations WHERE destination_id = ?"
                " AND workspace = ?",
                (destination_id, workspace),
            ).fetchone()
        )
        return None if row is None else destination_of(row, json.loads(row[6]), json.loads(row[7]))

    async def delete_destination(self, workspace: str, destination_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            gone = conn.execute(
                "DELETE FROM destinations WHERE destination_id = ? AND workspace = ?",
                (destination_id, workspace),
            ).rowcount
            if gone:
                conn.execute("DELETE FROM deliveries WHERE destination_id = ?", (destination_id,))
            return bool(gone)

        gone = await self.destinations_db.write(delete)
        await self.destinations_db.fsync_wal()
        return gone

    async def forget_contact_deliveries(self, workspace: str, contact_id: str) -> None:
        await self.destinations_db.write(
            lambda conn: conn.execute(
                "DELETE FROM deliveries WHERE contact_id = ? AND destination_id IN"
                " (SELECT destination_id FROM destinations WHERE workspace = ?)",
                (contact_id, workspace),
            )
        )

    async def active_destinations(self) -> list[Destination]:
        rows = await self.destinations_db.read(
            lambda conn: conn.execute(
                f"SELECT {_DESTINATION} FROM destinations WHERE disabled_us IS NULL"
                " ORDER BY created_us, destination_id"
            ).fetchall()
        )
        return [destination_of(row, json.loads(row[6]), json.loads(row[7])) for row in rows]

    async def enqueue_deliveries(
        self,
        destination_id: str,
        expected: str | None,
        cursor: str,
        deliveries: Sequence[NewDelivery],
        now_us: int,
    ) -> bool:
        def enqueue(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "UPDATE destinations SET cursor = ?, next_position = next_position + ?"
                " WHERE destination_id = ? AND cursor IS ? RETURNING next_position",
                (cursor, len(deliveries), destination_id, expected),
            ).fetchone()
            if row is None:
                return False
            start = row[0] - len(deliveries)
            # A head when its contact has nothing pending: the rows go in one by one, so a
            # contact's second row of this batch sees its first (module doc).
            conn.executemany(
                f"INSERT INTO deliveries ({_DELIVERY}, head)"
                " VALUES (?1,?2,?3,?4,?5,?6,?7,'pending',0,?8,?9,NULL,NULL,NULL,NULL,"
                " NOT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_pending"
                "  WHERE destination_id = ?1 AND contact_id = ?5 AND status = 'pending'))",
                new_delivery_rows(destination_id, start, deliveries, now_us),
            )
            return True

        return await self.destinations_db.write(enqueue)

    async def claim_deliveries(
        self, owner: str, now_us: int, lease_until_us: int, limit: int
    ) -> list[Delivery]:
        def claim(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                f"UPDATE deliveries SET lease_owner = ?, lease_until_us = ?"
                f" WHERE (destination_id, position) IN ({_CLAIMABLE} LIMIT ?)"
                f" RETURNING {_DELIVERY}",
                (owner, lease_until_us, now_us, now_us, limit),
            ).fetchall()
            found = [delivery_of(row) for row in rows]
            found.sort(key=lambda d: (d.next_attempt_us, d.position))
            return found

        return await self.destinations_db.write(claim)

    async def finish_deliveries(self, owner: str, now_us: int, finished: Sequence[Finished]) -> int:
        def finish(conn: sqlite3.Connection) -> int:
            recorded: set[tuple[str, int]] = set()
            ended: set[tuple[str, str]] = set()  # (destination, contact)
            for start in range(0, len(finished), _FINISH_ROWS):
                chunk = finished[start : start + _FINISH_ROWS]
                params: list[Any] = []
                for f in chunk:
                    params += (f.destination_id, f.position, f.outcome, f.next_attempt_us)
                    params += (f.status, f.error)
                params += (now_us, owner)
                sql = _FINISH.format(rows=",".join(["(?,?,?,?,?,?)"] * len(chunk)))
                for destination_id, position, contact_id, status in conn.execute(sql, params):
                    recorded.add((destination_id, position))
                    if status != "pending":
                        ended.add((destination_id, contact_id))
            # The next pending row of each contact whose head ended is its head now (module doc).
            conn.executemany(_NEXT_HEAD, ended)
            done = [f for f in finished if (f.destination_id, f.position) in recorded]
            for destination_id, since in failing_since(done, now_us).items():
                conn.execute(
                    "UPDATE destinations SET failing_since_us = coalesce(failing_since_us, ?)"
                    " WHERE destination_id = ?"
                    if since is not None
                    else "UPDATE destinations SET failing_since_us = ? WHERE destination_id = ?"
                    " AND failing_since_us IS NOT NULL",
                    (since, destination_id),
                )
            return len(done)

        return await self.destinations_db.write(finish)

    async def purge_deliveries(self, before_us: int, limit: int) -> int:
        return await self.destinations_db.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM deliveries WHERE (destination_id, position) IN"
                    " (SELECT destination_id, position FROM deliveries"
                    "  WHERE status <> 'pending' AND updated_us < ? ORDER BY updated_us LIMIT ?)",
                    (before_us, limit),
                ).rowcount
            )
        )

    async def list_deliveries(
        self, destination_id: str, status: DeliveryStatus | None, limit: int
    ) -> list[Delivery]:
        def select(conn: sqlite3.Connection) -> list[Any]:
            if status is None:
                return conn.execute(
                    f"SELECT {_DELIVERY} FROM deliveries WHERE destination_id = ?"
                    " ORDER BY position DESC LIMIT ?",
                    (destination_id, limit),
                ).fetchall()
            return conn.execute(
                f"SELECT {_DELIVERY} FROM deliveries WHERE destination_id = ? AND status = ?"
                " ORDER BY position DESC LIMIT ?",
                (destination_id, status, limit),
            ).fetchall()

        return [delivery_of(row) for row in await self.destinations_db.read(select)]

    async def replay_destination(
        self, workspace: str, destination_id: str, after: str | None
    ) -> bool:
        def replay(conn: sqlite3.Connection) -> bool:
            return bool(
                conn.execute(
                    "UPDATE destinations SET cursor = ? WHERE destination_id = ? AND workspace = ?",
                    (after, destination_id, workspace),
                ).rowcount
            )

        done = await self.destinations_db.write(replay)
        await self.destinations_db.fsync_wal()
        return done

    async def disable_destination(self, destination_id: str, at_us: int, reason: str) -> None:
        await self.destinations_db.write(
            lambda conn: conn.execute(
                "UPDATE destinations SET disabled_us = ?, disabled_reason = ?"
                " WHERE destination_id = ?",
                (at_us, reason, destination_id),
            )
        )
        await self.destinations_db.fsync_wal()

    async def delivery_stats(self) -> dict[str, DeliveryStats]:
        rows = await self.destinations_db.read(lambda conn: conn.execute(STATS_SQL).fetchall())
        return {row[0]: DeliveryStats(*row[1:]) for row in rows}


# Due, unleased heads of active destinations (module doc), walked through deliveries_heads_due.
# INDEXED BY: left to itself the planner looked for an earlier pending row of the contact by
# the primary key (every earlier position of the destination): 7.5 s for a claim of 500 with
# 28,000 rows, against 2 ms through deliveries_pending.
_CLAIMABLE = """
SELECT d.destination_id, d.position FROM deliveries d INDEXED BY deliveries_heads_due
JOIN destinations s ON s.destination_id = d.destination_id AND s.disabled_us IS NULL
WHERE d.status = 'pending' AND d.head AND d.next_attempt_us <= ?
AND (d.lease_until_us IS NULL OR d.lease_until_us <= ?)
AND NOT EXISTS (
    SELECT 1 FROM deliveries e INDEXED BY deliveries_pending
    WHERE e.destination_id = d.destination_id
    AND e.contact_id = d.contact_id AND e.status = 'pending' AND e.position < d.position
)
ORDER BY d.next_attempt_us, d.position
"""


# The outcomes of many calls in one statement (a row of ``f`` each), each recorded only while
# the loop (the last parameter) still holds the delivery's lease; what it recorded comes back.
_FINISH = """
WITH f(destination_id, position, status, next_us, last_status, last_error) AS (VALUES {rows})
UPDATE deliveries SET status = f.status, attempts = attempts + 1,
    next_attempt_us = coalesce(f.next_us, deliveries.next_attempt_us), updated_us = ?,
    last_status = f.last_status, last_error = f.last_error, lease_owner = NULL,
    lease_until_us = NULL
FROM f WHERE deliveries.destination_id = f.destination_id AND deliveries.position = f.position
AND deliveries.status = 'pending' AND deliveries.lease_owner = ?
RETURNING deliveries.destination_id, deliveries.position, deliveries.contact_id,
    deliveries.status
"""

# The earliest pending row of a (destination, contact) becomes its head.
_NEXT_HEAD = """
UPDATE deliveries SET head = 1 WHERE (destination_id, position) = (
    SELECT destination_id, position FROM deliveries INDEXED BY deliveries_pending
    WHERE destination_id = ?1 AND contact_id = ?2 AND status = 'pending'
    ORDER BY position LIMIT 1
)
"""
_FINISH_ROWS = 1_000  # rows of ``f`` per statement: 6,002 parameters (SQLite allows 32,766)


def _list(names: Sequence[str]) -> str:

    return json.dumps(list(names))
