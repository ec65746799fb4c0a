"""Destinations and their deliveries (README, Getting changes out): the interface
every store implements, and the records it keeps.

A destination is a webhook URL of one workspace, with its secret, its filter, and a cursor into
the change feed: every change up to the cursor has been looked at, and each one that matched the
filter became a **delivery** row. ``enqueue_deliveries`` moves the cursor with compare-and-set
and adds the rows in one transaction, so two workers filling the same destination never add a
change twice. Each row has a position (the order it was added in, per destination), a status
(``pending``, ``delivered``, ``failed``), its attempts, the time of its next attempt, a lease,
and the last status code or error.

``claim_deliveries`` hands out due, unleased pending rows, only the earliest pending one per
(destination, contact): a later change of a contact waits for the earlier one (delivered or
failed), contacts proceed in parallel. The claim leases the row to its worker until a time;
``finish_delivery`` records the outcome only while the worker still holds the lease. A worker
that dies leaves its leases to expire, and another claims the rows again: at least once.
Passes tests/test_destinations_contract.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from profilehook.changes import Change

DeliveryStatus = Literal["pending", "delivered", "failed"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "failed")


class Destination(msgspec.Struct, frozen=True):
    """A destination as kept. ``properties``/``segments``: the filter (module doc of
    ``matches``); ``cursor``: the feed position looked at up to (None: none yet);
    ``failing_since_us``: since when every attempt failed (None: the last one succeeded);
    ``disabled_us``/``disabled_reason``: set once it is disabled."""

    destination_id: str
    workspace: str
    url: str
    secret: str
    created_us: int
    description: str = ""
    properties: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    cursor: str | None = None
    failing_since_us: int | None = None
    disabled_us: int | None = None
    disabled_reason: str | None = None

    def matches(self, change: Change) -> bool:
        """Whether ``change`` goes to this destination: with no filter, every change; else one
        that changes a listed property (or deletes the contact, which changes all of them), or
        enters or exits a listed segment."""
        if not self.properties and not self.segments:
            return True
        body = change.body
        if self.properties and (body.deleted or any(p in body.properties for p in self.properties)):
            return True
        moved = {*body.segments.entered, *body.segments.exited}
        return any(s in moved for s in self.segments)


class NewDelivery(msgspec.Struct, frozen=True):
    """A change to deliver: its ids and the body to POST (``payload``, JSON bytes)."""

    change_id: str
    cursor: str
    contact_id: str
    applied_us: int
    payload: bytes


class Delivery(msgspec.Struct, frozen=True):
    """A delivery row (module doc)."""

    destination_id: str
    position: int
    change_id: str
    cursor: str
    contact_id: str
    applied_us: int
    payload: bytes
    status: DeliveryStatus
    attempts: int
    next_attempt_us: int
    updated_us: int
    last_status: int | None = None
    last_error: str | None = None
    lease_owner: str | None = None
    lease_until_us: int | None = None


class Finished(msgspec.Struct, frozen=True):
    """One attempt's outcome, for ``finish_deliveries``: ``delivered``; or failed, to be tried
    again at ``next_attempt_us`` (None: given up, status ``failed``)."""

    destination_id: str
    position: int
    delivered: bool
    next_attempt_us: int | None = None
    status: int | None = None
    error: str | None = None

    @property
    def outcome(self) -> DeliveryStatus:
        if self.delivered:
            return "delivered"
        return "pending" if self.next_attempt_us is not None else "failed"


def failing_since(done: Sequence[Finished], now_us: int) -> dict[str, int | None]:
    """Per destination of ``done`` (the attempts recorded, in the order they ended), what its
    ``failing_since_us`` becomes: None after a success, ``now_us`` (unless already set) after
    a failure. The last attempt of each decides."""
    last: dict[str, int | None] = {}
    for f in done:
        last[f.destination_id] = None if f.delivered else now_us
    return last


class DeliveryStats(msgspec.Struct, frozen=True):
    """A destination's deliveries by status; ``retrying``: pending after a failed attempt;
    ``oldest_pending_us``: when the oldest pending one's change was applied (None: none)."""

    delivered: int = 0
    failed: int = 0
    pending: int = 0
    retrying: int = 0
    oldest_pending_us: int | None = None


class Destinations(ABC):
    """The destinations registry and the delivery state (module doc). Backend errors are raised
    as ``StorageUnavailable``."""

    @abstractmethod
    async def create_destination(self, destination: Destination, most: int) -> bool:
        """Keep ``destination``, unless its workspace already has ``most``: then False."""

    @abstractmethod
    async def list_destinations(self, workspace: str) -> list[Destination]:
        """The workspace's destinations, oldest first."""

    @abstractmethod
    async def get_destination(self, workspace: str, destination_id: str) -> Destination | None:
        """One destination of the workspace (None: none of that id there)."""

    @abstractmethod
    async def delete_destination(self, workspace: str, destination_id: str) -> bool:
        """Forget the destination and its deliveries; whether it existed."""

    @abstractmethod
    async def forget_contact_deliveries(self, workspace: str, contact_id: str) -> None:
        """Drop every delivery of the contact (its erasure: a delivery holds its change), to
        every destination of the workspace, whatever its status. On SQLite the bytes stay in
        the file's free pages until ``Erasures.erase_contacts``, which calls this, scrubs it."""

    @abstractmethod
    async def active_destinations(self) -> list[Destination]:
        """Every destination not disabled, of every workspace (what the workers deliver to)."""

    @abstractmethod
    async def enqueue_deliveries(
        self,
        destination_id: str,
        expected: str | None,
        cursor: str,
        deliveries: Sequence[NewDelivery],
        now_us: int,
    ) -> bool:
        """If the destination's cursor is still ``expected``: move it to ``cursor`` and add
        ``deliveries`` (in order, pending, due now) in the same transaction; True. Else (another
        worker moved it, or the destination is gone) change nothing; False."""

    @abstractmethod
    async def claim_deliveries(
        self, owner: str, now_us: int, lease_until_us: int, limit: int
    ) -> list[Delivery]:
        """Lease up to ``limit`` pending deliveries to ``owner`` until ``lease_until_us``: due
        (``next_attempt_us <= now_us``), not leased (or the lease ran out), of an active
        destination, and the earliest pending of their (destination, contact). Oldest first."""

    async def finish_delivery(
        self,
        destination_id: str,
        position: int,
        owner: str,
        now_us: int,
        *,
        delivered: bool,
        next_attempt_us: int | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> bool:
        """Record one attempt (``finish_deliveries`` of one)."""
        done = Finished(destination_id, position, delivered, next_attempt_us, status, error)
        return await self.finish_deliveries(owner, now_us, [done]) == 1

    @abstractmethod
    async def finish_deliveries(self, owner: str, now_us: int, finished: Sequence[Finished]) -> int:
        """Record the attempts of deliveries ``owner`` leased, in one transaction: each one's
        status, attempts, next attempt, status code and error (``Finished``); its lease ends.
        An attempt whose lease ``owner`` no longer holds changes nothing. Each destination's
        ``failing_since_us`` is cleared by a success and set by a failure (if not set), its
        last recorded attempt deciding. How many were recorded."""

    @abstractmethod
    async def purge_deliveries(self, before_us: int, limit: int) -> int:
        """Retention: forget up to ``limit`` delivered or failed deliveries whose last attempt
        ended before ``before_us``, oldest first; how many. Pending ones stay."""

    @abstractmethod
    async def list_deliveries(
        self, destination_id: str, status: DeliveryStatus | None, limit: int
    ) -> list[Delivery]:
        """The destination's deliveries (of one status, or all), newest first."""

    @abstractmethod
    async def replay_destination(
        self, workspace: str, destination_id: str, after: str | None
    ) -> bool:
        """Move the destination's cursor back (or anywhere) to ``after``: the changes after it
        are delivered again, as new deliveries. Whether the destination exists."""

    @abstractmethod
    async def disable_destination(self, destination_id: str, at_us: int, reason: str) -> None:
        """Stop delivering to the destination, saying why; its pending deliveries stay."""

    @abstractmethod
    async def delivery_stats(self) -> dict[str, DeliveryStats]:
        """Per destination id (every destination, of every workspace), its deliveries by
        status, those waiting for a retry, and the oldest pending one's change time."""


def destination_of(
    row: Sequence[Any], properties: Sequence[str], segments: Sequence[str]
) -> Destination:
    """A destination from a SQL store's row (its columns in the stores' order; the filter's
    lists decoded by the store)."""
    return Destination(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        tuple(properties),
        tuple(segments),
        row[8],
        row[9],
        row[10],
        row[11],
    )


def new_delivery_rows(
    destination_id: str, start: int, deliveries: Sequence[NewDelivery], now_us: int
) -> list[tuple[Any, ...]]:
    """The SQL stores' parameters for ``deliveries`` at positions ``start``… (the columns
    their INSERT names before the constants): pending, due ``now_us``."""
    return [
        (
            destination_id,
            start + i,
            d.change_id,
            d.cursor,
            d.contact_id,
            d.applied_us,
            d.payload,
            now_us,
            now_us,
        )
        for i, d in enumerate(deliveries)
    ]


def delivery_of(row: Sequence[Any]) -> Delivery:
    """A delivery from a SQL store's row (its columns in the stores' order)."""
    return Delivery(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        bytes(row[6]),
        row[7],
        row[8],
        row[9],
        row[10],
        row[11],
        row[12],
        row[13],
        row[14],
    )


# Per destination: delivered, failed, pending, retrying, the oldest pending change's apply time.
STATS_SQL = """
SELECT s.destination_id,
    count(*) FILTER (WHERE d.status = 'delivered'),
    count(*) FILTER (WHERE d.status = 'failed'),
    count(*) FILTER (WHERE d.status = 'pending'),
    count(*) FILTER (WHERE d.status = 'pending' AND d.attempts > 0),
    min(d.applied_us) FILTER (WHERE d.status = 'pending')
FROM destinations s LEFT JOIN deliveries d ON d.destination_id = s.destination_id
GROUP BY s.destination_id
"""
