"""The SQLite catalog's cache of keys and sources against commits from anywhere: the WAL-index
header it reads on every lookup (sqlite_shm.py), the PRAGMA data_version fallback, and the
shared mapping's lifetime (SQLite's locks on the ``-shm`` file must never be dropped under it).

Where a test checks the header, the fallback's interval is set to an hour: only the header can
then make the cache see a change, and a mapping that never sees one fails the test.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from profilehook import sqlite_shm
from profilehook.api.app import create_app
from profilehook.settings import Settings
from profilehook.stores import sqlite as sqlite_store
from profilehook.stores.base import ApiKey
from profilehook.stores.sqlite import SqliteStore
from tests.support import create_key, run_cli

HOUR_S = 3600.0


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PRAGMA data_version`` asked once at the first lookup, then not for an hour."""
    monkeypatch.setattr(sqlite_store, "CATALOG_CHECK_INTERVAL_S", HOUR_S)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "profiles.sqlite3"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def catalog_of(path: Path) -> Path:
    return path.with_name(f"{path.stem}.catalog{path.suffix}")


def shm_of(path: Path) -> str:
    return os.path.realpath(f"{catalog_of(path)}-shm")


def other_connection(path: Path) -> sqlite3.Connection:
    """Another writer of the catalog, as the CLI would be (this process's SQLite shares the
    ``-shm`` file's descriptor among its connections, so closing this one is safe)."""
    conn = sqlite3.connect(catalog_of(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def header(store: SqliteStore) -> tuple[int, int, tuple[int, int]]:
    """(iChange, mxFrame, salts) of the catalog's WAL-index header, as the store reads it."""
    mark = store.catalog.commit_mark()
    assert mark is not None, "the catalog's WAL-index is not mapped"
    change, frames = struct.unpack_from("=I4xI", mark, 8)
    salts = struct.unpack_from("=II", mark, 32)
    return change, frames, (salts[0], salts[1])


def shm_locks(shm: Path) -> list[str]:
    """This process's POSIX locks on ``shm`` (/proc/locks, without its ordinal: type, pid,
    device:inode, byte range)."""
    inode = os.stat(shm).st_ino
    fields = [line.split()[1:] for line in Path("/proc/locks").read_text().splitlines()]
    return sorted(
        " ".join(f) for f in fields if f[3] == str(os.getpid()) and f[4].endswith(f":{inode}")
    )


def open_descriptors_of(target: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            # A deleted file's link ends in " (deleted)".
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(target)):
                found.append(fd)
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return found


def mappings_of(target: Path) -> list[str]:
    return [
        line for line in Path("/proc/self/maps").read_text().splitlines() if str(target) in line
    ]


# -- across processes ------------------------------------------------------------------------------


def send(client: TestClient, key: str, event_id: str) -> int:
    event = {
        "contact_id": "c1",
        "event_name": "update",
        "timestamp": 1,
        "event_id": event_id,
        "user_properties": {"a": 1},
    }
    response = client.post("/v1/properties", json=event, headers={"Authorization": f"Bearer {key}"})
    return response.status_code


def test_given_a_serving_app_when_the_cli_revokes_a_key_then_the_very_next_request_is_refused(
    tmp_path: Path, no_fallback: None
) -> None:
    """``keys revoke`` in a subprocess, while the app serves with the key cached: the next
    request is a 401, with the fallback check silenced (only the header can tell)."""
    revoked, kept = create_key(tmp_path), create_key(tmp_path)
    settings = Settings(data_dir=tmp_path, queue_url="memory://", rate_limit_per_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        store = client.app.services.store  # type: ignore[attr-defined]
        assert isinstance(store, SqliteStore) and store.catalog.commit_mark() is not None
        assert send(client, revoked["key"], "e1") == 202
        assert send(client, kept["key"], "e2") == 202

        result = run_cli(tmp_path, "keys", "revoke", revoked["key_id"])
        assert result.returncode == 0, result.stderr

        assert send(client, revoked["key"], "e3") == 401
        assert send(client, kept["key"], "e4") == 202


# -- the WAL-index header ----------------------------------------------------------------------------


async def test_given_a_checkpoint_and_a_wal_reset_then_the_mapping_still_sees_each_commit(
    store: SqliteStore, path: Path, no_fallback: None
) -> None:
    """A TRUNCATE checkpoint empties the WAL and the next commit starts it again with new salts.
    The test brings the WAL back to the very frame count it had when the answer was cached:
    a check of the frame count alone (mxFrame) would miss the revocation. The mapping made at
    ``open`` keeps seeing commits after the reset."""
    await store.add_key(ApiKey("k1", "acme", created_us=1), "hash-1")
    other = other_connection(path)
    try:

        def checkpoint() -> None:
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0

        def touch(times: int) -> None:  # one frame each: the row's page, no index
            for _ in range(times):
                other.execute("UPDATE api_keys SET created_us = created_us + 1")

        held = sqlite_shm.held()[shm_of(path)]
        checkpoint()
        touch(3)
        assert store.key_grant_at_once("hash-1") is not None  # cached now
        change, frames, salts = header(store)

        checkpoint()
        touch(2)
        other.execute("UPDATE api_keys SET revoked_us = 5 WHERE key_id = 'k1'")
        change_after, frames_after, salts_after = header(store)
        assert frames_after == frames, "the test did not bring the WAL back to its frame count"
        assert salts_after != salts and change_after != change
        assert store.key_grant_at_once("hash-1") is None

        other.execute("UPDATE api_keys SET revoked_us = NULL WHERE key_id = 'k1'")
        assert store.key_grant_at_once("hash-1") is not None
        assert sqlite_shm.held()[shm_of(path)] == held  # the same mapping, not made again
    finally:
        other.close()


async def test_given_another_writer_holding_the_catalog_locked_then_lookups_answer_at_once_and_see_its_commit_next(
    store: SqliteStore, path: Path, no_fallback: None
) -> None:
    """Another process holds the write lock with a revocation not yet committed: lookups answer
    at once from the cache (no statement, nothing waits) and from the last commit; the first
    lookup after its COMMIT sees the revocation."""
    await store.add_key(ApiKey("k1", "acme", created_us=1), "hash-1")
    await store.add_key(ApiKey("k2", "acme", created_us=2), "hash-2")
    assert store.key_grant_at_once("hash-1") is not None
    script = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"UPDATE api_keys SET revoked_us = 5 WHERE key_id = 'k1'\")\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
        "conn.execute('COMMIT')\n"
        "print('committed', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(catalog_of(path))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert store.key_grant_at_once("hash-1") is not None  # cached
        assert store.key_grant_at_once("hash-2") is not None  # read: the last commit's snapshot
        assert time.monotonic() - started < 1.0  # not a busy wait (5 s)

        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "committed"
        assert store.key_grant_at_once("hash-1") is None
        assert store.key_grant_at_once("hash-2") is not None
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()


# -- this process's own writes -------------------------------------------------------------------


@pytest.mark.parametrize("check", ["header", "data_version"])
async def test_given_a_lookup_while_the_stores_own_revocation_commits_then_the_next_lookup_sees_it(
    check: str, path: Path, no_fallback: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup that runs after the store's revocation was queued but before it committed reads
    the key as it still is, and caches it; the revocation's commit empties the cache, so the
    first lookup after ``revoke_key`` returns refuses the key (emptying it before the write, as
    the code did before, left the key cached)."""
    if check == "data_version":
        monkeypatch.setattr(sqlite_shm, "SUPPORTED", False)
    store = SqliteStore(path)
    await store.open()
    try:
        assert (store.catalog.commit_mark() is None) == (check == "data_version")
        await store.add_key(ApiKey("k1", "acme", created_us=1), "hash-1")
        assert store.key_grant_at_once("hash-1") is not None

        running, release = threading.Event(), threading.Event()
        blocker = asyncio.ensure_future(
            store.catalog.write(lambda conn: (running.set(), release.wait(10)))
        )
        assert await asyncio.to_thread(running.wait, 10)  # the writer is busy with it
        revoking = asyncio.ensure_future(store.revoke_key("k1", revoked_us=5))
        for _ in range(3):
            await asyncio.sleep(0)
        assert store.key_grant_at_once("hash-1") is not None  # not committed yet
        release.set()
        assert await revoking is True
        await blocker
        assert store.key_grant_at_once("hash-1") is None
    finally:
        await store.close()


# -- the fallback --------------------------------------------------------------------------------


async def test_given_no_wal_index_to_map_then_data_version_is_asked_at_most_once_a_millisecond(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the index cannot be mapped (here: as on another platform), ``PRAGMA data_version``
    tells: a commit from another connection is seen once a millisecond has passed, and a
    stream of lookups asks it at most once a millisecond."""
    monkeypatch.setattr(sqlite_shm, "SUPPORTED", False)
    store = SqliteStore(path)
    await store.open()
    other = other_connection(path)
    try:
        assert store.catalog.commit_mark() is None
        assert shm_of(path) not in sqlite_shm.held()
        await store.add_key(ApiKey("k1", "acme", created_us=1), "hash-1")
        asked = 0
        read_now = store.catalog.read_now

        def counting(fn):  # type: ignore[no-untyped-def]
            nonlocal asked
            asked += fn is sqlite_store._data_version
            return read_now(fn)

        monkeypatch.setattr(store.catalog, "read_now", counting)
        started = time.monotonic()
        for _ in range(5_000):
            assert store.key_grant_at_once("hash-1") is not None
        elapsed_ms = (time.monotonic() - started) * 1000
        assert 1 <= asked <= elapsed_ms + 1

        other.execute("UPDATE api_keys SET revoked_us = 5 WHERE key_id = 'k1'")
        await asyncio.sleep(2 * sqlite_store.CATALOG_CHECK_INTERVAL_S)
        assert store.key_grant_at_once("hash-1") is None
    finally:
        other.close()
        await store.close()


# -- the mapping's lifetime ------------------------------------------------------------------------


async def test_given_two_stores_on_one_file_then_they_share_one_mapping_and_sqlites_locks_survive_the_first_close(
    path: Path, no_fallback: None
) -> None:
    """Closing a descriptor of the ``-shm`` file drops every POSIX lock the process holds on
    it, SQLite's own (its shared "DMS" lock says the index is in use: without it another
    process may reset the index under our connections). The mapping's descriptors are
    therefore closed only when the last database on the file closes: while one is open, the
    lock stays and commits are still seen."""
    shm = Path(shm_of(path))
    first, second = SqliteStore(path), SqliteStore(path)
    await first.open()
    try:
        await second.open()
        await first.add_key(ApiKey("k1", "acme", created_us=1), "hash-1")
        assert sqlite_shm.held().get(str(shm)) == 2
        locks = shm_locks(shm)
        assert locks, "SQLite holds no lock on the -shm file: nothing to protect"
        assert second.key_grant_at_once("hash-1") is not None
    finally:
        await first.close()
    try:
        assert sqlite_shm.held().get(str(shm)) == 1
        assert shm_locks(shm) == locks
        other = other_connection(path)
        other.execute("UPDATE api_keys SET revoked_us = 5 WHERE key_id = 'k1'")
        other.close()
        assert shm_locks(shm) == locks
        assert second.key_grant_at_once("hash-1") is None
    finally:
        await second.close()
    assert str(shm) not in sqlite_shm.held()


async def test_given_stores_opened_and_closed_then_no_descriptor_or_mapping_of_the_index_is_left(
    path: Path,
) -> None:
    shm = Path(shm_of(path))
    for _ in range(3):
        stores = [SqliteStore(path), SqliteStore(path)]
        for store in stores:
            await store.open()
        assert stores[0].key_grant_at_once("hash-1") is None
        assert open_descriptors_of(shm) and mappings_of(shm)
        for store in stores:
            await store.close()
        assert open_descriptors_of(shm) == []
        assert mappings_of(shm) == []
        assert str(shm) not in sqlite_shm.held()
