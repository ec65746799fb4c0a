"""History retention (``PROFILEHOOK_HISTORY_RETENTION_DAYS``): the purge that runs beside every
applier (``serve``'s applier process or task, each ``worker``).

It asks the store to forget the event records older than the window and the dedupe window
after it (``DEDUPE_WINDOW_US``, 7 days: ingest refuses what is older than the window, so every
event stays in the history at least that long after it was accepted, its event_id recognised as
a repeat), ``PURGE_BATCH_EVENTS`` at a time, each batch its own short transaction (``ProfileStore.purge_history``, which folds what it
forgets into the contacts' snapshots), with a pause between batches so that the applier's writes
come in between; once nothing older is left it looks again every ``PURGE_INTERVAL_S``. Several
purgers at once (several workers on PostgreSQL) take different events. What it purged is counted
in ``profilehook_history_purged_total`` and said in one log line at most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

from profilehook import constants as c
from profilehook.errors import StorageUnavailable
from profilehook.events import iso, now_us
from profilehook.metrics import Metrics
from profilehook.settings import Settings
from profilehook.stores.base import ProfileStore, Store

log = logging.getLogger(__name__)


class HistoryPurger:
    """Purges the history older than the retention window beside an applier (module doc)."""

    def __init__(
        self,
        store: ProfileStore,
        metrics: Metrics,
        settings: Settings,
        *,
        batch_events: int = c.PURGE_BATCH_EVENTS,
        clock_us: Callable[[], int] = now_us,
    ):
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.batch_events = batch_events
        self.clock_us = clock_us
        self._unreported = 0
        self._cutoff_us = 0
        self._reported_at_s = -math.inf  # the first purge is said at once
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.settings.history_retention_days > 0

    async def run(self, stop: asyncio.Event) -> None:
        """Purge until ``stop`` is set (at once when retention is off: keep forever)."""
        if not self.enabled:
            return
        while not stop.is_set():
            try:
                purged = await self.step()
                self._failing = False
            except StorageUnavailable as exc:  # retried at the next interval; applying goes on
                if not self._failing:
                    log.warning("retention: purge failed (%s); retrying", exc.detail)
                self._failing = True
                purged = 0
            except Exception:  # the purge must never take the applier down with it
                log.exception("retention: purge failed; retrying")
                purged = 0
            self._report()
            pause = c.PURGE_PAUSE_S if purged >= self.batch_events else c.PURGE_INTERVAL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        self._report(final=True)

    async def step(self) -> int:
        """Purge one batch of what is older than the window now; the records purged."""
        cutoff_us = self.cutoff_us()
        purged = await self.store.purge_history(cutoff_us, self.batch_events)
        if purged:
            self.metrics.history_purged.inc(purged)
            self._unreported += purged
            self._cutoff_us = cutoff_us
        return purged

    def cutoff_us(self) -> int:
        """Event times before this are purged now (none when it is 0 or less)."""
        oldest_us = self.settings.oldest_accepted_us(self.clock_us())
        return oldest_us - c.DEDUPE_WINDOW_US if oldest_us > 0 else 0

    def _report(self, final: bool = False) -> None:
        """One log line for what was purged since the last, at most once a minute."""
        now_s = time.monotonic()
        if not self._unreported:
            return
        if not final and now_s - self._reported_at_s < c.PURGE_LOG_INTERVAL_S:
            return
        log.info(
            "retention: purged %d history records with an event time before %s"
            " (%d days, and the %d days of deduplication)",
            self._unreported,
            iso(self._cutoff_us),
            self.settings.history_retention_days,
            c.DEDUPE_WINDOW_US // c.DAY_US,
        )
        self._unreported = 0
        self._reported_at_s = now_s


class ChangePurger:
    """Purges the change feed's changes older than ``PROFILEHOOK_CHANGES_RETENTION_DAYS`` beside
    an applier, as ``HistoryPurger`` purges the history: a batch at a time, each its own short
    transaction, paused in between; several at once take different changes. The destinations'
    delivered and failed deliveries (each holds its change) go by the same window, counted
    from their last attempt; pending ones stay."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        batch_changes: int = c.PURGE_BATCH_EVENTS,
        clock_us: Callable[[], int] = now_us,
    ):
        self.store = store
        self.retention_us = settings.changes_retention_days * c.DAY_US
        self.batch_changes = batch_changes
        self.clock_us = clock_us

    async def run(self, stop: asyncio.Event) -> None:
        """Purge until ``stop`` is set."""
        failing = False
        while not stop.is_set():
            try:
                purged = await self.step()
                failing = False
            except StorageUnavailable as exc:  # retried at the next interval
                if not failing:
                    log.warning("retention: change purge failed (%s); retrying", exc.detail)
                failing = True
                purged = 0
            except Exception:  # never take the applier down with it
                log.exception("retention: change purge failed; retrying")
                purged = 0
            pause = c.PURGE_PAUSE_S if purged >= self.batch_changes else c.PURGE_INTERVAL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def step(self) -> int:
        """Purge one batch of the changes applied before the window, and one of the deliveries
        finished before it; the larger count (a full batch: more wait)."""
        before_us = self.clock_us() - self.retention_us
        changes = await self.store.purge_changes(before_us, self.batch_changes)
        deliveries = await self.store.purge_deliveries(before_us, self.batch_changes)
        return max(changes, deliveries)
