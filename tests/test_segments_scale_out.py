"""Segments in the scaled-out configuration (README, Segments): ``serve --no-applier`` and a
``worker`` on NATS and PostgreSQL. The server fills a new segment from the existing profiles
(every ``serve`` runs the backfill, whatever applies); the worker keeps it as events apply."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx2 as httpx

from tests.support import ServerProcess, create_key, nats_postgres_env, wait_until
from tests.test_scale_out import WorkerProcess

PRO = {"property": "plan", "op": "eq", "value": "pro"}


def _event(i: int, plan: str, ts: float) -> dict[str, Any]:
    return {
        "contact_id": f"u{i:02d}",
        "event_name": "plan",
        "timestamp": ts,
        "event_id": f"e{i}-{plan}-{ts}",
        "user_properties": {"plan": plan},
    }


def test_given_serve_without_applier_and_a_worker_when_a_segment_is_created_then_filled_and_kept(
    tmp_path: Path,
) -> None:
    with nats_postgres_env() as env:
        data_dir = tmp_path / "data"
        key = create_key(data_dir, scopes=("ingest", "read", "admin"), **env)["key"]
        server = ServerProcess(data_dir, extra_env=env, serve_args=("--no-applier",)).start()
        worker = WorkerProcess(data_dir, "worker", env)
        worker.spawn()
        try:
            auth = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=server.base_url, headers=auth, timeout=10) as client:
                # Given 30 profiles applied by the worker, every third on "pro"
                events = [
                    _event(i, "pro" if i % 3 == 0 else "free", 1_700_000_000) for i in range(30)
                ]
                r = client.post("/v1/properties/batch", json={"events": events})
                assert r.status_code == 202, r.text
                for e in events:
                    wait_until(
                        lambda e=e: (
                            client.get(f"/v1/events/{e['event_id']}").json()["status"] == "applied"
                        ),
                        timeout_s=60,
                    )
                # When a segment is created through the server
                r = client.post("/v1/segments", json={"name": "Pro", "filter": PRO})
                assert r.status_code == 201, r.text
                segment_id = r.json()["segment_id"]

                def shown() -> Any:
                    return client.get(f"/v1/segments/{segment_id}").json()

                # Then the server fills it from the profiles there are
                ready = wait_until(lambda: (s := shown())["status"] == "ready" and s, 30)
                assert ready["size"] == 10, ready
                # And the worker keeps it as events apply
                r = client.post("/v1/properties", json=_event(1, "pro", 1_700_000_100))
                assert r.status_code == 202, r.text
                r = client.post("/v1/properties", json=_event(0, "free", 1_700_000_100))
                assert r.status_code == 202, r.text
                wait_until(
                    lambda: (
                        shown()["size"] == 10 and _members(client, segment_id)[:2] == ["u01", "u03"]
                    ),
                    60,
                )
                want = ["u01", *(f"u{i:02d}" for i in range(3, 30, 3))]
                assert _members(client, segment_id) == want
        finally:
            worker.kill(signal.SIGTERM)
            server.stop()


def _members(client: httpx.Client, segment_id: str) -> list[str]:
    r = client.get(f"/v1/segments/{segment_id}/contacts", params={"limit": 100})
    assert r.status_code == 200, r.text
    return [c["contact_id"] for c in r.json()["contacts"]]
