"""A data directory holding N contacts, made fast and kept between runs.

Applying 1,000,000 contacts through the store runs at a few thousand contacts/s on a small
machine; this writes the store's own rows directly instead (the contacts table's msgpack groups,
encoded by the store's own encoder, and the searchable copy of the values in key order), in a
few seconds per 100,000 contacts. The result is cached under ``benchmarks/.cache/`` keyed by
the count and the store's schema version (a new schema makes a new file), and copied for each
run, which may then write to its copy. Both the made file and each copy are on the disk before
they are used, so a benchmark does not measure their write-back beside its server.

    .venv/bin/python benchmarks/contacts_loader.py 1000000     # make (or find) the cached copy
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
WORKSPACE = "bench"
CHUNK = 50_000
LOAD_TS_US = 1_672_531_200_000_000


def contact_id(i: int) -> str:
    return f"c{i:07d}"


def profile(rng: random.Random, i: int) -> dict[str, Any]:
    """Eight properties of each kind a profile holds (about 390 bytes as the API answers it)."""
    return {
        "plan": ("free", "pro", "team", "enterprise")[i % 4],
        "score": rng.randrange(1_000),
        "country": f"C{rng.randrange(50):02d}",
        "email": f"user{i}@example.com",
        "signed_up": 1_600_000_000 + rng.randrange(10**8),
        "active": bool(i % 3),
        "tags": [f"t{rng.randrange(8)}"],
        "ltv": round(rng.random() * 1_000, 2),
    }


def cached_store(count: int) -> Path:
    """The cached ``profiles.sqlite3`` with ``count`` contacts, made if missing."""
    from profilehook.stores.sqlite import SCHEMA_VERSION

    path = CACHE / f"contacts-{count}-schema{SCHEMA_VERSION}" / "profiles.sqlite3"
    if not path.exists():
        _make(path, count)
    return path


def data_dir_with_contacts(data_dir: Path, count: int) -> Path:
    """``data_dir`` (new) with a copy of the cached store of ``count`` contacts in it."""
    from profilehook.stores import STORE_FILE

    source = cached_store(count)
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, data_dir / STORE_FILE)
    _on_disk(data_dir / STORE_FILE)
    return data_dir


def _on_disk(path: Path) -> None:
    """Flush ``path`` and its directory entry: the page cache's write-back of a 500 MB file, left
    to the kernel, can land in the first seconds of whatever is measured next."""
    for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
        fd = os.open(target, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make(path: Path, count: int) -> None:
    import asyncio

    from profilehook.stores.sqlite import SqliteStore

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name("partial.sqlite3")
    for leftover in path.parent.glob("partial.*"):
        leftover.unlink()
    t0 = time.perf_counter()

    async def schema() -> None:  # the store makes its own schema (and stamps its version)
        store = SqliteStore(partial)
        await store.open()
        await store.close()

    asyncio.run(schema())
    conn = sqlite3.connect(partial, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO contacts (workspace, contact_id, last_ts_us, last_event_id, properties)"
        " VALUES (?, ?, ?, ?, ?)",
        _contact_rows(count),
    )
    conn.execute("COMMIT")
    for name in profile(random.Random(0), 0):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO contact_values (workspace, name, kind, value, contact_id)"
            " VALUES (?, ?, ?, ?, ?)",
            _value_rows(count, name),
        )
        conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    _on_disk(partial)  # written with SQLite's syncs off
    partial.rename(path)
    _on_disk(path)
    for leftover in path.parent.glob("partial.*"):  # the catalog and destinations files
        leftover.unlink()
    print(
        f"loaded {count:,} contacts into {path} in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )


def _profiles(count: int) -> Iterator[tuple[int, dict[str, Any]]]:
    rng = random.Random(23)
    for i in range(count):
        yield i, profile(rng, i)


def _contact_rows(count: int) -> Iterator[tuple[Any, ...]]:
    from profilehook.stores.sqlite import _encode_groups

    for i, props in _profiles(count):
        event_id = f"load-{i:07d}"
        ts_us = LOAD_TS_US + i
        yield WORKSPACE, contact_id(i), ts_us, event_id, _encode_groups([(ts_us, event_id, props)])


def _value_rows(count: int, name: str) -> list[tuple[Any, ...]]:
    """One property's rows of the searchable copy, in its key's order (appends only)."""
    from profilehook.stores.sqlite_values import stored

    rows = [(WORKSPACE, name, *stored(props[name]), contact_id(i)) for i, props in _profiles(count)]
    rows.sort(key=lambda row: (row[2], row[3], row[4]))
    return rows


if __name__ == "__main__":
    print(cached_store(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
