"""One SQLite database file behind one writer thread, with group commit.

Concurrent ``write`` calls that arrive while a commit is in progress are run together in the
next transaction and share its fsync: this is what makes ``synchronous=FULL`` cheap. Every
``sqlite3`` error is translated to ``StorageUnavailable`` here; none escapes.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from profilehook import sqlite_shm
from profilehook.errors import ConfigurationError, StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_JOBS_PER_COMMIT = 4_096
MAX_ROWS_PER_STATEMENT = 256  # multi-row inserts; each distinct row count is prepared once
MAX_RECORDS_PER_ROW = 2_000  # appends joined in one row
BUSY_TIMEOUT_MS = 5_000
# The WAL size at which the writer's commits checkpoint (10,000 pages of SQLite's default 4 KiB;
# SQLite counts it in pages). SQLite's default (1,000 pages) made the applier's store checkpoint
# every few commits, rewriting the same index pages each time.
CHECKPOINT_WAL_BYTES = 10_000 * 4_096
# With ``background_checkpoints``: how often the checkpointer thread copies the WAL into the
# file while commits arrive. The writer keeps SQLite's own checkpoint at CHECKPOINT_WAL_BYTES: by
# then the thread has copied all but the last few milliseconds, so it is short, and only a
# checkpoint between two commits lets the next one restart the WAL from its beginning (with the
# thread's alone, commits always outran it and the WAL grew to whatever limit there was).
BACKGROUND_CHECKPOINT_INTERVAL_S = 0.01
CHECKPOINT_WARNING_INTERVAL_S = 60.0
# A WAL that grew larger (a long reader kept it from restarting) is cut back to this on restart.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
SCRUB_TIMEOUT_S = 10.0  # ``scrub`` waits this long at most for readers to let the WAL go


class Later(enum.Enum):
    """``read_at_once``'s answer when the read would have to wait: run it with ``read``."""

    LATER = "later"


LATER = Later.LATER


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any] | None
    future: asyncio.Future[Any]
    sql: str = ""  # with ``chunks``: an append that joins its neighbours' in one row
    chunks: list[tuple[int, bytes]] | None = None  # (records, their bytes one after the other)
    alone: bool = False  # run outside any transaction (a checkpoint, VACUUM), by itself


def connect(
    path: Path,
    synchronous: str = "FULL",
    secure_delete: str | None = None,
    page_size: int | None = None,
) -> sqlite3.Connection:
    """A connection with the pragmas every profilehook database uses; ``secure_delete``
    (``ON`` or ``FAST``): deleted content is overwritten (see ``SqliteDatabase``);
    ``page_size``: the page size of the file if this connection creates it (an existing file
    keeps its own)."""
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=2 * MAX_ROWS_PER_STATEMENT,
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if page_size is not None:  # (before the first write: journal_mode makes the file)
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if secure_delete is not None:
            conn.execute(f"PRAGMA secure_delete={secure_delete}")
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"Cannot open {path}: {exc}") from exc
    return conn


class SqliteDatabase:
    """A database file, its schema, one writer thread and one reader thread."""

    def __init__(
        self,
        path: Path,
        schema: str,
        version: int,
        synchronous: str = "FULL",
        migrations: Mapping[int, Callable[[sqlite3.Connection], None]] | None = None,
        after_commit: Callable[[], None] | None = None,
        cache_kib: int | None = None,
        background_checkpoints: bool = False,
        secure_delete: str | None = None,
        watch_commits: bool = False,
        page_size: int | None = None,
    ):
        """``version`` of ``schema`` is kept in the file (``PRAGMA user_version``). A file of an
        older version is brought up to date at ``open`` by ``migrations[v]`` (``v`` -> ``v + 1``,
        in the transaction that creates the schema); any other is refused with a clear error
        rather than misread. ``after_commit`` runs on the event loop after each commit;
        ``cache_kib`` sizes the writer's page cache (None: SQLite's 2 MiB).
        ``background_checkpoints``: a thread of its own copies the WAL into the file as commits
        arrive, so that SQLite's own checkpoint, which runs inside the commit that crosses
        ``CHECKPOINT_WAL_BYTES`` while later commits wait, has little left to copy.
        ``synchronous="NORMAL"``: commits are not fsynced (still safe against a killed
        process); ``fsync_wal`` then makes all of them durable at once. ``secure_delete``: the
        writer overwrites what it deletes with zeros (``ON``; ``FAST``: only within the b-tree
        pages it writes anyway, not in pages it frees), so an erasure leaves no bytes behind.
        ``watch_commits``: ``commit_mark`` reads the file's WAL-index header (sqlite_shm.py).
        ``page_size``: of a file this creates (None: SQLite's 4 KiB); a file keeps the page size
        it was made with."""
        self.path = path
        self._schema = schema
        self._version = version
        self._synchronous = synchronous
        self._migrations = dict(migrations or {})
        self._secure_delete = secure_delete
        self._after_commit = after_commit
        self._cache_kib = cache_kib
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-read-{path.name}")
        self._reader_conn: sqlite3.Connection | None = None
        self._local_conn: sqlite3.Connection | None = None
        self._quick_conn: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._committed = threading.Event() if background_checkpoints else None
        self._closing = threading.Event()
        self._watch_commits = watch_commits
        self._page_size = page_size
        self._wal_index: sqlite_shm.WalIndex | None = None

    async def open(self) -> None:
        """Create the file and schema, start the writer. Raises ``StorageUnavailable``."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"Cannot create the directory {self.path.parent}: {exc.strerror or exc}"
            ) from exc
        self._loop = asyncio.get_running_loop()
        conn = connect(self.path, self._synchronous, self._secure_delete, self._page_size)
        checkpointing: sqlite3.Connection | None = None
        try:
            if self._cache_kib is not None:
                conn.execute(f"PRAGMA cache_size=-{self._cache_kib}")
            pages = CHECKPOINT_WAL_BYTES // conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            self._create_schema(conn)
            if self._committed is not None:
                checkpointing = connect(self.path, self._synchronous, self._secure_delete)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StorageUnavailable(f"Cannot create schema in {self.path}: {exc}") from exc
            raise
        self._closing.clear()
        if checkpointing is not None and self._committed is not None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop,
                args=(checkpointing, self._committed),
                name=f"sqlite-checkpoint-{self.path.name}",
                daemon=True,
            )
            try:
                self._checkpointer.start()
            except BaseException:
                self._checkpointer = None
                checkpointing.close()
                conn.close()
                raise
        self._writer = threading.Thread(
            target=self._write_loop,
            args=(conn,),
            name=f"sqlite-write-{self.path.name}",
            daemon=True,
        )
        self._writer.start()
        if self._watch_commits:
            # The writer's connection is open (until ``close``): the index exists and stays.
            self._wal_index = sqlite_shm.acquire(self.path)

    def commit_mark(self) -> bytes | None:
        """Bytes that differ after any commit to the file, by any connection of any process (and
        sometimes without one: a checkpoint that resets the WAL); a memory read, no statement.
        None when not watched (``watch_commits``) or the index cannot be read: then ask
        ``PRAGMA data_version``."""
        index = self._wal_index
        return None if index is None else index.header()

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """Create the schema in a new file; check the version of an existing one."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            empty = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
            # Files written before versions were kept carry no stamp: they are version 1.
            found = int(conn.execute("PRAGMA user_version").fetchone()[0]) or 1
            if not empty:
                found = self._migrate(conn, found)
            if found != self._version and not empty:
                raise ConfigurationError(
                    f"{self.path} holds data in the format of another profilehook version "
                    f"(schema {found}; this one reads {self._version}) and there is no "
                    "migration between them yet. Keep this data directory for the version that "
                    "wrote it, or move this file aside (with its -wal and -shm files) and start "
                    "again: keys and sources live in profiles.catalog.sqlite3, which stays; "
                    "events still waiting in an old log.sqlite3 are applied only by the version "
                    "that wrote it (its `profilehook check` shows how many wait)."
                )
            for statement in _statements(self._schema):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {self._version}")
            conn.execute("COMMIT")
        finally:
            _rollback(conn)

    def _migrate(self, conn: sqlite3.Connection, found: int) -> int:
        """Run the migrations from ``found`` on, in the caller's transaction; the version
        reached."""
        while found < self._version and found in self._migrations:
            log.warning("%s: migrating schema %d to %d", self.path.name, found, found + 1)
            self._migrations[found](conn)
            found += 1
        return found

    async def close(self) -> None:
        if self._writer is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._checkpointer is not None and self._committed is not None:
            self._closing.set()
            self._committed.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        self._reader.shutdown(wait=True)
        for conn in (self._reader_conn, self._local_conn, self._quick_conn):
            if conn is not None:
                conn.close()
        self._reader_conn = self._local_conn = self._quick_conn = None
        if self._wal_index is not None:
            # Only now that this database's connections are closed: closing the descriptor
            # drops the process's locks on the file (sqlite_shm.py).
            index, self._wal_index = self._wal_index, None
            sqlite_shm.release(index)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` inside a transaction that is committed (fsynced) before returning."""
        if self._writer is None or self._loop is None:
            raise StorageUnavailable(f"{self.path.name} is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(fn, future))
        return await future

    def append(self, sql: str, chunks: list[tuple[int, bytes]]) -> asyncio.Future[None]:
        """Store records given as chunks ``(count, their bytes one after the other)`` of at
        most ``MAX_RECORDS_PER_ROW`` records each; the future completes once they are
        committed: ``sql`` runs with the parameters ``(count, concatenated records)`` for each
        row, of whole chunks, up to ``MAX_RECORDS_PER_ROW`` records. Appends with the same
        statement that arrive together share rows as well as the commit: this is the ingest
        hot path (hence a future to await, not a coroutine). Raises ``StorageUnavailable`` when
        the database is not open."""
        if self._writer is None or self._loop is None:
            raise StorageUnavailable(f"{self.path.name} is not open")
        future: asyncio.Future[None] = self._loop.create_future()
        self._jobs.put(_Job(None, future, sql, chunks))
        return future

    async def write_alone(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the writer's connection outside any transaction, between two
        commits: for what a transaction cannot hold (``wal_checkpoint``, ``VACUUM``)."""
        if self._writer is None or self._loop is None:
            raise StorageUnavailable(f"{self.path.name} is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(_Job(fn, future, alone=True))
        return await future

    async def scrub(self, clean: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Leave no byte of deleted content in the files: copy the file into a new one
        (``VACUUM``), then ``clean(conn)``, both outside any transaction; then copy the WAL into
        the file and truncate it to zero bytes (``wal_checkpoint(TRUNCATE)``, retried while
        other connections read). Raises ``StorageUnavailable`` when readers kept the WAL from
        being emptied for ``SCRUB_TIMEOUT_S``.

        ``secure_delete=ON`` is not enough: it zeroes what is deleted and the pages freed, but
        when SQLite's b-tree rebuilds a page to move cells to a sibling (a balance), the moved
        cells' old bytes stay in the page's unused gap, and deleting the live copy later does
        not reach them (tests/test_log_scrub.py, tests/test_store_scrub.py). The copy takes a
        time that grows with the file, and every write waits for it."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("VACUUM")
            if clean is not None:
                clean(conn)
            deadline = time.monotonic() + SCRUB_TIMEOUT_S
            while True:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                if time.monotonic() > deadline:
                    raise StorageUnavailable(
                        f"{self.path.name}: readers kept the WAL from being emptied, retry later"
                    )
                time.sleep(0.01)

        await self.write_alone(run)

    async def fsync_wal(self) -> None:
        """Make every commit so far survive a power loss (WAL mode: one fsync of the log file)."""

        def flush(conn: sqlite3.Connection) -> None:
            try:
                fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            except FileNotFoundError:
                return  # nothing written since the last checkpoint, which fsyncs
            except OSError as exc:
                raise StorageUnavailable(f"Cannot open the WAL of {self.path.name}: {exc}") from exc
            try:
                os.fsync(fd)
            except OSError as exc:
                raise StorageUnavailable(f"fsync of {self.path.name} failed: {exc}") from exc
            finally:
                os.close(fd)

        await self.write(flush)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the reader thread (a consistent WAL snapshot per call)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._run_read, fn)

    async def read_quick(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a short read (a lookup by key) on the calling thread, the event loop, when it can
        run at once; else on the reader thread, as ``read``. Raises ``StorageUnavailable``.

        A lookup takes tens of microseconds. Handed to the reader thread it costs more than
        that, and while the event loop is busy the reader waits for the GIL (up to the switch
        interval, 5 ms) at each step: one reader served a sixth of what the HTTP server could
        (benchmarks/README.md, The read path)."""
        found = self.read_at_once(fn)
        return await self.read(fn) if found is LATER else found

    def read_at_once(self, fn: Callable[[sqlite3.Connection], T]) -> T | Later:
        """``fn(conn)`` on the calling thread if it needs no lock that is held, else ``LATER``
        (for ``read``, which waits). The connection waits for nothing (busy timeout 0): a read
        that would wait (a checkpoint restarting the WAL, a recovery) must not hold the event
        loop. Raises ``StorageUnavailable``."""
        conn = self._quick_conn
        try:
            if conn is None:
                conn = connect(self.path)
                conn.execute("PRAGMA busy_timeout=0")
                self._quick_conn = conn
            return fn(conn)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise _translate(exc, self.path) from exc
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        return LATER

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read of a few microseconds on the calling thread (the event loop)."""
        if self._local_conn is None:
            self._local_conn = connect(self.path)
        return _translated(fn, self._local_conn, self.path)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_conn is None:
            self._reader_conn = connect(self.path)
        return _translated(fn, self._reader_conn, self.path)

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                batch = [job]
                stop = False
                alone: _Job | None = None
                while len(batch) < MAX_JOBS_PER_COMMIT and not job.alone:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    if more.alone:
                        alone = more  # after this batch's commit
                        break
                    batch.append(more)
                for jobs in (batch, [alone] if alone is not None else []):
                    if not jobs:
                        continue
                    outcomes = self._run_alone(conn, jobs[0]) if jobs[0].alone else None
                    if outcomes is None:
                        outcomes = self._commit(conn, jobs)
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(_settle, outcomes, self._after_commit)
                    if self._committed is not None:
                        self._committed.set()
                if stop:
                    return
        finally:
            conn.close()

    def _checkpoint_loop(self, conn: sqlite3.Connection, committed: threading.Event) -> None:
        """Copy the WAL into the file after commits, at most every
        ``BACKGROUND_CHECKPOINT_INTERVAL_S``. PASSIVE: it never blocks the writer, who goes on
        appending to the WAL meanwhile. A failure is retried after the next commit and reported
        at most once a minute; the writer's own checkpoint keeps the WAL bounded meanwhile."""
        warned_at = float("-inf")  # when a failure was last reported
        recovery_to_report = False
        try:
            while True:
                committed.wait()
                if self._closing.is_set():
                    return
                committed.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    now = time.monotonic()
                    if now - warned_at >= CHECKPOINT_WARNING_INTERVAL_S:
                        log.warning("checkpoints of %s fail (retried): %s", self.path.name, exc)
                        warned_at, recovery_to_report = now, True
                else:
                    if recovery_to_report:
                        log.warning("checkpoints of %s work again", self.path.name)
                        recovery_to_report = False
                if self._closing.wait(BACKGROUND_CHECKPOINT_INTERVAL_S):
                    return
        finally:
            conn.close()

    def _run_alone(
        self, conn: sqlite3.Connection, job: _Job
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        assert job.fn is not None
        try:
            return [(job.future, job.fn(conn), None)]
        except BaseException as exc:
            _rollback(conn)
            return [(job.future, None, _translate(exc, self.path))]

    def _commit(
        self, conn: sqlite3.Connection, batch: list[_Job]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        try:
            if (rows := _single_row(batch)) is not None:
                # One statement outside a transaction commits by itself: one SQLite step, so
                # this thread takes the GIL back once, not once each for BEGIN, it and COMMIT.
                conn.execute(batch[0].sql, rows)
                results: list[Any] = [None] * len(batch)
            else:
                conn.execute("BEGIN IMMEDIATE")
                results = _run_jobs(conn, batch)
                conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            if len(batch) > 1:
                # One job's failure must not fail its neighbours: retry each on its own.
                return [o for job in batch for o in self._commit(conn, [job])]
            return [(batch[0].future, None, _translate(exc, self.path))]
        return [(job.future, result, None) for job, result in zip(batch, results, strict=True)]


def _statements(script: str) -> list[str]:
    """The statements of an SQL script (``executescript`` would commit our transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer)
            buffer = ""
    return statements


def _single_row(batch: list[_Job]) -> tuple[int, bytes] | None:
    """The row parameters when the whole batch is appends with one statement that fit one row."""
    sql, count = batch[0].sql, 0
    for job in batch:
        if job.chunks is None or job.sql != sql:
            return None
        for records, _ in job.chunks:
            count += records
    if count > MAX_RECORDS_PER_ROW:
        return None
    return count, b"".join([data for job in batch for _, data in job.chunks or ()])


def _run_jobs(conn: sqlite3.Connection, batch: list[_Job]) -> list[Any]:
    """Each job's result, in order; runs of appends of one statement share rows (of whole
    chunks, up to ``MAX_RECORDS_PER_ROW`` records)."""
    results: list[Any] = []
    pending: list[bytes] = []
    count = 0
    for i, job in enumerate(batch):
        if job.chunks is None:
            assert job.fn is not None
            results.append(job.fn(conn))
            continue
        for records, data in job.chunks:
            if count + records > MAX_RECORDS_PER_ROW and pending:
                conn.execute(job.sql, (count, b"".join(pending)))
                pending, count = [], 0
            pending.append(data)
            count += records
        results.append(None)
        following = batch[i + 1] if i + 1 < len(batch) else None
        if following is None or following.chunks is None or following.sql != job.sql:
            if pending:
                conn.execute(job.sql, (count, b"".join(pending)))
            pending, count = [], 0
    return results


_flatten = itertools.chain.from_iterable  # (a quarter of a list comprehension's CPU)


def insert_rows(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``conn.executemany(sql, rows)`` for an ``INSERT … VALUES (?, …)``, in multi-row statements.

    executemany runs one SQLite step per row, and Python's sqlite3 releases and retakes the GIL
    around each: with the event loop holding the GIL, every retake waits for it, so a commit of
    a hundred events stalled ingestion a hundred times. One statement of many rows takes it once.
    """
    head, _, values = sql.rpartition("VALUES")
    for start in range(0, len(rows), MAX_ROWS_PER_STATEMENT):
        chunk = rows[start : start + MAX_ROWS_PER_STATEMENT]
        conn.execute(
            f"{head}VALUES {', '.join([values.strip()] * len(chunk))}",
            list(_flatten(chunk)),
        )


def _settle(
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
    after_commit: Callable[[], None] | None,
) -> None:
    if after_commit is not None:
        after_commit()
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("rollback failed")


def _translate(exc: BaseException, path: Path) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        log.error("SQLite error on %s: %s", path, exc)
        return StorageUnavailable(f"Storage unavailable ({path.name}: {exc}), retry later")
    if isinstance(exc, Exception):
        return exc  # a job's own error (ProfilehookError included) goes back unchanged
    # KeyboardInterrupt and the like, caught on the writer thread: report, don't re-raise there.
    return StorageUnavailable(f"Storage unavailable ({exc!r})")


def _translated(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection, path: Path) -> T:
    try:
        return fn(conn)
    except sqlite3.Error as exc:
        raise _translate(exc, path) from exc
