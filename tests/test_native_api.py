"""POST /v1/properties and /v1/properties/batch, as SPEC 2.1 and 2.2 describe them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from profilehook import events
from profilehook.cli import SEED_EVENT
from profilehook.errors import ValidationFailed
from profilehook.events import Event
from profilehook.sources import native
from tests.support import examples, wait_until

# The seed document's example event, as the quick start prints it.
SEED = SEED_EVENT


def event(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "contact_id": "c1",
        "event_name": "aampe_property_update",
        "timestamp": 1700000000,
        "user_properties": {"plan": "pro"},
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def applied_contact(client: TestClient, auth: dict[str, str], contact_id: str) -> Any:
    def fetch() -> Any:
        r = client.get(f"/v1/contacts/{contact_id}", headers=auth)
        return r.json() if r.status_code == 200 else None

    return wait_until(fetch)


def wait_applied(
    client: TestClient, auth: dict[str, str], event_id: str, status: str = "applied"
) -> dict[str, Any]:
    def fetch() -> Any:
        r = client.get(f"/v1/events/{event_id}", headers=auth)
        return r.json() if r.status_code == 200 and r.json()["status"] == status else None

    result: dict[str, Any] = wait_until(fetch)
    return result


class TestAccepting:
    def test_the_seed_example_is_accepted_with_its_event_id(self, client, auth):
        r = client.post("/v1/properties", json=SEED, headers=auth)
        assert r.status_code == 202
        assert r.json() == {"status": "accepted", "event_id": SEED["event_id"]}
        profile = applied_contact(client, auth, "user123")
        assert profile["properties"] == SEED["user_properties"]

    def test_an_event_without_event_id_gets_a_generated_uuid4(self, client, auth):
        r = client.post("/v1/properties", json=event(), headers=auth)
        assert r.status_code == 202
        event_id = r.json()["event_id"]
        assert len(event_id) == 36 and event_id[14] == "4"
        made = uuid.UUID(event_id)
        assert (made.version, made.variant) == (4, uuid.RFC_4122)
        # Its first 48 bits are when it was made (ms): ids sort, and index, in time order.
        assert abs(int(made.hex[:12], 16) - time.time() * 1000) < 60_000
        later = client.post("/v1/properties", json=event(), headers=auth).json()["event_id"]
        assert later != event_id and later[:13] >= event_id[:13]

    def test_repeating_an_event_id_answers_the_same_and_changes_nothing(self, client, auth):
        first = client.post("/v1/properties", json=event(event_id="dup-1"), headers=auth)
        again = client.post(
            "/v1/properties",
            json=event(event_id="dup-1", user_properties={"plan": "free"}),
            headers=auth,
        )
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        wait_until(lambda: client.get("/metrics").text.count("profilehook_queue_depth 0.0"))
        wait_applied(client, auth, "dup-1", "duplicate")  # the second copy was dropped
        assert applied_contact(client, auth, "c1")["properties"] == {"plan": "pro"}
        history = client.get("/v1/contacts/c1/history", headers=auth).json()
        assert [e["event_id"] for e in history["events"]] == ["dup-1"]

    def test_milliseconds_and_seconds_give_the_same_event_time(self, client, auth):
        client.post(
            "/v1/properties", json=event(event_id="s", timestamp=1700000000.5), headers=auth
        )
        client.post(
            "/v1/properties",
            json=event(event_id="ms", contact_id="c2", timestamp=1700000000500),
            headers=auth,
        )
        assert wait_applied(client, auth, "s")["timestamp"] == 1700000000.5
        assert wait_applied(client, auth, "ms")["timestamp"] == 1700000000.5

    def test_time_is_an_alias_when_timestamp_is_absent(self, client, auth):
        body = event(timestamp=..., time=1600000000, event_id="alias")
        assert client.post("/v1/properties", json=body, headers=auth).status_code == 202
        assert wait_applied(client, auth, "alias")["timestamp"] == 1600000000

    def test_unknown_top_level_fields_are_ignored(self, client, auth):
        r = client.post("/v1/properties", json=event(extra={"x": 1}), headers=auth)
        assert r.status_code == 202

    def test_json_with_a_charset_parameter_is_json(self, client, auth):
        r = client.post(
            "/v1/properties",
            content=b'{"contact_id":"c","event_name":"e","timestamp":1,"user_properties":{}}',
            headers={**auth, "Content-Type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 202

    def test_newer_event_time_wins_whatever_the_arrival_order(self, client, auth):
        newer = event(event_id="new", timestamp=200, user_properties={"plan": "new"})
        older = event(event_id="old", timestamp=100, user_properties={"plan": "old", "x": 1})
        client.post("/v1/properties", json=newer, headers=auth)
        client.post("/v1/properties", json=older, headers=auth)
        wait_applied(client, auth, "old")
        profile = applied_contact(client, auth, "c1")
        assert profile["properties"] == {"plan": "new", "x": 1}
        assert profile["versions"]["plan"] == {"timestamp": 200, "event_id": "new"}

    def test_null_unsets_a_property(self, client, auth):
        client.post("/v1/properties", json=event(event_id="a", timestamp=1), headers=auth)
        unset = event(event_id="b", timestamp=2, user_properties={"plan": None, "y": 2})
        client.post("/v1/properties", json=unset, headers=auth)
        wait_applied(client, auth, "b")
        assert applied_contact(client, auth, "c1")["properties"] == {"y": 2}


def problems(response: Any) -> list[tuple[tuple[Any, ...], str]]:
    assert response.status_code == 422, response.text
    return [(tuple(p["loc"]), p["type"]) for p in response.json()["detail"]]


class TestRefusing:
    def test_every_problem_is_listed_at_once(self, client, auth):
        body = {"contact_id": 5, "event_name": "", "user_properties": [], "metadata": 3}
        r = client.post("/v1/properties", json=body, headers=auth)
        assert problems(r) == [
            (("body", "contact_id"), "string_type"),
            (("body", "event_name"), "string_too_short"),
            (("body", "timestamp"), "missing"),
            (("body", "user_properties"), "dict_type"),
            (("body", "metadata"), "dict_type"),
        ]
        first = r.json()["detail"][0]
        assert first["msg"] == "Input should be a valid string"

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (event(contact_id=...), [(("body", "contact_id"), "missing")]),
            (event(event_name=...), [(("body", "event_name"), "missing")]),
            (event(timestamp=...), [(("body", "timestamp"), "missing")]),
            (event(user_properties=...), [(("body", "user_properties"), "missing")]),
            (event(timestamp="soon"), [(("body", "timestamp"), "float_type")]),
            (event(timestamp=True), [(("body", "timestamp"), "float_type")]),
            (event(timestamp=-1), [(("body", "timestamp"), "value_error")]),
            (event(timestamp=1e20), [(("body", "timestamp"), "value_error")]),
            (event(event_id=7), [(("body", "event_id"), "string_type")]),
            (event(event_id=""), [(("body", "event_id"), "string_too_short")]),
            (event(contact_id="x" * 513), [(("body", "contact_id"), "string_too_long")]),
            # 512 characters, but 2,048 bytes: ids are index keys, capped at 1,024 bytes too.
            (event(contact_id="\U0001f600" * 512), [(("body", "contact_id"), "string_too_long")]),
            (event(event_id="\u00e9" * 257), [(("body", "event_id"), "string_too_long")]),
            (event(event_id="\U0001f600" * 129), [(("body", "event_id"), "string_too_long")]),
            (event(metadata=[1]), [(("body", "metadata"), "dict_type")]),
            (
                event(user_properties={"x" * 257: 1}),
                [(("body", "user_properties", "x" * 257), "string_too_long")],
            ),
            (
                event(user_properties={str(i): i for i in range(1001)}),
                [(("body", "user_properties"), "too_long")],
            ),
        ],
        ids=lambda v: str(v)[:40] if not isinstance(v, list) else "",
    )
    def test_a_field_that_does_not_fit_is_named(self, client, auth, body, expected):
        assert problems(client.post("/v1/properties", json=body, headers=auth)) == expected

    @pytest.mark.parametrize(
        "raw",
        [b"{", b'{"a": NaN}', b'{"a": 1,}', b"\xff\xfe", b'{"a": Infinity}'],
        ids=["truncated", "nan", "trailing-comma", "bad-utf8", "infinity"],
    )
    def test_malformed_json_is_json_invalid(self, client, auth, raw):
        r = client.post(
            "/v1/properties", content=raw, headers={**auth, "Content-Type": "application/json"}
        )
        [(loc, kind)] = problems(r)
        assert kind == "json_invalid" and loc[0] == "body"

    @pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null"])
    def test_a_body_that_is_not_an_object_is_refused(self, client, auth, raw):
        r = client.post("/v1/properties", content=raw, headers=auth)
        assert problems(r) == [(("body",), "model_attributes_type")]

    def test_an_empty_body_is_a_missing_body(self, client, auth):
        assert problems(client.post("/v1/properties", content=b"", headers=auth)) == [
            (("body",), "missing")
        ]

    def test_deeply_nested_json_is_refused(self, client, auth):
        deep: Any = 1
        for _ in range(40):
            deep = {"d": deep}
        r = client.post("/v1/properties", json=event(user_properties={"x": deep}), headers=auth)
        assert problems(r) == [(("body",), "json_invalid")]

    @pytest.mark.parametrize(
        "header",
        [None, "", "Bearer", "Bearer nope", "Basic abc", "Bearer phk_000000000000_wrong", "bearer"],
    )
    def test_a_missing_or_wrong_key_is_401_with_the_seed_body(self, client, header):
        headers = {} if header is None else {"Authorization": header}
        r = client.post("/v1/properties", json=event(), headers=headers)
        assert r.status_code == 401
        assert r.json() == {"detail": "Invalid API Key"}

    def test_a_body_over_the_limit_is_413(self, client, auth):
        big = event(user_properties={"blob": "x" * (300 * 1024)})
        r = client.post("/v1/properties", json=big, headers=auth)
        assert r.status_code == 413
        assert "262144" in r.json()["detail"]

    def test_a_declared_content_type_that_is_not_json_is_415(self, client, auth):
        r = client.post(
            "/v1/properties",
            content=b"contact_id=x",
            headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 415
        assert "application/json" in r.json()["detail"]

    def test_a_refused_event_is_never_stored(self, client, auth):
        client.post("/v1/properties", json=event(event_id="bad", timestamp="x"), headers=auth)
        assert client.get("/v1/events/bad", headers=auth).status_code == 404


class TestBatch:
    def test_valid_items_are_accepted_and_invalid_ones_reported(self, client, auth):
        body = {"events": [event(event_id="b1"), {"contact_id": "x"}, event(event_id="b3")]}
        r = client.post("/v1/properties/batch", json=body, headers=auth)
        assert r.status_code == 202
        out = r.json()
        assert (out["accepted"], out["rejected"]) == (2, 1)
        assert out["results"][0] == {"index": 0, "status": "accepted", "event_id": "b1"}
        assert out["results"][1]["status"] == "rejected"
        locs = {tuple(p["loc"]) for p in out["results"][1]["detail"]}
        assert ("body", "events", 1, "event_name") in locs
        wait_applied(client, auth, "b3")

    def test_all_invalid_is_422_listing_every_problem(self, client, auth):
        body = {"events": [{"contact_id": 1}, []]}
        locs = [
            loc for loc, _ in problems(client.post("/v1/properties/batch", json=body, headers=auth))
        ]
        assert ("body", "events", 0, "contact_id") in locs
        assert ("body", "events", 1) in locs

    @pytest.mark.parametrize(
        ("body", "kind"),
        [
            ({}, "missing"),
            ({"events": {}}, "list_type"),
            ({"events": []}, "too_short"),
            ({"events": [event()] * 1001}, "too_long"),
        ],
        ids=["no-events", "not-a-list", "empty", "too-many"],
    )
    def test_a_wrong_envelope_is_422(self, client, auth, body, kind):
        assert problems(client.post("/v1/properties/batch", json=body, headers=auth)) == [
            (("body", "events"), kind)
        ]

    def test_events_without_event_id_get_distinct_uuid4s_each_applied(self, client, auth):
        body = {"events": [event(contact_id=f"m{i}", event_id=...) for i in range(300)]}
        body["events"][7]["event_id"] = "given-7"
        r = client.post("/v1/properties/batch", json=body, headers=auth)
        assert r.status_code == 202
        ids = [result["event_id"] for result in r.json()["results"]]
        assert ids[7] == "given-7"
        made = [uuid.UUID(i) for n, i in enumerate(ids) if n != 7]
        assert len(set(ids)) == 300
        assert {(u.version, u.variant) for u in made} == {(4, uuid.RFC_4122)}
        assert all(abs(int(u.hex[:12], 16) - time.time() * 1000) < 60_000 for u in made)
        # Each is an event of its own: every contact got its update, under its id.
        assert wait_applied(client, auth, ids[299])["contact_id"] == "m299"
        assert applied_contact(client, auth, "m0")["properties"] == {"plan": "pro"}

    @pytest.mark.parametrize(
        ("items", "rejected"),
        [
            ([event(event_id="b0"), event(event_id='q"uote\\ ✉'), event(event_id=...)], 0),
            ([event(event_id="m0", timestamp=1700000000123), event(add={"n": 1})], 0),
            ([event(event_id="n0", user_properties={"a": {"deep": [1]}})], 0),
            ([event(event_id="r0"), {"contact_id": "x"}], 1),
        ],
        ids=["plain", "operations", "general", "one-rejected"],
    )
    def test_the_answer_is_byte_for_byte_the_results_of_every_item(
        self, client, auth, items, rejected
    ):
        r = client.post("/v1/properties/batch", json={"events": items}, headers=auth)
        assert r.status_code == 202
        found = r.json()["results"]
        results = [
            {"index": i, "status": "rejected", "detail": f["detail"]}
            if "detail" in f
            else {"index": i, "status": "accepted", "event_id": item.get("event_id", f["event_id"])}
            for i, (item, f) in enumerate(zip(items, found, strict=True))
        ]
        expected = {"accepted": len(items) - rejected, "rejected": rejected, "results": results}
        assert r.content == msgspec.json.encode(expected)
        assert r.headers["content-length"] == str(len(r.content))

    def test_a_batch_needs_a_key(self, client):
        r = client.post("/v1/properties/batch", json={"events": [event()]})
        assert r.status_code == 401


# -- the hot path agrees with the full checks ------------------------------------------------

_strings = st.one_of(
    st.just(""),
    st.text(max_size=4),
    st.text(min_size=250, max_size=260),
    st.text(alphabet="\U0001f600é", min_size=126, max_size=300),
)
_anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), _strings, st.lists(st.integers())
)
_times = st.one_of(
    st.integers(min_value=-5, max_value=10**14),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.5, 1e11 - 1, 1e11, 2.5e14, True]),
    _anything,
)
_properties = st.one_of(st.dictionaries(_strings, _anything, max_size=4), _anything)


_valid = st.fixed_dictionaries(
    {
        "contact_id": st.text(min_size=1, max_size=8),
        "event_name": st.text(min_size=1, max_size=8),
        "timestamp": st.one_of(st.integers(0, 10**10), st.floats(0, 1e10)),
        "user_properties": st.dictionaries(st.text(min_size=1, max_size=5), _anything, max_size=3),
    },
    optional={
        "event_id": st.text(min_size=1, max_size=8),
        "metadata": st.dictionaries(st.text(max_size=3), _anything, max_size=2),
        "time": _times,
    },
)
_changes = st.dictionaries(
    st.sampled_from(
        ["contact_id", "event_name", "timestamp", "time", "event_id", "user_properties", "metadata"]
    ),
    st.one_of(_strings, _times, _properties, _anything),
    max_size=2,
)


@settings(max_examples=examples(1000), deadline=None)
@given(_valid, _changes, st.sets(st.sampled_from(["timestamp", "event_id", "metadata"])))
def test_the_fast_path_accepts_only_what_the_full_checks_accept_and_makes_the_same_event(
    value: dict[str, Any], changes: dict[str, Any], dropped: set[str]
) -> None:
    value = {k: v for k, v in {**value, **changes}.items() if k not in dropped}
    fast = native._plainly_valid(value, "w", 123)
    checked = native._checked(value, "w", 123, ("body",))
    if fast is None:
        return
    assert isinstance(checked, Event), checked
    if "event_id" not in value or value["event_id"] is None:  # a fresh id each time
        checked = msgspec.structs.replace(checked, event_id=fast.event_id)
    assert checked == fast


# -- bodies in the everyday shape take a path of their own; it agrees with the general one ------

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53), 0.5, 1e300]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.sampled_from(["a\x00b", "\\u0000"]),
)
_values = st.one_of(
    _leaves,
    st.lists(_leaves, max_size=2),
    st.dictionaries(st.text(max_size=2), _leaves, max_size=2),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(-1e6, 1e6),
    st.text(max_size=3),
)
_everyday = st.fixed_dictionaries(
    {
        "contact_id": st.text(min_size=1, max_size=8),
        "event_name": st.text(min_size=1, max_size=4),
        "timestamp": st.one_of(
            st.integers(0, 10**10), st.floats(0, 1e10), st.sampled_from([1.7e12, 1700000000123])
        ),
        "user_properties": st.dictionaries(st.text(min_size=1, max_size=4), _scalars, max_size=3),
    },
    optional={
        "event_id": st.one_of(st.none(), st.text(min_size=1, max_size=6)),
        "metadata": st.one_of(
            st.none(), st.dictionaries(st.text(max_size=3), _scalars, max_size=2)
        ),
    },
)
# One change that may or may not leave the everyday shape: an odd leaf, a nested value, a key
# the shape does not know, a field of the wrong type or size.
_odd = st.one_of(
    _leaves,
    _values,
    _times,
    st.text(min_size=1, max_size=4).map(lambda name: {name: "a\x00b"}),
    st.sampled_from([{"": 1}, {"x" * 257: 1}, {"n": 2**53}, {"n": -(2**53) + 1}, {"a\x00": 1}]),
    st.text(min_size=250, max_size=260),
    st.text(min_size=126, max_size=130),
)
_change = st.one_of(
    st.just({}),
    st.dictionaries(
        st.sampled_from(
            [
                *("contact_id", "event_name", "timestamp", "user_properties", "metadata"),
                *("event_id", "time", "extra"),
            ]
        ),
        _odd,
        max_size=1,
    ),
)


def _outcome(parse: Any, body: bytes) -> Any:
    try:
        return parse(body, "w", 123)
    except ValidationFailed as exc:
        return ("422", exc.detail)


def _same_ids(fast: Any, general: Any) -> Any:
    """``general`` with the ids it made replaced by the ones ``fast`` made."""
    if isinstance(fast, Event) and isinstance(general, Event):
        return msgspec.structs.replace(general, event_id=fast.event_id)
    if isinstance(fast, list) and isinstance(general, list) and len(fast) == len(general):
        return [_same_ids(f, g) for f, g in zip(fast, general, strict=True)]
    return general


_EVERYDAY = {"contact_id": "c", "event_name": "e", "timestamp": 1, "user_properties": {"a": 1}}


@settings(max_examples=examples(1500), deadline=None)
@given(_everyday, _change, st.sampled_from(["single", "batch"]), st.integers(1, 3))
@example(_EVERYDAY, {"user_properties": {"n": 2**53}}, "batch", 2)
@example(_EVERYDAY, {"metadata": {"n": -(2**53)}}, "single", 1)
@example(_EVERYDAY, {"user_properties": {"a": "x\x00"}}, "single", 1)
@example(_EVERYDAY, {"metadata": {"a\x00": 1}}, "batch", 1)
@example(_EVERYDAY, {"user_properties": {"a": {"deep": 1}}}, "single", 1)
@example(_EVERYDAY, {"extra": 1}, "batch", 3)
@example(_EVERYDAY, {"timestamp": 1700000000123}, "batch", 1)
@example(_EVERYDAY, {"timestamp": 1e15}, "single", 1)
@example(_EVERYDAY, {"timestamp": 10**400}, "single", 1)
@example(_EVERYDAY, {"timestamp": -(10**400)}, "batch", 1)
@example(
    _EVERYDAY, {"add": {"n": 1, "m": 2.5}, "unset": ["u"], "set_once": {"f": "x"}}, "single", 1
)
@example(_EVERYDAY, {"append": {"t": ["a", 1]}, "remove": {"r": [True]}}, "batch", 2)
@example(_EVERYDAY, {"add": {"a": 1}}, "single", 1)  # a name in two operations
@example(_EVERYDAY, {"add": {"n": True}}, "batch", 1)
@example(_EVERYDAY, {"unset": ["u", "u"], "user_properties": None}, "single", 1)
@example(_EVERYDAY, {"append": {"t": "a"}, "user_properties": {}}, "single", 1)
@example(_EVERYDAY, {"add": {"n": 1}, "user_properties": None}, "batch", 1)
@example(_EVERYDAY, {"add": {"n": 1}, "user_properties": ...}, "single", 1)
def test_a_body_gets_the_same_answer_on_the_everyday_path_as_on_the_general_one(
    value: dict[str, Any], change: dict[str, Any], endpoint: str, copies: int
) -> None:
    value = {k: v for k, v in {**value, **change}.items() if v is not ...}
    if endpoint == "single":
        body = msgspec.json.encode(value)
        fast, general = (
            _outcome(native.parse_single, body),
            _outcome(native._single_in_general, body),
        )
    else:
        body = msgspec.json.encode({"events": [value] * copies})
        fast, general = _outcome(native.parse_batch, body), _outcome(native.batch_in_general, body)
    given_id = isinstance(value.get("event_id"), str) and value["event_id"]
    assert (fast if given_id else _same_ids(general, fast)) == general


def test_everyday_bodies_are_decoded_once():
    """The benchmark's bodies take the everyday path (the general one is never called)."""
    single = msgspec.json.encode(event())
    batch = msgspec.json.encode({"events": [event(contact_id=f"u{i}") for i in range(100)]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "_single_in_general", None)
        patch.setattr(native, "batch_in_general", None)
        assert native.parse_single(single, "w", 1).contact_id == "c1"
        assert len(native.parse_batch(batch, "w", 1)) == 100


def test_a_batch_of_sets_in_seconds_is_decoded_once_by_the_plain_struct():
    """SDK-shaped batches (sets only, whole or fractional seconds) decode into the plain Struct
    alone: neither the Struct of operations nor the general path is tried."""
    items = [event(contact_id=f"u{i}", timestamp=1700000000 + i / 4) for i in range(100)]
    items[3]["event_id"] = "given-3"
    items[4]["metadata"] = {"ip": "203.0.113.9", "n": 1}
    body = msgspec.json.encode({"events": items})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "_decode_flat_batch", None)
        patch.setattr(native, "batch_in_general", None)
        made = native.parse_batch(body, "w", 1)
    assert [e.ts_us for e in made] == [1_700_000_000_000_000 + i * 250_000 for i in range(100)]  # type: ignore[union-attr]
    assert made[3].event_id == "given-3"  # type: ignore[union-attr]
    assert made[4].metadata == {"ip": "203.0.113.9", "n": 1}  # type: ignore[union-attr]


_SET = {"contact_id": "c", "event_name": "e", "timestamp": 1700000000, "user_properties": {"a": 1}}


@pytest.mark.parametrize(
    "items",
    [
        [_SET, {**_SET, "add": {"n": 2}}],  # sets, then an operation: the plain Struct fails
        [{**_SET, "unset": ["u"]}, _SET],
        [_SET, {**_SET, "timestamp": 1700000000123}],  # milliseconds
        [{**_SET, "timestamp": 1700000000.5}, {**_SET, "timestamp": 0}],
        [{**_SET, "timestamp": 99999999999.9}, {**_SET, "timestamp": 99999999999}],
        [{**_SET, "timestamp": 1e11}, {**_SET, "timestamp": -1}],
        [{**_SET, "user_properties": {"a": {"deep": 1}}}, _SET],  # the general path's
        [{**_SET, "event_id": 'x"y\\z ✉'}, {**_SET, "metadata": None}],
        [_SET, {**_SET, "user_properties": None}],  # one invalid item
        [{**_SET, "timestamp": 1000}, _SET],  # too old for oldest_us below
    ],
)
@pytest.mark.parametrize("oldest_us", [0, 1_000_000_000_000_000])
def test_every_path_makes_the_same_events_of_a_batch(items: list[Any], oldest_us: int) -> None:
    """The plain Struct, the Struct of operations and the general path agree on every batch,
    the retention window's start included (a batch ``whole_batch`` declines is the general
    path's, whatever it holds)."""
    body = msgspec.json.encode({"events": items})
    general = _outcome(lambda b, w, r: native.batch_in_general(b, w, r, oldest_us), body)
    found = native.whole_batch(body, "w", 123, oldest_us)
    whole = None if found is None else list(found)
    parsed = _outcome(lambda b, w, r: native.parse_batch(b, w, r, oldest_us), body)
    assert _same_ids(general, parsed) == general
    if whole is not None:
        assert all(isinstance(e, Event) for e in general)
        assert whole == _same_ids(whole, general)


@settings(max_examples=examples(2_000))
@given(
    st.one_of(
        st.integers(0, 2**51 + 10**6),
        st.integers(1_600_000_000_000_000, 1_900_000_000_000_000),  # (this century's days)
        st.integers(-(2**40), 253_402_300_000_000_000),  # (to the year 9999)
    )
)
@example(0)
@example(2**51 - 1)
@example(2**51)
@example(-1)
@example(86_400_000_000)
def test_iso_is_the_string_datetime_makes_of_the_time(us):
    """``iso`` counts days and seconds where that is exact, and is then byte for byte what
    ``datetime`` makes of the float seconds, as it always did."""
    expected = datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")
    assert events.iso(us) == expected


def test_a_batchs_ids_count_on_across_their_table_of_last_digits(monkeypatch):
    # The last three hex digits come from a table of 4,096: the digits before them move on.
    monkeypatch.setattr(events, "_getrandbits", lambda n: 0xABC << 62 | 0x1234_5678_9FFE)
    ids = events.new_event_ids(5_000)
    assert [i[-12:] for i in ids[:4]] == [
        "123456789ffe",
        "123456789fff",
        "12345678a000",
        "12345678a001",
    ]
    assert [int(i[-12:], 16) for i in ids] == [0x1234_5678_9FFE + n for n in range(5_000)]
    assert {i[:24] for i in ids} == {ids[0][:24]}


def test_a_batchs_ids_stay_distinct_and_well_formed_where_their_count_wraps(monkeypatch):
    # The last 48 bits count up from a random start: one near the top wraps to zero.
    monkeypatch.setattr(events, "_getrandbits", lambda n: (1 << 74) - 2)
    ids = events.new_event_ids(4)
    assert [i[-12:] for i in ids] == [
        "fffffffffffe",
        "ffffffffffff",
        "000000000000",
        "000000000001",
    ]
    assert {(uuid.UUID(i).version, uuid.UUID(i).variant) for i in ids} == {(4, uuid.RFC_4122)}
    assert len({i[:24] for i in ids}) == 1 and all(len(i) == 36 for i in ids)


# -- requests that could be read two ways ----------------------------------------------------


class TestAmbiguousRequests:
    @pytest.mark.parametrize("good_first", [True, False], ids=["good-first", "good-last"])
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/v1/properties"),
            ("POST", "/v1/properties/batch"),
            ("GET", "/v1/contacts/c1"),
            ("GET", "/v1/contacts/c1/history"),
            ("GET", "/v1/events/e1"),
        ],
    )
    def test_two_authorization_headers_are_refused_whichever_comes_first(
        self, client, key, method, path, good_first
    ):
        """Given a valid key and a wrong one in two Authorization headers, in either order,
        then every endpoint answers 401: none picks one of them (POST read the last, GET the
        first)."""
        good, bad = ("authorization", f"Bearer {key}"), ("authorization", "Bearer phk_wrong")
        headers = [good, bad] if good_first else [bad, good]
        body = event(event_id="e1")
        json_body = {"events": [body]} if path.endswith("batch") else body
        r = client.request(
            method, path, headers=headers, json=json_body if method == "POST" else None
        )
        assert (r.status_code, r.json()) == (401, {"detail": "Invalid API Key"})

    def test_the_same_key_twice_is_refused_too(self, client, key):
        headers = [("authorization", f"Bearer {key}")] * 2
        r = client.post("/v1/properties", headers=headers, json=event())
        assert (r.status_code, r.json()) == (401, {"detail": "Invalid API Key"})

    @pytest.mark.parametrize(
        ("fields", "loc"),
        [
            ({"timestamp": None}, ("body", "timestamp")),
            ({"timestamp": None, "time": 1700000000}, ("body", "timestamp")),
            ({"timestamp": ..., "time": None}, ("body", "time")),
        ],
        ids=["timestamp-null", "timestamp-null-beside-time", "time-null"],
    )
    def test_a_null_event_time_is_a_type_error_not_a_missing_field(self, client, auth, fields, loc):
        """SPEC 2.1: ``time`` stands in only when ``timestamp`` is absent; a null is present."""
        r = client.post("/v1/properties", json=event(**fields), headers=auth)
        [found] = r.json()["detail"]
        assert (tuple(found["loc"]), found["type"], found["msg"]) == (
            loc,
            "float_type",
            "Input should be a valid number",
        )

    @pytest.mark.parametrize(
        ("raw", "escape"),
        [
            (b'{"user_properties": {"a": "\\ud800"}, "contact_id": "c"}', b"\\ud800"),
            (b'{"user_properties": {"a": "x\\uDBFFy"}, "contact_id": "c"}', b"\\uDBFF"),
            (b'{"user_properties": {"a": "\\ud800\\n"}}', b"\\ud800"),
            (b'{"user_properties": {"a": "\\\\\\ud800"}}', b"\\ud800"),
            (b'{"a": "\\\\ud800", "b": ["\\ud83d"]}', b"\\ud83d"),
            (b'{"user_properties": {"a": "\\udc00"}}', b"\\udc00"),
            (b'{"user_properties": {"\\ud800": 1}}', b"\\ud800"),
        ],
        ids=[
            "high-last",
            "high-inside",
            "high-before-escape",
            "after-backslash",
            "not-escaped-first",
            "low-alone",
            "in-a-key",
        ],
    )
    def test_a_lone_surrogate_is_json_invalid_at_its_byte_offset(self, client, auth, raw, escape):
        r = client.post("/v1/properties", content=raw, headers=auth)
        [found] = r.json()["detail"]
        assert found["type"] == "json_invalid"
        assert found["loc"] == ["body", raw.rindex(escape)]
        assert "surrogate" in found["ctx"]["error"]
