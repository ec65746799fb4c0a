"""Erasure, proved the hard way (SPEC 2.11): a unique marker written into a contact through the
HTTP API (the native API, and a Copernica webhook whose ``--contact-field`` makes an alias) is
searched for, once the erasure is ``done``, in the raw bytes of every file of the data directory
(SQLite main files, ``-wal``, ``-shm``: everything), and, scaled out, in every row of every table
of the PostgreSQL schema (as text) and in every message of the JetStream stream. Zero hits.

Each test prints what it scanned (``pytest -s``): files, bytes, hits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from profilehook.erasure import STEP_PAUSE_ENV
from tests.support import (
    NATS_CLUSTER,
    NATS_URL,
    POSTGRES_URL,
    ServerProcess,
    create_key,
    nats_postgres_env,
    run_cli,
    wait_until,
)
from tests.test_copernica import Hook, profile_call
from tests.test_copernica_signature import ACCOUNT, KEY_ID, pem
from tests.test_scale_out import WorkerProcess

pytestmark = pytest.mark.slow  # real server processes

CONTACT = "erase-me"
ADMIN = ("ingest", "read", "admin")  # erasure needs the admin scope; these tests also send


def new_marker() -> str:
    return f"MARKER{uuid.uuid4().hex}"


def scan_files(data_dir: Path, marker: str) -> tuple[int, int, int]:
    """(files, bytes, hits of the marker) over every file under ``data_dir``."""
    needle = marker.encode()
    files = size = hits = 0
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        files += 1
        size += len(data)
        hits += data.count(needle)
    return files, size, hits


OPEN_CLIENTS: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


class Api:
    """An HTTP client to a running server, with the key of workspace ``acme``."""

    def __init__(self, base_url: str, key: str):
        self.http = httpx.Client(base_url=base_url, timeout=15)
        OPEN_CLIENTS.append(self.http)
        self.auth = {"Authorization": f"Bearer {key}"}

    def send(self, contact_id: str, ts: float, **properties: Any) -> str:
        event_id = str(uuid.uuid4())
        body = {
            "contact_id": contact_id,
            "event_name": "aampe_property_update",
            "event_id": event_id,
            "timestamp": ts,
            "user_properties": properties,
            "metadata": {"note": str(next(iter(properties.values()), ""))},
        }
        r = self.http.post("/v1/properties", json=body, headers=self.auth)
        assert r.status_code == 202, r.text
        return event_id

    def event(self, event_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/events/{event_id}", headers=self.auth)
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        return found

    def status_becomes(self, event_id: str, status: str, timeout_s: float = 20) -> None:
        wait_until(lambda: self.event(event_id)["status"] == status, timeout_s)

    def erase(self, contact_id: str, suppress: bool = False) -> dict[str, Any]:
        query = "?suppress=true" if suppress else ""
        r = self.http.delete(f"/v1/contacts/{contact_id}{query}", headers=self.auth)
        assert r.status_code == 202, r.text
        answer: dict[str, Any] = r.json()
        assert answer["status"] == "pending" and answer["erasure_id"]
        return answer

    def erasure(self, erasure_id: str) -> httpx.Response:
        return self.http.get(f"/v1/erasures/{erasure_id}", headers=self.auth)

    def done(self, erasure_id: str, timeout_s: float = 30) -> dict[str, Any]:
        found: dict[str, Any] = wait_until(
            lambda: (r := self.erasure(erasure_id).json())["status"] == "done" and r, timeout_s
        )
        return found

    def contact(self, contact_id: str) -> httpx.Response:
        return self.http.get(f"/v1/contacts/{contact_id}", headers=self.auth)


@pytest.fixture(scope="module")
def copernica_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def copernica_source(data_dir: Path, key: rsa.RSAPrivateKey, **env: str) -> str:
    pem_file = data_dir.parent / "copernica.pem"
    pem_file.write_bytes(pem(key))
    made = run_cli(
        data_dir,
        *("sources", "create", "copernica", "--workspace", "acme", "--account", ACCOUNT),
        *("--contact-field", "customer_id", "--public-key", f"{KEY_ID}={pem_file}", "--json"),
        **env,
    )
    assert made.returncode == 0, made.stderr
    source_id: str = json.loads(made.stdout)["source_id"]
    return source_id


def write_marker(
    api: Api, server: ServerProcess, source_id: str, key: Any, marker: str
) -> list[str]:
    """The marker in the contact's properties and metadata (native API, twice, so that an old
    row version is freed), and through Copernica (an alias to the contact); another contact
    beside it. Returns the event ids, once applied."""
    now = time.time()
    ids = [
        api.send(CONTACT, now - 30, secret=f"{marker}-native-1"),
        api.send(CONTACT, now - 20, secret=f"{marker}-native-2", plan="pro"),
        api.send("keep-me", now - 20, plan="free"),
    ]
    hook = Hook(api.http, f"127.0.0.1:{server.port}", source_id, api.auth, key)
    fields = {"customer_id": CONTACT, "city": f"{marker}-copernica"}
    ids.append(hook.accepted(profile_call(fields, at=int(now - 10), profile="7123")))
    for event_id in ids:
        api.status_becomes(event_id, "applied")
    return ids


def report(what: str, figures: tuple[int, int, int], unit: str = "files") -> None:
    count, size, hits = figures
    print(f"\n[erasure bytes] {what}: {unit} scanned {count}, bytes scanned {size:,}, hits {hits}")


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    data_dir = tmp_path / "data"
    yield data_dir, create_key(data_dir, scopes=ADMIN)["key"]


def test_given_a_contact_written_through_the_api_when_erased_then_no_file_holds_its_bytes(
    embedded: tuple[Path, str], copernica_key: rsa.RSAPrivateKey
) -> None:
    data_dir, key = embedded
    source_id = copernica_source(data_dir, copernica_key)
    server = ServerProcess(data_dir).start()
    try:
        api = Api(server.base_url, key)
        marker = new_marker()
        event_ids = write_marker(api, server, source_id, copernica_key, marker)
        before = scan_files(data_dir, marker)
        report("embedded, before the erasure", before)
        assert before[2] > 0  # the scan does see the marker where it is

        erasure = api.erase(CONTACT)
        done = api.done(erasure["erasure_id"])

        after = scan_files(data_dir, marker)
        report("embedded, erasure done", after)
        assert after[2] == 0
        assert done["contact_id"] == CONTACT and done["completed_at"] is not None
        assert api.contact(CONTACT).status_code == 404
        assert api.contact("keep-me").json()["properties"] == {"plan": "free"}
        erased = api.event(event_ids[0])
        assert erased["status"] == "erased" and erased["properties"] == {}
        assert erased["metadata"] is None
        assert api.http.get(f"/v1/contacts/{CONTACT}/history", headers=api.auth).status_code == 404
    finally:
        server.stop()
    stopped = scan_files(data_dir, marker)
    report("embedded, erasure done, server stopped", stopped)
    assert stopped[2] == 0


def test_given_an_erased_contact_when_late_and_later_events_arrive_then_late_ones_are_erased(
    embedded: tuple[Path, str],
) -> None:
    data_dir, key = embedded
    server = ServerProcess(data_dir).start()
    try:
        api = Api(server.base_url, key)
        api.status_becomes(api.send(CONTACT, time.time() - 60, old="before"), "applied")
        erasure = api.erase(CONTACT)
        api.done(erasure["erasure_id"])

        late = api.send(CONTACT, time.time() - 30, old="late webhook retry")  # ts <= T
        later = api.send(CONTACT, time.time() + 60, fresh="after")  # ts > T

        api.status_becomes(late, "erased")
        api.status_becomes(later, "applied")
        assert api.event(late)["properties"] == {}
        assert api.contact(CONTACT).json()["properties"] == {"fresh": "after"}
    finally:
        server.stop()


def test_given_a_suppression_then_later_events_are_dropped_until_it_is_removed(
    embedded: tuple[Path, str],
) -> None:
    data_dir, key = embedded
    server = ServerProcess(data_dir).start()
    try:
        api = Api(server.base_url, key)
        first = api.erase(CONTACT, suppress=True)
        second = api.erase(CONTACT, suppress=True)  # suppressing twice: a second erasure
        assert api.done(first["erasure_id"])["suppress"] is True
        api.done(second["erasure_id"])

        dropped = api.send(CONTACT, time.time() + 60, x="suppressed")
        api.status_becomes(dropped, "erased")
        assert api.contact(CONTACT).status_code == 404

        removed = api.http.delete(f"/v1/suppressions/{CONTACT}", headers=api.auth)
        assert removed.status_code == 200 and removed.json()["suppressed"] is False
        again = api.http.delete(f"/v1/suppressions/{CONTACT}", headers=api.auth)
        assert again.status_code == 404
        assert again.json() == {"detail": "Contact is not suppressed"}

        back = api.send(CONTACT, time.time() + 120, x="back")
        api.status_becomes(back, "applied")
        assert api.contact(CONTACT).json()["properties"] == {"x": "back"}
    finally:
        server.stop()


def test_given_bad_erasure_requests_then_each_gets_a_clear_answer(
    embedded: tuple[Path, str],
) -> None:
    data_dir, key = embedded
    server = ServerProcess(data_dir).start()
    try:
        api = Api(server.base_url, key)
        unknown = api.erasure("era_0000")
        assert unknown.status_code == 404 and unknown.json() == {"detail": "Erasure not found"}
        never_seen = api.erase("never-seen-contact")  # 202 all the same: existence not leaked
        assert api.done(never_seen["erasure_id"])["status"] == "done"
        bad = api.http.delete(f"/v1/contacts/{CONTACT}?suppress=maybe", headers=api.auth)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "suppress"]
        no_key = api.http.delete(f"/v1/contacts/{CONTACT}")
        assert no_key.status_code == 401
        writer = {"Authorization": f"Bearer {create_key(data_dir)['key']}"}  # ingest + read
        for method, path in [
            ("DELETE", f"/v1/contacts/{CONTACT}"),
            ("GET", f"/v1/erasures/{never_seen['erasure_id']}"),
            ("DELETE", f"/v1/suppressions/{CONTACT}"),
        ]:
            refused = api.http.request(method, path, headers=writer)
            assert refused.status_code == 403, (method, path)
            assert refused.json() == {"detail": "This key lacks the 'admin' scope"}
        other = create_key(data_dir, "globex", scopes=ADMIN)["key"]
        foreign = api.http.get(
            f"/v1/erasures/{never_seen['erasure_id']}",
            headers={"Authorization": f"Bearer {other}"},
        )
        assert foreign.status_code == 404  # another workspace's erasure is not found
    finally:
        server.stop()


def test_given_an_event_still_in_the_log_when_its_contact_is_erased_then_its_bytes_are_gone(
    embedded: tuple[Path, str],
) -> None:
    """``serve --no-applier`` on the embedded log: the events wait in the log, unapplied; the
    server (which writes the log) executes the erasure."""
    data_dir, key = embedded
    server = ServerProcess(data_dir, serve_args=("--no-applier",)).start()
    try:
        api = Api(server.base_url, key)
        marker = new_marker()
        pending = api.send(CONTACT, time.time() - 10, secret=f"{marker}-pending")
        api.send("keep-me", time.time() - 10, plan="free")
        assert api.event(pending)["status"] == "queued"
        assert scan_files(data_dir, marker)[2] > 0

        api.done(api.erase(CONTACT)["erasure_id"])

        after = scan_files(data_dir, marker)
        report("embedded, event still in the log, erasure done", after)
        assert after[2] == 0
        stub = api.event(pending)
        assert stub["status"] == "queued" and stub["properties"] == {}
    finally:
        server.stop()
    # Applied afterwards (here by the CLI's worker, once), the stub is dropped as erased.
    worker = WorkerProcess(data_dir, "worker", {})
    worker.spawn()
    try:
        api_server = ServerProcess(data_dir, serve_args=("--no-applier",)).start()
        try:
            api = Api(api_server.base_url, key)
            api.status_becomes(pending, "erased")
            assert api.contact("keep-me").json()["properties"] == {"plan": "free"}
        finally:
            api_server.stop()
    finally:
        worker.kill(signal.SIGTERM)


def test_given_the_server_killed_midway_through_an_erasure_when_restarted_then_it_completes(
    embedded: tuple[Path, str],
) -> None:
    data_dir, key = embedded
    paused = ServerProcess(data_dir, extra_env={STEP_PAUSE_ENV: "1.5"}).start()
    try:
        api = Api(paused.base_url, key)
        marker = new_marker()
        api.status_becomes(api.send(CONTACT, time.time() - 10, secret=f"{marker}-1"), "applied")
        erasure_id = api.erase(CONTACT)["erasure_id"]
        time.sleep(2.2)  # past its first step (the log), paused before the store's
        assert api.erasure(erasure_id).json()["status"] == "pending"
    finally:
        paused.kill(signal.SIGKILL)
    assert scan_files(data_dir, marker)[2] > 0  # the profile is still there

    restarted = ServerProcess(data_dir).start()
    try:
        api = Api(restarted.base_url, key)
        api.done(erasure_id)
        after = scan_files(data_dir, marker)
        report("embedded, killed mid-erasure and restarted, erasure done", after)
        assert after[2] == 0
    finally:
        restarted.stop()


# -- scaled out: NATS JetStream + PostgreSQL ----------------------------------------------------


def scan_postgres(schema: str, marker: str) -> tuple[int, int, int]:
    """(tables, bytes of their rows as text, hits) over every table of the schema."""
    import psycopg
    from psycopg import sql

    tables = size = hits = 0
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
            )
        ]
        for name in names:
            tables += 1
            query = sql.SQL("SELECT t::text FROM {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(name)
            )
            for (text,) in conn.execute(query):
                size += len(text.encode())
                hits += text.count(marker)
                # bytea columns show as hex in a row's text: look for the marker's hex too
                hits += text.count(marker.encode().hex())
    return tables, size, hits


def scan_stream(stream: str, marker: str) -> tuple[int, int, int]:
    """(messages, bytes, hits) over every message the stream still holds, read through the
    JetStream API one sequence number at a time."""
    import nats
    import nats.js.errors

    async def scan() -> tuple[int, int, int]:
        nc = await nats.connect(NATS_URL, connect_timeout=2)
        try:
            js = nc.jetstream()
            state = (await js.stream_info(stream)).state
            messages = size = hits = 0
            for seq in range(state.first_seq, state.last_seq + 1):
                try:
                    raw = await js.get_msg(stream, seq)
                except nats.js.errors.NotFoundError:
                    continue  # deleted (acknowledged, or erased)
                data = raw.data or b""
                messages += 1
                size += len(data) + len(raw.subject or "")
                hits += data.count(marker.encode())
            return messages, size, hits
        finally:
            await nc.close()

    return asyncio.run(scan())


def test_given_the_scaled_out_configuration_when_a_contact_is_erased_then_no_row_or_message_holds_it(
    tmp_path: Path, copernica_key: rsa.RSAPrivateKey
) -> None:
    """``serve --no-applier`` + one ``worker``: the marker is applied to PostgreSQL; then, with
    the worker stopped, more of it waits in the stream; the server executes the erasure."""
    with nats_postgres_env() as env:
        data_dir = tmp_path / "data"
        key = create_key(data_dir, scopes=ADMIN, **env)["key"]
        source_id = copernica_source(data_dir, copernica_key, **env)
        server = ServerProcess(data_dir, extra_env=env, serve_args=("--no-applier",)).start()
        worker = WorkerProcess(data_dir, "worker", env)
        worker.spawn()
        stream = env["PROFILEHOOK_QUEUE_URL"].split("stream=")[1].split("&")[0]
        schema = env["PROFILEHOOK_STORE_URL"].split("schema=")[1]
        try:
            api = Api(server.base_url, key)
            marker = new_marker()
            write_marker(api, server, source_id, copernica_key, marker)
            worker.kill(signal.SIGTERM)
            pending = api.send(CONTACT, time.time() - 5, secret=f"{marker}-in-the-stream")
            assert api.event(pending)["status"] == "queued"
            before_pg, before_stream = scan_postgres(schema, marker), scan_stream(stream, marker)
            report("PostgreSQL, before the erasure", before_pg, "tables")
            report("JetStream, before the erasure", before_stream, "messages")
            assert before_pg[2] > 0 and before_stream[2] > 0
            if NATS_CLUSTER.started:
                report(
                    "JetStream servers' own files, before", scan_files(NATS_CLUSTER.root, marker)
                )

            api.done(api.erase(CONTACT)["erasure_id"])

            after_pg, after_stream = scan_postgres(schema, marker), scan_stream(stream, marker)
            report("PostgreSQL tables (rows as text), erasure done", after_pg, "tables")
            report("JetStream stream messages, erasure done", after_stream, "messages")
            assert after_pg[2] == 0 and after_stream[2] == 0
            if NATS_CLUSTER.started:  # not asserted: see RELIABILITY.md, Erasure
                report("JetStream servers' own files", scan_files(NATS_CLUSTER.root, marker))
            assert api.contact(CONTACT).status_code == 404
            assert api.contact("keep-me").json()["properties"] == {"plan": "free"}

            late = api.send(CONTACT, time.time() - 5, secret="late")
            later = api.send(CONTACT, time.time() + 60, fresh="after")
            worker = WorkerProcess(data_dir, "worker-2", env)
            worker.spawn()
            api.status_becomes(late, "erased")
            api.status_becomes(later, "applied")
            assert api.contact(CONTACT).json()["properties"] == {"fresh": "after"}
        finally:
            worker.kill(signal.SIGTERM)
            server.stop()


def test_given_the_scaled_out_server_killed_midway_through_an_erasure_then_a_worker_completes_it(
    tmp_path: Path,
) -> None:
    """The server executing the erasure is killed with ``kill -9`` between its steps; a worker
    (every worker executes pending erasures too) finishes it: done, and no row or message left."""
    with nats_postgres_env() as env:
        data_dir = tmp_path / "data"
        key = create_key(data_dir, scopes=ADMIN, **env)["key"]
        stream = env["PROFILEHOOK_QUEUE_URL"].split("stream=")[1].split("&")[0]
        schema = env["PROFILEHOOK_STORE_URL"].split("schema=")[1]
        paused_env = {**env, STEP_PAUSE_ENV: "1.5"}
        server = ServerProcess(data_dir, extra_env=paused_env, serve_args=("--no-applier",))
        server.start()
        worker = WorkerProcess(data_dir, "worker", env)
        worker.spawn()
        marker = new_marker()
        try:
            api = Api(server.base_url, key)
            api.status_becomes(api.send(CONTACT, time.time() - 10, s=f"{marker}-1"), "applied")
            worker.kill(signal.SIGTERM)
            api.send(CONTACT, time.time() - 5, s=f"{marker}-in-the-stream")
            erasure_id = api.erase(CONTACT)["erasure_id"]
            time.sleep(2.2)  # past its first step (the stream), paused before the store's
            assert api.erasure(erasure_id).json()["status"] == "pending"
        finally:
            server.kill(signal.SIGKILL)
        assert scan_postgres(schema, marker)[2] > 0  # the profile is still there

        worker = WorkerProcess(data_dir, "worker-2", env)
        worker.spawn()
        reader = ServerProcess(data_dir, extra_env=env, serve_args=("--no-applier",)).start()
        try:
            Api(reader.base_url, key).done(erasure_id)
            after_pg, after_stream = scan_postgres(schema, marker), scan_stream(stream, marker)
            report("PostgreSQL, server killed mid-erasure, done by a worker", after_pg, "tables")
            report(
                "JetStream, server killed mid-erasure, done by a worker", after_stream, "messages"
            )
            assert after_pg[2] == 0 and after_stream[2] == 0
        finally:
            reader.stop()
            worker.kill(signal.SIGTERM)
