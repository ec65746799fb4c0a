"""Values that Python's ``==`` takes for one another are different JSON values (SPEC 2.9: no
coercion; SPEC 3.1: the fold; SPEC 2.10: a change is any change): ``1``, ``1.0`` and ``true``,
``0``, ``-0.0`` and ``false``, ``[1]`` and ``[true]``, ``{"a": 1}`` and ``{"a": 1.0}``. On every
backend a later one replaces an earlier one in the profile, the change feed, the searchable
values and the segments, and the list operations keep them apart. One definition decides it
(``events.same_value``); the property tests (tests/test_convergence.py,
tests/test_operations.py, tests/test_segment_contract.py) draw these values too.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import msgspec
import pytest

from profilehook.events import Event, same_value
from profilehook.filters import Query, matches
from profilehook.stores.base import Store
from profilehook.stores.query import ContactQueries
from profilehook.stores.segments import Segment, Segments
from tests.store_backends import S, StoreBackend
from tests.support import event
from tests.support import parsed_filter as f

W = "acme"


@pytest.fixture
def store(backend: StoreBackend) -> Store:
    return backend.store


def op_event(event_id: str, ts_s: int, ops: dict[str, str], **properties: Any) -> Event:
    built = event("c1", event_id, ts_s * S, W, **properties)
    return msgspec.structs.replace(built, ops=ops)


def exact(value: Any) -> bytes:
    return msgspec.json.encode(value)


async def profile(store: Store) -> dict[str, Any]:
    contact = await store.get_contact(W, "c1")
    assert contact is not None
    return contact.properties


async def changed(store: Store, name: str) -> list[tuple[bytes, bytes]]:
    """Each change of ``name`` in the feed, as the exact JSON of (old, new)."""
    found = await store.read_changes(W, None, 100)
    return [
        (exact(p.old), exact(p.new))
        for c in found
        if (p := c.body.properties.get(name)) is not None
    ]


PAIRS = [
    pytest.param(1, True, id="1-true"),
    pytest.param(True, 1, id="true-1"),
    pytest.param(1, 1.0, id="1-1.0"),
    pytest.param(0, False, id="0-false"),
    pytest.param(0.0, -0.0, id="0.0-minus0.0"),
    pytest.param([1], [True], id="list"),
    pytest.param({"a": 1}, {"a": 1.0}, id="object"),
    pytest.param({"a": [0]}, {"a": [False]}, id="nested"),
    pytest.param({"a": 1, "b": 2}, {"b": 2, "a": 1}, id="key-order"),  # (its text changes)
]


def test_given_values_equal_in_python_only_then_same_value_tells_them_apart() -> None:
    for pair in PAIRS:
        a, b = pair.values
        assert a == b  # what Python says
        assert not same_value(a, b) and not same_value(b, a), pair.id
        assert same_value(a, msgspec.json.decode(exact(a))), pair.id
    assert same_value({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]})
    assert same_value(2**70, 2**70) and not same_value(2**70, float(2**70))


@pytest.mark.parametrize(("before", "after"), PAIRS)
async def test_given_a_value_when_a_later_set_sets_one_equal_in_python_only_then_it_replaces_it(
    store: Store, before: Any, after: Any
) -> None:
    await store.apply([event("c1", "e1", 1 * S, W, v=before)])
    await store.apply([event("c1", "e2", 2 * S, W, v=after)])
    assert exact((await profile(store))["v"]) == exact(after)
    assert await changed(store, "v") == [(b"null", exact(before)), (exact(before), exact(after))]


@pytest.mark.parametrize(("before", "after"), PAIRS)
async def test_given_a_value_when_set_once_offers_one_equal_in_python_only_then_it_stays(
    store: Store, before: Any, after: Any
) -> None:
    await store.apply([event("c1", "e1", 1 * S, W, v=before)])
    await store.apply([op_event("e2", 2, {"v": "set_once"}, v=after)])
    assert exact((await profile(store))["v"]) == exact(before)
    assert await changed(store, "v") == [(b"null", exact(before))]


async def test_given_minus_zero_when_0_is_added_then_the_sum_is_0_0_and_the_feed_says_so(
    store: Store,
) -> None:
    # -0.0 + 0 is 0.0 (SPEC 3.1: value + n); Python's == says -0.0 == 0.0, so an "unchanged"
    # kept -0.0 in the profile, where the fold in order (and the reference) has 0.0.
    await store.apply([event("c1", "e1", 1 * S, W, n=-0.0)])
    await store.apply([op_event("e2", 2, {"n": "add"}, n=0)])
    n = (await profile(store))["n"]
    assert n == 0.0 and math.copysign(1.0, n) == 1.0
    assert await changed(store, "n") == [(b"null", b"-0.0"), (b"-0.0", b"0.0")]
    await store.rebuild()
    assert math.copysign(1.0, (await profile(store))["n"]) == 1.0


async def test_given_a_list_when_items_equal_in_python_only_are_appended_or_removed_then_kept_apart(
    store: Store,
) -> None:
    await store.apply([event("c1", "e1", 1 * S, W, tags=[True, 0.0, [1]])])
    await store.apply([op_event("e2", 2, {"tags": "append"}, tags=[1, False, -0.0, [True], 1.0])])
    assert exact((await profile(store))["tags"]) == exact(
        [True, 0.0, [1], 1, False, -0.0, [True], 1.0]
    )
    await store.apply([op_event("e3", 3, {"tags": "remove"}, tags=[1, 0, [True]])])
    assert exact((await profile(store))["tags"]) == exact([True, 0.0, [1], False, -0.0, 1.0])
    # a non-list value equal in Python only to an item stays
    await store.apply([event("c1", "e4", 4 * S, W, one=True)])
    await store.apply([op_event("e5", 5, {"one": "remove"}, one=[1, 1.0])])
    assert (await profile(store))["one"] is True
    # an append of what is already there (exactly) changes nothing: no change recorded
    before = len(await store.read_changes(W, None, 100))
    await store.apply([op_event("e6", 6, {"tags": "append"}, tags=[1.0, [1]])])
    assert len(await store.read_changes(W, None, 100)) == before


async def segment_of(store: Store, raw: dict[str, Any]) -> str:
    assert isinstance(store, Segments)
    segment_id = f"seg_{uuid.uuid4().hex[:8]}"
    await store.create_segment(Segment(segment_id, W, "s", f(raw), 1))
    while not await store.backfill_segment(W, segment_id, 10):
        pass
    return segment_id


async def members(store: Store, segment_id: str) -> list[str]:
    assert isinstance(store, Segments)
    found, _ = await store.segment_members(W, segment_id, None, 100)
    return [c.contact_id for c in found]


async def matching(store: Store, raw: dict[str, Any]) -> list[str]:
    assert isinstance(store, ContactQueries)
    page = await store.query_contacts(W, Query(f(raw), 100, None))
    return [c.contact_id for c in page.contacts]


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ({"property": "v", "op": "eq", "value": True}, [1, True, 1.0, True, 1]),
        ({"property": "v", "op": "eq", "value": 1}, [True, 1, True, 1.0, False]),
        ({"property": "v", "op": "in", "value": [False, "x"]}, [0, False, 0.0, False, -0.0]),
        ({"property": "v", "op": "contains", "value": True}, [[1], [True], [1.0], [True], [1]]),
        ({"property": "v", "op": "contains", "value": 1}, [[True], [1], [True], [1.0], [0]]),
        ({"property": "v", "op": "ne", "value": 0}, [0, False, 0, -0.0, 0]),
    ],
)
async def test_given_a_segment_when_values_equal_in_python_only_follow_each_other_then_members_follow(
    store: Store, raw: dict[str, Any], values: list[Any]
) -> None:
    await store.apply([event("c1", "e0", 1 * S, W, v=values[0])])
    segment_id = await segment_of(store, raw)
    for i, value in enumerate(values[1:], start=1):
        await store.apply([event("c1", f"e{i}", (i + 1) * S, W, v=value)])
        assert await members(store, segment_id) == await matching(store, raw), (i, value)
        expected = ["c1"] if matches(f(raw), "c1", {"v": value}, 0) else []
        assert await members(store, segment_id) == expected, (i, value)
    for i, value in enumerate(values[1:], start=len(values)):
        # the same through an operation: set_once after an unset
        await store.apply([event("c1", f"u{i}", 2 * i * S, W, v=None)])
        await store.apply([op_event(f"o{i}", 2 * i + 1, {"v": "set_once"}, v=value)])
        assert await members(store, segment_id) == await matching(store, raw), (i, value)
        expected = ["c1"] if matches(f(raw), "c1", {"v": value}, 0) else []
        assert await members(store, segment_id) == expected, (i, value)


@pytest.mark.parametrize(("before", "after"), PAIRS)
async def test_given_an_applied_event_when_its_id_comes_again_with_a_value_equal_in_python_only_then_a_duplicate(
    store: Store, before: Any, after: Any
) -> None:
    # The stores compare a repeat with what was applied as the event's bytes; the memory store
    # compared the decoded events, where {"v": 1} == {"v": True}, and kept it "applied".
    first = event("c1", "e1", 1 * S, W, v=before)
    await store.apply([first])
    same = await store.apply([first])
    found = await store.get_event(W, "e1")
    assert same.duplicates == 1 and found is not None and found.status == "applied"
    again = await store.apply([msgspec.structs.replace(first, properties={"v": after})])
    found = await store.get_event(W, "e1")
    assert again.duplicates == 1 and found is not None and found.status == "duplicate"
    assert exact((await profile(store))["v"]) == exact(before)
