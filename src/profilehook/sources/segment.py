"""The Segment HTTP Tracking API (README, Segment and RudderStack): request body -> events.

Segment's SDKs, and RudderStack's (which speak the same protocol), send ``{"batch": [message,
...], "sentAt", "writeKey"?}`` to ``/v1/batch`` (``/v1/import`` is analytics-ruby's name for the
same), or one message to ``/v1/<type>``. An ``identify`` sets its traits on the contact
``userId`` (else ``anonymousId``) as of its ``timestamp``, with ``messageId`` as the event_id;
rudder-sdk-python sends the traits as ``context.traits``. Every other call type is accepted and
counted as ignored. As Segment does, a batch over its limits (32 KB a message, 500 KB in all) or
that is not JSON is refused whole (400); an invalid message inside a valid batch is dropped and
counted, and the batch answered 200.
"""

from __future__ import annotations

from typing import Any

import msgspec

from profilehook import constants as c
from profilehook.events import Event, new_event_ids
from profilehook.sources.peer_events import (
    Mapped,
    PeerRefused,
    iso_to_us,
    storable_properties,
    usable_event_id,
    usable_id,
)
from profilehook.validation import decode_json_keeping_unstorable

SOURCE = "segment"
CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
"""The call types of the Tracking API; each has its single-call path ``/v1/<type>``."""


class Request(msgspec.Struct, frozen=True):
    """A request's messages, and the write key its body names (``writeKey``), if any."""

    messages: list[Any]
    write_key: str | None
    may_hold_unstorable: bool


def parse_batch(body: bytes) -> Request:
    """The body of ``/v1/batch`` or ``/v1/import``. Raises ``PeerRefused`` (400)."""
    value, unstorable = _decoded(body)
    messages = value.get("batch")
    if not isinstance(messages, list):
        raise PeerRefused("Invalid JSON: the body has no list 'batch'")
    if len(body) > c.SEGMENT_MAX_MESSAGE_BYTES:  # (else no message can be over the limit)
        for message in messages:
            if len(msgspec.json.encode(message)) > c.SEGMENT_MAX_MESSAGE_BYTES:
                raise PeerRefused(_too_large("a message", c.SEGMENT_MAX_MESSAGE_BYTES))
    return Request(messages, _write_key(value), unstorable)


def parse_single(body: bytes, call_type: str) -> Request:
    """The body of ``/v1/<call_type>``: one message, whose type the path gives. Raises
    ``PeerRefused`` (400)."""
    if len(body) > c.SEGMENT_MAX_MESSAGE_BYTES:
        raise PeerRefused(_too_large("a message", c.SEGMENT_MAX_MESSAGE_BYTES))
    value, unstorable = _decoded(body)
    return Request([{**value, "type": call_type}], _write_key(value), unstorable)


def _decoded(body: bytes) -> tuple[dict[str, Any], bool]:
    value, problems, unstorable = decode_json_keeping_unstorable(body)
    if problems:
        error = problems[0].get("ctx", {}).get("error") or problems[0]["msg"]
        raise PeerRefused(f"Invalid JSON: {error}")
    if not isinstance(value, dict):
        raise PeerRefused("Invalid JSON: the body is not an object")
    return value, unstorable


def _write_key(value: dict[str, Any]) -> str | None:
    key = value.get("writeKey")
    return key if isinstance(key, str) and key else None


def _too_large(what: str, limit_bytes: int) -> str:
    return f"Payload too large: {what} is over {limit_bytes // 1024} KB"


def map_messages(request: Request, workspace: str, received_us: int, oldest_us: int) -> Mapped:
    """The events of a request's identify calls, and the count of everything else."""
    mapped = Mapped(calls=len(request.messages))
    ids = new_event_ids(len(request.messages))  # for the messages without a messageId
    for message, made_id in zip(request.messages, ids, strict=True):
        if type(message) is not dict:
            mapped.rejected += 1
            continue
        if message.get("type") != "identify":
            mapped.ignored += 1
            continue
        _identify(message, made_id, workspace, received_us, oldest_us, request, mapped)
    return mapped


def _identify(
    message: dict[str, Any],
    made_id: str,
    workspace: str,
    received_us: int,
    oldest_us: int,
    request: Request,
    mapped: Mapped,
) -> None:
    contact_id = usable_id(message.get("userId")) or usable_id(message.get("anonymousId"))
    if contact_id is None:
        mapped.skipped += 1
        return
    traits = message.get("traits")
    if traits is None:
        context = message.get("context")
        traits = context.get("traits") if type(context) is dict else None
    if not traits:
        mapped.ignored += 1  # an identify without traits changes no property
        return
    stamp = message.get("timestamp")
    ts_us = received_us if stamp is None else iso_to_us(stamp)
    message_id = message.get("messageId")
    event_id = made_id if message_id is None else usable_event_id(message_id)
    if (
        type(traits) is not dict
        or ts_us is None
        or event_id is None
        or (request.may_hold_unstorable and not storable_properties(traits))
        or len(traits) > c.MAX_PROPERTIES_PER_EVENT
        or not all(type(n) is str and 0 < len(n) <= c.MAX_PROPERTY_NAME_CHARS for n in traits)
    ):
        mapped.rejected += 1
        return
    if ts_us < oldest_us:
        mapped.too_old += 1
        return
    mapped.events.append(
        Event(workspace, event_id, contact_id, ts_us, traits, SOURCE, "identify", None, received_us)
    )
