"""The backend deadline grows with the number of events a request stores: a single event is
answered 503 at ``backend_timeout_s`` as before, a large batch gets longer, so that a batch the
log stores in time is a 202 and not a false 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from profilehook import keys
from profilehook.api.deadlines import Deadlines
from profilehook.api.ingest import ingest_handlers
from profilehook.constants import BACKEND_TIMEOUT_EXTRA_MAX_S, BACKEND_TIMEOUT_PER_EVENT_S
from profilehook.events import Event
from profilehook.queues.memory import MemoryQueue
from profilehook.service import Services
from profilehook.settings import Settings

BACKEND_TIMEOUT_S = 0.05
STORE_TAKES_S = 0.15
BATCH = 1_000


class SlowLog(MemoryQueue):
    """A log that takes ``STORE_TAKES_S`` to store anything, however little."""

    async def publish(self, events: Sequence[Event]) -> None:
        await asyncio.sleep(STORE_TAKES_S)
        await super().publish(events)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
    found = Services.from_settings(settings)
    found.queue = SlowLog()
    await found.open()
    yield found
    await found.close()


async def post(services: Services, path: str, body: bytes) -> tuple[int, bytes]:
    key, _ = await keys.create_key(services.store, "acme")
    handler = ingest_handlers(services, Deadlines(10.0, BACKEND_TIMEOUT_S))[path]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"authorization", f"Bearer {key}".encode())],
    }
    async with asyncio.timeout(5):
        await handler(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


def native_event(n: int) -> dict[str, Any]:
    return {"contact_id": f"c{n}", "event_name": "e", "timestamp": 1, "user_properties": {"n": n}}


async def test_given_a_slow_log_when_a_single_event_waits_past_the_deadline_then_503(
    services: Services,
) -> None:
    status, body = await post(services, "/v1/properties", msgspec.json.encode(native_event(1)))
    assert status == 503
    assert f"within {BACKEND_TIMEOUT_S:g} s".encode() in body
    assert await services.queue.depth() == 0


async def test_given_the_same_slow_log_when_a_1000_event_batch_is_stored_then_202(
    services: Services,
) -> None:
    """The same log, the same wait: a 1,000-event batch has 0.2 s more, so it is a 202."""
    body = msgspec.json.encode({"events": [native_event(n) for n in range(BATCH)]})
    started = time.monotonic()
    status, answer = await post(services, "/v1/properties/batch", body)
    assert status == 202, answer
    assert time.monotonic() - started >= STORE_TAKES_S
    assert await services.queue.depth() == BATCH


def test_the_allowance_grows_per_event_past_the_first_and_is_capped() -> None:
    deadlines = Deadlines(10.0, 0.7)
    assert deadlines.backend_timeout_for(1) == 0.7
    assert deadlines.backend_timeout_for(1_001) == pytest.approx(
        0.7 + 1_000 * BACKEND_TIMEOUT_PER_EVENT_S
    )
    assert deadlines.backend_timeout_for(10**7) == 0.7 + BACKEND_TIMEOUT_EXTRA_MAX_S
