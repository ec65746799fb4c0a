"""PostHog's capture API (README, PostHog): request body -> events.

posthog-python sends ``{"api_key", "batch": [event, ...], "sent_at"}`` to ``/batch/``; the web
and older SDKs send one event, a list, or a batch to ``/capture/``, ``/e/`` or ``/i/v0/e/``,
with the project key as ``api_key`` or ``token`` (also inside an event's ``properties``). Any
event may update its person: ``$set``, ``$set_once`` (in ``properties``, or at the top level as
posthog-python's ``set()``/``set_once()`` send them) and ``$unset`` (a list of names) become
set, set_once and unset on the contact ``distinct_id`` as of the event's ``timestamp``, with
``uuid`` as the event_id. As PostHog applies them, ``$set`` wins over ``$set_once`` and
``$unset`` over both. Events that update nothing are ignored; a body that is not JSON, holds no
events, or an event whose ``uuid`` is not a UUID is refused whole (400), as PostHog does.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

from profilehook import constants as c
from profilehook.errors import PeerRefused
from profilehook.events import Event, Op, new_event_ids
from profilehook.sources.peer_events import (
    Mapped,
    iso_to_us,
    storable_names,
    storable_properties,
    usable_event_id,
    usable_id,
)
from profilehook.validation import decode_json_keeping_unstorable

SOURCE = "posthog"


class Request(msgspec.Struct, frozen=True):
    events: list[Any]
    api_key: str | None
    may_hold_unstorable: bool


def parse(body: bytes) -> Request:
    """Any capture body (object, list, or ``{"batch": [...]}``). Raises ``PeerRefused`` (400)."""
    value, problems, unstorable = decode_json_keeping_unstorable(
        body, in_pieces=len(body) > c.OFF_LOOP_BODY_BYTES
    )
    if problems:
        error = problems[0].get("ctx", {}).get("error") or problems[0]["msg"]
        raise PeerRefused(f"Invalid JSON in the request body: {error}")
    if type(value) is dict and "batch" in value:
        events = value["batch"]
    elif type(value) is dict and "event" in value:
        events = [value]
    else:
        events = value
    if type(events) is not list or not events:
        raise PeerRefused("No events in the request body")
    key = _key(value) if type(value) is dict else None
    if key is None:
        key = next((_key(e) for e in events if type(e) is dict and _key(e)), None)
    return Request(events, key, unstorable)


def _key(value: dict[str, Any]) -> str | None:
    for found in (value.get("api_key"), value.get("token")):
        if type(found) is str and found:
            return found
    properties = value.get("properties")
    if type(properties) is dict:
        found = properties.get("token") or properties.get("api_key")
        if type(found) is str and found:
            return found
    return None


def map_events(request: Request, workspace: str, received_us: int, oldest_us: int) -> Mapped:
    """The events that update a person, and the count of the others. Raises ``PeerRefused``
    for an event whose ``uuid`` is not a UUID (PostHog refuses the request)."""
    mapped = Mapped(calls=len(request.events))
    ids = new_event_ids(len(request.events))
    for index, (event, made_id) in enumerate(zip(request.events, ids, strict=True)):
        if type(event) is not dict:
            raise PeerRefused("Every event must be an object")
        given = event.get("uuid")
        if given is None:
            event_id: str | None = made_id
        elif type(given) is str and _CANONICAL_UUID(given):
            event_id = given  # 36 ASCII characters: an event_id as it is
        elif _is_uuid(given):
            event_id = usable_event_id(given)
        else:
            raise PeerRefused(f"Invalid uuid {given!r}: must be a UUID")
        left_out = _person_update(
            event, event_id, workspace, received_us, oldest_us, request, mapped
        )
        if left_out is not None:
            mapped.failures[index] = left_out
    return mapped


# The form the SDKs send (8-4-4-4-12 hex digits), which ``uuid.UUID`` takes; a match costs a
# fifth of building the UUID, which is left for the other forms it takes (braces, no dashes).
_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
).fullmatch


def _is_uuid(value: Any) -> bool:
    if type(value) is not str:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _person_update(
    event: dict[str, Any],
    event_id: str | None,
    workspace: str,
    received_us: int,
    oldest_us: int,
    request: Request,
    mapped: Mapped,
) -> str | None:
    """Map one event into ``mapped``; why it is left out when it is skipped or rejected."""
    properties = event.get("properties")
    if properties is None:
        properties = {}
    if type(properties) is not dict:
        mapped.rejected += 1
        return "properties is not an object"
    updates = _updates(event, properties)
    if updates is None:
        mapped.rejected += 1
        return "$set and $set_once must be objects, $unset a list of names"
    values, ops = updates
    if not values:
        mapped.ignored += 1
        return None
    contact_id = usable_id(event.get("distinct_id", properties.get("distinct_id")))
    if contact_id is None:
        mapped.skipped += 1
        return "no usable distinct_id"
    ts_us = _event_time(event, received_us)
    if (
        ts_us is None
        or event_id is None
        or (request.may_hold_unstorable and not storable_properties(values))
        or not storable_names(values)
    ):
        mapped.rejected += 1
        return "an invalid timestamp, or properties no store can keep"
    if ts_us < oldest_us:
        mapped.too_old += 1
        return "older than the retention window"
    name = event.get("event")
    mapped.made.append(
        Event(
            workspace,
            event_id,
            contact_id,
            ts_us,
            values,
            SOURCE,
            name if type(name) is str and name else "$set",
            None,
            received_us,
            "update",
            ops or None,
        )
    )
    return None


def _updates(
    event: dict[str, Any], properties: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Op]] | None:
    """The properties an event sets (``None``: unsets) and which of them are only set once;
    None when an update is of the wrong shape."""
    onces = (properties.get("$set_once"), event.get("$set_once"))
    sets = (properties.get("$set"), event.get("$set"))
    unsets = (properties.get("$unset"), event.get("$unset"))
    if onces == _NONE and unsets == _NONE and None in sets:
        # One $set alone (what set() and identify() send): its object is the properties.
        only = sets[1] if sets[0] is None else sets[0]
        if only is None:
            return {}, {}
        return (only, {}) if type(only) is dict else None
    values: dict[str, Any] = {}
    ops: dict[str, Op] = {}
    for once in onces:
        if once is None:
            continue
        if type(once) is not dict:
            return None
        values.update(once)
        ops.update(dict.fromkeys(once, "set_once"))
    for one in sets:
        if one is None:
            continue
        if type(one) is not dict:
            return None
        values.update(one)
        for name in one:
            ops.pop(name, None)
    for unset in unsets:
        if unset is None:
            continue
        names = list(unset) if type(unset) is dict else unset
        if type(names) is not list or not all(type(n) is str for n in names):
            return None
        values.update(dict.fromkeys(names))
        for name in names:
            ops.pop(name, None)
    return values, ops


_NONE = (None, None)


def _event_time(event: dict[str, Any], received_us: int) -> int | None:
    """``timestamp`` (ISO 8601), else ``offset`` (ms before receipt), else the receipt time."""
    stamp = event.get("timestamp")
    if stamp is not None:
        return iso_to_us(stamp)
    offset = event.get("offset")
    if type(offset) is int and 0 <= offset <= received_us // 1_000:
        return received_us - offset * 1_000
    return received_us
