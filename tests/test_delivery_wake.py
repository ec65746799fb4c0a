"""The applier wakes delivery only for a batch that recorded changes: a batch of repeats or of
values the profile already holds wakes nothing, and the delivery loop does no work for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from profilehook.applier import Applier
from profilehook.destinations import registry
from profilehook.destinations.delivery import Deliverer
from profilehook.metrics import Metrics
from profilehook.queues.memory import MemoryQueue
from profilehook.settings import Settings
from profilehook.stores import open_store
from profilehook.stores.base import Store
from tests.support import event, store_url_for


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        opened = open_store("memory://", tmp_path)
        await opened.open()
        yield opened
        await opened.close()
        return
    with store_url_for(request.param) as url:
        opened = open_store(url, tmp_path)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()


async def test_given_a_batch_that_changed_nothing_then_delivery_is_not_woken(
    store: Store,
) -> None:
    await registry.create(store, "acme", {"url": "http://127.0.0.1:9/in"}, allow_private=True)
    queue = MemoryQueue()
    applier = Applier(queue, store, Metrics(), 100)
    # A delivery loop that looks for changes only when woken (its poll: once an hour)
    deliverer = Deliverer(store, Settings(destinations_allow_private=True), poll_s=3_600)
    feed_reads = 0
    read_changes = store.read_changes

    async def counting_read(*args: Any, **kwargs: Any) -> Any:
        nonlocal feed_reads
        feed_reads += 1
        return await read_changes(*args, **kwargs)

    store.read_changes = counting_read  # type: ignore[method-assign]
    wakes = 0

    def woken() -> None:
        nonlocal wakes
        wakes += 1
        deliverer.changes_committed()

    applier.on_applied = woken
    stop = asyncio.Event()
    delivering = asyncio.create_task(deliverer.run(stop))
    try:
        await asyncio.sleep(0.2)  # its first pass (a look at the feed) is done: it waits
        first_reads = feed_reads
        # When a batch changes a profile: one wake-up, and the loop reads the feed
        await queue.publish([event(event_id="e1", n=1)])
        assert await applier.step() == 1
        assert wakes == 1
        async with asyncio.timeout(10):
            while feed_reads == first_reads:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        reads = feed_reads
        # When batches change nothing: the same event again, and a new event with the value
        # the profile already holds (applied, but no change recorded)
        await queue.publish([event(event_id="e1", n=1)])
        assert await applier.step() == 1
        await queue.publish([event(event_id="e2", ts_us=2_000_000, n=1)])
        assert await applier.step() == 1
        await asyncio.sleep(0.3)
        # Then nothing was woken, and the loop did not look at the feed
        assert wakes == 1
        assert feed_reads == reads
        found = await store.get_contact("acme", "c1")
        assert found is not None and found.properties == {"n": 1}
        changes = await store.read_changes("acme", None, 10)
        assert [c.event_id for c in changes] == ["e1"]
    finally:
        stop.set()
        await delivering
