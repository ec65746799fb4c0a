"""The profile store's contract (``ProfileStore``): applying events by last-writer-wins,
profiles, history, export pages and rebuild. Every backend passes this one suite (see
tests/store_backends.py for the backends and how a new one joins).
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from profilehook.events import Event, Version, new_event_id
from profilehook.stores import sqlite as sqlite_module
from profilehook.stores.base import Contact, ProfileStore
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import S, StoreBackend
from tests.support import (
    POSTGRES_URL,
    drop_schema,
    event,
    postgres_url,
    require_server,
    unique_schema,
)


@pytest.fixture
def store(backend: StoreBackend) -> ProfileStore:
    return backend.store


# -- helpers -------------------------------------------------------------------------------------


def sqlite_property_row(store: ProfileStore, workspace: str, contact_id: str, name: str) -> Any:
    """The raw (value, ts_us, event_id) of a property as a SqliteStore's file holds it."""
    assert isinstance(store, SqliteStore)
    with contextlib.closing(sqlite3.connect(store.db.path)) as conn:
        row = conn.execute(
            "SELECT properties FROM contacts WHERE workspace = ? AND contact_id = ?",
            (workspace, contact_id),
        ).fetchone()
    if row is None:
        return None
    for ts_us, event_id, values in msgspec.msgpack.decode(row[0]):
        if name in values:
            return [values[name], ts_us, event_id]
    return None


PROFILE_TABLES = ("contacts",)


@contextlib.contextmanager
def counting_profile_writes(store: ProfileStore) -> Any:
    """Count every row a SqliteStore writes to its profile table (contacts)."""
    assert isinstance(store, SqliteStore)
    counter: dict[str, int] = {}
    with contextlib.closing(sqlite3.connect(store.db.path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS test_writes (tbl TEXT)")
        conn.execute("DELETE FROM test_writes")
        for table in PROFILE_TABLES:
            for op in ("INSERT", "UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS test_count_{table}_{op} AFTER {op} ON {table}"
                    f" BEGIN INSERT INTO test_writes VALUES ('{table}'); END"
                )
        try:
            yield counter
        finally:
            for table, count in conn.execute("SELECT tbl, COUNT(*) FROM test_writes GROUP BY tbl"):
                counter[table] = count
            for table in PROFILE_TABLES:
                for op in ("INSERT", "UPDATE", "DELETE"):
                    conn.execute(f"DROP TRIGGER test_count_{table}_{op}")


async def props(
    store: ProfileStore, contact_id: str = "c1", workspace: str = "acme"
) -> dict[str, Any]:
    found = await store.get_contact(workspace, contact_id)
    assert found is not None, f"contact {workspace}/{contact_id} should exist"
    return found.properties


async def versions(store: ProfileStore, contact_id: str = "c1", workspace: str = "acme") -> Any:
    found = await store.get_contact(workspace, contact_id)
    assert found is not None
    return found.versions


# -- per-property last-writer-wins ---------------------------------------------------------------


async def test_given_a_new_contact_when_an_update_is_applied_then_its_properties_carry_its_version(
    store: ProfileStore,
) -> None:
    result = await store.apply([event(event_id="e1", ts_us=5 * S, name="Ann", city="Oslo")])

    found = await store.get_contact("acme", "c1")
    assert found == Contact(
        contact_id="c1",
        properties={"city": "Oslo", "name": "Ann"},
        versions={"city": (5 * S, "e1"), "name": (5 * S, "e1")},
        updated_us=5 * S,
    )
    assert (result.applied, result.duplicates, result.superseded) == (1, 0, 0)
    assert result.written > 0


async def test_given_values_of_every_json_type_then_get_contact_returns_them_exactly(
    store: ProfileStore,
) -> None:
    values = {
        "text": 'Zoë 😀 "quoted" \\ \n',
        "empty_text": "",
        "int": 2**53 + 1,
        "negative": -42,
        "float": 0.1,
        "false": False,
        "list": [1, "two", None, [3.5]],
        "empty_list": [],
        "object": {"nested": {"deeper": [True, None]}, "null": None},
        "empty_object": {},
        "naïve name / with spaces": "ok",
    }
    await store.apply([event(event_id="e1", **values)])

    found = await props(store)
    assert found == values
    assert {k: type(v) for k, v in found.items()} == {k: type(v) for k, v in values.items()}


# Every kind of JSON value, as a client sends it. The API must give back the same JSON text:
# -0.0 is not 0.0, 1.0 is not 1, 1e20 is a float, and nested objects keep their key order.
EXACT_VALUES: dict[str, Any] = {
    "a_big_float": 1e20,
    "b_huge_float": 1.5e300,
    "c_tiny_float": 5e-324,
    "d_tenth": 0.1,
    "e_negative_zero": -0.0,
    "f_whole_float": 1.0,
    "g_one": 1,
    "h_max_safe_int": 2**53 - 1,
    "i_min_safe_int": -(2**53 - 1),
    "j_unicode": 'Zoë 中文 😀 𝄞 \u2028 \\ "q"',
    "k_nested": {"z": [1.0, -0.0, {"y": 1e20, "b": None}], "a": "after z", "m": {"n": []}},
    "l_empty_list": [],
    "m_empty_object": {},
    "n_true": True,
    "o_false": False,
    "p_mixed_list": [1, 1.0, "1", None, True, [], {}],
}


def json_texts(values: dict[str, Any]) -> dict[str, str]:
    """Each value's JSON text: compares what ``==`` does not (-0.0 == 0.0, 1.0 == 1, key order).
    The standard library's, which writes an integer of any size."""
    return {name: json.dumps(value) for name, value in values.items()}


async def test_given_every_kind_of_json_value_then_each_comes_back_as_the_same_json_text(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e1", ts_us=1 * S, **EXACT_VALUES, unset="soon")])
    await store.apply([event(event_id="e2", ts_us=2 * S, unset=None, never_set=None)])

    found = await props(store)
    assert json_texts(found) == json_texts(EXACT_VALUES)
    page, _ = await store.contacts_page("acme", None, 10)
    assert [json_texts(c.properties) for c in page] == [json_texts(EXACT_VALUES)]
    await store.rebuild()
    assert json_texts(await props(store)) == json_texts(EXACT_VALUES)


async def test_given_an_empty_batch_then_apply_does_nothing(store: ProfileStore) -> None:
    result = await store.apply([])

    assert (result.applied, result.duplicates, result.superseded, result.written) == (0, 0, 0, 0)


async def test_given_a_property_when_a_newer_update_arrives_then_the_newer_value_wins(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e1", ts_us=1 * S, name="Ann")])
    await store.apply([event(event_id="e2", ts_us=2 * S, name="Bea")])

    assert await props(store) == {"name": "Bea"}
    assert await versions(store) == {"name": (2 * S, "e2")}


@pytest.mark.parametrize("order", ["ascending-ids", "descending-ids"], ids=str)
@pytest.mark.parametrize("batching", ["one-batch", "two-batches"], ids=str)
async def test_given_equal_event_times_then_the_greater_event_id_wins_in_any_arrival_order(
    store: ProfileStore, order: str, batching: str
) -> None:
    events = [
        event(event_id="e-a", ts_us=7 * S, name="from a"),
        event(event_id="e-b", ts_us=7 * S, name="from b"),
    ]
    if order == "descending-ids":
        events.reverse()
    if batching == "one-batch":
        await store.apply(events)
    else:
        for one in events:
            await store.apply([one])

    assert await props(store) == {"name": "from b"}
    assert await versions(store) == {"name": (7 * S, "e-b")}


@pytest.mark.parametrize("batching", ["one-batch", "a-first", "B-first"], ids=str)
async def test_given_a_tie_in_time_then_event_ids_compare_by_bytes_whatever_the_collation(
    store: ProfileStore, batching: str
) -> None:
    """'B-1' < 'a-1' by bytes (and in Python, which decides within a batch); under en-US
    collation it is the other way round. Every store, every batching, and rebuild: 'a-1'."""
    lower = event(event_id="a-1", ts_us=7 * S, name="from a-1")
    upper = event(event_id="B-1", ts_us=7 * S, name="from B-1")
    if batching == "one-batch":
        await store.apply([upper, lower])
    else:
        for one in [lower, upper] if batching == "a-first" else [upper, lower]:
            await store.apply([one])
    await store.apply([event(contact_id="a", event_id="x", a=1), event(contact_id="B", b=2)])

    assert await versions(store) == {"name": (7 * S, "a-1")}
    history = await store.history("acme", "c1", None, 10)
    assert [r.event.event_id for r in history] == ["a-1", "B-1"]
    page, _ = await store.contacts_page("acme", None, 10)
    assert [c.contact_id for c in page] == ["B", "a", "c1"]
    await store.rebuild()
    assert await versions(store) == {"name": (7 * S, "a-1")}
    await store.apply([event(event_id="A-1", ts_us=7 * S, name="from A-1")])
    assert await props(store) == {"name": "from a-1"}, "a stored winner is compared by bytes"


async def test_given_a_newer_value_when_an_older_event_arrives_late_then_it_never_overwrites(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="new", ts_us=9 * S, name="new")])

    late = await store.apply([event(event_id="old", ts_us=3 * S, name="old")])

    assert await props(store) == {"name": "new"}
    assert await versions(store) == {"name": (9 * S, "new")}
    assert (late.applied, late.superseded, late.written) == (1, 1, 0)


async def test_given_an_older_event_with_two_properties_then_only_the_one_not_held_newer_is_set(
    store: ProfileStore,
) -> None:
    """LWW is per property, not per contact: an old event still sets what nobody set later."""
    await store.apply([event(event_id="new", ts_us=9 * S, name="new")])

    result = await store.apply([event(event_id="old", ts_us=3 * S, name="old", city="Oslo")])

    assert await props(store) == {"city": "Oslo", "name": "new"}
    assert await versions(store) == {"city": (3 * S, "old"), "name": (9 * S, "new")}
    assert (result.applied, result.superseded) == (1, 1)
    found = await store.get_contact("acme", "c1")
    assert found is not None and found.updated_us == 9 * S


async def test_given_one_batch_setting_a_property_twice_then_the_newer_wins_and_one_is_superseded(
    store: ProfileStore,
) -> None:
    result = await store.apply(
        [
            event(event_id="e2", ts_us=2 * S, name="second"),
            event(event_id="e1", ts_us=1 * S, name="first"),
        ]
    )

    assert await props(store) == {"name": "second"}
    assert (result.applied, result.superseded) == (2, 1)


async def test_given_a_superseded_write_then_it_costs_no_store_write_and_the_row_keeps_its_version(
    backend: StoreBackend,
) -> None:
    store = backend.store
    await store.apply([event(event_id="new", ts_us=9 * S, name="new", city="Oslo")])
    before = await store.get_contact("acme", "c1")

    if isinstance(store, SqliteStore):
        row_before = sqlite_property_row(store, "acme", "c1", "name")
        with counting_profile_writes(store) as writes:
            result = await store.apply([event(event_id="old", ts_us=3 * S, name="old")])
        assert writes == {}, "a superseded update must not touch the profile tables"
        assert (
            sqlite_property_row(store, "acme", "c1", "name") == row_before == ["new", 9 * S, "new"]
        )
    else:
        result = await store.apply([event(event_id="old", ts_us=3 * S, name="old")])

    assert (result.applied, result.superseded, result.written) == (1, 1, 0)
    assert await store.get_contact("acme", "c1") == before


# -- null unsets ---------------------------------------------------------------------------------


async def test_given_a_property_when_null_arrives_then_it_is_unset_and_an_older_set_loses(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e1", ts_us=1 * S, name="Ann", city="Oslo")])

    await store.apply([event(event_id="e3", ts_us=3 * S, name=None)])
    assert await props(store) == {"city": "Oslo"}
    assert await versions(store) == {"city": (1 * S, "e1")}

    # The tombstone keeps version (3 s, e3): a set at 2 s arriving late stays unset.
    late = await store.apply([event(event_id="e2", ts_us=2 * S, name="late")])
    assert await props(store) == {"city": "Oslo"}
    assert late.superseded == 1
    assert late.written == 0

    # A set newer than the tombstone sets it again.
    await store.apply([event(event_id="e4", ts_us=4 * S, name="Cleo")])
    assert await props(store) == {"city": "Oslo", "name": "Cleo"}
    assert await versions(store) == {"city": (1 * S, "e1"), "name": (4 * S, "e4")}


async def test_given_null_before_any_value_then_an_older_set_arriving_later_stays_unset(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e5", ts_us=5 * S, name=None, city="Oslo")])
    await store.apply([event(event_id="e4", ts_us=4 * S, name="too old")])

    assert await props(store) == {"city": "Oslo"}


async def test_given_only_nulls_then_the_contact_exists_with_no_properties(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e1", ts_us=1 * S, name=None)])

    found = await store.get_contact("acme", "c1")
    assert found is not None
    assert (found.properties, found.versions, found.updated_us) == ({}, {}, 1 * S)


# -- delete --------------------------------------------------------------------------------------


async def test_given_properties_around_a_delete_then_only_those_at_or_below_its_time_are_removed(
    store: ProfileStore,
) -> None:
    await store.apply(
        [
            event(event_id="e1", ts_us=1 * S, old="gone"),
            event(event_id="e3", ts_us=3 * S, new="kept"),
        ]
    )

    await store.apply([event(event_id="d2", ts_us=2 * S, kind="delete")])

    assert await props(store) == {"new": "kept"}
    assert await versions(store) == {"new": (3 * S, "e3")}


async def test_given_a_property_set_at_the_delete_time_then_the_event_id_decides_if_it_is_removed(
    store: ProfileStore,
) -> None:
    await store.apply(
        [
            event(event_id="a", ts_us=5 * S, below="gone"),
            event(event_id="c", ts_us=5 * S, above="kept"),
        ]
    )

    await store.apply([event(event_id="b", ts_us=5 * S, kind="delete")])

    assert await props(store) == {"above": "kept"}


async def test_given_a_deleted_contact_when_an_older_update_arrives_then_it_does_not_resurrect(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e1", ts_us=1 * S, name="Ann")])
    await store.apply([event(event_id="d5", ts_us=5 * S, kind="delete")])
    assert await store.get_contact("acme", "c1") is None

    late = await store.apply([event(event_id="e3", ts_us=3 * S, name="late", city="Oslo")])

    assert await store.get_contact("acme", "c1") is None
    assert (late.applied, late.superseded) == (1, 2)


async def test_given_a_deleted_contact_when_an_older_update_arrives_then_it_costs_no_store_write(
    backend: StoreBackend, request: pytest.FixtureRequest
) -> None:
    """SPEC 3: writes that lose cost no store write — also when they lose to a delete."""
    store = backend.store
    await store.apply([event(event_id="e1", ts_us=1 * S, name="Ann")])
    await store.apply([event(event_id="d5", ts_us=5 * S, kind="delete")])

    if isinstance(store, SqliteStore):
        with counting_profile_writes(store) as writes:
            late = await store.apply([event(event_id="e3", ts_us=3 * S, name="late")])
        assert writes == {}, "an update that lost to the delete must not touch the profile tables"
    else:
        late = await store.apply([event(event_id="e3", ts_us=3 * S, name="late")])

    assert (late.superseded, late.written) == (1, 0)


async def test_given_a_deleted_contact_when_a_newer_update_arrives_then_the_contact_is_new(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e1", ts_us=1 * S, name="Ann", city="Oslo")])
    await store.apply([event(event_id="d5", ts_us=5 * S, kind="delete")])

    await store.apply([event(event_id="e7", ts_us=7 * S, name="Bea")])

    found = await store.get_contact("acme", "c1")
    assert found == Contact("c1", {"name": "Bea"}, {"name": (7 * S, "e7")}, 7 * S)


async def test_given_a_delete_that_arrives_before_the_updates_it_covers_then_they_never_appear(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="d5", ts_us=5 * S, kind="delete")])
    assert await store.get_contact("acme", "c1") is None

    await store.apply([event(event_id="e1", ts_us=1 * S, name="Ann")])
    await store.apply([event(event_id="e9", ts_us=9 * S, city="Oslo")])

    assert await props(store) == {"city": "Oslo"}


async def test_given_two_deletes_then_the_newest_one_counts_whatever_their_order(
    store: ProfileStore,
) -> None:
    await store.apply(
        [event(event_id="e1", ts_us=1 * S, a=1), event(event_id="e3", ts_us=3 * S, b=3)]
    )
    await store.apply([event(event_id="d4", ts_us=4 * S, kind="delete")])
    await store.apply([event(event_id="d2", ts_us=2 * S, kind="delete")])

    await store.apply([event(event_id="e35", ts_us=3 * S + 5, c="older than d4")])
    assert await store.get_contact("acme", "c1") is None

    await store.apply([event(event_id="e5", ts_us=5 * S, d="newer")])
    assert await props(store) == {"d": "newer"}


async def test_given_one_batch_with_updates_and_a_delete_then_the_result_is_the_same_as_one_by_one(
    store: ProfileStore,
) -> None:
    await store.apply(
        [
            event(event_id="e6", ts_us=6 * S, after="kept"),
            event(event_id="d4", ts_us=4 * S, kind="delete"),
            event(event_id="e2", ts_us=2 * S, before="gone", after="older"),
        ]
    )

    assert await props(store) == {"after": "kept"}
    assert await versions(store) == {"after": (6 * S, "e6")}


# -- get_contact ---------------------------------------------------------------------------------


async def test_given_no_events_for_a_contact_then_get_contact_is_none(store: ProfileStore) -> None:
    await store.apply([event(contact_id="someone-else", name="x")])

    assert await store.get_contact("acme", "nobody") is None


async def test_given_only_a_delete_for_a_contact_then_get_contact_is_none(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="d1", kind="delete")])

    assert await store.get_contact("acme", "c1") is None


# -- paging through contacts (export) ------------------------------------------------------------


async def test_given_contacts_then_pages_hold_each_existing_one_once_in_contact_id_order(
    store: ProfileStore,
) -> None:
    """Pages of 4 over 20 contacts of which 7 are deleted (c00-c05: the first page holds only
    deleted ones), beside another workspace's contacts with the same ids."""
    ids = [f"c{i:02d}" for i in range(20)]
    deleted = {*ids[:6], "c13"}
    await store.apply([event(contact_id=i, event_id=f"u-{i}", ts_us=S, n=int(i[1:])) for i in ids])
    await store.apply(
        [event(contact_id=i, event_id=f"o-{i}", workspace="other", n=-1) for i in ids[:10]]
    )
    await store.apply(
        [event(contact_id=i, event_id=f"d-{i}", ts_us=2 * S, kind="delete") for i in deleted]
    )

    pages: list[list[Contact]] = []
    after: str | None = None
    while True:
        page, after = await store.contacts_page("acme", after, 4)
        pages.append(page)
        if after is None:
            break

    exported = [c for page in pages for c in page]
    assert [c.contact_id for c in exported] == [i for i in ids if i not in deleted]
    assert exported == [await store.get_contact("acme", c.contact_id) for c in exported]
    assert [c.properties["n"] for c in exported] == [int(c.contact_id[1:]) for c in exported]
    assert [[c.contact_id for c in page] for page in pages[:2]] == [[], ["c06", "c07"]]
    assert len(pages) == 6  # five full pages; the sixth, empty, tells the end
    assert await store.count_contacts("acme") == 20
    assert await store.count_contacts("other") == 10
    assert await store.contacts_page("nobody", None, 4) == ([], None)


# -- idempotency ---------------------------------------------------------------------------------


async def test_given_the_same_event_id_twice_in_one_batch_then_it_is_applied_once(
    store: ProfileStore,
) -> None:
    first = event(event_id="e1", ts_us=1 * S, name="first")
    replay = event(event_id="e1", ts_us=9 * S, name="replayed payload")

    result = await store.apply([first, first, replay])

    assert (result.applied, result.duplicates) == (1, 2)
    assert await props(store) == {"name": "first"}
    assert len(await store.history("acme", "c1", None, 10)) == 1


async def test_given_an_applied_event_when_it_is_applied_again_then_it_is_a_duplicate(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e1", ts_us=1 * S, name="first")])
    contact = await store.get_contact("acme", "c1")

    again = await store.apply(
        [
            event(event_id="e1", ts_us=9 * S, name="changed"),
            event(event_id="e2", ts_us=2 * S, city="Oslo"),
        ]
    )

    assert (again.applied, again.duplicates) == (1, 1)
    assert await props(store) == {"city": "Oslo", "name": "first"}
    assert contact is not None

    only_duplicate = await store.apply([event(event_id="e1", ts_us=1 * S, name="first")])
    assert (only_duplicate.applied, only_duplicate.duplicates, only_duplicate.written) == (0, 1, 0)


async def test_given_a_delete_applied_twice_then_it_is_a_duplicate_the_second_time(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e1", ts_us=1 * S, name="Ann")])
    delete = event(event_id="d2", ts_us=2 * S, kind="delete")

    assert (await store.apply([delete])).applied == 1
    again = await store.apply([delete])

    assert (again.applied, again.duplicates, again.written) == (0, 1, 0)


async def test_given_every_id_hashes_alike_then_sqlite_dedupe_history_and_lookups_stay_exact(
    sqlite_store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQLite events indexes hold hashes of the ids; a shared hash must never merge two ids."""
    store = sqlite_store_backend.store
    monkeypatch.setattr(sqlite_module, "_key", lambda workspace, name: 42)
    await store.apply([event(event_id="a", ts_us=1 * S, x=1), event("c2", "b", 2 * S, y=2)])
    await store.record_failure(event(event_id="a", ts_us=9 * S, x=9), "already applied")
    await store.record_failure(event(event_id="f", ts_us=3 * S, x=3), "cannot apply")

    again = await store.apply(
        [event(event_id="a", ts_us=5 * S, x=5), event(event_id="b", workspace="globex", z=1)]
    )

    assert (again.applied, again.duplicates) == (1, 1)
    assert await props(store) == {"x": 1}
    assert [r.event.event_id for r in await store.history("acme", "c1", None, 10)] == ["f", "a"]
    assert [r.event.event_id for r in await store.history("acme", "c2", None, 10)] == ["b"]
    found = await store.get_event("acme", "a")
    assert found is not None and (found.status, found.event.ts_us) == ("duplicate", 1 * S)
    failed = await store.get_event("acme", "f")
    assert failed is not None and failed.status == "failed"
    assert await store.get_event("acme", "zz") is None


async def test_given_ids_made_in_time_order_then_their_sqlite_index_keys_rise_with_time(
    sqlite_store_backend: StoreBackend, tmp_path: Path
) -> None:
    """Ids profilehook makes begin with their time, and so do their index keys: each apply
    appends to the index instead of dirtying pages all over it (the applier's main cost)."""
    store = sqlite_store_backend.store
    ids: list[str] = []
    for _ in range(3):
        ids += [new_event_id() for _ in range(20)]
        time.sleep(0.003)
    random.Random(1).shuffle(ids)  # applied in any order: the keys follow the ids' time
    await store.apply([event(event_id=i, ts_us=n * S, x=n) for n, i in enumerate(ids)])

    with contextlib.closing(sqlite3.connect(tmp_path / "profiles.sqlite3")) as conn:
        keyed = dict(conn.execute("SELECT event_id, id_key FROM events").fetchall())
    by_time = sorted(ids)  # the first 48 bits are the time, in hex: text order is time order
    assert [keyed[i] >> 15 for i in by_time] == sorted(keyed[i] >> 15 for i in ids)
    assert len({keyed[i] >> 15 for i in ids}) >= 3
    found = await store.get_event("acme", ids[0])
    assert found is not None and found.status == "applied"


async def test_given_two_uuid_ids_with_one_index_key_then_lookups_stay_exact(
    sqlite_store_backend: StoreBackend,
) -> None:
    """A real collision, found by search: two ids of one millisecond whose hashed bits match."""
    store = sqlite_store_backend.store
    seen: dict[int, str] = {}
    for n in range(100_000):
        candidate = f"0190a0b0-c0d0-4000-8000-{n:012x}"
        key = sqlite_module._id_key("acme", candidate)
        if key in seen:
            one, two = seen[key], candidate
            break
        seen[key] = candidate
    await store.apply([event(event_id=one, ts_us=1 * S, x=1)])

    again = await store.apply([event(event_id=one, ts_us=5 * S, x=5), event(event_id=two, y=2)])

    assert (again.applied, again.duplicates) == (1, 1)
    assert await props(store) == {"x": 1, "y": 2}
    found = await store.get_event("acme", two)
    assert found is not None and found.event.event_id == two


async def test_given_a_schema_2_store_file_then_opening_it_rekeys_its_events(
    tmp_path: Path,
) -> None:
    """Schema 2 keyed every id by a hash; schema 3 keys UUID-form ids by their time. Opening an
    older file migrates it in place: its events are still found and still deduplicated."""
    path = tmp_path / "profiles.sqlite3"
    made, plain = new_event_id(), "plain-id"
    store = SqliteStore(path)
    await store.open()
    await store.apply([event(event_id=made, ts_us=1 * S, x=1), event(event_id=plain, y=2)])
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # what schema 2 wrote
        conn.create_function("hash_key", 2, sqlite_module._key)
        conn.execute("UPDATE events SET id_key = hash_key(workspace, event_id)")
        conn.execute("PRAGMA user_version = 2")
        conn.commit()

    store = SqliteStore(path)
    await store.open()
    try:
        found = await store.get_event("acme", made)
        again = await store.apply([event(event_id=made, ts_us=9 * S, x=9)])
        assert found is not None and found.event.event_id == made
        assert (again.applied, again.duplicates) == (0, 1)
        assert await props(store) == {"x": 1, "y": 2}
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION


async def test_given_many_event_ids_then_dedupe_and_lww_hold_beyond_one_bound_query(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the per-query bound made tiny, ids and names are looked up in several chunks."""
    monkeypatch.setattr(sqlite_module, "MAX_BOUND_NAMES", 2)
    first = [event(event_id=f"e{i}", ts_us=i * S, **{f"p{i % 4}": i}) for i in range(7)]
    await store.apply(first)

    again = await store.apply([*first, event(event_id="late", ts_us=0, p0=-1, p1=-1, p2=-1, p3=-1)])

    assert (again.applied, again.duplicates, again.superseded) == (1, 7, 4)
    assert await props(store) == {"p0": 4, "p1": 5, "p2": 6, "p3": 3}


# -- history and events --------------------------------------------------------------------------


async def test_given_events_in_any_order_then_history_is_newest_first_and_pages_with_before(
    store: ProfileStore,
) -> None:
    times = [(3 * S, "b"), (1 * S, "y"), (3 * S, "a"), (2 * S, "z"), (5 * S, "c")]
    events = [event(event_id=i, ts_us=t, n=t) for t, i in times]
    await store.apply(events)
    await store.apply([event(contact_id="other", event_id="x", ts_us=4 * S, n=0)])

    pages: list[list[Version]] = []
    before: Version | None = None
    while page := await store.history("acme", "c1", before, 2):
        pages.append([r.event.version for r in page])
        before = page[-1].event.version

    assert pages == [
        [(5 * S, "c"), (3 * S, "b")],
        [(3 * S, "a"), (2 * S, "z")],
        [(1 * S, "y")],
    ]
    records = await store.history("acme", "c1", None, 10)
    assert {r.status for r in records} == {"applied"}
    assert all(r.applied_us is not None for r in records)
    assert records[0].event == events[-1], "history keeps the event exactly as applied"


async def test_given_a_contact_without_events_then_its_history_is_empty(
    store: ProfileStore,
) -> None:
    await store.apply([event(contact_id="c1", name="x")])

    assert await store.history("acme", "c2", None, 10) == []
    assert await store.history("other-workspace", "c1", None, 10) == []


async def test_given_events_then_get_event_tells_applied_failed_or_unknown(
    store: ProfileStore,
) -> None:
    applied = event(event_id="ok", name="x")
    poison = event(event_id="bad", contact_id="c2", name="y")
    await store.apply([applied])

    await store.record_failure(poison, "ValueError: cannot apply")

    ok = await store.get_event("acme", "ok")
    assert ok is not None
    assert (ok.event, ok.status, ok.error) == (applied, "applied", None)
    assert ok.applied_us is not None
    bad = await store.get_event("acme", "bad")
    assert bad is not None
    assert (bad.event, bad.status, bad.error) == (poison, "failed", "ValueError: cannot apply")
    assert await store.get_event("acme", "never-sent") is None
    assert await store.get_event("globex", "ok") is None
    assert await store.get_contact("acme", "c2") is None, "a failed event changes no profile"


async def test_given_an_event_accepted_again_then_its_status_is_duplicate_and_the_first_stays(
    store: ProfileStore,
) -> None:
    first = event(event_id="e1", ts_us=1 * S, name="first")
    await store.apply([first])
    applied = await store.get_event("acme", "e1")
    assert applied is not None and applied.status == "applied"

    await store.apply([first])  # the log delivering the same acceptance again (after a crash)
    redelivered = await store.get_event("acme", "e1")
    assert redelivered == applied, "a redelivery of one acceptance is not a duplicate"

    again = msgspec.structs.replace(first, received_us=first.received_us + 1, properties={"x": 2})
    await store.apply([again])

    found = await store.get_event("acme", "e1")
    assert found is not None
    assert (found.status, found.event, found.applied_us) == ("duplicate", first, applied.applied_us)
    assert [r.status for r in await store.history("acme", "c1", None, 10)] == ["duplicate"]
    assert await props(store) == {"name": "first"}
    await store.rebuild()
    assert await props(store) == {"name": "first"}, "a duplicate's first copy was applied"


async def test_given_two_copies_in_one_batch_then_the_first_is_applied_and_marked_duplicate(
    store: ProfileStore,
) -> None:
    one = event(event_id="e1", ts_us=1 * S, name="one")
    other = msgspec.structs.replace(one, received_us=one.received_us + 1, properties={"n": 2})
    await store.apply([one, other, event(event_id="e2", ts_us=2 * S, city="Oslo")])

    found, single = await store.get_event("acme", "e1"), await store.get_event("acme", "e2")

    assert found is not None and (found.status, found.event) == ("duplicate", one)
    assert single is not None and single.status == "applied"


async def test_given_a_failed_event_accepted_again_then_it_stays_failed(
    store: ProfileStore,
) -> None:
    poison = event(event_id="bad", name="x")
    await store.record_failure(poison, "cannot apply")

    await store.apply([msgspec.structs.replace(poison, received_us=poison.received_us + 1)])

    found = await store.get_event("acme", "bad")
    assert found is not None and (found.status, found.error) == ("failed", "cannot apply")


async def test_given_a_deleted_contact_then_history_hides_its_events_up_to_the_delete(
    store: ProfileStore,
) -> None:
    await store.apply(
        [
            event(event_id="e1", ts_us=1 * S, email="ann@example.com"),
            event(event_id="e3", ts_us=3 * S, name="Ann"),
            event(contact_id="c2", event_id="o1", ts_us=1 * S, name="Bob"),
        ]
    )
    await store.apply([event(event_id="z3", ts_us=3 * S, kind="delete")])  # covers e3: e3 < z3
    await store.apply([event(event_id="e5", ts_us=5 * S, name="Cleo")])
    await store.apply([event(event_id="e2", ts_us=2 * S, email="late@example.com")])
    await store.apply([event(event_id="d1", ts_us=1 * S, kind="delete")])  # older: no change

    shown = [r.event.event_id for r in await store.history("acme", "c1", None, 10)]
    assert shown == ["e5"]
    assert [r.event.event_id for r in await store.history("acme", "c2", None, 10)] == ["o1"]
    await store.rebuild()
    assert [r.event.event_id for r in await store.history("acme", "c1", None, 10)] == ["e5"]

    await store.apply([event(event_id="d9", ts_us=9 * S, kind="delete")])
    assert await store.history("acme", "c1", None, 10) == []


# -- workspaces ----------------------------------------------------------------------------------


async def test_given_the_same_contact_and_event_ids_in_two_workspaces_then_they_are_separate(
    store: ProfileStore,
) -> None:
    result = await store.apply(
        [
            event(workspace="acme", event_id="e1", ts_us=1 * S, name="Ann"),
            event(workspace="globex", event_id="e1", ts_us=1 * S, name="Gus"),
        ]
    )
    await store.apply([event(workspace="globex", event_id="d2", ts_us=2 * S, kind="delete")])

    assert (result.applied, result.duplicates) == (2, 0)
    assert await props(store, workspace="acme") == {"name": "Ann"}
    assert await store.get_contact("globex", "c1") is None
    acme_event = await store.get_event("acme", "e1")
    assert acme_event is not None and acme_event.event.properties == {"name": "Ann"}
    assert await store.history("globex", "c1", None, 10) == []  # deleted: its data is gone
    assert [r.event.event_id for r in await store.history("acme", "c1", None, 10)] == ["e1"]


# -- rebuild -------------------------------------------------------------------------------------


def mixed_events(seed: int) -> list[Event]:
    rng = random.Random(seed)
    events = []
    for i in range(60):
        contact = rng.choice(["c1", "c2", "c3", "c4"])
        ts = rng.randint(1, 8) * S
        if rng.random() < 0.12:
            events.append(event(contact_id=contact, event_id=f"d{i}", ts_us=ts, kind="delete"))
            continue
        values = {
            name: rng.choice([None, i, f"v{i}", {"nested": [i, "ü"]}])
            for name in rng.sample(["a", "b", "c", "d"], rng.randint(0, 3))
        }
        events.append(event(contact_id=contact, event_id=f"e{i:02d}", ts_us=ts, **values))
    return events


async def snapshot(store: ProfileStore, contacts: list[str]) -> dict[str, Contact | None]:
    return {c: await store.get_contact("acme", c) for c in contacts}


async def test_given_applied_events_when_rebuilt_then_every_contact_is_exactly_the_same(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks make the SQLite rebuild replay in several passes, as a big log does.
    monkeypatch.setattr(sqlite_module, "REBUILD_CHUNK_EVENTS", 7)
    events = mixed_events(seed=3)
    shuffled = random.Random(4).sample(events, len(events))
    for start in range(0, len(shuffled), 9):
        await store.apply(shuffled[start : start + 9] + shuffled[start : start + 2])
    await store.record_failure(event(contact_id="c5", event_id="poison", name="x"), "boom")
    contacts = ["c1", "c2", "c3", "c4", "c5"]
    before = await snapshot(store, contacts)
    calls: list[tuple[int, int]] = []

    replayed = await store.rebuild(lambda done, total: calls.append((done, total)))

    assert await snapshot(store, contacts) == before
    assert replayed == len(events)
    assert calls, "progress must be reported"
    assert calls[-1] == (len(events), len(events))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert {total for _, total in calls} == {len(events)}
    assert before["c5"] is None
    assert sum(c is not None for c in before.values()) >= 2, (
        "the scenario should keep some contacts"
    )


async def test_given_a_rebuilt_store_then_later_events_still_follow_the_rules(
    store: ProfileStore,
) -> None:
    await store.apply([event(event_id="e5", ts_us=5 * S, name="Ann")])
    await store.rebuild()

    await store.apply([event(event_id="e3", ts_us=3 * S, name="older")])
    assert await props(store) == {"name": "Ann"}
    assert (await store.apply([event(event_id="e5", ts_us=5 * S, name="Ann")])).duplicates == 1


# -- PostgreSQL migrations -----------------------------------------------------------------------


async def with_operation_columns(old: Any) -> None:
    """The columns today's ``apply`` reads (migrations 9 and 10), on a schema of before them:
    the tests of older migrations apply events with today's code (those migrations keep them)."""
    await old._run(
        lambda conn: conn.execute(
            "ALTER TABLE contacts ADD COLUMN IF NOT EXISTS ops_ts_us bigint,"
            " ADD COLUMN IF NOT EXISTS ops_event_id text, ADD COLUMN IF NOT EXISTS marks bytea"
        )
    )


async def _before_segments(*_: Any) -> dict[Any, Any]:
    """What a version from before segments did (there was no segments table to keep)."""
    return {}


async def _before_segment_rules(*_: Any) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """... nor any segment to read."""
    return {}, {}


async def _before_erasures(conn: Any, events: Any) -> dict[Any, Any]:
    """The code of a schema before erasures (migration 6) checked none."""
    return {}


async def _before_changes(conn: Any, changes: Any, applied_us: int) -> None:
    """The code of a schema before the change feed recorded no changes."""


async def _before_purge_mark(conn: Any) -> None:
    """The code of a schema before the purge mark (history_purged) read none."""


async def test_given_values_stored_as_jsonb_when_migrated_then_they_are_exact_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Schema 2 kept values as jsonb, which changed numbers and key order; opening the store
    with schema 3 restores each value from the event that set it."""
    require_server(POSTGRES_URL, 5432)
    from profilehook.stores import postgres as postgres_module
    from profilehook.stores import postgres_segments

    schema = unique_schema()
    try:
        with monkeypatch.context() as old_code:
            old_code.setattr(postgres_module, "MIGRATIONS", postgres_module.MIGRATIONS[:2])
            old_code.setattr(postgres_module, "_erased_contacts", _before_erasures)
            old_code.setattr(postgres_segments, "keep", _before_segments)
            old_code.setattr(postgres_segments, "rules", _before_segment_rules)
            old_code.setattr(postgres_module, "_insert_changes", _before_changes)
            old_code.setattr(postgres_module, "_purged_upto", _before_purge_mark)
            old = postgres_module.PostgresStore(postgres_url(schema))
            await old.open()
            await with_operation_columns(old)
            await old.apply([event(event_id="e1", ts_us=1 * S, **EXACT_VALUES)])
            await old.apply([event(contact_id="c2", event_id="e2", ts_us=1 * S, n=1e20)])
            await old.apply([event(contact_id="c2", event_id="e3", ts_us=2 * S, n=None)])
            changed = await props(old)
            await old.close()
        assert json_texts(changed) != json_texts(EXACT_VALUES), "schema 2 changed them"

        store = postgres_module.PostgresStore(postgres_url(schema))
        await store.open()
        try:
            assert json_texts(await props(store)) == json_texts(EXACT_VALUES)
            assert await props(store, "c2") == {}
            await store.apply([event(event_id="e4", ts_us=3 * S, e_negative_zero=-0.0)])
            assert json_texts(await props(store)) == json_texts(EXACT_VALUES)
        finally:
            await store.close()
    finally:
        drop_schema(schema)


async def test_given_ties_decided_by_an_en_us_collation_when_migrated_then_bytes_decide(
    icu_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before migration 5, separate batches let en-US decide a tie ('B-1' won); opening the
    store with it makes the id columns bytewise and rebuilds the profiles: 'a-1' wins."""
    from profilehook.stores import postgres as postgres_module
    from profilehook.stores import postgres_segments

    url = f"{icu_database_url}?schema={unique_schema()}"
    with monkeypatch.context() as old_code:
        old_code.setattr(postgres_module, "MIGRATIONS", postgres_module.MIGRATIONS[:4])
        old_code.setattr(postgres_module, "_erased_contacts", _before_erasures)
        old_code.setattr(postgres_segments, "keep", _before_segments)
        old_code.setattr(postgres_segments, "rules", _before_segment_rules)
        old_code.setattr(postgres_module, "_insert_changes", _before_changes)
        old_code.setattr(postgres_module, "_purged_upto", _before_purge_mark)
        old = postgres_module.PostgresStore(url)
        await old.open()
        await with_operation_columns(old)
        for event_id in ("a-1", "B-1"):
            await old.apply([event(event_id=event_id, ts_us=7 * S, name=f"from {event_id}")])
        await old.close()
    # What the comparisons of schema 4 left there under en-US (today's SQL names "C" itself).
    import psycopg

    with psycopg.connect(old.conninfo) as conn:
        conn.execute(f"UPDATE {old.schema}.properties SET event_id = 'B-1', value = '\"from B-1\"'")

    store = postgres_module.PostgresStore(url)
    await store.open()
    try:
        assert await versions(store) == {"name": (7 * S, "a-1")}
        await store.apply([event(event_id="A-1", ts_us=7 * S, name="from A-1")])
        assert await props(store) == {"name": "from a-1"}
    finally:
        await store.close()
