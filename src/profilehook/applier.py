"""The applier: queue -> store in batches, acknowledged only after the store committed.

A crash between the store's commit and the ack redelivers the batch; the store's dedupe by
event_id makes that harmless, so effects happen exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from profilehook.constants import (
    ACK_INTERVAL_S,
    APPLY_IDLE_WAIT_S,
    APPLY_LINGER_MAX_S,
    APPLY_LINGER_MIN_S,
    APPLY_LINGER_PER_BUSY,
    APPLY_RETRY_BACKOFF_S,
)
from profilehook.errors import StorageUnavailable, StoreRefused
from profilehook.events import Event, now_us
from profilehook.metrics import Metrics
from profilehook.queues.base import Delivery, Queue
from profilehook.stores.base import ApplyResult, ProfileStore

log = logging.getLogger(__name__)


class Applier:
    def __init__(self, queue: Queue, store: ProfileStore, metrics: Metrics, batch_max_events: int):
        self.queue = queue
        self.store = store
        self.metrics = metrics
        self.batch_max_events = batch_max_events
        self._unacked: list[Delivery] = []  # applied, acknowledged after the next store sync
        self._synced_at = time.monotonic()
        self.busy_s = 0.0  # how long the last batch took to apply, once fetched
        # Called after each batch that recorded changes (committed): the delivery loop (or
        # process) sends them without waiting for its poll. A batch that changed nothing (a
        # repeat, a value already held) wakes nothing.
        self.on_applied: Callable[[], None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Apply until ``stop`` is set; backend outages are retried with backoff, not fatal."""
        failures = 0
        while not stop.is_set():
            try:
                applied = await self.step(APPLY_IDLE_WAIT_S)
                failures = 0
                if not applied:
                    await self.refresh_depth()
                elif wait_s := linger_s(applied, self.batch_max_events, self.busy_s):
                    await _sleep_unless(stop, wait_s)
            except Exception as exc:  # the applier must outlive any one failure
                delay = APPLY_RETRY_BACKOFF_S[min(failures, len(APPLY_RETRY_BACKOFF_S) - 1)]
                failures += 1
                if isinstance(exc, StorageUnavailable):
                    log.warning("applier: %s; retrying in %.2fs", exc.detail, delay)
                else:
                    log.exception("applier: unexpected failure; retrying in %.2fs", delay)
                await _sleep_unless(stop, delay)
        try:
            await self.flush()
        except StorageUnavailable as exc:  # unacknowledged events are simply applied again
            log.warning("applier: final acknowledgement failed: %s", exc.detail)

    async def step(self, wait_s: float = 0.0) -> int:
        """Fetch one batch and apply it; acknowledge what was applied once the store made it
        durable (``flush``, at most every ``ACK_INTERVAL_S``). Returns the events handled."""
        deliveries = await self.queue.fetch(self.batch_max_events, wait_s)
        started_s = time.monotonic()
        if not deliveries:
            await self.flush()
            return 0
        events = [d.event for d in deliveries]
        try:
            result = await self._apply(events)
        except StorageUnavailable:
            await self.queue.release(deliveries)  # applied again once the store is back
            with contextlib.suppress(StorageUnavailable):
                await self.flush()  # what was applied before need not come again
            raise
        self._unacked.extend(deliveries)
        if result.changes and self.on_applied is not None:
            self.on_applied()
        # The batch's own time: the periodic sync below waits for the disk, it is not work that
        # a fuller batch would share.
        self.busy_s = time.monotonic() - started_s
        if time.monotonic() - self._synced_at >= ACK_INTERVAL_S:
            await self.flush()
        self._observe(events, result)
        return len(deliveries)

    async def flush(self) -> None:
        """Make everything applied durable in the store, then acknowledge it to the log.

        One store sync (an fsync for SQLite) covers many batches; until it, a crash only
        redelivers events that the store's dedupe then recognises.
        """
        if self._unacked:
            await self.store.sync()
            await self.queue.ack(self._unacked)
            self._unacked = []
        self._synced_at = time.monotonic()

    async def drain(self) -> int:
        """Apply until the queue is empty (used by tests and the CLI)."""
        total = 0
        while handled := await self.step():
            total += handled
        await self.flush()
        return total

    async def refresh_depth(self) -> None:
        self.metrics.queue_depth.set(await self.queue.depth())

    async def _apply(self, events: Sequence[Event]) -> ApplyResult:
        try:
            return await self.store.apply(events)
        except StorageUnavailable:
            raise
        except Exception:
            # A poison event must not block the log: apply one by one, keep the failures.
            log.exception("applier: batch of %d failed; applying one by one", len(events))
            return await self._apply_singly(events)

    async def _apply_singly(self, events: Sequence[Event]) -> ApplyResult:
        total = ApplyResult()
        for event in events:
            try:
                total.add(await self.store.apply([event]))
            except StorageUnavailable:
                raise
            except Exception as exc:
                log.exception("applier: event %s failed", event.event_id)
                self.metrics.events.labels(event.source, "failed").inc()
                try:
                    await self.store.record_failure(event, f"{type(exc).__name__}: {exc}")
                except StoreRefused:
                    # Not even its failure can be stored (its id is what the store refuses):
                    # it cannot block the log forever; the log line above is its record.
                    log.error("applier: event %s dropped: the store refuses it", event.event_id)
        return total

    def _observe(self, events: Sequence[Event], result: ApplyResult) -> None:
        now = now_us()
        self.metrics.apply_lag.observe_many(
            max(0, now - event.received_us) / 1_000_000 for event in events
        )
        received = Counter(e.source for e in events)
        for source, count in received.items():
            applied = result.applied_by_source.get(source, 0)
            erased = result.erased_by_source.get(source, 0)
            refused = result.refused_by_source.get(source, 0)  # too old (retention purged)
            self.metrics.events.labels(source, "applied").inc(applied)
            self.metrics.events.labels(source, "duplicate").inc(count - applied - erased - refused)
            if refused:
                self.metrics.events.labels(source, "failed").inc(refused)
            if erased:
                self.metrics.events.labels(source, "erased").inc(erased)
        self.metrics.superseded.inc(result.superseded)
        self.metrics.apply_batches.inc()


def linger_s(applied: int, batch_max_events: int, busy_s: float) -> float:
    """How long the applier waits before its next fetch, after a step that handled ``applied``
    events in ``busy_s`` (from its fetch's answer until they were applied, wall clock; not the
    store's periodic sync, which waits for the disk).

    A full batch: not at all, a backlog waits. A partial one: ``APPLY_LINGER_PER_BUSY`` times
    as long as it took, within ``APPLY_LINGER_MIN_S`` and ``APPLY_LINGER_MAX_S``: a batch has a
    fixed cost (the log's read, the store's transaction, the delivery process's wake-up), so an
    applier that went straight back would spend its CPU on many small batches, taken from
    ingestion. Tied to the batch's own time, the wait is short while the applier has little to
    do (a change goes out soon), and grows with its work, or with a machine so busy that the
    applier, at the lowest priority, gets little of it: batches then grow, and an event costs
    less CPU (benchmarks/README.md). At a steady rate, once the batch's cost per event times
    the rate reaches 1 / (1 + ``APPLY_LINGER_PER_BUSY``) of a core, batches grow to the
    maximum.
    """
    if applied <= 0 or applied >= batch_max_events:
        return 0.0
    return min(APPLY_LINGER_MAX_S, max(APPLY_LINGER_MIN_S, APPLY_LINGER_PER_BUSY * busy_s))


async def _sleep_unless(stop: asyncio.Event, delay_s: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
    except TimeoutError:
        return


class StallWatch:
    """Whether an applier is stalled: nothing applied for ``stall_s`` while events waited.

    Fed by whoever looks (``/readyz``), from numbers any applier leaves behind: batches applied
    so far (also counted for an applier process, from its reports) and events pending. Events
    are taken to wait since the first look that saw them pending with no progress since: a
    look after a long quiet spell does not count the quiet against the applier.
    """

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self._batches = -1.0
        self._waiting_since_s: float | None = None

    def stalled_for_s(self, batches: float, pending: int, now_s: float) -> float | None:
        """Seconds the applier has been stalled, or None when it is not."""
        if pending <= 0 or batches != self._batches:
            self._batches = batches
            self._waiting_since_s = now_s if pending > 0 else None
            return None
        if self._waiting_since_s is None:
            self._waiting_since_s = now_s
        waited_s = now_s - self._waiting_since_s
        return waited_s if waited_s >= self.stall_s else None

    def reason(self, batches: float, pending: int, now_s: float) -> str | None:
        """What ``/readyz`` says of a stalled applier, or None when it is not stalled."""
        stalled_s = self.stalled_for_s(batches, pending, now_s)
        if stalled_s is None:
            return None
        return f"The applier has applied nothing for {stalled_s:.0f} s while {pending} events wait"
