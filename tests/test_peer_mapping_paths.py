"""The shortcuts of the PostHog and Amplitude (HTTP API) mappings pinned to what the general
paths give: the typed decoding of an everyday body (validation._plainly), a PostHog event's
lone ``$set`` and canonical ``uuid``, an Amplitude event's lone ``$set``, and the check of
property names without a walk. Each shortcut must give exactly what it spares, on any input."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profilehook import constants as c
from profilehook import validation as p
from profilehook.errors import PeerRefused
from profilehook.sources import amplitude_http, posthog
from profilehook.sources.peer_events import storable_names, storable_properties, usable_event_id
from tests.support import examples
from tests.test_limits import json_values

names = st.sampled_from(["a", "b", "plan", "", "x" * 257, "n\x00ul", "$set"]) | st.text(max_size=4)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
)
objects = st.dictionaries(names, scalars | st.lists(scalars, max_size=2), max_size=4)
operands = objects | scalars | st.lists(names | scalars, max_size=3)


def _nested(value: Any, depth: int, in_object: bool) -> Any:
    for _ in range(depth):
        value = {"k": value} if in_object else [value]
    return value


deep_values = st.builds(_nested, json_values, st.integers(0, 40), st.booleans())


def _general(body: bytes) -> tuple[Any, list[Any], bool]:
    value, problems, verdict = p._decoded(body, ("body",), None)
    return value, problems, verdict is p._UNSTORABLE


@settings(max_examples=examples(500), deadline=None)
@given(json_values | deep_values)
def test_the_typed_decoding_gives_what_the_general_path_gives(value):
    body = msgspec.json.encode(value)
    assert p.decode_json_keeping_unstorable(body) == _general(body)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=40) | st.sampled_from([b"", b" ", b"null", b'"\\u0000"', b"[1e400]"]))
def test_the_typed_decoding_of_any_bytes_gives_what_the_general_path_gives(body):
    assert p.decode_json_keeping_unstorable(body) == _general(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 9007199254740991, "b": -9007199254740991}',
        b'{"a": 9007199254740992}',  # one past: unstorable, found by the walk
        b'{"a": "x\\u0000y"}',
        b'{"a\\u0000": 1}',
        b'{"a": 1, "a": 2}',  # the last value, as the general path keeps it
        b'{"a": 1.0, "b": 1, "c": 1e2, "d": -0.0, "e": "\\u00e9\\ud83d\\ude00"}',
        json.dumps(_nested(1, 32, True)).encode(),  # as deep as allowed
        json.dumps(_nested(1, 33, False)).encode(),  # one deeper: refused
    ],
)
def test_the_typed_decoding_keeps_the_general_answer_at_the_edges(body):
    assert p.decode_json_keeping_unstorable(body) == _general(body)


@settings(max_examples=examples(300), deadline=None)
@given(st.dictionaries(names | st.text(min_size=250, max_size=260), st.none(), max_size=6))
def test_checking_names_alone_is_checking_them_as_properties(properties):
    assert storable_names(properties) is storable_properties(dict.fromkeys(properties))
    many = dict.fromkeys(map(str, range(c.MAX_PROPERTIES_PER_EVENT + 1)))
    assert storable_names(many) is storable_properties(dict.fromkeys(many)) is False


# -- PostHog ----------------------------------------------------------------------------------


def _posthog_updates_before(event: dict[str, Any], properties: dict[str, Any]) -> Any:
    """posthog._updates as it was before its shortcut for a lone ``$set``."""
    values: dict[str, Any] = {}
    ops: dict[str, Any] = {}
    for where in (properties, event):
        once = where.get("$set_once")
        if once is None:
            continue
        if type(once) is not dict:
            return None
        values.update(once)
        ops.update(dict.fromkeys(once, "set_once"))
    for where in (properties, event):
        sets = where.get("$set")
        if sets is None:
            continue
        if type(sets) is not dict:
            return None
        values.update(sets)
        for name in sets:
            ops.pop(name, None)
    for where in (properties, event):
        unset = where.get("$unset")
        if unset is None:
            continue
        names = list(unset) if type(unset) is dict else unset
        if type(names) is not list or not all(type(n) is str for n in names):
            return None
        values.update(dict.fromkeys(names))
        for name in names:
            ops.pop(name, None)
    return values, ops


updates = st.dictionaries(st.sampled_from(["$set", "$set_once", "$unset", "other"]), operands)


@settings(max_examples=examples(500), deadline=None)
@given(updates, updates)
def test_a_posthog_events_updates_are_what_they_were(event, properties):
    found = posthog._updates(event, properties)
    before = _posthog_updates_before(event, properties)
    assert found == before
    if found is not None:  # the same order of names, as the store receives them
        assert list(found[0]) == list(before[0]) and list(found[1]) == list(before[1])


def _is_uuid_before(value: Any) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


uuid_like = (
    st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.uuids().map(lambda u: "{" + str(u) + "}")
    | st.uuids().map(lambda u: u.hex)
    | st.uuids().map(lambda u: "urn:uuid:" + str(u))
    | st.uuids().map(lambda u: str(u)[:-1] + "g")
    | st.uuids().map(lambda u: str(u) + "\n")
    | st.uuids().map(lambda u: "-" * 300 + u.hex)
    | st.text(st.sampled_from("0123456789abcdefABCDEF-{}"), max_size=40)
    | st.integers()
)


@settings(max_examples=examples(500), deadline=None)
@given(uuid_like)
def test_a_posthog_uuid_is_taken_or_refused_as_before(given_uuid):
    body = {
        "api_key": "k",
        "batch": [{"event": "$set", "distinct_id": "d", "uuid": given_uuid, "$set": {"a": 1}}],
    }
    request = posthog.parse(json.dumps(body).encode())
    if not _is_uuid_before(given_uuid):
        with pytest.raises(PeerRefused, match="Invalid uuid"):
            posthog.map_events(request, "w", 10**15, 0)
        return
    mapped = posthog.map_events(request, "w", 10**15, 0)
    event_id = usable_event_id(given_uuid)
    assert [e.event_id for e in mapped.events] == ([] if event_id is None else [event_id])
    assert mapped.rejected == (event_id is None)


# -- Amplitude's HTTP API ---------------------------------------------------------------------


def _amplitude_update_before(given: dict[str, Any]) -> Any:
    """amplitude_http._update as it was before its shortcut for a lone ``$set``."""
    properties: dict[str, Any] = {}
    ops: dict[str, Any] = {}
    clear_all = False
    for key, value in given.items():
        if key == "$clearAll":
            clear_all = True
            continue
        if not key.startswith("$"):
            if key in properties:
                return None
            properties[key] = value
            continue
        if key in amplitude_http._LEFT_OUT:
            continue
        if type(value) is not dict:
            return None
        for name, argument in value.items():
            if name in properties:
                return None
            if key == "$unset":
                properties[name] = None
            elif key in amplitude_http._SETS:
                properties[name] = argument
            elif key in amplitude_http._OPS:
                op = amplitude_http._OPS[key]
                found = amplitude_http._argument(op, argument)  # type: ignore[arg-type]
                if found is None:
                    return None
                properties[name], ops[name] = found, op
            else:
                return None
    if not storable_properties(dict.fromkeys(properties)):
        return None
    return properties, ops, clear_all


user_properties = st.dictionaries(
    st.sampled_from(["$set", "$setOnce", "$add", "$unset", "$clearAll", "$prepend", "plan"]),
    operands,
    max_size=3,
) | st.builds(lambda v: {"$set": v}, operands | st.dictionaries(names, scalars, max_size=1001))


@settings(max_examples=examples(500), deadline=None)
@given(user_properties)
def test_an_amplitude_events_update_is_what_it_was(given):
    found = amplitude_http._update(given)
    before = _amplitude_update_before(given)
    assert found == before
    if found is not None:
        assert list(found[0]) == list(before[0])


# -- the general walks are spared on the everyday batches -------------------------------------


def _no_walks(monkeypatch: pytest.MonkeyPatch) -> None:
    def walked(*args: Any) -> Any:
        raise AssertionError("the decoded tree was walked")

    monkeypatch.setattr(p, "_depth", walked)
    monkeypatch.setattr(p, "_walk", walked)


def test_a_posthog_batch_of_sets_is_taken_without_walking_it(monkeypatch):
    _no_walks(monkeypatch)
    batch = [
        {"event": "$set", "distinct_id": f"u{i}", "uuid": str(uuid.UUID(int=i)),
         "timestamp": "2023-01-01T00:00:00+00:00", "$set": {"plan": "pro", "n": i},
         "properties": {"$lib": "posthog-python", "$lib_version": "7.9.1"}}
        for i in range(100)
    ]  # fmt: skip
    request = posthog.parse(json.dumps({"api_key": "k", "batch": batch}).encode())
    mapped = posthog.map_events(request, "w", 1_700_000_000_000_000, 0)
    assert [(e.contact_id, e.properties, e.ts_us) for e in mapped.events] == [
        (f"u{i}", {"plan": "pro", "n": i}, 1_672_531_200_000_000) for i in range(100)
    ]


def test_an_amplitude_batch_of_sets_is_taken_without_walking_it(monkeypatch):
    _no_walks(monkeypatch)
    events = [
        {"user_id": f"u{i}", "insert_id": f"i{i}", "time": 1672531200000,
         "event_type": "$identify", "user_properties": {"$set": {"plan": "pro", "n": i}}}
        for i in range(100)
    ]  # fmt: skip
    request = amplitude_http.parse_json(json.dumps({"api_key": "k", "events": events}).encode())
    mapped = amplitude_http.map_events(request, "w", 1_700_000_000_000_000, 0)
    assert [(e.event_id, e.properties, e.ops) for e in mapped.events] == [
        (f"i{i}", {"plan": "pro", "n": i}, None) for i in range(100)
    ]
