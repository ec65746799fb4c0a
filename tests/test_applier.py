"""The applier outlives failures: nothing it could not apply blocks the log or stops it."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from profilehook.applier import Applier
from profilehook.errors import StoreRefused
from profilehook.events import Event
from profilehook.metrics import Metrics
from profilehook.queues.memory import MemoryQueue
from profilehook.stores.base import ApplyResult
from profilehook.stores.sqlite import SqliteStore
from tests.support import (
    POSTGRES_URL,
    drop_schema,
    event,
    postgres_url,
    require_server,
    unique_schema,
)


class FlakySyncStore(SqliteStore):
    """A SQLite store whose first sync fails the way an fsync can (EMFILE, EIO)."""

    failures = 1

    async def sync(self) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(24, "Too many open files")
        await super().sync()


async def test_given_an_unexpected_failure_when_running_then_the_applier_carries_on(
    tmp_path: Path,
) -> None:
    queue, store = MemoryQueue(), FlakySyncStore(tmp_path / "p.sqlite3")
    await store.open()
    applier = Applier(queue, store, Metrics(), 100)
    stop = asyncio.Event()
    task = asyncio.create_task(applier.run(stop))
    try:
        await queue.publish([event(event_id="e1", a=1)])
        await queue.publish([event(event_id="e2", a=2, ts_us=2_000_000)])
        for _ in range(500):
            if await queue.depth() == 0:
                break
            await asyncio.sleep(0.02)
        assert not task.done(), "the applier task must survive the failed sync"
        assert await queue.depth() == 0
        found = await store.get_contact("acme", "c1")
        assert found is not None and found.properties == {"a": 2}
    finally:
        stop.set()
        await task
        await store.close()


class RefusingStore(SqliteStore):
    """Refuses one event id as PostgreSQL refuses an over-long index key."""

    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        if any(e.event_id == "poison" for e in events):
            raise StoreRefused("index row size exceeds maximum")
        return await super().apply(events)


async def test_given_an_event_the_store_refuses_then_the_rest_of_its_batch_is_applied(
    tmp_path: Path,
) -> None:
    queue, store = MemoryQueue(), RefusingStore(tmp_path / "p.sqlite3")
    await store.open()
    try:
        await queue.publish([event(event_id="ok-1", a=1), event(event_id="poison", b=2)])
        assert await Applier(queue, store, Metrics(), 100).drain() == 2
        assert await queue.depth() == 0
        assert (await store.get_event("acme", "ok-1")).status == "applied"  # type: ignore[union-attr]
        failed = await store.get_event("acme", "poison")
        assert failed is not None and failed.status == "failed"
        assert "index row size" in (failed.error or "")
    finally:
        await store.close()


@pytest.mark.slow
async def test_given_an_id_postgresql_cannot_index_then_it_is_refused_not_an_outage() -> None:
    """Before the ingest byte caps, such an event stalled the whole applier on PostgreSQL."""
    require_server(POSTGRES_URL, 5432)
    from profilehook.stores.postgres import PostgresStore

    schema = unique_schema()
    store = PostgresStore(postgres_url(schema))
    await store.open()
    try:
        # Random text does not compress: the index row really is over PostgreSQL's 2,704 bytes.
        huge = event(contact_id="c", event_id=base64.b64encode(os.urandom(3_000)).decode(), a=1)
        with pytest.raises(StoreRefused):
            await store.apply([huge])
        assert (await store.apply([event(event_id="ok-3", a=1)])).applied == 1
    finally:
        await store.close()
        drop_schema(schema)


async def test_after_a_partial_batch_the_applier_waits_as_linger_s_says_for_that_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each partial batch is followed by the wait ``linger_s`` gives for its size and the time
    it took: a bigger batch (more work) is followed by a longer wait than a quiet one."""
    from profilehook import applier as applier_module

    queue, store = MemoryQueue(), SqliteStore(tmp_path / "p.sqlite3")
    await store.open()
    stop = asyncio.Event()
    lingered: list[float] = []
    expected: list[float] = []
    real_sleep = applier_module._sleep_unless
    applier = Applier(queue, store, Metrics(), 1_000)

    async def sleep(stop_: asyncio.Event, delay_s: float) -> None:
        lingered.append(delay_s)
        if len(lingered) == 1:  # the busy batch is applied: a quiet one follows
            expected.append(applier_module.linger_s(150, 1_000, applier.busy_s))
            await queue.publish([event(event_id="quiet", a=1)])
        else:
            expected.append(applier_module.linger_s(1, 1_000, applier.busy_s))
            stop.set()
        await real_sleep(stop_, 0)

    monkeypatch.setattr(applier_module, "_sleep_unless", sleep)
    await queue.publish([event(event_id=f"e{i}", a=i) for i in range(150)])
    try:
        await asyncio.wait_for(applier.run(stop), 10)
    finally:
        await store.close()
    assert lingered[:2] == expected
    assert all(wait > 0 for wait in lingered[:2])


async def test_the_time_a_batch_took_leaves_out_the_stores_periodic_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The linger is for CPU work a fuller batch would share; a sync waits for the disk (an
    fsync can take long on a busy machine) and is not counted."""
    from profilehook import applier as applier_module

    monkeypatch.setattr(applier_module, "ACK_INTERVAL_S", 0.0)  # this step syncs
    queue, store = MemoryQueue(), SqliteStore(tmp_path / "p.sqlite3")
    await store.open()
    real_sync = store.sync

    async def slow_sync() -> None:
        await asyncio.sleep(1.0)
        await real_sync()

    monkeypatch.setattr(store, "sync", slow_sync)
    applier = Applier(queue, store, Metrics(), 1_000)
    await queue.publish([event(event_id="e1", a=1)])
    try:
        assert await applier.step() == 1
    finally:
        await store.close()
    assert applier.busy_s < 0.5


def test_the_linger_follows_the_batchs_own_time_within_its_bounds() -> None:
    """A full batch: no wait (a backlog). A partial one: APPLY_LINGER_PER_BUSY times its time,
    at least APPLY_LINGER_MIN_S (many tiny batches would spend the applier's CPU on each one's
    fixed cost) and at most APPLY_LINGER_MAX_S; a quick batch is followed by a short wait (a
    change goes out soon: 10 ms after a 1 ms batch, where a fixed linger waited 50)."""
    from profilehook.applier import linger_s
    from profilehook.constants import (
        APPLY_LINGER_MAX_S,
        APPLY_LINGER_MIN_S,
        APPLY_LINGER_PER_BUSY,
    )

    assert linger_s(2_000, 2_000, 0.5) == 0.0
    assert linger_s(0, 2_000, 0.5) == 0.0
    assert linger_s(1, 2_000, 0.001) == APPLY_LINGER_MIN_S <= 0.02
    assert linger_s(500, 2_000, 0.02) == pytest.approx(APPLY_LINGER_PER_BUSY * 0.02)
    assert linger_s(1_999, 2_000, 10.0) == APPLY_LINGER_MAX_S
    waits = [linger_s(100, 2_000, busy_ms / 1000) for busy_ms in range(0, 200)]
    assert waits == sorted(waits)  # more work, never a shorter wait


async def test_given_a_purged_event_redelivered_then_it_counts_failed_not_duplicate(
    tmp_path: Path,
) -> None:
    """Retention purged its record: the store refuses it (too old); /metrics says ``failed``."""
    store = SqliteStore(tmp_path / "p.sqlite3")
    await store.open()
    try:
        old = event("u1", "old", 1_000_000, plan="a")
        await store.apply([old, event("u1", "new", 30_000_000, plan="b")])
        assert await store.purge_history(10_000_000, 100) == 1
        queue = MemoryQueue()
        await queue.publish([old])
        metrics = Metrics()

        assert await Applier(queue, store, metrics, 100).drain() == 1

        text = metrics.render().decode()
        assert 'profilehook_events_total{outcome="failed",source="api"} 1.0' in text
        assert 'outcome="duplicate",source="api"} 1.0' not in text
    finally:
        await store.close()
