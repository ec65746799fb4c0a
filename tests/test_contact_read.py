"""The read hot path (api/contact_read.py, sqlite_db.read_quick): ``GET /v1/contacts/{id}``
answered without Starlette, byte for byte as the Starlette route answers it, under the same
deadline; the SQLite lookup on the event loop, and on the reader thread when it would wait."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.api.responses import encode
from profilehook.errors import StorageUnavailable
from profilehook.keys import create_key
from profilehook.service import running
from profilehook.settings import Settings
from profilehook.sqlite_db import LATER, SqliteDatabase
from profilehook.stores.sqlite import SqliteStore, _contact_of, _Row
from profilehook.views import contact_body, contact_view
from tests.support import examples
from tests.test_operations import WORKSPACE, event
from tests.test_reads import applied, send


def scoped_key(settings: Settings, workspace: str, scopes: tuple[str, ...]) -> str:
    async def make() -> str:
        async with running(settings) as services:
            key, _ = await create_key(services.store, workspace, scopes)
            return key

    return asyncio.run(make())


def answer(response: Any) -> tuple[int, bytes, dict[str, str]]:
    """What a client can tell of an answer: status, body, and the headers that carry meaning."""
    kept = ("content-type", "content-length", "www-authenticate", "retry-after")
    return (
        response.status_code,
        response.content,
        {k: v for k, v in response.headers.items() if k in kept},
    )


def test_given_any_get_under_contacts_then_the_answer_is_the_starlette_routes_own(
    client, auth, settings
):
    # Given a contact, a key without the read scope, and the Starlette app alone beside the app
    send(client, auth, "c1", "e1", 100, plan="pro", seats=3, tags=["a"], nested={"x": 1.5})
    send(client, auth, "c1", "e2", 200.25, seats=5, gone=None)
    send(client, auth, "tenant/ü ser", "e3", 300, plan="team")
    applied(client, auth, "e3")
    applied(client, auth, "e2")
    ingest_only = {"Authorization": f"Bearer {scoped_key(settings, 'acme', ('ingest',))}"}
    starlette_only = TestClient(client.app._starlette)
    cases: list[tuple[str, dict[str, str]]] = [
        ("/v1/contacts/c1", auth),
        ("/v1/contacts/tenant%2F%C3%BC%20ser", auth),
        ("/v1/contacts/nobody", auth),
        ("/v1/contacts/", auth),
        ("/v1/contacts/a/b", auth),
        ("/v1/contacts/%FF", auth),
        ("/v1/contacts/nul%00", auth),
        ("/v1/contacts/c1/history", auth),
        ("/v1/contacts/c1/history?limit=1", auth),
        ("/v1/contacts/c1/history?limit=0", auth),
        ("/v1/contacts/query", auth),
        ("/v1/contacts/c1", {}),
        ("/v1/contacts/c1", {"Authorization": "Bearer ph_nope"}),
        ("/v1/contacts/c1", {"Authorization": "Basic abc"}),
        ("/v1/contacts/c1", ingest_only),
        ("/v1/contacts/c1/history", ingest_only),
    ]
    for path, headers in cases:
        # When the app answers, and the Starlette route answers the same request
        ours = client.get(path, headers=headers)
        theirs = starlette_only.get(path, headers=headers)
        # Then the two are the same
        assert answer(ours) == answer(theirs), path
    # (two Authorization headers: refused, not one chosen)
    twice = [("authorization", auth["Authorization"]), ("authorization", auth["Authorization"])]
    ours = client.get("/v1/contacts/c1", headers=twice)
    assert answer(ours) == answer(starlette_only.get("/v1/contacts/c1", headers=twice))
    assert ours.status_code == 401


def test_given_a_contact_get_then_starlette_is_not_called(client, auth):
    # Given a contact, and the Starlette app replaced by one that fails the test
    send(client, auth, "c1", "e1", 100, plan="pro")
    applied(client, auth, "e1")
    app = client.app
    starlette, calls = app._starlette, []

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope.get("path"))
        await starlette(scope, receive, send)

    app._starlette = watched
    app._contact_read.fallback = watched
    # When the contact is read, and its history
    profile = client.get("/v1/contacts/c1", headers=auth)
    history = client.get("/v1/contacts/c1/history", headers=auth)
    # Then only the history went through Starlette
    assert profile.status_code == 200 and profile.json()["properties"] == {"plan": "pro"}
    assert history.status_code == 200
    assert calls == ["/v1/contacts/c1/history"]


def test_given_a_store_that_does_not_answer_then_503_in_time_and_readyz_stays_ready(tmp_path):
    # Given a server whose store finds the file locked and then never answers, with a short
    # backend deadline
    settings = Settings(data_dir=tmp_path / "data", backend_timeout_s=0.3)
    key = scoped_key(settings, "acme", ("read",))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        store = client.app.services.store

        async def hang(workspace: str, contact_id: str) -> None:
            await asyncio.sleep(30)

        store.get_contact = hang
        store.contact_groups_at_once = lambda workspace, contact_id: LATER  # (a lock to wait for)
        # When a contact is read
        response = client.get("/v1/contacts/c1", headers={"Authorization": f"Bearer {key}"})
        # Then the answer is the routes' 503 with Retry-After, on time
        assert response.status_code == 503
        assert response.json() == {"detail": "Storage did not answer within 0.3 s, retry later"}
        assert "retry-after" in response.headers
        # And a slow read does not make durable writes look failing
        assert client.get("/readyz").status_code == 200


def test_given_a_lookup_then_it_runs_on_the_calling_thread(tmp_path: Path) -> None:
    # Given an open database
    async def main() -> tuple[int, int]:
        db = SqliteDatabase(tmp_path / "x.sqlite3", "CREATE TABLE t (v);", 1)
        await db.open()
        try:
            # When a quick read runs
            ran_on = await db.read_quick(lambda conn: threading.get_ident())
        finally:
            await db.close()
        return ran_on, threading.get_ident()

    ran_on, loop_thread = asyncio.run(main())
    # Then it ran on the event loop's thread, not the reader's
    assert ran_on == loop_thread


def busy() -> sqlite3.OperationalError:
    """The error SQLite gives a connection that would wait for a lock (busy timeout 0)."""
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = sqlite3.SQLITE_BUSY
    return error


def test_given_a_lookup_that_would_wait_for_a_lock_then_the_reader_thread_runs_it(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[list[int], int, Any]:
        db = SqliteDatabase(tmp_path / "x.sqlite3", "CREATE TABLE t (v);", 1)
        await db.open()
        await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (7)"))
        threads: list[int] = []

        # Given a lookup that finds the file locked on its first try
        def lookup(conn: sqlite3.Connection) -> Any:
            threads.append(threading.get_ident())
            if len(threads) == 1:
                raise busy()
            return conn.execute("SELECT max(v) FROM t").fetchone()[0]

        # When it is run as a quick read
        try:
            value = await db.read_quick(lookup)
        finally:
            await db.close()
        return threads, threading.get_ident(), value

    threads, loop_thread, value = asyncio.run(main())
    # Then it was tried on the loop, then run again on the reader thread (which waits)
    assert threads[0] == loop_thread
    assert len(threads) == 2 and threads[1] != loop_thread
    assert value == 7


def test_given_a_lookup_that_fails_otherwise_then_storage_unavailable_and_no_retry(
    tmp_path: Path,
) -> None:
    calls: list[int] = []

    def broken(conn: sqlite3.Connection) -> Any:
        calls.append(1)
        return conn.execute("SELECT * FROM no_such_table").fetchall()

    async def main() -> None:
        db = SqliteDatabase(tmp_path / "x.sqlite3", "CREATE TABLE t (v);", 1)
        await db.open()
        try:
            await db.read_quick(broken)
        finally:
            await db.close()

    with pytest.raises(StorageUnavailable):
        asyncio.run(main())
    assert calls == [1]


def test_given_sqlite_then_a_read_takes_no_task_unless_its_lookup_would_wait(
    client, auth, monkeypatch
):
    # Given a contact on the embedded SQLite store, and the deadline's task counted
    from profilehook.api import contact_read

    send(client, auth, "c1", "e1", 100, plan="pro")
    applied(client, auth, "e1")
    bounded: list[float] = []
    real_within = contact_read.within

    async def counted(timeout_s: float, awaitable: Any) -> Any:
        bounded.append(timeout_s)
        return await real_within(timeout_s, awaitable)

    monkeypatch.setattr(contact_read, "within", counted)
    # When it is read: at once, without a task under the deadline
    assert client.get("/v1/contacts/c1", headers=auth).json()["properties"] == {"plan": "pro"}
    assert bounded == []
    # When its lookup would wait for a lock: under the deadline, and the same answer
    store = client.app.services.store
    monkeypatch.setattr(store, "contact_groups_at_once", lambda workspace, contact_id: LATER)
    assert client.get("/v1/contacts/c1", headers=auth).json()["properties"] == {"plan": "pro"}
    assert len(bounded) == 1


def test_given_one_event_that_sets_and_unsets_then_the_contact_shows_what_it_set_by_name(
    client, auth
):
    # Given a contact made by one event that sets two properties and unsets a third
    send(client, auth, "c2", "e4", 50.5, zeta=1, alpha="a", gone=None)
    applied(client, auth, "e4")
    # When it is read
    response = client.get("/v1/contacts/c2", headers=auth)
    # Then it shows the two, by name, each with the event's version
    version = {"timestamp": 50.5, "event_id": "e4"}
    assert response.json() == {
        "contact_id": "c2",
        "properties": {"alpha": "a", "zeta": 1},
        "updated_at": "1970-01-01T00:00:50.500000Z",
        "versions": {"alpha": version, "zeta": version},
    }
    assert list(response.json()["properties"]) == ["alpha", "zeta"]
    assert list(response.json()["versions"]) == ["alpha", "zeta"]


async def test_given_postgresql_then_a_contact_is_read_in_one_statement(postgres_store_backend):
    # Given a contact with live and unset properties, and one without any live property
    from profilehook.events import Event
    from profilehook.stores import postgres

    store = postgres_store_backend.store
    await store.apply(
        [
            Event("acme", "e1", "c1", 100 * 1_000_000, {"b": 2, "a": "x", "gone": 1}),
            Event("acme", "e2", "c1", 200 * 1_000_000, {"gone": None}),
            Event("acme", "e3", "c2", 100 * 1_000_000, {"only": 1}),
            Event("acme", "e4", "c2", 300 * 1_000_000, {"only": None}),
        ]
    )
    statements: list[str] = []

    class Counting:
        def __init__(self, conn: Any):
            self.conn = conn

        async def execute(self, sql: str, params: Any = None) -> Any:
            statements.append(sql)
            return await self.conn.execute(sql, params)

    async def read(contact_id: str) -> Any:
        return await store._run(lambda conn: postgres._contact(Counting(conn), "acme", contact_id))

    # When each is read (and one that does not exist)
    c1, c2, nobody = await read("c1"), await read("c2"), await read("nobody")
    # Then each took one statement, and the answers are the store's
    assert len(statements) == 3
    assert (c1.properties, c1.versions, c1.updated_us) == (
        {"a": "x", "b": 2},
        {"a": (100 * 1_000_000, "e1"), "b": (100 * 1_000_000, "e1")},
        200 * 1_000_000,
    )
    assert list(c1.properties) == ["a", "b"]
    assert (c2.properties, c2.versions, c2.updated_us) == ({}, {}, 300 * 1_000_000)
    assert nobody is None
    assert await store.get_contact("acme", "c1") == c1


# -- the answer encoded from the stored groups (views.contact_body) ---------------------------

NAMES = ("a", "b", "zeta", "Zeta", "ü", "日本", "a b", "")
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from((0.0, -0.0, 1e300, -1.5, 0.1, 1.0, 2.5e-308))
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(("z", "a", "ü", "m")), inner, max_size=3)
    ),
    max_leaves=6,
)
GROUPS = st.lists(
    st.tuples(
        st.sampled_from((0, 1, 100_000_000, 1_672_531_200_000_001, 1_672_531_200_500_000)),
        st.sampled_from(("e1", "e2", "é/3")),
        st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=5),
    ),
    max_size=4,
)


@hypothesis.settings(max_examples=examples(400), deadline=None)
@hypothesis.given(groups=GROUPS, updated_us=st.sampled_from((0, 1_672_531_200_123_456, 2**40)))
def test_given_any_stored_groups_then_the_encoded_answer_is_the_views_own(
    groups: list[tuple[int, str, dict[str, Any]]], updated_us: int
) -> None:
    # Given a contact's property groups as the store keeps them (tombstones, a name set by
    # several groups, huge ints, -0.0, unicode names, nested objects whose keys are not sorted)
    contact = _contact_of("c/ü", _Row(last=(updated_us, "e9"), groups=groups))
    assert contact is not None
    # When its answer is encoded straight from the groups
    body = contact_body("c/ü", updated_us, groups)
    # Then it is byte for byte the contact's view, encoded
    assert body == encode(contact_view(contact))


def test_given_contacts_of_every_shape_then_the_store_read_answers_as_the_contact_view(
    tmp_path: Path,
) -> None:
    # Given contacts made by sets, unsets, operations (sums past 64 bits), deletions
    events = [
        event("e1", 100, "c1", set={"plan": "pro", "n": -0.0, "名前": "ü"}, add={"big": 2**63}),
        event("e2", 200, "c1", add={"big": 2**63}, unset=["plan"], append={"tags": ["x"]}),
        event("e3", 300, "c1", remove={"tags": ["x"]}, set_once={"first": {"z": 1, "a": 2}}),
        event("e4", 100, "gone", set={"plan": "team"}),
        event("e5", 200, "gone", kind="delete"),
        event("e6", 300, "back", kind="delete"),
        event("e7", 400, "back", set={"plan": "free"}),
        event("e8", 500, "only-tombstones", unset=["plan"]),
    ]

    async def run() -> None:
        store = SqliteStore(tmp_path / "profiles.sqlite3")
        await store.open()
        try:
            await store.apply(events)
            for contact_id in ("c1", "gone", "back", "only-tombstones", "never"):
                # When a contact is read on the hot path, and as the Starlette route reads it
                found = store.contact_groups_at_once(WORKSPACE, contact_id)
                contact = await store.get_contact(WORKSPACE, contact_id)
                # Then both find it or neither does, and the answers are the same bytes
                assert (found is None) == (contact is None), contact_id
                if contact is not None:
                    assert isinstance(found, tuple)
                    assert contact_body(contact_id, *found) == encode(contact_view(contact))
            big = store.contact_groups_at_once(WORKSPACE, "c1")
            assert isinstance(big, tuple)
            assert b'"big":18446744073709551616' in contact_body("c1", *big)
        finally:
            await store.close()

    asyncio.run(run())
