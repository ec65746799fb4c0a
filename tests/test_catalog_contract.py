"""The catalog's contract (``Catalog``): API keys and webhook sources, read on every request.
Every backend passes this one suite (see tests/store_backends.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from profilehook.stores.base import ApiKey, Catalog, KeyGrant, Source
from tests.store_backends import StoreBackend, until


@pytest.fixture
def store(backend: StoreBackend) -> Catalog:
    return backend.store


# -- keys ----------------------------------------------------------------------------------------


async def test_given_keys_then_they_are_listed_resolved_and_revoked(store: Catalog) -> None:
    one = ApiKey("k1", "acme", created_us=1)
    two = ApiKey("k2", "globex", created_us=2)
    await store.add_key(one, "hash-1")
    await store.add_key(two, "hash-2")

    assert await store.list_keys() == [one, two]
    assert await store.list_keys("globex") == [two]
    assert await store.list_keys("nobody") == []
    assert await store.workspace_for("hash-1") == "acme"
    assert await store.workspace_for("hash-2") == "globex"
    assert await store.workspace_for("no-such-hash") is None

    assert await store.revoke_key("k1", revoked_us=10) is True
    assert (
        await store.revoke_key("k1", revoked_us=20) is True
    )  # revoking again keeps the first time
    assert await store.revoke_key("no-such-key", revoked_us=10) is False

    assert await store.workspace_for("hash-1") is None
    assert await store.workspace_for("hash-2") == "globex"
    assert await store.list_keys("acme") == [ApiKey("k1", "acme", created_us=1, revoked_us=10)]


async def test_given_keys_with_scopes_then_the_lookup_and_the_list_return_them(
    store: Catalog,
) -> None:
    writer = ApiKey("k1", "acme", created_us=1, scopes=("ingest",))
    admin = ApiKey("k2", "acme", created_us=2, scopes=("ingest", "read", "admin"))
    await store.add_key(writer, "hash-1")
    await store.add_key(admin, "hash-2")

    assert await store.key_grant("hash-1") == KeyGrant("k1", "acme", ("ingest",))
    assert await store.key_grant("hash-2") == KeyGrant("k2", "acme", ("ingest", "read", "admin"))
    assert await store.list_keys("acme") == [writer, admin]
    await store.revoke_key("k2", revoked_us=3)
    assert await store.key_grant("hash-2") is None


async def test_given_a_serving_store_when_another_instance_revokes_a_key_then_it_is_refused_at_once(
    backend: StoreBackend,
) -> None:
    """The CLI revokes from another process; the server's next request must see it."""
    server = backend.store
    await server.add_key(ApiKey("k1", "acme", created_us=1), "hash-1")
    assert await server.workspace_for("hash-1") == "acme"  # warm whatever the server caches
    assert await server.workspace_for("hash-later") is None

    cli = await backend.open_another()
    assert await cli.revoke_key("k1", revoked_us=5) is True
    await cli.add_key(ApiKey("k2", "globex", created_us=2), "hash-later")

    if backend.name == "postgres":
        # Across PostgreSQL clients the change travels by LISTEN/NOTIFY: milliseconds, not zero.
        await until(lambda: server.workspace_for("hash-1"), None)
    assert await server.workspace_for("hash-1") is None
    assert await server.workspace_for("hash-later") == "globex"


async def test_given_a_key_looked_up_before_it_existed_when_the_same_store_adds_it_then_it_works(
    store: Catalog,
) -> None:
    """A store reads its own catalog writes at once (PostgreSQL's cache does not wait for its
    own change notification to come back)."""
    assert await store.workspace_for("hash-1") is None

    await store.add_key(ApiKey("k1", "acme", created_us=1), "hash-1")
    assert await store.workspace_for("hash-1") == "acme"

    await store.revoke_key("k1", revoked_us=2)
    assert await store.workspace_for("hash-1") is None


# -- sources -------------------------------------------------------------------------------------


async def test_given_sources_then_they_are_listed_found_and_replaced(store: Catalog) -> None:
    one = Source("src_1", "acme", "copernica", {"secret_hashes": ["h1"], "n": 1.0}, created_us=1)
    two = Source("src_2", "globex", "amplitude", {"secret_hashes": ["h2"]}, created_us=2)
    await store.put_source(one)
    await store.put_source(two)

    assert await store.list_sources() == [one, two]
    assert await store.list_sources("globex") == [two]
    assert await store.list_sources("nobody") == []
    assert await store.get_source("src_1") == one
    assert await store.get_source("no-such-source") is None

    rotated = replace(one, config={"secret_hashes": ["h3", "h1"]})
    await store.put_source(rotated)

    assert await store.get_source("src_1") == rotated
    assert await store.list_sources("acme") == [rotated]


async def test_given_a_serving_store_when_another_instance_rotates_a_secret_then_it_is_seen_at_once(
    backend: StoreBackend,
) -> None:
    """``sources rotate-secret`` runs in another process; the next webhook call must see it."""
    server = backend.store
    source = Source("src_1", "acme", "copernica", {"secret_hashes": ["old"]}, created_us=1)
    await server.put_source(source)
    assert await server.get_source("src_1") == source  # warm whatever the server caches
    assert await server.get_source("src_later") is None

    cli = await backend.open_another()
    rotated = replace(source, config={"secret_hashes": ["new"]})
    await cli.put_source(rotated)
    later = Source("src_later", "globex", "amplitude", {}, created_us=2)
    await cli.put_source(later)

    if backend.name == "postgres":
        # Across PostgreSQL clients the change travels by LISTEN/NOTIFY: milliseconds, not zero.
        await until(lambda: server.get_source("src_1"), rotated)
    assert await server.get_source("src_1") == rotated
    assert await server.get_source("src_later") == later


async def test_given_a_deleted_source_then_it_is_gone_here_and_for_another_instance(
    backend: StoreBackend,
) -> None:
    """``sources delete`` (or ``DELETE /v1/sources/{id}``) from another process: the serving
    store refuses the source's next webhook call."""
    server = backend.store
    kept = Source("src_2", "acme", "amplitude", {}, created_us=2)
    gone = Source("src_1", "acme", "amplitude", {"secret_hashes": ["h"]}, created_us=1)
    await server.put_source(gone)
    await server.put_source(kept)
    assert await server.get_source("src_1") == gone  # warm whatever the server caches

    cli = await backend.open_another()
    assert await cli.delete_source("src_1") is True
    assert await cli.delete_source("src_1") is False
    assert await cli.delete_source("no-such-source") is False

    if backend.name == "postgres":
        await until(lambda: server.get_source("src_1"), None)
    assert await server.get_source("src_1") is None
    assert await server.list_sources("acme") == [kept]
    assert await cli.get_source("src_1") is None
