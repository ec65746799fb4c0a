"""Credentials and tenants: keys and secrets carry an identifiable prefix, are stored
only as hashes, compared without leaking timing, never logged; nothing crosses workspaces.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from profilehook import keys
from profilehook.sources import registry
from profilehook.stores.base import KeyGrant
from tests.conftest import new_key
from tests.test_amplitude import new_source
from tests.test_native_api import applied_contact, event

AMPLITUDE_BODY = msgspec.json.encode([{"user_id": "shared", "plan": "from-amplitude"}])


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def files_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


def amplitude_post(client: Any, source_id: str, authorization: str) -> Any:
    return client.post(
        f"/v1/webhooks/{source_id}",
        content=AMPLITUDE_BODY,
        headers={"Authorization": authorization, "Content-Type": "application/json"},
    )


# -- credentials at rest -------------------------------------------------------------------------


def test_keys_and_secrets_have_their_prefix_and_only_their_hash_is_stored(client, settings, auth):
    key = auth["Authorization"].removeprefix("Bearer ")
    source_id, secret = new_source(settings)
    assert key.startswith("phk_") and secret.startswith("phs_")
    assert client.post("/v1/properties", json=event(), headers=auth).status_code == 202
    assert amplitude_post(client, source_id, f"Bearer {secret}").status_code == 200
    applied_contact(client, auth, "c1")

    stored = files_bytes(settings.data_dir)
    assert key.encode() not in stored and secret.encode() not in stored
    assert sha256(key).encode() in stored and sha256(secret).encode() in stored


def test_the_store_is_asked_for_a_keys_hash_never_for_the_key(client, auth, monkeypatch):
    store = client.app.services.store
    asked: list[str] = []
    lookup = store.key_grant

    async def spy(key_hash: str) -> KeyGrant | None:
        asked.append(key_hash)
        return await lookup(key_hash)

    monkeypatch.setattr(store, "key_grant", spy)
    keys._hashes.clear()
    assert client.post("/v1/properties", json=event(), headers=auth).status_code == 202
    assert asked == [sha256(auth["Authorization"].removeprefix("Bearer "))]


@pytest.mark.parametrize("presented", ["phs_wrong", "newest", "previous"])
def test_a_secret_is_compared_in_constant_time_with_every_active_one(
    client, settings, monkeypatch, presented
):
    source_id, previous = new_source(settings)
    source, newest = client.portal.call(
        registry.rotate_secret, client.app.services.store, source_id
    )
    compared: list[tuple[str, str]] = []
    compare = registry.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(registry.hmac, "compare_digest", spy)
    secret = {"newest": newest, "previous": previous}.get(presented, presented)
    assert registry.secret_matches(source, secret) is (presented != "phs_wrong")
    # Digests of equal length, every active secret compared: no early exit to time.
    assert len(compared) == 2 and all(len(a) == len(b) == 64 for a, b in compared)


# -- credentials in logs -----------------------------------------------------------------------


def test_no_key_or_secret_ever_reaches_a_log_record_or_an_error_answer(
    client, settings, auth, caplog
):
    caplog.set_level(logging.DEBUG)
    key = auth["Authorization"].removeprefix("Bearer ")
    source_id, secret = new_source(settings)
    near_key = key[:-4] + "XXXX"  # right shape and prefix, wrong key
    answers = [
        client.post("/v1/properties", json=event(), headers=auth),
        client.post(
            "/v1/properties", json=event(), headers={"Authorization": f"Bearer {near_key}"}
        ),
        client.post("/v1/properties", json={"contact_id": 1}, headers=auth),
        client.post("/v1/properties", content=b"x" * 300_000, headers=auth),
        client.get("/v1/contacts/c1", headers=auth),
        client.get("/v1/events/nope", headers={"Authorization": f"Bearer {near_key}"}),
        amplitude_post(client, source_id, f"Bearer {secret}"),
        amplitude_post(client, source_id, f"Bearer {secret[:-4]}XXXX"),
        amplitude_post(client, source_id, f"Bearer {key}"),
    ]
    applied_contact(client, auth, "shared")
    assert [r.status_code for r in answers][:4] == [202, 401, 422, 413]

    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records, "the cycle logged something to search"
    for credential in (key, near_key, secret, secret[:-4]):
        assert credential not in logged
        assert all(credential not in r.text for r in answers)


# -- tenants -----------------------------------------------------------------------------------


@pytest.fixture
def other(settings: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(settings, 'other-workspace')}"}


def test_the_same_contact_id_in_two_workspaces_is_two_contacts(client, auth, other):
    client.post("/v1/properties", json=event(user_properties={"plan": "mine"}), headers=auth)
    client.post("/v1/properties", json=event(user_properties={"plan": "theirs"}), headers=other)
    assert applied_contact(client, auth, "c1")["properties"] == {"plan": "mine"}
    assert applied_contact(client, other, "c1")["properties"] == {"plan": "theirs"}


def test_a_key_reads_nothing_of_another_workspace(client, auth, other):
    r = client.post("/v1/properties", json=event(contact_id="only-mine"), headers=auth)
    event_id = r.json()["event_id"]
    applied_contact(client, auth, "only-mine")
    for path in (
        "/v1/contacts/only-mine",
        "/v1/contacts/only-mine/history",
        f"/v1/events/{event_id}",
    ):
        assert client.get(path, headers=other).status_code == 404, path


def test_another_workspaces_source_refuses_my_key_and_my_sources_secret(
    client, settings, auth, other
):
    mine_id, my_secret = new_source(settings, "acme")
    theirs_id, their_secret = new_source(settings, "other-workspace")
    for credential in (auth["Authorization"], f"Bearer {my_secret}", f"Bearer {mine_id}"):
        assert amplitude_post(client, theirs_id, credential).status_code == 401
    assert amplitude_post(client, theirs_id, f"Bearer {their_secret}").status_code == 200
    # What their source brought is theirs alone.
    assert applied_contact(client, other, "shared")["properties"]["plan"] == "from-amplitude"
    assert client.get("/v1/contacts/shared", headers=auth).status_code == 404
