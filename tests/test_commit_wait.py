"""While a request's events are awaited into the log, no handler holds them, nor the calls they
were mapped from: freed before the wait, while the CPU's caches still hold them, they cost a
fraction of what they do after it (api/ingest.py's batch, benchmarks/README.md). The same
endpoints' answers, counters and live tail are pinned by their own tests."""

from __future__ import annotations

import asyncio
import base64
import gc
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from profilehook.events import Event
from profilehook.settings import Settings
from tests.test_amplitude import DOCUMENTED_DEFAULT, new_source

Send = Callable[[TestClient, str, Settings], Any]
"""Sends one request of an endpoint with ``key`` and returns its answer."""

UUIDS = [f"0190d8a4-5b6c-7d8e-9f00-00000000000{i}" for i in range(3)]


def native_batch(client: TestClient, key: str, settings: Settings) -> Any:
    events = [
        {"contact_id": f"c{i}", "event_name": "e", "timestamp": 1, "user_properties": {"a": i}}
        for i in range(3)
    ]
    answer = client.post(
        "/v1/properties/batch", json={"events": events}, headers={"Authorization": f"Bearer {key}"}
    )
    assert (answer.status_code, answer.json()["accepted"]) == (202, 3)


def segment_batch(client: TestClient, key: str, settings: Settings) -> Any:
    batch = [{"type": "identify", "userId": f"u{i}", "traits": {"a": i}} for i in range(3)]
    basic = base64.b64encode(f"{key}:".encode()).decode()
    answer = client.post(
        "/v1/batch", json={"batch": batch}, headers={"Authorization": f"Basic {basic}"}
    )
    assert (answer.status_code, answer.content) == (200, b'{"success":true}')


def posthog_batch(client: TestClient, key: str, settings: Settings) -> Any:
    batch = [{"event": "$identify", "distinct_id": f"p{i}", "$set": {"a": i}} for i in range(3)]
    answer = client.post("/batch/", json={"api_key": key, "batch": batch})
    assert (answer.status_code, answer.content) == (200, b'{"status":1}')


def posthog_v1(client: TestClient, key: str, settings: Settings) -> Any:
    batch = [
        {"event": "$identify", "distinct_id": f"p{i}", "uuid": uuid, "$set": {"a": i}}
        for i, uuid in enumerate(UUIDS)
    ]
    answer = client.post(
        "/i/v1/analytics/events",
        json={"batch": batch},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 200
    assert answer.json() == {"results": {uuid: {"result": "ok"} for uuid in UUIDS}}


def amplitude_batch(client: TestClient, key: str, settings: Settings) -> Any:
    events = [
        {"user_id": f"a{i}", "insert_id": f"i{i}", "user_properties": {"$set": {"a": i}}}
        for i in range(3)
    ]
    answer = client.post("/amplitude/batch", json={"api_key": key, "events": events})
    assert answer.status_code == 200
    assert answer.json()["events_ingested"] == 3


def amplitude_cohort_webhook(client: TestClient, key: str, settings: Settings) -> Any:
    source_id, secret = new_source(settings)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    answer = client.post(
        f"/v1/webhooks/{source_id}", content=DOCUMENTED_DEFAULT.encode(), headers=headers
    )
    assert (answer.status_code, answer.json()["accepted"]) == (200, 3)


@pytest.mark.parametrize(
    "send",
    [
        native_batch,
        segment_batch,
        posthog_batch,
        posthog_v1,
        amplitude_batch,
        amplitude_cohort_webhook,
    ],
)
def test_no_coroutine_holds_the_events_while_it_waits_for_their_commit(
    client: TestClient, key: str, settings: Settings, send: Send
) -> None:
    # Given a log whose commits report, before they complete, which coroutines hold the events
    # or their properties (a suspended one's locals are seen; this task's own, running, are not)
    queue = client.app.services.queue  # type: ignore[attr-defined]
    publish = queue.publish
    holders: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    def publish_and_look(events: list[Event]) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()

        async def look() -> None:
            await publish(events)
            holders.extend(coroutines_holding([events, *(e.properties for e in events)]))
            done.set_result(None)

        tasks.append(asyncio.create_task(look()))
        return done

    queue.publish = publish_and_look
    # When the endpoint takes a request of three events (and answers as it does)
    send(client, key, settings)
    # Then no coroutine held them while their commit was awaited
    assert len(tasks) == 1 and holders == []


def coroutines_holding(targets: list[Any], hops: int = 4) -> set[str]:
    """The names of the suspended coroutines from which at most ``hops`` references lead to one
    of ``targets``, through values (containers, and profilehook's objects: a ``Mapped``, a
    parsed request), not through functions, cells, frames or modules, which lead everywhere."""
    found: set[str] = set()
    seen = {id(target) for target in targets}
    level = targets
    for _ in range(hops):
        referrers = gc.get_referrers(*level)
        mine = {id(targets), id(level), id(referrers)}
        up = []
        for referrer in referrers:
            if id(referrer) in seen or id(referrer) in mine:
                continue
            seen.add(id(referrer))
            if asyncio.iscoroutine(referrer):
                found.add(referrer.cr_code.co_name)
            elif type(referrer) in (dict, list, tuple) or type(referrer).__module__.startswith(
                "profilehook."
            ):
                up.append(referrer)
        level = up
    return found
