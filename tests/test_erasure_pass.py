"""An eraser carries out the pending erasures a pass finds together (``erasure.execute_pending``):
each contact is erased from the log and the store, every SQLite file is scrubbed (copied into a
new one) once for the pass rather than once an erasure, since a copy's time grows with the file
and every write waits for it, and the erasures are marked done only after the scrubs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from profilehook.erasure import execute_pending, request_erasure
from profilehook.queues.sqlite import SqliteQueue
from profilehook.sqlite_db import SqliteDatabase
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import S
from tests.support import event


async def test_given_a_pass_of_erasures_then_each_file_is_scrubbed_once_and_every_contact_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scrubbed: list[str] = []
    real = SqliteDatabase.scrub

    async def counted(self: SqliteDatabase, clean: Callable[..., None] | None = None) -> None:
        scrubbed.append(self.path.name)
        await real(self, clean)

    monkeypatch.setattr(SqliteDatabase, "scrub", counted)
    marker = f"MARKER{uuid.uuid4().hex}"
    queue, store = SqliteQueue(tmp_path / "log.sqlite3"), SqliteStore(tmp_path / "profiles.sqlite3")
    await queue.open()
    await store.open()
    try:
        gone = [f"gone-{i}" for i in range(5)]
        await store.apply(
            [event(c, f"e{i}", S, note=f"{marker}{i}") for i, c in enumerate(gone)]
            + [event("kept", "k1", S, plan="pro")]
        )
        # A pending event of one of them, still in the log
        await queue.publish([event(gone[0], "late", 2 * S, note=marker)])
        erasures = [await request_erasure(store, "acme", c) for c in gone]

        assert await execute_pending(queue, store) == len(gone)

        # Each file once: the log, the store and its destinations, not three times five.
        assert len(scrubbed) == len(set(scrubbed)) == 3
        for erasure in erasures:
            done = await store.get_erasure("acme", erasure.erasure_id)
            assert done is not None and done.status == "done"
            assert await store.get_contact("acme", erasure.contact_id) is None
        kept = await store.get_contact("acme", "kept")
        assert kept is not None and kept.properties == {"plan": "pro"}
        assert await store.pending_erasures(10) == []
    finally:
        await store.close()
        await queue.close()
    assert not [p.name for p in tmp_path.iterdir() if marker.encode() in p.read_bytes()]
