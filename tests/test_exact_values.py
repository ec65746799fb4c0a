"""Same API, same values: what a client sends comes back as the same JSON text over HTTP and in
``profilehook export``, on the embedded store and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.settings import Settings
from tests.conftest import new_key
from tests.support import run_cli, store_url_for, wait_until
from tests.test_profile_store_contract import EXACT_VALUES, json_texts


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with store_url_for(request.param) as url:
        yield url


def applied(client: TestClient, auth: dict[str, str], event_id: str) -> None:
    def status() -> bool:
        found = client.get(f"/v1/events/{event_id}", headers=auth)
        return found.status_code == 200 and found.json()["status"] == "applied"

    wait_until(status)


def exact(body: bytes | str) -> Any:
    """Decoded keeping every distinction JSON text makes (int vs float, -0.0, key order)."""
    return json.loads(body)


def test_given_every_kind_of_json_value_then_http_and_export_give_the_same_json_text(
    store_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, store_url=store_url)
    body = {
        "contact_id": "c1",
        "event_id": "e1",
        "event_name": "update",
        "timestamp": 1_700_000_000,
        "user_properties": {**EXACT_VALUES, "unset_later": "x"},
    }
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        auth = {"Authorization": f"Bearer {new_key(settings, 'acme')}"}
        sent = client.post("/v1/properties", content=json.dumps(body), headers=auth)
        assert sent.status_code == 202, sent.text
        unset = {"contact_id": "c1", "event_id": "e2", "event_name": "update"}
        unset["timestamp"] = 1_700_000_001
        unset["user_properties"] = {"unset_later": None, "never_set": None}
        assert client.post("/v1/properties", json=unset, headers=auth).status_code == 202
        applied(client, auth, "e2")

        over_http = exact(client.get("/v1/contacts/c1", headers=auth).content)
        history = exact(client.get("/v1/contacts/c1/history", headers=auth).content)

    exported = run_cli(data_dir, "export", "--workspace", "acme", PROFILEHOOK_STORE_URL=store_url)
    assert exported.returncode == 0, exported.stderr
    lines = [exact(line) for line in exported.stdout.split("\n") if line]
    assert json_texts(over_http["properties"]) == json_texts(EXACT_VALUES)
    assert [json_texts(line["properties"]) for line in lines] == [json_texts(EXACT_VALUES)]
    sent_first = history["events"][-1]["properties"]
    assert json_texts(sent_first) == json_texts(body["user_properties"])
