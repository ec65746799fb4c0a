"""Destinations over HTTP (SPEC 2.10): an admin key creates one (the secret shown once), lists,
shows, deletes it, reads its delivery log and replays it; the URL is checked at creation; and
the running service delivers the changes of events sent to it, signed."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.settings import Settings
from tests.support import wait_until
from tests.test_access import key_with
from tests.test_reads import send
from tests.webhook_receiver import Receiver, receiving


def headers(client: TestClient, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_with(client, scopes)}"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver on a loop of its own (the app's runs in the test client's thread)."""
    ready: list[Receiver] = []
    stop = threading.Event()

    async def serve() -> None:
        async with receiving() as found:
            ready.append(found)
            while not stop.is_set():
                await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    wait_until(lambda: ready or None)
    yield ready[0]
    stop.set()
    thread.join(5)


@pytest.fixture
def private_client(settings: Settings) -> Iterator[TestClient]:
    allowed = replace(settings, destinations_allow_private=True, destinations_retry_scale=0.001)
    with TestClient(create_app(allowed), raise_server_exceptions=False) as test_client:
        yield test_client


def test_given_an_admin_key_then_a_destination_is_created_listed_shown_and_deleted(
    private_client: TestClient, receiver: Receiver
) -> None:
    client = private_client
    admin = headers(client, "admin")
    ingest = headers(client, "ingest", "read")
    send(client, ingest, "u1", "e0", 99, plan="trial")  # before it exists: not sent
    wait_until(
        lambda: client.get("/v1/changes", headers=ingest).json()["changes"] or None
    )  # applied
    url = f"http://127.0.0.1:{receiver.port}/in"
    r = client.post(
        "/v1/destinations",
        json={"url": url, "description": "crm", "properties": ["plan"]},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_")
    assert created["url"] == url and created["properties"] == ["plan"]
    destination_id = created["destination_id"]
    listed = client.get("/v1/destinations", headers=admin).json()["destinations"]
    assert [d["destination_id"] for d in listed] == [destination_id]
    shown = client.get(f"/v1/destinations/{destination_id}", headers=admin).json()
    assert "secret" not in shown and shown["status"] == "active"
    # The service delivers what matches, signed with that secret.
    receiver.secret = created["secret"]
    send(client, ingest, "u1", "e1", 100, plan="pro")
    send(client, ingest, "u1", "e2", 101, city="Delft")  # not the plan: not sent
    send(client, ingest, "u1", "e3", 102, plan="max")
    wait_until(lambda: len(receiver.received) >= 2 or None, timeout_s=20)
    bodies = [json.loads(c.body)["data"] for c in receiver.received]
    assert [b["properties"]["plan"]["new"] for b in bodies] == ["pro", "max"]
    assert all(c.verified is not None for c in receiver.received)

    def delivered() -> Any:
        r = client.get(f"/v1/destinations/{destination_id}/deliveries", headers=admin)
        found = r.json()["deliveries"]
        return found if all(d["status"] == "delivered" for d in found) and found else None

    log = wait_until(delivered)
    assert [d["attempts"] for d in log] == [1, 1] and log[0]["status_code"] == 200
    r = client.get(f"/v1/destinations/{destination_id}/deliveries?status=failed", headers=admin)
    assert r.json()["deliveries"] == []
    r = client.post(
        f"/v1/destinations/{destination_id}/replay", json={"after": None}, headers=admin
    )
    assert r.status_code == 200, r.text
    # A replay from null sends every change kept, also those from before it was created.
    wait_until(lambda: len(receiver.received) >= 5 or None, timeout_s=20)
    assert [json.loads(c.body)["data"]["event_id"] for c in receiver.received] == [
        "e1",
        "e3",
        "e0",
        "e1",
        "e3",
    ]
    r = client.delete(f"/v1/destinations/{destination_id}", headers=admin)
    assert r.json() == {"destination_id": destination_id, "deleted": True}
    assert client.get(f"/v1/destinations/{destination_id}", headers=admin).status_code == 404


def test_given_bad_input_then_a_clear_4xx(client: TestClient) -> None:
    admin = headers(client, "admin")
    read = headers(client, "read")
    assert client.get("/v1/destinations", headers=read).status_code == 403
    for body, loc in [
        ({"url": "https://127.0.0.1/hook"}, ["body", "url"]),  # loopback: refused
        ({"url": "http://example.com/hook"}, ["body", "url"]),  # not https
        ({"url": "https://169.254.169.254/latest"}, ["body", "url"]),  # metadata
        ({}, ["body", "url"]),
        ({"url": "https://8.8.8.8/x", "properties": "plan"}, ["body", "properties"]),
        ({"url": "https://8.8.8.8/x", "colour": 1}, ["body", "colour"]),
    ]:
        r = client.post("/v1/destinations", json=body, headers=admin)
        assert r.status_code == 422, (body, r.text)
        assert loc in [p["loc"] for p in r.json()["detail"]], (body, r.text)
    r = client.get("/v1/destinations/dst_nope/deliveries?status=lost", headers=admin)
    assert r.status_code == 404
    r = client.post("/v1/destinations/dst_nope/replay", json={"after": None}, headers=admin)
    assert r.status_code == 404


def test_a_workspace_has_at_most_50_destinations(client: TestClient) -> None:
    admin = headers(client, "admin")
    for i in range(50):
        r = client.post("/v1/destinations", json={"url": f"https://8.8.8.8/{i}"}, headers=admin)
        assert r.status_code == 201, r.text
    r = client.post("/v1/destinations", json={"url": "https://8.8.8.8/x"}, headers=admin)
    assert r.status_code == 422 and "at most 50" in r.text
    made = client.get("/v1/destinations", headers=admin).json()["destinations"]
    r = client.get(
        f"/v1/destinations/{made[0]['destination_id']}/deliveries?status=lost", headers=admin
    )
    assert r.status_code == 422
    r = client.post(
        f"/v1/destinations/{made[0]['destination_id']}/replay", json={"after": "x"}, headers=admin
    )
    # The documented 422 shape, pointing at the cursor (a bare string detail broke the schema).
    assert r.status_code == 422, r.text
    assert [p["loc"] for p in r.json()["detail"]] == [["body", "after"]]


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    return None


def test_metrics_show_deliveries_by_outcome_the_lag_and_the_retry_queue(
    private_client: TestClient, receiver: Receiver
) -> None:
    client = private_client
    admin = headers(client, "admin")
    receiver.answers = [500] * 1000  # never succeeds: the retry queue fills, the lag grows
    r = client.post(
        "/v1/destinations", json={"url": f"http://127.0.0.1:{receiver.port}/x"}, headers=admin
    )
    destination_id = r.json()["destination_id"]
    receiver.secret = r.json()["secret"]
    ingest = headers(client, "ingest", "read")
    send(client, ingest, "u1", "e1", 100, plan="pro")

    def retrying() -> Any:
        text = client.get("/metrics").text
        depth = metric(
            text, "profilehook_destination_retry_queue_depth", destination=destination_id
        )
        return text if depth == 1 else None

    text = wait_until(retrying, timeout_s=20)
    assert (
        metric(
            text,
            "profilehook_destination_deliveries",
            destination=destination_id,
            outcome="pending",
        )
        == 1
    )
    lag = metric(text, "profilehook_destination_delivery_lag_seconds", destination=destination_id)
    assert lag is not None and lag > 0
    receiver.answers = []  # now it answers 200: delivered at the next retry

    def delivered() -> Any:
        text = client.get("/metrics").text
        done = metric(
            text,
            "profilehook_destination_deliveries",
            destination=destination_id,
            outcome="delivered",
        )
        return text if done == 1 else None

    text = wait_until(delivered, timeout_s=30)
    assert (
        metric(text, "profilehook_destination_retry_queue_depth", destination=destination_id) == 0
    )
    assert (
        metric(text, "profilehook_destination_delivery_lag_seconds", destination=destination_id)
        == 0
    )
