"""A change: one applied event's effect on one profile (README, Getting changes out), as the change feed serves it
and destinations receive it.

A store keeps each change as its position in the feed (the cursor, the store's own) beside the
``ChangeBody``: the properties that changed from what to what, whether the event deleted the
contact, and the segments the contact entered or left. Values are kept exactly (compact JSON,
integers of any size): ``1``, ``1.0`` and ``true`` stay three different values, as in the
profile.
"""

from __future__ import annotations

from typing import Any

import msgspec

from profilehook.events import iso


class PropertyChange(msgspec.Struct, frozen=True, array_like=True):
    """A property's value before and after (None: it had none, or has none now)."""

    old: Any = None
    new: Any = None


class SegmentChanges(msgspec.Struct, frozen=True, array_like=True):
    """The segments (by id) the contact entered and left with the change. Filled by the
    segments' membership where it is computed; empty until then."""

    entered: list[str] = msgspec.field(default_factory=list)
    exited: list[str] = msgspec.field(default_factory=list)


class ChangeBody(msgspec.Struct, frozen=True, array_like=True):
    """What a change says, stored once per change beside its position."""

    source: str
    deleted: bool
    properties: dict[str, PropertyChange]
    segments: SegmentChanges = msgspec.field(default_factory=SegmentChanges)


class ChangeRecord(msgspec.Struct, frozen=True):
    """A change made by ``apply``, before the store gives it its place in the feed."""

    workspace: str
    contact_id: str
    event_id: str
    body: ChangeBody


class Change(msgspec.Struct, frozen=True):
    """A change as the feed serves it: ``cursor`` is its position (what ``after`` takes),
    ``change_id`` its stable id (a destination's ``webhook-id``)."""

    change_id: str
    cursor: str
    workspace: str
    contact_id: str
    event_id: str
    applied_us: int
    body: ChangeBody

    def view(self) -> dict[str, Any]:
        """The change's JSON form."""
        body = self.body
        return {
            "change_id": self.change_id,
            "cursor": self.cursor,
            "contact_id": self.contact_id,
            "event_id": self.event_id,
            "source": body.source,
            "applied_at": iso(self.applied_us),
            "deleted": body.deleted,
            "properties": {
                name: {"old": p.old, "new": p.new} for name, p in body.properties.items()
            },
            "segments": {"entered": body.segments.entered, "exited": body.segments.exited},
        }


# JSON rather than msgpack: a sum of adds may be an integer beyond msgpack's 64 bits.
encode_body = msgspec.json.Encoder().encode
_decode_body = msgspec.json.Decoder(ChangeBody).decode


def decode_body(data: bytes) -> ChangeBody:
    return _decode_body(data)


def change_id(cursor: str) -> str:
    """A change's id: made from its position, which no other change of the store ever takes."""
    return f"chg_{cursor}"
