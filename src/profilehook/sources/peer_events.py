"""What the SDK-compatible sources (segment.py, posthog.py, amplitude_http.py) share: the result
of mapping one request, ISO 8601 times, and the checks every event passes
(the native API's limits) before it may cross into the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from profilehook import constants as c
from profilehook.events import Event
from profilehook.plain_batch import KeptBatch
from profilehook.validation import holds_unstorable


@dataclass
class Mapped:
    """One request of a peer protocol, mapped: the events to store and what was left out.

    ``made``: the events made one by one; ``kept``: instead, when every call is an event of a
    batch the SQLite log keeps as it came (plain_segment_batch.py); ``events``: whichever.

    ``ignored``: calls that carry no property update (a track, a page view);
    ``skipped``: calls without a usable user id; ``rejected``: calls the peer itself would have
    dropped without failing the request (an invalid message in a Segment batch); ``too_old``:
    updates older than the retention window."""

    made: list[Event] = field(default_factory=list)
    kept: KeptBatch | None = None
    ignored: int = 0
    skipped: int = 0
    rejected: int = 0
    too_old: int = 0
    calls: int = 0
    failures: dict[int, str] = field(default_factory=dict)
    """Why each call left out as skipped or rejected was, by its index (for the peers that
    answer per call: PostHog's capture v1)."""

    @property
    def events(self) -> Sequence[Event]:
        return self.made if self.kept is None else self.kept


def iso_to_us(value: Any) -> int | None:
    """An ISO 8601 time (``2026-12-03T23:39:51.277+00:00``, ``…Z``; no zone is UTC) as
    microseconds since the epoch, or None when it is not one, or out of range."""
    if type(value) is not str or not 10 <= len(value) <= 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    us = round(moment.timestamp() * 1_000_000)
    return us if 0 <= us <= c.MAX_EVENT_TIME_S * 1_000_000 else None


def usable_id(value: Any, max_chars: int = c.MAX_CONTACT_ID_CHARS) -> str | None:
    """A user id as a contact id: a non-empty string (a number, as the SDKs stringify them)
    within the native API's limits; None when there is none."""
    if type(value) is int and not isinstance(value, bool):
        value = str(value)
    if type(value) is not str or not value or len(value) > max_chars or "\x00" in value:
        return None
    if len(value) * 4 > c.MAX_CONTACT_ID_BYTES and len(value.encode()) > c.MAX_CONTACT_ID_BYTES:
        return None
    return value


def usable_event_id(value: Any) -> str | None:
    """A peer's message id as an event_id, or None when it cannot be one."""
    found = usable_id(value, c.MAX_EVENT_ID_CHARS)
    if found is None or len(found.encode()) > c.MAX_EVENT_ID_BYTES:
        return None
    return found


def storable_properties(properties: dict[str, Any]) -> bool:
    """Whether an event may carry ``properties``: at most ``MAX_PROPERTIES_PER_EVENT`` names of
    1 to ``MAX_PROPERTY_NAME_CHARS`` characters, and only values every store keeps."""
    if len(properties) > c.MAX_PROPERTIES_PER_EVENT:
        return False
    for name in properties:
        if type(name) is not str or not 0 < len(name) <= c.MAX_PROPERTY_NAME_CHARS:
            return False
    return not holds_unstorable(properties)


def storable_names(properties: dict[str, Any]) -> bool:
    """``storable_properties(dict.fromkeys(properties))``: whether the names alone may be an
    event's (how many, their lengths, no U+0000), without building a dict to walk it."""
    if len(properties) > c.MAX_PROPERTIES_PER_EVENT:
        return False
    for name in properties:
        if (
            type(name) is not str
            or not 0 < len(name) <= c.MAX_PROPERTY_NAME_CHARS
            or "\x00" in name
        ):
            return False
    return True
