"""Segments over HTTP (README, Segments): created by an admin key and filled in the background,
listed, shown with their size and progress, paged, deleted; bad input is a clear 4xx."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from tests.support import wait_until
from tests.test_access import key_with
from tests.test_reads import applied, send


def headers(client: TestClient, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_with(client, scopes)}"}


PRO = {"property": "plan", "op": "eq", "value": "pro"}


def ready(client: TestClient, auth: dict[str, str], segment_id: str) -> dict[str, Any]:
    def status() -> Any:
        r = client.get(f"/v1/segments/{segment_id}", headers=auth)
        return r.json() if r.json()["status"] == "ready" else None

    found: dict[str, Any] = wait_until(status)
    return found


def test_given_profiles_when_a_segment_is_created_then_filled_and_kept_current(
    client: TestClient,
) -> None:
    admin, read = headers(client, "admin"), headers(client, "ingest", "read")
    for i in range(5):
        send(client, read, f"u{i}", f"e{i}", 100 + i, plan="pro" if i < 3 else "free")
    applied(client, read, "e4")
    r = client.post("/v1/segments", json={"name": "Pro", "filter": PRO}, headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "Pro" and created["filter"] == PRO
    segment = ready(client, read, created["segment_id"])
    assert segment["size"] == 3 and segment["scanned"] == 5
    sid = created["segment_id"]
    page = client.get(f"/v1/segments/{sid}/contacts?limit=2", headers=read).json()
    assert [c["contact_id"] for c in page["contacts"]] == ["u0", "u1"]
    assert page["contacts"][0] == client.get("/v1/contacts/u0", headers=read).json()
    rest = client.get(
        f"/v1/segments/{sid}/contacts?limit=2&cursor={page['next_cursor']}", headers=read
    ).json()
    assert [c["contact_id"] for c in rest["contacts"]] == ["u2"] and rest["next_cursor"] is None
    # Kept as events apply: u4 joins, u0 leaves.
    send(client, read, "u4", "e5", 200, plan="pro")
    send(client, read, "u0", "e6", 200, plan="free")
    applied(client, read, "e6")
    applied(client, read, "e5")
    members = client.get(f"/v1/segments/{sid}/contacts", headers=read).json()["contacts"]
    assert [c["contact_id"] for c in members] == ["u1", "u2", "u4"]
    listed = client.get("/v1/segments", headers=read).json()["segments"]
    assert [s["segment_id"] for s in listed] == [sid] and listed[0]["size"] == 3


def test_given_bad_input_then_clear_4xx(client: TestClient) -> None:
    admin, read = headers(client, "admin"), headers(client, "read")
    deep: dict[str, Any] = PRO
    for _ in range(9):
        deep = {"not": deep}
    r = client.post("/v1/segments", json={"name": "", "filter": deep}, headers=admin)
    assert r.status_code == 422
    locs = [p["loc"] for p in r.json()["detail"]]
    assert ["body", "name"] in locs and any(loc[:2] == ["body", "filter"] for loc in locs)
    assert (
        client.post("/v1/segments", json={"name": "x", "filter": PRO}, headers=read).status_code
        == 403
    )
    assert client.get("/v1/segments/nope", headers=read).status_code == 404
    assert client.get("/v1/segments/nope/contacts", headers=read).status_code == 404
    assert client.delete("/v1/segments/nope", headers=admin).status_code == 404
    sid = client.post("/v1/segments", json={"name": "x", "filter": PRO}, headers=admin).json()[
        "segment_id"
    ]
    assert client.get(f"/v1/segments/{sid}/contacts?limit=0", headers=read).status_code == 422
    assert client.get(f"/v1/segments/{sid}/contacts?cursor=zz", headers=read).status_code == 422
    assert client.delete(f"/v1/segments/{sid}", headers=admin).json() == {
        "segment_id": sid,
        "deleted": True,
    }
    r = client.get(f"/v1/segments/{sid}/contacts", headers=read)  # a deleted segment's members
    assert r.status_code == 404 and r.json() == {"detail": "Segment not found"}
    other = {"Authorization": f"Bearer {key_with(client, ('admin',), 'globex')}"}
    sid = client.post("/v1/segments", json={"name": "x", "filter": PRO}, headers=admin).json()[
        "segment_id"
    ]
    assert client.get(f"/v1/segments/{sid}", headers=other).status_code == 404
