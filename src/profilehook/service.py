"""The backends of one running profilehook, chosen by the settings, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from profilehook.live import LiveCalls
from profilehook.metrics import Metrics
from profilehook.queues import open_queue
from profilehook.queues.base import Queue
from profilehook.settings import Settings
from profilehook.stores import open_store
from profilehook.stores.base import Store


@dataclass
class Services:
    settings: Settings
    queue: Queue
    store: Store
    metrics: Metrics = field(default_factory=Metrics)
    live: LiveCalls = field(default_factory=LiveCalls)  # what arrives, for the console

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        """Raises ``ConfigurationError`` when a URL names no backend."""
        return cls(
            settings,
            open_queue(settings.queue_url, settings.data_dir, settings.connect_timeout_s),
            open_store(
                settings.store_url,
                settings.data_dir,
                auth_cache_max_stale_s=settings.auth_cache_max_stale_s,
                store_timeout_s=settings.store_timeout_s,
            ),
        )

    async def open(self) -> None:
        await self.store.open()
        try:
            await self.queue.open()
        except BaseException:
            await self.store.close()
            raise

    async def close(self) -> None:
        try:
            await self.queue.close()
        finally:
            await self.store.close()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Services]:
    """Open the configured backends for the length of a ``with`` block (CLI commands)."""
    services = Services.from_settings(settings)
    await services.open()
    try:
        yield services
    finally:
        await services.close()
