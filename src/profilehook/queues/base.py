"""The durable log's contract, and its optional capability.

A backend is correct when it passes tests/test_queue_contract.py. ``HandsOverAcknowledgements``
and ``TellsOfAppends`` are not part of every queue's contract: only a log that another process
can write (SQLite) has them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from profilehook.events import Event


@dataclass(frozen=True)
class Delivery:
    """An event handed to a consumer, with the backend's handle to acknowledge it."""

    event: Event
    token: Any


class Queue(ABC):
    """An append-only, durable log of accepted events, consumed at least once.

    Delivery is at least once: the store's dedupe by event_id makes redelivery harmless.
    Backend errors are raised as ``StorageUnavailable``.
    """

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def publish(self, events: Sequence[Event]) -> Awaitable[None]:
        """Append events; the awaitable completes only once they are durable (the 2xx
        promise). (Not necessarily a coroutine: a backend may hand back its commit's future,
        one await less on the ingest path.)"""

    @abstractmethod
    async def fetch(self, max_events: int, wait_s: float) -> list[Delivery]:
        """Up to ``max_events`` unacknowledged events in log order; wait up to ``wait_s``."""

    @abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Mark deliveries done (after the store committed them): they are not redelivered."""

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand back deliveries that could not be applied (the store was unavailable): they
        are delivered again. The default leaves that to the backend's own redelivery (a
        broker's ack wait); a log that tracks deliveries in process must rewind."""
        return None

    @abstractmethod
    async def find(self, workspace: str, event_id: str) -> Event | None:
        """A still-pending event by id, or None (applied or never accepted)."""

    @abstractmethod
    async def depth(self) -> int:
        """Events accepted and not yet acknowledged."""

    @abstractmethod
    async def erase_pending(
        self, workspace: str, contact_id: str, upto_us: int, everything: bool = False
    ) -> int:
        """For an erasure: the contact's events still in the log that ``predates`` ``upto_us``
        (event time or receipt at or before it; all of them with ``everything``: a
        suppression) keep nothing of what
        they said: removed, or replaced by their ``erased_stub`` (which the store drops). Those
        a consumer holds already are dropped by the store. Returns how many. Idempotent."""

    async def scrub(self) -> None:
        """After ``erase_pending``: leave no bytes of what was removed in the log's files (the
        SQLite log rewrites its file and empties its WAL). Nothing to do elsewhere."""
        return None

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` when the backend cannot be reached."""
        await self.depth()


@runtime_checkable
class HandsOverAcknowledgements(Protocol):
    """A log whose consumer may leave writing its acknowledgements to another process: the
    applier process of ``serve`` hands them to the server (see applier_process.py). A broker
    (NATS) has no such capability: only its consumer can acknowledge to it. Checked with
    ``isinstance`` where it is used."""

    def hand_acknowledgements_to(self, record: Callable[[int], None]) -> None:
        """From now on ``ack`` passes the position acknowledged to ``record`` instead of writing
        it; the other process writes it with ``acknowledge_upto``."""

    async def acknowledge_upto(self, position: int) -> None:
        """Write an acknowledgement handed over by ``hand_acknowledgements_to``'s ``record``:
        every event up to ``position`` is done (a stale position moves nothing back)."""


@runtime_checkable
class TellsOfAppends(Protocol):
    """A log whose consumer in another process can be woken by this process's appends, through
    a pipe: the server's commits wake the applier process of ``serve`` waiting for events
    (see applier_process.py). Without it, that consumer sees an append at its next look
    (``POLL_INTERVAL_S``). A broker (NATS) pushes to its consumers itself. Checked with
    ``isinstance`` where it is used."""

    def tell_appends_to(self, fd: int | None) -> None:
        """From now on, after each commit of an append, write one byte to ``fd`` (the write
        end of a pipe, made non-blocking: a full pipe already holds a wake-up); None stops.
        The caller closes ``fd`` only after passing None."""

    def woken_by(self, fd: int) -> None:
        """From now on a ``fetch`` waiting for events wakes at once on a byte in ``fd`` (the
        read end of the pipe another process's ``tell_appends_to`` writes); it reads the pipe
        only then, so bytes written meanwhile cost this process nothing."""
