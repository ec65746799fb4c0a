"""The delivery loop (README, Getting changes out): runs beside the applier (serve's applier
process or task, and every ``profilehook worker``), any number at once.

Each pass **records** the outcomes of the calls that ended since the last pass, all in one
transaction. It **fills**: for every active destination, reads the change feed after the
destination's cursor and adds a delivery for each change its filter matches, moving the cursor
by compare-and-set (two loops never add a change twice). Then it **delivers**: claims due
deliveries in a batch (the store leases only the earliest pending one per destination and
contact, so a contact's changes go in order while contacts proceed in parallel: the next change
of a contact is claimable only once its previous outcome is recorded) and POSTs each, signed per
Standard Webhooks with ``webhook-id`` = the change id (the same on every retry), on keep-alive
connections (sender.py). Any 2xx within ``DESTINATION_TIMEOUT_S`` is a success; otherwise the
delivery is retried after the next wait of ``DESTINATION_RETRY_S`` (with jitter, scaled by
``destinations_retry_scale``), then marked failed. A destination failing for
``DESTINATION_DISABLE_AFTER_S`` in a row is disabled, with the failure that did it as the
reason. A loop killed mid-call leaves its leases to run out: another (or itself, restarted)
sends again, at least once.

A pass runs when there is work: the applier of the same process calls ``changes_committed``
after each batch that recorded changes (so a change goes out without waiting for a poll; a batch
that changed nothing wakes nothing), a call that ends
wakes the loop, and an idle loop still looks every ``DESTINATION_POLL_S`` (changes another
process applied, retries coming due).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
import uuid
from collections.abc import Callable

import msgspec

from profilehook import constants as c
from profilehook.changes import Change
from profilehook.destinations.addresses import Resolver, Target, parse_url
from profilehook.destinations.sender import Outcome, Senders
from profilehook.destinations.signing import secret_key, signed_headers
from profilehook.errors import CursorExpired, DestinationRefused, StorageUnavailable
from profilehook.events import iso, now_us
from profilehook.settings import Settings
from profilehook.stores.base import Store
from profilehook.stores.destinations import Delivery, Destination, Finished, NewDelivery

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
LOG_INTERVAL_S = 60.0
REFRESH_S = 1.0  # the destinations are read again at least this often


def payload(change: Change) -> bytes:
    """The body POSTed for ``change`` (the same bytes on every attempt)."""
    view = change.view()  # its applied_at is the timestamp: one RFC 3339 formatting, not two
    return _encode({"type": "profile.changed", "timestamp": view["applied_at"], "data": view})


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
        poll_s: float = c.DESTINATION_POLL_S,
    ):
        self.store = store
        self.allow_private = settings.destinations_allow_private
        self.scale = settings.destinations_retry_scale
        self.owner = owner or f"deliverer-{uuid.uuid4().hex[:12]}"
        self.senders = Senders(allow_private=self.allow_private, resolver=resolver, tls=tls)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.lease_s = max(c.DESTINATION_LEASE_S, 2 * timeout_s)
        self._concurrency = concurrency
        self._destinations: dict[str, Destination] = {}
        self._refreshed_s = -math.inf
        self._filled_s = -math.inf
        self._more_changes = True  # look at the feed on the first pass
        self._in_flight: set[asyncio.Task[None]] = set()
        self._finished: list[Finished] = []
        self._wake = asyncio.Event()
        self._targets: dict[str, tuple[str, Target, bytes]] = {}  # id -> (url, target, key)
        self._last_error: dict[str, str] = {}  # destination -> its last failed call's reason
        self.outcomes: dict[tuple[str, str], int] = {}  # (destination, outcome) -> count

    def changes_committed(self) -> None:
        """New changes were committed (the applier of this process): fill and deliver now."""
        self._more_changes = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fill and deliver until ``stop``; a failure is logged and retried on the next pass."""
        logged_s = -LOG_INTERVAL_S
        stopping = asyncio.create_task(stop.wait())
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
                if not busy and not self._wake.is_set():
                    woken = asyncio.create_task(self._wake.wait())
                    await asyncio.wait(
                        (woken, stopping),
                        timeout=self.poll_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    woken.cancel()
        finally:
            stopping.cancel()
            await self.drain()
            self.senders.close()

    async def step(self) -> bool:
        """One pass: record what ended, fill every destination, start the calls that are due.
        Whether it found work (then the next pass comes at once)."""
        self._wake.clear()
        recorded = await self.record()
        filled = 0
        due_s = self._filled_s + self.poll_s
        if self._more_changes or time.monotonic() >= due_s:
            self._more_changes = False
            self._filled_s = time.monotonic()
            filled = await self.fill()
        started = await self.deliver()
        return filled > 0 or started > 0 or recorded > 0

    async def record(self) -> int:
        """Record the outcomes of the calls that ended (one transaction); how many."""
        if not self._finished:
            return 0
        finished, self._finished = self._finished, []
        try:
            await self.store.finish_deliveries(self.owner, now_us(), finished)
        except StorageUnavailable as exc:  # the leases run out; the calls are made again
            log.warning("destinations: could not record %d deliveries: %s", len(finished), exc)
        return len(finished)

    async def fill(self) -> int:
        """Add deliveries for the changes past each active destination's cursor; how many
        changes were looked at."""
        looked = 0
        now = now_us()
        if time.monotonic() - self._refreshed_s >= REFRESH_S:
            await self._refresh()
        for destination in list(self._destinations.values()):
            if await self._disable_if_failing(destination, now):
                continue
            looked += await self._fill_one(destination)
        return looked

    async def _refresh(self) -> None:
        active = await self.store.active_destinations()
        self._destinations = {d.destination_id: d for d in active}
        self._refreshed_s = time.monotonic()

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
        cursor = changes[-1].cursor
        moved = await self.store.enqueue_deliveries(
            destination.destination_id, after, cursor, wanted, now_us()
        )
        if moved:
            self._destinations[destination.destination_id] = msgspec.structs.replace(
                destination, cursor=cursor
            )
            if len(changes) >= c.DESTINATION_FILL_BATCH:
                self._more_changes = True
        else:  # another loop moved it, or a replay did, or it is gone: read them again
            self._refreshed_s = -math.inf
            self._more_changes = True
        return len(changes)

    async def _disable_if_failing(self, destination: Destination, now: int) -> bool:
        since = destination.failing_since_us
        limit_us = int(c.DESTINATION_DISABLE_AFTER_S * self.scale * 1_000_000)
        if since is None or now - since < limit_us:
            return False
        reason = await self.disable_reason(destination, now)
        await self.store.disable_destination(destination.destination_id, now, reason)
        self._destinations.pop(destination.destination_id, None)
        log.warning("destination %s disabled: %s", destination.destination_id, reason)
        return True

    async def disable_reason(self, destination: Destination, now: int) -> str:
        """What a destination disabled now says: since when every call failed, and how the
        last one did."""
        since = destination.failing_since_us or now
        why = self._last_error.get(destination.destination_id)
        if why is None:  # failed under another loop (or before a restart): the log knows
            for delivery in await self.store.list_deliveries(destination.destination_id, None, 50):
                if delivery.attempts and delivery.last_error:
                    why = delivery.last_error
                    break
        last = f"; the last call: {why}" if why else ""
        return f"every delivery failed for {duration(now - since)} (since {iso(since)}){last}"

    async def deliver(self) -> int:
        """Claim what is due (as many as there are free slots) and start each call; how many
        were started."""
        free = self._concurrency - len(self._in_flight)
        # Claim in batches: each claim is a transaction; a few free slots wait for more. With
        # no active destination (as of the last refresh) there is nothing to claim.
        if free <= 0 or (self._in_flight and free < self._concurrency // 4):
            return 0
        if not self._destinations:
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
        """Wait for the calls in flight and record their outcomes."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        with contextlib.suppress(StorageUnavailable):
            await self.record()

    async def _attempt(self, delivery: Delivery) -> None:
        destination = self._destinations.get(delivery.destination_id)
        if destination is None:  # deleted or disabled meanwhile (its lease runs out)
            return
        outcome = await self.call(destination, delivery)
        attempts = delivery.attempts + 1
        next_us = None
        if not outcome.delivered:
            self._last_error[delivery.destination_id] = outcome.error or "no answer"
            wait_s = retry_wait_s(attempts, self.scale)
            next_us = None if wait_s is None else now_us() + int(wait_s * 1_000_000)
        label = "delivered" if outcome.delivered else ("retry" if next_us else "failed")
        key = (delivery.destination_id, label)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self._finished.append(
            Finished(
                delivery.destination_id,
                delivery.position,
                outcome.delivered,
                next_us,
                outcome.status_code,
                outcome.error,
            )
        )
        self._wake.set()

    async def call(self, destination: Destination, delivery: Delivery) -> Outcome:
        """One signed POST of ``delivery`` to ``destination``."""
        made = self._targets.get(destination.destination_id)
        if made is None or made[0] != destination.url:
            try:
                target = parse_url(destination.url, self.allow_private)
            except DestinationRefused as exc:
                return Outcome(None, str(exc.detail))
            made = self._targets[destination.destination_id] = (
                destination.url,
                target,
                secret_key(destination.secret),
            )
        _, target, key = made
        headers = signed_headers(key, delivery.change_id, int(time.time()), delivery.payload)
        return await self.senders.post(target, delivery.payload, headers, timeout_s=self.timeout_s)


def duration(us: int) -> str:
    """``us`` microseconds as a person says it: "5 days", "3 hours", "42 s"."""
    seconds = us / 1_000_000
    for unit, size in (("days", 86_400), ("hours", 3_600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
