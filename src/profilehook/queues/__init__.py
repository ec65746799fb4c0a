"""Durable logs. ``open_queue`` chooses the backend from a URL; drivers load lazily."""

from __future__ import annotations

from pathlib import Path

from profilehook.errors import ConfigurationError
from profilehook.queues.base import Queue

QUEUE_FILE = "log.sqlite3"


def open_queue(url: str, data_dir: Path, connect_timeout_s: float = 0.0) -> Queue:
    """``""`` or ``sqlite:///path`` -> SQLite (the default);
    ``nats://a:4222[,nats://b:4222]?stream=S&replicas=N`` -> JetStream (its ``open`` keeps
    trying to reach a server for ``connect_timeout_s``); ``memory://`` -> in-memory.

    Raises ``ConfigurationError`` for a URL no backend serves, or whose driver is not installed
    (the message names the extra to install).
    """
    if url in ("", "sqlite://"):
        from profilehook.queues.sqlite import SqliteQueue

        return SqliteQueue(data_dir / QUEUE_FILE)
    if url.startswith("sqlite:///"):
        from profilehook.queues.sqlite import SqliteQueue

        return SqliteQueue(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("nats://", "tls://")):
        from profilehook.queues.nats import NatsQueue

        return NatsQueue(url, connect_timeout_s=connect_timeout_s)
    if url == "memory://":
        from profilehook.queues.memory import MemoryQueue

        return MemoryQueue()
    raise ConfigurationError(
        f"PROFILEHOOK_QUEUE_URL={url!r}: use nats://host:4222, sqlite:///path/to/file or memory://"
    )
