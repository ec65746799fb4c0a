"""The delivery loop (destinations/delivery.py, SPEC 2.10) against a real local receiver that
verifies every signature with the reference ``standardwebhooks`` library: each matching change
arrives, signed, in order per contact; a receiver that answers 500 or not at all gets the same
``webhook-id`` again on the retry schedule (scaled down), then the delivery is failed; a
destination failing long enough is disabled; replay sends again from a cursor."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from profilehook.destinations import registry
from profilehook.destinations.delivery import Deliverer, retry_wait_s
from profilehook.events import Event, now_us
from profilehook.retention import ChangePurger
from profilehook.settings import Settings
from profilehook.stores.base import Store
from profilehook.stores.memory import MemoryStore
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import S
from tests.webhook_receiver import Receiver, receiving

SCALE = 0.001  # 5 s -> 5 ms, 5 min -> 0.3 s, ...


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    made: Store = (
        MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "p.sqlite3")
    )
    await made.open()
    yield made
    await made.close()


def settings(scale: float = SCALE) -> Settings:
    return Settings(destinations_allow_private=True, destinations_retry_scale=scale)


def update(contact: str, seq: int, **props: Any) -> Event:
    return Event(
        workspace="acme",
        event_id=f"{contact}-{seq}",
        contact_id=contact,
        ts_us=(100 + seq) * S,
        properties=props,
    )


async def destination(store: Store, receiver: Receiver, **body: Any) -> str:
    made, secret = await registry.create(
        store, "acme", {"url": f"http://127.0.0.1:{receiver.port}/in", **body}, allow_private=True
    )
    receiver.secret = secret
    return made.destination_id


async def run_until(deliverer: Deliverer, done: Any, timeout_s: float = 20.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not await done():
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task


def per_contact(receiver: Receiver) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for call in receiver.received:
        data = json.loads(call.body)["data"]
        seen[data["contact_id"]].append(data["properties"]["n"]["new"])
    return seen


async def test_every_change_arrives_signed_and_in_order_per_contact(store: Store) -> None:
    async with receiving() as receiver:
        await destination(store, receiver)
        for n in range(1, 11):
            await store.apply([update(f"c{i}", n, n=n) for i in range(5)])
        await store.apply([update("c0", 11, n=10)])  # changes nothing: no change, no call
        deliverer = Deliverer(store, settings())

        async def all_in() -> bool:
            return len(receiver.received) >= 50

        await run_until(deliverer, all_in)
        await asyncio.sleep(0.1)
        assert len(receiver.received) == 50
        assert all(call.verified is not None for call in receiver.received)
        first = json.loads(receiver.received[0].body)
        assert first["type"] == "profile.changed" and first["timestamp"]
        assert first["data"]["properties"] == {"n": {"old": None, "new": 1}}
        assert receiver.received[0].headers["webhook-id"] == first["data"]["change_id"]
        assert per_contact(receiver) == {f"c{i}": list(range(1, 11)) for i in range(5)}


async def test_500s_and_timeouts_are_retried_with_the_same_id_and_order_holds(
    store: Store,
) -> None:
    async with receiving() as receiver:
        receiver.answers = [500, "hang", 503]
        destination_id = await destination(store, receiver)
        await store.apply([update("a", 1, n=1)])
        await store.apply([update("a", 2, n=2), update("b", 1, n=1)])
        deliverer = Deliverer(store, settings(), timeout_s=0.3)

        async def delivered() -> bool:
            return len(await store.list_deliveries(destination_id, "delivered", 10)) == 3

        await run_until(deliverer, delivered)
        ids: dict[str, set[str]] = defaultdict(set)
        for call in receiver.received:
            assert call.verified is not None
            ids[json.loads(call.body)["data"]["change_id"]].add(call.headers["webhook-id"])
        assert all(len(found) == 1 and change_id in found for change_id, found in ids.items())
        # a's second change waited for its first, whatever it took.
        bodies = [json.loads(call.body)["data"] for call in receiver.received]
        a_calls = [d["properties"]["n"]["new"] for d in bodies if d["contact_id"] == "a"]
        assert a_calls == sorted(a_calls) and a_calls[-1] == 2
        log = await store.list_deliveries(destination_id, None, 10)
        assert max(d.attempts for d in log) >= 2
        assert sum(d.attempts for d in log) == len(receiver.received)


async def test_a_receiver_that_never_succeeds_fails_the_delivery_then_the_destination(
    store: Store,
) -> None:
    async with receiving() as receiver:
        receiver.answers = [500] * 100
        destination_id = await destination(store, receiver)
        await store.apply([update("a", 1, n=1)])
        # Scaled: the seven retries take about 2 s, 5 days of failing about 9 s (room for a
        # loaded machine: the delivery must fail before the destination is disabled).
        deliverer = Deliverer(store, settings(0.00002), timeout_s=1)

        async def failed() -> bool:
            return len(await store.list_deliveries(destination_id, "failed", 10)) == 1

        await run_until(deliverer, failed)
        (row,) = await store.list_deliveries(destination_id, "failed", 10)
        assert row.attempts == 8 and row.last_status == 500 and "500" in (row.last_error or "")
        assert len(receiver.received) == 8
        assert len({call.headers["webhook-id"] for call in receiver.received}) == 1

        async def disabled() -> bool:
            found = await store.get_destination("acme", destination_id)
            return found is not None and found.disabled_us is not None

        await run_until(deliverer, disabled, timeout_s=30)
        found = await store.get_destination("acme", destination_id)
        # The reason says what happened: how long (scaled: seconds, not "5 days") and the
        # failure itself.
        reason = found.disabled_reason if found is not None else None
        assert reason is not None and reason.startswith("every delivery failed for ")
        assert " s (since " in reason and "5 days" not in reason
        assert reason.endswith("the last call: answered 500")


async def test_given_a_destination_failing_for_6_days_then_its_reason_names_them_and_the_error(
    store: Store,
) -> None:
    # Given a destination whose calls failed (refused connections) 6 days ago and since, as
    # recorded by another delivery loop (this one starts with nothing in memory)
    made, _ = await registry.create(
        store, "acme", {"url": "http://127.0.0.1:9/in"}, allow_private=True
    )
    await store.apply([update("a", 1, n=1)])
    first = Deliverer(store, settings(1.0), owner="before")
    await first.fill()
    (claimed,) = await store.claim_deliveries("before", now_us(), now_us() + 10**9, 10)
    six_days_ago = now_us() - 6 * 86_400 * S
    error = "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 9)"
    await store.finish_delivery(
        made.destination_id,
        claimed.position,
        "before",
        six_days_ago,
        delivered=False,
        next_attempt_us=now_us() + 10**9,
        error=error,
    )
    # When a new loop looks at it
    await Deliverer(store, settings(1.0)).fill()
    # Then it is disabled, saying for how long every call failed and how the last one did
    found = await store.get_destination("acme", made.destination_id)
    assert found is not None and found.disabled_us is not None
    assert found.disabled_reason is not None
    assert found.disabled_reason.startswith("every delivery failed for 6 days (since ")
    assert found.disabled_reason.endswith(f"the last call: {error}")


async def test_the_filter_and_replay(store: Store) -> None:
    async with receiving() as receiver:
        destination_id = await destination(store, receiver, properties=["plan"])
        await store.apply([update("a", 1, plan="free", n=1)])
        await store.apply([update("a", 2, city="Delft")])  # not the plan: not sent
        await store.apply([update("b", 1, plan="pro")])
        deliverer = Deliverer(store, settings())

        async def two() -> bool:
            return len(await store.list_deliveries(destination_id, "delivered", 10)) == 2

        await run_until(deliverer, two)
        assert [json.loads(c.body)["data"]["contact_id"] for c in receiver.received] == ["a", "b"]
        first_cursor = json.loads(receiver.received[0].body)["data"]["cursor"]
        await registry.replay(store, "acme", destination_id, {"after": first_cursor})

        async def three() -> bool:
            return len(await store.list_deliveries(destination_id, "delivered", 10)) == 3

        await run_until(deliverer, three)
        assert [json.loads(c.body)["data"]["contact_id"] for c in receiver.received] == [
            "a",
            "b",
            "b",
        ]


def test_the_retry_schedule() -> None:
    waits = [retry_wait_s(n, 1.0, lambda: 0.0) for n in range(1, 9)]
    assert waits == [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0, None]
    jittered = retry_wait_s(1, 1.0, lambda: 1.0)
    assert jittered is not None and 5.0 < jittered <= 6.0


async def test_given_deliveries_past_the_changes_retention_then_the_purger_forgets_them(
    store: Store,
) -> None:
    async with receiving() as receiver:
        destination_id = await destination(store, receiver)
        await store.apply([update("a", 1, n=1), update("b", 1, n=1)])
        deliverer = Deliverer(store, settings())

        async def delivered() -> bool:
            return len(await store.list_deliveries(destination_id, "delivered", 10)) == 2

        await run_until(deliverer, delivered)
    days = settings().changes_retention_days
    # Given the changes' retention has passed since they were delivered, when the change
    # purger runs (as it does beside every applier), then the deliveries go with the changes
    later = ChangePurger(store, settings(), clock_us=lambda: now_us() + (days + 1) * 86_400 * S)
    assert await later.step() == 2
    assert await store.list_deliveries(destination_id, None, 10) == []
    assert await store.read_changes("acme", None, 10) == []


async def test_given_no_destination_then_a_pass_claims_nothing() -> None:
    """Every worker runs a delivery loop; with no destination it must not write to the store
    on every pass (on PostgreSQL a claim is an UPDATE)."""
    claims: list[int] = []

    class Counting(MemoryStore):
        async def claim_deliveries(self, owner: str, now_us: int, lease: int, limit: int) -> Any:
            claims.append(limit)
            return await super().claim_deliveries(owner, now_us, lease, limit)

    store = Counting()
    await store.open()
    deliverer = Deliverer(store, settings())
    for _ in range(3):
        assert not await deliverer.step()
    assert claims == []
    async with receiving() as receiver:
        await destination(store, receiver)
        deliverer.changes_committed()
        await deliverer._refresh()
        await deliverer.step()
    assert len(claims) == 1
