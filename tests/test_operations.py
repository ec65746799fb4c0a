"""SPEC 2.7 and 3.1: property operations (set_once, add, append, remove, unset) fold in version
order, whatever order the events arrive in.

Hypothesis draws events with random operations over a few contacts and properties, delivers
them in any order, duplicated, in any batches (and through the applier and the log with a crash
in the middle), into the real memory, SQLite and PostgreSQL stores; every contact must equal a
reference fold written from the table of SPEC 3.1 alone (sort by version, apply), and so must
``rebuild``. Then one contract test per row of the table, on every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profilehook import constants as c
from profilehook.applier import Applier
from profilehook.backfill import import_jsonl
from profilehook.events import Event, Version, decode_event, encode_event
from profilehook.metrics import Metrics
from profilehook.queues.memory import MemoryQueue
from profilehook.stores.base import Contact, ContactState, Store, plan_contact
from profilehook.stores.memory import MemoryStore
from profilehook.stores.sqlite import SqliteStore
from tests.support import (
    POSTGRES_URL,
    Crash,
    crashes,
    drop_schema,
    examples,
    postgres_url,
    require_server,
    resumed_after_a_crash,
    unique_schema,
    wait_until,
)

S = 1_000_000
WORKSPACE = "acme"
CONTACTS = ("c1", "c2")
NAMES = ("a", "b", "c")
# With the values Python's == takes for one another (1 == 1.0 == True, 0 == -0.0 == False,
# [1] == [True], {"k": 1} == {"k": 1.0}): each is its own JSON value (``_key``), as an item
# of a list too (a remove of 1 keeps true, an append of [1] beside [true] keeps both).
SCALARS: tuple[Any, ...] = ("x", 7, 2.5, True, False, -0.0, [1, "x"], [True, "x"], {"k": 1})
ITEMS: tuple[Any, ...] = ("x", "y", 1, True, 1.0, 0, False, [1], [True], {"k": 1}, {"k": 1.0})
NUMBERS: tuple[Any, ...] = (1, -2, 0, 0.5, 3, 0.0, -0.0)
OPERATIONS = ("set", "unset", "set_once", "add", "append", "remove")


# -- the reference: SPEC 3.1's table, applied in version order -----------------------------------


def _key(value: Any) -> bytes:
    """A value's identity as JSON: 1, 1.0 and true differ."""
    return msgspec.json.encode(value) + type(value).__name__.encode()


def reference(events: Sequence[Event]) -> dict[str, Contact | None]:
    unique = sorted({e.event_id: e for e in events}.values(), key=lambda e: e.version)
    found: dict[str, Contact | None] = {}
    for contact_id in CONTACTS:
        profile: dict[str, tuple[Any, Version]] = {}
        last: Version | None = None
        deleted: Version | None = None
        for event in unique:
            if event.contact_id != contact_id:
                continue
            if event.kind == "delete":
                profile, deleted = {}, event.version
                continue
            last = event.version
            for name, arg in event.properties.items():
                operation = (event.ops or {}).get(name, "set")
                before = profile.get(name)
                after = reference_operation(operation, None if before is None else before[0], arg)
                if after is None:
                    profile.pop(name, None)
                elif operation == "set" or before is None or _key(after) != _key(before[0]):
                    profile[name] = (after, event.version)
        if last is None or (deleted is not None and last < deleted):
            found[contact_id] = None
            continue
        found[contact_id] = Contact(
            contact_id,
            {n: v for n, (v, _) in sorted(profile.items())},
            {n: at for n, (_, at) in sorted(profile.items())},
            last[0],
        )
    return found


def reference_operation(operation: str, value: Any, arg: Any) -> Any:
    """The table's row for ``operation``: the new value, None when absent."""
    if operation == "set":
        return arg
    if operation == "set_once":
        return arg if value is None else value
    if operation == "add":
        if value is None:
            return arg
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        return value + arg
    if operation == "append":
        items = [] if value is None else value if isinstance(value, list) else [value]
        result = list(items)
        for item in arg:
            if _key(item) not in {_key(x) for x in result}:
                result.append(item)
        return result
    if operation == "remove":
        gone = {_key(x) for x in arg}
        if value is None:
            return None
        if isinstance(value, list):
            return [x for x in value if _key(x) not in gone]
        return None if _key(value) in gone else value
    raise AssertionError(operation)


def assert_same(found: dict[str, Contact | None], expected: Any, how: str) -> None:
    assert found == expected, how
    for key, contact in found.items():
        if contact is not None:
            exact = msgspec.json.encode(contact.properties, order="sorted")
            assert exact == msgspec.json.encode(expected[key].properties, order="sorted"), how


async def assert_feed_replays(
    store: Store, workspace: str, expected: dict[str, Contact | None], how: str
) -> None:
    """The change feed tells every change of a value (SPEC 2.10), as JSON sees it: each
    change's ``old`` is, exactly, the value the changes before it left, and the changes in
    feed order leave the profile. (Python's == would let 1 -> true or 0.0 -> -0.0 go
    unrecorded.)"""
    replayed: dict[str, dict[str, Any]] = {}
    changes = await store.read_changes(workspace, None, 10_000)
    for change in changes:
        profile = replayed.setdefault(change.contact_id, {})
        for name, p in change.body.properties.items():
            assert _key(profile.get(name)) == _key(p.old), (how, change)
            assert _key(p.old) != _key(p.new), (how, change)
            if p.new is None:
                profile.pop(name)
            else:
                profile[name] = p.new
    for contact_id, contact in expected.items():
        found = replayed.get(contact_id, {})
        want = {} if contact is None else contact.properties
        assert {n: _key(v) for n, v in found.items()} == {n: _key(v) for n, v in want.items()}, (
            f"{how}: the change feed replayed"
        )


async def actual(store: Store, workspace: str = WORKSPACE) -> dict[str, Contact | None]:
    return {c: await store.get_contact(workspace, c) for c in CONTACTS}


# -- scenarios -----------------------------------------------------------------------------------


def event(
    event_id: str,
    ts_s: int,
    contact_id: str = "c1",
    kind: str = "update",
    **operations: dict[str, Any] | list[str],
) -> Event:
    """An event as the native API makes it: ``set={...}``, ``add={...}``, ``unset=[...]``…"""
    properties: dict[str, Any] = {}
    ops: dict[str, Any] = {}
    for operation, named in operations.items():
        if operation == "unset":
            properties.update(dict.fromkeys(named))
            continue
        assert isinstance(named, dict)
        properties.update(named)
        if operation != "set":
            ops.update(dict.fromkeys(named, operation))
    return Event(
        WORKSPACE,
        event_id,
        contact_id,
        ts_s * S,
        properties,
        kind=kind,  # type: ignore[arg-type]
        ops=ops or None,
    )


@st.composite
def an_event(draw: st.DrawFn, event_id: str) -> Event:
    contact_id = draw(st.sampled_from(CONTACTS))
    ts_s = draw(st.integers(1, 5))
    if draw(st.integers(0, 7)) == 0:
        return event(event_id, ts_s, contact_id, kind="delete")
    operations: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3)):
        operation = draw(st.sampled_from(OPERATIONS))
        if operation == "unset":
            operations.setdefault("unset", []).append(name)
            continue
        if operation == "add":
            arg = draw(st.sampled_from(NUMBERS))
        elif operation in ("append", "remove"):
            arg = draw(st.lists(st.sampled_from(ITEMS), max_size=3))
        else:
            arg = draw(st.sampled_from(SCALARS + NUMBERS + ITEMS))
        operations.setdefault(operation, {})[name] = arg
    return event(event_id, ts_s, contact_id, **operations)


@dataclass(frozen=True)
class Scenario:
    events: list[Event]
    batches: list[list[Event]]


def split(items: list[Event], cuts: set[int]) -> list[list[Event]]:
    bounds = [0, *sorted(cuts), len(items)]
    return [items[start:end] for start, end in itertools.pairwise(bounds) if end > start]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    ids = draw(
        st.lists(st.text("abyz", min_size=1, max_size=2), min_size=1, max_size=16, unique=True)
    )
    events = [draw(an_event(event_id)) for event_id in ids]
    repeats = draw(st.lists(st.sampled_from(events), max_size=5))
    deliveries = draw(st.permutations(events + repeats))
    cuts = draw(st.sets(st.integers(1, len(deliveries)), max_size=6))
    return Scenario(events, split(deliveries, cuts))


async def deliver(
    store: Store, scenario: Scenario, how: str, workspace: str = WORKSPACE, rebuild: bool = True
) -> None:
    for batch in scenario.batches:
        await store.apply([msgspec.structs.replace(e, workspace=workspace) for e in batch])
    expected = reference(scenario.events)
    assert_same(await actual(store, workspace), expected, f"{how} after apply")
    await assert_feed_replays(store, workspace, expected, how)
    if rebuild:
        await store.rebuild()
        assert_same(await actual(store, workspace), expected, f"{how} after rebuild")


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_given_random_operations_in_any_order_when_applied_to_memory_then_the_fold_of_spec_3_1(
    scenario: Scenario,
) -> None:
    asyncio.run(deliver(MemoryStore(), scenario, "memory"))


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_given_random_operations_in_any_order_when_applied_to_sqlite_then_the_fold_of_spec_3_1(
    scenario: Scenario,
) -> None:
    async def run(data_dir: Path) -> None:
        store = SqliteStore(data_dir / "profiles.sqlite3")
        await store.open()
        try:
            await deliver(store, scenario, "sqlite")
        finally:
            await store.close()

    with tempfile.TemporaryDirectory(prefix="operations-") as data_dir:
        asyncio.run(run(Path(data_dir)))


@pytest.fixture(scope="module")
def postgres_schema() -> Iterator[str]:
    require_server(POSTGRES_URL, 5432)
    schema = unique_schema()
    yield schema
    drop_schema(schema)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=list(HealthCheck))
@given(scenario=scenarios(), rebuild=st.integers(0, 9))
def test_given_random_operations_in_any_order_when_applied_to_postgres_then_the_fold_of_spec_3_1(
    postgres_schema: str, scenario: Scenario, rebuild: int
) -> None:
    from profilehook.stores.postgres import PostgresStore

    async def run() -> None:
        store = PostgresStore(postgres_url(postgres_schema))
        await store.open()
        try:
            # A workspace per example: the schema is shared; rebuild (every contact of every
            # example) now and then.
            workspace = f"w{uuid.uuid4().hex}"
            await deliver(store, scenario, "postgres", workspace, rebuild=rebuild == 0)
        finally:
            await store.close()

    asyncio.run(run())


# -- through the API and the importer (SPEC 2.7) -------------------------------------------------


def body(event_id: str, ts: int, contact_id: str = "u1", **fields: Any) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "event_name": "e",
        "timestamp": ts,
        "event_id": event_id,
        **fields,
    }


def refusals(response: Any) -> list[tuple[tuple[Any, ...], str]]:
    assert response.status_code == 422, response.text
    return sorted((tuple(p["loc"]), p["type"]) for p in response.json()["detail"])


def wait_event(client: Any, auth: dict[str, str], event_id: str) -> dict[str, Any]:
    def fetch() -> Any:
        r = client.get(f"/v1/events/{event_id}", headers=auth)
        return r.json() if r.status_code == 200 and r.json()["status"] == "applied" else None

    found: dict[str, Any] = wait_until(fetch)
    return found


class TestIngesting:
    def test_given_the_spec_example_when_sent_then_each_operation_applies_and_history_shows_them(
        self, client, auth
    ):
        r = client.post(
            "/v1/properties",
            json=body(
                "ev1",
                1672531200,
                user_properties={"plan": "pro", "legacy_score": 3},
                set_once={"first_seen": "2023-01-01"},
                add={"logins": 1, "credits": -2.5},
                append={"tags": ["beta", "mobile"]},
                remove={"old": ["trial"]},
            ),
            headers=auth,
        )
        assert r.status_code == 202, r.text
        r = client.post(
            "/v1/properties",
            json=body("ev2", 1672531201, unset=["legacy_score"], remove={"tags": ["beta"]}),
            headers=auth,
        )
        assert r.status_code == 202, r.text
        seen = wait_event(client, auth, "ev2")
        assert seen["operations"] == {"legacy_score": "unset", "tags": "remove"}
        contact = client.get("/v1/contacts/u1", headers=auth).json()
        assert contact["properties"] == {
            "plan": "pro",
            "first_seen": "2023-01-01",
            "logins": 1,
            "credits": -2.5,
            "tags": ["mobile"],
        }
        assert contact["versions"]["tags"]["event_id"] == "ev2"
        assert contact["versions"]["logins"]["event_id"] == "ev1"
        history = client.get("/v1/contacts/u1/history", headers=auth).json()
        assert [e["operations"] for e in history["events"]][-1]["logins"] == "add"

    def test_given_every_kind_of_mistake_when_sent_then_all_are_listed_in_one_422(
        self, client, auth
    ):
        r = client.post(
            "/v1/properties",
            json=body(
                "bad",
                1672531200,
                user_properties={"plan": "pro"},
                set_once={"plan": "free"},
                add={"n": "1", "flag": True},
                append={"tags": "beta"},
                remove={"tags2": {"a": 1}},
                unset=["ok", 3],
            ),
            headers=auth,
        )
        assert refusals(r) == sorted(
            [
                (("body", "set_once", "plan"), "value_error"),
                (("body", "add", "n"), "float_type"),
                (("body", "add", "flag"), "float_type"),
                (("body", "append", "tags"), "list_type"),
                (("body", "remove", "tags2"), "list_type"),
                (("body", "unset", 1), "string_type"),
            ]
        )
        r = client.post("/v1/properties", json=body("bad2", 1, unset="x"), headers=auth)
        assert refusals(r) == [(("body", "unset"), "list_type")]

    def test_given_more_properties_than_the_limit_across_operations_then_422(self, client, auth):
        half = c.MAX_PROPERTIES_PER_EVENT // 2 + 1
        r = client.post(
            "/v1/properties",
            json=body(
                "big",
                1,
                user_properties={f"p{i}": i for i in range(half)},
                add={f"q{i}": i for i in range(half)},
            ),
            headers=auth,
        )
        assert refusals(r) == [(("body",), "too_long")]

    def test_given_a_batch_with_operations_then_valid_ones_are_accepted_and_bad_ones_listed(
        self, client, auth
    ):
        r = client.post(
            "/v1/properties/batch",
            json={
                "events": [
                    body("b1", 10, add={"n": 2}),
                    body("b2", 11, add={"n": "x"}),
                    body("b3", 12, add={"n": 3}, user_properties={}),
                ]
            },
            headers=auth,
        )
        assert r.status_code == 202, r.text
        assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected", "accepted"]
        wait_event(client, auth, "b3")
        assert client.get("/v1/contacts/u1", headers=auth).json()["properties"] == {"n": 5}

    def test_given_a_late_set_once_and_a_late_add_then_the_profile_is_as_if_in_order(
        self, client, auth
    ):
        """The worked example of the README: newer events first, then two late ones."""
        sent = [
            body("new1", 200, user_properties={"logins": 10}),
            body("new2", 300, set_once={"first_seen": "day 3"}, add={"logins": 1}),
            body("old1", 100, set_once={"first_seen": "day 1"}, add={"logins": 5}),
            body("old2", 250, add={"logins": 100}),
        ]
        for item in sent:
            assert client.post("/v1/properties", json=item, headers=auth).status_code == 202
            wait_event(client, auth, item["event_id"])
        contact = client.get("/v1/contacts/u1", headers=auth).json()
        # In time order: add 5 (5), set 10, add 100 (110), set_once day 3 (kept: day 1), add 1
        assert contact["properties"] == {"first_seen": "day 1", "logins": 111}
        assert contact["versions"]["first_seen"]["event_id"] == "old1"
        assert contact["versions"]["logins"]["event_id"] == "new2"

    def test_given_add_on_a_string_then_it_is_unchanged_and_the_event_warns(self, client, auth):
        client.post("/v1/properties", json=body("s1", 1, user_properties={"n": "x"}), headers=auth)
        client.post("/v1/properties", json=body("s2", 2, add={"n": 1}), headers=auth)
        seen = wait_event(client, auth, "s2")
        assert "not a number" in seen["error"]
        assert client.get("/v1/contacts/u1", headers=auth).json()["properties"] == {"n": "x"}


async def test_given_operations_in_a_jsonl_file_when_imported_then_they_fold_in_time_order(
    tmp_path: Path,
) -> None:
    queue, store = MemoryQueue(), MemoryStore()
    file = tmp_path / "history.jsonl"
    file.write_text(
        "\n".join(
            json.dumps(line)
            for line in [
                body("i2", 20, append={"tags": ["b"]}),
                body("i1", 10, append={"tags": ["a"]}, set_once={"first": 10}),
                body("i3", 30, remove={"tags": ["a"]}, set_once={"first": 30}),
                body("i4", 40, add={"n": "x"}),
            ]
        )
    )
    result = await import_jsonl(queue, file, "acme", None)
    assert (result.accepted, result.rejected) == (3, 1)
    await Applier(queue, store, Metrics(), 1).drain()
    found = await store.get_contact("acme", "u1")
    assert found is not None and found.properties == {"tags": ["b"], "first": 10}


# -- through the log, with a crash and a restart -------------------------------------------------


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), crash=crashes())
def test_given_operations_and_a_crash_between_apply_and_ack_then_resuming_gives_the_fold(
    scenario: Scenario, crash: Crash
) -> None:
    async def run(data_dir: Path) -> None:
        async with resumed_after_a_crash(data_dir, scenario.batches, crash) as (_, store):
            expected = reference(scenario.events)
            assert_same(await actual(store), expected, "after crash and resume")
            await store.rebuild()
            assert_same(await actual(store), expected, "after rebuild")

    with tempfile.TemporaryDirectory(prefix="operations-") as data_dir:
        asyncio.run(run(Path(data_dir)))


def test_given_an_event_encoded_before_operations_existed_then_it_decodes_as_sets() -> None:
    old = msgspec.msgpack.encode(
        ["acme", "e1", "c1", 5 * S, {"plan": "pro"}, "api", "n", None, 7, "update"]
    )
    assert decode_event(old) == Event(
        "acme", "e1", "c1", 5 * S, {"plan": "pro"}, "api", "n", None, 7
    )
    made = event("e2", 6, add={"n": 1}, set={"plan": "x"})
    assert decode_event(encode_event(made)) == made and made.ops == {"n": "add"}


# -- SPEC 3.1, row by row, on every backend (in order, and with the events in reverse) ------------

ROWS: list[tuple[str, list[Event], dict[str, Any], dict[str, str]]] = [
    ("set_once on absent", [event("o1", 1, set_once={"p": "a"})], {"p": "a"}, {"p": "o1"}),
    (
        "set_once on present",
        [event("o1", 1, set={"p": "a"}), event("o2", 2, set_once={"p": "b"})],
        {"p": "a"},
        {"p": "o1"},
    ),
    ("add on absent", [event("o1", 1, add={"p": 2})], {"p": 2}, {"p": "o1"}),
    (
        "add int to int",
        [event("o1", 1, add={"p": 2}), event("o2", 2, add={"p": 3})],
        {"p": 5},
        {"p": "o2"},
    ),
    (
        "add int to float",
        [event("o1", 1, set={"p": 1.5}), event("o2", 2, add={"p": 1})],
        {"p": 2.5},
        {"p": "o2"},
    ),
    (
        "add on a string",
        [event("o1", 1, set={"p": "x"}), event("o2", 2, add={"p": 1})],
        {"p": "x"},
        {"p": "o1"},
    ),
    (
        "append on absent",
        [event("o1", 1, append={"p": ["a", "b"]})],
        {"p": ["a", "b"]},
        {"p": "o1"},
    ),
    (
        "append on a list",
        [event("o1", 1, set={"p": ["a"]}), event("o2", 2, append={"p": ["a", "b"]})],
        {"p": ["a", "b"]},
        {"p": "o2"},
    ),
    (
        "append on a scalar",
        [event("o1", 1, set={"p": "a"}), event("o2", 2, append={"p": ["b"]})],
        {"p": ["a", "b"]},
        {"p": "o2"},
    ),
    (
        "remove on absent",
        [event("o1", 1, set={"q": 1}), event("o2", 2, remove={"p": ["a"]})],
        {"q": 1},
        {"q": "o1"},
    ),
    (
        "remove from a list",
        [event("o1", 1, set={"p": ["a", "b", "a"]}), event("o2", 2, remove={"p": ["a"]})],
        {"p": ["b"]},
        {"p": "o2"},
    ),
    (
        "remove an equal scalar",
        [event("o1", 1, set={"p": "a", "q": 1}), event("o2", 2, remove={"p": ["a"]})],
        {"q": 1},
        {"q": "o1"},
    ),
    (
        "unset",
        [event("o1", 1, set={"p": 1, "q": 1}), event("o2", 2, unset=["p"])],
        {"q": 1},
        {"q": "o1"},
    ),
    (
        "delete, then operations",
        [
            event("o1", 1, add={"p": 5}, set_once={"f": "old"}),
            event("o2", 2, kind="delete"),
            event("o3", 3, add={"p": 1}, set_once={"f": "new"}),
        ],
        {"p": 1, "f": "new"},
        {"p": "o3", "f": "o3"},
    ),
]


@pytest.mark.parametrize("order", ["in-order", "reversed", "one-batch"])
@pytest.mark.parametrize(
    ("row", "events", "properties", "versions"), ROWS, ids=[r[0] for r in ROWS]
)
async def test_given_each_row_of_the_fold_table_then_every_backend_gives_its_result(
    backend: Any,
    order: str,
    row: str,
    events: list[Event],
    properties: dict[str, Any],
    versions: dict[str, str],
) -> None:
    store = backend.store
    if order == "one-batch":
        await store.apply(list(reversed(events)))
    else:
        for item in events if order == "in-order" else reversed(events):
            await store.apply([item])
    for how in ("applied", "rebuilt"):
        found = await store.get_contact(WORKSPACE, "c1")
        assert found is not None, how
        assert msgspec.json.encode(found.properties, order="sorted") == msgspec.json.encode(
            properties, order="sorted"
        ), how
        assert {n: v[1] for n, v in found.versions.items()} == versions, how
        await store.rebuild()
    if row == "add on a string":
        record = await store.get_event(WORKSPACE, "o2")
        assert record is not None and "not a number" in (record.error or "")


async def test_given_two_store_instances_adding_to_one_contact_at_once_then_no_add_is_lost(
    backend: Any,
) -> None:
    """Concurrent appliers (PostgreSQL: other processes) serialise per contact."""
    other = await backend.open_another()
    stores = [backend.store, other]
    events = [
        event(f"a{i:03d}", 1000 - i if i % 5 == 0 else i + 1, add={"n": 1}) for i in range(60)
    ]
    await asyncio.gather(
        *(stores[i % 2].apply(events[i : i + 3]) for i in range(0, len(events), 3))
    )
    found = await backend.store.get_contact(WORKSPACE, "c1")
    assert found is not None and found.properties == {"n": 60}


async def test_given_a_schema_3_sqlite_file_when_opened_then_it_applies_operations(
    tmp_path: Path,
) -> None:
    """Schema 4 adds the version of a contact's newest operation; an older file gets the
    columns at open, keeps its profiles, and folds operations from then on."""
    path = tmp_path / "profiles.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.apply([event("e1", 1, set={"x": 1})])
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # what schema 3 wrote
        for table in ("contacts", "snapshots"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN ops_ts_us")
            conn.execute(f"ALTER TABLE {table} DROP COLUMN ops_event_id")
        conn.execute("PRAGMA user_version = 3")
        conn.commit()

    store = SqliteStore(path)
    await store.open()
    try:
        await store.apply([event("e2", 2, add={"x": 1})])
        await store.apply([event("e0", 0, set={"x": 5}), event("e3", 3, set_once={"x": 9})])
        found = await store.get_contact(WORKSPACE, "c1")
        assert found is not None and found.properties == {"x": 2}
    finally:
        await store.close()


async def test_given_adds_summing_beyond_64_bits_then_the_sum_stays_an_exact_integer(
    backend: Any,
) -> None:
    """SPEC 3.1: ``add`` on integers stays an integer. 2,100 adds of the largest integer
    the API takes (2**53 - 1) pass 2**63 and 2**64; the profile holds the exact sum (it
    became a float past 2**63 before), through a rebuild too, and a late add still sums."""
    big = c.MAX_JSON_INT
    events = [event(f"b{i:04d}", i + 10, add={"n": big}) for i in range(2_100)]
    for start in range(0, len(events), 700):
        await backend.store.apply(events[start : start + 700])
    await backend.store.apply([event("a0000", 1, add={"n": 1})])  # late: older than all
    for how in ("applied", "rebuilt"):
        found = await backend.store.get_contact(WORKSPACE, "c1")
        assert found is not None, how
        assert type(found.properties["n"]) is int, how
        assert found.properties["n"] == 2_100 * big + 1, how
        assert found.versions["n"] == (2_109 * S, "b2099"), how
        await backend.store.rebuild()


# -- late events decided by the marks (no history read) ------------------------------------------

# (name, events in the order they arrive, properties, versions): each row's last event is late,
# most of them tied in time with what came before it and ordered by event_id ("e10" < "e9").
LATE_ROWS: list[tuple[str, list[Event], dict[str, Any], dict[str, str]]] = [
    (
        "a late add onto a run of integer adds sums",
        [event("e2", 5, set={"n": 10}), event("e4", 5, add={"n": 1}), event("e3", 5, add={"n": 2})],
        {"n": 13},
        {"n": "e4"},
    ),
    (
        "a late add before every add, on a property absent before it",
        [event("e8", 5, add={"n": 1}), event("e9", 5, add={"n": 4}), event("e10", 5, add={"n": 2})],
        {"n": 7},
        {"n": "e9"},
    ),
    (
        "a late add before a set: nothing",
        [event("e2", 5, add={"n": 1}), event("e4", 5, set={"n": 10}), event("e3", 5, add={"n": 2})],
        {"n": 10},
        {"n": "e4"},
    ),
    (
        "a late add before a set and adds after it: recomputed, nothing",
        [
            event("e2", 3, set={"n": 10}),
            event("e4", 5, set={"n": 20}),
            event("e5", 6, add={"n": 1}),
            event("e3", 4, add={"n": 100}),
        ],
        {"n": 21},
        {"n": "e5"},
    ),
    (
        "a late add onto a float sum: recomputed in order",
        [
            event("e2", 5, add={"n": 0.1}),
            event("e4", 5, add={"n": 0.2}),
            event("e3", 5, add={"n": 0.7}),
        ],
        {"n": 0.1 + 0.7 + 0.2},
        {"n": "e4"},
    ),
    (
        "a late add of zero onto an absent value: recomputed",
        [event("e2", 5, add={"n": 0}), event("e1", 5, add={"n": 0})],
        {"n": 0},
        {"n": "e1"},
    ),
    (
        "a late add onto a sum of zero: recomputed",
        [event("e2", 5, set={"n": 1}), event("e4", 5, add={"n": -1}), event("e3", 5, add={"n": 5})],
        {"n": 5},
        {"n": "e4"},
    ),
    (
        "a late add onto a string, before adds: a warning, nothing else",
        [
            event("e2", 5, set={"n": "x"}),
            event("e4", 5, add={"n": 1}),
            event("e3", 5, add={"n": 2}),
        ],
        {"n": "x"},
        {"n": "e2"},
    ),
    (
        "a late append of an item the list holds since before it: nothing",
        [
            event("e2", 5, append={"tags": ["a"]}),
            event("e4", 5, append={"tags": ["a"]}),
            event("e3", 5, append={"tags": ["a"]}),
        ],
        {"tags": ["a"]},
        {"tags": "e2"},
    ),
    (
        "a late append of a new item, before an append that changed nothing: recomputed",
        [
            event("e2", 5, append={"tags": ["a"]}),
            event("e4", 5, append={"tags": ["a", "b"]}),
            event("e3", 5, append={"tags": ["b"]}),
        ],
        {"tags": ["a", "b"]},
        {"tags": "e3"},
    ),
    (
        "a late set_once on a present value: nothing",
        [
            event("e2", 5, set_once={"f": 1}),
            event("e4", 5, set_once={"f": 3}),
            event("e3", 5, set_once={"f": 2}),
        ],
        {"f": 1},
        {"f": "e2"},
    ),
    (
        "a late set before an add: recomputed",
        [event("e2", 5, set={"n": 1}), event("e4", 5, add={"n": 1}), event("e3", 5, set={"n": 10})],
        {"n": 11},
        {"n": "e4"},
    ),
    (
        "a late set on a property no operation touched, beside an add that is not late",
        [
            event("e2", 5, set={"s": "b"}, add={"n": 1}),
            event("e1", 5, set={"s": "a"}, add={"n": 1}),
        ],
        {"s": "b", "n": 2},
        {"s": "e2", "n": "e2"},
    ),
    (
        "a late delete before adds: recomputed",
        [event("e2", 5, add={"n": 1}), event("e4", 5, add={"n": 2}), event("e3", 5, kind="delete")],
        {"n": 2},
        {"n": "e4"},
    ),
]


@pytest.mark.parametrize(
    ("row", "events", "properties", "versions"), LATE_ROWS, ids=[r[0] for r in LATE_ROWS]
)
async def test_given_a_late_event_that_the_marks_decide_then_every_backend_gives_the_fold(
    backend: Any,
    row: str,
    events: list[Event],
    properties: dict[str, Any],
    versions: dict[str, str],
) -> None:
    expected = reference(events)["c1"]
    assert expected is not None and expected.properties == properties, "the reference agrees"
    assert {n: v[1] for n, v in expected.versions.items()} == versions, "the reference agrees"
    for item in events:
        await backend.store.apply([item])
    for how in ("applied", "rebuilt"):
        found = await backend.store.get_contact(WORKSPACE, "c1")
        assert found is not None, how
        assert msgspec.json.encode(found.properties, order="sorted") == msgspec.json.encode(
            properties, order="sorted"
        ), how
        assert {n: v[1] for n, v in found.versions.items()} == versions, how
        await backend.store.rebuild()
    if "string" in row:
        record = await backend.store.get_event(WORKSPACE, "e3")
        assert record is not None and "not a number" in (record.error or "")


DECIDED_BY_MARKS = [r for r in LATE_ROWS if "recomputed" not in r[0]]


@pytest.mark.parametrize(
    ("row", "events", "properties", "versions"),
    DECIDED_BY_MARKS,
    ids=[r[0] for r in DECIDED_BY_MARKS],
)
def test_given_a_late_event_that_the_marks_decide_then_no_history_is_read(
    row: str, events: list[Event], properties: dict[str, Any], versions: dict[str, str]
) -> None:
    """The planner decides these late events from the contact's state alone: what keeps a
    contact with a long history and frequent late events (or ties) as cheap as sets."""
    state = ContactState()

    def no_history() -> tuple[ContactState, list[Event]]:
        raise AssertionError(f"{row}: the history was read")

    for item in events:
        plan = plan_contact(state, [item], no_history)
        state = _after(state, plan)
    assert {n: v for n, v in state.values.items() if v is not None} == properties
    assert {n: state.versions[n][1] for n in properties} == versions


def _after(state: ContactState, plan: Any) -> ContactState:
    """What a store holds after ``plan`` (as the memory store applies it)."""
    versions, values = dict(state.versions), dict(state.values)
    if plan.delete_upto is not None:
        for name in [n for n, v in versions.items() if v <= plan.delete_upto]:
            del versions[name], values[name]
    for name in plan.removes:
        versions.pop(name, None)
        values.pop(name, None)
    for name, (value, version) in plan.upserts.items():
        versions[name], values[name] = version, value
    return ContactState(plan.last_update, plan.deleted, versions, values, plan.ops_upto, plan.marks)


async def test_given_an_add_warned_on_a_string_when_a_late_set_makes_it_a_number_then_the_warning_goes(
    backend: Any,
) -> None:
    """SPEC 3.1: an add on a value that is not a number marks the event with a warning, in
    the fold of all events in version order. Once a late set makes the value an add met a
    number, the add applied, and its record says so: no warning left (it stayed before)."""
    store = backend.store
    await store.apply([event("e1", 1, set={"p": "x", "q": "y"})])
    await store.apply([event("e3", 3, add={"p": 1}), event("e4", 4, add={"q": 1})])
    for event_id, name in (("e3", "p"), ("e4", "q")):
        record = await store.get_event(WORKSPACE, event_id)
        assert record is not None and (record.error or "").startswith(f"{name}: "), event_id
    await store.apply([event("e2", 2, set={"p": 5})])  # late: before the add on p
    found = await store.get_contact(WORKSPACE, "c1")
    assert found is not None and found.properties == {"p": 6, "q": "y"}
    record = await store.get_event(WORKSPACE, "e3")
    assert record is not None and record.error is None
    record = await store.get_event(WORKSPACE, "e4")  # its add still met a string
    assert record is not None and "not a number" in (record.error or "")
