"""GET /v1/changes and /v1/changes/stream (README, Getting changes out): the changes of the
key's workspace in apply order from any cursor, long-polled; the same as Server-Sent Events
resumable with Last-Event-ID; 410 for an expired cursor, 422 for one never issued."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import msgspec
import pytest
from starlette.testclient import TestClient

from profilehook.events import now_us
from profilehook.keys import create_key
from profilehook.retention import ChangePurger
from profilehook.service import running
from profilehook.settings import Settings


def post(client: TestClient, auth: dict[str, str], contact: str, ts: int, **props: Any) -> str:
    body = {"contact_id": contact, "event_name": "e", "timestamp": ts, "user_properties": props}
    r = client.post("/v1/properties", json=body, headers=auth)
    assert r.status_code == 202
    event_id: str = r.json()["event_id"]
    return event_id


def applied(client: TestClient, auth: dict[str, str], event_id: str) -> None:
    for _ in range(500):
        if client.get(f"/v1/events/{event_id}", headers=auth).json().get("status") == "applied":
            return
        time.sleep(0.01)
    raise AssertionError(f"{event_id} was not applied")


def changes(client: TestClient, auth: dict[str, str], **params: Any) -> dict[str, Any]:
    r = client.get("/v1/changes", params=params, headers=auth)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def key_with(settings: Settings, *scopes: str) -> dict[str, str]:
    async def make() -> str:
        async with running(settings) as services:
            key, _ = await create_key(services.store, "acme", scopes)
            return key

    return {"Authorization": f"Bearer {asyncio.run(make())}"}


def test_given_applied_events_then_the_feed_says_what_changed_in_order(
    client: TestClient, auth: dict[str, str]
) -> None:
    post(client, auth, "c1", 1, plan="free")
    post(client, auth, "c1", 2, plan="pro")
    unchanged = post(client, auth, "c1", 3, plan="pro")  # changes nothing

    first = changes(client, auth, wait_s=5)
    while len(first["changes"]) < 2:  # the applier may have applied one so far
        more = changes(client, auth, after=first["next_cursor"], wait_s=5)
        first = {"changes": first["changes"] + more["changes"], "next_cursor": more["next_cursor"]}

    assert [c["properties"] for c in first["changes"]] == [
        {"plan": {"old": None, "new": "free"}},
        {"plan": {"old": "free", "new": "pro"}},
    ]
    change = first["changes"][0]
    assert change["contact_id"] == "c1" and change["deleted"] is False
    assert change["segments"] == {"entered": [], "exited": []}
    assert set(change) >= {"change_id", "cursor", "event_id", "source", "applied_at"}
    assert first["next_cursor"] == first["changes"][-1]["cursor"]
    applied(client, auth, unchanged)  # applied, and it made no change
    assert changes(client, auth, after=first["next_cursor"])["changes"] == []


def long_poll_across_a_post(client: TestClient, auth: dict[str, str]) -> float:
    """Seconds a long-poll (``wait_s=20``) took to answer the change of a POST made 0.3 s
    after it began; the answer holds that change alone."""
    found: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: found.append(changes(client, auth, wait_s=20)))
    started = time.monotonic()
    waiting.start()
    time.sleep(0.3)
    post(client, auth, "c1", 1, plan="pro")
    waiting.join(20)
    assert [c["contact_id"] for c in found[0]["changes"]] == ["c1"]
    return time.monotonic() - started


def test_given_no_change_past_the_cursor_then_it_long_polls_until_one_comes(
    client: TestClient, auth: dict[str, str]
) -> None:
    start = time.monotonic()
    empty = changes(client, auth, wait_s=0.3)
    assert empty == {"changes": [], "next_cursor": None}
    assert time.monotonic() - start >= 0.3

    assert long_poll_across_a_post(client, auth) < 10  # answered when it came, not at wait_s


def test_given_a_long_poll_then_a_commit_wakes_it_without_waiting_for_its_next_look(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's commits are seen by a memory read of the file's WAL-index header, every few
    milliseconds, whoever commits: a waiting reader answers as the change is applied, not at
    its next look at the store (here made 30 s apart)."""
    from profilehook import constants

    monkeypatch.setattr(constants, "CHANGES_POLL_S", 30.0)
    # Answered at the commit: not at its next look (30 s), nor at wait_s (20 s).
    assert long_poll_across_a_post(client, auth) < 10


def test_given_keys_then_only_a_read_key_of_the_workspace_reads_its_changes(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    post(client, auth, "c1", 1, plan="pro")
    changes(client, auth, wait_s=5)
    ingest_only = key_with(settings, "ingest")
    r = client.get("/v1/changes", headers=ingest_only)
    assert r.status_code == 403 and r.json() == {"detail": "This key lacks the 'read' scope"}
    assert client.get("/v1/changes").status_code == 401
    assert client.get("/v1/changes/stream", headers=ingest_only).status_code == 403

    async def other_workspace() -> str:
        async with running(settings) as services:
            key, _ = await create_key(services.store, "globex")
            return key

    globex = {"Authorization": f"Bearer {asyncio.run(other_workspace())}"}
    assert changes(client, globex)["changes"] == []


def test_given_bad_parameters_then_each_is_a_422_naming_it(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.get("/v1/changes?after=nope&limit=0&wait_s=99", headers=auth)
    assert r.status_code == 422
    assert sorted(tuple(p["loc"]) for p in r.json()["detail"]) == [
        ("query", "limit"),
        ("query", "wait_s"),
    ]
    r = client.get("/v1/changes?after=nope", headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "after"]
    r = client.get("/v1/changes/stream?after=nope", headers=auth)
    assert r.status_code == 422


def test_given_purged_changes_then_a_cursor_behind_them_is_410(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    post(client, auth, "c1", 1, plan="free")
    first = changes(client, auth, wait_s=5)["changes"][0]
    post(client, auth, "c1", 2, plan="pro")
    changes(client, auth, after=first["cursor"], wait_s=5)

    async def purge() -> int:
        async with running(settings) as services:
            days = settings.changes_retention_days
            purger = ChangePurger(
                services.store, settings, clock_us=lambda: now_us() + days * 86_400_000_000
            )
            return await purger.step()

    assert asyncio.run(purge()) == 2
    r = client.get("/v1/changes", params={"after": first["cursor"]}, headers=auth)
    assert r.status_code == 410
    assert "expired" in r.json()["detail"] and "7 days" in r.json()["detail"]
    assert changes(client, auth)["changes"] == []  # from the start: what is kept


def read_events(
    client: TestClient, auth: dict[str, str], count: int, **headers: str
) -> list[tuple[str, dict[str, Any]]]:
    """The first ``count`` events of the stream: (id, data)."""
    found: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", "/v1/changes/stream", headers={**auth, **headers}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event_id = None
        for line in r.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                assert event_id is not None
                found.append((event_id, msgspec.json.decode(line[6:])))
                if len(found) == count:
                    break
    return found


def test_given_a_stream_then_each_change_is_an_event_and_last_event_id_resumes(
    client: TestClient, auth: dict[str, str]
) -> None:
    for i in range(3):
        post(client, auth, f"c{i}", 1, n=i)
    changes(client, auth, wait_s=5)

    first = read_events(client, auth, 2)
    assert [data["contact_id"] for _, data in first] == ["c0", "c1"]
    assert [event_id for event_id, _ in first] == [data["cursor"] for _, data in first]

    post(client, auth, "c3", 1, n=3)
    resumed = read_events(client, auth, 2, **{"Last-Event-ID": first[-1][0]})
    assert [data["contact_id"] for _, data in resumed] == ["c2", "c3"]
