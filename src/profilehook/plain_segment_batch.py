"""A Segment batch of identifies as the SQLite log keeps it: as the SDK sent it (plain_batch.py
does the same for the native API's batch).

A ``/v1/batch`` body whose every message is an identify that sets traits on a user, not older
than the retention window (what segment-analytics-python and rudder-sdk-python send for
``identify``) decodes into sources/segment.py's Structs, checked in C. Its events are then
made only when something asks for them: the log keeps the body, the workspace, the time of
receipt and the run the ids of messages without a ``messageId`` are made from, and its reader
makes the same events again. On the event loop that is neither an ``Event`` made nor one
encoded a message (benchmarks/README.md, session 20).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from profilehook import constants as c
from profilehook.events import Event, ids_of_run
from profilehook.plain_batch import KeptBatch

SOURCE = "segment"  # Segment's (and RudderStack's) events (sources/segment.py)
EVENT_NAME = "identify"

_Value = str | int | float | bool | None


# gc=False: decoded JSON cannot refer back to the Struct that holds it (plain_batch.py).
class StoredContext(msgspec.Struct, gc=False):
    """A message's ``context`` as the log's reader decodes it: only the traits are read."""

    traits: dict[str, _Value] | None = None


class StoredMessage(msgspec.Struct, gc=False):
    """A message as the log's reader decodes it: sources/segment.py's ``Message`` without its
    limits, so that a body accepted once reads the same whatever limits a later version sets.
    Fields not read (a track's properties, ``integrations``, the rest of ``context``) are
    skipped unbuilt."""

    type: str = ""
    userId: str | None = None
    anonymousId: str | None = None
    traits: dict[str, _Value] | None = None
    context: StoredContext | None = None
    timestamp: datetime | None = None
    messageId: str | None = None


class _Stored(msgspec.Struct):
    batch: list[StoredMessage]


_decode_stored = msgspec.json.Decoder(_Stored).decode

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
MAX_US = c.MAX_EVENT_TIME_S * 1_000_000
_MAX_TIME = EPOCH + MAX_US * MICROSECOND


def time_us(stamp: datetime | None, received_us: int) -> int:
    """A message's time in microseconds: its ``timestamp`` (no zone is UTC), or the time of
    receipt when it has none. Outside 0 to ``MAX_US`` for a time no event may have."""
    if stamp is None:
        return received_us
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (stamp - EPOCH) // MICROSECOND


def traits_of(message: StoredMessage) -> dict[str, Any] | None:
    """What an identify sets: its ``traits``, else its ``context.traits`` (rudder-sdk-python's)."""
    traits = message.traits
    if traits is None and message.context is not None:
        traits = message.context.traits
    return traits


class PlainSegmentBatch(KeptBatch):
    """A Segment batch of identifies, every message one event: ``items`` (sources/segment.py's
    ``Message``, or ``StoredMessage`` as the log's reader decodes them)."""

    __slots__ = ()
    RECORD = 2

    items: list[StoredMessage]

    @classmethod
    def of(
        cls, body: bytes, messages: list[Any], workspace: str, received_us: int, oldest_us: int
    ) -> PlainSegmentBatch | None:
        """The batch of a request just decoded into Structs (their values checked by the
        decoder), when its every message becomes an event as it is; else None. (One loop with
        no call a message, then the times compared as they were decoded, in C: this is the
        hot path of /v1/batch.)"""
        for message in messages:
            if message.type != EVENT_NAME or not (message.userId or message.anonymousId):
                return None
            traits = message.traits
            if traits is None and message.context is not None:
                traits = message.context.traits
            if not traits:
                return None
        stamps = [
            stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)  # (no zone: UTC)
            for message in messages
            if (stamp := message.timestamp) is not None
        ]
        if stamps:
            floor = EPOCH + max(oldest_us, 0) * MICROSECOND
            if min(stamps) < floor or max(stamps) > _MAX_TIME:
                return None
        if not 0 <= received_us <= MAX_US:
            return None
        return cls.received(body, messages, workspace, received_us)

    @staticmethod
    def _stored_items(body: bytes) -> list[Any]:
        return _decode_stored(body).batch

    def _made(self) -> list[Event]:
        workspace, received_us = self.workspace, self.received_us
        made = ids_of_run(self.id_run, len(self.items))
        # Positional, in the order of Event's fields (a third cheaper than by keyword). Every
        # message has a user and traits: ``of`` keeps no other batch.
        return [
            Event(
                workspace,
                message.messageId or mine,
                message.userId or message.anonymousId,  # type: ignore[arg-type]
                time_us(message.timestamp, received_us),
                traits_of(message),  # type: ignore[arg-type]
                SOURCE,
                EVENT_NAME,
                None,
                received_us,
            )
            for message, mine in zip(self.items, made, strict=True)
        ]
