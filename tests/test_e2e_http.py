"""The HTTP contract end to end (SPEC 2, 3), against a real ``profilehook serve`` subprocess.

The suite runs twice: on the embedded default (SQLite) and on the scale-out configuration
(NATS JetStream + PostgreSQL, a stream and a schema of its own). One server per
configuration; every test writes its own contacts, so tests stay independent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest

from tests.support import ServerProcess, create_key, nats_postgres_env, wait_until

pytestmark = pytest.mark.slow

APPLY_TIMEOUT_S = 20.0


@dataclass
class Api:
    """A client of one workspace on the running server."""

    http: httpx.Client
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def send(self, **event: Any) -> httpx.Response:
        return self.http.post("/v1/properties", json=event, headers=self.auth)

    def accepted(self, **event: Any) -> str:
        response = self.send(**event)
        assert response.status_code == 202, response.text
        event_id: str = response.json()["event_id"]
        return event_id

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path, headers=self.auth)

    def wait_applied(self, *event_ids: str) -> None:
        for event_id in event_ids:
            wait_until(
                lambda eid=event_id: (
                    self.get(f"/v1/events/{eid}").json().get("status") == "applied"
                ),
                timeout_s=APPLY_TIMEOUT_S,
            )

    def contact(self, contact_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/contacts/{contact_id}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found


@pytest.fixture(scope="module", params=["embedded", "nats-postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``embedded``: SQLite in the data directory. ``nats-postgres``: the scale-out backends."""
    with ExitStack() as cleanup:
        env = cleanup.enter_context(nats_postgres_env()) if request.param != "embedded" else {}
        proc = ServerProcess(tmp_path_factory.mktemp("e2e") / "data", extra_env=env).start()
        cleanup.callback(proc.stop)
        yield proc


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture(scope="module")
def api_a(server: ServerProcess, http: httpx.Client) -> Api:
    return Api(http, create_key(server.data_dir, "workspace-a", **server.extra_env)["key"])


@pytest.fixture(scope="module")
def api_b(server: ServerProcess, http: httpx.Client) -> Api:
    return Api(http, create_key(server.data_dir, "workspace-b", **server.extra_env)["key"])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def update(contact_id: str, event_id: str, timestamp: float, **properties: Any) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "event_name": "update",
        "timestamp": timestamp,
        "event_id": event_id,
        "user_properties": properties,
    }


def test_given_two_workspaces_when_b_reads_a_contact_or_event_of_a_then_404_without_leak(
    api_a: Api, api_b: Api
) -> None:
    contact_id, event_id = unique("iso-contact"), unique("iso-event")
    api_a.accepted(**update(contact_id, event_id, 1_700_000_000, secret="of-a"))
    api_a.wait_applied(event_id)

    for path, detail in [
        (f"/v1/contacts/{contact_id}", "Contact not found"),
        (f"/v1/contacts/{contact_id}/history", "Contact not found"),
        (f"/v1/events/{event_id}", "Event not found"),
    ]:
        response = api_b.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.json() == {"detail": detail}
        assert "of-a" not in response.text

    # The same ids in workspace B are B's own: neither a duplicate of A's event nor A's data.
    assert api_b.accepted(**update(contact_id, event_id, 1_700_000_000, secret="of-b")) == event_id
    api_b.wait_applied(event_id)
    assert api_b.contact(contact_id)["properties"] == {"secret": "of-b"}
    assert api_a.contact(contact_id)["properties"] == {"secret": "of-a"}


def test_given_a_newer_event_applied_when_an_older_one_arrives_late_then_the_newer_value_stays(
    api_a: Api,
) -> None:
    contact_id = unique("ooo")
    newer = api_a.accepted(**update(contact_id, unique("newer"), 1_700_000_200, plan="pro"))
    api_a.wait_applied(newer)
    older = api_a.accepted(**update(contact_id, unique("older"), 1_700_000_100, plan="free", x=1))
    api_a.wait_applied(older)

    profile = api_a.contact(contact_id)
    # Per property: `plan` keeps the newer value, `x` (only in the older event) is taken.
    assert profile["properties"] == {"plan": "pro", "x": 1}
    assert profile["versions"]["plan"] == {"timestamp": 1_700_000_200, "event_id": newer}
    assert profile["versions"]["x"] == {"timestamp": 1_700_000_100, "event_id": older}


def test_given_a_property_when_an_event_sets_it_to_null_then_it_is_unset_and_stays_unset(
    api_a: Api,
) -> None:
    contact_id = unique("null")
    first = api_a.accepted(**update(contact_id, unique("set"), 1_700_000_000, colour="red", n=1))
    unset = api_a.accepted(**update(contact_id, unique("unset"), 1_700_000_010, colour=None))
    api_a.wait_applied(first, unset)
    assert api_a.contact(contact_id)["properties"] == {"n": 1}
    assert "colour" not in api_a.contact(contact_id)["versions"]

    # The tombstone keeps its version: an update older than the unset cannot bring it back.
    stale = api_a.accepted(**update(contact_id, unique("stale"), 1_700_000_005, colour="blue"))
    api_a.wait_applied(stale)
    assert api_a.contact(contact_id)["properties"] == {"n": 1}


def test_given_an_accepted_event_id_when_it_is_sent_again_then_202_same_id_and_nothing_changes(
    api_a: Api, server: ServerProcess
) -> None:
    contact_id, event_id = unique("dup"), unique("dup-event")
    first = api_a.send(**update(contact_id, event_id, 1_700_000_000, plan="free"))
    api_a.wait_applied(event_id)

    # Same id, other content and a newer time: still only the first counts.
    again = api_a.send(**update(contact_id, event_id, 1_700_000_999, plan="pro", extra=True))
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() == {"status": "accepted", "event_id": event_id}
    # The log is applied in order: once a later event is applied, the repeat was handled.
    sentinel = api_a.accepted(**update(unique("other"), unique("sentinel"), 1_700_000_000, a=1))
    api_a.wait_applied(sentinel)

    assert api_a.contact(contact_id)["properties"] == {"plan": "free"}
    history = api_a.get(f"/v1/contacts/{contact_id}/history").json()["events"]
    assert [e["event_id"] for e in history] == [event_id]
    # The applier drops the repeat and says so, on both configurations.
    wait_until(
        lambda: api_a.get(f"/v1/events/{event_id}").json()["status"] == "duplicate",
        timeout_s=APPLY_TIMEOUT_S,
    )


def test_given_the_same_instant_in_seconds_and_in_milliseconds_then_the_versions_are_equal(
    api_a: Api,
) -> None:
    in_s, in_ms = unique("seconds"), unique("millis")
    api_a.accepted(**update(in_s, "ts-s", 1_700_000_000.25, p=1))
    api_a.accepted(**update(in_ms, "ts-ms", 1_700_000_000_250, p=1))
    api_a.wait_applied("ts-s", "ts-ms")

    version_s = api_a.contact(in_s)["versions"]["p"]["timestamp"]
    version_ms = api_a.contact(in_ms)["versions"]["p"]["timestamp"]
    assert version_s == version_ms == 1_700_000_000.25
    assert (
        api_a.get("/v1/events/ts-s").json()["timestamp"]
        == api_a.get("/v1/events/ts-ms").json()["timestamp"]
    )


def test_given_time_instead_of_timestamp_as_in_the_seed_example_then_it_is_the_event_time(
    api_a: Api,
) -> None:
    contact_id, event_id = unique("alias"), unique("alias-event")
    response = api_a.send(
        contact_id=contact_id,
        event_name="aampe_property_update",
        time=1_672_531_200,
        event_id=event_id,
        user_properties={"subscription_status": "active"},
    )
    assert response.status_code == 202, response.text
    api_a.wait_applied(event_id)
    assert api_a.contact(contact_id)["versions"]["subscription_status"] == {
        "timestamp": 1_672_531_200,
        "event_id": event_id,
    }


def test_given_a_batch_with_valid_and_invalid_items_then_valid_ones_are_accepted_per_item(
    api_a: Api,
) -> None:
    contact_id = unique("batch")
    good = update(contact_id, unique("b0"), 1_700_000_000, a=1)
    bad = {"event_name": "update", "timestamp": 1_700_000_000, "user_properties": {"b": 2}}
    also_good = update(contact_id, unique("b2"), 1_700_000_001, c=3)
    response = api_a.http.post(
        "/v1/properties/batch",
        json={"events": [good, bad, also_good]},
        headers=api_a.auth,
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["results"][0] == {"index": 0, "status": "accepted", "event_id": good["event_id"]}
    assert body["results"][2] == {
        "index": 2,
        "status": "accepted",
        "event_id": also_good["event_id"],
    }
    rejected = body["results"][1]
    assert (rejected["index"], rejected["status"]) == (1, "rejected")
    assert [(p["loc"], p["type"]) for p in rejected["detail"]] == [
        (["body", "events", 1, "contact_id"], "missing")
    ]
    api_a.wait_applied(good["event_id"], also_good["event_id"])
    assert api_a.contact(contact_id)["properties"] == {"a": 1, "c": 3}


def test_given_a_plain_batch_with_escaped_ids_then_each_answered_id_is_the_event_applied(
    api_a: Api,
) -> None:
    """A batch of sets only (the SQLite log keeps its body as it came, plain_batch.py): the
    ids answered, made or the client's, are the events' in the log and in the store, ids the
    client escaped in its JSON included."""
    contact_id, escaped_contact = unique("plain"), unique("plaïn")
    client_id = unique("mine")
    items = [
        {"contact_id": contact_id, "event_name": "e", "timestamp": 1_700_000_000,
         "user_properties": {"a": 1}},
        {"contact_id": escaped_contact, "event_name": "e", "timestamp": 1_700_000_000.5,
         "user_properties": {"b": "x"}, "event_id": client_id, "metadata": {"m": 1}},
        {"contact_id": contact_id, "event_name": "e", "timestamp": 1_700_000_001,
         "user_properties": {"c": True}},
    ]  # fmt: skip
    body = json.dumps({"events": items}, ensure_ascii=True)  # "ï" as \u00ef
    for text in (client_id, contact_id):
        body = body.replace(text, "".join(f"\\u{ord(ch):04x}" for ch in text))

    response = api_a.http.post(
        "/v1/properties/batch",
        content=body,
        headers={**api_a.auth, "Content-Type": "application/json"},
    )

    assert response.status_code == 202, response.text
    answered = [r["event_id"] for r in response.json()["results"]]
    assert answered[1] == client_id
    assert len(set(answered)) == 3
    for event_id, contact in zip(answered, (contact_id, escaped_contact, contact_id), strict=True):
        found = api_a.get(f"/v1/events/{event_id}")
        assert found.status_code == 200, found.text
        assert found.json()["contact_id"] == contact
    api_a.wait_applied(*answered)
    assert api_a.contact(contact_id)["properties"] == {"a": 1, "c": True}
    assert api_a.contact(escaped_contact)["properties"] == {"b": "x"}


def test_given_a_batch_where_every_item_is_invalid_then_422_lists_every_problem(
    api_a: Api,
) -> None:
    bad = [
        {"event_name": "update", "timestamp": 1, "user_properties": {}},
        {"contact_id": "c", "event_name": "update", "timestamp": 1, "user_properties": []},
    ]
    response = api_a.http.post("/v1/properties/batch", json={"events": bad}, headers=api_a.auth)

    assert response.status_code == 422, response.text
    assert [(p["loc"], p["type"]) for p in response.json()["detail"]] == [
        (["body", "events", 0, "contact_id"], "missing"),
        (["body", "events", 1, "user_properties"], "dict_type"),
    ]


def test_given_no_event_id_then_one_is_generated_and_answered(api_a: Api) -> None:
    event = update(unique("gen"), "x", 1_700_000_000, a=1)
    del event["event_id"]
    event_id = api_a.accepted(**event)
    assert uuid.UUID(event_id).version == 4
    api_a.wait_applied(event_id)


def test_given_a_missing_malformed_or_unknown_key_then_401_invalid_api_key(
    http: httpx.Client,
) -> None:
    for headers in ({}, {"Authorization": "Bearer phk_nope"}, {"Authorization": "Basic x"}):
        response = http.post("/v1/properties", json=update("c", "e", 1, a=1), headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "Invalid API Key"}


def test_metrics_and_health_answer(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert "profilehook_queue_depth" in metrics.text


def _ids(response: httpx.Response) -> list[str]:
    return [e["event_id"] for e in response.json()["events"]]


def test_given_many_events_for_a_contact_then_history_is_newest_first_and_paged(
    api_a: Api,
) -> None:
    contact_id = unique("hist")
    ids = [f"{contact_id}-{i}" for i in range(5)]
    events = [update(contact_id, eid, 1_700_000_000 + i, n=i) for i, eid in enumerate(ids)]
    response = api_a.http.post("/v1/properties/batch", json={"events": events}, headers=api_a.auth)
    assert response.status_code == 202, response.text
    api_a.wait_applied(*ids)

    first = api_a.get(f"/v1/contacts/{contact_id}/history?limit=3")
    cursor = first.json()["next_cursor"]
    second = api_a.get(f"/v1/contacts/{contact_id}/history?limit=3&cursor={cursor}")
    assert _ids(first) + _ids(second) == list(reversed(ids))
    assert second.json()["next_cursor"] is None


def test_given_events_in_files_when_the_server_restarts_then_profiles_are_kept(
    server: ServerProcess, api_a: Api
) -> None:
    contact_id = unique("restart")
    event_id = api_a.accepted(**update(contact_id, unique("r"), 1_700_000_000, kept=True))
    api_a.wait_applied(event_id)
    server.stop()
    server.start()
    assert api_a.contact(contact_id)["properties"] == {"kept": True}


def test_given_a_late_set_once_and_a_late_add_after_newer_events_then_the_profile_is_in_time_order(
    api_a: Api,
) -> None:
    """SPEC 3.1 through a real server (SQLite; NATS + PostgreSQL): the README's worked example."""
    contact_id = unique("ops")

    def send(event_id: str, timestamp: int, **operations: Any) -> str:
        body = {"contact_id": contact_id, "event_name": "ops", "timestamp": timestamp}
        sent = api_a.accepted(**body, event_id=unique(event_id), **operations)
        api_a.wait_applied(sent)
        return sent

    send("new1", 1_700_000_200, user_properties={"logins": 10})
    newest = send("new2", 1_700_000_300, set_once={"first_seen": "day 3"}, add={"logins": 1})
    oldest = send("old1", 1_700_000_100, set_once={"first_seen": "day 1"}, add={"logins": 5})
    send("old2", 1_700_000_250, add={"logins": 100})

    profile = api_a.contact(contact_id)
    assert profile["properties"] == {"first_seen": "day 1", "logins": 111}
    assert profile["versions"]["first_seen"]["event_id"] == oldest
    assert profile["versions"]["logins"]["event_id"] == newest
    history = api_a.get(f"/v1/contacts/{contact_id}/history").json()["events"]
    assert history[0]["operations"] == {"first_seen": "set_once", "logins": "add"}
