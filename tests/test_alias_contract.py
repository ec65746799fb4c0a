"""The profile aliases' contract (``ProfileAliases``): a source's profile id -> a contact, and
the events parked until a profile's first mapping. Every backend passes this one suite (see
tests/store_backends.py).
"""

from __future__ import annotations

import pytest

from profilehook.stores.base import ProfileAliases
from tests.store_backends import S, StoreBackend
from tests.support import event


@pytest.fixture
def store(backend: StoreBackend) -> ProfileAliases:
    return backend.store


# -- profile aliases (Copernica's --contact-field) ----------------------------------------------


async def test_given_an_unmapped_profile_when_events_park_then_the_first_mapping_releases_them(
    store: ProfileAliases,
) -> None:
    parked = event(contact_id="profile-7", event_id="sub-1", ts_us=2 * S, x=1)
    assert await store.get_alias("acme", "src_1", "7") is None
    assert await store.park_until_alias("src_1", "7", parked) is None
    assert await store.park_until_alias("src_1", "7", parked) is None  # kept once per event_id

    update = await store.put_alias("acme", "src_1", "7", "cust-42", (1 * S, "p1"))

    assert update.contact_id == "cust-42"
    assert update.parked == [parked]
    await store.unpark("acme", "src_1", "7", ["sub-1"])
    assert (await store.put_alias("acme", "src_1", "7", "cust-42", (1 * S, "p1"))).parked == []
    assert await store.park_until_alias("src_1", "7", parked) == "cust-42"


async def test_given_two_mappings_of_a_profile_then_the_greater_version_wins_in_any_order(
    store: ProfileAliases,
) -> None:
    newer = await store.put_alias("acme", "src_1", "7", "new", (5 * S, "p5"))
    older = await store.put_alias("acme", "src_1", "7", "old", (3 * S, "p3"))

    assert newer.contact_id == older.contact_id == "new"
    assert await store.get_alias("acme", "src_1", "7") == "new"
    assert await store.get_alias("globex", "src_1", "7") is None
    assert await store.get_alias("acme", "src_2", "7") is None
