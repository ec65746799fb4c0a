"""Scaled out (README, Getting changes out): two delivery loops, each on its own connection
pool to one PostgreSQL (as two ``profilehook worker`` processes are), share one destination's
deliveries: every change is delivered exactly once in normal operation (the fill moves the
cursor by compare-and-set, a claim leases rows with SKIP LOCKED), each contact's in order, and
both loops do part of the work."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from profilehook.destinations import registry
from profilehook.destinations.delivery import Deliverer
from profilehook.settings import Settings
from tests.store_backends import StoreBackend, round_of_events
from tests.webhook_receiver import receiving

CONTACTS = 20
ROUNDS = 15


async def test_two_workers_share_the_deliveries_without_doubles(
    postgres_store_backend: StoreBackend,
) -> None:
    store = postgres_store_backend.store
    other = await postgres_store_backend.open_another()
    settings = Settings(destinations_allow_private=True, destinations_retry_scale=0.001)
    async with receiving() as receiver:
        receiver.delay_s = 0.005
        _, secret = await registry.create(
            store, "acme", {"url": f"http://127.0.0.1:{receiver.port}/in"}, allow_private=True
        )
        receiver.secret = secret
        workers = [
            Deliverer(store, settings, owner="w1", concurrency=8),
            Deliverer(other, settings, owner="w2", concurrency=8),
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        for n in range(ROUNDS):  # events keep coming while both deliver
            await store.apply(round_of_events(n, CONTACTS))
            await asyncio.sleep(0.02)
        async with asyncio.timeout(60):
            while len(receiver.received) < CONTACTS * ROUNDS:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # a double would arrive by now
        stop.set()
        await asyncio.gather(*tasks)

    ids = Counter(call.headers["webhook-id"] for call in receiver.received)
    assert len(ids) == CONTACTS * ROUNDS
    assert max(ids.values()) == 1, "a change was delivered twice"
    assert all(call.verified is not None for call in receiver.received)
    order: dict[str, list[int]] = {}
    for call in receiver.received:
        data = json.loads(call.body)["data"]
        order.setdefault(data["contact_id"], []).append(data["properties"]["n"]["new"])
    assert all(seq == list(range(ROUNDS)) for seq in order.values())
    shares = [sum(w.outcomes.values()) for w in workers]
    assert all(share > 0 for share in shares), shares
    print(f"\nscale-out delivery: {CONTACTS * ROUNDS} changes, per worker {shares}, no doubles")
