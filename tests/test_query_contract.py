"""The query contract (``ContactQueries``, README "Querying profiles"): every backend answers a filter exactly as
the reference evaluator (``filters.matches``) does on the same profiles, pages by contact_id
without skipping or repeating a contact while events apply, and counts exactly. Runs on every
backend (tests/store_backends.py); SQLite and PostgreSQL compile the filter to SQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profilehook import constants as c
from profilehook.events import Event
from profilehook.filters import Filter, Query, matches, parse_filter
from profilehook.stores.base import Store
from profilehook.stores.memory import MemoryStore
from profilehook.stores.query import ContactQueries
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import S, StoreBackend
from tests.support import (
    POSTGRES_URL,
    drop_schema,
    event,
    examples,
    postgres_url,
    require_server,
    unique_schema,
)
from tests.support import parsed_filter as f

W = "acme"


@pytest.fixture
def store(backend: StoreBackend) -> Store:
    return backend.store


async def answer(store: Store, node: Filter, workspace: str = W, limit: int = 1000) -> list[str]:
    """Every contact id the store's query finds, page after page."""
    assert isinstance(store, ContactQueries)
    found: list[str] = []
    after = None
    while True:
        page = await store.query_contacts(workspace, Query(node, limit, after))
        found += [c.contact_id for c in page.contacts]
        if page.next_after is None:
            return found
        after = page.next_after


async def reference(store: Store, ids: list[str], node: Filter, workspace: str = W) -> list[str]:
    """What the reference evaluator says, on the profiles the store holds."""
    out = []
    for contact_id in sorted(set(ids)):
        contact = await store.get_contact(workspace, contact_id)
        if contact is not None and matches(
            node, contact_id, contact.properties, contact.updated_us
        ):
            out.append(contact_id)
    return out


async def seed(store: Store, profiles: dict[str, dict[str, Any]], workspace: str = W) -> None:
    events = [
        event(cid, f"e-{i}", (i + 1) * S, workspace, **props)
        for i, (cid, props) in enumerate(profiles.items())
    ]
    await store.apply(events)


# -- meaning -------------------------------------------------------------------------------------


async def test_given_numbers_strings_and_booleans_when_compared_then_never_coerced(
    store: Store,
) -> None:
    await seed(store, {"n": {"x": 1}, "f": {"x": 1.0}, "s": {"x": "1"}, "t": {"x": True}})
    assert await answer(store, f({"property": "x", "op": "eq", "value": 1})) == ["f", "n"]
    assert await answer(store, f({"property": "x", "op": "eq", "value": "1"})) == ["s"]
    assert await answer(store, f({"property": "x", "op": "eq", "value": True})) == ["t"]
    assert await answer(store, f({"property": "x", "op": "gte", "value": 0})) == ["f", "n"]
    assert await answer(store, f({"property": "x", "op": "gt", "value": ""})) == ["s"]
    assert await answer(store, f({"property": "x", "op": "ne", "value": 1})) == ["s", "t"]
    assert await answer(store, f({"property": "y", "op": "ne", "value": 1})) == ["f", "n", "s", "t"]


async def test_given_lists_and_strings_when_contains_then_member_or_substring(store: Store) -> None:
    await seed(
        store,
        {
            "a": {"tags": ["beta", 2, True]},
            "b": {"tags": "alphabetagamma"},
            "c": {"tags": ["alpha", {"beta": 1}]},
            "d": {"tags": [["beta"]]},
        },
    )
    assert await answer(store, f({"property": "tags", "op": "contains", "value": "beta"})) == [
        "a",
        "b",
    ]
    assert await answer(store, f({"property": "tags", "op": "contains", "value": 2.0})) == ["a"]
    assert await answer(store, f({"property": "tags", "op": "contains", "value": True})) == ["a"]
    assert await answer(store, f({"property": "tags", "op": "contains", "value": 1})) == []


async def test_given_pseudo_properties_when_filtered_then_id_and_last_update(store: Store) -> None:
    await store.apply([event("u1", "e1", 10 * S, plan="pro"), event("u2", "e2", 20 * S)])
    await store.apply([event("v3", "e3", 30 * S + 500_000, plan="pro")])
    q = {"property": "$updated_at", "op": "gt", "value": 15}
    assert await answer(store, f(q)) == ["u2", "v3"]
    q = {"property": "$updated_at", "op": "lte", "value": 30.5}
    assert await answer(store, f(q)) == ["u1", "u2", "v3"]
    q = {"property": "$updated_at", "op": "eq", "value": 30.5}
    assert await answer(store, f(q)) == ["v3"]
    q = {"property": "$contact_id", "op": "starts_with", "value": "u"}
    assert await answer(store, f(q)) == ["u1", "u2"]
    q = {"all": [{"property": "$contact_id", "op": "in", "value": ["u1", "v3"]}]}
    assert await answer(store, f(q)) == ["u1", "v3"]


async def test_given_a_deleted_contact_when_queried_then_not_found_and_not_counted(
    store: Store,
) -> None:
    await seed(store, {"a": {"plan": "pro"}, "b": {"plan": "pro"}})
    await store.apply([event("a", "d1", 50 * S, kind="delete")])
    node = f({"property": "plan", "op": "eq", "value": "pro"})
    assert isinstance(store, ContactQueries)
    page = await store.query_contacts(W, Query(node, 10, None, True))
    assert [c.contact_id for c in page.contacts] == ["b"] and page.count == 1
    assert await answer(store, f({"all": []})) == ["b"]
    await store.apply([event("a", "e9", 60 * S, plan="free")])
    assert await answer(store, f({"property": "plan", "op": "exists"})) == ["a", "b"]
    assert await answer(store, node) == ["b"]


async def test_given_a_page_then_contacts_as_get_shows_them(store: Store) -> None:
    await seed(store, {"a": {"plan": "pro", "n": 1.5, "l": [1, {"k": "v"}]}, "b": {"plan": "x"}})
    assert isinstance(store, ContactQueries)
    page = await store.query_contacts(W, Query(f({"all": []}), 10))
    assert page.contacts == [await store.get_contact(W, "a"), await store.get_contact(W, "b")]
    assert page.next_after is None and page.count is None


async def test_given_another_workspace_when_queried_then_its_contacts_stay_out(
    store: Store,
) -> None:
    await seed(store, {"a": {"plan": "pro"}}, "other")
    await seed(store, {"b": {"plan": "pro"}})
    assert await answer(store, f({"property": "plan", "op": "eq", "value": "pro"})) == ["b"]


HOSTILE = [
    "plain",
    "it's",
    'dq"uote',
    "100%",
    "a_b",
    "back\\slash",
    "\\%_'\"",
    "$.a.b",
    "a.b",
    "{a,b}",
    "a'); DROP TABLE contacts; --",
    "é🙂",
    "",
    "%",
    "_",
    "\\",
]


async def test_given_hostile_names_and_values_when_queried_then_as_the_reference(
    store: Store,
) -> None:
    profiles = {}
    names = [n for n in HOSTILE if n]
    for i, name in enumerate(names):
        profiles[f"c{i:02d}"] = {name: HOSTILE[(i + 3) % len(HOSTILE)], "k": HOSTILE[i]}
        profiles[f"d{i:02d}"] = {name: [HOSTILE[i], i], "k": i}
    await seed(store, profiles)
    held = {cid: await store.get_contact(W, cid) for cid in sorted(profiles)}

    def expected(node: Filter) -> list[str]:  # the reference, on the profiles read once
        return [
            cid
            for cid, contact in held.items()
            if contact is not None and matches(node, cid, contact.properties, contact.updated_us)
        ]

    for name in [*names, "k"]:
        for value in HOSTILE:
            for op in ("eq", "ne", "gt", "lte", "starts_with", "contains"):
                node = f({"property": name, "op": op, "value": value})
                assert await answer(store, node) == expected(node), (name, op, value)
            node = f({"property": name, "op": "in", "value": [value, "x", 3]})
            assert await answer(store, node) == expected(node)


async def test_given_integers_beyond_64_bits_when_queried_then_found_and_never_a_crash(
    store: Store,
) -> None:
    """A sum of adds may pass 2**63 (integers stay exact, README Property operations): such
    profiles are found by equality and range, and a filter value that large is no error."""
    big = c.MAX_JSON_INT
    adds = [
        Event(W, f"{cid}-{i:04d}", cid, (i + 1) * S, {"n": sign * big}, ops={"n": "add"})
        for i in range(1_100)
        for cid, sign in (("big", 1), ("neg", -1))
    ]
    await store.apply(adds)
    await seed(store, {"small": {"n": 5}})
    ids = ["big", "neg", "small"]
    total = 1_100 * big
    for op, value in [
        ("eq", total),
        ("gt", 2**63),
        ("lt", -(2**63)),
        ("gte", 5),
        ("in", [total, 5]),
        ("contains", total),
    ]:
        node = f({"property": "n", "op": op, "value": value})
        assert await answer(store, node) == await reference(store, ids, node), (op, value)
    assert await answer(store, f({"property": "n", "op": "gt", "value": 2**63})) == ["big"]


async def test_given_pages_when_events_apply_between_them_then_no_contact_skipped_or_repeated(
    store: Store,
) -> None:
    await seed(store, {f"c{i:03d}": {"plan": "pro", "i": i} for i in range(0, 60, 2)})
    node = f({"property": "plan", "op": "eq", "value": "pro"})
    assert isinstance(store, ContactQueries)
    seen: list[str] = []
    after = None
    step = 0
    while True:
        page = await store.query_contacts(W, Query(node, 7, after))
        seen += [c.contact_id for c in page.contacts]
        step += 1
        # Meanwhile: new contacts before and after the cursor, others changed (not these).
        await store.apply(
            [
                event(f"c{(step * 13) % 60:03d}x", f"n{step}", 100 * S + step, plan="pro"),
                event(f"c{59 - step:03d}y", f"m{step}", 100 * S + step, plan="pro"),
            ]
        )
        if page.next_after is None:
            break
        after = page.next_after
    unchanged = [f"c{i:03d}" for i in range(0, 60, 2)]
    assert [s for s in seen if s in unchanged] == unchanged
    assert len(seen) == len(set(seen))


async def test_given_count_then_every_match_not_only_the_page(store: Store) -> None:
    await seed(store, {f"c{i}": {"n": i} for i in range(25)})
    assert isinstance(store, ContactQueries)
    node = f({"property": "n", "op": "lt", "value": 20})
    page = await store.query_contacts(W, Query(node, 5, None, True))
    assert page.count == 20 and len(page.contacts) == 5 and page.next_after is not None


# -- the property: random profiles, random filters, every backend --------------------------------

NAMES = ["a", "b", "it's", "%_"]
SCALARS = st.one_of(
    st.integers(-3, 3),
    # (with 1.0, 0.0 and -0.0 beside the integers and booleans Python's == takes them for)
    st.sampled_from([0.5, -1.5, 2.0, 1e20, 1.0, 0.0, -0.0]),
    st.sampled_from(["", "a", "ab", "b", "A", "a%", "a_", "é", "'"]),
    st.booleans(),
)
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=3), st.sampled_from([{"a": 1}, {"a": True}, {"a": 1.0}])
)


def conditions() -> st.SearchStrategy[dict[str, Any]]:
    name = st.sampled_from([*NAMES, "$contact_id", "$updated_at"])

    def build(name: str, op: str, data: Any) -> dict[str, Any]:
        if op in ("exists", "not_exists"):
            return {"property": name, "op": op}
        return {"property": name, "op": op, "value": data}

    def fix(d: dict[str, Any]) -> dict[str, Any]:
        # values the parser accepts for this name and op
        name, op = d["property"], d["op"]
        if name == "$updated_at" and "value" in d:
            d = {**d, "op": "gt" if op in ("contains", "starts_with") else op}
            d["value"] = [5, 6] if d["op"] in ("in", "not_in") else 5.5
        elif name == "$contact_id" and "value" in d:
            d["value"] = ["c1", "c2"] if op in ("in", "not_in") else "c1"
        elif op in ("in", "not_in") and not isinstance(d.get("value"), list):
            d["value"] = [d["value"], "a"]
        elif op == "starts_with" and not isinstance(d.get("value"), str):
            d["value"] = "a"
        return d

    scalars_or_lists = st.one_of(SCALARS, st.lists(SCALARS, min_size=1, max_size=3))
    ops = st.sampled_from(
        [
            "eq",
            "ne",
            "gt",
            "gte",
            "lt",
            "lte",
            "in",
            "not_in",
            "contains",
            "starts_with",
            "exists",
            "not_exists",
        ]
    )
    return (
        st.builds(build, name, ops, scalars_or_lists)
        .map(fix)
        .filter(lambda d: parse_filter(d)[0] is not None)
    )


FILTERS = st.recursive(
    conditions(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=6,
)
PROFILES = st.dictionaries(
    st.sampled_from([f"c{i}" for i in range(8)]),
    st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4),
    max_size=8,
)


async def check(store: Store, profiles: dict[str, dict[str, Any]], raw: dict[str, Any]) -> None:
    workspace = f"w{uuid.uuid4().hex[:8]}"
    await seed(store, profiles, workspace)
    node = f(raw)
    expected = await reference(store, list(profiles), node, workspace)
    assert await answer(store, node, workspace, limit=3) == expected
    assert isinstance(store, ContactQueries)
    page = await store.query_contacts(workspace, Query(node, 1000, None, True))
    assert page.count == len(expected)


@pytest.fixture(scope="module")
def postgres_schema() -> Iterator[str]:
    require_server(POSTGRES_URL, 5432)
    schema = unique_schema()
    yield schema
    drop_schema(schema)


def run_on(make: Any, profiles: dict[str, dict[str, Any]], raw: dict[str, Any]) -> None:
    async def run() -> None:
        store = make()
        await store.open()
        try:
            await check(store, profiles, raw)
        finally:
            await store.close()

    asyncio.run(run())


PROPERTY = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=list(HealthCheck)
)


@PROPERTY
@given(profiles=PROFILES, raw=FILTERS)
def test_given_random_profiles_and_filters_then_memory_answers_as_the_reference(
    profiles: dict[str, dict[str, Any]], raw: dict[str, Any]
) -> None:
    run_on(MemoryStore, profiles, raw)


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("query") / "profiles.sqlite3"


@PROPERTY
@given(profiles=PROFILES, raw=FILTERS)
def test_given_random_profiles_and_filters_then_sqlite_answers_as_the_reference(
    sqlite_path: Path, profiles: dict[str, dict[str, Any]], raw: dict[str, Any]
) -> None:
    run_on(lambda: SqliteStore(sqlite_path), profiles, raw)


@PROPERTY
@given(profiles=PROFILES, raw=FILTERS)
def test_given_random_profiles_and_filters_then_postgres_answers_as_the_reference(
    postgres_schema: str, profiles: dict[str, dict[str, Any]], raw: dict[str, Any]
) -> None:
    from profilehook.stores.postgres import PostgresStore

    run_on(lambda: PostgresStore(postgres_url(postgres_schema)), profiles, raw)


async def test_given_an_erasure_and_a_rebuild_then_queries_follow_the_profiles(
    store: Store,
) -> None:
    from profilehook.stores.base import Erasure

    await seed(store, {"a": {"plan": "pro"}, "b": {"plan": "pro"}})
    await store.apply([event("a", "late", 100 * S, plan="free")])
    node = f({"property": "plan", "op": "eq", "value": "pro"})
    erasure = Erasure("er1", W, "b", 50 * S, suppress=False)
    await store.request_erasure(erasure)
    await store.erase_contacts([erasure])
    assert await answer(store, node) == []
    await store.rebuild()
    assert await answer(store, node) == []
    assert await answer(store, f({"property": "plan", "op": "eq", "value": "free"})) == ["a"]


async def test_given_a_schema_5_sqlite_file_when_opened_then_its_profiles_are_queryable(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "profiles.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await seed(store, {"a": {"plan": "pro"}, "b": {"plan": "free"}})
    await store.close()
    with sqlite3.connect(path) as conn:  # as a version before queries left it
        conn.execute("DROP TABLE contact_values")
        conn.execute("PRAGMA user_version = 5")
    store = SqliteStore(path)
    await store.open()
    try:
        assert await answer(store, f({"property": "plan", "op": "eq", "value": "pro"})) == ["a"]
    finally:
        await store.close()
