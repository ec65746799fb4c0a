"""The limits of SPEC 5, one by one: at the limit accepted, one past it refused with its 4xx.

Limits proven elsewhere: webhook bodies (tests/test_copernica.py ``test_a_body_over_64_kib``,
tests/test_amplitude.py ``test_a_body_over_the_limit_is_a_413``), form fields and bracket depth
(tests/test_forms.py), batch size (tests/test_native_api.py ``test_a_wrong_envelope_is_422``),
rate (tests/test_rate_limit.py), slow clients (tests/test_slow_clients.py).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profilehook import constants as c
from profilehook import validation as p
from profilehook.api.ingest import read_body
from profilehook.errors import PayloadTooLarge, ValidationFailed
from profilehook.events import Event, encode_event
from profilehook.sources import native
from profilehook.sources.forms import decode_form
from tests.support import ServerProcess, examples
from tests.test_native_api import applied_contact, event

JSON = {"Content-Type": "application/json"}
SAFE = c.MAX_JSON_INT  # 2**53 - 1


def post(client: Any, auth: dict[str, str], body: Any) -> Any:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return client.post("/v1/properties", content=raw, headers={**auth, **JSON})


def refused(response: Any) -> list[tuple[tuple[Any, ...], str]]:
    assert response.status_code == 422, response.text
    return [(tuple(q["loc"]), q["type"]) for q in response.json()["detail"]]


def padded(size: int) -> bytes:
    """A valid event whose JSON is exactly ``size`` bytes."""
    bare = msgspec.json.encode(event(user_properties={"pad": ""}))
    return msgspec.json.encode(event(user_properties={"pad": "x" * (size - len(bare))}))


# -- bodies -------------------------------------------------------------------------------------


def test_a_body_of_exactly_256_kib_is_accepted_and_one_byte_more_is_413(client, auth):
    assert post(client, auth, padded(c.MAX_SINGLE_BODY_BYTES)).status_code == 202
    over = post(client, auth, padded(c.MAX_SINGLE_BODY_BYTES + 1))
    assert over.status_code == 413 and over.json()["detail"].endswith("262144 bytes")


def test_a_batch_body_over_1_mib_is_413(client, auth):
    batch = {"events": [event(user_properties={"pad": "x" * 2_000}) for _ in range(600)]}
    raw = msgspec.json.encode(batch)
    assert len(raw) > c.MAX_BATCH_BODY_BYTES
    r = client.post("/v1/properties/batch", content=raw, headers={**auth, **JSON})
    assert r.status_code == 413


async def test_a_declared_length_over_the_cap_is_refused_before_reading_a_byte():
    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    with pytest.raises(PayloadTooLarge):
        await read_body(receive, b"1073741824", 1024)


async def test_an_endless_body_is_refused_as_soon_as_it_passes_the_cap():
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 4096
        return {"type": "http.request", "body": b"x" * 4096, "more_body": True}

    with pytest.raises(PayloadTooLarge):
        await read_body(receive, None, 64 * 1024)
    assert read <= 64 * 1024 + 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("limits") / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.slow
def test_a_real_server_answers_413_to_a_1_gib_declaration_without_waiting_for_the_body(server):
    head = (
        b"POST /v1/webhooks/none HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1073741824\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        answer = sock.recv(4096)
    # An unknown source is refused first; a known one would be refused by its cap: either way
    # before a byte of the body was sent.
    assert answer.startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 413 "))


# -- JSON ---------------------------------------------------------------------------------------


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"d": value}
    return value


def test_json_nested_32_deep_is_accepted_and_33_is_refused(client, auth):
    # The event is level 1 and user_properties level 2, so 30 more objects make 32.
    assert post(client, auth, event(user_properties={"x": nested(30)})).status_code == 202
    assert refused(post(client, auth, event(user_properties={"x": nested(31)}))) == [
        (("body",), "json_invalid")
    ]


def test_json_nested_100_000_deep_is_a_422_not_a_crash(client, auth):
    assert refused(post(client, auth, b"[" * 100_000 + b"]" * 100_000)) == [
        (("body",), "json_invalid")
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"contact_id": "c\xff", "event_name": "e", "timestamp": 1, "user_properties": {}}',
        b'{"contact_id": "c", "event_name": "e", "timestamp": 1, "user_properties": {"\xc3": 1}}',
        b'{"contact_id": "\\ud800", "event_name": "e", "timestamp": 1, "user_properties": {}}',
    ],
    ids=["invalid-utf8-in-a-value", "truncated-utf8-in-a-name", "lone-surrogate-escape"],
)
def test_invalid_unicode_inside_strings_is_json_invalid_with_its_byte_offset(client, auth, raw):
    [(loc, kind)] = refused(post(client, auth, raw))
    assert kind == "json_invalid" and loc[0] == "body"
    if b"\xff" in raw or b"\xc3" in raw:
        assert loc[1] == raw.index(b"\xff" if b"\xff" in raw else b"\xc3")


@pytest.mark.parametrize("number", [SAFE, -SAFE, 0, 1.5e300, -0.0])
def test_numbers_every_json_consumer_holds_exactly_are_accepted_and_round_trip(
    client, auth, number
):
    assert post(client, auth, event(user_properties={"n": number})).status_code == 202
    assert applied_contact(client, auth, "c1")["properties"]["n"] == number


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        (SAFE + 1, "less_than_equal"),
        (-SAFE - 1, "greater_than_equal"),
        (2**64, "less_than_equal"),
        (10**40, "less_than_equal"),
        (-(2**70), "greater_than_equal"),
    ],
    ids=["2^53", "-2^53", "2^64", "10^40", "-2^70"],
)
def test_integers_beyond_2_53_are_refused_wherever_they_are(client, auth, number, kind):
    body = event(user_properties={"ok": 1, "n": number}, metadata={"m": [number]})
    assert refused(post(client, auth, body)) == [
        (("body", "user_properties", "n"), kind),
        (("body", "metadata", "m", 0), kind),
    ]


def test_duplicate_keys_keep_the_last_value_as_javascript_and_jsonb_do(client, auth):
    raw = (
        b'{"contact_id": "first", "contact_id": "dup", "event_name": "e", "timestamp": 1,'
        b' "user_properties": {"plan": "free", "plan": "pro"}}'
    )
    assert post(client, auth, raw).status_code == 202
    assert applied_contact(client, auth, "dup")["properties"] == {"plan": "pro"}


@pytest.mark.parametrize(
    ("field", "value", "loc"),
    [
        ("contact_id", "a\x00b", ("body", "contact_id")),
        ("user_properties", {"a\x00": 1}, ("body", "user_properties", "a\x00")),
        ("user_properties", {"a": ["x\x00"]}, ("body", "user_properties", "a", 0)),
        ("metadata", {"m": "\x00"}, ("body", "metadata", "m")),
    ],
    ids=["contact_id", "property-name", "property-value", "metadata"],
)
def test_nul_in_any_string_is_refused_since_postgresql_cannot_store_it(
    client, auth, field, value, loc
):
    assert refused(post(client, auth, event(**{field: value}))) == [(loc, "value_error")]


def test_nul_in_a_copernica_form_value_is_found_for_a_422():
    assert [q["loc"] for q in p.unstorable(decode_form(b"fields[a]=x%00y"), ("body",))] == [
        ["body", "fields", "a"]
    ]


# -- events -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "body_at", "body_over", "problem"),
    [
        (
            "properties per event",
            event(user_properties={str(i): i for i in range(1_000)}),
            event(user_properties={str(i): i for i in range(1_001)}),
            (("body", "user_properties"), "too_long"),
        ),
        (
            "property name",
            event(user_properties={"n" * 256: 1}),
            event(user_properties={"n" * 257: 1}),
            (("body", "user_properties", "n" * 257), "string_too_long"),
        ),
        (
            "contact_id",
            event(contact_id="c" * 512),
            event(contact_id="c" * 513),
            (("body", "contact_id"), "string_too_long"),
        ),
        (
            "event_id",
            event(event_id="e" * 256),
            event(event_id="e" * 257),
            (("body", "event_id"), "string_too_long"),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_event_limits_accept_the_limit_and_refuse_one_more(
    client, auth, limit, body_at, body_over, problem
):
    assert post(client, auth, body_at).status_code == 202, limit
    assert refused(post(client, auth, body_over)) == [problem]


# -- properties of the JSON checks --------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=examples(300), deadline=None)
@given(json_values)
def test_whatever_json_arrives_it_is_refused_with_problems_or_accepted_and_storable(value):
    body = msgspec.json.encode(value)
    decoded, problems = p.decode_json(body)
    if problems:
        assert all({"loc", "msg", "type"} <= set(q) for q in problems)
        return
    # Accepted: every backend can keep it (the msgpack log, PostgreSQL's jsonb).
    stored = Event("w", "e", "c", 1, {"v": decoded})
    assert msgspec.msgpack.decode(encode_event(stored), type=Event) == stored
    assert "\\u0000" not in body.decode()


@settings(max_examples=examples(300), deadline=None)
@given(json_values)
def test_the_cheap_byte_filters_never_hide_a_refusal(value):
    body = msgspec.json.encode(value)
    decoded = msgspec.json.decode(body)
    verdict = p._walk(decoded, c.MAX_JSON_DEPTH)
    if p._plain_leaves(body):
        assert verdict is None or verdict is p._TOO_DEEP
        assert p._depth(decoded) is verdict  # the depth-only walk finds the same
        if p._shallow(body):
            assert verdict is None


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(json_values, max_size=5), json_values)
def test_a_batch_the_shape_check_calls_flat_nests_no_deeper_than_the_limit(events, other):
    for value in ({"events": events}, {"events": events, "other": other}, {"events": other}, other):
        if native._flat_batch(value):
            assert p._depth(value) is None


def test_a_batch_too_deep_in_one_property_is_refused_though_it_has_many_brackets():
    deep: object = 1
    for _ in range(c.MAX_JSON_DEPTH + 1):
        deep = {"d": deep}
    events = [{"contact_id": f"c{i}", "user_properties": {"x": {"y": i}}} for i in range(50)]
    events[7]["user_properties"] = {"deep": deep}
    body = msgspec.json.encode({"events": events})

    assert not p._shallow(body)
    _, problems = p.decode_json(body)
    assert [q["type"] for q in problems] == ["json_invalid"]


def test_a_batch_whose_events_is_a_deep_object_is_refused_as_too_deep():
    # "events" is the one key the shape check lets hold a container: an object there must not
    # be taken for flat (it is no list of events, and may nest past the limit).
    body = msgspec.json.encode({"events": nested(c.MAX_JSON_DEPTH + 5)})

    assert not native._flat_batch(msgspec.json.decode(body))
    with pytest.raises(ValidationFailed) as refusal:
        native.parse_batch(body, "w", 0)
    assert [q["type"] for q in refusal.value.detail] == ["json_invalid"]


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_at_all_are_answered_with_problems_never_an_exception(raw):
    p.decode_json(raw)


def test_a_refusal_names_every_unstorable_value_in_document_order():
    value = {"a": [SAFE + 1, "x\x00"], "b\x00": {"c": -SAFE - 1}}
    assert [(tuple(q["loc"]), q["type"]) for q in p.unstorable(value, ("body",))] == [
        (("body", "a", 0), "less_than_equal"),
        (("body", "a", 1), "value_error"),
        (("body", "b\x00"), "value_error"),
        (("body", "b\x00", "c"), "greater_than_equal"),
    ]


def test_decoding_runs_in_a_request_without_blocking_the_loop_on_deep_input():
    # The recursion guard is msgspec's own: deep input fails fast, not after a stack overflow.
    async def decode() -> Any:
        return p.decode_json(b"[" * 1_000_000)

    assert asyncio.run(decode())[1][0]["type"] == "json_invalid"


@settings(max_examples=examples(300), deadline=None)
@given(
    st.one_of(
        json_values.map(msgspec.json.encode),
        st.binary(max_size=40),
        json_values.map(lambda v: msgspec.json.encode(v)[:-1]),  # cut short
        st.lists(json_values, max_size=3).map(lambda v: msgspec.json.encode({"users": v})),
    ).map(lambda body: body.replace(b'"a', b'"\\ud800a').replace(b'"b', b'"\\u0000b'))
)
def test_decoding_a_large_body_in_pieces_gives_what_decoding_it_whole_gives(body):
    """The piecewise decoding of large webhook bodies (off the event loop) finds the same
    value, or the same problems, as one decode of the whole body."""
    whole = p.decode_json_keeping_unstorable(body)
    assert p.decode_json_keeping_unstorable(body, in_pieces=True) == whole
    if not whole[1]:
        assert p._decode_in_pieces(body) == msgspec.json.decode(body)
