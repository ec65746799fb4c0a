"""The NATS JetStream log under real conditions: large requests, an unreachable server, a
stream that changes under running processes. Every test runs real ``profilehook`` processes
against a real NATS server (and PostgreSQL where events must be applied)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support import (
    POSTGRES_URL,
    ServerProcess,
    create_key,
    nats_postgres_env,
    run_cli,
    wait_until,
)

pytestmark = pytest.mark.filterwarnings(r"ignore:unclosed file .*server-\d+\.log:ResourceWarning")

APPLY_TIMEOUT_S = 60.0
CONCURRENT_BATCHES = 8


@pytest.fixture
def scaled_out(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """One ``profilehook serve`` (with its applier) on NATS + PostgreSQL, and its schema."""
    with nats_postgres_env() as env:
        server = ServerProcess(tmp_path / "data", extra_env=env).start()
        try:
            yield server, env["PROFILEHOOK_STORE_URL"].rsplit("schema=", 1)[1]
        finally:
            server.stop()


def stored_events(schema: str) -> int:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()
    return int(row[0]) if row else 0


# -- large requests: pipelined publishes, a deadline that grows with the request -------------


@pytest.mark.slow
def test_given_nats_when_an_amplitude_webhook_has_10_000_users_then_200_and_all_are_stored(
    scaled_out: tuple[ServerProcess, str],
) -> None:
    """Given the scaled-out configuration, when Amplitude sends a 10,000-user cohort, then it
    gets 200 (not a 503 at the 0.7 s backend deadline) and every user ends up stored."""
    server, schema = scaled_out
    created = run_cli(
        server.data_dir,
        *("sources", "create", "amplitude", "--workspace", "acme", "--json"),
        **server.extra_env,
    )
    assert created.returncode == 0, created.stderr
    source = json.loads(created.stdout)
    body = json.dumps(
        {
            "cohort_name": "Big cohort",
            "cohort_id": "big1",
            "in_cohort": True,
            "computed_time": "1692206763",
            "message_id": "m1",
            "users": [{"user_id": f"user_{i}@example.com"} for i in range(10_000)],
        }
    )
    headers = {"Content-Type": "application/json", "X-Api-Key": source["secret"]}
    started = time.perf_counter()
    response = httpx.post(
        f"{server.base_url}/v1/webhooks/{source['source_id']}",
        content=body,
        headers=headers,
        timeout=30,
    )
    elapsed_s = time.perf_counter() - started
    print(f"\n10,000-user Amplitude webhook on NATS + PostgreSQL: {elapsed_s:.3f} s")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted", "accepted": 10_000, "skipped": 0}
    wait_until(lambda: stored_events(schema) == 10_000, timeout_s=APPLY_TIMEOUT_S)


@pytest.mark.slow
def test_given_nats_when_8_batches_of_1000_events_arrive_at_once_then_each_is_a_202(
    scaled_out: tuple[ServerProcess, str],
) -> None:
    """Given the scaled-out configuration, when eight 1,000-event batches arrive at once (the
    issue saw 503s with four, on a slower machine), then each is answered 202 (a stored batch
    is never a false 503) and all 8,000 events are stored."""
    server, schema = scaled_out
    key = create_key(server.data_dir, "acme", **server.extra_env)["key"]

    def send(batch_no: int) -> httpx.Response:
        events = [
            {
                "contact_id": f"contact-{n % 50}",
                "event_name": "batch",
                "timestamp": 1_700_000_000 + n,
                "event_id": f"b{batch_no}-{n:04d}",
                "user_properties": {"n": n, "batch": batch_no},
            }
            for n in range(1_000)
        ]
        return httpx.post(
            f"{server.base_url}/v1/properties/batch",
            json={"events": events},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )

    with ThreadPoolExecutor(CONCURRENT_BATCHES) as pool:
        responses = list(pool.map(send, range(CONCURRENT_BATCHES)))
    assert [r.status_code for r in responses] == [202] * CONCURRENT_BATCHES, [
        r.text for r in responses
    ]
    assert all(r.json()["accepted"] == 1_000 for r in responses)
    wait_until(
        lambda: stored_events(schema) == 1_000 * CONCURRENT_BATCHES, timeout_s=APPLY_TIMEOUT_S
    )
