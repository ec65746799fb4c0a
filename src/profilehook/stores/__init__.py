"""Profile stores. ``open_store`` chooses the backend from a URL; drivers load lazily."""

from __future__ import annotations

from pathlib import Path

from profilehook import constants as c
from profilehook.errors import ConfigurationError
from profilehook.stores.base import Store

STORE_FILE = "profiles.sqlite3"


def open_store(
    url: str,
    data_dir: Path,
    *,
    auth_cache_max_stale_s: float = c.AUTH_CACHE_MAX_STALE_S,
    store_timeout_s: float = c.STORE_TIMEOUT_S,
) -> Store:
    """``""`` or ``sqlite:///path`` -> SQLite (the default); ``postgresql://…?schema=S`` ->
    PostgreSQL; ``memory://`` -> in-memory.

    Raises ``ConfigurationError`` for a URL no backend serves, or whose driver is not installed
    (the message names the extra to install).
    """
    if url in ("", "sqlite://"):
        from profilehook.stores.sqlite import SqliteStore

        return SqliteStore(data_dir / STORE_FILE)
    if url.startswith("sqlite:///"):
        from profilehook.stores.sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        from profilehook.stores.postgres import PostgresStore

        return PostgresStore(
            url, auth_cache_max_stale_s=auth_cache_max_stale_s, timeout_s=store_timeout_s
        )
    if url == "memory://":
        from profilehook.stores.memory import MemoryStore

        return MemoryStore()
    raise ConfigurationError(
        f"PROFILEHOOK_STORE_URL={url!r}: use postgresql://…, sqlite:///path/to/file or memory://"
    )
