"""The native JSON API (README, Sending updates): request body -> events, or every problem found."""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from profilehook import constants as c
from profilehook.errors import ValidationFailed
from profilehook.events import Event, Op, new_event_id, new_event_ids
from profilehook.plain_batch import (
    PLAIN_EVENT_ID_CHARS,
    PLAIN_ID_CHARS,
    ContactId,
    EventId,
    Int,
    PlainBatch,
    Properties,
    PropertyName,
    Scalar,
    decode_plain_body,
)
from profilehook.plain_batch import SOURCE as SOURCE  # (the native API's events')
from profilehook.validation import (
    Loc,
    Problem,
    decode_json,
    dict_type,
    fits_bytes,
    holds_escaped_nul,
    missing,
    problem,
    required_string,
    string_type,
    too_long,
    too_old,
    too_short,
    value_error,
)


def parse_single(body: bytes, workspace: str, received_us: int, oldest_us: int = 0) -> Event:
    """Body of ``POST /v1/properties`` -> one event. Raises ``ValidationFailed`` (422).

    ``oldest_us``: the oldest event time accepted (the retention window's start; 0: any)."""
    flat = _decoded_flat(_decode_flat_event, body)
    if flat is not None:
        event = _flat_event(flat, workspace, received_us, flat.event_id or new_event_id())
        if event is not None and event.ts_us >= oldest_us:
            return event
    return _single_in_general(body, workspace, received_us, oldest_us)


def _single_in_general(body: bytes, workspace: str, received_us: int, oldest_us: int = 0) -> Event:
    value, problems = decode_json(body)
    if problems:
        raise ValidationFailed(problems)
    result = event_from_object(value, workspace, received_us, ("body",), oldest_us)
    if isinstance(result, Event):
        return result
    raise ValidationFailed(result)


BatchItem = Event | list[Problem]


def parse_batch(
    body: bytes, workspace: str, received_us: int, oldest_us: int = 0
) -> list[BatchItem]:
    """Body of ``POST /v1/properties/batch`` -> per item an event or its problems.

    Raises ``ValidationFailed`` when the envelope is wrong or no item is valid. ``oldest_us``
    as for ``parse_single``.
    """
    events = whole_batch(body, workspace, received_us, oldest_us)
    if events is not None:
        return list(events)
    return batch_in_general(body, workspace, received_us, oldest_us)


def whole_batch(
    body: bytes, workspace: str, received_us: int, oldest_us: int = 0
) -> list[Event] | PlainBatch | None:
    """The events of a batch body in the everyday shapes whose every item is valid (what
    ``parse_batch`` returns for it), the plainest as a ``PlainBatch``; None for any other body:
    ``batch_in_general`` decides."""
    plain = _decoded_flat(decode_plain_body, body)
    if plain is not None:
        batch = PlainBatch.received(body, plain.events, workspace, received_us)
        return None if oldest_us and batch.oldest_us() < oldest_us else batch
    flat = _decoded_flat(_decode_flat_batch, body)
    if flat is None:
        return None
    ids = new_event_ids(len(flat.events))  # (a few unused ones cost less than a test each)
    events = [
        _flat_event(item, workspace, received_us, item.event_id or made)
        for item, made in zip(flat.events, ids, strict=True)
    ]
    if None in events or (oldest_us and min(e.ts_us for e in events) < oldest_us):  # type: ignore[union-attr]
        return None
    return events  # type: ignore[return-value]


def batch_in_general(
    body: bytes, workspace: str, received_us: int, oldest_us: int = 0
) -> list[BatchItem]:
    """``parse_batch`` for any body: every item checked and explained (``whole_batch`` first
    takes the everyday bodies for less)."""
    value, problems = decode_json(body, shallow=_flat_batch)
    if problems:
        raise ValidationFailed(problems)
    if not isinstance(value, dict):
        raise ValidationFailed([_not_an_object(("body",), value)])
    items = value.get("events")
    loc: Loc = ("body", "events")
    if items is None:
        raise ValidationFailed([missing(loc, value)])
    if not isinstance(items, list):
        raise ValidationFailed([problem("list_type", loc, "Input should be a valid list", items)])
    if not 1 <= len(items) <= c.MAX_BATCH_EVENTS:
        raise ValidationFailed([_list_length(loc, items)])
    results = [
        event_from_object(item, workspace, received_us, (*loc, index), oldest_us)
        for index, item in enumerate(items)
    ]
    if not any(isinstance(r, Event) for r in results):
        raise ValidationFailed([p for r in results if not isinstance(r, Event) for p in r])
    return results


# -- the everyday shape, checked in C ---------------------------------------------------------
#
# Most bodies are flat: the known fields only, properties and metadata of scalars; the plainest
# of them (sets only, times in seconds) are plain_batch.py's. Decoding
# straight into these Structs makes msgspec check, in C, all that ``_plainly_valid`` checks but
# the time, and bounds the depth; a body that does not fit (or holds an escaped NUL) goes to
# the general path, which decodes it again, decides and explains. ``test_native_api`` checks
# that both paths make the same events.

_Lists = dict[PropertyName, list[Scalar]]


# gc=False (here, in PlainItem and in Event): decoded JSON cannot refer back to the Struct that
# holds it, so no cycle can run through one, and the collector need not track it; making and
# freeing a request's hundreds of them then skips the collector's list (benchmarks/README.md).
class _Flat(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    contact_id: ContactId
    event_name: PropertyName
    timestamp: Int | float  # (an integer past a double would overflow timestamp_to_us)
    # Absent only with an operation below (null is the general path's to refuse).
    user_properties: Properties | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Scalar] | None = None
    event_id: EventId | None = None
    # The operations (README, Property operations), in their everyday shapes (msgspec takes
    # no boolean for a number); a name in two of them, or too many names, is the general
    # path's to explain.
    set_once: Properties | None = None
    add: dict[PropertyName, Int | float] | None = None
    append: _Lists | None = None
    remove: _Lists | None = None
    unset: list[PropertyName] | None = None


class _FlatBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[_Flat], Meta(min_length=1, max_length=c.MAX_BATCH_EVENTS)]


_decode_flat_event = msgspec.json.Decoder(_Flat).decode
_decode_flat_batch = msgspec.json.Decoder(_FlatBatch).decode


def _decoded_flat(decode: Any, body: bytes) -> Any:
    """``decode(body)``, or None when the body is not in the everyday shape."""
    # NUL is refused, with its place: the general path says where.
    if holds_escaped_nul(body):
        return None
    try:
        return decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):  # (ValidationError is a DecodeError)
        return None


def _flat_event(flat: _Flat, workspace: str, received_us: int, event_id: str) -> Event | None:
    ts = flat.timestamp
    ts_us: int | None
    if type(ts) is int and 0 <= ts < c.MILLISECONDS_THRESHOLD:  # whole seconds, as most send
        ts_us = ts * 1_000_000
    else:
        ts_us = timestamp_to_us(ts)
        if ts_us is None:
            return None
    properties = None if flat.user_properties is msgspec.UNSET else flat.user_properties
    ops: dict[str, Op] | None = None
    if (
        flat.set_once is not None
        or flat.add is not None
        or flat.append is not None
        or flat.remove is not None
        or flat.unset is not None
    ):
        properties, ops = _flat_operations(flat)
    if properties is None:
        return None
    # Positional: a third cheaper than by keyword, in the order of Event's fields.
    return Event(
        workspace,
        event_id,
        flat.contact_id,
        ts_us,
        properties,
        SOURCE,
        flat.event_name,
        flat.metadata,
        received_us,
        "update",
        ops,
    )


def _flat_operations(flat: _Flat) -> tuple[dict[str, Any] | None, dict[str, Op] | None]:
    """A flat event's properties and operations; (None, None) when a name is in two of them
    or there are too many (the general path explains)."""
    properties: dict[str, Any] = (
        {} if flat.user_properties is msgspec.UNSET else dict(flat.user_properties)
    )
    ops: dict[str, Op] = {}
    count = len(properties)
    for op, given in (
        ("set_once", flat.set_once),
        ("add", flat.add),
        ("append", flat.append),
        ("remove", flat.remove),
    ):
        if given:
            properties.update(given)
            ops.update(dict.fromkeys(given, op))  # type: ignore[arg-type]
            count += len(given)
    if flat.unset:
        properties.update(dict.fromkeys(flat.unset))
        count += len(flat.unset)
    if len(properties) != count or count > c.MAX_PROPERTIES_PER_EVENT:
        return None, None
    return properties, ops or None


def _flat_batch(value: Any) -> bool:
    """True when ``value`` is a batch of flat events: an object whose only container is
    ``events``, a list of objects whose values are scalars or objects of scalars. It then nests
    4 deep at most, which ``decode_json`` need not walk the whole tree to know."""
    if type(value) is not dict:
        return False
    for name, item in value.items():
        if name != "events" and (type(item) is dict or type(item) is list):
            return False
    events = value.get("events")
    if type(events) is not list:
        return type(events) is not dict  # an object there may nest any depth
    for event in events:
        if type(event) is not dict:
            if type(event) is list:
                return False
            continue
        for field in event.values():
            kind = type(field)
            if kind is list:
                return False
            if kind is dict:
                for inner in field.values():
                    if type(inner) is dict or type(inner) is list:
                        return False
    return True


def event_from_object(
    value: Any, workspace: str, received_us: int, loc: Loc, oldest_us: int = 0
) -> BatchItem:
    """Validate one decoded event object; return the event or every problem found in it (an
    event time before ``oldest_us``, the retention window's start, is one)."""
    event = _plainly_valid(value, workspace, received_us) if type(value) is dict else None
    if event is not None and event.ts_us >= oldest_us:
        return event
    return _checked(value, workspace, received_us, loc, oldest_us)


def _plainly_valid(value: dict[str, Any], workspace: str, received_us: int) -> Event | None:
    """The event, when ``value`` is valid in the everyday way (``timestamp`` in seconds, ids
    well within their caps); None sends it to ``_checked``, which decides and explains. The
    hot path of both ingest endpoints: a few type and length checks, no problem bookkeeping.
    ``test_native_api`` checks that both give the same events."""
    contact_id = value.get("contact_id")
    event_name = value.get("event_name")
    timestamp = value.get("timestamp")
    properties = value.get("user_properties")
    metadata = value.get("metadata")
    event_id = value.get("event_id")
    if not (
        value.keys().isdisjoint(OPERATION_FIELDS)
        and type(contact_id) is str
        and 0 < len(contact_id) <= PLAIN_ID_CHARS
        and type(event_name) is str
        and 0 < len(event_name) <= c.MAX_PROPERTY_NAME_CHARS
        and (type(timestamp) is int or type(timestamp) is float)
        and 0 <= timestamp < c.MILLISECONDS_THRESHOLD
        and type(properties) is dict
        and len(properties) <= c.MAX_PROPERTIES_PER_EVENT
        and (metadata is None or type(metadata) is dict)
        and (
            event_id is None
            or (type(event_id) is str and 0 < len(event_id) <= PLAIN_EVENT_ID_CHARS)
        )
    ):
        return None
    for name in properties:
        if not name or len(name) > c.MAX_PROPERTY_NAME_CHARS:
            return None
    return Event(
        workspace=workspace,
        event_id=event_id or new_event_id(),
        contact_id=contact_id,
        ts_us=round(timestamp * 1_000_000),
        properties=properties,
        source=SOURCE,
        event_name=event_name,
        metadata=metadata,
        received_us=received_us,
    )


def _checked(
    value: Any, workspace: str, received_us: int, loc: Loc, oldest_us: int = 0
) -> BatchItem:
    """Every check, with a problem for each failure: the event, or all that is wrong with it."""
    if not isinstance(value, dict):
        return [_not_an_object(loc, value)]
    problems: list[Problem] = []
    contact_id = _required_string(value, "contact_id", loc, problems, c.MAX_CONTACT_ID_CHARS)
    contact_id = fits_bytes(contact_id, (*loc, "contact_id"), problems, c.MAX_CONTACT_ID_BYTES)
    event_name = _required_string(value, "event_name", loc, problems, c.MAX_PROPERTY_NAME_CHARS)
    ts_us = _event_time(value, loc, problems, oldest_us)
    event_id = _event_id(value.get("event_id"), (*loc, "event_id"), problems)
    operating = not value.keys().isdisjoint(OPERATION_FIELDS)
    properties = _properties(value, loc, problems, optional=operating)
    ops: dict[str, Op] | None = None
    if operating:  # (checked when user_properties is wrong too: every problem is listed)
        every, ops = _operations(value, properties or {}, loc, problems)
        properties = None if properties is None else every
    metadata = value.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        problems.append(dict_type((*loc, "metadata"), metadata))
    if problems:
        return problems
    return Event(
        workspace=workspace,
        event_id=event_id or new_event_id(),
        contact_id=contact_id,  # type: ignore[arg-type]
        ts_us=ts_us,  # type: ignore[arg-type]
        properties=properties,  # type: ignore[arg-type]
        source=SOURCE,
        event_name=event_name,  # type: ignore[arg-type]
        metadata=metadata,
        received_us=received_us,
        ops=ops or None,
    )


OPERATION_FIELDS = frozenset(("set_once", "add", "append", "remove", "unset"))
"""The fields beside ``user_properties`` that operate on properties (README, Property operations)."""


def _operations(
    obj: dict[str, Any], sets: dict[str, Any], loc: Loc, problems: list[Problem]
) -> tuple[dict[str, Any], dict[str, Op]]:
    """The event's properties (the sets, and each operation's argument) and the operation of
    each property that is not set; every problem appended."""
    properties = dict(sets)
    ops: dict[str, Op] = {}
    where_of: dict[str, str] = dict.fromkeys(sets, "user_properties")
    for field in ("set_once", "add", "append", "remove"):
        given = obj.get(field)
        if field not in obj:
            continue
        where = (*loc, field)
        if not isinstance(given, dict):
            problems.append(dict_type(where, given))
            continue
        for name, arg in given.items():
            if not _property_name(name, (*where, name), problems):
                continue
            if field == "add" and (isinstance(arg, bool) or not isinstance(arg, int | float)):
                problems.append(
                    problem("float_type", (*where, name), "Input should be a valid number", arg)
                )
                continue
            if field in ("append", "remove") and not isinstance(arg, list):
                problems.append(
                    problem("list_type", (*where, name), "Input should be a valid list", arg)
                )
                continue
            if _twice(name, field, where_of, (*where, name), problems):
                continue
            properties[name] = arg
            ops[name] = field
    if "unset" in obj:
        given = obj["unset"]
        where = (*loc, "unset")
        if not isinstance(given, list):
            problems.append(problem("list_type", where, "Input should be a valid list", given))
        else:
            for index, name in enumerate(given):
                if not isinstance(name, str):
                    problems.append(string_type((*where, index), name))
                elif _property_name(name, (*where, index), problems) and not _twice(
                    name, "unset", where_of, (*where, index), problems
                ):
                    properties[name] = None
    if len(properties) > c.MAX_PROPERTIES_PER_EVENT:
        problems.append(
            problem(
                "too_long",
                loc,
                f"An event should name at most {c.MAX_PROPERTIES_PER_EVENT} properties in all"
                f" its operations, not {len(properties)}",
                None,
                {"max_length": c.MAX_PROPERTIES_PER_EVENT},
            )
        )
    return properties, ops


def _property_name(name: str, where: Loc, problems: list[Problem]) -> bool:
    if not name:
        problems.append(too_short(where, name))
    elif len(name) > c.MAX_PROPERTY_NAME_CHARS:
        problems.append(too_long(where, name, c.MAX_PROPERTY_NAME_CHARS))
    else:
        return True
    return False


def _twice(
    name: str, field: str, where_of: dict[str, str], where: Loc, problems: list[Problem]
) -> bool:
    """Whether ``name`` is in another operation of the event already (a problem, appended)."""
    first = where_of.setdefault(name, field)
    if first == field:
        return False
    problems.append(
        value_error(where, name, f"property {name!r} is in both {first} and {field}: one each")
    )
    return True


def timestamp_to_us(value: float) -> int | None:
    """Unix seconds (or milliseconds when >= 1e11) -> microseconds; None when out of range."""
    if not math.isfinite(value) or value < 0:
        return None
    if value >= c.MILLISECONDS_THRESHOLD:
        value = value / 1_000
    if value > c.MAX_EVENT_TIME_S:
        return None
    return round(value * 1_000_000)


def _required_string(
    obj: dict[str, Any], name: str, loc: Loc, problems: list[Problem], max_chars: int
) -> str | None:
    return required_string(obj.get(name), (*loc, name), problems, max_chars, obj)


def _event_time(
    obj: dict[str, Any], loc: Loc, problems: list[Problem], oldest_us: int = 0
) -> int | None:
    # "time" is accepted when "timestamp" is absent (README, Sending updates);
    # a null is present, and then a wrong type like any other.
    name = "timestamp" if "timestamp" in obj or "time" not in obj else "time"
    if name not in obj:
        problems.append(missing((*loc, "timestamp"), obj))
        return None
    value = obj[name]
    where = (*loc, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(problem("float_type", where, "Input should be a valid number", value))
        return None
    ts_us = timestamp_to_us(value)
    if ts_us is None:
        problems.append(
            value_error(
                where,
                value,
                "timestamp must be Unix seconds (or milliseconds, when >= 1e11) "
                "between 1970 and 9999",
            )
        )
    elif ts_us < oldest_us:
        problems.append(too_old(where, value, oldest_us))
        return None
    return ts_us


def _event_id(value: Any, loc: Loc, problems: list[Problem]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(string_type(loc, value))
    elif not value:
        problems.append(too_short(loc, value))
    elif len(value) > c.MAX_EVENT_ID_CHARS:
        problems.append(too_long(loc, value, c.MAX_EVENT_ID_CHARS))
    else:
        return fits_bytes(value, loc, problems, c.MAX_EVENT_ID_BYTES)
    return None


def _properties(
    obj: dict[str, Any], loc: Loc, problems: list[Problem], optional: bool = False
) -> dict[str, Any] | None:
    """``user_properties``, checked (absent is ``{}`` when the event has operations)."""
    where = (*loc, "user_properties")
    value = obj.get("user_properties")
    if value is None:
        if optional and "user_properties" not in obj:
            return {}
        problems.append(missing(where, obj))
        return None
    if not isinstance(value, dict):
        problems.append(dict_type(where, value))
        return None
    if len(value) > c.MAX_PROPERTIES_PER_EVENT:
        problems.append(
            problem(
                "too_long",
                where,
                f"Dictionary should have at most {c.MAX_PROPERTIES_PER_EVENT} items "
                f"after validation, not {len(value)}",
                None,
                {"field_type": "Dictionary", "max_length": c.MAX_PROPERTIES_PER_EVENT},
            )
        )
        return None
    before = len(problems)
    for name in value:
        if not name:
            problems.append(too_short((*where, name), name))
        elif len(name) > c.MAX_PROPERTY_NAME_CHARS:
            problems.append(too_long((*where, name), name, c.MAX_PROPERTY_NAME_CHARS))
    return value if len(problems) == before else None


def _not_an_object(loc: Loc, value: Any) -> Problem:
    return problem(
        "model_attributes_type",
        loc,
        "Input should be a valid dictionary or object to extract fields from",
        value,
    )


def _list_length(loc: Loc, items: list[Any]) -> Problem:
    if not items:
        return problem(
            "too_short",
            loc,
            "List should have at least 1 item after validation, not 0",
            items,
            {"field_type": "List", "min_length": 1, "actual_length": 0},
        )
    return problem(
        "too_long",
        loc,
        f"List should have at most {c.MAX_BATCH_EVENTS} items after validation, not {len(items)}",
        None,
        {"field_type": "List", "max_length": c.MAX_BATCH_EVENTS, "actual_length": len(items)},
    )
