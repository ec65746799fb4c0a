"""``Destinations`` in memory (stores/destinations.py): the registry and delivery rows in dicts,
for tests and ``--store memory``."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from profilehook.stores.destinations import (
    Delivery,
    DeliveryStats,
    DeliveryStatus,
    Destination,
    Destinations,
    Finished,
    NewDelivery,
    failing_since,
)


class MemoryDestinations(Destinations):
    def __init__(self) -> None:
        self._destinations: dict[str, Destination] = {}
        self._deliveries: dict[str, list[Delivery]] = {}  # destination id -> rows by position
        # The next position of each destination: never one given before, even once its row is
        # erased or purged, so a late outcome of that row cannot land on a later one.
        self._next_position: dict[str, int] = {}

    async def create_destination(self, destination: Destination, most: int) -> bool:
        if len(await self.list_destinations(destination.workspace)) >= most:
            return False
        self._destinations[destination.destination_id] = destination
        self._deliveries[destination.destination_id] = []
        self._next_position[destination.destination_id] = 1
        return True

    async def list_destinations(self, workspace: str) -> list[Destination]:
        return [d for d in self._destinations.values() if d.workspace == workspace]

    async def get_destination(self, workspace: str, destination_id: str) -> Destination | None:
        found = self._destinations.get(destination_id)
        return found if found is not None and found.workspace == workspace else None

    async def delete_destination(self, workspace: str, destination_id: str) -> bool:
        if await self.get_destination(workspace, destination_id) is None:
            return False
        del self._destinations[destination_id]
        self._deliveries.pop(destination_id, None)
        self._next_position.pop(destination_id, None)
        return True

    async def forget_contact_deliveries(self, workspace: str, contact_id: str) -> None:
        for destination_id, rows in self._deliveries.items():
            found = self._destinations.get(destination_id)
            if found is not None and found.workspace == workspace:
                rows[:] = [row for row in rows if row.contact_id != contact_id]

    async def active_destinations(self) -> list[Destination]:
        return [d for d in self._destinations.values() if d.disabled_us is None]

    async def enqueue_deliveries(
        self,
        destination_id: str,
        expected: str | None,
        cursor: str,
        deliveries: Sequence[NewDelivery],
        now_us: int,
    ) -> bool:
        found = self._destinations.get(destination_id)
        if found is None or found.cursor != expected:
            return False
        self._destinations[destination_id] = msgspec.structs.replace(found, cursor=cursor)
        rows = self._deliveries[destination_id]
        start = self._next_position[destination_id]
        self._next_position[destination_id] = start + len(deliveries)
        for i, new in enumerate(deliveries):
            rows.append(
                Delivery(
                    destination_id,
                    start + i,
                    new.change_id,
                    new.cursor,
                    new.contact_id,
                    new.applied_us,
                    new.payload,
                    "pending",
                    0,
                    now_us,
                    now_us,
                )
            )
        return True

    async def claim_deliveries(
        self, owner: str, now_us: int, lease_until_us: int, limit: int
    ) -> list[Delivery]:
        claimable: list[tuple[int, int, str, int]] = []  # (applied, position, destination, index)
        for destination_id, rows in self._deliveries.items():
            if self._destinations[destination_id].disabled_us is not None:
                continue
            seen: set[str] = set()
            for index, row in enumerate(rows):
                if row.status != "pending" or row.contact_id in seen:
                    continue
                seen.add(row.contact_id)
                leased = row.lease_until_us is not None and row.lease_until_us > now_us
                if row.next_attempt_us <= now_us and not leased:
                    claimable.append((row.next_attempt_us, row.position, destination_id, index))
        claimable.sort()
        claimed = []
        for _, _, destination_id, index in claimable[:limit]:
            rows = self._deliveries[destination_id]
            rows[index] = msgspec.structs.replace(
                rows[index], lease_owner=owner, lease_until_us=lease_until_us
            )
            claimed.append(rows[index])
        return claimed

    async def finish_deliveries(self, owner: str, now_us: int, finished: Sequence[Finished]) -> int:
        done: list[Finished] = []
        for f in finished:
            rows = self._deliveries.get(f.destination_id)
            index = _index(rows or [], f.position)
            if rows is None or index is None:
                continue
            row = rows[index]
            if row.status != "pending" or row.lease_owner != owner:
                continue
            next_us = f.next_attempt_us
            rows[index] = msgspec.structs.replace(
                row,
                status=f.outcome,
                attempts=row.attempts + 1,
                next_attempt_us=next_us if next_us is not None else row.next_attempt_us,
                updated_us=now_us,
                last_status=f.status,
                last_error=f.error,
                lease_owner=None,
                lease_until_us=None,
            )
            done.append(f)
        for destination_id, since in failing_since(done, now_us).items():
            destination = self._destinations[destination_id]
            if since is not None and destination.failing_since_us is not None:
                continue
            self._destinations[destination_id] = msgspec.structs.replace(
                destination, failing_since_us=since
            )
        return len(done)

    async def purge_deliveries(self, before_us: int, limit: int) -> int:
        old = sorted(
            (row.updated_us, destination_id, row.position)
            for destination_id, rows in self._deliveries.items()
            for row in rows
            if row.status != "pending" and row.updated_us < before_us
        )[:limit]
        gone = {(destination_id, position) for _, destination_id, position in old}
        for destination_id, rows in self._deliveries.items():
            rows[:] = [r for r in rows if (destination_id, r.position) not in gone]
        return len(gone)

    async def list_deliveries(
        self, destination_id: str, status: DeliveryStatus | None, limit: int
    ) -> list[Delivery]:
        rows = self._deliveries.get(destination_id, [])
        return [r for r in reversed(rows) if status is None or r.status == status][:limit]

    async def replay_destination(
        self, workspace: str, destination_id: str, after: str | None
    ) -> bool:
        found = await self.get_destination(workspace, destination_id)
        if found is None:
            return False
        self._destinations[destination_id] = msgspec.structs.replace(found, cursor=after)
        return True

    async def disable_destination(self, destination_id: str, at_us: int, reason: str) -> None:
        found = self._destinations.get(destination_id)
        if found is not None:
            self._destinations[destination_id] = msgspec.structs.replace(
                found, disabled_us=at_us, disabled_reason=reason
            )

    async def delivery_stats(self) -> dict[str, DeliveryStats]:
        found = {}
        for destination_id, rows in self._deliveries.items():
            pending = [r for r in rows if r.status == "pending"]
            found[destination_id] = DeliveryStats(
                sum(1 for r in rows if r.status == "delivered"),
                sum(1 for r in rows if r.status == "failed"),
                len(pending),
                sum(1 for r in pending if r.attempts > 0),
                min((r.applied_us for r in pending), default=None),
            )
        return found


def _index(rows: list[Delivery], position: int) -> int | None:
    lo, hi = 0, len(rows)
    while lo < hi:
        mid = (lo + hi) // 2
        if rows[mid].position < position:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < len(rows) and rows[lo].position == position else None
