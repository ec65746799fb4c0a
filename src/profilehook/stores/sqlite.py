"""The embedded default profile store: a SQLite file, one row per contact.

``apply`` runs on the writer thread in one transaction: dedupe against the history, plan each
contact with the shared rules, write only what wins.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any

import msgspec

from profilehook.changes import Change, change_id, decode_body, encode_body
from profilehook.constants import MAX_SEGMENTS_PER_WORKSPACE, SCOPES
from profilehook.errors import CursorExpired, InvalidCursor
from profilehook.events import Event, Version, decode_event, encode_event, now_us
from profilehook.filters import Query
from profilehook.sqlite_db import Later, SqliteDatabase, insert_rows
from profilehook.stores import sqlite_segments, sqlite_values
from profilehook.stores.base import (
    AliasUpdate,
    ApiKey,
    ApplyResult,
    Base,
    Contact,
    ContactErasure,
    ContactPlan,
    ContactState,
    ErasedContact,
    Erasure,
    EventRecord,
    KeyGrant,
    Marks,
    Nonce,
    Progress,
    Source,
    Store,
    by_contact,
    contact_exists,
    decode_marks,
    encode_marks,
    first_of_each,
    plan_contact,
    repeats,
    scopes_of,
    scopes_text,
    split_erased,
    split_purged,
    too_old_error,
)
from profilehook.stores.changes import ChangeLog
from profilehook.stores.query import ContactQueries, QueryPage
from profilehook.stores.segments import (
    BACKFILL_CHUNK_CONTACTS,
    Segment,
    Segments,
    Touched,
    everything,
    profile_after,
    profile_before,
    touched_by,
)
from profilehook.stores.sqlite_destinations import SqliteDestinations, destinations_database

# 1: events keyed by their ids, one property per map entry; 2: id_key a hash; 3: id_key
# time-ordered; 4: erasures (older versions would apply an erased contact's events: they must not
# open a file that has them); 5: contacts (and snapshots) keep their newest operation's version;
# 6: and their properties' marks (ContactState.marks); 7: contact_values, the searchable copy of
# the live values (stores/sqlite_values.py); 8: segment members keyed by the segment's integer
# (stores/sqlite_segments.py)
SCHEMA_VERSION = 8
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS events (
    workspace TEXT NOT NULL,
    event_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    status TEXT NOT NULL,
    applied_us INTEGER,
    error TEXT,
    body BLOB NOT NULL,
    id_key INTEGER NOT NULL,  -- _id_key(workspace, event_id)
    contact_key INTEGER NOT NULL  -- _key(workspace, contact_id)
);
-- A rowid table: rows with bodies append at the end. The indexes hold integers rather than the
-- ids, so they span a third of the pages; a random insert dirties a page the commit rewrites,
-- so the keys are chosen to append: an id made by profilehook begins with its time, and so does
-- its key (see _id_key); a contact's events mostly come in time order. A key may match another
-- id: every lookup compares the real columns too, and ``apply`` keeps (workspace, event_id)
-- unique by checking in the transaction that inserts.
CREATE INDEX IF NOT EXISTS events_by_id ON events (id_key);
CREATE INDEX IF NOT EXISTS events_by_contact ON events (contact_key, ts_us);
-- One row per contact: its properties are msgpack [[ts_us, event_id, {name: value}], ...], one
-- entry per version that set any (value None: unset, the tombstone keeps its version), read and
-- written whole per batch.
CREATE TABLE IF NOT EXISTS contacts (
    workspace TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    last_ts_us INTEGER,
    last_event_id TEXT,
    deleted_ts_us INTEGER,
    deleted_event_id TEXT,
    properties BLOB NOT NULL,
    ops_ts_us INTEGER,  -- the newest event with an operation (ContactState.ops_upto)
    ops_event_id TEXT,
    marks BLOB,  -- msgpack {name: [ts_us, event_id, ts_us, event_id]} (ContactState.marks)
    PRIMARY KEY (workspace, contact_id)
) WITHOUT ROWID;
-- Retention (purge_history): per contact, the folded state of its purged events, in the
-- contacts table's shape (rebuild starts from it). Added, like the index of event times the
-- purge walks, without a new schema version: a file without them gets them at open.
CREATE TABLE IF NOT EXISTS snapshots (
    workspace TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    last_ts_us INTEGER,
    last_event_id TEXT,
    deleted_ts_us INTEGER,
    deleted_event_id TEXT,
    properties BLOB NOT NULL,
    ops_ts_us INTEGER,  -- the newest event with an operation (ContactState.ops_upto)
    ops_event_id TEXT,
    marks BLOB,  -- msgpack {name: [ts_us, event_id, ts_us, event_id]} (ContactState.marks)
    PRIMARY KEY (workspace, contact_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts_us);
CREATE TABLE IF NOT EXISTS profile_aliases (
    workspace TEXT NOT NULL,
    source_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (workspace, source_id, profile_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parked_events (
    workspace TEXT NOT NULL,
    source_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (workspace, source_id, profile_id, event_id)
) WITHOUT ROWID;
-- Signed webhook calls seen (Nonce.key()), until their Date is refused anyway. A table added
-- without a new schema version: a file without it gets it at open, and older code ignores it.
CREATE TABLE IF NOT EXISTS seen_nonces (
    key BLOB PRIMARY KEY,
    expires_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_nonces_by_expiry ON seen_nonces (expires_us);
CREATE TABLE IF NOT EXISTS erasures (
    erasure_id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    requested_us INTEGER NOT NULL,
    suppress INTEGER NOT NULL,
    completed_us INTEGER
);
CREATE INDEX IF NOT EXISTS erasures_pending ON erasures (requested_us) WHERE completed_us IS NULL;
-- What ``apply`` checks: one row per erased contact (empty table: one page read per batch).
CREATE TABLE IF NOT EXISTS erased_contacts (
    workspace TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    upto_us INTEGER NOT NULL,
    suppressed INTEGER NOT NULL,
    PRIMARY KEY (workspace, contact_id)
) WITHOUT ROWID;
-- The change feed (stores/changes.py), written by ``apply`` in its transaction. One writer
-- commits in turn, so ``seq`` (never reused: AUTOINCREMENT) is the apply order; a change's cursor
-- is its seq. Tables added without a new schema version: a file without them gets them at open.
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    applied_us INTEGER NOT NULL,
    body BLOB NOT NULL,  -- msgpack ChangeBody
    contact_key INTEGER NOT NULL  -- _key(workspace, contact_id), for erasures
);
CREATE INDEX IF NOT EXISTS changes_by_workspace ON changes (workspace, seq);
CREATE INDEX IF NOT EXISTS changes_by_contact ON changes (contact_key);
-- The newest event time retention purged (purge_history): apply refuses a new event no newer
-- (stores/base.py split_purged). Added without a new schema version, like snapshots.
CREATE TABLE IF NOT EXISTS history_purged (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    upto_us INTEGER NOT NULL
);
-- Per workspace, the newest change retention purged: a cursor before it has expired.
CREATE TABLE IF NOT EXISTS changes_purged (
    workspace TEXT PRIMARY KEY,
    upto INTEGER NOT NULL
) WITHOUT ROWID;
"""
    + sqlite_values.TABLE.strip()
    + ";\n"
    + sqlite_segments.TABLES
)

# Keys and sources live in a file of their own: the hot path checks on every request whether
# anything changed (its WAL-index header: sqlite_shm.py), and the applier's commits must not make
# it look so.
CATALOG_VERSION = 2  # 2: keys have scopes (those from before get every scope)
CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    source_id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_us INTEGER NOT NULL,
    revoked_us INTEGER,
    scopes TEXT NOT NULL  -- space-separated, in SCOPES' order
);
"""

MAX_BOUND_NAMES = 5_000  # event ids looked up per statement
MAX_BOUND_KEYS = 5_000  # contacts looked up per statement
REBUILD_CHUNK_EVENTS = 5_000
MAX_CACHED_ANSWERS = 10_000
CATALOG_CHECK_INTERVAL_S = 0.001
# The store writer's page cache. SQLite's default (2 MiB) made the applier re-read index pages:
# with this, an applied event costs about a quarter less CPU (see benchmarks/README.md).
STORE_CACHE_KIB = 65_536


class SqliteStore(Store, ContactQueries, Segments, SqliteDestinations):
    def __init__(self, path: Path):
        # Commits are not fsynced one by one: the applier calls ``sync`` before it lets the log
        # forget what was applied, so a power loss only means re-applying (deduplicated).
        self.db = SqliteDatabase(
            path,
            SCHEMA,
            SCHEMA_VERSION,
            synchronous="NORMAL",
            watch_commits=True,  # feed_mark
            migrations={
                2: _rekey_2_to_3,
                3: _add_erasures_3_to_4,
                4: _operations_4_to_5,
                5: _marks_5_to_6,
                6: _values_6_to_7,
                7: sqlite_segments.keys_7_to_8,
            },
            cache_kib=STORE_CACHE_KIB,
            # Every deleted or rewritten row is overwritten with zeros, in pages and in freed
            # pages: an erased contact's old profile rows leave no bytes in the file.
            secure_delete="ON",
        )
        self.catalog = SqliteDatabase(
            path.with_name(f"{path.stem}.catalog{path.suffix}"),
            CATALOG_SCHEMA,
            CATALOG_VERSION,
            migrations={1: _scopes_1_to_2},
            # This process's own changes are seen from the next lookup on, whatever the check.
            after_commit=self._forget_catalog,
            watch_commits=True,
        )
        self.destinations_db = destinations_database(path)
        # Answers for the hot path, valid until any connection commits to the catalog.
        self._cache: dict[tuple[str, str], Any] = {}
        self._cache_version: object = None
        self._cache_checked_at = float("-inf")

    async def open(self) -> None:
        await self.db.open()
        try:
            await self.catalog.open()
        except BaseException:
            await self.db.close()
            raise
        try:
            await self.destinations_db.open()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        try:
            await self.destinations_db.close()
            await self.catalog.close()
        finally:
            await self.db.close()

    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        return await self.db.write(lambda conn: _apply(conn, events))

    async def sync(self) -> None:
        await self.db.fsync_wal()

    async def record_failure(self, event: Event, error: str) -> None:
        id_key = _id_key(event.workspace, event.event_id)

        def insert(conn: sqlite3.Connection) -> None:
            if _find_event(conn, event.workspace, event.event_id, id_key) is None:
                # An erased contact's event is kept as its stub, whatever failed.
                found = _erased_contacts(conn, [event]) if _any_erased(conn) else {}
                _, erased = split_erased([event], found)
                if erased:
                    row = _event_row(erased[0], id_key, "erased", now_us(), {})
                else:
                    row = _event_row(event, id_key, "failed", now_us(), {}, error)
                conn.execute(_INSERT_EVENT, row)

        await self.db.write(insert)

    async def get_contact(self, workspace: str, contact_id: str) -> Contact | None:
        # One lookup by key: on the event loop when it can run at once (sqlite_db.read_quick).
        return await self.db.read_quick(lambda conn: _contact(conn, workspace, contact_id))

    def contact_groups_at_once(
        self, workspace: str, contact_id: str
    ) -> tuple[int, PropertyGroups] | Later | None:
        """A contact as stored, read on the calling thread: its last update's time and its
        property groups (tombstones included: ``views.contact_body`` drops them), None when it
        does not exist, or ``LATER`` when the read would wait for a lock (then await
        ``get_contact``). Raises ``StorageUnavailable``. No ``Contact`` is built: the read's
        hot path encodes its answer from the groups as they are decoded."""
        return self.db.read_at_once(lambda conn: _contact_groups(conn, workspace, contact_id))

    async def contacts_page(
        self, workspace: str, after: str | None, limit: int
    ) -> tuple[list[Contact], str | None]:
        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT contact_id, {_ROW_COLUMNS} FROM contacts WHERE workspace = ?"
                + ("" if after is None else " AND contact_id > ?")
                + " ORDER BY contact_id LIMIT ?",
                (workspace, limit) if after is None else (workspace, after, limit),
            ).fetchall()

        rows = await self.db.read(select)
        found = [_contact_of(contact_id, _row(values)) for contact_id, *values in rows]
        return [c for c in found if c is not None], rows[-1][0] if len(rows) == limit else None

    async def query_contacts(self, workspace: str, query: Query) -> QueryPage:
        def select(conn: sqlite3.Connection) -> QueryPage:
            conn.execute("BEGIN")  # one snapshot for the page and its count
            try:
                rows = sqlite_values.select(conn, workspace, query, _ROW_COLUMNS)
                found = [_contact_of(i, _row(values)) for i, *values in rows]
                count = None
                if query.count:
                    sql, params = sqlite_values.count_sql(workspace, query)
                    count = int(conn.execute(sql, params).fetchone()[0])
            finally:
                conn.execute("COMMIT")
            contacts = [c for c in found if c is not None]
            page = contacts[: query.limit]
            more = len(contacts) > query.limit
            return QueryPage(page, page[-1].contact_id if more else None, count)

        return await self.db.read(select)

    async def create_segment(
        self, segment: Segment, most: int = MAX_SEGMENTS_PER_WORKSPACE
    ) -> bool:
        return await self.db.write(lambda conn: sqlite_segments.create(conn, segment, most))

    async def list_segments(self, workspace: str) -> list[Segment]:
        return await self.db.read(lambda conn: sqlite_segments.listed(conn, workspace))

    async def get_segment(self, workspace: str, segment_id: str) -> Segment | None:
        return await self.db.read(lambda conn: sqlite_segments.get(conn, workspace, segment_id))

    async def delete_segment(self, workspace: str, segment_id: str) -> bool:
        return await self.db.write(lambda conn: sqlite_segments.delete(conn, workspace, segment_id))

    async def segment_members(
        self, workspace: str, segment_id: str, after: str | None, limit: int
    ) -> tuple[list[Contact], str | None]:
        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            sql = sqlite_segments.members_sql(_ROW_COLUMNS)
            return conn.execute(sql, (workspace, segment_id, after or "", limit + 1)).fetchall()

        rows = await self.db.read(select)
        found = [c for i, *v in rows[:limit] if (c := _contact_of(i, _row(v))) is not None]
        return found, rows[limit - 1][0] if len(rows) > limit else None

    async def backfill_segment(
        self, workspace: str, segment_id: str, limit: int = BACKFILL_CHUNK_CONTACTS
    ) -> bool:
        return await self.db.write(
            lambda conn: sqlite_segments.backfill(conn, workspace, segment_id, limit)
        )

    async def building_segments(self) -> list[tuple[str, str]]:
        return await self.db.read(sqlite_segments.building)

    async def count_contacts(self, workspace: str) -> int:
        def count(conn: sqlite3.Connection) -> int:
            sql = "SELECT COUNT(*) FROM contacts WHERE workspace = ?"
            return int(conn.execute(sql, (workspace,)).fetchone()[0])

        return await self.db.read(count)

    async def history(
        self, workspace: str, contact_id: str, before: Version | None, limit: int
    ) -> list[EventRecord]:
        top = before or (2**62, "")
        contact_key = _key(workspace, contact_id)

        def select(conn: sqlite3.Connection) -> list[EventRecord]:
            # One read transaction: the delete's version and the events of one snapshot.
            conn.execute("BEGIN")
            try:
                bottom = _deleted(conn, workspace, contact_id) or (-1, "")
                rows = conn.execute(
                    "SELECT status, applied_us, error, body FROM events"
                    " WHERE contact_key = ? AND ts_us <= ? AND (ts_us, event_id) < (?, ?)"
                    " AND ts_us >= ? AND (ts_us, event_id) > (?, ?)"
                    " AND workspace = ? AND contact_id = ? AND status != 'erased'"
                    " ORDER BY ts_us DESC, event_id DESC LIMIT ?",
                    (contact_key, top[0], *top, bottom[0], *bottom, workspace, contact_id, limit),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            return [_record(row) for row in rows]

        return await self.db.read(select)

    async def get_event(self, workspace: str, event_id: str) -> EventRecord | None:
        id_key = _id_key(workspace, event_id)
        return await self.db.read(lambda conn: _find_event(conn, workspace, event_id, id_key))

    async def rebuild(self, progress: Progress | None = None) -> int:
        return await self.db.write(lambda conn: _rebuild(conn, progress))

    async def purge_history(self, before_us: int, limit: int) -> int:
        return await self.db.write(lambda conn: _purge(conn, before_us, limit))

    async def read_changes(self, workspace: str, after: str | None, limit: int) -> list[Change]:
        start = _position(after)
        return await self.db.read(lambda conn: _read_changes(conn, workspace, after, start, limit))

    def feed_mark(self) -> object:
        # The profiles file's WAL-index header: every apply commits there (sqlite_db.py).
        return self.db.commit_mark()

    async def feed_end(self, workspace: str) -> str | None:
        return await self.db.read(_feed_end)

    async def purge_changes(self, before_us: int, limit: int) -> int:
        return await self.db.write(lambda conn: _purge_changes(conn, before_us, limit))

    async def add_key(self, key: ApiKey, key_hash: str) -> None:
        await self.catalog.write(
            lambda conn: conn.execute(
                "INSERT INTO api_keys (key_id, workspace, key_hash, created_us, scopes)"
                " VALUES (?,?,?,?,?)",
                (key.key_id, key.workspace, key_hash, key.created_us, scopes_text(key.scopes)),
            )
        )

    async def list_keys(self, workspace: str | None = None) -> list[ApiKey]:
        def select(conn: sqlite3.Connection) -> list[ApiKey]:
            rows = conn.execute(
                "SELECT key_id, workspace, created_us, revoked_us, scopes FROM api_keys"
                " WHERE ? IS NULL OR workspace = ? ORDER BY created_us",
                (workspace, workspace),
            ).fetchall()
            return [ApiKey(row[0], row[1], row[2], row[3], scopes_of(row[4])) for row in rows]

        return await self.catalog.read(select)

    async def revoke_key(self, key_id: str, revoked_us: int) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked_us = COALESCE(revoked_us, ?) WHERE key_id = ?",
                (revoked_us, key_id),
            )
            return cursor.rowcount > 0

        return await self.catalog.write(update)

    async def put_source(self, source: Source) -> None:
        row = (
            source.source_id,
            source.workspace,
            source.kind,
            _json(source.config),
            source.created_us,
        )
        await self.catalog.write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO sources (source_id, workspace, kind, config, created_us)"
                " VALUES (?, ?, ?, ?, ?)",
                row,
            )
        )

    async def get_source(self, source_id: str) -> Source | None:
        found: Source | None = self._cached(("source", source_id), _load_source)
        return found

    async def list_sources(self, workspace: str | None = None) -> list[Source]:
        def select(conn: sqlite3.Connection) -> list[Source]:
            rows = conn.execute(
                _SOURCE_SELECT + " WHERE ? IS NULL OR workspace = ? ORDER BY created_us",
                (workspace, workspace),
            ).fetchall()
            return [_source(row) for row in rows]

        return await self.catalog.read(select)

    async def delete_source(self, source_id: str) -> bool:
        return await self.catalog.write(
            lambda conn: (
                conn.execute("DELETE FROM sources WHERE source_id = ?", (source_id,)).rowcount > 0
            )
        )

    async def key_grant(self, key_hash: str) -> KeyGrant | None:
        return self.key_grant_at_once(key_hash)

    def key_grant_at_once(self, key_hash: str) -> KeyGrant | None:
        """``key_grant`` on the calling thread (it is read there anyway: ``_cached``)."""
        found: KeyGrant | None = self._cached(("key", key_hash), _load_grant)
        return found

    async def get_alias(self, workspace: str, source_id: str, profile_id: str) -> str | None:
        return await self.db.read(lambda conn: _alias(conn, (workspace, source_id, profile_id)))

    async def put_alias(
        self, workspace: str, source_id: str, profile_id: str, contact_id: str, version: Version
    ) -> AliasUpdate:
        key = (workspace, source_id, profile_id)
        update = await self.db.write(lambda conn: _put_alias(conn, key, contact_id, version))
        await self.db.fsync_wal()  # answered before the applier's next sync: durable now
        return update

    async def park_until_alias(self, source_id: str, profile_id: str, event: Event) -> str | None:
        key = (event.workspace, source_id, profile_id)

        def park(conn: sqlite3.Connection) -> str | None:
            contact = _alias(conn, key)
            if contact is None:
                conn.execute(
                    "INSERT OR IGNORE INTO parked_events (workspace, source_id, profile_id,"
                    " event_id, body) VALUES (?, ?, ?, ?, ?)",
                    (*key, event.event_id, encode_event(event)),
                )
            return contact

        contact = await self.db.write(park)
        if contact is None:
            await self.db.fsync_wal()  # a parked event is not in the log: durable before 200
        return contact

    async def unpark(
        self, workspace: str, source_id: str, profile_id: str, event_ids: Sequence[str]
    ) -> None:
        rows = [(workspace, source_id, profile_id, event_id) for event_id in event_ids]
        await self.db.write(
            lambda conn: conn.executemany(
                "DELETE FROM parked_events WHERE workspace = ? AND source_id = ?"
                " AND profile_id = ? AND event_id = ?",
                rows,
            )
        )

    async def remember_nonce(self, nonce: Nonce, expires_us: int, now_us: int) -> bool:
        # Not fsynced: a process killed after answering keeps it (WAL), and a replay that a
        # power loss would let in carries the event_id of the call it repeats: a duplicate.
        return await self.db.write(lambda conn: _remember_nonce(conn, nonce, expires_us, now_us))

    async def forget_nonce(self, nonce: Nonce) -> None:
        await self.db.write(
            lambda conn: conn.execute("DELETE FROM seen_nonces WHERE key = ?", (nonce.key(),))
        )

    async def request_erasure(self, erasure: Erasure) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO erasures (erasure_id, workspace, contact_id, requested_us, suppress)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    erasure.erasure_id,
                    erasure.workspace,
                    erasure.contact_id,
                    erasure.requested_us,
                    int(erasure.suppress),
                ),
            )
            conn.execute(
                "INSERT INTO erased_contacts (workspace, contact_id, upto_us, suppressed)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (workspace, contact_id) DO UPDATE SET"
                " upto_us = max(upto_us, excluded.upto_us),"
                " suppressed = max(suppressed, excluded.suppressed)",
                (
                    erasure.workspace,
                    erasure.contact_id,
                    erasure.requested_us,
                    int(erasure.suppress),
                ),
            )

        await self.db.write(insert)
        await self.db.fsync_wal()  # answered 202 before the applier's next sync: durable now

    async def get_erasure(self, workspace: str, erasure_id: str) -> Erasure | None:
        def select(conn: sqlite3.Connection) -> Erasure | None:
            row = conn.execute(
                _ERASURE_SELECT + " WHERE erasure_id = ? AND workspace = ?",
                (erasure_id, workspace),
            ).fetchone()
            return None if row is None else _erasure(row)

        return await self.db.read(select)

    async def pending_erasures(self, limit: int) -> list[Erasure]:
        def select(conn: sqlite3.Connection) -> list[Erasure]:
            rows = conn.execute(
                _ERASURE_SELECT + " WHERE completed_us IS NULL ORDER BY requested_us LIMIT ?",
                (limit,),
            ).fetchall()
            return [_erasure(row) for row in rows]

        return await self.db.read(select)

    async def erase_contacts(self, erasures: Sequence[Erasure]) -> None:
        def erase(conn: sqlite3.Connection) -> None:
            for erasure in erasures:
                _erase_contact(conn, erasure)

        await self.db.write(erase)
        for erasure in erasures:
            await self.forget_contact_deliveries(erasure.workspace, erasure.contact_id)
        # Each file copied once for all of them: a copy takes a time that grows with the file.
        await self.db.scrub()
        await self.destinations_db.scrub()

    async def complete_erasure(self, erasure_id: str, completed_us: int) -> None:
        await self.db.write(
            lambda conn: conn.execute(
                "UPDATE erasures SET completed_us = ? WHERE erasure_id = ?"
                " AND completed_us IS NULL",
                (completed_us, erasure_id),
            )
        )
        await self.db.fsync_wal()

    async def unsuppress(self, workspace: str, contact_id: str) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE erased_contacts SET suppressed = 0"
                " WHERE workspace = ? AND contact_id = ? AND suppressed = 1",
                (workspace, contact_id),
            )
            return cursor.rowcount > 0

        done = await self.db.write(update)
        await self.db.fsync_wal()
        return done

    async def is_suppressed(self, workspace: str, contact_id: str) -> bool:
        def select(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT suppressed FROM erased_contacts WHERE workspace = ? AND contact_id = ?",
                (workspace, contact_id),
            ).fetchone()
            return row is not None and bool(row[0])

        return await self.db.read(select)

    def _cached(self, key: tuple[str, str], load: Callable[[sqlite3.Connection, str], Any]) -> Any:
        """A catalog answer for the hot path, read on the event loop only when not cached.

        A cached answer holds until any connection commits to the catalog. Each lookup reads the
        catalog's WAL-index header (``commit_mark``, a memory read): a change from another
        process (the CLI) is seen by the first lookup after its commit. Where the header cannot
        be read, ``PRAGMA data_version`` is asked instead, at most once a millisecond (a
        statement on the event loop; benchmarks/README.md): the change is then seen by every
        lookup that starts more than 1 ms after its commit. This process's own catalog writes
        empty the cache as they commit (``_forget_catalog``) either way.
        """
        version: object = self.catalog.commit_mark()
        if version is None:
            now = time.monotonic()
            if now - self._cache_checked_at >= CATALOG_CHECK_INTERVAL_S:
                self._cache_checked_at = now
                version = self.catalog.read_now(_data_version)
            else:
                version = self._cache_version
        if version != self._cache_version or len(self._cache) > MAX_CACHED_ANSWERS:
            self._cache.clear()
            self._cache_version = version
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = self.catalog.read_now(lambda conn: load(conn, key[1]))
            return value

    def _forget_catalog(self) -> None:
        """After each commit to the catalog by this process, on the event loop, before the
        writer's caller resumes: the next lookup reads again."""
        self._cache.clear()
        self._cache_checked_at = float("-inf")


def _remember_nonce(conn: sqlite3.Connection, nonce: Nonce, expires_us: int, now_us: int) -> bool:
    """In the writer's transaction (BEGIN IMMEDIATE): one process at a time decides."""
    conn.execute("DELETE FROM seen_nonces WHERE expires_us < ?", (now_us,))
    inserted = conn.execute(
        "INSERT INTO seen_nonces (key, expires_us) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        (nonce.key(), expires_us),
    )
    return inserted.rowcount == 1


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def _load_source(conn: sqlite3.Connection, source_id: str) -> Source | None:
    row = conn.execute(_SOURCE_SELECT + " WHERE source_id = ?", (source_id,)).fetchone()
    return None if row is None else _source(row)


def _load_grant(conn: sqlite3.Connection, key_hash: str) -> KeyGrant | None:
    row = conn.execute(
        "SELECT key_id, workspace, scopes FROM api_keys WHERE key_hash = ? AND revoked_us IS NULL",
        (key_hash,),
    ).fetchone()
    return None if row is None else KeyGrant(row[0], row[1], scopes_of(row[2]))


def _scopes_1_to_2(conn: sqlite3.Connection) -> None:
    """Catalog 1 -> 2: keys get scopes; those made before scopes existed keep doing everything."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
    if "scopes" in columns:  # a file of version 2 whose stamp was lost (read as version 1)
        return
    every = scopes_text(SCOPES)  # words from constants, not input
    conn.execute(f"ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '{every}'")


_SOURCE_SELECT = "SELECT source_id, workspace, kind, config, created_us FROM sources"


AliasKey = tuple[str, str, str]
"""(workspace, source_id, profile_id)"""
_ALIAS_WHERE = " WHERE workspace = ? AND source_id = ? AND profile_id = ?"


def _alias(conn: sqlite3.Connection, key: AliasKey) -> str | None:
    row = conn.execute("SELECT contact_id FROM profile_aliases" + _ALIAS_WHERE, key).fetchone()
    return None if row is None else str(row[0])


def _put_alias(
    conn: sqlite3.Connection, key: AliasKey, contact_id: str, version: Version
) -> AliasUpdate:
    conn.execute(
        "INSERT INTO profile_aliases (workspace, source_id, profile_id, contact_id, ts_us,"
        " event_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (workspace, source_id, profile_id)"
        " DO UPDATE SET contact_id = excluded.contact_id, ts_us = excluded.ts_us,"
        " event_id = excluded.event_id WHERE (excluded.ts_us, excluded.event_id)"
        " > (profile_aliases.ts_us, profile_aliases.event_id)",
        (*key, contact_id, *version),
    )
    rows = conn.execute(
        "SELECT body FROM parked_events" + _ALIAS_WHERE + " ORDER BY event_id", key
    ).fetchall()
    current = _alias(conn, key)
    assert current is not None
    return AliasUpdate(current, [decode_event(body) for (body,) in rows])


def _source(row: tuple[str, str, str, str, int]) -> Source:
    source_id, workspace, kind, config, created_us = row
    return Source(source_id, workspace, kind, msgspec.json.decode(config), created_us)


def _key(workspace: str, name: str) -> int:
    """A stable 48-bit hash of (workspace, name): what the events indexes hold (SQLite stores
    it in 6 bytes). Cryptographic, so ids cannot be chosen to pile up on one hash."""
    data = f"{workspace}\x00{name}".encode(errors="surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=6).digest(), "little", signed=True)


# Times (ms) that an id's first 48 bits are taken for: 2020-01-01 to 2200-01-01.
_TIMES_MS = range(1_577_836_800_000, 7_258_118_400_000)


def _id_key(workspace: str, event_id: str) -> int:
    """The index key of an event id. For a version 4 or 7 UUID whose first 48 bits are a time
    (the ids profilehook makes, and UUIDv7s): those bits, then 15 bits of a hash of the id, so
    that ids made in time order get keys in time order, which the index appends. Any other id:
    ``_key``, a hash (ids such as numbers written as UUIDs share their first bits; a hash keeps
    them apart).

    Ids can be chosen to share a key's first 48 bits, but the hashed bits spread them over
    32,768 keys (to pile ids on one key, each must be searched for); a key shared by several
    ids only makes its lookups compare more rows.
    """
    if len(event_id) == 36 and event_id[8] == "-" and event_id[13] == "-" and event_id[14] in "47":
        try:
            prefix = int(event_id[:8] + event_id[9:13], 16)
        except ValueError:
            prefix = -1
        if prefix in _TIMES_MS:
            spread = blake2b(event_id.encode(errors="surrogatepass"), digest_size=2).digest()
            return prefix << 15 | (int.from_bytes(spread, "little") & 0x7FFF)
    return _key(workspace, event_id)


def _rekey_2_to_3(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3: event ids in UUID form get ``_id_key``'s time-ordered keys."""
    conn.create_function("profilehook_id_key", 2, _id_key, deterministic=True)
    conn.execute("UPDATE events SET id_key = profilehook_id_key(workspace, event_id)")


def _operations_4_to_5(conn: sqlite3.Connection) -> None:
    """Schema 4 -> 5: the version of a contact's newest operation (none before operations)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    for table in ("contacts", "snapshots"):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        # (snapshots came without a version: a file may not have it; a file whose stamp was
        # lost may have the columns already)
        if table in tables and "ops_ts_us" not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN ops_ts_us INTEGER")
            conn.execute(f"ALTER TABLE {table} ADD COLUMN ops_event_id TEXT")


def _marks_5_to_6(conn: sqlite3.Connection) -> None:
    """Schema 5 -> 6: the marks of the properties an operation touched; a contact with
    operations from before has none (NULL: not known, ``ContactState.marks`` None)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    for table in ("contacts", "snapshots"):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if table in tables and "marks" not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN marks BLOB")


# OR FAIL (insert_rows' statements): a violation still raises (and the apply rolls back), but a
# statement that cannot abort needs no statement journal, which made a multi-row insert copy
# every page it touched.
_INSERT_EVENT = (
    "INSERT OR FAIL INTO events (workspace, contact_id, event_id, ts_us, status, applied_us, error,"
    " body, id_key, contact_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _event_row(
    event: Event,
    id_key: int,
    status: str,
    applied_us: int,
    contact_keys: dict[tuple[str, str], int],
    error: str | None = None,
) -> tuple[Any, ...]:
    contact = (event.workspace, event.contact_id)
    contact_key = contact_keys.get(contact)
    if contact_key is None:
        contact_key = contact_keys[contact] = _key(*contact)
    return (
        *contact,
        event.event_id,
        event.ts_us,
        status,
        applied_us,
        error,
        encode_event(event),
        id_key,
        contact_key,
    )


def _find_event(
    conn: sqlite3.Connection, workspace: str, event_id: str, id_key: int
) -> EventRecord | None:
    row = conn.execute(
        "SELECT status, applied_us, error, body FROM events"
        " WHERE id_key = ? AND workspace = ? AND event_id = ?",
        (id_key, workspace, event_id),
    ).fetchone()
    return None if row is None else _record(row)


def _record(row: tuple[str, int | None, str | None, bytes]) -> EventRecord:
    status, applied_us, error, body = row
    return EventRecord(decode_event(body), status, applied_us, error)  # type: ignore[arg-type]


def _apply(conn: sqlite3.Connection, events: Sequence[Event]) -> ApplyResult:
    unique = [(_id_key(e.workspace, e.event_id), e) for e in first_of_each(events)]
    seen = _already_recorded(conn, [id_key for id_key, _ in unique])
    new = [(k, e) for k, e in unique if (e.workspace, e.event_id) not in seen]
    fresh = [e for _, e in new]
    erased: list[Event] = []
    applied_us = now_us()
    contact_keys: dict[tuple[str, str], int] = {}  # many events of a batch share a contact
    if _any_erased(conn):  # the common case, no erasure ever: one page read per batch
        kept, erased = split_erased(fresh, _erased_contacts(conn, fresh))
        if erased:
            kept_ids = {id(e) for e in kept}
            new = [(k, e) for k, e in new if id(e) in kept_ids]
    refused: list[Event] = []
    purged_upto_us = _purged_upto(conn)
    if purged_upto_us is not None:
        kept, refused = split_purged([e for _, e in new], purged_upto_us)
        if refused:
            kept_ids = {id(e) for e in kept}
            new = [(k, e) for k, e in new if id(e) in kept_ids]
            error = too_old_error(purged_upto_us)
            insert_rows(
                conn,
                _INSERT_EVENT,
                [
                    _event_row(e, _id_key(e.workspace, e.event_id), "failed", applied_us, {}, error)
                    for e in refused
                ],
            )
    rows = [_event_row(e, k, "applied", applied_us, contact_keys) for k, e in new]
    rows += [
        _event_row(e, _id_key(e.workspace, e.event_id), "erased", applied_us, contact_keys)
        for e in erased
    ]
    insert_rows(conn, _INSERT_EVENT, rows)
    new_events = [e for _, e in new]
    _mark_duplicates(conn, repeats(events, fresh))
    changes = ChangeLog(new_events)
    # No segment defined (the everyday store): no segment work. A segment created meanwhile
    # waits for this transaction (one writer), and its backfill sees what it wrote.
    segments = conn.execute("SELECT 1 FROM segments LIMIT 1").fetchone() is not None
    result = _apply_profiles(
        conn, new_events, base=_history_base, changes=changes, segments=segments
    )
    changes.note_segments(result.segment_moves)
    _insert_changes(conn, changes, applied_us, contact_keys)
    result.changes = len(changes)
    if result.cleared:
        conn.executemany(
            "UPDATE events SET error = NULL WHERE id_key = ? AND workspace = ? AND event_id = ?"
            " AND substr(error, 1, length(?)) = ?",
            [(_id_key(ws, i), ws, i, f"{n}: ", f"{n}: ") for (ws, i), n in result.cleared.items()],
        )
    if result.warnings:
        conn.executemany(
            "UPDATE events SET error = ? WHERE id_key = ? AND workspace = ? AND event_id = ?",
            [(w, _id_key(ws, i), ws, i) for (ws, i), w in result.warnings.items()],
        )
    return result.count_new(events, new_events, erased, refused)


def _purged_upto(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT upto_us FROM history_purged WHERE id = 1").fetchone()
    return None if row is None else int(row[0])


def _history_base(conn: sqlite3.Connection, key: tuple[str, str], new: Sequence[Event]) -> Base:
    """What a late event of contact ``key`` is recomputed from: its snapshot, and its applied
    events but ``new`` (recorded already, in this transaction)."""

    def base() -> tuple[ContactState, list[Event]]:
        snapshot = _rows(conn, [key], _SNAPSHOTS).get(key) or _Row()
        skip = {e.event_id for e in new}
        rows = conn.execute(
            f"SELECT event_id, body FROM events WHERE contact_key = ? AND {_APPLIED}"
            " AND workspace = ? AND contact_id = ?",
            (_key(*key), *key),
        )
        history = [decode_event(body) for event_id, body in rows if event_id not in skip]
        return snapshot.state(), history

    return base


def _any_erased(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM erased_contacts LIMIT 1").fetchone() is not None


def _erased_contacts(
    conn: sqlite3.Connection, events: Sequence[Event]
) -> dict[tuple[str, str], ErasedContact]:
    """The erased contacts among the events' contacts."""
    by_workspace: dict[str, set[str]] = {}
    for event in events:
        by_workspace.setdefault(event.workspace, set()).add(event.contact_id)
    found: dict[tuple[str, str], ErasedContact] = {}
    for workspace, contact_ids in by_workspace.items():
        ids = sorted(contact_ids)
        for start in range(0, len(ids), MAX_BOUND_KEYS):
            for contact_id, upto_us, suppressed in conn.execute(
                "SELECT contact_id, upto_us, suppressed FROM erased_contacts"
                " WHERE workspace = ? AND contact_id IN (SELECT value FROM json_each(?))",
                (workspace, _json(ids[start : start + MAX_BOUND_KEYS])),
            ):
                found[(workspace, contact_id)] = ErasedContact(upto_us, bool(suppressed))
    return found


_ERASURE_SELECT = (
    "SELECT erasure_id, workspace, contact_id, requested_us, suppress, completed_us FROM erasures"
)


def _erasure(row: tuple[Any, ...]) -> Erasure:
    erasure_id, workspace, contact_id, requested_us, suppress, completed_us = row
    return Erasure(erasure_id, workspace, contact_id, requested_us, bool(suppress), completed_us)


def _erase_contact(conn: sqlite3.Connection, erasure: Erasure) -> None:
    """In one transaction: the events the erasure covers become stubs, the contact's row is
    recomputed from the events left, its aliases set by covered events go, and the events
    parked for them. With ``secure_delete=ON`` every replaced byte is overwritten in the file."""
    workspace, contact_id, upto = erasure.workspace, erasure.contact_id, erasure.requested_us
    rows = conn.execute(
        "SELECT rowid, status, body FROM events WHERE contact_key = ?"
        " AND workspace = ? AND contact_id = ? AND status != 'erased'",
        (_key(workspace, contact_id), workspace, contact_id),
    ).fetchall()
    plan = ContactErasure.of(
        ((rowid, status, decode_event(body)) for rowid, status, body in rows), upto
    )
    conn.executemany(
        "UPDATE events SET status = 'erased', error = NULL, body = ? WHERE rowid = ?",
        [(encode_event(stub), rowid) for rowid, stub in plan.stubs],
    )
    held = _contact(conn, workspace, contact_id)
    if held is not None:
        sqlite_values.forget(conn, workspace, contact_id, held.properties)
    conn.execute(
        "DELETE FROM changes WHERE contact_key = ? AND workspace = ? AND contact_id = ?",
        (_key(workspace, contact_id), workspace, contact_id),
    )
    # Retention's snapshot of the contact holds only what predates the erasure.
    for table in (_CONTACTS, _SNAPSHOTS):
        conn.execute(
            f"DELETE FROM {table} WHERE workspace = ? AND contact_id = ?", (workspace, contact_id)
        )
    _apply_profiles(conn, plan.remaining)
    sqlite_segments.keep(conn, [everything(workspace, contact_id)], _loader(conn))
    aliases = conn.execute(
        "SELECT source_id, profile_id, ts_us, event_id FROM profile_aliases"
        " WHERE workspace = ? AND contact_id = ?",
        (workspace, contact_id),
    ).fetchall()
    for source_id, profile_id, ts_us, event_id in aliases:
        if plan.covers_alias((ts_us, event_id), upto):
            key = (workspace, source_id, profile_id)
            conn.execute("DELETE FROM profile_aliases" + _ALIAS_WHERE, key)
            conn.execute("DELETE FROM parked_events" + _ALIAS_WHERE, key)


def _index_all_values(conn: sqlite3.Connection) -> None:
    """The searchable copy of the contacts' values, made anew from the contacts table."""
    rows = conn.execute(f"SELECT workspace, contact_id, {_ROW_COLUMNS} FROM contacts")
    contacts = ((w, i, _contact_of(i, _row(values))) for w, i, *values in rows)
    sqlite_values.index_all(conn, ((w, i, c.properties) for w, i, c in contacts if c is not None))


def _values_6_to_7(conn: sqlite3.Connection) -> None:
    """Schema 6 -> 7: the searchable copy of the contacts' values (sqlite_values.py)."""
    conn.execute(sqlite_values.TABLE)
    _index_all_values(conn)


def _add_erasures_3_to_4(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4: the erasure tables (the schema script creates them)."""


def _mark_duplicates(conn: sqlite3.Connection, dropped: Sequence[Event]) -> None:
    conn.executemany(
        "UPDATE events SET status = 'duplicate' WHERE id_key = ? AND workspace = ?"
        " AND event_id = ? AND status = 'applied' AND body != ?",
        [
            (_id_key(e.workspace, e.event_id), e.workspace, e.event_id, encode_event(e))
            for e in dropped
        ],
    )


def _already_recorded(conn: sqlite3.Connection, id_keys: list[int]) -> set[tuple[str, str]]:
    """(workspace, event_id) of the events recorded under these hashes: the ones asked for,
    and now and then another whose hash is the same (the caller compares the ids)."""
    seen: set[tuple[str, str]] = set()
    for start in range(0, len(id_keys), MAX_BOUND_NAMES):
        rows = conn.execute(
            "SELECT workspace, event_id FROM events"
            " WHERE id_key IN (SELECT value FROM json_each(?))",
            (_json(id_keys[start : start + MAX_BOUND_NAMES]),),
        )
        seen.update(rows)
    return seen


# The tables of contact rows: the profiles, and the snapshots of what retention purged.
_CONTACTS, _SNAPSHOTS = "contacts", "snapshots"


BaseOf = Callable[[sqlite3.Connection, tuple[str, str], Sequence[Event]], Base]


def _apply_profiles(
    conn: sqlite3.Connection,
    events: Sequence[Event],
    table: str = _CONTACTS,
    base: BaseOf | None = None,
    changes: ChangeLog | None = None,
    segments: bool = True,
) -> ApplyResult:
    """Plan every contact of the batch with the shared rules; rewrite only contacts that change
    (in ``table``: the profiles, or the snapshots that ``purge_history`` folds into). ``base``:
    what a late event's properties are recomputed from (``plan_contact``). ``segments``: False
    when no segment exists (the caller checked in this transaction): no segment work at all."""
    groups = by_contact(events)
    rows = _rows(conn, list(groups), table)
    result = ApplyResult()
    changed: list[tuple[Any, ...]] = []
    gone: sqlite_values.Rows = []  # the searchable copy's rows to drop (profiles only)
    added: sqlite_values.Rows = []  # and to write
    segments = segments and table == _CONTACTS
    touched: list[Touched] = []  # what segments may need to decide again (profiles only)
    after: dict[tuple[str, str], tuple[_Row, ContactState, ContactPlan]] = {}
    for key, group in groups.items():
        row = rows.get(key) or _Row()
        # The values copy (profiles) reads the values before the plan from ``state``.
        with_values = (
            table == _CONTACTS
            or changes is not None
            or row.ops is not None
            or any(e.ops for e in group)
        )
        state = row.state(with_values)
        contact_base = None if base is None else base(conn, key, group)
        plan = plan_contact(state, group, contact_base)
        if changes is not None:
            changes.add(state, group, plan, contact_base)
        # Here the contact's state before the batch (``row``, ``state``) and its plan are both
        # known, in the apply transaction: where what follows a change (segments, changes) hooks in.
        result.superseded += plan.superseded
        if plan.warnings:
            result.warnings.update(((key[0], i), w) for i, w in plan.warnings.items())
        if plan.cleared:
            result.cleared.update(((key[0], i), n) for i, n in plan.cleared.items())
        # A newer last update matters only if it is visible (newer than the contact's delete).
        touches = plan.touches_contact_row
        ops_upto = plan.ops_upto
        if (
            not touches
            and ops_upto == row.ops
            and not plan.marks_changed
            and (plan.last_update == row.last or not contact_exists(plan.last_update, plan.deleted))
        ):
            continue
        changed.append(
            (
                *key,
                *(plan.last_update or _NULLS),
                *(plan.deleted or _NULLS),
                row.merged(plan),
                *(ops_upto or _NULLS),
                None if ops_upto is None else encode_marks(plan.marks, ops_upto),
            )
        )
        result.written += len(plan.upserts)
        if touches and table == _CONTACTS:
            sqlite_values.copy_rows(*key, state.values, state.versions, plan, gone, added)
        if segments and (change := touched_by(key, row.last, row.deleted, plan)) is not None:
            touched.append(change)
            after[key] = (row, state, plan)  # the profiles: only if a segment looks
    # One step per row, which measured faster here than multi-row upserts of these large rows.
    conn.executemany(
        f"INSERT INTO {table} (workspace, contact_id, last_ts_us, last_event_id, deleted_ts_us,"
        " deleted_event_id, properties, ops_ts_us, ops_event_id, marks)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (workspace, contact_id) DO UPDATE SET last_ts_us = excluded.last_ts_us,"
        " last_event_id = excluded.last_event_id, deleted_ts_us = excluded.deleted_ts_us,"
        " deleted_event_id = excluded.deleted_event_id, properties = excluded.properties,"
        " ops_ts_us = excluded.ops_ts_us, ops_event_id = excluded.ops_event_id,"
        " marks = excluded.marks",
        changed,
    )
    sqlite_values.write_rows(conn, gone, added)
    if not touched:
        return result
    # The profiles before and after, of the names the segments look at, from the state the
    # plan was made from (what ``_Row.merged`` writes): nothing read again.
    result.segment_moves = sqlite_segments.keep(
        conn,
        touched,
        lambda keys, names: {
            k: profile_after(k[1], (s := after[k][1]).values, s.versions, after[k][2], names[k])
            for k in keys
        },
        lambda keys, names: {
            k: profile_before(
                k[1], (r := after[k][0]).last, r.deleted, after[k][1].values, names[k]
            )
            for k in keys
        },
        {k: (state.values, plan) for k, (_, state, plan) in after.items()},
    )
    return result


def _loader(conn: sqlite3.Connection) -> sqlite_segments.Load:
    def load(keys: list[tuple[str, str]], _: object) -> dict[tuple[str, str], Contact | None]:
        return {key: _contact_of(key[1], row) for key, row in _rows(conn, keys).items()}

    return load


PropertyGroups = list[tuple[int, str, dict[str, Any]]]
"""A contact's properties as stored: (ts_us, event_id, {name: value}) per version that set any
(value None: unset, the tombstone keeps its version). An event sets several properties at once,
so its version is stored once rather than beside each property: rows half the size."""
_BIG_INT = 1  # msgpack ext code: an integer msgpack cannot hold (a sum of adds), as its digits
_MSGPACK_INTS = range(-(2**63), 2**64)


class _BigInt:
    __slots__ = ("value",)  # (a plain class: msgspec hands it to the hook)

    def __init__(self, value: int):
        self.value = value


def _encode_big(obj: Any) -> Any:
    if isinstance(obj, _BigInt):
        return msgspec.msgpack.Ext(_BIG_INT, str(obj.value).encode())
    raise NotImplementedError(type(obj))


def _decode_big(code: int, data: memoryview) -> Any:
    if code != _BIG_INT:
        raise ValueError(f"unknown msgpack ext {code}")
    return int(bytes(data))


def _storable(value: Any) -> Any:
    """A property's value as the row keeps it: an integer beyond msgpack's as an ext."""
    if type(value) is int and value not in _MSGPACK_INTS:
        return _BigInt(value)
    return value


_encode_groups = msgspec.msgpack.Encoder(enc_hook=_encode_big).encode
_decode_groups = msgspec.msgpack.Decoder(PropertyGroups, ext_hook=_decode_big).decode


@dataclass
class _Row:
    """A contact as stored: its versions and its property groups."""

    last: Version | None = None
    deleted: Version | None = None
    groups: PropertyGroups = field(default_factory=list)
    encoded: bytes = _encode_groups([])
    ops: Version | None = None  # ContactState.ops_upto
    marks: dict[str, Marks] | None = field(default_factory=dict)  # ContactState.marks
    _flat: dict[str, tuple[Any, Version]] | None = field(default=None, repr=False, compare=False)

    def state(self, with_values: bool = True) -> ContactState:
        """What the planner needs; the values only ``with_values`` (a batch of sets on a
        contact that never had an operation is decided by versions alone)."""
        versions: dict[str, Version] = {}
        held: dict[str, Any] = {}
        for ts_us, event_id, values in self.groups:
            versions.update(dict.fromkeys(values, (ts_us, event_id)))
            if with_values:
                held.update(values)
        return ContactState(self.last, self.deleted, versions, held, self.ops, self.marks)

    def merged(self, plan: ContactPlan) -> bytes:
        """The stored groups with the plan's writes."""
        upserts, upto, removes = plan.upserts, plan.delete_upto, plan.removes
        if not upserts and upto is None and not removes:
            return self.encoded
        for name in removes:
            upserts = {**upserts, name: (None, (0, ""))}  # dropped below, never added
        groups: PropertyGroups = []
        names = upserts.keys()
        for group in self.groups:
            ts_us, event_id, values = group
            if upto is not None and (ts_us, event_id) <= upto:
                continue
            if names.isdisjoint(values):
                groups.append(group)  # (as it was: no new tuple)
                continue
            values = {n: v for n, v in values.items() if n not in upserts}
            if values:
                groups.append((ts_us, event_id, values))
        added: dict[Version, dict[str, Any]] = {}
        for name, (value, version) in upserts.items():
            if name in removes:
                continue
            added.setdefault(version, {})[name] = value
        groups.extend((ts_us, event_id, values) for (ts_us, event_id), values in added.items())
        try:
            return _encode_groups(groups)
        except OverflowError:  # an integer beyond msgpack's (a sum of adds): as an ext
            return _encode_groups(
                [(t, i, {n: _storable(v) for n, v in values.items()}) for t, i, values in groups]
            )

    def properties(self) -> dict[str, tuple[Any, Version]]:
        """name -> (value, version) of the stored groups (tombstones too); made once."""
        if self._flat is None:
            self._flat = {
                name: (value, (ts_us, event_id))
                for ts_us, event_id, values in self.groups
                for name, value in values.items()
            }
        return self._flat


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


_NULLS = (None, None)  # a version's columns when it has none (``version or _NULLS``)


def _row(values: Sequence[Any]) -> _Row:
    last_ts, last_id, deleted_ts, deleted_id, encoded, ops_ts, ops_id, marks = values
    ops = None if ops_ts is None else (ops_ts, ops_id)
    return _Row(
        None if last_ts is None else (last_ts, last_id),
        None if deleted_ts is None else (deleted_ts, deleted_id),
        _decode_groups(encoded),
        encoded,
        ops,
        {} if marks is None and ops is None else decode_marks(marks, ops),
    )


_ROW_COLUMNS = (
    "last_ts_us, last_event_id, deleted_ts_us, deleted_event_id, properties, ops_ts_us,"
    " ops_event_id, marks"
)


def _rows(
    conn: sqlite3.Connection, keys: list[tuple[str, str]], table: str = _CONTACTS
) -> dict[tuple[str, str], _Row]:
    """The stored rows of these contacts. (Python's sqlite3 takes the GIL back after each row it
    steps to: that costs little here, where only the applier runs, and a quarter less CPU than
    aggregating the rows into one JSON text in SQL, which the in-server applier once needed.)"""
    by_workspace: dict[str, list[str]] = {}
    for workspace, contact_id in keys:
        by_workspace.setdefault(workspace, []).append(contact_id)
    rows: dict[tuple[str, str], _Row] = {}
    for workspace, contact_ids in by_workspace.items():
        for start in range(0, len(contact_ids), MAX_BOUND_KEYS):
            for contact_id, *values in conn.execute(
                f"SELECT contact_id, {_ROW_COLUMNS} FROM {table}"
                " WHERE workspace = ? AND contact_id IN (SELECT value FROM json_each(?))",
                (workspace, _json(contact_ids[start : start + MAX_BOUND_KEYS])),
            ):
                rows[(workspace, contact_id)] = _row(values)
    return rows


def _deleted(conn: sqlite3.Connection, workspace: str, contact_id: str) -> Version | None:
    """The version of the contact's newest delete, if it has one."""
    found = conn.execute(
        "SELECT deleted_ts_us, deleted_event_id FROM contacts"
        " WHERE workspace = ? AND contact_id = ? AND deleted_ts_us IS NOT NULL",
        (workspace, contact_id),
    ).fetchone()
    return None if found is None else (found[0], found[1])


# Only what a contact's answer needs (a read's hot path): not the marks the planner keeps.
_CONTACT_SELECT = (
    "SELECT last_ts_us, last_event_id, deleted_ts_us, deleted_event_id, properties"
    " FROM contacts WHERE workspace = ? AND contact_id = ?"
)


def _contact_groups(
    conn: sqlite3.Connection, workspace: str, contact_id: str
) -> tuple[int, PropertyGroups] | None:
    found = conn.execute(_CONTACT_SELECT, (workspace, contact_id)).fetchone()
    if found is None:
        return None
    last_ts, last_id, deleted_ts, deleted_id, encoded = found
    deleted = None if deleted_ts is None else (deleted_ts, deleted_id)
    if last_ts is None or not contact_exists((last_ts, last_id), deleted):
        return None
    return last_ts, _decode_groups(encoded)


def _contact(conn: sqlite3.Connection, workspace: str, contact_id: str) -> Contact | None:
    found = conn.execute(_CONTACT_SELECT, (workspace, contact_id)).fetchone()
    if found is None:
        return None
    last_ts, last_id, deleted_ts, deleted_id, encoded = found
    row = _Row(
        None if last_ts is None else (last_ts, last_id),
        None if deleted_ts is None else (deleted_ts, deleted_id),
        _decode_groups(encoded),
        encoded,
    )
    return _contact_of(contact_id, row)


def _contact_of(contact_id: str, row: _Row) -> Contact | None:
    """The contact a stored row holds; None when it does not exist (deleted)."""
    if row.last is None or not contact_exists(row.last, row.deleted):
        return None
    if len(row.groups) == 1:  # (most rows: every property set by one event) a read's hot path
        ts_us, event_id, values = row.groups[0]
        names = sorted(n for n, value in values.items() if value is not None)
        return Contact(
            contact_id=contact_id,
            properties={n: values[n] for n in names},
            versions=dict.fromkeys(names, (ts_us, event_id)),
            updated_us=row.last[0],
        )
    held = row.properties()
    live = sorted(n for n, (value, _) in held.items() if value is not None)
    return Contact(
        contact_id=contact_id,
        properties={n: held[n][0] for n in live},
        versions={n: held[n][1] for n in live},
        updated_us=row.last[0],
    )


_APPLIED = "status IN ('applied', 'duplicate')"  # the events that were applied


def _rebuild(conn: sqlite3.Connection, progress: Progress | None) -> int:
    conn.execute("DELETE FROM contacts")
    conn.execute(
        f"INSERT INTO contacts (workspace, contact_id, {_ROW_COLUMNS})"
        f" SELECT workspace, contact_id, {_ROW_COLUMNS} FROM snapshots"
    )
    _index_all_values(conn)
    total = conn.execute(f"SELECT COUNT(*) FROM events WHERE {_APPLIED}").fetchone()[0]
    done = 0
    if progress is not None:
        progress(0, total)
    # Contact by contact (a contact's events all in one batch, in version order): a late
    # event's property is then recomputed from the snapshot through all of them.
    cursor = conn.execute(
        f"SELECT contact_key, body FROM events WHERE {_APPLIED}"
        " ORDER BY contact_key, ts_us, event_id"
    )
    pending: list[Event] = []
    last_key = None
    while chunk := cursor.fetchmany(REBUILD_CHUNK_EVENTS):
        for contact_key, body in chunk:
            if contact_key != last_key and len(pending) >= REBUILD_CHUNK_EVENTS:
                _rebuild_contacts(conn, pending)
                done += len(pending)
                pending = []
                if progress is not None:
                    progress(done, total)
            last_key = contact_key
            pending.append(decode_event(body))
    _rebuild_contacts(conn, pending)
    done += len(pending)
    sqlite_segments.restart_all(conn)  # filled again by the backfill, from the new profiles
    if progress is not None:
        progress(done, total)
    return int(done)


def _rebuild_contacts(conn: sqlite3.Connection, events: list[Event]) -> None:
    """Fold every event of some contacts onto their snapshots (what their rows hold now)."""

    def snapshot(conn: sqlite3.Connection, key: tuple[str, str], _: Sequence[Event]) -> Base:
        return lambda: ((_rows(conn, [key]).get(key) or _Row()).state(), [])

    _apply_profiles(conn, events, base=snapshot)


def _purge(conn: sqlite3.Connection, before_us: int, limit: int) -> int:
    """Forget the oldest events before ``before_us``, the applied ones folded into snapshots."""
    rows = conn.execute(
        "SELECT rowid, status, body, ts_us FROM events WHERE ts_us < ?"
        " ORDER BY ts_us, event_id LIMIT ?",
        (before_us, limit),
    ).fetchall()
    if rows:
        conn.execute(
            "INSERT INTO history_purged (id, upto_us) VALUES (1, ?) ON CONFLICT (id)"
            " DO UPDATE SET upto_us = max(upto_us, excluded.upto_us)",
            (rows[-1][3],),
        )
    applied = [decode_event(body) for _, status, body, _ in rows if status in _APPLIED_STATUSES]
    _apply_profiles(conn, applied, _SNAPSHOTS)
    conn.execute(
        "DELETE FROM events WHERE rowid IN (SELECT value FROM json_each(?))",
        (_json([row[0] for row in rows]),),
    )
    return len(rows)


_APPLIED_STATUSES = ("applied", "duplicate")


def _insert_changes(
    conn: sqlite3.Connection,
    changes: ChangeLog,
    applied_us: int,
    contact_keys: dict[tuple[str, str], int],
) -> None:
    if not changes:
        return
    rows = []
    for r in changes.records():
        contact_key = contact_keys.get((r.workspace, r.contact_id))
        if contact_key is None:  # (every changed contact has an event row: not expected)
            contact_key = _key(r.workspace, r.contact_id)
        rows.append(
            (r.workspace, r.contact_id, r.event_id, applied_us, encode_body(r.body), contact_key)
        )
    # Multi-row statements: AUTOINCREMENT writes sqlite_sequence at the end of each statement,
    # with ``executemany`` once per row. OR FAIL: as _INSERT_EVENT.
    insert_rows(
        conn,
        "INSERT OR FAIL INTO changes (workspace, contact_id, event_id, applied_us, body, contact_key)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def _position(cursor: str | None) -> int:
    """A cursor of this store (a change's decimal seq) as a number; None: 0. Raises
    ``InvalidCursor``."""
    if cursor is None:
        return 0
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise InvalidCursor("not a cursor of this feed")
    return int(cursor)


def _read_changes(
    conn: sqlite3.Connection, workspace: str, after: str | None, start: int, limit: int
) -> list[Change]:
    conn.execute("BEGIN")  # the purge mark and the changes of one snapshot
    try:
        if after is not None:
            purged = conn.execute(
                "SELECT upto FROM changes_purged WHERE workspace = ?", (workspace,)
            ).fetchone()
            if purged is not None and start < purged[0]:
                raise CursorExpired()
        rows = conn.execute(
            "SELECT seq, contact_id, event_id, applied_us, body FROM changes"
            " WHERE workspace = ? AND seq > ? ORDER BY seq LIMIT ?",
            (workspace, start, limit),
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    return [
        Change(
            change_id(str(seq)), str(seq), workspace, contact_id, event_id, at, decode_body(body)
        )
        for seq, contact_id, event_id, at, body in rows
    ]


def _feed_end(conn: sqlite3.Connection) -> str | None:
    """The seq AUTOINCREMENT last gave (one counter for every workspace; never reused, also
    when the newest change was erased or purged). One writer: a change committed after this
    read gets a larger seq."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return str(row[0]) if row is not None and row[0] else None


def _purge_changes(conn: sqlite3.Connection, before_us: int, limit: int) -> int:
    """The oldest changes applied before ``before_us`` go (in seq order: the apply order, so
    the applied times too, give or take a clock step), and each workspace's purge mark moves."""
    # The oldest by seq, up to the first applied at or after the cutoff: no scan of the rest.
    oldest = conn.execute(
        "SELECT seq, workspace, applied_us FROM changes ORDER BY seq LIMIT ?", (limit,)
    ).fetchall()
    rows = list(itertools.takewhile(lambda row: row[2] < before_us, oldest))
    if not rows:
        return 0
    newest: dict[str, int] = {}
    for seq, workspace, _ in rows:
        newest[workspace] = max(newest.get(workspace, 0), seq)
    conn.executemany(
        "INSERT INTO changes_purged (workspace, upto) VALUES (?, ?) ON CONFLICT (workspace)"
        " DO UPDATE SET upto = max(upto, excluded.upto)",
        list(newest.items()),
    )
    conn.execute(
        "DELETE FROM changes WHERE seq IN (SELECT value FROM json_each(?))",
        (_json([row[0] for row in rows]),),
    )
    return len(rows)
