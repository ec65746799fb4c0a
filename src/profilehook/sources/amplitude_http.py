"""Amplitude's HTTP V2, Batch and Identify APIs (README, Amplitude SDK): request body -> events.
(The cohort webhook is sources/amplitude.py.)

amplitude-analytics sends ``{"api_key", "events": [...], "options"?}`` to its ``server_url``
(HTTP V2 or Batch: the same body); the Identify API takes a form with ``api_key`` and
``identification`` (one JSON object or a list). An event's ``user_properties`` update the
contact ``user_id`` as of ``time`` (ms), with ``insert_id`` as the event_id: ``$set``,
``$setOnce``, ``$add``, ``$append`` (and ``$postInsert``, which is what profilehook's append
does), ``$remove``, ``$unset`` (``{"name": "-"}``), ``$clearAll`` (the contact deleted as of
that time: every property absent) and plain keys as ``$set``. ``$prepend`` and ``$preInsert``
have no counterpart and are left out. Amplitude's SDK takes its outcome from the answer's JSON
``code``, so every answer carries it; an event it cannot take fails the request with
``events_with_invalid_fields`` (400), as Amplitude does, and the SDK retries the others.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qs

import msgspec

from profilehook import constants as c
from profilehook.constants import MAX_JSON_INT
from profilehook.errors import PeerRefused
from profilehook.events import Event, Kind, Op, new_event_ids
from profilehook.sources.peer_events import (
    Mapped,
    storable_names,
    storable_properties,
    usable_event_id,
    usable_id,
)
from profilehook.validation import decode_json_keeping_unstorable

SOURCE = "amplitude_http"
_OPS: dict[str, Op | None] = {
    "$setOnce": "set_once",
    "$add": "add",
    "$append": "append",
    "$postInsert": "append",
    "$remove": "remove",
}
_SETS = ("$set",)
_LEFT_OUT = ("$prepend", "$preInsert")


class Request(msgspec.Struct, frozen=True):
    events: list[Any]
    api_key: str
    may_hold_unstorable: bool


def parse_json(body: bytes) -> Request:
    """An HTTP V2 or Batch API body. Raises ``PeerRefused`` (400) as Amplitude answers."""
    value, unstorable = _decoded(body)
    if type(value) is not dict:
        raise PeerRefused("Invalid JSON request body")
    key = value.get("api_key")
    if type(key) is not str or not key:
        raise PeerRefused("Request missing required field", {"missing_field": "api_key"})
    events = value.get("events")
    if type(events) is not list or not events:
        raise PeerRefused("Request missing required field", {"missing_field": "events"})
    return Request(events, key, unstorable)


def parse_identify_form(body: bytes) -> Request:
    """An Identify API form (``api_key``, ``identification``). Raises ``PeerRefused`` (400)."""
    try:
        form = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise PeerRefused("Invalid form body") from None
    key = form.get("api_key", [""])[-1]
    if not key:
        raise PeerRefused("Request missing required field", {"missing_field": "api_key"})
    if "identification" not in form:
        raise PeerRefused("Request missing required field", {"missing_field": "identification"})
    value, unstorable = _decoded(form["identification"][-1].encode())
    events = value if type(value) is list else [value]
    if not events:
        raise PeerRefused("Request missing required field", {"missing_field": "identification"})
    return Request(events, key, unstorable)


def _decoded(body: bytes) -> tuple[Any, bool]:
    value, problems, unstorable = decode_json_keeping_unstorable(
        body, in_pieces=len(body) > c.OFF_LOOP_BODY_BYTES
    )
    if problems:
        raise PeerRefused("Invalid JSON request body")
    return value, unstorable


def map_events(request: Request, workspace: str, received_us: int, oldest_us: int) -> Mapped:
    """One event per event that updates user properties. Raises ``PeerRefused`` listing, per
    field, the indexes of the events that cannot be taken (nothing is stored then)."""
    mapped = Mapped(calls=len(request.events))
    invalid: dict[str, list[int]] = {}
    ids = new_event_ids(len(request.events))
    for index, (event, made_id) in enumerate(zip(request.events, ids, strict=True)):
        field = _map_one(event, made_id, workspace, received_us, oldest_us, request, mapped)
        if field is not None:
            invalid.setdefault(field, []).append(index)
    if invalid:
        raise PeerRefused(
            "Request contains invalid fields", {"events_with_invalid_fields": invalid}
        )
    return mapped


def _map_one(
    event: Any,
    made_id: str,
    workspace: str,
    received_us: int,
    oldest_us: int,
    request: Request,
    mapped: Mapped,
) -> str | None:
    """Map one event into ``mapped``; the name of its invalid field, if it has one."""
    if type(event) is not dict:
        return "event"
    given = event.get("user_properties")
    if given is not None and type(given) is not dict:
        return "user_properties"
    time_ms = event.get("time")
    if time_ms is not None and (type(time_ms) is not int or time_ms < 0):
        return "time"
    insert_id = event.get("insert_id")
    event_id = made_id if insert_id is None else usable_event_id(insert_id)
    if event_id is None:
        return "insert_id"
    update = _update(given or {})
    if update is None or (request.may_hold_unstorable and not storable_properties(update[0])):
        return "user_properties"
    properties, ops, clear_all = update
    if not properties and not clear_all:
        mapped.ignored += 1
        return None
    contact_id = usable_id(event.get("user_id"))
    if contact_id is None:
        mapped.skipped += 1
        return None
    ts_us = received_us if time_ms is None else time_ms * 1_000
    if ts_us < oldest_us:
        mapped.too_old += 1
        return None
    name = event.get("event_type")
    name = name if type(name) is str and name else "$identify"
    kind: Kind = "delete" if clear_all else "update"
    mapped.made.append(
        Event(
            workspace,
            event_id,
            contact_id,
            ts_us,
            {} if clear_all else properties,
            SOURCE,
            name,
            None,
            received_us,
            kind,
            None if clear_all else ops or None,
        )
    )
    return None


def _update(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Op], bool] | None:
    """(properties, their operations, whether ``$clearAll``), or None when invalid: an
    operation that is not an object, a non-number to ``$add``, a name in two operations."""
    if len(given) == 1 and "$set" in given:
        # A $set alone (what identify() sends): its object is the properties.
        sets = given["$set"]
        if type(sets) is not dict or not storable_names(sets):
            return None
        return sets, {}, False
    properties: dict[str, Any] = {}
    ops: dict[str, Op] = {}
    clear_all = False
    for key, value in given.items():
        if key == "$clearAll":
            clear_all = True
            continue
        if not key.startswith("$"):
            if key in properties:
                return None
            properties[key] = value
            continue
        if key in _LEFT_OUT:
            continue
        if type(value) is not dict:
            return None
        for name, argument in value.items():
            if name in properties:
                return None
            if key == "$unset":
                properties[name] = None
            elif key in _SETS:
                properties[name] = argument
            elif key in _OPS:
                op = _OPS[key]
                assert op is not None
                found = _argument(op, argument)
                if found is None:
                    return None
                properties[name], ops[name] = found, op
            else:
                return None  # an operation Amplitude does not have
    if not storable_names(properties):
        return None
    return properties, ops, clear_all


def _argument(op: Op, value: Any) -> Any:
    if op == "add":
        if type(value) is str:  # Amplitude takes numbers in strings
            try:
                number = int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                return None
            return number if math.isfinite(number) and abs(number) <= MAX_JSON_INT else None
        return value if type(value) in (int, float) else None
    if op in ("append", "remove"):
        return value if type(value) is list else [value]
    return value
