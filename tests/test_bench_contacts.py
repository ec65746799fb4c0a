"""Benchmarks R and S start from a data directory of N contacts, made once by
``benchmarks/contacts_loader.py`` and copied for each run: the copy opens as profilehook's own
store, holds the profiles the loader says it does, and is on the disk before it is handed over
(a 500 MB copy left in the page cache can be written back during R's first seconds, beside
the server it measures)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
from benchmarks import contacts_loader

from profilehook.stores import STORE_FILE
from profilehook.stores.sqlite import SqliteStore


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """The paths ``os.fsync`` is called on, from here on; the loader's cache in ``tmp_path``."""
    monkeypatch.setattr(contacts_loader, "CACHE", tmp_path / "cache")
    seen: list[Path] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_given_a_count_then_each_run_gets_its_own_synced_copy_of_one_cached_store(
    synced: list[Path], tmp_path: Path
) -> None:
    data = contacts_loader.data_dir_with_contacts(tmp_path / "run1", 300)
    cached = contacts_loader.cached_store(300)
    copy = data / STORE_FILE
    # The store made with SQLite's syncs off, and the run's copy, each flushed with its directory.
    assert {cached, cached.parent, copy, data} <= set(synced)

    async def read(path: Path, i: int) -> dict[str, object] | None:
        store = SqliteStore(path)
        await store.open()
        try:
            found = await store.get_contact(
                contacts_loader.WORKSPACE, contacts_loader.contact_id(i)
            )
            return None if found is None else found.properties
        finally:
            await store.close()

    rng = random.Random(23)  # the loader's profiles, in order
    expected = [contacts_loader.profile(rng, i) for i in range(300)]
    assert asyncio.run(read(copy, 299)) == expected[299]
    assert asyncio.run(read(copy, 300)) is None

    made_at = cached.stat().st_mtime_ns
    synced.clear()
    second = contacts_loader.data_dir_with_contacts(tmp_path / "run2", 300)
    assert cached.stat().st_mtime_ns == made_at  # found, not made again
    assert set(synced) == {second / STORE_FILE, second}
    assert asyncio.run(read(second / STORE_FILE, 0)) == expected[0]
