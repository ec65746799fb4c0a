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

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from profilehook import constants as c
from profilehook.errors import PeerRefused
from profilehook.events import Event, new_event_id, new_event_ids
from profilehook.plain_segment_batch import (
    EPOCH,
    MAX_US,
    MICROSECOND,
    PlainSegmentBatch,
    StoredContext,
    StoredMessage,
)
from profilehook.plain_segment_batch import SOURCE as SOURCE  # (Segment's events')
from profilehook.sources.peer_events import (
    Mapped,
    iso_to_us,
    storable_properties,
    usable_event_id,
    usable_id,
)
from profilehook.validation import decode_json_keeping_unstorable, holds_escaped_nul

CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
"""The call types of the Tracking API; each has its single-call path ``/v1/<type>``."""


class Request(msgspec.Struct, frozen=True):
    """A request's messages, and the write key its body names (``writeKey``), if any; of a
    batch in the everyday shape, the ``body`` they were decoded from (else empty)."""

    messages: list[Any]
    write_key: str | None
    may_hold_unstorable: bool
    body: bytes = b""


def parse_batch(body: bytes) -> Request:
    """The body of ``/v1/batch`` or ``/v1/import``. Raises ``PeerRefused`` (400)."""
    if len(body) > c.SEGMENT_MAX_MESSAGE_BYTES:  # (else no message can be over the limit)
        _check_message_sizes(body)
    plain = _plainly(body)
    if plain is not None:
        return plain
    value, unstorable = _decoded(body)
    messages = value.get("batch")
    if not isinstance(messages, list):
        raise PeerRefused("Invalid JSON: the body has no list 'batch'")
    return Request(messages, _write_key(value), unstorable)


class _RawBatch(msgspec.Struct):
    batch: list[msgspec.Raw]


_decode_raw_batch = msgspec.json.Decoder(_RawBatch).decode


def _check_message_sizes(body: bytes) -> None:
    """Refuse a batch with a message over Segment's limit (a scan of the body, nothing built)."""
    try:
        messages = _decode_raw_batch(body).batch
    except (msgspec.DecodeError, UnicodeDecodeError):
        return  # not a batch: the parse says why
    if any(len(m) > c.SEGMENT_MAX_MESSAGE_BYTES for m in messages):
        raise PeerRefused(_too_large("a message", c.SEGMENT_MAX_MESSAGE_BYTES))


# -- the everyday shape, checked in C (as sources/native.py does) -----------------------------
#
# A batch as the SDKs send it decodes straight into these Structs: msgspec checks in C the
# types, the limits of names and values, and parses the times; fields that are not read (a
# track's properties, context, integrations) are skipped unbuilt. A body that does not fit
# goes to the general path, which decodes it again and judges each message.

_Name = Annotated[str, Meta(min_length=1, max_length=c.MAX_PROPERTY_NAME_CHARS)]
_Int = Annotated[int, Meta(ge=-c.MAX_JSON_INT, le=c.MAX_JSON_INT)]
_Traits = Annotated[
    dict[_Name, str | _Int | float | bool | None], Meta(max_length=c.MAX_PROPERTIES_PER_EVENT)
]
_Id = Annotated[
    str, Meta(min_length=1, max_length=min(c.MAX_EVENT_ID_CHARS, c.MAX_EVENT_ID_BYTES // 4))
]
_ContactId = Annotated[
    str, Meta(min_length=1, max_length=min(c.MAX_CONTACT_ID_CHARS, c.MAX_CONTACT_ID_BYTES // 4))
]


class _Context(StoredContext):
    traits: _Traits | None = None


class Message(StoredMessage):
    """A message of a batch in the everyday shape (plain_segment_batch.py's ``StoredMessage``
    with the limits every event's values must keep)."""

    type: str = ""
    userId: _ContactId | None = None
    anonymousId: _ContactId | None = None
    traits: _Traits | None = None
    context: _Context | None = None
    timestamp: datetime | None = None
    messageId: _Id | None = None


class _Batch(msgspec.Struct):
    batch: list[Message]
    writeKey: str | None = None


_decode_batch = msgspec.json.Decoder(_Batch).decode


def _plainly(body: bytes) -> Request | None:
    """The request, when the body is in the everyday shape; else None."""
    if holds_escaped_nul(body):
        return None
    try:
        found = _decode_batch(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return Request(found.batch, found.writeKey or None, False, body)


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
    if request.messages and type(request.messages[0]) is Message:  # all of them, then
        kept = PlainSegmentBatch.of(
            request.body, request.messages, workspace, received_us, oldest_us
        )
        if kept is not None:
            mapped.kept = kept
        else:
            _map_plain(request.messages, workspace, received_us, oldest_us, mapped)
        return mapped
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
    mapped.made.append(
        Event(workspace, event_id, contact_id, ts_us, traits, SOURCE, "identify", None, received_us)
    )


def _map_plain(
    messages: list[Message], workspace: str, received_us: int, oldest_us: int, mapped: Mapped
) -> None:
    """``_identify`` for the messages of a batch decoded in the everyday shape (their values
    checked by the decoder) that not all become events (else ``PlainSegmentBatch``): one loop,
    no call per message (``traits_of`` and ``time_us`` written out: a third of the loop's CPU;
    tests/test_sdk_endpoints.py checks both paths make the same events)."""
    events = mapped.made
    epoch, microsecond = EPOCH, MICROSECOND
    for message in messages:
        if message.type != "identify":
            mapped.ignored += 1
            continue
        contact_id = message.userId or message.anonymousId
        if contact_id is None:
            mapped.skipped += 1
            continue
        traits = message.traits
        if traits is None and message.context is not None:
            traits = message.context.traits
        if not traits:
            mapped.ignored += 1
            continue
        stamp = message.timestamp
        if stamp is None:
            ts_us = received_us
        else:
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            ts_us = (stamp - epoch) // microsecond
        if not 0 <= ts_us <= MAX_US:
            mapped.rejected += 1
            continue
        if ts_us < oldest_us:
            mapped.too_old += 1
            continue
        # Positional, in the order of Event's fields (a third cheaper than by keyword).
        events.append(
            Event(
                workspace,
                message.messageId or new_event_id(),
                contact_id,
                ts_us,
                traits,
                SOURCE,
                "identify",
                None,
                received_us,
            )
        )
