"""Amplitude cohort webhooks (README, Amplitude cohorts): one of three body shapes in, one event per user out.

The shape is told from the body:

(a) Amplitude's default template, ``{"cohort_name", "cohort_id", "in_cohort", "computed_time",
    "message_id", "users": [{"user_id", "user_properties"?}]}``: property
    ``amplitude_cohort_<cohort_id>`` = ``in_cohort`` plus the user's ``user_properties``; event
    time = ``computed_time``; event_id = ``<message_id>:<user_id>``, so a retry dedupes per user
    and a leave computed later beats a re-delivered enter (last writer wins by event time).
(b) the "per user" template, ``[{"user_id", "amplitude_<cohort name>_<cohort id>": bool, ...}]``:
    every key but ``user_id`` is a property.
(c) Segment-style ``{"batch": [{"type": "identify", "userId", "traits": {...}}]}``: the traits
    are the properties; other call types are skipped.

(b) and (c) carry neither a time nor an id: the event time is the receipt time and the event_id
is ``<digest>:<index>`` (digest of the source id and the raw body; the index zero-padded so that
a later entry for the same user in one body wins the tie), so a re-delivered body is a duplicate.

A user without a usable user_id (absent, empty, not a string or integer, over 512 characters),
whose properties break the limits of RELIABILITY.md (over 1,000, a name empty or over 256 characters), or
whose entry holds a value no backend can keep (an integer beyond ±(2^53 - 1), U+0000 in a string
or key) is skipped and counted: it never fails the request, which Amplitude would retry forever.
A body that fits no shape, or such a value in the fields every user shares, is a 422.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from profilehook import constants as c
from profilehook.errors import SignatureRejected, ValidationFailed
from profilehook.events import Event
from profilehook.settings import Settings
from profilehook.sources.native import timestamp_to_us
from profilehook.sources.registry import secret_matches
from profilehook.sources.webhooks import (
    Kind,
    OldestAccepted,
    WebhookRequest,
    WebhookResult,
    within_retention,
)
from profilehook.stores.base import Source, Store
from profilehook.validation import (
    Loc,
    Problem,
    check_json_content_type,
    decode_json_keeping_unstorable,
    holds_unstorable,
    missing,
    problem,
    required_string,
    string_type,
    unstorable,
    value_error,
)

KIND = "amplitude"
COHORT_PROPERTY_PREFIX = "amplitude_cohort_"
MAX_COHORT_ID_CHARS = c.MAX_PROPERTY_NAME_CHARS - len(COHORT_PROPERTY_PREFIX)
DIGEST_HEX_CHARS = 32
INDEX_DIGITS = 7  # an 8 MiB body holds fewer than 10**7 users
BODY: Loc = ("body",)
MISSING_SECRET = "Missing source secret: send Authorization: Bearer <secret> or X-Api-Key: <secret>"


class AmplitudeSource:
    """Turns an authenticated Amplitude webhook request into events (see the module doc)."""

    kind = KIND

    def __init__(self, max_body_bytes: int, oldest_accepted_us: OldestAccepted | None = None):
        self.max_body_bytes = max_body_bytes
        self.oldest_accepted_us = oldest_accepted_us

    async def handle(self, source: Source, request: WebhookRequest) -> WebhookResult:
        """Raises ``SignatureRejected`` (401), ``UnsupportedMediaType`` (415), ``ValidationFailed``."""
        authenticate(source, request.headers)
        content_type = request.headers.get("content-type")
        check_json_content_type(content_type.encode("latin-1") if content_type else None)
        if len(request.body) > c.OFF_LOOP_BODY_BYTES:
            # Seconds of work for 8 MB: in a thread, in short steps, so that every other
            # request (every workspace's) keeps its event loop.
            events, skipped = await asyncio.to_thread(parse, source, request)
        else:
            events, skipped = parse(source, request)
        # A cohort computed before the retention window: its users are skipped, and counted.
        events, too_old = within_retention(events, request.received_us, self.oldest_accepted_us)
        body = {"status": "accepted", "accepted": len(events), "skipped": skipped + too_old}
        return WebhookResult(events=events, body=body, skipped=skipped, too_old=too_old)


def make_source(settings: Settings, store: Store) -> AmplitudeSource:
    """The ``amplitude`` kind of webhook source; it needs nothing of the store."""
    return AmplitudeSource(settings.max_amplitude_body_bytes, settings.oldest_accepted_us)


def authenticate(source: Source, headers: dict[str, str]) -> None:
    """Accept ``Authorization: Bearer <secret>`` or ``X-Api-Key: <secret>``, checked in constant
    time against every active secret of the source. Raises ``SignatureRejected`` (401)."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    presented = [token.strip() if scheme.lower() == "bearer" else "", headers.get("x-api-key", "")]
    presented = [secret.strip() for secret in presented if secret.strip()]
    if not presented:
        raise SignatureRejected("missing_secret", MISSING_SECRET)
    if not any(secret_matches(source, secret) for secret in presented):
        raise SignatureRejected("wrong_secret", "Invalid source secret")


@dataclass(frozen=True)
class Received:
    """What every user's event of one request shares."""

    workspace: str
    source_id: str
    body: bytes
    received_us: int
    # False when the body holds no value a backend cannot keep: then no user needs a look.
    may_hold_unstorable: bool = False

    def storable(self, entry: Any) -> bool:
        """Whether one user's entry holds only values every backend can keep."""
        return not self.may_hold_unstorable or not holds_unstorable(entry)

    def digest(self) -> str:
        hashed = hashlib.sha256(self.source_id.encode())
        hashed.update(b"\0")
        hashed.update(self.body)
        return hashed.hexdigest()[:DIGEST_HEX_CHARS]

    def event(self, contact_id: str, event_id: str, ts_us: int, **fields: Any) -> Event:
        if len(event_id.encode()) > c.MAX_EVENT_ID_BYTES:
            # <message_id>:<user_id> can outgrow an index key: keep it deterministic, shorter.
            event_id = "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()
        return Event(
            workspace=self.workspace,
            event_id=event_id,
            contact_id=contact_id,
            ts_us=ts_us,
            source=KIND,
            received_us=self.received_us,
            **fields,
        )


def parse(source: Source, request: WebhookRequest) -> tuple[list[Event], int]:
    """The body's events and how many users were skipped. Raises ``ValidationFailed`` (422)."""
    in_pieces = len(request.body) > c.OFF_LOOP_BODY_BYTES
    value, problems, may_hold_unstorable = decode_json_keeping_unstorable(
        request.body, in_pieces=in_pieces
    )
    if problems:
        raise ValidationFailed(problems)
    if may_hold_unstorable:
        _refuse_unstorable_shared_fields(value)
    received = Received(
        source.workspace, source.source_id, request.body, request.received_us, may_hold_unstorable
    )
    if isinstance(value, list):
        return per_user_events(received, value)
    if isinstance(value, dict) and "batch" in value:
        return segment_events(received, value["batch"])
    if isinstance(value, dict) and ("users" in value or "cohort_id" in value):
        return cohort_events(received, value)
    raise ValidationFailed([_no_known_shape(value)])


# -- (a) the default template ---------------------------------------------------------------


@dataclass(frozen=True)
class Cohort:
    """The part of a default-template body that every user of it shares."""

    message_id: str
    property: str
    in_cohort: bool
    ts_us: int
    metadata: dict[str, Any]


def cohort_events(received: Received, body: dict[str, Any]) -> tuple[list[Event], int]:
    cohort, users = _cohort(body)
    events: list[Event] = []
    for user in users:
        event = _cohort_user_event(received, cohort, user)
        if event is not None:
            events.append(event)
    return events, len(users) - len(events)


def _cohort_user_event(received: Received, cohort: Cohort, user: Any) -> Event | None:
    if not isinstance(user, dict) or not received.storable(user):
        return None
    contact_id = user_id(user.get("user_id"))
    extra = user.get("user_properties")
    if contact_id is None:
        return None
    if extra is None:
        properties = {cohort.property: cohort.in_cohort}
    elif isinstance(extra, dict):
        properties = {**extra, cohort.property: cohort.in_cohort}
        if not within_limits(properties):
            return None
    else:
        return None
    event_id = f"{cohort.message_id}:{contact_id}"
    return received.event(
        contact_id,
        event_id,
        cohort.ts_us,
        properties=properties,
        event_name="cohort_update",
        metadata=cohort.metadata,
    )


def _cohort(body: dict[str, Any]) -> tuple[Cohort, list[Any]]:
    """The shared fields, or every problem found in them. Raises ``ValidationFailed``."""
    problems: list[Problem] = []
    cohort_id = _string(body, "cohort_id", problems, MAX_COHORT_ID_CHARS)
    message_id = _string(body, "message_id", problems, c.MAX_EVENT_ID_CHARS)
    in_cohort = _in_cohort(body, problems)
    ts_us = _computed_time(body, problems)
    name = body.get("cohort_name")
    if name is not None and not isinstance(name, str):
        problems.append(string_type((*BODY, "cohort_name"), name))
    users = body.get("users")
    if not isinstance(users, list):
        problems.append(_list_problem((*BODY, "users"), users, _without_users(body)))
    if (
        problems
        or cohort_id is None
        or message_id is None
        or in_cohort is None
        or ts_us is None
        or not isinstance(users, list)
    ):
        raise ValidationFailed(problems)
    metadata = {"cohort_id": cohort_id, "cohort_name": name}
    cohort = Cohort(message_id, COHORT_PROPERTY_PREFIX + cohort_id, in_cohort, ts_us, metadata)
    return cohort, users


def _string(body: dict[str, Any], name: str, problems: list[Problem], max_chars: int) -> str | None:
    value = body.get(name)
    loc = (*BODY, name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a template that renders the id without quotes
    return required_string(value, loc, problems, max_chars, _without_users(body))


def _in_cohort(body: dict[str, Any], problems: list[Problem]) -> bool | None:
    value = body.get("in_cohort")
    # The template renders a bare true/false; a quoted one is read alike.
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if isinstance(value, bool):
        return value
    loc = (*BODY, "in_cohort")
    if value is None:
        problems.append(missing(loc, _without_users(body)))
    else:
        problems.append(problem("bool_type", loc, "Input should be a valid boolean", value))
    return None


def _computed_time(body: dict[str, Any], problems: list[Problem]) -> int | None:
    """``computed_time``: Unix seconds, as a string (the template quotes it) or a number."""
    value = body.get("computed_time")
    loc = (*BODY, "computed_time")
    if value is None:
        problems.append(missing(loc, _without_users(body)))
        return None
    ts_us = None
    try:
        if not isinstance(value, bool) and isinstance(value, str | int | float):
            ts_us = timestamp_to_us(float(value))
    except ValueError:
        pass
    if ts_us is None:
        message = 'computed_time must be Unix seconds between 1970 and 9999, e.g. "1692206763"'
        problems.append(value_error(loc, value, message))
    return ts_us


# -- (b) the "per user" template and (c) Segment-style batches -------------------------------


def per_user_events(received: Received, items: list[Any]) -> tuple[list[Event], int]:
    digest = received.digest()
    events: list[Event] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not received.storable(item):
            continue
        contact_id = user_id(item.pop("user_id", None))  # what remains are the properties
        if contact_id is None or not within_limits(item):
            continue
        event_id = f"{digest}:{index:0{INDEX_DIGITS}d}"
        events.append(
            received.event(
                contact_id, event_id, received.received_us, properties=item, event_name="per_user"
            )
        )
    return events, len(items) - len(events)


def segment_events(received: Received, batch: Any) -> tuple[list[Event], int]:
    if not isinstance(batch, list):
        raise ValidationFailed([_list_problem((*BODY, "batch"), batch, None)])
    digest = received.digest()
    events: list[Event] = []
    for index, call in enumerate(batch):
        if not isinstance(call, dict) or call.get("type") != "identify":
            continue
        if not received.storable(call):
            continue
        contact_id = user_id(call.get("userId"))
        traits = call.get("traits")
        traits = {} if traits is None else traits
        if contact_id is None or not isinstance(traits, dict) or not within_limits(traits):
            continue
        event_id = f"{digest}:{index:0{INDEX_DIGITS}d}"
        events.append(
            received.event(
                contact_id, event_id, received.received_us, properties=traits, event_name="identify"
            )
        )
    return events, len(batch) - len(events)


# -- shared ---------------------------------------------------------------------------------


def user_id(value: Any) -> str | None:
    """The contact id a user_id gives, or None when the user must be skipped."""
    if isinstance(value, str):
        fits = 0 < len(value) <= c.MAX_CONTACT_ID_CHARS
        return value if fits and len(value.encode()) <= c.MAX_CONTACT_ID_BYTES else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def within_limits(properties: dict[str, Any]) -> bool:
    """The limits (RELIABILITY.md): at most 1,000 properties per event, each name 1 to 256 characters."""
    if not properties:
        return True
    return (
        len(properties) <= c.MAX_PROPERTIES_PER_EVENT
        and "" not in properties
        and max(map(len, properties)) <= c.MAX_PROPERTY_NAME_CHARS
    )


def _refuse_unstorable_shared_fields(value: Any) -> None:
    """A value no backend can keep outside the users (the fields every user's event shares,
    or a body of no known shape) refuses the call. Raises ``ValidationFailed``."""
    if isinstance(value, list):
        return  # the per-user template: every entry is a user's own
    shared = value
    if isinstance(value, dict):
        users = "batch" if "batch" in value else "users"
        shared = {name: item for name, item in value.items() if name != users}
    problems = unstorable(shared, BODY)
    if problems:
        raise ValidationFailed(problems)


def _list_problem(loc: Loc, value: Any, parent: Any) -> Problem:
    if value is None:
        return missing(loc, parent)
    return problem("list_type", loc, "Input should be a valid list", value)


def _without_users(body: dict[str, Any]) -> dict[str, Any]:
    """The body as a problem's input, less its users: it may be megabytes."""
    return {name: value for name, value in body.items() if name != "users"}


def _no_known_shape(value: Any) -> Problem:
    message = (
        "expected Amplitude's cohort object (with cohort_id and users), a per-user array, "
        'or a Segment-style {"batch": [...]} of identify calls'
    )
    # The input is not echoed: the body may be megabytes.
    return value_error(BODY, None, message)


SOURCE_KIND = Kind(
    name=KIND,
    title="Amplitude",
    make_source=make_source,
    secret_in="header",
    config=lambda values: ({}, True),
    create_help="""An Amplitude cohort webhook source, with its secret.

    \b
    Example:
      profilehook sources create amplitude --workspace acme --json
    """,
    json_help='Print {"source_id", "url", "kind", "workspace", "secret"}.',
    media_type="application/json",
    openapi="Amplitude: cohort JSON with the source secret in `Authorization: Bearer` or"
    " `X-Api-Key`.",
)
