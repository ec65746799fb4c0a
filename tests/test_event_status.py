"""``GET /v1/events/{id}`` says ``duplicate`` for an event_id accepted more than once, on the
embedded store and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.settings import Settings
from tests.conftest import new_key
from tests.support import store_url_for, wait_until


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestClient, Any]]:
    """The app on the store, and the headers of a key of workspace ``acme``."""
    with store_url_for(request.param) as url:
        settings = Settings(data_dir=tmp_path / "data", store_url=url)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client, {"Authorization": f"Bearer {new_key(settings, 'acme')}"}


def update(event_id: str, ts: int, **properties: Any) -> dict[str, Any]:
    return {
        "contact_id": "c1",
        "event_id": event_id,
        "event_name": "update",
        "timestamp": ts,
        "user_properties": properties,
    }


def status_becomes(client: TestClient, auth: Any, event_id: str, status: str) -> Any:
    def found() -> Any:
        r = client.get(f"/v1/events/{event_id}", headers=auth)
        return r.json() if r.status_code == 200 and r.json()["status"] == status else None

    return wait_until(found)


def test_given_an_event_id_accepted_twice_then_its_status_becomes_duplicate(served) -> None:
    client, auth = served
    assert client.post("/v1/properties", json=update("e1", 100, plan="a"), headers=auth).is_success
    applied = status_becomes(client, auth, "e1", "applied")

    again = client.post("/v1/properties", json=update("e1", 200, plan="b"), headers=auth)
    assert again.status_code == 202

    duplicate = status_becomes(client, auth, "e1", "duplicate")
    assert duplicate == {**applied, "status": "duplicate"}, "the first copy, applied when it was"
    assert client.get("/v1/contacts/c1", headers=auth).json()["properties"] == {"plan": "a"}
    history = client.get("/v1/contacts/c1/history", headers=auth).json()["events"]
    assert [(e["event_id"], e["status"]) for e in history] == [("e1", "duplicate")]
