"""The delivery loop (README, Getting changes out): runs beside the applier (serve's applier
process or task, and every ``profilehook worker``), any number at once.

Each pass **fills**: for every active destination, reads the change feed after the
destination's cursor and adds a delivery for each change its filter matches, moving the cursor
by compare-and-set (two loops never add a change twice). Then it **delivers**: claims due
deliveries (the store leases only the earliest pending one per destination and contact, so a
contact's changes go in order while contacts proceed in parallel) and POSTs each, signed per
Standard Webhooks with ``webhook-id`` = the change id (the same on every retry). Any 2xx within
``DESTINATION_TIMEOUT_S`` is a success; otherwise the delivery is retried after the next wait of
``DESTINATION_RETRY_S`` (with jitter, scaled by ``destinations_retry_scale``), then marked
failed. A destination failing for ``DESTINATION_DISABLE_AFTER_S`` in a row is disabled. A loop
killed mid-call leaves its leases to run out: another (or itself, restarted) sends again, at
least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable

import msgspec

from profilehook import constants as c
from profilehook.changes import Change
from profilehook.destinations.addresses import Resolver, parse_url
from profilehook.destinations.sender import Outcome, post
from profilehook.destinations.signing import secret_key, signed_headers
from profilehook.errors import CursorExpired, DestinationRefused, StorageUnavailable
from profilehook.events import iso, now_us
from profilehook.settings import Settings
from profilehook.stores.base import Store
from profilehook.stores.destinations import Delivery, Destination, NewDelivery

log = logging.getLogger(__name__)
LOG_INTERVAL_S = 60.0


def payload(change: Change) -> bytes:
    """The body POSTed for ``change`` (the same bytes on every attempt)."""
    return msgspec.json.encode(
        {"type": "profile.changed", "timestamp": iso(change.applied_us), "data": change.view()}
    )


def retry_wait_s(
    attempts: int, scale: float, rand: Callable[[], float] = random.random
) -> float | None:
    """How long after its ``attempts``-th failed attempt a delivery is tried again (None:
    never, it has failed)."""
    if attempts > len(c.DESTINATION_RETRY_S):
        return None
    base = c.DESTINATION_RETRY_S[attempts - 1] * scale
    return base * (1 + c.DESTINATION_RETRY_JITTER * rand())


class Deliverer:
    """One delivery loop (module doc). ``owner`` names its leases; ``resolver``/``tls`` are the
    sender's (tests)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        owner: str | None = None,
        resolver: Resolver | None = None,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = c.DESTINATION_TIMEOUT_S,
        concurrency: int = c.DESTINATION_CONCURRENCY,
    ):
        self.store = store
        self.allow_private = settings.destinations_allow_private
        self.scale = settings.destinations_retry_scale
        self.owner = owner or f"deliverer-{uuid.uuid4().hex[:12]}"
        self.resolver = resolver
        self.tls = tls
        self.timeout_s = timeout_s
        self.lease_s = max(c.DESTINATION_LEASE_S, 2 * timeout_s)
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._destinations: dict[str, Destination] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self.outcomes: dict[tuple[str, str], int] = {}  # (destination, outcome) -> count

    async def run(self, stop: asyncio.Event) -> None:
        """Fill and deliver until ``stop``; a failure is logged and retried on the next pass."""
        logged_s = -LOG_INTERVAL_S
        try:
            while not stop.is_set():
                try:
                    busy = await self.step()
                except Exception as exc:  # the loop must outlive any one failure
                    busy = False
                    if time.monotonic() - logged_s >= LOG_INTERVAL_S:
                        logged_s = time.monotonic()
                        if isinstance(exc, StorageUnavailable):
                            log.warning("destinations: %s; retrying", exc.detail)
                        else:
                            log.exception("destinations: delivery pass failed; retrying")
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), c.DESTINATION_POLL_S)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def step(self) -> bool:
        """One pass: fill every destination, start the calls that are due. Whether it found
        work (then the next pass comes at once)."""
        filled = await self.fill()
        started = await self.deliver()
        return filled > 0 or started > 0

    async def fill(self) -> int:
        """Add deliveries for the changes past each active destination's cursor; how many
        changes were looked at."""
        looked = 0
        now = now_us()
        active = await self.store.active_destinations()
        self._destinations = {d.destination_id: d for d in active}
        for destination in active:
            if await self._disable_if_failing(destination, now):
                continue
            looked += await self._fill_one(destination)
        return looked

    async def _fill_one(self, destination: Destination) -> int:
        after = destination.cursor
        try:
            changes = await self.store.read_changes(
                destination.workspace, after, c.DESTINATION_FILL_BATCH
            )
        except CursorExpired:
            log.warning(
                "destination %s: changes after its cursor were purged; it resumes at the"
                " oldest change kept",
                destination.destination_id,
            )
            changes = await self.store.read_changes(
                destination.workspace, None, c.DESTINATION_FILL_BATCH
            )
        if not changes:
            return 0
        wanted = [
            NewDelivery(ch.change_id, ch.cursor, ch.contact_id, ch.applied_us, payload(ch))
            for ch in changes
            if destination.matches(ch)
        ]
        await self.store.enqueue_deliveries(
            destination.destination_id, after, changes[-1].cursor, wanted, now_us()
        )
        return len(changes)

    async def _disable_if_failing(self, destination: Destination, now: int) -> bool:
        since = destination.failing_since_us
        limit_us = int(c.DESTINATION_DISABLE_AFTER_S * self.scale * 1_000_000)
        if since is None or now - since < limit_us:
            return False
        reason = f"every delivery failed since {iso(since)}: disabled after 5 days of failures"
        await self.store.disable_destination(destination.destination_id, now, reason)
        log.warning("destination %s disabled: %s", destination.destination_id, reason)
        return True

    async def deliver(self) -> int:
        """Claim what is due (as many as there are free slots) and start each call; how many
        were started."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        now = now_us()
        claimed = await self.store.claim_deliveries(
            self.owner,
            now,
            now + int(self.lease_s * 1_000_000),
            min(free, c.DESTINATION_CLAIM_BATCH),
        )
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(claimed)

    async def drain(self) -> None:
        """Wait for the calls in flight (tests)."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def _attempt(self, delivery: Delivery) -> None:
        destination = self._destinations.get(delivery.destination_id)
        if destination is None:  # deleted or disabled meanwhile
            return
        outcome = await self.call(destination, delivery)
        now = now_us()
        attempts = delivery.attempts + 1
        next_us = None
        if not outcome.delivered:
            wait_s = retry_wait_s(attempts, self.scale)
            next_us = None if wait_s is None else now + int(wait_s * 1_000_000)
        label = "delivered" if outcome.delivered else ("retry" if next_us else "failed")
        key = (delivery.destination_id, label)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        try:
            await self.store.finish_delivery(
                delivery.destination_id,
                delivery.position,
                self.owner,
                now,
                delivered=outcome.delivered,
                next_attempt_us=next_us,
                status=outcome.status_code,
                error=outcome.error,
            )
        except StorageUnavailable as exc:  # the lease runs out; the call is made again
            log.warning("destinations: could not record a delivery: %s", exc.detail)

    async def call(self, destination: Destination, delivery: Delivery) -> Outcome:
        """One signed POST of ``delivery`` to ``destination``."""
        try:
            target = parse_url(destination.url, self.allow_private)
        except DestinationRefused as exc:
            return Outcome(None, str(exc.detail))
        headers = signed_headers(
            secret_key(destination.secret), delivery.change_id, int(time.time()), delivery.payload
        )
        return await post(
            target,
            delivery.payload,
            headers,
            timeout_s=self.timeout_s,
            allow_private=self.allow_private,
            resolver=self.resolver,
            tls=self.tls,
        )
