"""The management API (README, Access and privacy): an admin key manages its own workspace's
keys and sources over HTTP, in the command line's JSON forms, through the same library calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from profilehook import keys
from profilehook.api import openapi
from profilehook.cli import main
from profilehook.settings import Settings
from profilehook.sources import management
from tests.support import run_cli
from tests.test_access import key_with, scoped_client  # noqa: F401 (a fixture)
from tests.test_amplitude import render_default
from tests.test_copernica_signature import pem

AMPLITUDE_BODY = json.loads(render_default([{"user_id": "u1"}]))


def admin_headers(client: TestClient, workspace: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {key_with(client, ('admin',), workspace)}"}


def required_fields(name: str) -> set[str]:
    return set(openapi.document("")["components"]["schemas"][name]["required"])


# -- keys ------------------------------------------------------------------------------------


def test_given_an_admin_key_then_keys_are_created_listed_and_revoked_over_http(
    scoped_client: TestClient,  # noqa: F811
) -> None:
    client, admin = scoped_client, admin_headers(scoped_client)

    made = client.post("/v1/keys", json={"scopes": ["read", "ingest"]}, headers=admin)
    default = client.post("/v1/keys", headers=admin)

    assert made.status_code == default.status_code == 201, made.text
    created = made.json()
    assert set(created) == required_fields("KeyCreated")
    assert created["workspace"] == "acme" and created["scopes"] == ["ingest", "read"]
    assert default.json()["scopes"] == ["ingest", "read"]
    new_key = {"Authorization": f"Bearer {created['key']}"}
    assert client.get("/v1/contacts/nobody", headers=new_key).status_code == 404  # it works
    assert client.get("/v1/keys", headers=new_key).status_code == 403  # not an admin key

    listed = client.get("/v1/keys", headers=admin).json()
    assert created["key_id"] in [k["key_id"] for k in listed]
    assert all(set(k) == required_fields("Key") for k in listed)
    assert not any(created["key"] in json.dumps(k) for k in listed)

    revoked = client.delete(f"/v1/keys/{created['key_id']}", headers=admin)
    again = client.delete(f"/v1/keys/{created['key_id']}", headers=admin)

    assert revoked.status_code == again.status_code == 200
    assert revoked.json()["already_revoked"] is False and "warning" not in revoked.json()
    assert again.json()["already_revoked"] is True
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]  # the first time is kept
    assert client.get("/v1/contacts/nobody", headers=new_key).status_code == 401


def test_given_another_workspaces_key_or_an_unknown_id_then_404_and_nothing_changes(
    scoped_client: TestClient,  # noqa: F811
) -> None:
    client, admin = scoped_client, admin_headers(scoped_client)
    theirs = client.post("/v1/keys", headers=admin_headers(client, "globex")).json()

    for key_id in (theirs["key_id"], "no-such-key"):
        answer = client.delete(f"/v1/keys/{key_id}", headers=admin)
        assert answer.status_code == 404
        assert answer.json() == {"detail": f"No key with id {key_id!r}"}
    assert theirs["key_id"] not in [
        k["key_id"] for k in client.get("/v1/keys", headers=admin).json()
    ]
    their_key = {"Authorization": f"Bearer {theirs['key']}"}
    assert client.get("/v1/contacts/nobody", headers=their_key).status_code == 404  # still works


def test_revoking_the_last_admin_key_is_allowed_with_a_warning(
    scoped_client: TestClient,  # noqa: F811
) -> None:
    client = scoped_client
    first = admin_headers(client)
    second = client.post("/v1/keys", json={"scopes": ["admin"]}, headers=first).json()

    not_last = client.delete(f"/v1/keys/{second['key_id']}", headers=first).json()
    own_id = next(
        k["key_id"] for k in client.get("/v1/keys", headers=first).json() if k["revoked_at"] is None
    )
    last = client.delete(f"/v1/keys/{own_id}", headers=first)

    assert "warning" not in not_last
    assert last.status_code == 200
    assert "no admin key left" in last.json()["warning"]
    assert client.get("/v1/keys", headers=first).status_code == 401  # it took effect


def test_bad_key_requests_get_a_422_listing_every_problem_never_a_500(
    scoped_client: TestClient,  # noqa: F811
) -> None:
    client, admin = scoped_client, admin_headers(scoped_client)

    answer = client.post(
        "/v1/keys",
        json={"scopes": ["ingest", "write", 7], "name": "x", "workspace": "globex"},
        headers=admin,
    )

    assert answer.status_code == 422
    problems = {(tuple(p["loc"]), p["type"]) for p in answer.json()["detail"]}
    assert problems == {
        (("body", "scopes", 1), "enum"),
        (("body", "scopes", 2), "enum"),
        (("body", "name"), "extra_forbidden"),
        (("body", "workspace"), "value_error"),
    }
    for body, content_type, status in [
        (b"[]", "application/json", 422),
        (b"{", "application/json", 422),
        (b'{"scopes": []}', "application/json", 422),
        (b'{"scopes": "read"}', "application/json", 422),
        (b"scopes=read", "application/x-www-form-urlencoded", 415),
        (b" " * 70_000, "application/json", 413),
    ]:
        headers = {**admin, "Content-Type": content_type}
        refused = client.post("/v1/keys", content=body, headers=headers)
        assert refused.status_code == status, (body[:20], refused.text)
        assert list(refused.json()) == ["detail"]
    assert len(client.get("/v1/keys", headers=admin).json()) == 1  # nothing was created


# -- sources ---------------------------------------------------------------------------------


def test_given_an_admin_key_then_a_source_is_created_rotated_and_deleted_over_http(
    scoped_client: TestClient,  # noqa: F811
) -> None:
    client, admin = scoped_client, admin_headers(scoped_client)

    created = client.post("/v1/sources", json={"kind": "amplitude"}, headers=admin)

    assert created.status_code == 201, created.text
    source = created.json()
    assert set(source) == required_fields("SourceCreated") | {"secret"}
    path = f"/v1/webhooks/{source['source_id']}"
    assert (
        client.post(
            path, json=AMPLITUDE_BODY, headers={"Authorization": f"Bearer {source['secret']}"}
        ).status_code
        == 200
    )

    shown = client.get(f"/v1/sources/{source['source_id']}", headers=admin).json()
    assert set(shown) == required_fields("Source") and shown["active_secrets"] == 1
    assert client.get("/v1/sources", headers=admin).json() == [shown]

    rotated = client.post(f"/v1/sources/{source['source_id']}/rotate", headers=admin)
    under_way = client.post(f"/v1/sources/{source['source_id']}/rotate", json={}, headers=admin)
    forced = client.post(
        f"/v1/sources/{source['source_id']}/rotate", json={"revoke_oldest": True}, headers=admin
    )
    dropped = client.post(
        f"/v1/sources/{source['source_id']}/rotate", json={"drop_previous": True}, headers=admin
    )

    assert rotated.status_code == 200 and set(rotated.json()) == {"source_id", "secret", "url"}
    assert under_way.status_code == 409 and "rotation is under way" in under_way.json()["detail"]
    assert forced.status_code == 200
    assert dropped.status_code == 200 and dropped.json()["active_secrets"] == 1
    newest = {"Authorization": f"Bearer {forced.json()['secret']}"}
    for old in (source["secret"], rotated.json()["secret"]):
        refused = client.post(path, json=AMPLITUDE_BODY, headers={"Authorization": f"Bearer {old}"})
        assert refused.status_code == 401
    assert client.post(path, json=AMPLITUDE_BODY, headers=newest).status_code == 200

    deleted = client.delete(f"/v1/sources/{source['source_id']}", headers=admin)

    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert client.post(path, json=AMPLITUDE_BODY, headers=newest).status_code == 404
    assert client.delete(f"/v1/sources/{source['source_id']}", headers=admin).status_code == 404
    assert client.get("/v1/sources", headers=admin).json() == []


def test_a_copernica_source_takes_the_kinds_options_as_json(
    scoped_client: TestClient,  # noqa: F811
) -> None:
    client, admin = scoped_client, admin_headers(scoped_client)
    public = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)).decode()

    made = client.post(
        "/v1/sources",
        json={
            "kind": "copernica",
            "account": "12345",
            "contact_field": "customer_id",
            "public_keys": {"k1": public},
            "token": True,
        },
        headers=admin,
    )

    assert made.status_code == 201, made.text
    created = made.json()
    assert created["url"].endswith(f"?token={created['token']}")
    shown = client.get(f"/v1/sources/{created['source_id']}", headers=admin).json()
    assert shown["config"] == {
        "account": "12345",
        "contact_field": "customer_id",
        "public_keys": {"k1": public},
    }


def test_bad_source_requests_get_a_422_listing_every_problem(
    scoped_client: TestClient,  # noqa: F811
) -> None:
    client, admin = scoped_client, admin_headers(scoped_client)

    unknown_kind = client.post("/v1/sources", json={"kind": "mailchimp"}, headers=admin)
    bad = client.post(
        "/v1/sources",
        json={
            "kind": "copernica",
            "token": "yes",
            "contact_field": 3,
            "public_keys": {"k1": "not a key"},
            "contact-field": "x",
        },
        headers=admin,
    )
    bad_rotation = client.post(
        "/v1/sources/src_x/rotate", json={"drop_previous": 1, "revoke_oldest": True}, headers=admin
    )

    assert unknown_kind.status_code == 422
    assert [p["loc"] for p in unknown_kind.json()["detail"]] == [["body", "kind"]]
    assert bad.status_code == 422
    assert {(tuple(p["loc"]), p["type"]) for p in bad.json()["detail"]} == {
        (("body", "token"), "bool_type"),
        (("body", "contact_field"), "string_type"),
        (("body", "public_keys"), "value_error"),
        (("body", "contact-field"), "extra_forbidden"),
        (("body", "account"), "missing"),
    }
    assert bad_rotation.status_code == 422
    assert client.get("/v1/sources", headers=admin).json() == []


def test_given_another_workspaces_source_then_every_action_on_it_is_a_404(
    scoped_client: TestClient,  # noqa: F811
) -> None:
    client, admin = scoped_client, admin_headers(scoped_client)
    theirs = client.post(
        "/v1/sources", json={"kind": "amplitude"}, headers=admin_headers(client, "globex")
    ).json()
    source_path = f"/v1/sources/{theirs['source_id']}"

    for method, path in [
        ("GET", source_path),
        ("DELETE", source_path),
        ("POST", f"{source_path}/rotate"),
    ]:
        answer = client.request(method, path, headers=admin)
        assert answer.status_code == 404, (method, path)
        assert answer.json() == {"detail": f"No source with id {theirs['source_id']!r}"}
    assert client.get("/v1/sources", headers=admin).json() == []
    webhook = f"/v1/webhooks/{theirs['source_id']}"
    their_secret = {"Authorization": f"Bearer {theirs['secret']}"}
    assert client.post(webhook, json=AMPLITUDE_BODY, headers=their_secret).status_code == 200


# -- the command line and the API give the same forms ---------------------------------------


@pytest.fixture
def shared(tmp_path: Path) -> Any:
    """The app on the embedded default, and the CLI on the same data."""
    settings = Settings(data_dir=tmp_path / "data")
    from profilehook.api.app import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, settings.data_dir


def cli_json(data_dir: Path, *args: str) -> Any:
    result = run_cli(data_dir, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_cli_and_the_api_print_the_same_json_forms(shared: Any) -> None:
    client, data_dir = shared
    admin = admin_headers(client)

    by_cli = cli_json(
        data_dir, "keys", "create", "--workspace", "acme", "--scope", "read", "--json"
    )
    by_api = client.post("/v1/keys", json={"scopes": ["read"]}, headers=admin).json()
    assert set(by_cli) == set(by_api) and by_cli["scopes"] == by_api["scopes"] == ["read"]
    assert (
        cli_json(data_dir, "keys", "list", "--workspace", "acme", "--json")
        == client.get("/v1/keys", headers=admin).json()
    )

    made_by_cli = cli_json(
        data_dir, "sources", "create", "amplitude", "--workspace", "acme", "--json"
    )
    made_by_api = client.post("/v1/sources", json={"kind": "amplitude"}, headers=admin).json()
    assert set(made_by_cli) == set(made_by_api)
    assert (
        cli_json(data_dir, "sources", "list", "--workspace", "acme", "--json")
        == client.get("/v1/sources", headers=admin).json()
    )
    source_id = made_by_cli["source_id"]
    shown = run_cli(data_dir, "sources", "show", source_id)
    assert json.loads(shown.stdout) == client.get(f"/v1/sources/{source_id}", headers=admin).json()
    rotated = cli_json(data_dir, "sources", "rotate", source_id, "--json")
    assert set(rotated) == set(
        client.post(f"/v1/sources/{made_by_api['source_id']}/rotate", headers=admin).json()
    )


def test_sources_delete_on_the_command_line_refuses_the_next_webhook_call(shared: Any) -> None:
    client, data_dir = shared
    made = cli_json(data_dir, "sources", "create", "amplitude", "--workspace", "acme", "--json")
    path = f"/v1/webhooks/{made['source_id']}"
    secret = {"Authorization": f"Bearer {made['secret']}"}
    assert client.post(path, json=AMPLITUDE_BODY, headers=secret).status_code == 200

    deleted = run_cli(data_dir, "sources", "delete", made["source_id"])
    again = run_cli(data_dir, "sources", "delete", made["source_id"])

    assert (
        deleted.returncode == 0
        and f"Deleted amplitude source {made['source_id']}" in deleted.stdout
    )
    assert client.post(path, json=AMPLITUDE_BODY, headers=secret).status_code == 404
    assert again.returncode == 1 and f"No source with id '{made['source_id']}'" in again.stderr


def test_keys_revoke_on_the_command_line_says_revoked_twice_and_warns_on_the_last_admin_key(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    admin = cli_json(
        data_dir, "keys", "create", "--workspace", "acme", "--scope", "admin", "--json"
    )
    plain = cli_json(data_dir, "keys", "create", "--workspace", "acme", "--json")

    first = run_cli(data_dir, "keys", "revoke", plain["key_id"])
    twice = run_cli(data_dir, "keys", "revoke", plain["key_id"])
    last = run_cli(data_dir, "keys", "revoke", admin["key_id"])

    assert first.returncode == twice.returncode == last.returncode == 0
    assert first.stdout.strip() == f"Revoked {plain['key_id']}" and not first.stderr.strip()
    assert "was revoked already" in twice.stdout
    assert "Warning: Workspace 'acme' has no admin key left" in last.stderr


# (module, function): the command and the request that must both go through it
ACTIONS: list[tuple[Any, str, list[str], tuple[str, str, Any]]] = [
    (keys, "create_key", ["keys", "create", "--workspace", "acme"], ("POST", "/v1/keys", {})),
    (keys, "list_keys", ["keys", "list"], ("GET", "/v1/keys", None)),
    (keys, "revoke_key", ["keys", "revoke", "{key}"], ("DELETE", "/v1/keys/{key}", None)),
    (
        management,
        "create",
        ["sources", "create", "amplitude", "--workspace", "acme"],
        ("POST", "/v1/sources", {"kind": "amplitude"}),
    ),
    (management, "list_views", ["sources", "list"], ("GET", "/v1/sources", None)),
    (management, "show", ["sources", "show", "{src}"], ("GET", "/v1/sources/{src}", None)),
    (
        management,
        "rotate",
        ["sources", "rotate", "{src}", "--revoke-oldest"],
        ("POST", "/v1/sources/{src}/rotate", {"revoke_oldest": True}),
    ),
    (
        management,
        "drop_previous",
        ["sources", "rotate", "{src}", "--drop-previous"],
        ("POST", "/v1/sources/{src}/rotate", {"drop_previous": True}),
    ),
    (management, "delete", ["sources", "delete", "{src}"], ("DELETE", "/v1/sources/{src}", None)),
]


@pytest.mark.parametrize(
    ("module", "name", "command", "request_"), ACTIONS, ids=[a[1] for a in ACTIONS]
)
def test_each_action_is_one_library_function_called_by_the_command_and_the_route(
    shared: Any,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    command: list[str],
    request_: tuple[str, str, Any],
) -> None:
    client, data_dir = shared
    admin = admin_headers(client)

    def fresh() -> dict[str, str]:
        """A key and a source to act on (one of each per caller: a deletion is final)."""
        key_id = client.post("/v1/keys", headers=admin).json()["key_id"]
        src = client.post("/v1/sources", json={"kind": "amplitude"}, headers=admin).json()
        return {"key": key_id, "src": src["source_id"]}

    calls: list[str] = []
    original = getattr(module, name)

    async def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return await original(*args, **kwargs)

    by_cli, by_api = fresh(), fresh()
    monkeypatch.setattr(module, name, spy)

    ran = CliRunner().invoke(
        main, ["--data-dir", str(data_dir), *(word.format(**by_cli) for word in command)]
    )
    assert ran.exit_code == 0, ran.output
    assert calls == [name]

    method, path, body = request_
    answer = client.request(method, path.format(**by_api), json=body, headers=admin)
    assert answer.status_code in (200, 201), answer.text
    assert calls == [name, name]
