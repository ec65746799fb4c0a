"""The seen nonces' contract (``SeenNonces``): a signed call's nonce is new once, across
processes, until it expires. Every backend passes this one suite (see tests/store_backends.py).
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from profilehook.stores.base import Nonce, SeenNonces
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import S, StoreBackend


@pytest.fixture
def store(backend: StoreBackend) -> SeenNonces:
    return backend.store


# -- seen nonces (Copernica's replay protection) --------------------------------------------


async def test_given_a_nonce_then_it_is_new_once_per_source_until_it_expires(
    store: SeenNonces,
) -> None:
    call = Nonce("src_1", "SHA-256=abc", "n-1")

    assert await store.remember_nonce(call, expires_us=300 * S, now_us=1 * S) is True
    assert await store.remember_nonce(call, expires_us=600 * S, now_us=2 * S) is False
    assert await store.remember_nonce(call, expires_us=600 * S, now_us=300 * S) is False
    assert await store.remember_nonce(Nonce("src_1", "SHA-256=other", "n-1"), 300 * S, 2 * S)
    assert await store.remember_nonce(Nonce("src_2", "SHA-256=abc", "n-1"), 300 * S, 2 * S)
    assert await store.remember_nonce(Nonce("src_1", "SHA-256=abc", "n-2"), 300 * S, 2 * S)
    # Once its call's Date would be refused anyway, the nonce is forgotten.
    assert await store.remember_nonce(call, expires_us=900 * S, now_us=301 * S) is True


async def test_given_a_forgotten_nonce_then_the_same_call_is_new_again(store: SeenNonces) -> None:
    call = Nonce("src_1", "SHA-256=abc", "n-1")
    assert await store.remember_nonce(call, 300 * S, 1 * S)

    await store.forget_nonce(call)
    await store.forget_nonce(Nonce("src_1", "never", "seen"))

    assert await store.remember_nonce(call, 300 * S, 2 * S) is True
    assert await store.remember_nonce(call, 300 * S, 3 * S) is False


async def test_given_a_nonce_seen_by_one_process_then_another_refuses_it(
    backend: StoreBackend,
) -> None:
    call = Nonce("src_1", "SHA-256=abc", "n-1")
    assert await backend.store.remember_nonce(call, 300 * S, 1 * S)

    other = await backend.open_another()

    assert await other.remember_nonce(call, 300 * S, 2 * S) is False
    await other.forget_nonce(call)
    assert await backend.store.remember_nonce(call, 300 * S, 3 * S) is True


async def test_given_two_processes_racing_on_the_same_nonces_then_exactly_one_wins_each(
    backend: StoreBackend,
) -> None:
    import asyncio

    one, two = backend.store, await backend.open_another()
    calls = [Nonce("src_1", f"SHA-256={i}", "n") for i in range(30)]

    won = await asyncio.gather(
        *(store.remember_nonce(call, 300 * S, 1 * S) for call in calls for store in (one, two))
    )

    assert [won[i] + won[i + 1] for i in range(0, len(won), 2)] == [1] * len(calls)


async def test_given_expired_nonces_then_remembering_another_removes_their_rows(
    backend: StoreBackend,
) -> None:
    store = backend.store
    for i in range(5):
        await store.remember_nonce(Nonce("src_1", f"d{i}", "n"), expires_us=(10 + i) * S, now_us=S)

    await store.remember_nonce(Nonce("src_1", "late", "n"), expires_us=400 * S, now_us=13 * S)

    if backend.name != "memory":
        assert await stored_nonce_count(backend) == 3  # d3 (13 s), d4 (14 s) and late
    assert await store.remember_nonce(Nonce("src_1", "d3", "n"), 400 * S, 13 * S) is False
    assert await store.remember_nonce(Nonce("src_1", "d2", "n"), 400 * S, 13 * S) is True


async def stored_nonce_count(backend: StoreBackend) -> int:
    """The rows a durable store keeps for nonces."""
    if isinstance(backend.store, SqliteStore):
        with contextlib.closing(sqlite3.connect(backend.store.db.path)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM seen_nonces").fetchone()[0])
    if backend.name == "postgres":
        import psycopg

        from profilehook.stores.postgres import PostgresStore

        assert isinstance(backend.store, PostgresStore)
        with psycopg.connect(backend.store.conninfo) as conn:
            query = f'SELECT COUNT(*) FROM "{backend.store.schema}".seen_nonces'
            row = conn.execute(query).fetchone()
            assert row is not None
            return int(row[0])
    raise AssertionError(f"{backend.name} keeps no rows")
