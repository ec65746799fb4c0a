"""History retention (``PROFILEHOOK_HISTORY_RETENTION_DAYS``, README "Retention") as a user sees
it over HTTP: old history purged by a running server while profiles stay, ``rebuild`` giving the
same profiles after the purge, and an event older than the window refused at every door (native
single and batch, ``import``) or skipped and counted (Copernica, Amplitude).

The purge itself, on every backend, is tests/test_retention_contract.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from profilehook.events import Event
from profilehook.metrics import Metrics
from profilehook.retention import HistoryPurger
from profilehook.settings import Settings
from profilehook.stores.memory import MemoryStore
from tests.support import ServerProcess, create_key, run_cli, store_url_for, wait_until
from tests.test_amplitude import Hook as AmplitudeHook
from tests.test_amplitude import render_default
from tests.test_copernica import copernica_key, make_hook, profile_call  # noqa: F401

DAY_S = 86_400
WINDOW_DAYS = 30
TOO_OLD = "timestamp is older than the retention window"  # the message SPEC 2.11 fixes
RETENTION = {"PROFILEHOOK_HISTORY_RETENTION_DAYS": str(WINDOW_DAYS)}


def ago(days: float) -> float:
    return round(time.time() - days * DAY_S, 3)


def update(contact_id: str, event_id: str, timestamp: float, **properties: Any) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "event_name": "update",
        "event_id": event_id,
        "timestamp": timestamp,
        "user_properties": properties,
    }


# -- purge on a running server, SQLite and PostgreSQL -------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """``serve`` on the SQLite log with the embedded store, or with a PostgreSQL store."""
    with store_url_for(request.param) as url:
        yield {"PROFILEHOOK_STORE_URL": url} if url else {}


class Http:
    def __init__(self, server: ServerProcess, key: str):
        self.server, self.auth = server, {"Authorization": f"Bearer {key}"}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.server.base_url}{path}", headers=self.auth)

    def history_ids(self, contact_id: str) -> list[str] | None:
        r = self.get(f"/v1/contacts/{contact_id}/history")
        return [e["event_id"] for e in r.json()["events"]] if r.status_code == 200 else None

    def profiles(self, *contact_ids: str) -> dict[str, Any]:
        return {c: self.get(f"/v1/contacts/{c}").json() for c in contact_ids}


# Purged: older than the window and the 7 days of deduplication after it (37 days).
HISTORY = [
    update("u1", "u1-a", ago(40), plan="free", seats=1, region="eu"),
    update("u1", "u1-b", ago(39), plan="pro", region=None),
    update("u1", "u1-c", ago(33), seats=2),  # past the window, within the dedupe days: kept
    update("u2", "u2-a", ago(50), colour="red"),  # all of u2's history is older
    update("u2", "u2-b", ago(45), colour="blue", size="L"),
    update("u3", "u3-a", ago(60), score=1),
    update("u3", "u3-b", ago(38), score=None),  # an unset, then purged: the tombstone stays
    update("u3", "u3-c", ago(2), name="x"),
]
PURGED = [e["event_id"] for e in HISTORY if e["timestamp"] < ago(WINDOW_DAYS + 7)]
CONTACTS = ("u1", "u2", "u3")


@pytest.mark.slow
def test_given_history_older_than_the_window_when_serve_runs_with_retention_then_it_is_purged_and_profiles_and_rebuild_stay_the_same(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    """Given a history built while retention was off, when ``serve`` starts with a 30-day window,
    then its applier process purges what is older (the history and ``GET /v1/events`` show only
    what is left, the metric and the log line say how many), the profiles read the same, and
    ``profilehook rebuild`` afterwards gives the same profiles again."""
    data_dir = tmp_path / "data"
    key = create_key(data_dir, "acme", **store_env)["key"]
    server = ServerProcess(data_dir, extra_env=store_env).start()
    try:
        http = Http(server, key)
        for event in HISTORY:
            r = httpx.post(f"{server.base_url}/v1/properties", json=event, headers=http.auth)
            assert r.status_code == 202, r.text
        for event in HISTORY:
            wait_until(lambda e=event: http.get(f"/v1/events/{e['event_id']}").status_code == 200)
            wait_until(
                lambda e=event: (
                    http.get(f"/v1/events/{e['event_id']}").json()["status"] == "applied"
                )
            )
        before = http.profiles(*CONTACTS)
        assert http.history_ids("u1") == ["u1-c", "u1-b", "u1-a"]
        server.stop()

        server.extra_env = {**store_env, **RETENTION, "PROFILEHOOK_LOG_LEVEL": "info"}
        server.start()
        wait_until(lambda: http.history_ids("u1") == ["u1-c"])  # (u1-c: in the dedupe days)
        wait_until(lambda: http.history_ids("u3") == ["u3-c"])
        assert http.history_ids("u2") == []  # found, with nothing left to show
        assert http.profiles(*CONTACTS) == before
        for event_id in PURGED:
            r = http.get(f"/v1/events/{event_id}")
            assert (r.status_code, r.json()) == (404, {"detail": "Event not found"})
        assert http.get("/v1/events/u1-c").json()["status"] == "applied"
        purged_line = f"profilehook_history_purged_total {float(len(PURGED))}"
        wait_until(lambda: purged_line in httpx.get(f"{server.base_url}/metrics").text)
        wait_until(lambda: f"retention: purged {len(PURGED)} history records" in server.log_text())
        server.stop()

        rebuilt = run_cli(data_dir, "rebuild", **store_env)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert f"from {len(HISTORY) - len(PURGED)} events" in rebuilt.stdout  # and the snapshots
        server.start()
        assert http.profiles(*CONTACTS) == before
    finally:
        server.stop()
    assert before["u1"]["properties"] == {"plan": "pro", "seats": 2}
    assert before["u2"]["properties"] == {"colour": "blue", "size": "L"}
    assert before["u3"]["properties"] == {"name": "x"}


class TestPurger:
    """``HistoryPurger``, the loop beside every applier, on a store and a clock of its own."""

    NOW_US = 1_800_000_000 * 1_000_000
    DAY_US = DAY_S * 1_000_000

    def purger(self, store: MemoryStore, days: int) -> HistoryPurger:
        settings = Settings(data_dir=Path("unused"), history_retention_days=days)
        return HistoryPurger(store, Metrics(), settings, clock_us=lambda: self.NOW_US)

    async def test_given_a_30_day_window_then_it_purges_what_is_older_than_37_days_only(
        self,
    ) -> None:
        """The window, then the 7 days an event_id is kept for deduplication: an event accepted
        at the window's edge stays known that long, and its repeat is a duplicate."""
        edge_us = self.NOW_US - 37 * self.DAY_US
        store = MemoryStore()
        edge = Event("acme", "edge", "u1", edge_us + 1, {"plan": "kept"})
        await store.apply([Event("acme", "old", "u1", edge_us - 1, {"plan": "gone"}), edge])
        purger = self.purger(store, WINDOW_DAYS)

        assert await purger.step() == 1
        assert await purger.step() == 0
        assert await store.get_event("acme", "old") is None
        assert (await store.apply([edge])).duplicates == 1
        assert b"profilehook_history_purged_total 1.0" in purger.metrics.render()

    async def test_given_retention_off_then_run_returns_at_once_and_purges_nothing(self) -> None:
        store = MemoryStore()
        await store.apply([Event("acme", "ancient", "u1", 1, {"plan": "kept"})])

        await asyncio.wait_for(self.purger(store, 0).run(asyncio.Event()), 1)

        assert await store.get_event("acme", "ancient") is not None


# -- refused at ingest ---------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", history_retention_days=WINDOW_DAYS)


def too_old(loc: list[Any], value: Any) -> dict[str, Any]:
    return {"type": "timestamp_too_old", "loc": loc, "msg": TOO_OLD, "input": value}


def without_ctx(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k != "ctx"} for p in problems]


class TestRefusedAtIngest:
    def test_given_a_30_day_window_when_an_older_event_is_sent_then_it_is_a_422_naming_its_timestamp(
        self, client: TestClient, auth: dict[str, str]
    ) -> None:
        old = ago(31)
        r = client.post("/v1/properties", json=update("u1", "e1", old, plan="x"), headers=auth)

        assert r.status_code == 422
        assert without_ctx(r.json()["detail"]) == [too_old(["body", "timestamp"], old)]
        oldest = r.json()["detail"][0]["ctx"]["oldest_accepted"]
        assert abs(oldest - ago(WINDOW_DAYS)) < 60
        assert client.get("/v1/events/e1", headers=auth).status_code == 404  # nothing stored

    def test_given_a_30_day_window_when_a_recent_event_is_sent_then_it_is_accepted(
        self, client: TestClient, auth: dict[str, str]
    ) -> None:
        r = client.post("/v1/properties", json=update("u1", "e1", ago(29), plan="x"), headers=auth)

        assert r.status_code == 202

    def test_given_an_old_event_with_other_problems_then_every_problem_is_listed(
        self, client: TestClient, auth: dict[str, str]
    ) -> None:
        old_ms = int(ago(40) * 1000)  # milliseconds, and the "time" alias
        body = {"contact_id": "", "event_name": "x", "time": old_ms, "user_properties": {}}
        r = client.post("/v1/properties", json=body, headers=auth)

        assert r.status_code == 422
        problems = without_ctx(r.json()["detail"])
        assert [p["loc"] for p in problems] == [["body", "contact_id"], ["body", "time"]]
        assert problems[1] == too_old(["body", "time"], old_ms)

    def test_given_a_batch_with_an_old_event_then_only_that_one_is_rejected(
        self, client: TestClient, auth: dict[str, str]
    ) -> None:
        old = ago(100)
        events = [update("u1", "fresh", ago(1), plan="x"), update("u1", "stale", old, plan="y")]
        r = client.post("/v1/properties/batch", json={"events": events}, headers=auth)

        assert r.status_code == 202
        answer = r.json()
        assert (answer["accepted"], answer["rejected"]) == (1, 1)
        assert answer["results"][0] == {"index": 0, "status": "accepted", "event_id": "fresh"}
        assert answer["results"][1]["status"] == "rejected"
        assert without_ctx(answer["results"][1]["detail"]) == [
            too_old(["body", "events", 1, "timestamp"], old)
        ]

    def test_given_a_batch_of_only_old_events_then_it_is_a_422(
        self, client: TestClient, auth: dict[str, str]
    ) -> None:
        events = [update("u1", f"e{i}", ago(31 + i), plan="x") for i in range(2)]
        r = client.post("/v1/properties/batch", json={"events": events}, headers=auth)

        assert r.status_code == 422
        assert [p["type"] for p in r.json()["detail"]] == ["timestamp_too_old"] * 2

    def test_given_a_window_when_a_file_is_imported_then_its_old_lines_are_rejected(
        self, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "cli-data"
        lines = [update("u1", "fresh", ago(3), plan="x"), update("u1", "stale", ago(33), plan="y")]
        path = tmp_path / "events.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))

        result = run_cli(
            data_dir, "import", str(path), "--workspace", "acme", "--json", **RETENTION
        )

        assert result.returncode == 1, result.stderr  # (as for any refused line)
        summary = json.loads(result.stdout)
        assert (summary["accepted"], summary["rejected"]) == (1, 1)
        assert summary["problems"][0]["line"] == 2
        assert [p["msg"] for p in summary["problems"][0]["detail"]] == [TOO_OLD]


class TestSkippedByWebhooks:
    def test_given_a_window_when_amplitude_sends_a_cohort_computed_before_it_then_its_users_are_skipped_and_counted(
        self, client: TestClient, settings: Settings, auth: dict[str, str]
    ) -> None:
        hook = AmplitudeHook(client, settings, auth)
        users = [{"user_id": "a@example.com"}, {"user_id": "b@example.com"}]

        hook.accepted(render_default(users, computed_time=str(int(ago(45)))), 0, skipped=2)
        hook.accepted(
            render_default(users, computed_time=str(int(ago(1))), message_id="m2"), 2, skipped=0
        )

        line = 'profilehook_events_total{outcome="too_old",source="amplitude"} 2.0'
        assert line in client.get("/metrics").text
        assert hook.contact("a@example.com")

    def test_given_a_window_when_copernica_sends_a_change_before_it_then_it_is_skipped_and_counted(
        self,
        client: TestClient,
        settings: Settings,
        auth: dict[str, str],
        copernica_key: Any,  # noqa: F811
    ) -> None:
        hook = make_hook(client, settings, auth, copernica_key)

        r = hook.post(profile_call({"name": "old"}, at=int(ago(45)), profile="p1"))

        assert r.status_code == 200
        assert r.json() == {"status": "accepted", "event_ids": [], "skipped": 1}
        assert hook.metric("too_old") == 1.0
        assert hook.metric("accepted") == 0.0
        event_id = hook.accepted(profile_call({"name": "new"}, at=int(ago(1)), profile="p1"))
        hook.applied(event_id)
        assert hook.contact("p1")["properties"]["name"] == "new"


# -- scaled out: several workers purge at once ----------------------------------------------------


@pytest.mark.slow
def test_given_two_workers_with_retention_on_nats_and_postgres_then_they_purge_each_old_event_once_and_profiles_stay(
    tmp_path: Path,
) -> None:
    """Given 3,000 events older than the window and 200 newer ones, applied while retention was
    off, when two ``profilehook worker`` processes start with a 30-day window, then between them
    they purge exactly the old events (their log lines add up to 3,000: none twice), every profile
    reads the same, and ``profilehook rebuild`` afterwards gives the same profiles again."""
    from tests.support import nats_postgres_env
    from tests.test_scale_out import WorkerProcess

    rng = random.Random(17)
    contacts = [f"w{i}" for i in range(50)]
    old = [
        update(
            rng.choice(contacts),
            f"old-{i}",
            ago(40 + rng.random()),
            **{rng.choice("abcde"): rng.choice([None, i, f"v{i}"])},
        )
        for i in range(3_000)
    ]
    new = [
        update(rng.choice(contacts), f"new-{i}", ago(1 + rng.random()), **{rng.choice("abcde"): i})
        for i in range(200)
    ]
    data_dir = tmp_path / "data"
    with nats_postgres_env() as env:
        key = create_key(data_dir, "acme", **env)["key"]
        server = ServerProcess(data_dir, extra_env=env, serve_args=("--no-applier",)).start()
        workers: list[WorkerProcess] = []
        try:
            http = Http(server, key)
            first = WorkerProcess(data_dir, "worker-0", env)
            first.spawn()
            workers.append(first)
            events = old + new
            for start in range(0, len(events), 1_000):
                r = httpx.post(
                    f"{server.base_url}/v1/properties/batch",
                    json={"events": events[start : start + 1_000]},
                    headers=http.auth,
                    timeout=30,
                )
                assert r.status_code == 202 and r.json()["rejected"] == 0, r.text
            wait_until(lambda: _stored_events(env) == len(events), timeout_s=60)
            before = _all_profiles(http, contacts)
            first.kill(signal.SIGTERM)

            with_retention = {**env, **RETENTION, "PROFILEHOOK_LOG_LEVEL": "info"}
            purgers = [WorkerProcess(data_dir, f"purger-{i}", with_retention) for i in range(2)]
            for worker in purgers:
                worker.spawn()
                workers.append(worker)
            wait_until(lambda: _stored_events(env) == len(new), timeout_s=60)
            assert _all_profiles(http, contacts) == before
            for worker in purgers:
                worker.kill(signal.SIGTERM)  # its last log line sums what it purged since
            said = [
                int(n)
                for worker in purgers
                for n in re.findall(r"retention: purged (\d+) history", worker.log_path.read_text())
            ]
            print(f"retention log lines of the two workers: {said}")
            assert sum(said) == len(old), said

            rebuilt = run_cli(data_dir, "rebuild", **env)
            assert rebuilt.returncode == 0, rebuilt.stderr
            assert f"from {len(new)} events" in rebuilt.stdout
            assert _all_profiles(http, contacts) == before
        finally:
            for worker in workers:
                worker.kill()
            server.stop()


def _stored_events(env: dict[str, str]) -> int:
    import psycopg

    from profilehook.stores.postgres import split_url

    conninfo, schema = split_url(env["PROFILEHOOK_STORE_URL"])
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()
    return int(row[0]) if row else 0


def _all_profiles(http: Http, contact_ids: list[str]) -> dict[str, Any]:
    found = {}
    for contact_id in contact_ids:
        r = http.get(f"/v1/contacts/{contact_id}")
        found[contact_id] = r.json() if r.status_code == 200 else r.status_code
    return found
