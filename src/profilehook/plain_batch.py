"""The everyday batch of the native API, and how the SQLite log keeps it: as the client's JSON.

A batch of sets only, its times in seconds (what SDKs send), decodes into ``PlainBatch``:
msgspec checks in C, as it decodes, all that makes its every event valid (sources/native.py
tries it first). Its events are what the handler answers for and the log keeps; but the SQLite
log need not keep them re-encoded one by one: it keeps a body with no JSON escape as it came,
with what its events share (the workspace, the time of receipt, the ``IdRun`` their ids were
made from), and its reader makes the same events again (``PlainBatch.from_record``). On the
event loop that is neither an ``Event`` made nor one encoded an event, the most of what the
batch endpoint did beyond decoding (benchmarks/README.md). A ``PlainBatch`` is a sequence of
its events, made when first asked for: a log that keeps events (NATS, memory) takes it as any
other. What it shares with Segment's batch kept the same way (plain_segment_batch.py) is
``KeptBatch``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, ClassVar, Self, overload

import msgspec
from msgspec import Meta

from profilehook import constants as c
from profilehook.events import Event, IdRun, ids_of_run, new_id_run

SOURCE = "api"  # the native API's events (sources/native.py)

# Within these, a string's UTF-8 form cannot exceed its byte cap (4 bytes a character at most).
PLAIN_ID_CHARS = min(c.MAX_CONTACT_ID_CHARS, c.MAX_CONTACT_ID_BYTES // 4)
PLAIN_EVENT_ID_CHARS = min(c.MAX_EVENT_ID_CHARS, c.MAX_EVENT_ID_BYTES // 4)
PropertyName = Annotated[str, Meta(min_length=1, max_length=c.MAX_PROPERTY_NAME_CHARS)]
Int = Annotated[int, Meta(ge=-c.MAX_JSON_INT, le=c.MAX_JSON_INT)]
Scalar = str | Int | float | bool | None
Properties = Annotated[dict[PropertyName, Scalar], Meta(max_length=c.MAX_PROPERTIES_PER_EVENT)]
ContactId = Annotated[str, Meta(min_length=1, max_length=PLAIN_ID_CHARS)]
EventId = Annotated[str, Meta(min_length=1, max_length=PLAIN_EVENT_ID_CHARS)]
# An operation's field, or a time in milliseconds, fails these: such a batch is another path's.
_Seconds = Annotated[int, Meta(ge=0, lt=int(c.MILLISECONDS_THRESHOLD))]
_FractionalSeconds = Annotated[float, Meta(ge=0, lt=c.MILLISECONDS_THRESHOLD)]


_Value = str | int | float | bool | None


# gc=False: decoded JSON cannot refer back to the Struct that holds it, so no cycle can run
# through one, and the collector need not track it (benchmarks/README.md).
class StoredItem(msgspec.Struct, gc=False):
    """An item as the log's reader decodes it: ``PlainItem``'s fields without its limits, so
    that a body accepted once reads the same whatever limits a later version sets."""

    contact_id: str
    event_name: str
    timestamp: int | float
    user_properties: dict[str, _Value]
    metadata: dict[str, _Value] | None = None
    event_id: str | None = None


class PlainItem(StoredItem, forbid_unknown_fields=True):
    """An item of a request's body, checked as it is decoded."""

    contact_id: ContactId
    event_name: PropertyName
    timestamp: _Seconds | _FractionalSeconds
    user_properties: Properties
    metadata: dict[str, Scalar] | None = None
    event_id: EventId | None = None


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[PlainItem], Meta(min_length=1, max_length=c.MAX_BATCH_EVENTS)]


class _Stored(msgspec.Struct):
    events: list[StoredItem]


decode_plain_body = msgspec.json.Decoder(_Body).decode
"""A body -> its items; raises ``msgspec.DecodeError`` (``ValidationError`` included) for a
body not in the plain shape. (A body holding an escaped NUL decodes: native.py refuses it
before.)"""
_decode_stored = msgspec.json.Decoder(_Stored).decode


class KeptBatch(Sequence[Event]):
    """A request's events, every one of its messages an event, that the SQLite log may keep as
    the request's ``body`` came (``items``: the messages decoded from it), with what they share:
    the ``workspace``, the time of receipt ``received_us``, and the ``IdRun`` the ids of those
    without one are made from. The log tells the shapes apart by ``RECORD``; each makes from
    ``items`` the events the handler answered for, when first asked for. The shapes:
    ``PlainBatch`` (the native API's) and ``PlainSegmentBatch`` (plain_segment_batch.py)."""

    __slots__ = ("_events", "body", "id_run", "items", "received_us", "workspace")

    RECORD: ClassVar[int]
    """The log's code for the shape (queues/sqlite.py): never reused for another."""

    def __init__(
        self, workspace: str, received_us: int, id_run: IdRun, body: bytes, items: list[Any]
    ):
        self.workspace = workspace
        self.received_us = received_us
        self.id_run = id_run
        self.body = body
        self.items = items
        self._events: list[Event] | None = None

    @classmethod
    def received(cls, body: bytes, items: list[Any], workspace: str, received_us: int) -> Self:
        """The batch of a request just decoded: its ids' run made now."""
        return cls(workspace, received_us, new_id_run(), body, items)

    @classmethod
    def from_record(cls, workspace: str, received_us: int, id_run: IdRun, body: bytes) -> Self:
        """The batch the log kept (``received`` made it): the same events. Raises
        ``msgspec.DecodeError`` for a body that is not a batch (a corrupt record)."""
        return cls(workspace, received_us, id_run, body, cls._stored_items(body))

    @staticmethod
    @abstractmethod
    def _stored_items(body: bytes) -> list[Any]:
        """The items of a kept body, decoded without the limits a request's were checked
        against, so that a body accepted once reads the same whatever limits a later version
        sets."""

    @abstractmethod
    def _made(self) -> list[Event]:
        """The events of ``items``."""

    def events(self) -> list[Event]:
        if self._events is None:
            self._events = self._made()
        return self._events

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        return self.events()[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())


class PlainBatch(KeptBatch):
    """A plain batch's events: ``items`` (``PlainItem``, or ``StoredItem`` as the log's reader
    decodes them)."""

    __slots__ = ()
    RECORD = 1

    items: list[PlainItem] | list[StoredItem]

    @staticmethod
    def _stored_items(body: bytes) -> list[Any]:
        return _decode_stored(body).events

    def oldest_us(self) -> int:
        """The earliest event time, in microseconds."""
        return min(_times_us(self.items))

    def event_ids(self) -> list[str]:
        """The events' ids, in order (an item's own, or the one made for it)."""
        if self._events is not None:
            return [event.event_id for event in self._events]
        made = ids_of_run(self.id_run, len(self.items))
        return [item.event_id or mine for item, mine in zip(self.items, made, strict=True)]

    def _made(self) -> list[Event]:
        workspace, received_us = self.workspace, self.received_us
        made = ids_of_run(self.id_run, len(self.items))
        # Positional, in the order of Event's fields (a third cheaper than by keyword).
        return [
            Event(
                workspace,
                item.event_id or mine,
                item.contact_id,
                us,
                item.user_properties,
                SOURCE,
                item.event_name,
                item.metadata,
                received_us,
            )
            for item, mine, us in zip(self.items, made, _times_us(self.items), strict=True)
        ]


def _times_us(items: list[PlainItem] | list[StoredItem]) -> list[int]:
    """The items' times in microseconds, as ``timestamp_to_us`` makes them of the seconds their
    Structs kept (one comprehension for all: this runs for every event the log reads)."""
    return [
        ts * 1_000_000 if type(ts := item.timestamp) is int else round(ts * 1_000_000)
        for item in items
    ]
