"""Reading profiles, history and event status (SPEC 2.5), scoped to the key's workspace."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.conftest import new_key
from tests.support import wait_until


def send(
    client: Any, auth: dict[str, str], contact_id: str, event_id: str, ts: float, **props: Any
):
    body = {
        "contact_id": contact_id,
        "event_name": "update",
        "timestamp": ts,
        "event_id": event_id,
        "user_properties": props,
    }
    r = client.post("/v1/properties", json=body, headers=auth)
    assert r.status_code == 202, r.text


def applied(client: Any, auth: dict[str, str], event_id: str) -> dict[str, Any]:
    def status() -> Any:
        r = client.get(f"/v1/events/{quote(event_id, safe='')}", headers=auth)
        return r.json() if r.status_code == 200 and r.json()["status"] == "applied" else None

    result: dict[str, Any] = wait_until(status)
    return result


def test_a_contact_shows_properties_with_their_versions(client, auth):
    send(client, auth, "c1", "e1", 100, plan="pro", seats=3)
    send(client, auth, "c1", "e2", 200, seats=5)
    applied(client, auth, "e2")
    r = client.get("/v1/contacts/c1", headers=auth)
    assert r.status_code == 200
    assert r.json() == {
        "contact_id": "c1",
        "properties": {"plan": "pro", "seats": 5},
        "updated_at": "1970-01-01T00:03:20Z",
        "versions": {
            "plan": {"timestamp": 100, "event_id": "e1"},
            "seats": {"timestamp": 200, "event_id": "e2"},
        },
    }


def test_an_unknown_contact_is_404_contact_not_found(client, auth):
    r = client.get("/v1/contacts/nobody", headers=auth)
    assert (r.status_code, r.json()) == (404, {"detail": "Contact not found"})
    r = client.get("/v1/contacts/nobody/history", headers=auth)
    assert (r.status_code, r.json()) == (404, {"detail": "Contact not found"})


def test_ids_with_slashes_and_unicode_round_trip_when_percent_encoded(client, auth):
    contact_id = "tenant/ü ser?#1"
    send(client, auth, contact_id, "id/with/slashes", 1, a=1)
    applied(client, auth, "id/with/slashes")
    r = client.get(f"/v1/contacts/{quote(contact_id, safe='')}", headers=auth)
    assert r.status_code == 200 and r.json()["contact_id"] == contact_id
    r = client.get(f"/v1/contacts/{quote(contact_id, safe='')}/history", headers=auth)
    assert [e["event_id"] for e in r.json()["events"]] == ["id/with/slashes"]


def test_history_is_newest_first_by_event_time_and_pages_with_a_cursor(client, auth):
    for i, ts in enumerate([300, 100, 500, 200, 400]):
        send(client, auth, "c1", f"e{i}", ts, n=i)
    applied(client, auth, "e4")
    seen = []
    url = "/v1/contacts/c1/history?limit=2"
    while True:
        page = client.get(url, headers=auth).json()
        seen += [e["timestamp"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        url = f"/v1/contacts/c1/history?limit=2&cursor={page['next_cursor']}"
    assert seen == [500, 400, 300, 200, 100]


def test_history_refuses_a_bad_limit_or_cursor_with_422(client, auth):
    send(client, auth, "c1", "e1", 1, a=1)
    applied(client, auth, "e1")
    for query, loc in [("limit=0", "limit"), ("limit=x", "limit"), ("cursor=%%%", "cursor")]:
        r = client.get(f"/v1/contacts/c1/history?{query}", headers=auth)
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["query", loc]


def test_an_event_reports_its_status_and_times(client, auth):
    send(client, auth, "c1", "e1", 1672531200, a=1)
    event = applied(client, auth, "e1")
    assert event["status"] == "applied"
    assert event["contact_id"] == "c1" and event["source"] == "api"
    assert event["received_at"] <= event["applied_at"]
    assert event["error"] is None
    r = client.get("/v1/events/never-sent", headers=auth)
    assert (r.status_code, r.json()) == (404, {"detail": "Event not found"})


def test_another_workspace_sees_nothing_of_mine(client, auth, settings):
    other = {"Authorization": f"Bearer {new_key(settings, 'other')}"}
    send(client, auth, "shared-id", "mine", 1, secret="acme-only")
    applied(client, auth, "mine")
    assert client.get("/v1/contacts/shared-id", headers=other).status_code == 404
    assert client.get("/v1/contacts/shared-id/history", headers=other).status_code == 404
    assert client.get("/v1/events/mine", headers=other).status_code == 404
    send(client, other, "shared-id", "theirs", 2, secret="other-only")
    applied(client, other, "theirs")
    assert client.get("/v1/contacts/shared-id", headers=auth).json()["properties"] == {
        "secret": "acme-only"
    }


def test_reads_need_a_valid_key(client):
    for path in ["/v1/contacts/c1", "/v1/contacts/c1/history", "/v1/events/e1"]:
        r = client.get(path, headers={"Authorization": "Bearer wrong"})
        assert (r.status_code, r.json()) == (401, {"detail": "Invalid API Key"})


def test_operations_endpoints(client, auth):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    send(client, auth, "c1", "e1", 1, a=1)
    applied(client, auth, "e1")
    metrics = client.get("/metrics").text
    for name in [
        'profilehook_events_total{outcome="accepted",source="api"} 1.0',
        'profilehook_events_total{outcome="applied",source="api"} 1.0',
        "profilehook_queue_depth",
        "profilehook_apply_lag_seconds_bucket",
        "profilehook_superseded_writes_total",
    ]:
        assert name in metrics


def test_a_cursor_or_id_no_store_could_hold_is_a_clean_4xx(client, auth):
    import base64

    send(client, auth, "c1", "e1", 1, a=1)
    applied(client, auth, "e1")
    huge = base64.urlsafe_b64encode(b'[1000000000000000000000000000000,"x"]').decode().rstrip("=")
    r = client.get(f"/v1/contacts/c1/history?cursor={huge}", headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert client.get("/v1/contacts/c%001", headers=auth).status_code == 404
    assert client.get("/v1/events/e%001", headers=auth).status_code == 404
