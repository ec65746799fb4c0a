"""An erasure leaves no byte of the erased contact in the SQLite store's file, however its
b-trees were reshaped before (SPEC 2.11).

``secure_delete=ON`` zeroes what is deleted and the pages freed, but when SQLite rebuilds a page
to move cells to a sibling (a balance, as contacts are written around the erased one), the moved
cells' old bytes stay in the page's unused gap, where deleting the live copy does not reach. With
a scrub that only emptied the WAL, the store below kept 8 copies of the marker in a leaf page of
``contact_values`` (found in session 18 by a probe of 30 such stores). The scrub copies the file
into a new one now (``SqliteDatabase.scrub``)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from profilehook.events import Event
from profilehook.stores.base import Erasure
from profilehook.stores.sqlite import SqliteStore

CONTACT = "erase-me"


async def write_store(store: SqliteStore, marker: str, rnd: random.Random) -> None:
    """Batches of events over a few hundred or thousand contacts, with long and short values;
    about one event in fifty is CONTACT's and holds the marker in two properties."""
    contacts = [f"c{i:05d}" for i in range(rnd.choice([200, 2000]))]
    number = 0
    for _ in range(rnd.choice([30, 80])):
        events = []
        for _ in range(rnd.choice([50, 200])):
            number += 1
            if rnd.random() < 0.02:
                contact = CONTACT
                properties: dict[str, object] = {
                    "note": marker * rnd.randint(1, 30),
                    f"p{number % 7}": marker + "x" * rnd.randint(0, 300),
                }
            else:
                contact = rnd.choice(contacts)
                properties = {"plan": "x" * rnd.randint(1, 300), f"p{number % 7}": number}
            events.append(Event("acme", f"e{number}", contact, number, properties))
        await store.apply(events)


@pytest.mark.parametrize("seed", [10])
async def test_given_a_store_whose_pages_were_rebalanced_when_a_contact_is_erased_then_no_byte_of_it_is_left(
    tmp_path: Path, seed: int
) -> None:
    store = SqliteStore(tmp_path / "profiles.sqlite3")
    await store.open()
    marker = f"MARKER{uuid.uuid4().hex}"

    def hits() -> int:
        return sum(p.read_bytes().count(marker.encode()) for p in tmp_path.iterdir())

    try:
        await write_store(store, marker, random.Random(seed))
        assert hits() > 0
        await store.erase_contacts([Erasure("era_1", "acme", CONTACT, 10**15, False)])
        assert hits() == 0
        assert await store.get_contact("acme", CONTACT) is None
        assert await store.get_contact("acme", "c00001") is not None
    finally:
        await store.close()
