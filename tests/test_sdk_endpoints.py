"""The SDK-compatible endpoints (SPEC 2.8), in-process: each peer's bodies as its SDKs send them
become the right events, and every bad input gets the peer's own 4xx, never a 500.
tests/test_sdks_e2e.py runs the real SDKs against a real server."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.api.deadlines import Deadlines
from profilehook.api.peers import peer_handlers
from profilehook.events import Event
from profilehook.keys import create_key
from profilehook.queues.memory import MemoryQueue
from profilehook.service import Services, running
from profilehook.settings import Settings
from tests.conftest import new_key
from tests.support import examples, wait_until


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def profile(client: TestClient, auth: dict[str, str], contact: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        r = client.get(f"/v1/contacts/{contact}", headers=auth)
        return r.json()["properties"] if r.status_code == 200 else None

    result: dict[str, Any] = wait_until(found)
    return result


def settle(
    client: TestClient, auth: dict[str, str], contact: str, expected: dict[str, Any]
) -> None:
    wait_until(lambda: profile(client, auth, contact) == expected)


def metric(client: TestClient, source: str, outcome: str) -> float:
    line = f'profilehook_events_total{{outcome="{outcome}",source="{source}"}} '
    for text in client.get("/metrics").text.splitlines():
        if text.startswith(line):
            return float(text[len(line) :])
    return 0.0


def identify(user: str, traits: dict[str, Any], ts: str, mid: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user,
        "traits": traits,
        "timestamp": ts,
        "messageId": mid,
        **extra,
    }


# -- Segment / RudderStack ----------------------------------------------------------------------


def test_given_a_segment_batch_then_identifies_set_traits_by_event_time_and_the_rest_is_ignored(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    batch = [
        identify("u1", {"plan": "pro", "age": 30}, "2026-12-03T10:00:00+00:00", "m2"),
        identify("u1", {"plan": "free"}, "2026-12-03T09:00:00.000Z", "m1"),  # older, later
        {"type": "track", "userId": "u1", "event": "Clicked", "messageId": "m3"},
        {"type": "page", "userId": "u1", "name": "Home", "messageId": "m4"},
        # rudder-sdk-python: the traits in context.traits, gzipped below
        {
            "type": "identify",
            "userId": None,
            "anonymousId": "anon-1",
            "messageId": "m5",
            "context": {"traits": {"seen": True}},
            "timestamp": "2026-12-03T10:00:00+00:00",
        },
        {"type": "identify", "traits": {"x": 1}, "messageId": "m6"},  # no user id at all
    ]
    body = gzip.compress(json.dumps({"batch": batch, "sentAt": "x"}).encode())
    r = client.post("/v1/batch", content=body, headers={**basic(key), "Content-Encoding": "gzip"})
    assert (r.status_code, r.json()) == (200, {"success": True})
    settle(client, auth, "u1", {"plan": "pro", "age": 30})
    settle(client, auth, "anon-1", {"seen": True})
    assert client.get("/v1/events/m2", headers=auth).json()["status"] == "applied"
    assert metric(client, "segment", "accepted") == 3
    assert metric(client, "segment", "ignored") == 2
    assert metric(client, "segment", "skipped") == 1


def test_segment_takes_the_key_as_write_key_in_the_body_and_single_calls_on_their_paths(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    r = client.post(
        "/v1/import",
        json={"writeKey": key, "batch": [identify("u2", {"a": 1}, "2026-01-01T00:00:00Z", "i1")]},
    )
    assert r.status_code == 200
    r = client.post(
        "/v1/identify",
        json={
            "writeKey": key,
            "userId": "u2",
            "traits": {"b": 2},
            "timestamp": "2026-01-02T00:00:00Z",
        },
    )
    assert r.status_code == 200
    for kind in ("track", "page", "screen", "group", "alias"):
        assert client.post(f"/v1/{kind}", json={"userId": "u2"}, headers=basic(key)).json() == {
            "success": True
        }
    settle(client, auth, "u2", {"a": 1, "b": 2})
    assert metric(client, "segment", "ignored") == 5


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b'{"batch": [', "basic", 400, "invalid_request"),
        (b'{"batch": {}}', "basic", 400, "invalid_request"),
        (b"[]", "basic", 400, "invalid_request"),
        (
            json.dumps(
                {"batch": [{"type": "identify", "userId": "u", "traits": {"t": "x" * 33_000}}]}
            ).encode(),
            "basic",
            400,
            "invalid_request",
        ),
        (
            json.dumps({"batch": [{"type": "track", "p": "x" * 20_000}] * 30}).encode(),
            "basic",
            400,
            "invalid_request",
        ),
        (b'{"batch": []}', {"Authorization": "Basic bm90LWEta2V5Og=="}, 401, "unauthorized"),
        (b'{"batch": []}', {"Authorization": "Basic %%%"}, 401, "unauthorized"),
        (b'{"batch": []}', {}, 401, "unauthorized"),
        (b'{"batch": [], "writeKey": "phk_nope"}', {}, 401, "unauthorized"),
        (b"\x1f\x8b garbage", "gzip", 400, "invalid_request"),
    ],
)
def test_segment_refuses_what_segment_refuses_in_its_error_shape(
    client: TestClient, key: str, body: bytes, headers: Any, status: int, code: str
) -> None:
    if headers == "basic":
        headers = basic(key)
    elif headers == "gzip":
        headers = {**basic(key), "Content-Encoding": "gzip"}
    r = client.post("/v1/batch", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["message"]


def test_given_invalid_messages_in_a_segment_batch_then_the_valid_ones_are_stored(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    batch = [
        identify("u3", {"ok": 1}, "2026-01-01T00:00:00Z", "v1"),
        identify("u3", {"bad": 1}, "not a time", "v2"),
        identify("u3", ["not", "traits"], "2026-01-01T00:00:00Z", "v3"),  # type: ignore[arg-type]
        identify("u3", {"big": 2**60}, "2026-01-01T00:00:00Z", "v4"),
        identify("u3", {"": 1}, "2026-01-01T00:00:00Z", "v5"),
        "not a message",
    ]
    r = client.post("/v1/batch", json={"batch": batch}, headers=basic(key))
    assert r.status_code == 200
    settle(client, auth, "u3", {"ok": 1})
    assert metric(client, "segment", "rejected") == 5


def test_a_key_without_the_ingest_scope_is_refused_by_every_peer(
    client: TestClient, settings: Settings
) -> None:
    async def make() -> str:
        async with running(settings) as services:
            made, _ = await create_key(services.store, "acme", ("read",))
            return made

    read_only = asyncio.run(make())
    r = client.post("/v1/batch", json={"batch": []}, headers=basic(read_only))
    assert r.status_code == 403 and "ingest" in r.json()["message"]
    r = client.post("/batch/", json={"api_key": read_only, "batch": [{"event": "x"}]})
    assert r.status_code == 403
    r = client.post("/amplitude/2/httpapi", json={"api_key": read_only, "events": [{}]})
    assert r.status_code == 403 and r.json()["code"] == 400  # the code the SDK reads
    assert r.json()["error"] == "Invalid API key: This key lacks the 'ingest' scope"


# -- PostHog ------------------------------------------------------------------------------------

UUID1 = "0190b6a4-4e0c-7bd4-9d8a-5b0c3f3c0001"
UUID2 = "0190b6a4-4e0c-7bd4-9d8a-5b0c3f3c0002"
UUID3 = "0190b6a4-4e0c-7bd4-9d8a-5b0c3f3c0003"


def test_given_posthog_events_then_set_set_once_and_unset_become_operations(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    batch = [
        # posthog-python's set(): a top-level $set on an event named $set
        {
            "event": "$set",
            "distinct_id": "p1",
            "$set": {"plan": "pro", "old": 1},
            "timestamp": "2026-12-03T10:00:00+00:00",
            "uuid": UUID1,
            "properties": {},
        },
        # capture() with $set_once and $unset in properties, later
        {
            "event": "signup",
            "distinct_id": "p1",
            "timestamp": "2026-12-03T11:00:00+00:00",
            "uuid": UUID2,
            "properties": {"$set_once": {"first": "a", "plan": "never"}, "$unset": ["old"]},
        },
        {"event": "pageview", "distinct_id": "p1", "uuid": UUID3, "properties": {"a": 1}},
        {"event": "$set", "$set": {"x": 1}},  # no distinct_id
    ]
    r = client.post("/batch/", json={"api_key": key, "batch": batch})
    assert (r.status_code, r.json()) == (200, {"status": 1})
    settle(client, auth, "p1", {"plan": "pro", "first": "a"})
    assert metric(client, "posthog", "ignored") == 1
    assert metric(client, "posthog", "skipped") == 1


@pytest.mark.parametrize("path", ["/capture/", "/e/", "/i/v0/e/"])
def test_posthog_takes_one_event_a_list_or_a_gzip_js_body_on_its_capture_paths(
    client: TestClient, key: str, auth: dict[str, str], path: str
) -> None:
    one = {
        "event": "$identify",
        "distinct_id": "p2",
        "properties": {"$set": {"a": 1}, "token": key},
    }
    assert client.post(path, json=one).status_code == 200
    listed = [{"event": "$set", "distinct_id": "p2", "properties": {"$set": {"b": 2}}}]
    r = client.post(path, json={"token": key, "batch": listed})
    assert r.status_code == 200
    zipped = gzip.compress(
        json.dumps([{**one, "properties": {"$set": {"c": 3}, "token": key}}]).encode()
    )
    r = client.post(
        path + "?compression=gzip-js&ver=1.0",
        content=zipped,
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 200, r.text
    settle(client, auth, "p2", {"a": 1, "b": 2, "c": 3})


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b"[]", 400),
        (b'{"batch": []}', 400),
        (json.dumps({"api_key": "phk_x", "batch": [{"event": "e"}]}).encode(), 401),
        (json.dumps({"batch": [{"event": "e"}]}).encode(), 401),
        (json.dumps({"api_key": "KEY", "batch": [{"event": "e", "uuid": "nope"}]}).encode(), 400),
        (json.dumps({"api_key": "KEY", "batch": ["x"]}).encode(), 400),
    ],
)
def test_posthog_refuses_what_posthog_refuses_with_a_detail(
    client: TestClient, key: str, body: bytes, status: int
) -> None:
    r = client.post("/batch/", content=body.replace(b"KEY", key.encode()))
    assert r.status_code == status, r.text
    assert r.json()["detail"] and r.json()["type"]
    if status == 401:
        assert r.json()["code"] == "invalid_api_key"


def test_posthog_capture_v1_takes_a_bearer_key_and_answers_a_result_per_event(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    batch = [
        {"event": "$set", "uuid": UUID1, "distinct_id": "v1a", "properties": {"$set": {"a": 1}},
         "timestamp": "2026-12-03T10:00:00Z", "options": {}},
        {"event": "$set", "uuid": UUID2, "properties": {"$set": {"a": 2}}},  # no distinct_id
        {"event": "$set", "uuid": UUID3, "distinct_id": "v1a", "timestamp": "yesterday",
         "properties": {"$set": {"a": 3}}},
        {"event": "pageview", "uuid": UUID1[:-1] + "4", "distinct_id": "v1a", "properties": {}},
    ]  # fmt: skip
    body = {"created_at": "2026-12-03T10:00:01Z", "batch": batch}
    r = client.post("/i/v1/analytics/events", json=body, headers=auth)
    assert r.status_code == 200
    assert r.json() == {
        "results": {
            UUID1: {"result": "ok"},
            UUID2: {"result": "drop", "details": "no usable distinct_id"},
            UUID3: {
                "result": "drop",
                "details": "an invalid timestamp, or properties no store can keep",
            },
            UUID1[:-1] + "4": {"result": "ok"},
        }
    }
    settle(client, auth, "v1a", {"a": 1})
    r = client.post("/i/v1/analytics/events", json={**body, "api_key": key})  # not in the body
    assert (r.status_code, r.json()["code"]) == (401, "invalid_api_key")


# -- Amplitude ----------------------------------------------------------------------------------


def test_given_amplitude_events_then_every_user_property_operation_applies_by_time(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    events = [
        {
            "event_type": "$identify",
            "user_id": "a1",
            "time": 1_700_000_000_000,
            "insert_id": "i1",
            "user_properties": {
                "$set": {"plan": "pro"},
                "$setOnce": {"first": "x"},
                "$add": {"logins": 2},
                "$append": {"tags": "a"},
                "$unset": {"gone": "-"},
                "plain": True,
            },
        },
        {
            "event_type": "$identify",
            "user_id": "a1",
            "time": 1_700_000_001_000,
            "insert_id": "i2",
            "user_properties": {
                "$add": {"logins": "3"},
                "$append": {"tags": ["b", "c"]},
                "$setOnce": {"first": "y"},
            },
        },
        {
            "user_id": "a1",
            "time": 1_700_000_002_000,
            "insert_id": "i4",
            "user_properties": {"$remove": {"tags": "a"}},
        },
        # older, arriving later: loses to the newer set and to the newer unset
        {
            "event_type": "$identify",
            "user_id": "a1",
            "time": 1_600_000_000_000,
            "insert_id": "i0",
            "user_properties": {"$set": {"gone": 1, "plan": "old"}},
        },
        {"event_type": "click", "user_id": "a1", "insert_id": "i3"},
        {"event_type": "$identify", "device_id": "d1", "user_properties": {"$set": {"z": 1}}},
    ]
    r = client.post("/amplitude/2/httpapi", json={"api_key": key, "events": events})
    assert r.status_code == 200
    answer = r.json()
    assert answer["code"] == 200 and answer["events_ingested"] == 6
    settle(
        client,
        auth,
        "a1",
        {"plan": "pro", "first": "x", "logins": 5, "tags": ["b", "c"], "plain": True},
    )
    assert metric(client, "amplitude_http", "ignored") == 1
    assert metric(client, "amplitude_http", "skipped") == 1


def test_amplitude_clear_all_deletes_the_contact_as_of_its_time(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    events = [
        {"user_id": "a2", "time": 1000, "insert_id": "c1", "user_properties": {"$set": {"a": 1}}},
        {"user_id": "a2", "time": 2000, "insert_id": "c2", "user_properties": {"$clearAll": "-"}},
        {"user_id": "a2", "time": 3000, "insert_id": "c3", "user_properties": {"$set": {"b": 2}}},
    ]
    assert (
        client.post("/amplitude/batch", json={"api_key": key, "events": events}).status_code == 200
    )
    settle(client, auth, "a2", {"b": 2})


def test_amplitude_identify_api_takes_a_form(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    identification = json.dumps([{"user_id": "a3", "user_properties": {"$set": {"k": "v"}}}])
    r = client.post("/amplitude/identify", data={"api_key": key, "identification": identification})
    assert (r.status_code, r.text) == (200, "success")
    settle(client, auth, "a3", {"k": "v"})


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/amplitude/2/httpapi", {"events": [{}]}, {"missing_field": "api_key"}),
        ("/amplitude/2/httpapi", {"api_key": "KEY"}, {"missing_field": "events"}),
        ("/amplitude/2/httpapi", {"api_key": "phk_wrong", "events": [{"user_id": "u"}]}, None),
        (
            "/amplitude/batch",
            {
                "api_key": "KEY",
                "events": [
                    {"user_id": "u", "time": "soon"},
                    {"user_id": "u"},
                    {"user_id": "u", "user_properties": {"$add": {"n": "many"}}},
                    {"user_id": "u", "user_properties": {"$set": {"a": 1}, "$unset": {"a": "-"}}},
                ],
            },
            {"events_with_invalid_fields": {"time": [0], "user_properties": [2, 3]}},
        ),
    ],
)
def test_amplitude_refuses_with_the_json_code_its_sdk_reads(
    client: TestClient, key: str, auth: dict[str, str], path: str, body: Any, expected: Any
) -> None:
    raw = json.dumps(body).replace("KEY", key)
    r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == 400
    if expected is None:
        assert r.json()["error"].startswith("Invalid API key:")
    else:
        assert {k: r.json()[k] for k in expected} == expected
    assert client.get("/v1/contacts/u", headers=auth).status_code == 404


def test_amplitude_answers_413_and_its_code_for_an_oversize_body(
    client: TestClient, key: str
) -> None:
    from profilehook import constants as c

    body = b'{"api_key": "x", "events": ["' + b"x" * c.AMPLITUDE_HTTP_MAX_BODY_BYTES + b'"]}'
    r = client.post("/amplitude/batch", content=body)
    assert (r.status_code, r.json()["code"]) == (413, 413)


def test_new_key_fixture_is_per_workspace(settings: Settings, client: TestClient) -> None:
    # a key of another workspace writes there, not into acme
    other = new_key(settings, "other")
    r = client.post("/v1/identify", json={"userId": "w", "traits": {"a": 1}}, headers=basic(other))
    assert r.status_code == 200
    settle(client, {"Authorization": f"Bearer {other}"}, "w", {"a": 1})


_ALL_IDENTIFIES = [
    identify("u1", {"a": 1, "b": None}, "2026-12-03T10:00:00.123456+00:00", "m1"),
    identify("u2", {"a": "x"}, "2026-12-03T10:00:00", "m2"),  # no zone: UTC
    identify("u3", {"a": 1.5}, "2026-12-03T12:00:00+02:00", "m3"),
    {
        "type": "identify",
        "anonymousId": "an",
        "context": {"traits": {"t": True}},
        "messageId": "m4",
    },
    {**identify("u5", {"a": 1}, "2026-12-03T10:00:00Z", "m5"), "context": {"ip": "1.2.3.4"}},
]


def test_segment_batches_in_the_everyday_shape_make_the_events_the_general_path_makes() -> None:
    from profilehook.sources import segment

    batch = [
        *_ALL_IDENTIFIES[:4],
        {"type": "identify", "userId": "u4", "traits": {}, "messageId": "m5"},
        {"type": "track", "userId": "u1", "event": "e", "properties": {"deep": {"x": [1]}}},
        {"type": "identify", "traits": {"a": 1}, "messageId": "m6"},
        identify("u5", {"a": 1}, "1969-12-31T23:59:59+00:00", "m7"),
    ]
    body = json.dumps({"batch": batch}).encode()
    fast = segment.parse_batch(body)
    assert type(fast.messages[0]).__name__ == "Message"  # it took the everyday path
    general = segment.Request(json.loads(body)["batch"], None, False)
    made = [segment.map_messages(r, "w", 5_000_000, 0) for r in (fast, general)]
    assert made[0].events == made[1].events and len(made[0].events) == 4
    ten_utc = int(datetime(2026, 12, 3, 10, tzinfo=UTC).timestamp()) * 1_000_000
    assert made[0].events[0].ts_us == ten_utc + 123_456
    assert made[0].events[2].ts_us == made[0].events[0].ts_us - 123_456
    counts = [(m.ignored, m.skipped, m.rejected) for m in made]
    assert counts[0] == counts[1] == (2, 1, 1)


def test_a_segment_batch_of_identifies_only_is_kept_as_it_came_with_the_general_paths_events() -> (
    None
):
    """Every message an identify that sets traits: the log may keep the body as it came
    (plain_segment_batch.py); its events are the ones the general path makes of it."""
    from profilehook.plain_segment_batch import PlainSegmentBatch
    from profilehook.sources import segment

    body = json.dumps({"batch": _ALL_IDENTIFIES, "writeKey": "k"}).encode()
    general = segment.Request(json.loads(body)["batch"], None, False)
    kept, made = (
        segment.map_messages(r, "w", 5_000_000, 0) for r in (segment.parse_batch(body), general)
    )
    assert isinstance(kept.kept, PlainSegmentBatch) and kept.kept.body == body
    assert kept.made == [] and made.kept is None
    assert list(kept.events) == made.events and len(made.events) == 5
    assert (kept.ignored, kept.skipped, kept.rejected, kept.too_old) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("odd_one", "left_out"),
    [
        ({"type": "track", "userId": "u9", "event": "e", "messageId": "m9"}, "ignored"),
        (identify("u9", {}, "2026-12-03T10:00:00Z", "m9"), "ignored"),  # no trait set
        ({"type": "identify", "traits": {"a": 1}, "messageId": "m9"}, "skipped"),  # no user
        (identify("u9", {"a": 1}, "1969-12-31T23:59:59+00:00", "m9"), "rejected"),
        (identify("u9", {"a": 1}, "2026-11-01T00:00:00+00:00", "m9"), "too_old"),
    ],
)
def test_a_segment_batch_with_a_message_that_is_no_update_is_not_kept_and_maps_as_before(
    odd_one: dict[str, Any], left_out: str
) -> None:
    from profilehook.sources import segment

    body = json.dumps({"batch": [*_ALL_IDENTIFIES, odd_one]}).encode()
    general = segment.Request(json.loads(body)["batch"], None, False)
    oldest = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp()) * 1_000_000
    now = int(datetime(2026, 12, 3, 11, tzinfo=UTC).timestamp()) * 1_000_000
    mapped = [
        segment.map_messages(r, "w", now, oldest) for r in (segment.parse_batch(body), general)
    ]
    assert mapped[0].kept is None
    assert mapped[0].events == mapped[1].events and len(mapped[0].events) == 5
    assert getattr(mapped[0], left_out) == getattr(mapped[1], left_out) == 1


def test_a_segment_batch_of_identifies_sets_every_profile_and_counts_each_once(
    client: TestClient, key: str, auth: dict[str, str]
) -> None:
    """Through the embedded default (the SQLite log keeps the body as it came)."""
    batch = [
        identify(f"k{i}", {"plan": "pro", "n": i}, "2026-12-03T10:00:00Z", f"km{i}")
        for i in range(50)
    ]
    batch.append({"type": "identify", "userId": "k0", "traits": {"late": True}})  # no time
    r = client.post("/v1/batch", json={"batch": batch}, headers=basic(key))
    assert r.status_code == 200 and r.json() == {"success": True}
    settle(client, auth, "k0", {"plan": "pro", "n": 0, "late": True})
    settle(client, auth, "k49", {"plan": "pro", "n": 49})
    metrics = client.get("/metrics").text
    assert 'profilehook_events_total{outcome="accepted",source="segment"} 51.0' in metrics


def test_a_keys_rate_limit_is_shared_by_the_native_and_the_sdk_endpoints(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", rate_limit_per_s=0.01, rate_limit_burst=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = new_key(settings, "acme")
        body = {"contact_id": "c", "event_name": "e", "timestamp": 1, "user_properties": {"a": 1}}
        assert (
            client.post(
                "/v1/properties", json=body, headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 202
        )
        assert (
            client.post(
                "/v1/identify", json={"userId": "c", "traits": {"b": 2}}, headers=basic(key)
            ).status_code
            == 200
        )
        r = client.post("/batch/", json={"api_key": key, "batch": [{"event": "x"}]})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["type"] == "throttled" and r.json()["detail"]
        r = client.post("/v1/batch", json={"batch": []}, headers=basic(key))
        assert (r.status_code, r.json()["code"]) == (429, "rate_limited")


# -- a slow log, and whatever a client sends ------------------------------------------------------


class _SlowLog(MemoryQueue):
    async def publish(self, events: Sequence[Event]) -> None:
        await asyncio.sleep(0.3)
        await super().publish(events)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/batch", {"batch": [{"type": "identify", "userId": "u", "traits": {"a": 1}}]}, "code"),
        ("/batch/", {"batch": [{"event": "$set", "distinct_id": "u", "$set": {"a": 1}}]}, "detail"),
        ("/amplitude/batch", {"events": [{"user_id": "u", "user_properties": {"a": 1}}]}, None),
    ],
)
async def test_given_a_log_that_does_not_answer_in_time_then_each_peer_gets_a_retryable_503(
    tmp_path: Path, path: str, body: dict[str, Any], field: str | None
) -> None:
    settings = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
    services = Services.from_settings(settings)
    services.queue = _SlowLog()
    await services.open()
    try:
        key, _ = await create_key(services.store, "acme")
        handler = peer_handlers(services, Deadlines(10.0, 0.05))[path]
        payload = json.dumps({**body, "api_key": key, "writeKey": key}).encode()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
        async with asyncio.timeout(5):
            await handler(scope, receive, send)
        assert sent[0]["status"] == 503  # every SDK retries a 503
        assert (b"retry-after", b"1") in sent[0]["headers"]
        assert await services.queue.depth() == 0
    finally:
        await services.close()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(["type", "userId", "anonymousId", "traits", "context", "timestamp",
                         "messageId", "event", "distinct_id", "$set", "$set_once", "$unset",
                         "properties", "uuid", "offset", "user_id", "user_properties", "time",
                         "insert_id", "$setOnce", "$add", "$append", "$remove", "$clearAll"])  # fmt: skip
_calls = st.lists(st.dictionaries(_keys, _json, max_size=6) | _json, min_size=1, max_size=4)


@settings(max_examples=examples(300), deadline=None, database=None)
@given(calls=_calls, wrapper=st.sampled_from(["batch", "events", "list"]))
def test_whatever_a_peer_is_sent_its_mapping_gives_events_or_a_client_error(
    calls: list[Any], wrapper: str
) -> None:
    from profilehook.errors import ClientError
    from profilehook.sources import amplitude_http, posthog, segment

    body = json.dumps(calls if wrapper == "list" else {wrapper: calls, "api_key": "k"}).encode()
    for parse, mapping in (
        (segment.parse_batch, segment.map_messages),
        (posthog.parse, posthog.map_events),
        (amplitude_http.parse_json, amplitude_http.map_events),
    ):
        try:
            mapped = mapping(parse(body), "w", 1_700_000_000_000_000, 0)
        except ClientError:
            continue
        for event in mapped.events:
            assert event.contact_id and event.event_id and event.ts_us >= 0
            assert msgspec.json.decode(msgspec.json.encode(event.properties)) == event.properties


def _message_of(size: int) -> bytes:
    """A track message whose JSON, as sent, is exactly ``size`` bytes."""
    empty = json.dumps({"type": "track", "userId": "u", "p": ""}).encode()
    return json.dumps({"type": "track", "userId": "u", "p": "x" * (size - len(empty))}).encode()


def test_segment_takes_a_message_of_32_kb_and_refuses_one_byte_more(
    client: TestClient, key: str
) -> None:
    from profilehook import constants as c

    for size, status in (
        (c.SEGMENT_MAX_MESSAGE_BYTES, 200),
        (c.SEGMENT_MAX_MESSAGE_BYTES + 1, 400),
    ):
        message = _message_of(size)
        assert len(message) == size
        body = b'{"batch": [' + message + b"]}"
        r = client.post("/v1/batch", content=body, headers=basic(key))
        assert r.status_code == status, (size, r.text)
        r = client.post("/v1/track", content=message, headers=basic(key))
        assert r.status_code == status, (size, r.text)


def test_segment_takes_a_batch_of_500_kb_and_refuses_one_byte_more(
    client: TestClient, key: str
) -> None:
    from profilehook import constants as c

    messages = b", ".join([_message_of(30_000)] * 17)
    head, tail = b'{"batch": [' + messages + b'], "sentAt": "', b'"}'
    for size, status in ((c.SEGMENT_MAX_BATCH_BYTES, 200), (c.SEGMENT_MAX_BATCH_BYTES + 1, 400)):
        body = head + b"x" * (size - len(head) - len(tail)) + tail
        assert len(body) == size
        r = client.post("/v1/batch", content=body, headers=basic(key))
        assert r.status_code == status, (size, r.text)
        zipped = gzip.compress(body)  # the limit is the decoded size's
        r = client.post(
            "/v1/batch", content=zipped, headers={**basic(key), "Content-Encoding": "gzip"}
        )
        assert r.status_code == status, (size, r.text)
        if status == 400:
            assert r.json() == {
                "code": "invalid_request",
                "message": f"Request body is larger than the limit of {size - 1} bytes",
            }
