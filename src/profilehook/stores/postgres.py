"""PostgreSQL profile store, for the scale-out configuration (any number of appliers).

Concurrent appliers stay correct by serialising on each contact: a batch takes a transaction
lock per contact (in key order: no deadlock), reads the contacts' rows and the properties it
needs, lets the shared planner (``plan_contact``: last-writer-wins, and the fold rule of the
operations) decide, and writes only what changes. A late event's property is recomputed from
the contact's snapshot and history, read while no purge can move one into the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from profilehook import constants as c
from profilehook.changes import Change, change_id, decode_body, encode_body
from profilehook.errors import (
    ConfigurationError,
    CursorExpired,
    InvalidCursor,
    StorageUnavailable,
    StoreRefused,
)
from profilehook.events import Event, Version, decode_event, encode_event, now_us
from profilehook.filters import Query
from profilehook.stores import pg_arrays, postgres_destinations, postgres_query, postgres_segments
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
from profilehook.stores.postgres_destinations import PostgresDestinations
from profilehook.stores.query import ContactQueries, QueryPage
from profilehook.stores.segments import (
    BACKFILL_CHUNK_CONTACTS,
    RuleSet,
    Segment,
    Segments,
    Touched,
    everything,
    touched_by,
)

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # pragma: no cover - exercised by the missing-driver test
    raise ConfigurationError(
        "PostgreSQL needs its driver: pip install 'profilehook[postgres]'"
    ) from exc

log = logging.getLogger(__name__)
# psycopg's adapters, and the store's arrays made in one pass (stores/pg_arrays.py), for the
# store's connections only.
_ADAPTERS = psycopg.adapt.AdaptersMap(psycopg.adapters)
pg_arrays.register(_ADAPTERS)
T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

NOTIFY_CHANNEL = "profilehook_catalog"
MIGRATION_LOCK_ID = 0x70686B  # any constant shared by every profilehook process
PURGE_LOCK_ID = 0x706870  # another: purge_history's
ERASURE_LOCK_ID = 0x70686B_02  # applies hold it shared, an erasure request exclusively
REBUILD_CHUNK_EVENTS = 5_000
# Contacts planned between two writes of an apply (_apply_profiles): small enough that most of
# the planning overlaps the server's writing, large enough that statements stay few.
_WRITE_CHUNK_CONTACTS = 400
MIGRATION_CHUNK_ROWS = 5_000


async def _keep_values_exact(conn: Conn) -> None:
    """Migration 3: property values as the JSON text they came as. ``jsonb`` keeps numbers as
    ``numeric`` (1e20 came back an integer, -0.0 as 0.0) and reorders object keys; ``json``
    keeps the text. Values stored before are restored from the event that set them."""
    await conn.execute("ALTER TABLE properties ALTER COLUMN value TYPE json USING value::json")
    async with conn.cursor(name="exact_values") as rows:
        # Strings, booleans and null came through jsonb unchanged; numbers, objects and arrays
        # may not have.
        await rows.execute(
            "SELECT p.workspace, p.contact_id, p.name, e.body FROM properties p"
            " JOIN events e ON e.workspace = p.workspace AND e.event_id = p.event_id"
            " WHERE json_typeof(p.value) IN ('number', 'object', 'array')"
        )
        while chunk := await rows.fetchmany(MIGRATION_CHUNK_ROWS):
            restored = [
                (workspace, contact_id, name, _json(properties[name]))
                for workspace, contact_id, name, body in chunk
                if name in (properties := decode_event(bytes(body)).properties)
            ]
            await conn.execute(
                "UPDATE properties p SET value = u.v::json"
                " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[]) AS u(w, c, n, v)"
                " WHERE p.workspace = u.w AND p.contact_id = u.c AND p.name = u.n",
                _columns(restored, 4),
            )


# The id columns, compared by bytes (as Python compares them, in a batch, and SQLite): the
# database's collation (en-US, say) must not decide a tie in time, or an order of pages.
_BYTEWISE_COLUMNS = {
    "events": ("event_id", "contact_id"),
    "properties": ("contact_id", "name", "event_id"),
    "contacts": ("contact_id", "last_event_id", "deleted_event_id"),
    "profile_aliases": ("profile_id", "contact_id", "event_id"),
    "parked_events": ("profile_id", "event_id"),
}
BYTEWISE_COLLATIONS = ("C", "POSIX", "C.UTF-8", "C.utf8")


async def _compare_ids_by_bytes(conn: Conn) -> None:
    """Migration 5: ``COLLATE "C"`` on the id columns. Profiles decided under another
    collation may hold the wrong winner of a tie: they are rebuilt from the events."""
    for table, columns in _BYTEWISE_COLUMNS.items():
        changes = ", ".join(f'ALTER COLUMN {c} TYPE text COLLATE "C"' for c in columns)
        await conn.execute(f"ALTER TABLE {table} {changes}")  # names from the dict above
    cur = await conn.execute(
        "SELECT datlocprovider = 'c' AND datcollate = ANY(%s) FROM pg_database"
        " WHERE datname = current_database()",
        (list(BYTEWISE_COLLATIONS),),
    )
    if not (await cur.fetchone() or (False,))[0]:
        log.warning("rebuilding profiles: this database's collation decided ties until now")
        # Once every migration has run (the rebuild is today's code, for today's tables).
        await conn.execute(f"CREATE TEMP TABLE {_REBUILD_AFTER_MIGRATING} () ON COMMIT DROP")


_REBUILD_AFTER_MIGRATING = "profilehook_rebuild_after_migrating"


Migration = str | Callable[[Conn], Awaitable[None]]
"""SQL to run, or a function of the connection for what SQL alone cannot do. Append only:
a migration that has run anywhere is never edited."""

MIGRATIONS: list[Migration] = [
    """
    CREATE TABLE events (
        workspace text NOT NULL,
        event_id text NOT NULL,
        contact_id text NOT NULL,
        ts_us bigint NOT NULL,
        status text NOT NULL,
        applied_us bigint,
        error text,
        body bytea NOT NULL,
        PRIMARY KEY (workspace, event_id)
    );
    CREATE INDEX events_by_contact ON events (workspace, contact_id, ts_us, event_id);
    CREATE TABLE properties (
        workspace text NOT NULL,
        contact_id text NOT NULL,
        name text NOT NULL,
        value jsonb,
        ts_us bigint NOT NULL,
        event_id text NOT NULL,
        PRIMARY KEY (workspace, contact_id, name)
    );
    CREATE TABLE contacts (
        workspace text NOT NULL,
        contact_id text NOT NULL,
        last_ts_us bigint,
        last_event_id text,
        deleted_ts_us bigint,
        deleted_event_id text,
        PRIMARY KEY (workspace, contact_id)
    );
    CREATE TABLE api_keys (
        key_id text PRIMARY KEY,
        workspace text NOT NULL,
        key_hash text NOT NULL UNIQUE,
        created_us bigint NOT NULL,
        revoked_us bigint
    );
    CREATE TABLE sources (
        source_id text PRIMARY KEY,
        workspace text NOT NULL,
        kind text NOT NULL,
        config jsonb NOT NULL,
        created_us bigint NOT NULL
    );
    """,
    """
    CREATE TABLE profile_aliases (
        workspace text NOT NULL,
        source_id text NOT NULL,
        profile_id text NOT NULL,
        contact_id text NOT NULL,
        ts_us bigint NOT NULL,
        event_id text NOT NULL,
        PRIMARY KEY (workspace, source_id, profile_id)
    );
    CREATE TABLE parked_events (
        workspace text NOT NULL,
        source_id text NOT NULL,
        profile_id text NOT NULL,
        event_id text NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (workspace, source_id, profile_id, event_id)
    );
    """,
    _keep_values_exact,
    """
    CREATE TABLE seen_nonces (
        key bytea PRIMARY KEY,
        expires_us bigint NOT NULL
    );
    CREATE INDEX seen_nonces_by_expiry ON seen_nonces (expires_us);
    """,
    _compare_ids_by_bytes,
    # Keys get scopes: those made before scopes existed keep doing everything; a key inserted
    # without any (by a process not yet upgraded) gets `keys create`'s default.
    """
    ALTER TABLE api_keys ADD COLUMN scopes text NOT NULL DEFAULT 'ingest read admin';
    ALTER TABLE api_keys ALTER COLUMN scopes SET DEFAULT 'ingest read';
    """,
    """
    -- Retention (purge_history): per contact, the folded state of its purged events, in the
    -- shape of contacts and properties (rebuild starts from it); the purge walks event times.
    CREATE TABLE snapshot_contacts (
        workspace text NOT NULL,
        contact_id text COLLATE "C" NOT NULL,
        last_ts_us bigint,
        last_event_id text COLLATE "C",
        deleted_ts_us bigint,
        deleted_event_id text COLLATE "C",
        PRIMARY KEY (workspace, contact_id)
    );
    CREATE TABLE snapshot_properties (
        workspace text NOT NULL,
        contact_id text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        value json,
        ts_us bigint NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (workspace, contact_id, name)
    );
    CREATE INDEX events_by_time ON events (ts_us);
    """,
    """
    CREATE TABLE erasures (
        erasure_id text PRIMARY KEY,
        workspace text NOT NULL,
        contact_id text COLLATE "C" NOT NULL,
        requested_us bigint NOT NULL,
        suppress boolean NOT NULL,
        completed_us bigint
    );
    CREATE INDEX erasures_pending ON erasures (requested_us) WHERE completed_us IS NULL;
    CREATE TABLE erased_contacts (
        workspace text NOT NULL,
        contact_id text COLLATE "C" NOT NULL,
        upto_us bigint NOT NULL,
        suppressed boolean NOT NULL,
        PRIMARY KEY (workspace, contact_id)
    );
    CREATE INDEX profile_aliases_by_contact ON profile_aliases (workspace, contact_id);
    """,
    """
    -- Property operations: per contact, the version of its newest event with an operation
    -- (a late event older than it may need its properties recomputed from the history).
    ALTER TABLE contacts ADD COLUMN IF NOT EXISTS ops_ts_us bigint,
        ADD COLUMN IF NOT EXISTS ops_event_id text COLLATE "C";
    ALTER TABLE snapshot_contacts ADD COLUMN IF NOT EXISTS ops_ts_us bigint,
        ADD COLUMN IF NOT EXISTS ops_event_id text COLLATE "C";
    """,
    # Querying profiles: an index per kind of value (stores/postgres_query.py).
    postgres_query.INDEXES,
    # Segments and their members (stores/postgres_segments.py).
    postgres_segments.TABLES,
    """
    -- The change feed (stores/changes.py), written by apply in its transaction. A change's
    -- position counts up per workspace from change_positions, whose row apply updates last,
    -- just before it commits: the row lock orders the commits, so a position is given only
    -- once every smaller one has committed (README, Getting changes out).
    CREATE TABLE change_positions (
        workspace text COLLATE "C" PRIMARY KEY,
        last bigint NOT NULL
    );
    CREATE TABLE changes (
        workspace text COLLATE "C" NOT NULL,
        position bigint NOT NULL,
        contact_id text COLLATE "C" NOT NULL,
        event_id text COLLATE "C" NOT NULL,
        applied_us bigint NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (workspace, position)
    );
    CREATE INDEX changes_by_contact ON changes (workspace, contact_id);
    CREATE INDEX changes_by_time ON changes (applied_us);
    -- Per workspace, the newest position retention purged: a cursor before it has expired.
    CREATE TABLE changes_purged (
        workspace text COLLATE "C" PRIMARY KEY,
        upto bigint NOT NULL
    );
    """,
    """
    -- Per contact, the marks of the properties an operation touched (ContactState.marks, as
    -- msgpack): a late event on them is decided without the history. NULL on a contact with
    -- operations from before: not known.
    ALTER TABLE contacts ADD COLUMN IF NOT EXISTS marks bytea;
    ALTER TABLE snapshot_contacts ADD COLUMN IF NOT EXISTS marks bytea;
    """,
    """
    -- The newest event time retention purged (purge_history): apply refuses a new event no
    -- newer (stores/base.py split_purged).
    CREATE TABLE IF NOT EXISTS history_purged (
        id integer PRIMARY KEY CHECK (id = 1),
        upto_us bigint NOT NULL
    );
    """,
    postgres_destinations.MIGRATION,  # destinations and their deliveries
    # The query indexes again, with contact_id last: pages in index order (postgres_query.py).
    postgres_query.INDEXES_BY_CONTACT,
    postgres_destinations.INDEXES,  # deliveries by when due, and finished ones by when
    postgres_destinations.HEADS,  # each contact's earliest pending delivery: what a claim reads
    # Memberships without their index by contact, which nothing reads (postgres_segments.py).
    postgres_segments.DROP_BY_CONTACT,
    # Memberships keyed by the segment's integer (postgres_segments.py).
    postgres_segments.BY_KEY,
]


def split_url(url: str) -> tuple[str, str]:
    """``postgresql://…?schema=name`` -> (conninfo without ``schema``, schema; default public)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "public")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresStore(Store, ContactQueries, Segments, PostgresDestinations):
    """Profiles in PostgreSQL. Connection faults cost a bounded time, never a stuck process:
    every connection has TCP keepalives, a pooled one is checked before use, a transaction
    that does not answer within ``timeout_s`` has its connection cut; start-up does not wait
    for PostgreSQL (calls raise ``StorageUnavailable`` until it answers and is migrated)."""

    def __init__(
        self,
        url: str,
        pool_size: int = 8,
        *,
        auth_cache_max_stale_s: float = c.AUTH_CACHE_MAX_STALE_S,
        timeout_s: float = c.STORE_TIMEOUT_S,
    ):
        self.conninfo, self.schema = split_url(url)
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[Conn] | None = None
        self.timeout_s = timeout_s
        self.max_stale_s = auth_cache_max_stale_s
        # Often enough that a live listener keeps every cached answer fresh (with a tiny bound,
        # answers are read again instead: still correct).
        self._ping_interval_s = max(
            c.LISTEN_PING_MIN_INTERVAL_S, min(c.LISTEN_PING_INTERVAL_S, auth_cache_max_stale_s / 3)
        )
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._generation = 0  # moves on every clear: a load that straddles one is not cached
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        # When the LISTEN connection last proved that no notification was missed (monotonic):
        # every answer cached before then was current then.
        self._listener_alive_s = -math.inf
        self._preparing: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # reachable and migrated
        self._unreachable = "connecting"

    async def open(self) -> None:
        """Start connecting and migrating; wait up to ``PG_OPEN_WAIT_S`` for it. An unreachable
        PostgreSQL is not fatal (a server starts and answers 503 until it answers); a
        PostgreSQL that answers and refuses the migration raises ``StorageUnavailable``."""
        schema = sql.Identifier(self.schema)

        async def configure(conn: Conn) -> None:
            await conn.execute(sql.SQL("SET search_path TO {}").format(schema))
            await conn.commit()

        self._pool = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self._pool_size,
            kwargs=self._connect_options(POOL_APPLICATION_NAME),
            configure=configure,
            open=False,
            timeout=POOL_TIMEOUT_S,
        )
        await self._pool.open(wait=False)
        self._preparing = asyncio.create_task(self._prepare(), name="pg-prepare")
        self._listener = asyncio.create_task(self._listen(), name="pg-catalog-listener")
        await asyncio.wait({self._preparing}, timeout=c.PG_OPEN_WAIT_S)
        if self._preparing.done() and self._preparing.exception() is not None:
            error = self._preparing.exception()
            await self.close()
            raise StorageUnavailable(f"PostgreSQL refused to prepare the schema: {error}")
        if not self._ready.is_set():
            log.warning(
                "PostgreSQL not ready after %g s (%s); store calls fail (503) until it is",
                c.PG_OPEN_WAIT_S,
                self._unreachable,
            )

    async def close(self) -> None:
        for task in (self._preparing, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._preparing = self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _connect_options(self, application_name: str) -> dict[str, Any]:
        """Connection parameters: keepalives and timeouts, merged into the URL's own."""
        given = conninfo_to_dict(self.conninfo)
        timeout_ms = int(self.timeout_s * 1000)
        options = (
            f"{given.get('options') or ''} -c statement_timeout={timeout_ms}"
            f" -c idle_in_transaction_session_timeout={timeout_ms}"
        ).strip()
        return {
            "application_name": given.get("application_name") or application_name,
            "connect_timeout": given.get("connect_timeout") or c.PG_CONNECT_TIMEOUT_S,
            "keepalives": 1,
            "keepalives_idle": c.PG_KEEPALIVES_IDLE_S,
            "keepalives_interval": c.PG_KEEPALIVES_INTERVAL_S,
            "keepalives_count": c.PG_KEEPALIVES_COUNT,
            "tcp_user_timeout": c.PG_TCP_USER_TIMEOUT_MS,
            "options": options,
            "context": _ADAPTERS,
        }

    async def _prepare(self) -> None:
        """Migrate once PostgreSQL answers; retry while it cannot be reached. (On a connection
        of its own: the pool would say only that it had none in time, not why.)"""
        failures = 0
        while True:
            try:
                await self._migrate_on_own_connection()
            except psycopg.OperationalError as exc:  # unreachable, or gone meanwhile
                self._unreachable = _first_line(exc)
                if not failures:
                    log.warning("PostgreSQL unreachable (%s); retrying", self._unreachable)
                failures += 1
                await asyncio.sleep(c.PG_RETRY_S)
                continue
            except psycopg.Error as exc:  # it answered, and refused: retrying would not help
                self._unreachable = f"it refused the migration: {_first_line(exc)}"
                log.error("PostgreSQL schema %s: %s", self.schema, self._unreachable)
                raise
            if failures:
                log.warning("PostgreSQL answers: serving")
            self._ready.set()
            return

    async def _migrate_on_own_connection(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.conninfo, **self._connect_options(POOL_APPLICATION_NAME)
        ) as conn:
            schema = sql.Identifier(self.schema)
            async with conn.transaction():
                for statement in _UNBOUNDED:
                    await conn.execute(statement)
                await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
                await self._migrate(conn)

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, bounded: bool = True) -> T:
        """Run ``fn`` in one transaction; driver errors become ``StorageUnavailable``. A
        ``bounded`` transaction that takes over ``timeout_s`` is cut (its connection too)."""
        if not self._ready.is_set():
            raise StorageUnavailable(
                f"PostgreSQL is unreachable ({self._unreachable}), retry later"
            )
        if self._pool is None:
            raise StorageUnavailable("PostgreSQL store is not open")
        cut = _Cut()
        try:
            async with self._connection(self._pool) as conn:
                with cut.after(conn, self.timeout_s if bounded else None):
                    async with conn.transaction():
                        for statement in () if bounded else _UNBOUNDED:
                            await conn.execute(statement)
                        return await fn(conn)
        except (
            psycopg.DataError,
            psycopg.IntegrityError,
            psycopg.errors.ProgramLimitExceeded,
        ) as exc:
            # The data, not the server: an outage would retry it (and what is batched with
            # it) forever; refused, the applier isolates it and records it as failed.
            log.error("PostgreSQL refused the data: %s", exc)
            raise StoreRefused(f"PostgreSQL refused the data: {exc}") from exc
        except psycopg.Error as exc:
            why = f"no answer within {self.timeout_s:g} s" if cut.done else str(exc)
            log.error("PostgreSQL error: %s", why)
            raise StorageUnavailable(f"PostgreSQL unavailable ({why}), retry later") from exc
        except TimeoutError as exc:  # the pool had no connection in time
            raise StorageUnavailable("PostgreSQL did not answer in time, retry later") from exc

    @contextlib.asynccontextmanager
    async def _connection(self, pool: AsyncConnectionPool[Conn]) -> AsyncIterator[Conn]:
        """A pooled connection that answered a check just now. (After an outage the pool may
        hold connections that died meanwhile; the pool's own ``check`` waits a second after
        the second dead one, longer than a request may wait.)"""
        deadline_s = time.monotonic() + POOL_TIMEOUT_S
        while True:
            conn = await pool.getconn(timeout=max(0.0, deadline_s - time.monotonic()))
            try:
                await _check_connection(conn)
            except psycopg.Error:  # broken: the pool drops it and opens another
                await pool.putconn(conn)
                continue
            except BaseException:
                await pool.putconn(conn)
                raise
            break
        try:
            yield conn
        finally:
            await pool.putconn(conn)

    async def _migrate(self, conn: Conn) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        await conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
        )
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, applied_us bigint)"
        )
        cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        current = (await cur.fetchone() or (0,))[0]
        for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
            if isinstance(migration, str):
                await conn.execute(migration)
            else:
                await migration(conn)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_us) VALUES (%s, %s)",
                (version, now_us()),
            )
            log.info("applied PostgreSQL migration %d in schema %s", version, self.schema)
        cur = await conn.execute("SELECT to_regclass(%s)", (f"pg_temp.{_REBUILD_AFTER_MIGRATING}",))
        if (await cur.fetchone() or (None,))[0] is not None:
            await _rebuild(conn, None, from_snapshots=False)
            await conn.execute(f"DROP TABLE pg_temp.{_REBUILD_AFTER_MIGRATING}")

    async def _listen(self) -> None:
        """Clear the hot-path cache whenever another process changes keys or sources, and
        prove every ``_ping_interval_s`` that the connection is alive: a dead one (a peer
        that vanished without a reset) would otherwise let revoked keys in forever."""
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, **self._connect_options(LISTEN_APPLICATION_NAME)
                ) as conn:
                    started_s = time.monotonic()
                    with _Cut().after(conn, c.LISTEN_PING_TIMEOUT_S):
                        await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._clear_cache()  # what changed while nobody listened is unknown
                    self._listener_alive_s = started_s
                    self._listening.set()
                    if failures:
                        log.warning("catalog listener connected again")
                    failures = 0
                    await self._follow(conn)
            except (psycopg.Error, OSError) as exc:
                # One line per outage, not one per attempt.
                if not failures:
                    log.warning("catalog listener lost (%s); reconnecting", exc)
                failures += 1
            self._listening.clear()
            await asyncio.sleep(c.PG_RETRY_S)

    async def _follow(self, conn: Conn) -> None:
        while True:
            async for notice in conn.notifies(timeout=self._ping_interval_s):
                if notice.payload in ("", self.schema):  # (none: from an older version)
                    self._clear_cache()
            started_s = time.monotonic()
            with _Cut().after(conn, c.LISTEN_PING_TIMEOUT_S):
                await conn.execute("SELECT 1")  # notifications sent before it came before it
            self._listener_alive_s = started_s

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._generation += 1

    async def _cached(self, key: tuple[str, str], load: Callable[[Conn], Awaitable[T]]) -> T:
        """``load``'s answer, or the cached one while it is known to be current.

        A cached answer was current when it was loaded, and again whenever the listener proved
        that no notification was missed since. A known key or source is served for up to
        ``max_stale_s`` after that (through a store outage, or until a revocation that no
        notification announced is read again); an unknown one only while the listener is
        connected: a key created meanwhile must not be refused for so long.
        """
        now_s = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None:
            current_s = max(hit.loaded_s, self._listener_alive_s)
            fresh = now_s - current_s < self.max_stale_s
            if fresh and (hit.value is not None or self._listening.is_set()):
                result: T = hit.value
                return result
        generation = self._generation
        value = await self._run(load)
        # A change notified while this load ran may not be in its answer: do not keep it.
        if generation == self._generation:
            self._cache[key] = _Cached(value, now_s)
        return value

    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        return await self._run(lambda conn: _apply(conn, events))

    async def record_failure(self, event: Event, error: str) -> None:
        async def insert(conn: Conn) -> None:
            # An erased contact's event is kept as its stub, whatever failed.
            await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ERASURE_LOCK_ID,))
            _, erased = split_erased([event], await _erased_contacts(conn, [event]))
            status, kept, why = ("erased", erased[0], None) if erased else ("failed", event, error)
            await conn.execute(
                "INSERT INTO events (workspace, event_id, contact_id, ts_us, status, applied_us,"
                " error, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (
                    event.workspace,
                    event.event_id,
                    event.contact_id,
                    event.ts_us,
                    status,
                    now_us(),
                    why,
                    encode_event(kept),
                ),
            )

        await self._run(insert)

    async def get_contact(self, workspace: str, contact_id: str) -> Contact | None:
        return await self._run(lambda conn: _contact(conn, workspace, contact_id))

    async def contacts_page(
        self, workspace: str, after: str | None, limit: int
    ) -> tuple[list[Contact], str | None]:
        async def select(conn: Conn) -> tuple[list[Contact], str | None]:
            # One snapshot for both statements: a contact applied between them would otherwise
            # come out with the properties of one version and the time of another.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur = await conn.execute(
                f"SELECT contact_id, {_VERSION_COLUMNS} FROM contacts WHERE workspace = %s"
                + ("" if after is None else " AND contact_id > %s")
                + " ORDER BY contact_id LIMIT %s",
                (workspace, limit) if after is None else (workspace, after, limit),
            )
            rows = await cur.fetchall()
            live = {row[0]: last for row in rows if (last := _last_if_exists(row[1:]))}
            cur = await conn.execute(
                f"SELECT contact_id, {_PROPERTY_COLUMNS} FROM properties WHERE workspace = %s"
                " AND contact_id = ANY(%s) AND value IS NOT NULL ORDER BY contact_id, name",
                (workspace, list(live)),
            )
            held: dict[str, list[tuple[Any, ...]]] = {}
            for contact_id, *prop in await cur.fetchall():
                held.setdefault(contact_id, []).append(tuple(prop))
            found = [_contact_of(i, last, held.get(i, [])) for i, last in live.items()]
            return found, rows[-1][0] if len(rows) == limit else None

        return await self._run(select)

    async def query_contacts(self, workspace: str, query: Query) -> QueryPage:
        async def select(conn: Conn) -> QueryPage:
            # One snapshot for the page, its properties and its count.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            rows = await postgres_query.select(conn, workspace, query, _VERSION_COLUMNS)
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            live = {row[0]: last for row in rows if (last := _last_if_exists(row[1:]))}
            cur = await conn.execute(
                f"SELECT contact_id, {_PROPERTY_COLUMNS} FROM properties WHERE workspace = %s"
                " AND contact_id = ANY(%s) AND value IS NOT NULL ORDER BY contact_id, name",
                (workspace, list(live)),
            )
            held: dict[str, list[tuple[Any, ...]]] = {}
            for contact_id, *prop in await cur.fetchall():
                held.setdefault(contact_id, []).append(tuple(prop))
            found = [_contact_of(i, last, held.get(i, [])) for i, last in live.items()]
            count = None
            if query.count:
                cur = await conn.execute(*postgres_query.count_sql(workspace, query))
                count = int((await cur.fetchone() or (0,))[0])
            return QueryPage(found, rows[-1][0] if more else None, count)

        return await self._run(select)

    async def create_segment(
        self, segment: Segment, most: int = c.MAX_SEGMENTS_PER_WORKSPACE
    ) -> bool:
        return await self._run(lambda conn: postgres_segments.create(conn, segment, most))

    async def list_segments(self, workspace: str) -> list[Segment]:
        return await self._run(lambda conn: postgres_segments.listed(conn, workspace))

    async def get_segment(self, workspace: str, segment_id: str) -> Segment | None:
        return await self._run(lambda conn: postgres_segments.get(conn, workspace, segment_id))

    async def delete_segment(self, workspace: str, segment_id: str) -> bool:
        return await self._run(lambda conn: postgres_segments.delete(conn, workspace, segment_id))

    async def segment_members(
        self, workspace: str, segment_id: str, after: str | None, limit: int
    ) -> tuple[list[Contact], str | None]:
        async def select(conn: Conn) -> tuple[list[Contact], str | None]:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            ids = await postgres_segments.member_ids(conn, workspace, segment_id, after, limit + 1)
            found = await _contacts_now(conn, [(workspace, i) for i in ids[:limit]])
            page = [c for i in ids[:limit] if (c := found.get((workspace, i))) is not None]
            return page, ids[limit - 1] if len(ids) > limit else None

        return await self._run(select)

    async def backfill_segment(
        self, workspace: str, segment_id: str, limit: int = BACKFILL_CHUNK_CONTACTS
    ) -> bool:
        return await self._run(
            lambda conn: postgres_segments.backfill(
                conn, workspace, segment_id, limit, _lock_profiles
            )
        )

    async def building_segments(self) -> list[tuple[str, str]]:
        return await self._run(postgres_segments.building)

    async def count_contacts(self, workspace: str) -> int:
        async def count(conn: Conn) -> int:
            sql = "SELECT COUNT(*) FROM contacts WHERE workspace = %s"
            cur = await conn.execute(sql, (workspace,))
            return int((await cur.fetchone() or (0,))[0])

        return await self._run(count)

    async def history(
        self, workspace: str, contact_id: str, before: Version | None, limit: int
    ) -> list[EventRecord]:
        top = before or (2**62, "")

        async def select(conn: Conn) -> list[EventRecord]:
            # One statement: the contact's delete and its events are read in one snapshot.
            cur = await conn.execute(
                "SELECT e.status, e.applied_us, e.error, e.body FROM events e"
                " LEFT JOIN contacts k ON k.workspace = e.workspace AND k.contact_id = e.contact_id"
                " WHERE e.workspace = %s AND e.contact_id = %s AND e.status <> 'erased'"
                ' AND (e.ts_us, e.event_id COLLATE "C") < (%s, %s)'
                " AND (k.deleted_ts_us IS NULL"
                ' OR (e.ts_us, e.event_id COLLATE "C") > (k.deleted_ts_us, k.deleted_event_id))'
                ' ORDER BY e.ts_us DESC, e.event_id COLLATE "C" DESC LIMIT %s',
                (workspace, contact_id, top[0], top[1], limit),
            )
            return [_record(row) for row in await cur.fetchall()]

        return await self._run(select)

    async def get_event(self, workspace: str, event_id: str) -> EventRecord | None:
        async def select(conn: Conn) -> EventRecord | None:
            cur = await conn.execute(
                "SELECT status, applied_us, error, body FROM events"
                " WHERE workspace = %s AND event_id = %s",
                (workspace, event_id),
            )
            row = await cur.fetchone()
            return None if row is None else _record(row)

        return await self._run(select)

    async def rebuild(self, progress: Progress | None = None) -> int:
        return await self._run(lambda conn: _rebuild(conn, progress), bounded=False)

    async def purge_history(self, before_us: int, limit: int) -> int:
        return await self._run(lambda conn: _purge(conn, before_us, limit))

    async def read_changes(self, workspace: str, after: str | None, limit: int) -> list[Change]:
        _position(after)  # refused before a connection is taken
        return await self._run(lambda conn: _read_changes(conn, workspace, after, limit))

    async def feed_end(self, workspace: str) -> str | None:
        return await self._run(lambda conn: _feed_end(conn, workspace))

    async def purge_changes(self, before_us: int, limit: int) -> int:
        return await self._run(lambda conn: _purge_changes(conn, before_us, limit))

    async def add_key(self, key: ApiKey, key_hash: str) -> None:
        async def insert(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO api_keys (key_id, workspace, key_hash, created_us, scopes)"
                " VALUES (%s, %s, %s, %s, %s)",
                (key.key_id, key.workspace, key_hash, key.created_us, scopes_text(key.scopes)),
            )
            await _notify(conn)

        await self._run(insert)
        self._clear_cache()  # its own change, read at once: not when the notification is back

    async def list_keys(self, workspace: str | None = None) -> list[ApiKey]:
        async def select(conn: Conn) -> list[ApiKey]:
            cur = await conn.execute(
                "SELECT key_id, workspace, created_us, revoked_us, scopes FROM api_keys"
                " WHERE %s::text IS NULL OR workspace = %s ORDER BY created_us",
                (workspace, workspace),
            )
            return [
                ApiKey(row[0], row[1], row[2], row[3], scopes_of(row[4]))
                for row in await cur.fetchall()
            ]

        return await self._run(select)

    async def revoke_key(self, key_id: str, revoked_us: int) -> bool:
        async def update(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_us = COALESCE(revoked_us, %s) WHERE key_id = %s",
                (revoked_us, key_id),
            )
            await _notify(conn)
            return cur.rowcount > 0

        revoked = await self._run(update)
        self._clear_cache()
        return revoked

    async def put_source(self, source: Source) -> None:
        async def upsert(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO sources (source_id, workspace, kind, config, created_us)"
                " VALUES (%s, %s, %s, %s::jsonb, %s) ON CONFLICT (source_id) DO UPDATE SET"
                " workspace = excluded.workspace, kind = excluded.kind, config = excluded.config",
                (
                    source.source_id,
                    source.workspace,
                    source.kind,
                    _json(source.config),
                    source.created_us,
                ),
            )
            await _notify(conn)

        await self._run(upsert)
        self._clear_cache()

    async def get_source(self, source_id: str) -> Source | None:
        async def select(conn: Conn) -> Source | None:
            cur = await conn.execute(_SOURCE_SELECT + " WHERE source_id = %s", (source_id,))
            row = await cur.fetchone()
            return None if row is None else _source(row)

        return await self._cached(("source", source_id), select)

    async def list_sources(self, workspace: str | None = None) -> list[Source]:
        async def select(conn: Conn) -> list[Source]:
            cur = await conn.execute(
                _SOURCE_SELECT + " WHERE %s::text IS NULL OR workspace = %s ORDER BY created_us",
                (workspace, workspace),
            )
            return [_source(row) for row in await cur.fetchall()]

        return await self._run(select)

    async def delete_source(self, source_id: str) -> bool:
        async def delete(conn: Conn) -> bool:
            cur = await conn.execute("DELETE FROM sources WHERE source_id = %s", (source_id,))
            await _notify(conn)
            return cur.rowcount > 0

        deleted = await self._run(delete)
        self._clear_cache()
        return deleted

    async def key_grant(self, key_hash: str) -> KeyGrant | None:
        async def select(conn: Conn) -> KeyGrant | None:
            cur = await conn.execute(
                "SELECT key_id, workspace, scopes FROM api_keys"
                " WHERE key_hash = %s AND revoked_us IS NULL",
                (key_hash,),
            )
            row = await cur.fetchone()
            return None if row is None else KeyGrant(row[0], row[1], scopes_of(row[2]))

        return await self._cached(("key", key_hash), select)

    async def get_alias(self, workspace: str, source_id: str, profile_id: str) -> str | None:
        return await self._run(lambda conn: _alias(conn, (workspace, source_id, profile_id)))

    async def put_alias(
        self, workspace: str, source_id: str, profile_id: str, contact_id: str, version: Version
    ) -> AliasUpdate:
        key = (workspace, source_id, profile_id)

        async def put(conn: Conn) -> AliasUpdate:
            await _lock_alias(conn, key)
            await conn.execute(
                "INSERT INTO profile_aliases AS a (workspace, source_id, profile_id, contact_id,"
                " ts_us, event_id) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (workspace, source_id, profile_id) DO UPDATE SET"
                " contact_id = excluded.contact_id, ts_us = excluded.ts_us,"
                " event_id = excluded.event_id"
                ' WHERE (excluded.ts_us, excluded.event_id COLLATE "C") > (a.ts_us, a.event_id)',
                (*key, contact_id, *version),
            )
            cur = await conn.execute(
                "SELECT body FROM parked_events" + _ALIAS_WHERE + " ORDER BY event_id", key
            )
            parked = [decode_event(bytes(body)) for (body,) in await cur.fetchall()]
            current = await _alias(conn, key)
            assert current is not None
            return AliasUpdate(current, parked)

        return await self._run(put)

    async def park_until_alias(self, source_id: str, profile_id: str, event: Event) -> str | None:
        key = (event.workspace, source_id, profile_id)

        async def park(conn: Conn) -> str | None:
            await _lock_alias(conn, key)
            contact = await _alias(conn, key)
            if contact is None:
                await conn.execute(
                    "INSERT INTO parked_events (workspace, source_id, profile_id, event_id, body)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (*key, event.event_id, encode_event(event)),
                )
            return contact

        return await self._run(park)

    async def unpark(
        self, workspace: str, source_id: str, profile_id: str, event_ids: Sequence[str]
    ) -> None:
        async def delete(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM parked_events" + _ALIAS_WHERE + " AND event_id = ANY(%s)",
                (workspace, source_id, profile_id, list(event_ids)),
            )

        await self._run(delete)

    async def remember_nonce(self, nonce: Nonce, expires_us: int, now_us: int) -> bool:
        async def remember(conn: Conn) -> bool:
            # SKIP LOCKED: processes purging at once never wait for (or deadlock on) each other.
            await conn.execute(
                "DELETE FROM seen_nonces WHERE key IN (SELECT key FROM seen_nonces"
                " WHERE expires_us < %s FOR UPDATE SKIP LOCKED)",
                (now_us,),
            )
            # A second inserter of the same key waits for the first to commit, then does nothing.
            inserted = await conn.execute(
                "INSERT INTO seen_nonces (key, expires_us) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (nonce.key(), expires_us),
            )
            return inserted.rowcount == 1

        return await self._run(remember)

    async def forget_nonce(self, nonce: Nonce) -> None:
        async def forget(conn: Conn) -> None:
            await conn.execute("DELETE FROM seen_nonces WHERE key = %s", (nonce.key(),))

        await self._run(forget)

    async def request_erasure(self, erasure: Erasure) -> None:
        async def insert(conn: Conn) -> None:
            # Exclusive: waits for the apply transactions under way (each holds the lock
            # shared from before it checks erasures); every later one sees this erasure.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ERASURE_LOCK_ID,))
            await conn.execute(
                "INSERT INTO erasures (erasure_id, workspace, contact_id, requested_us, suppress)"
                " VALUES (%s, %s, %s, %s, %s)",
                (
                    erasure.erasure_id,
                    erasure.workspace,
                    erasure.contact_id,
                    erasure.requested_us,
                    erasure.suppress,
                ),
            )
            await conn.execute(
                "INSERT INTO erased_contacts AS x (workspace, contact_id, upto_us, suppressed)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (workspace, contact_id) DO UPDATE SET"
                " upto_us = greatest(x.upto_us, excluded.upto_us),"
                " suppressed = x.suppressed OR excluded.suppressed",
                (erasure.workspace, erasure.contact_id, erasure.requested_us, erasure.suppress),
            )

        await self._run(insert)

    async def get_erasure(self, workspace: str, erasure_id: str) -> Erasure | None:
        async def select(conn: Conn) -> Erasure | None:
            cur = await conn.execute(
                _ERASURE_SELECT + " WHERE erasure_id = %s AND workspace = %s",
                (erasure_id, workspace),
            )
            row = await cur.fetchone()
            return None if row is None else Erasure(*row)

        return await self._run(select)

    async def pending_erasures(self, limit: int) -> list[Erasure]:
        async def select(conn: Conn) -> list[Erasure]:
            cur = await conn.execute(
                _ERASURE_SELECT + " WHERE completed_us IS NULL ORDER BY requested_us LIMIT %s",
                (limit,),
            )
            return [Erasure(*row) for row in await cur.fetchall()]

        return await self._run(select)

    async def erase_contacts(self, erasures: Sequence[Erasure]) -> None:
        for erasure in erasures:  # a transaction each: one contact's rows locked at a time
            await self._run(functools.partial(_erase_contact, erasure=erasure))
            await self.forget_contact_deliveries(erasure.workspace, erasure.contact_id)

    async def complete_erasure(self, erasure_id: str, completed_us: int) -> None:
        async def update(conn: Conn) -> None:
            await conn.execute(
                "UPDATE erasures SET completed_us = %s"
                " WHERE erasure_id = %s AND completed_us IS NULL",
                (completed_us, erasure_id),
            )

        await self._run(update)

    async def unsuppress(self, workspace: str, contact_id: str) -> bool:
        async def update(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE erased_contacts SET suppressed = false"
                " WHERE workspace = %s AND contact_id = %s AND suppressed",
                (workspace, contact_id),
            )
            return cur.rowcount > 0

        return await self._run(update)

    async def is_suppressed(self, workspace: str, contact_id: str) -> bool:
        async def select(conn: Conn) -> bool:
            cur = await conn.execute(
                "SELECT suppressed FROM erased_contacts WHERE workspace = %s AND contact_id = %s",
                (workspace, contact_id),
            )
            row = await cur.fetchone()
            return row is not None and bool(row[0])

        return await self._run(select)


POOL_TIMEOUT_S = 5.0  # to get a connection from the pool
POOL_APPLICATION_NAME = "profilehook"
LISTEN_APPLICATION_NAME = "profilehook-listen"  # how operators (and tests) tell it apart
# Migrations and rebuild may take long on a large database: no statement timeout for them.
_UNBOUNDED = (
    "SET LOCAL statement_timeout = 0",
    "SET LOCAL idle_in_transaction_session_timeout = 0",
)


class _Cached(msgspec.Struct):
    value: Any
    loaded_s: float  # monotonic time the load began: its answer is at least that recent


class _Cut:
    """Cuts a connection that has not finished its work in time.

    Cancelling the work would not do: psycopg then tries to cancel the query on the server and
    waits for the answer, and a transaction's rollback waits for the server too. Shutting the
    socket down makes every wait on it end at once with an error, and the pool then discards
    the connection. A connection through a path that died (no reset, the kernel still
    acknowledging) is noticed no other way: keepalives are answered all along.
    """

    def __init__(self) -> None:
        self.done = False

    @contextlib.contextmanager
    def after(self, conn: Conn, timeout_s: float | None) -> Iterator[None]:
        if timeout_s is None:
            yield
            return
        timer = asyncio.get_running_loop().call_later(timeout_s, self._cut, conn)
        try:
            yield
        finally:
            timer.cancel()

    def _cut(self, conn: Conn) -> None:
        self.done = True
        log.warning("PostgreSQL connection silent for too long: cutting it")
        with (
            contextlib.suppress(OSError, psycopg.Error),
            socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock,
        ):
            sock.shutdown(socket.SHUT_RDWR)


def _first_line(exc: BaseException) -> str:
    """libpq's messages go on with hints on further lines (``Is the server running…``)."""
    return str(exc).strip().split("\n", 1)[0]


async def _check_connection(conn: Conn) -> None:
    """The check before lending a pooled connection (after an outage the pool may hold
    connections that died meanwhile). An idle connection has nothing to read unless its server
    closed it or reset it: only then is it checked, by a round trip cut if it does not come
    back in time. (A round trip on every use cost 0.3 ms a transaction, two thirds more for a
    small one; a path that went silent is the transaction's own timeout's to catch.)"""
    poll = select.poll()
    poll.register(conn.pgconn.socket, select.POLLIN)
    if not poll.poll(0):
        return
    with _Cut().after(conn, c.PG_POOL_CHECK_TIMEOUT_S):
        await AsyncConnectionPool.check_connection(conn)


AliasKey = tuple[str, str, str]
_ALIAS_WHERE = " WHERE workspace = %s AND source_id = %s AND profile_id = %s"


async def _lock_alias(conn: Conn, key: AliasKey) -> None:
    # Parking and mapping one profile serialise, so a parked event is never missed.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("\x1f".join(key),))


async def _alias(conn: Conn, key: AliasKey) -> str | None:
    cur = await conn.execute("SELECT contact_id FROM profile_aliases" + _ALIAS_WHERE, key)
    row = await cur.fetchone()
    return None if row is None else str(row[0])


_SOURCE_SELECT = "SELECT source_id, workspace, kind, config, created_us FROM sources"


async def _notify(conn: Conn) -> None:
    # The channel is the database's; the payload names the schema (the first on the
    # connection's search_path), so deployments sharing a database clear only their own caches.
    await conn.execute("SELECT pg_notify(%s, current_schema())", (NOTIFY_CHANNEL,))


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _source(row: Any) -> Source:
    source_id, workspace, kind, config, created_us = row
    return Source(source_id, workspace, kind, config, created_us)


def _record(row: Any) -> EventRecord:
    status, applied_us, error, body = row
    return EventRecord(decode_event(bytes(body)), status, applied_us, error)


async def _apply(conn: Conn, events: Sequence[Event]) -> ApplyResult:
    # In pipeline mode a statement whose answer is not read is sent and not waited for: the
    # server writes the profiles while this process makes the change records, instead of the
    # two taking turns (on G's batches they cost about as much as each other). An error in
    # such a statement is raised at the next read of an answer, or at the end of the block.
    async with conn.pipeline():
        return await _apply_pipelined(conn, events)


async def _apply_pipelined(conn: Conn, events: Sequence[Event]) -> ApplyResult:
    unique = first_of_each(events)
    # Shared with every other apply; an erasure request takes it exclusively: an apply either
    # committed before the request (and the erasure removes what it wrote) or sees it below.
    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ERASURE_LOCK_ID,))
    kept, erased = split_erased(unique, await _erased_contacts(conn, unique))
    erased_ids = {(e.workspace, e.event_id) for e in erased}
    applied_us = now_us()
    rows = [*kept, *erased]
    cur = await conn.execute(
        "INSERT INTO events (workspace, event_id, contact_id, ts_us, status, applied_us, body)"
        " SELECT w, e, c, t, s, %s, b FROM unnest(%b::text[], %b::text[], %b::text[],"
        " %b::bigint[], %b::text[], %b::bytea[]) AS u(w, e, c, t, s, b)"
        " ON CONFLICT DO NOTHING RETURNING workspace, event_id",
        (
            applied_us,
            *pg_arrays.arrays(
                [e.workspace for e in rows],
                [e.event_id for e in rows],
                [e.contact_id for e in rows],
                [e.ts_us for e in rows],
                ["erased" if (e.workspace, e.event_id) in erased_ids else "applied" for e in rows],
                [encode_event(e) for e in rows],
            ),
        ),
    )
    inserted = {(w, e) for w, e in await cur.fetchall()}
    new = [e for e in kept if (e.workspace, e.event_id) in inserted]
    # Read after the insert: a purge of these events' earlier records that the insert waited
    # for has committed its mark by now (READ COMMITTED: each statement sees the latest).
    purged_upto_us = await _purged_upto(conn)
    new, refused = split_purged(new, purged_upto_us)
    if refused:
        await conn.execute(
            "UPDATE events AS e SET status = 'failed', error = %s"
            " FROM unnest(%b::text[], %b::text[]) AS u(w, i)"
            " WHERE e.workspace = u.w AND e.event_id = u.i",
            (
                too_old_error(purged_upto_us or 0),
                *_columns([(r.workspace, r.event_id) for r in refused], 2),
            ),
        )
    erased = [e for e in erased if (e.workspace, e.event_id) in inserted]
    fresh_ids = {(e.workspace, e.event_id) for e in (*new, *erased)}
    dropped = repeats(events, [e for e in unique if (e.workspace, e.event_id) in fresh_ids])
    if dropped:
        await conn.execute(
            "UPDATE events AS e SET status = 'duplicate'"
            " FROM unnest(%b::text[], %b::text[], %b::bytea[]) AS u(w, i, b)"
            " WHERE e.workspace = u.w AND e.event_id = u.i AND e.status = 'applied'"
            " AND e.body <> u.b",
            _columns([(d.workspace, d.event_id, encode_event(d)) for d in dropped], 3),
        )
    changes = ChangeLog(new)
    result = await _apply_profiles(conn, new, changes=changes)
    changes.note_segments(result.segment_moves)
    if result.cleared:
        await conn.execute(
            "UPDATE events AS e SET error = NULL FROM unnest(%b::text[], %b::text[], %b::text[])"
            " AS u(w, i, p) WHERE e.workspace = u.w AND e.event_id = u.i"
            " AND left(e.error, length(u.p)) = u.p",
            _columns([(*key, f"{n}: ") for key, n in result.cleared.items()], 3),
        )
    if result.warnings:
        await conn.execute(
            "UPDATE events AS e SET error = u.m FROM unnest(%b::text[], %b::text[], %b::text[])"
            " AS u(w, i, m) WHERE e.workspace = u.w AND e.event_id = u.i",
            _columns([(*key, w) for key, w in result.warnings.items()], 3),
        )
    await _insert_changes(conn, changes, applied_us)  # last: it holds its workspaces' counters
    result.changes = len(changes)
    return result.count_new(events, new, erased, refused)


async def _purged_upto(conn: Conn) -> int | None:
    """The newest event time retention purged (None: nothing yet)."""
    mark = await (await conn.execute("SELECT upto_us FROM history_purged WHERE id = 1")).fetchone()
    return None if mark is None else int(mark[0])


async def _erased_contacts(
    conn: Conn, events: Sequence[Event]
) -> dict[tuple[str, str], ErasedContact]:
    keys = sorted({(e.workspace, e.contact_id) for e in events})
    cur = await conn.execute(
        "SELECT x.workspace, x.contact_id, x.upto_us, x.suppressed FROM erased_contacts x"
        " JOIN unnest(%b::text[], %b::text[]) AS u(w, c)"
        " ON x.workspace = u.w AND x.contact_id = u.c",
        _columns(keys, 2),
    )
    return {(w, c): ErasedContact(upto, bool(s)) for w, c, upto, s in await cur.fetchall()}


_ERASURE_SELECT = (
    "SELECT erasure_id, workspace, contact_id, requested_us, suppress, completed_us FROM erasures"
)


async def _erase_contact(conn: Conn, erasure: Erasure) -> None:
    """One transaction: the events the erasure covers become stubs, the contact's profile is
    recomputed from the events left, its aliases set by covered events go, and the events
    parked for them. The contact is locked first, as an apply locks it: one under way ends before."""
    workspace, contact_id, upto = erasure.workspace, erasure.contact_id, erasure.requested_us
    contact = (workspace, contact_id)
    # The locks an apply of the contact takes, in its order: one under way ends before.
    await conn.execute(_PROFILES.lock)
    await conn.execute(_PROFILES.lock_contacts, _columns([contact], 2))
    cur = await conn.execute(
        "SELECT event_id, status, body FROM events WHERE workspace = %s AND contact_id = %s"
        " AND status <> 'erased'",
        contact,
    )
    plan = ContactErasure.of(
        ((i, status, decode_event(bytes(body))) for i, status, body in await cur.fetchall()), upto
    )
    if plan.stubs:
        await conn.execute(
            "UPDATE events e SET status = 'erased', error = NULL, body = u.b"
            " FROM unnest(%b::text[], %b::bytea[]) AS u(i, b)"
            " WHERE e.workspace = %s AND e.event_id = u.i",
            (*_columns([(i, encode_event(stub)) for i, stub in plan.stubs], 2), workspace),
        )
    # Retention's snapshot of the contact holds only what predates the erasure.
    for table in (
        "properties",
        "contacts",
        "snapshot_properties",
        "snapshot_contacts",
        "changes",
    ):
        await conn.execute(
            f"DELETE FROM {table} WHERE workspace = %s AND contact_id = %s",  # names from above
            contact,
        )
    if plan.remaining:
        await _apply_profiles(conn, plan.remaining)
    await postgres_segments.keep(conn, [everything(*contact)], _contacts_now)
    cur = await conn.execute(
        "SELECT source_id, profile_id, ts_us, event_id FROM profile_aliases"
        " WHERE workspace = %s AND contact_id = %s",
        contact,
    )
    covered = [
        (source_id, profile_id)
        for source_id, profile_id, ts_us, event_id in await cur.fetchall()
        if plan.covers_alias((ts_us, event_id), upto)
    ]
    for source_id, profile_id in covered:
        key = (workspace, source_id, profile_id)
        await conn.execute("DELETE FROM profile_aliases" + _ALIAS_WHERE, key)
        await conn.execute("DELETE FROM parked_events" + _ALIAS_WHERE, key)


async def _apply_profiles(
    conn: Conn,
    events: Sequence[Event],
    tables: _FoldSql | None = None,
    *,
    base: Literal["history", "snapshot"] | None = "history",
    changes: ChangeLog | None = None,
) -> ApplyResult:
    """Plan every contact of the batch with the shared rules and write what the plan says (to
    ``tables``: the profiles, or the snapshots that ``purge_history`` folds into).

    Concurrent batches on one contact serialise on a transaction lock per contact (taken in one
    order: no deadlock), held while its rows are read, planned in Python and written; the table
    lock in ROW EXCLUSIVE mode first makes a batch wait for a ``rebuild`` (EXCLUSIVE) to end.
    ``base``: what a late event's properties are recomputed from (``plan_contact``), when the
    marks do not decide it: the contact's snapshot and applied events (``history``), or what
    its row holds (``snapshot``: the rebuild, whose rows start as the snapshots and get each
    contact's events in one batch). Those contacts are planned again with every property read.
    ``changes``: where each event's change is recorded (stores/changes.py), from the state
    before the batch and the plan.
    """
    tables = tables or _PROFILES
    groups = sorted(by_contact(events).items())
    if not groups:
        return ApplyResult()
    keys = _columns([key for key, _ in groups], 2)
    await conn.execute(tables.lock)
    await conn.execute(tables.lock_contacts, keys)
    # Segments follow the profiles (not the snapshots, nor a rebuild: it fills them anew). Read
    # under the contacts' locks (a segment made since is backfilled after this commits), so
    # the properties the segments look at are read with the plan's own.
    segments = tables is _PROFILES and base == "history"
    rules = await postgres_segments.rules(conn, {w for (w, _), _ in groups}) if segments else None
    held: dict[tuple[str, str], frozenset[str]] = {}
    states = await _states(
        conn,
        tables,
        groups,
        whole_on_delete=changes is not None,
        more=None if not rules or not rules[0] else (rules[0], held),
    )
    plans: dict[tuple[str, str], ContactPlan] = {}
    unwritten: dict[tuple[str, str], ContactPlan] = {}
    again: list[tuple[tuple[str, str], list[Event]]] = []
    later = None if base is None else _HISTORY_LATER
    result = _Written()
    for key, group in groups:
        state = states.get(key) or ContactState()
        plan = plan_contact(state, group, later)
        if plan.read_history or (
            changes is not None and not _changes_without_history(changes, state, group, plan)
        ):
            again.append((key, group))
        else:
            plans[key] = unwritten[key] = plan
        # Written a chunk at a time: in the apply's pipeline the server writes one chunk while
        # the next is planned. (Each contact's rows are its own: the order is free.)
        if len(unwritten) == _WRITE_CHUNK_CONTACTS:
            await _write_plans(conn, tables, unwritten, states, segments, result)
            unwritten = {}
    if again:
        unwritten.update(
            await _plan_with_history(conn, tables, again, events, base, states, changes)
        )
        plans.update(unwritten)
    await _write_plans(conn, tables, unwritten, states, segments, result)
    if rules is not None:
        result.segment_moves = await postgres_segments.keep(
            conn,
            result.touched,
            _contacts_now,
            {k: (state.values, plans[k]) for k, state in states.items() if k in plans},
            (rules, held),
        )
    return result


class _NeedsHistory(Exception):
    """A contact's changes need its history, which was not read (``_changes_without_history``)."""


def _history_later() -> tuple[ContactState, list[Event]]:
    """A ``Base`` to find out which contacts need theirs: empty (the plan is discarded)."""
    return ContactState(), []


def _history_not_read() -> tuple[ContactState, list[Event]]:
    raise _NeedsHistory()


_HISTORY_LATER: Base = _history_later


def _changes_without_history(
    changes: ChangeLog, state: ContactState, group: list[Event], plan: ContactPlan
) -> bool:
    """Record the contact's changes if its events, one by one, need no history (the marks or
    the versions decide each); False when one does (then nothing is recorded)."""
    try:
        changes.add(state, group, plan, _history_not_read)
    except _NeedsHistory:
        return False
    return True


async def _states(
    conn: Conn,
    tables: _FoldSql,
    groups: Sequence[tuple[tuple[str, str], list[Event]]],
    *,
    whole_on_delete: bool = False,
    more: tuple[Mapping[str, RuleSet], dict[tuple[str, str], frozenset[str]]] | None = None,
) -> dict[tuple[str, str], ContactState]:
    """The contacts' rows, with the properties their events name (every property of one with
    a delete when ``whole_on_delete``: a change says what a delete took). ``more``: the
    workspaces' segments, and where to note of each contact without a delete the names read,
    with those the segments' quick decision looks at (``RuleSet.quick_reads``)."""
    keys = _columns([key for key, _ in groups], 2)
    cur = await conn.execute(tables.select_contacts, keys)
    states: dict[tuple[str, str], ContactState] = {}
    for row in await cur.fetchall():
        states[(row[0], row[1])] = _state(row[2:])
    wanted: list[tuple[str, str, str]] = []
    whole: list[tuple[str, str]] = []
    for key, group in groups:
        if key not in states:
            continue
        if any(e.kind == "delete" for e in group):
            if whole_on_delete:
                whole.append(key)
                continue
            names = {n for e in group for n in e.properties}
        else:
            names = {n for e in group for n in e.properties}
            if more is not None and (found := more[0].get(key[0])) is not None:
                names |= found.quick_reads(names)
                more[1][key] = frozenset(names)
        wanted += [(*key, name) for name in names]
    if wanted:
        await _read_properties(conn, tables, states, wanted)
    if whole:
        await _read_properties(conn, tables, states, whole)
    return states


async def _read_properties(
    conn: Conn,
    tables: _FoldSql,
    states: dict[tuple[str, str], ContactState],
    wanted: Sequence[tuple[str, str, str]] | Sequence[tuple[str, str]],
) -> None:
    """Into ``states``: the properties (workspace, contact_id, name) or, given (workspace,
    contact_id), every property of the contact."""
    width = len(wanted[0])
    select = tables.select_properties if width == 3 else tables.select_all_properties
    cur = await conn.execute(select, _columns(wanted, width))
    for workspace, contact_id, name, value, ts_us, event_id in await cur.fetchall():
        state = states[(workspace, contact_id)]
        state.versions[name] = (ts_us, event_id)
        state.values[name] = None if value is None else msgspec.json.decode(value)


async def _plan_with_history(
    conn: Conn,
    tables: _FoldSql,
    groups: list[tuple[tuple[str, str], list[Event]]],
    batch: Sequence[Event],
    base: Literal["history", "snapshot"] | None,
    states: dict[tuple[str, str], ContactState],
    changes: ChangeLog | None,
) -> dict[tuple[str, str], ContactPlan]:
    """Plans for contacts with a late event that the marks do not decide: every property of
    the contact read, and its history (or, rebuilding, its row) to recompute from."""
    keys = [key for key, _ in groups]
    for key in keys:
        if key in states:
            states[key].versions.clear()
            states[key].values.clear()
    whole = [key for key in keys if key in states]
    if whole:
        await _read_properties(conn, tables, states, whole)
    bases: dict[tuple[str, str], tuple[ContactState, list[Event]]] = {}
    if base == "history":
        bases = await _histories(conn, keys, batch)
    plans = {}
    for key, group in groups:
        state = states.get(key) or ContactState()
        contact_base = functools.partial(_given, bases.get(key, (state, [])))
        plans[key] = plan_contact(state, group, contact_base)
        if changes is not None:
            changes.add(state, group, plans[key], contact_base)
    return plans


async def _write_plans(
    conn: Conn,
    tables: _FoldSql,
    plans: dict[tuple[str, str], ContactPlan],
    states: dict[tuple[str, str], ContactState],
    segments: bool,
    result: _Written,
) -> None:
    """Write what the plans say, a statement per kind of write for all of them, and add to
    ``result`` what they did; with ``segments``, note what each contact's memberships may need
    to decide again."""
    contacts: list[tuple[Any, ...]] = []
    deletes: list[tuple[str, str, int, str]] = []
    removes: list[tuple[str, str, str]] = []
    rows: list[tuple[str, str, str, str | None, int, str]] = []
    for key, plan in plans.items():
        state = states.get(key)
        # Here the contact's state before the batch and its plan are both known, in the apply
        # transaction: where what follows a change (segments, changes) hooks in.
        result.superseded += plan.superseded
        result.warnings.update(((key[0], i), w) for i, w in plan.warnings.items())
        result.cleared.update(((key[0], i), n) for i, n in plan.cleared.items())
        if segments:
            before = state or ContactState()
            if change := touched_by(key, before.last_update, before.deleted, plan, before.values):
                result.touched.append(change)
        if (
            state is None
            or plan.marks_changed
            or (plan.last_update, plan.deleted, plan.ops_upto)
            != (state.last_update, state.deleted, state.ops_upto)
        ):
            contacts.append(
                (
                    *key,
                    *_nullable(plan.last_update),
                    *_nullable(plan.deleted),
                    *_nullable(plan.ops_upto),
                    encode_marks(plan.marks, plan.ops_upto),
                )
            )
        if plan.delete_upto is not None:
            deletes.append((*key, *plan.delete_upto))
        removes += [(*key, name) for name in plan.removes]
        rows += [
            (*key, name, _json(value), *version) for name, (value, version) in plan.upserts.items()
        ]
        result.written += len(plan.upserts)
    if contacts:
        await conn.execute(tables.upsert_contacts, _columns(contacts, 9))
    if deletes:
        await conn.execute(tables.delete_covered, _columns(deletes, 4))
    if removes:
        await conn.execute(tables.delete_properties, _columns(removes, 3))
    if rows:
        await conn.execute(tables.upsert_properties, _columns(rows, 6))


@dataclass
class _Written(ApplyResult):
    """An ``ApplyResult`` and the contacts whose segments an apply decides again."""

    touched: list[Touched] = field(default_factory=list)


async def _contacts_now(
    conn: Conn,
    keys: list[tuple[str, str]],
    names: list[tuple[str, str, str]] | None = None,
) -> dict[tuple[str, str], Contact | None]:
    """These contacts' profiles as the transaction sees them (absent ones left out); with
    ``names``, (workspace, contact_id, name) triples, only those of their properties."""
    cur = await conn.execute(
        f"SELECT k.workspace, k.contact_id, {_VERSION_COLUMNS} FROM contacts k"
        " JOIN unnest(%s::text[], %s::text[]) AS u(w, c)"
        " ON k.workspace = u.w AND k.contact_id = u.c",
        _columns(keys, 2),
    )
    live = {(w, c): last for w, c, *v in await cur.fetchall() if (last := _last_if_exists(v))}
    if names is None:
        cur = await conn.execute(
            f"SELECT p.workspace, p.contact_id, {_PROPERTY_COLUMNS} FROM properties p"
            " JOIN unnest(%s::text[], %s::text[]) AS u(w, c)"
            " ON p.workspace = u.w AND p.contact_id = u.c WHERE p.value IS NOT NULL",
            _columns(list(live), 2),
        )
    else:
        wanted = [(w, c, n) for w, c, n in names if (w, c) in live]
        cur = await conn.execute(
            f"SELECT p.workspace, p.contact_id, {_PROPERTY_COLUMNS} FROM properties p"
            " JOIN unnest(%s::text[], %s::text[], %s::text[]) AS u(w, c, n)"
            " ON p.workspace = u.w AND p.contact_id = u.c AND p.name = u.n"
            " WHERE p.value IS NOT NULL",
            _columns(wanted, 3),
        )
    held: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for workspace, contact_id, *prop in await cur.fetchall():
        held.setdefault((workspace, contact_id), []).append(tuple(prop))
    return {k: _contact_of(k[1], last, sorted(held.get(k, []))) for k, last in live.items()}


async def _lock_profiles(conn: Conn, keys: list[tuple[str, str]]) -> None:
    """The locks an apply takes on these contacts, in its order."""
    await conn.execute(_PROFILES.lock_contacts, _columns(keys, 2))


def _given(
    found: tuple[ContactState, list[Event]],
) -> tuple[ContactState, list[Event]]:
    return found


async def _insert_changes(conn: Conn, changes: ChangeLog, applied_us: int) -> None:
    """The batch's changes at the next positions of their workspaces, in the batch's order. The
    counters' rows stay locked until the transaction ends (called last: only its commit is left):
    another apply takes its positions after this one has committed, so a reader never finds a
    position given while a smaller one may still come."""
    if not changes:
        return
    records = changes.records()
    counts: dict[str, int] = {}
    for record in records:
        counts[record.workspace] = counts.get(record.workspace, 0) + 1
    # Made before the counters are read: in the apply's pipeline the server is still writing
    # the profiles meanwhile (reading the counters waits for it).
    workspaces = [r.workspace for r in records]
    contact_ids = [r.contact_id for r in records]
    event_ids = [r.event_id for r in records]
    bodies = [encode_body(r.body) for r in records]
    # Binary arrays (%b): as text, psycopg spelled out every body in hex, a tenth of the
    # apply's CPU on G's batches.
    cur = await conn.execute(
        "INSERT INTO change_positions AS p (workspace, last)"
        " SELECT w, n FROM unnest(%b::text[], %b::bigint[]) AS u(w, n) ORDER BY w"
        " ON CONFLICT (workspace) DO UPDATE SET last = p.last + excluded.last"
        " RETURNING workspace, last",
        _columns(sorted(counts.items()), 2),
    )
    following = {w: last - counts[w] for w, last in await cur.fetchall()}
    positions = []
    for workspace in workspaces:
        following[workspace] += 1
        positions.append(following[workspace])
    await conn.execute(
        "INSERT INTO changes (workspace, position, contact_id, event_id, applied_us, body)"
        " SELECT w, p, c, e, %s, b FROM unnest(%b::text[], %b::bigint[], %b::text[],"
        " %b::text[], %b::bytea[]) AS u(w, p, c, e, b)",
        (
            applied_us,
            *map(pg_arrays.array, (workspaces, positions, contact_ids, event_ids, bodies)),
        ),
    )


def _position(cursor: str | None) -> int:
    """A cursor of this store (a change's decimal position) as a number; None: 0. Raises
    ``InvalidCursor``."""
    if cursor is None:
        return 0
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise InvalidCursor("not a cursor of this feed")
    return int(cursor)


async def _read_changes(conn: Conn, workspace: str, after: str | None, limit: int) -> list[Change]:
    start = _position(after)
    if after is not None:
        cur = await conn.execute(
            "SELECT upto FROM changes_purged WHERE workspace = %s", (workspace,)
        )
        purged = await cur.fetchone()
        if purged is not None and start < purged[0]:
            raise CursorExpired()
    cur = await conn.execute(
        "SELECT position, contact_id, event_id, applied_us, body FROM changes"
        " WHERE workspace = %s AND position > %s ORDER BY position LIMIT %s",
        (workspace, start, limit),
    )
    found = []
    for position, contact_id, event_id, applied_us, body in await cur.fetchall():
        cursor = str(position)
        found.append(
            Change(
                change_id(cursor),
                cursor,
                workspace,
                contact_id,
                event_id,
                applied_us,
                decode_body(bytes(body)),
            )
        )
    return found


async def _feed_end(conn: Conn, workspace: str) -> str | None:
    """The workspace's counter as last committed (never lowered by a purge or an erasure). An
    apply holds the counter's row locked from taking its positions to its commit, so one not
    yet committed when this reads took positions past what it sees: its changes are after the
    end this answers, none is missed."""
    cur = await conn.execute("SELECT last FROM change_positions WHERE workspace = %s", (workspace,))
    row = await cur.fetchone()
    return str(row[0]) if row is not None else None


async def _purge_changes(conn: Conn, before_us: int, limit: int) -> int:
    """The oldest changes applied before ``before_us`` go, and each workspace's purge mark
    moves past them (several purgers at once take different rows)."""
    cur = await conn.execute(
        "DELETE FROM changes WHERE (workspace, position) IN (SELECT workspace, position"
        " FROM changes WHERE applied_us < %s ORDER BY applied_us LIMIT %s"
        " FOR UPDATE SKIP LOCKED) RETURNING workspace, position",
        (before_us, limit),
    )
    rows = await cur.fetchall()
    newest: dict[str, int] = {}
    for workspace, position in rows:
        newest[workspace] = max(newest.get(workspace, 0), position)
    if newest:
        await conn.execute(
            "INSERT INTO changes_purged AS p (workspace, upto)"
            " SELECT w, n FROM unnest(%s::text[], %s::bigint[]) AS u(w, n) ORDER BY w"
            " ON CONFLICT (workspace) DO UPDATE SET upto = GREATEST(p.upto, excluded.upto)",
            _columns(sorted(newest.items()), 2),
        )
    return len(rows)


def _state(row: Sequence[Any]) -> ContactState:
    """A contact's versions as ``select_contacts`` reads them (its properties come apart)."""
    last_ts, last_id, deleted_ts, deleted_id, ops_ts, ops_id, marks = row
    ops_upto = None if ops_ts is None else (ops_ts, ops_id)
    return ContactState(
        None if last_ts is None else (last_ts, last_id),
        None if deleted_ts is None else (deleted_ts, deleted_id),
        ops_upto=ops_upto,
        marks=decode_marks(None if marks is None else bytes(marks), ops_upto),
    )


def _nullable(version: Version | None) -> tuple[int | None, str | None]:
    return (None, None) if version is None else version


async def _histories(
    conn: Conn, keys: list[tuple[str, str]], batch: Sequence[Event]
) -> dict[tuple[str, str], tuple[ContactState, list[Event]]]:
    """Per contact, its snapshot and its applied events but the batch's (recorded already in
    this transaction): what its late events' properties are recomputed from. (A contact none
    of whose events has an operation recomputes nothing: its snapshot is not read.)"""
    new = {(e.workspace, e.event_id) for e in batch}
    # A purge moves events from the history into the snapshots: not while they are read.
    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (PURGE_LOCK_ID,))
    found: dict[tuple[str, str], tuple[ContactState, list[Event]]] = {
        key: (ContactState(), []) for key in keys
    }
    cur = await conn.execute(
        "SELECT e.workspace, e.contact_id, e.event_id, e.body FROM events e"
        " JOIN unnest(%b::text[], %b::text[]) AS u(w, c)"
        f" ON e.workspace = u.w AND e.contact_id = u.c WHERE e.{_APPLIED}",
        _columns(keys, 2),
    )
    for workspace, contact_id, event_id, body in await cur.fetchall():
        if (workspace, event_id) not in new:
            found[(workspace, contact_id)][1].append(decode_event(bytes(body)))
    operating = {(e.workspace, e.contact_id) for e in batch if e.ops}
    operating.update(key for key, (_, history) in found.items() if any(e.ops for e in history))
    wanted = [key for key in keys if key in operating]
    if not wanted:
        return found
    cur = await conn.execute(_SNAPSHOTS.select_contacts, _columns(wanted, 2))
    for row in await cur.fetchall():
        found[(row[0], row[1])] = (_state(row[2:]), found[(row[0], row[1])][1])
    cur = await conn.execute(_SNAPSHOTS.select_all_properties, _columns(wanted, 2))
    for workspace, contact_id, name, value, ts_us, event_id in await cur.fetchall():
        state = found[(workspace, contact_id)][0]
        state.versions[name] = (ts_us, event_id)
        state.values[name] = None if value is None else msgspec.json.decode(value)
    return found


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[Any]:
    """The rows' columns, as arrays for ``%b::type[]`` (stores/pg_arrays.py)."""
    return pg_arrays.columns(rows, width)


class _FoldSql(msgspec.Struct, frozen=True):
    """The statements that read and write a pair of tables of contacts and their properties:
    the profiles, or the snapshots of what retention purged."""

    lock: str
    lock_contacts: str
    select_contacts: str
    select_properties: str
    select_all_properties: str
    upsert_contacts: str
    delete_covered: str
    delete_properties: str
    upsert_properties: str

    @classmethod
    def on(cls, contacts: str, properties: str) -> _FoldSql:
        def named(statement: str) -> str:
            return statement.replace("{contacts}", contacts).replace("{properties}", properties)

        return cls(
            *(
                named(statement)
                for statement in (
                    _LOCK,
                    _LOCK_CONTACTS,
                    _SELECT_CONTACTS,
                    _SELECT_PROPERTIES,
                    _SELECT_ALL_PROPERTIES,
                    _UPSERT_CONTACTS,
                    _DELETE_COVERED,
                    _DELETE_PROPERTIES,
                    _UPSERT_PROPERTIES,
                )
            )
        )


_LOCK = "LOCK TABLE {contacts}, {properties} IN ROW EXCLUSIVE MODE"
# One transaction lock per contact (and table), taken in the order of their keys.
_LOCK_CONTACTS = """
SELECT pg_advisory_xact_lock(k) FROM (
    SELECT DISTINCT hashtextextended('{contacts}' || chr(31) || w || chr(31) || c, 0) AS k
    FROM unnest(%b::text[], %b::text[]) AS u(w, c) ORDER BY k
) AS l
"""
# Each key looked up in the primary key (LATERAL ... LIMIT 1: a row at most, and the planner
# cannot turn it into a join). As a join, PostgreSQL hashed the whole table whenever it was
# small next to the batch (its random_page_cost prices a lookup of a cached page as a read):
# on G's tables of 50,000 properties, 26 ms for the properties against 11 by their key.
_SELECT_CONTACTS = """
SELECT k.workspace, k.contact_id, k.last_ts_us, k.last_event_id, k.deleted_ts_us,
    k.deleted_event_id, k.ops_ts_us, k.ops_event_id, k.marks
FROM unnest(%b::text[], %b::text[]) AS u(w, c) CROSS JOIN LATERAL (
    SELECT * FROM {contacts} k WHERE k.workspace = u.w AND k.contact_id = u.c LIMIT 1
) AS k
"""
# Per (workspace, contact_id, name): that property (an equality on the whole primary key:
# an OR here made PostgreSQL read every property of the contacts and filter them).
_SELECT_PROPERTIES = """
SELECT p.workspace, p.contact_id, p.name, p.value::text, p.ts_us, p.event_id
FROM unnest(%b::text[], %b::text[], %b::text[]) AS u(w, c, n) CROSS JOIN LATERAL (
    SELECT * FROM {properties} p
    WHERE p.workspace = u.w AND p.contact_id = u.c AND p.name = u.n LIMIT 1
) AS p
"""
# Per (workspace, contact_id): every property.
_SELECT_ALL_PROPERTIES = """
SELECT p.workspace, p.contact_id, p.name, p.value::text, p.ts_us, p.event_id
FROM {properties} p JOIN unnest(%b::text[], %b::text[]) AS u(w, c)
    ON p.workspace = u.w AND p.contact_id = u.c
"""
_UPSERT_CONTACTS = """
INSERT INTO {contacts} AS c (workspace, contact_id, last_ts_us, last_event_id, deleted_ts_us,
    deleted_event_id, ops_ts_us, ops_event_id, marks)
SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::bigint[], %b::text[],
    %b::bigint[], %b::text[], %b::bytea[])
ON CONFLICT (workspace, contact_id) DO UPDATE SET
    last_ts_us = excluded.last_ts_us, last_event_id = excluded.last_event_id,
    deleted_ts_us = excluded.deleted_ts_us, deleted_event_id = excluded.deleted_event_id,
    ops_ts_us = excluded.ops_ts_us, ops_event_id = excluded.ops_event_id, marks = excluded.marks
"""

_DELETE_COVERED = """
DELETE FROM {properties} p
USING unnest(%b::text[], %b::text[], %b::bigint[], %b::text[]) AS d(w, c, t, e)
WHERE p.workspace = d.w AND p.contact_id = d.c AND (p.ts_us, p.event_id COLLATE "C") <= (d.t, d.e)
"""
_DELETE_PROPERTIES = """
DELETE FROM {properties} p USING unnest(%b::text[], %b::text[], %b::text[]) AS d(w, c, n)
WHERE p.workspace = d.w AND p.contact_id = d.c AND p.name = d.n
"""
_UPSERT_PROPERTIES = """
INSERT INTO {properties} AS p (workspace, contact_id, name, value, ts_us, event_id)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::json[], %b::bigint[], %b::text[])
ON CONFLICT (workspace, contact_id, name) DO UPDATE SET
    value = excluded.value, ts_us = excluded.ts_us, event_id = excluded.event_id
"""


_PROFILES = _FoldSql.on("contacts", "properties")
_SNAPSHOTS = _FoldSql.on("snapshot_contacts", "snapshot_properties")

_VERSION_COLUMNS = "last_ts_us, last_event_id, deleted_ts_us, deleted_event_id"
_PROPERTY_COLUMNS = "name, value::text, ts_us, event_id"  # the text, decoded by msgspec


_CONTACT_SELECT = (
    "SELECT c.last_ts_us, c.last_event_id, c.deleted_ts_us, c.deleted_event_id,"
    " p.name, p.value::text, p.ts_us, p.event_id"
    " FROM contacts c LEFT JOIN properties p ON p.workspace = c.workspace"
    " AND p.contact_id = c.contact_id AND p.value IS NOT NULL"
    " WHERE c.workspace = %s AND c.contact_id = %s ORDER BY p.name"
)


async def _contact(conn: Conn, workspace: str, contact_id: str) -> Contact | None:
    # One statement, one round trip (a read's hot path): the contact's row, once per live
    # property (once with NULLs when it has none).
    cur = await conn.execute(_CONTACT_SELECT, (workspace, contact_id))
    rows = await cur.fetchall()
    last = _last_if_exists(rows[0][:4]) if rows else None
    if last is None:
        return None
    return _contact_of(contact_id, last, [row[4:] for row in rows if row[4] is not None])


def _last_if_exists(versions: Sequence[Any]) -> Version | None:
    """A contacts row's last update (its ``_VERSION_COLUMNS``), if the contact exists."""
    last_ts, last_id, deleted_ts, deleted_id = versions
    last = None if last_ts is None else (last_ts, last_id)
    deleted = None if deleted_ts is None else (deleted_ts, deleted_id)
    return last if last is not None and contact_exists(last, deleted) else None


def _contact_of(contact_id: str, last: Version, props: Sequence[Sequence[Any]]) -> Contact:
    """A contact from its last update and its live properties (``_PROPERTY_COLUMNS``, by name)."""
    return Contact(
        contact_id=contact_id,
        properties={name: msgspec.json.decode(value) for name, value, _, _ in props},
        versions={name: (ts_us, event_id) for name, _, ts_us, event_id in props},
        updated_us=last[0],
    )


_APPLIED = "status IN ('applied', 'duplicate')"  # the events that were applied


async def _rebuild(conn: Conn, progress: Progress | None, *, from_snapshots: bool = True) -> int:
    """The profiles again: the snapshots, then every applied event. (Locking the snapshots
    too: a purge that moved events into them between two of these statements would make them
    count twice or not at all.)"""
    tables = "contacts, properties"
    if from_snapshots:
        tables += ", snapshot_contacts, snapshot_properties"
    await conn.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
    await conn.execute("DELETE FROM properties")
    await conn.execute("DELETE FROM contacts")
    if from_snapshots:
        columns = f"{_VERSION_COLUMNS}, ops_ts_us, ops_event_id, marks"
        await conn.execute(
            f"INSERT INTO contacts (workspace, contact_id, {columns})"
            f" SELECT workspace, contact_id, {columns} FROM snapshot_contacts"
        )
        await conn.execute(
            "INSERT INTO properties (workspace, contact_id, name, value, ts_us, event_id)"
            " SELECT workspace, contact_id, name, value, ts_us, event_id FROM snapshot_properties"
        )
    cur = await conn.execute(f"SELECT COUNT(*) FROM events WHERE {_APPLIED}")
    total = int((await cur.fetchone() or (0,))[0])
    done = 0
    if progress is not None:
        progress(0, total)
    # Contact by contact (a contact's events all in one batch, in version order): a late
    # event's property is then recomputed from the snapshot through all of them.
    pending: list[Event] = []
    async with conn.cursor(name="rebuild") as events:
        await events.execute(
            f"SELECT body FROM events WHERE {_APPLIED}"
            ' ORDER BY workspace, contact_id COLLATE "C", ts_us, event_id COLLATE "C"'
        )
        while chunk := await events.fetchmany(REBUILD_CHUNK_EVENTS):
            for (body,) in chunk:
                event = decode_event(bytes(body))
                last = pending[-1] if pending else None
                if (
                    last is not None
                    and (last.workspace, last.contact_id) != (event.workspace, event.contact_id)
                    and len(pending) >= REBUILD_CHUNK_EVENTS
                ):
                    await _apply_profiles(conn, pending, base="snapshot")
                    done += len(pending)
                    pending = []
                    if progress is not None:
                        progress(done, total)
                pending.append(event)
    await _apply_profiles(conn, pending, base="snapshot")
    done += len(pending)
    await postgres_segments.restart_all(conn)  # filled again by the backfill
    if progress is not None:
        progress(done, total)
    return done


async def _purge(conn: Conn, before_us: int, limit: int) -> int:
    """Forget the oldest events before ``before_us``, the applied ones folded into snapshots.
    SKIP LOCKED: processes purging at once take different events, and never wait for one
    another's (an applier's insert of an event being purged waits for the purge's commit)."""
    # One purge at a time folds into the snapshots: each folds the oldest events left, so a
    # contact's snapshot gets its events in version order (as the operations need).
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PURGE_LOCK_ID,))
    cur = await conn.execute(
        "SELECT workspace, event_id, status, body, ts_us FROM events WHERE ts_us < %s"
        ' ORDER BY ts_us, event_id COLLATE "C" LIMIT %s FOR UPDATE SKIP LOCKED',
        (before_us, limit),
    )
    rows = await cur.fetchall()
    if not rows:
        return 0
    await conn.execute(
        "INSERT INTO history_purged (id, upto_us) VALUES (1, %s) ON CONFLICT (id)"
        " DO UPDATE SET upto_us = greatest(history_purged.upto_us, excluded.upto_us)",
        (max(row[4] for row in rows),),
    )
    applied = [decode_event(bytes(row[3])) for row in rows if row[2] in _APPLIED_SET]
    await _apply_profiles(conn, applied, _SNAPSHOTS, base=None)
    await conn.execute(
        "DELETE FROM events e USING unnest(%b::text[], %b::text[]) AS d(w, i)"
        " WHERE e.workspace = d.w AND e.event_id = d.i",
        ([row[0] for row in rows], [row[1] for row in rows]),
    )
    return len(rows)


_APPLIED_SET = ("applied", "duplicate")
