"""Key scopes (README, Access and privacy): every route declares who may call it, and a key
without the scope a route needs is refused with a 403 that names the scope."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Match, Route
from starlette.testclient import TestClient

from profilehook import keys
from profilehook.api import openapi
from profilehook.api.access import ACCESSES, ScopedRoute
from profilehook.api.app import ProfilehookApp, create_app
from profilehook.api.webhooks import PATH_PREFIX
from profilehook.constants import SCOPES
from profilehook.settings import Settings
from profilehook.stores.base import KeyGrant
from profilehook.stores.sqlite import SqliteStore
from tests.support import run_cli, store_url_for

# -- every route declares its access -------------------------------------------------------------


def routes_of(app: ProfilehookApp) -> list[Route]:
    routes: list[Route] = [r for r in app._starlette.routes if isinstance(r, Route)]
    assert len(routes) == len(app._starlette.routes), "a mount or other router: walk it too"
    return routes


def undeclared(app: ProfilehookApp) -> list[str]:
    """The routes of ``app`` (Starlette's, and the raw paths its ``__call__`` dispatches before
    Starlette sees them) that declare no access."""
    routes = routes_of(app)
    missing = [
        f"{sorted(r.methods or [])} {r.path}"
        for r in routes
        if not isinstance(r, ScopedRoute) or r.access not in ACCESSES
    ]
    declared_raw = {r.path for r in routes if isinstance(r, ScopedRoute) and r.raw}
    raw_paths = [*app._ingest, PATH_PREFIX + "{source_id}"]
    missing += [f"raw POST {path}" for path in raw_paths if path not in declared_raw]
    return missing


def test_every_route_of_the_app_declares_its_access(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))

    assert undeclared(app) == []
    routes = routes_of(app)
    operations = {(m, r.path) for r in routes for m in r.methods or [] if m != "HEAD"}
    print(
        f"routes checked: {len(routes)} ({len(app._ingest) + 1} of them raw ASGI),"
        f" {len(operations)} method-and-path operations"
    )
    assert len(routes) >= 18
    # (The first route of a path: erasure's DELETE on /v1/contacts/{id} comes after the GET.)
    accesses: dict[str, str] = {}
    for route in routes:
        if isinstance(route, ScopedRoute):
            accesses.setdefault(route.path, route.access)
    assert accesses["/v1/properties"] == accesses["/v1/properties/batch"] == "ingest"
    assert accesses["/v1/contacts/{rest:any_tail}"] == "read"
    erasing = [r for r in routes if "DELETE" in (r.methods or ()) and "contacts" in r.path]
    assert [r.access for r in erasing if isinstance(r, ScopedRoute)] == ["admin"]
    assert accesses["/v1/erasures/{rest:any_tail}"] == "admin"
    assert accesses["/v1/suppressions/{rest:any_tail}"] == "admin"
    assert accesses["/v1/webhooks/{source_id}"] == "source"
    assert accesses["/healthz"] == "public"


def test_given_a_route_added_without_a_declared_access_then_the_walk_names_it(
    tmp_path: Path,
) -> None:
    """The walk above is what stops a future route from shipping unguarded."""
    app = create_app(Settings(data_dir=tmp_path))

    async def endpoint(request: Any) -> Any:
        raise AssertionError("never called")

    app._starlette.router.routes.append(Route("/v1/new-thing", endpoint))

    assert undeclared(app) == ["['GET', 'HEAD'] /v1/new-thing"]


def test_a_route_cannot_be_declared_with_an_unknown_access_or_without_the_key_store() -> None:
    async def endpoint(request: Any, grant: KeyGrant) -> Any:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="unknown access"):
        ScopedRoute("/x", endpoint, access="everyone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the store"):
        ScopedRoute("/x", endpoint, access="read")


def access_of(app: ProfilehookApp, method: str, path: str) -> str:
    """The declared access of the route of ``app`` that takes ``method`` on ``path``."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in routes_of(app):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            assert isinstance(route, ScopedRoute)
            return route.access
    raise AssertionError(f"no route takes {method} {path}")


def test_the_api_document_states_each_routes_own_scope_and_its_403(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    checked = 0
    for template, operations in openapi.document("http://x")["paths"].items():
        path = re.sub(r"\{[^}]+\}", "x", template)
        for method, operation in operations.items():
            access = access_of(app, method.upper(), path)
            if access in SCOPES:
                assert operation[openapi.SCOPE] == access, template
                assert "403" in operation["responses"] and operation["security"], template
                assert f"`{access}` scope" in operation["description"]
            else:
                assert openapi.SCOPE not in operation and "403" not in operation["responses"]
            checked += 1
    assert checked >= 10


# -- a key without the scope gets the 403 --------------------------------------------------------

BODY = {"contact_id": "c1", "event_name": "e", "timestamp": 1, "user_properties": {"a": 1}}
# One or more representative routes of each key scope the app's routes declare.
REPRESENTATIVES: dict[str, list[tuple[str, str, Any]]] = {
    "ingest": [
        ("POST", "/v1/properties", BODY),
        ("POST", "/v1/properties/batch", {"events": [BODY]}),
    ],
    "read": [
        ("GET", "/v1/contacts/c1", None),
        ("GET", "/v1/contacts/c1/history", None),
        ("GET", "/v1/events/e1", None),
    ],
    "admin": [
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {"scopes": ["read"]}),
        ("DELETE", "/v1/keys/no-such-key", None),
        ("GET", "/v1/sources", None),
        ("POST", "/v1/sources", {"kind": "amplitude"}),
        ("GET", "/v1/sources/src_none", None),
        ("DELETE", "/v1/sources/src_none", None),
        ("POST", "/v1/sources/src_none/rotate", None),
    ],
}
KEY_SCOPES = [("ingest",), ("read",), ("admin",), ("ingest", "read")]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def scoped_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app on each store (the log is SQLite's but for memory's, in memory)."""
    if request.param == "memory":
        settings = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client
        return
    with (
        store_url_for(request.param) as url,
        TestClient(
            create_app(Settings(data_dir=tmp_path, store_url=url)), raise_server_exceptions=False
        ) as client,
    ):
        yield client


def key_with(client: TestClient, scopes: tuple[str, ...], workspace: str = "acme") -> str:
    store = client.app.services.store  # type: ignore[attr-defined]
    key, _ = client.portal.call(keys.create_key, store, workspace, scopes)  # type: ignore[union-attr]
    return key


def call(client: TestClient, key: str, method: str, path: str, body: Any) -> Any:
    return client.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})


def test_the_representatives_cover_every_key_scope_a_route_declares(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    declared = {r.access for r in routes_of(app) if isinstance(r, ScopedRoute)}
    assert declared & set(SCOPES) <= set(REPRESENTATIVES)


def test_given_a_key_without_a_scope_then_each_route_of_that_scope_answers_403_naming_it(
    scoped_client: TestClient,
) -> None:
    made = {scopes: key_with(scoped_client, scopes) for scopes in KEY_SCOPES}
    seen = []
    for needed, routes in REPRESENTATIVES.items():
        for method, path, body in routes:
            for scopes, key in made.items():
                answer = call(scoped_client, key, method, path, body)
                allowed = needed in scopes or "admin" in scopes
                seen.append((needed, path, scopes, answer.status_code))
                if allowed:
                    assert answer.status_code not in (401, 403), (path, scopes, answer.text)
                else:
                    assert answer.status_code == 403, (path, scopes, answer.text)
                    assert answer.json() == {"detail": f"This key lacks the '{needed}' scope"}
    assert {status for *_, status in seen} >= {403, 200, 201, 202, 404}


def test_given_an_unknown_key_then_401_comes_before_any_scope_check(
    scoped_client: TestClient,
) -> None:
    for routes in REPRESENTATIVES.values():
        for method, path, body in routes:
            answer = call(scoped_client, "phk_nope_nope", method, path, body)
            assert answer.status_code == 401
            assert answer.json() == {"detail": "Invalid API Key"}


# -- keys from before scopes existed keep doing everything ---------------------------------------

OLD_CATALOG = """
CREATE TABLE sources (source_id TEXT PRIMARY KEY, workspace TEXT NOT NULL, kind TEXT NOT NULL,
    config TEXT NOT NULL, created_us INTEGER NOT NULL);
CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, workspace TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE, created_us INTEGER NOT NULL, revoked_us INTEGER);
PRAGMA user_version = 1;
"""  # the catalog as profilehook wrote it before scopes (CATALOG_VERSION 1)


def test_given_a_sqlite_catalog_from_before_scopes_then_its_keys_get_every_scope(
    tmp_path: Path,
) -> None:
    path = tmp_path / "profiles.sqlite3"
    with sqlite3.connect(tmp_path / "profiles.catalog.sqlite3") as old:
        old.executescript(OLD_CATALOG)
        old.execute("INSERT INTO api_keys VALUES ('k1', 'acme', 'hash-1', 1, NULL)")
        old.execute("INSERT INTO api_keys VALUES ('k2', 'acme', 'hash-2', 2, 3)")

    async def read() -> tuple[Any, ...]:
        store = SqliteStore(path)
        await store.open()
        try:
            await keys.create_key(store, "acme")
            return await store.key_grant("hash-1"), await store.list_keys()
        finally:
            await store.close()

    grant, listed = asyncio.run(read())

    assert grant == KeyGrant("k1", "acme", SCOPES)
    assert [k.scopes for k in listed] == [SCOPES, SCOPES, ("ingest", "read")]
    assert listed[1].revoked_us == 3


def test_given_a_postgres_schema_from_before_scopes_then_its_keys_get_every_scope() -> None:
    from profilehook.stores import postgres
    from profilehook.stores.postgres import PostgresStore

    async def run(url: str) -> tuple[Any, ...]:
        before = postgres.MIGRATIONS[:5]  # the schema as it was before scopes
        old = PostgresStore(url)
        postgres.MIGRATIONS, every = before, postgres.MIGRATIONS
        try:
            await old.open()
            await old._run(
                lambda conn: conn.execute(
                    "INSERT INTO api_keys (key_id, workspace, key_hash, created_us)"
                    " VALUES ('k1', 'acme', 'hash-1', 1)"
                )
            )
            await old.close()
        finally:
            postgres.MIGRATIONS = every
        new = PostgresStore(url)
        await new.open()
        try:
            # A process not yet upgraded inserts without scopes: the default, not admin.
            await new._run(
                lambda conn: conn.execute(
                    "INSERT INTO api_keys (key_id, workspace, key_hash, created_us)"
                    " VALUES ('k2', 'acme', 'hash-2', 2)"
                )
            )
            return await new.key_grant("hash-1"), await new.key_grant("hash-2")
        finally:
            await new.close()

    with store_url_for("postgres") as url:
        old_key, inserted_after = asyncio.run(run(url))

    assert old_key == KeyGrant("k1", "acme", SCOPES)
    assert inserted_after == KeyGrant("k2", "acme", ("ingest", "read"))


# -- the command line ----------------------------------------------------------------------------


def test_the_quick_starts_first_key_gets_every_scope(tmp_path: Path) -> None:
    from profilehook.cli import _quickstart_text
    from profilehook.service import running

    settings = Settings(data_dir=tmp_path)

    async def quickstart_keys() -> list[Any]:
        await _quickstart_text(settings)
        async with running(settings) as services:
            return await services.store.list_keys()

    assert [k.scopes for k in asyncio.run(quickstart_keys())] == [SCOPES]


def test_keys_create_takes_repeated_scopes_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    made = run_cli(
        data_dir, "keys", "create", "--workspace", "acme", "--scope", "read", "--scope", "admin"
    )
    as_json = run_cli(
        data_dir, "keys", "create", "--workspace", "acme", "--scope", "ingest", "--json"
    )
    unknown = run_cli(data_dir, "keys", "create", "--workspace", "acme", "--scope", "write")

    assert made.returncode == 0 and "scopes read, admin" in made.stdout, made.stderr
    assert json.loads(as_json.stdout)["scopes"] == ["ingest"]
    assert unknown.returncode == 2
    assert "'write' is not one of 'ingest', 'read', 'admin'" in unknown.stderr
    listed = json.loads(run_cli(data_dir, "keys", "list", "--json").stdout)
    assert [k["scopes"] for k in listed] == [["read", "admin"], ["ingest"]]
