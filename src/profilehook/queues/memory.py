"""In-memory log for tests: the same contract as the durable ones, no durability."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from profilehook.events import Event, erased_stub, predates
from profilehook.queues.base import Delivery, Queue


class MemoryQueue(Queue):
    def __init__(self) -> None:
        self._log: list[Event] = []
        self._acked = 0  # events before this offset are acknowledged
        self._delivered = 0
        self._wake = asyncio.Event()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, events: Sequence[Event]) -> None:
        self._log.extend(events)
        self._wake.set()

    async def fetch(self, max_events: int, wait_s: float) -> list[Delivery]:
        if self._delivered >= len(self._log):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                return []
        start = self._delivered
        chunk = self._log[start : start + max_events]
        self._delivered = start + len(chunk)
        return [Delivery(event, start + i + 1) for i, event in enumerate(chunk)]

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self._delivered = min(self._delivered, min(d.token for d in deliveries) - 1)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self._acked = max(self._acked, max(d.token for d in deliveries))

    async def find(self, workspace: str, event_id: str) -> Event | None:
        for event in self._log[self._acked :]:
            if event.workspace == workspace and event.event_id == event_id:
                return event
        return None

    async def depth(self) -> int:
        return len(self._log) - self._acked

    async def erase_pending(
        self, workspace: str, contact_id: str, upto_us: int, everything: bool = False
    ) -> int:
        erased = 0
        for index in range(self._acked, len(self._log)):
            event = self._log[index]
            if (
                (event.workspace, event.contact_id) == (workspace, contact_id)
                and (everything or predates(event, upto_us))
                and event != erased_stub(event)
            ):
                self._log[index] = erased_stub(event)
                erased += 1
        return erased

    def redeliver_unacked(self) -> None:
        """Simulate a consumer crash: everything unacknowledged is delivered again."""
        self._delivered = self._acked
