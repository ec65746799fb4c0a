"""The store backends every store contract suite runs on, and what those suites share.

Each suite (tests/test_profile_store_contract.py, test_catalog_contract.py,
test_alias_contract.py, test_nonce_contract.py) takes the fixtures below into its namespace and
parametrises its ``backend`` fixture with ``BACKENDS``, so each test runs once per backend (ids
``memory``, ``sqlite``, ``postgres``, ``postgres-icu``; PostgreSQL skips locally when the server is
absent). A new backend joins every suite by adding one fixture ``<name>_store_backend`` here (and
its name to each suite's list) and one ``pytest.param`` to ``BACKENDS``, as litestar does for its
channel backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from profilehook.events import Event
from profilehook.stores.base import Store
from profilehook.stores.memory import MemoryStore
from profilehook.stores.sqlite import SqliteStore
from tests.support import (
    POSTGRES_URL,
    drop_schema,
    postgres_url,
    require_server,
    unique_schema,
)

S = 1_000_000  # one second in microseconds


def round_of_events(n: int, contacts: int) -> list[Event]:
    """Round ``n`` of events to contacts c0, c1, ...: each sets ``n`` at (100 + n) s, so every
    round changes every contact, a change of each for a destination."""
    return [
        Event(
            workspace="acme",
            event_id=f"c{i}-{n}",
            contact_id=f"c{i}",
            ts_us=(100 + n) * S,
            properties={"n": n},
        )
        for i in range(contacts)
    ]


@dataclass
class StoreBackend:
    """An open store, and a way to open a second instance on the same data (another process)."""

    name: str
    store: Store
    open_another: Callable[[], Awaitable[Store]]


@pytest.fixture
async def memory_store_backend() -> AsyncIterator[StoreBackend]:
    store = MemoryStore()
    await store.open()

    async def same_instance() -> Store:
        return store  # nothing to share with another process: the one instance is the data

    yield StoreBackend("memory", store, same_instance)
    await store.close()


@pytest.fixture
async def sqlite_store_backend(tmp_path: Path) -> AsyncIterator[StoreBackend]:
    path = tmp_path / "profiles.sqlite3"
    async with opened("sqlite", lambda: SqliteStore(path)) as backend:
        yield backend


@pytest.fixture
async def postgres_store_backend() -> AsyncIterator[StoreBackend]:
    require_server(POSTGRES_URL, 5432)
    from profilehook.stores.postgres import PostgresStore

    schema = unique_schema()
    async with opened("postgres", lambda: PostgresStore(postgres_url(schema))) as backend:
        yield backend
    drop_schema(schema)


@pytest.fixture(scope="session")
def icu_database_url() -> Iterator[str]:
    """A database whose default collation is ICU's en-US, where ``'a-1' < 'B-1'`` (by bytes,
    and in Python, ``'B-1' < 'a-1'``): schema objects made there get a non-C collation."""
    require_server(POSTGRES_URL, 5432)
    import psycopg

    name = f"profilehook_icu_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        )
    try:
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def postgres_icu_store_backend(icu_database_url: str) -> AsyncIterator[StoreBackend]:
    """PostgreSQL in a database whose default collation is not C: the store must still
    compare ids by bytes, as the other stores and Python do."""
    from profilehook.stores.postgres import PostgresStore

    url = f"{icu_database_url}?schema={unique_schema()}"
    async with opened("postgres", lambda: PostgresStore(url)) as backend:
        yield backend


BACKENDS = [
    pytest.param("memory_store_backend", id="memory"),
    pytest.param("sqlite_store_backend", id="sqlite"),
    pytest.param("postgres_store_backend", id="postgres"),
    pytest.param("postgres_icu_store_backend", id="postgres-icu"),
]
"""The ``params`` of each suite's ``backend`` fixture: one per fixture above."""


def backend_of(request: pytest.FixtureRequest) -> StoreBackend:
    """The open backend that ``request.param`` (one of ``BACKENDS``) names."""
    found: StoreBackend = request.getfixturevalue(request.param)
    return found


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> StoreBackend:
    """Each backend in turn: the contract suites' ``store`` fixtures take theirs from it."""
    return backend_of(request)


@contextlib.asynccontextmanager
async def opened(name: str, make: Callable[[], Store]) -> AsyncIterator[StoreBackend]:
    """A backend on a store ``make`` builds, whose ``another`` opens more on the same data;
    all of them closed at the end."""
    store = make()
    await store.open()
    others: list[Store] = []

    async def another() -> Store:
        other = make()
        await other.open()
        others.append(other)
        return other

    try:
        yield StoreBackend(name, store, another)
    finally:
        for other in others:
            await other.close()
        await store.close()


async def until(probe: Callable[[], Awaitable[Any]], expected: Any, timeout_s: float = 2.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if await probe() == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never became {expected!r}")
