"""Destinations (README, Getting changes out): created, listed, shown, deleted and replayed by
the API and the CLI through these functions. A URL is checked at creation (https, and every
address it resolves to public, unless the operator allows private ones); the sender checks it
again on every connection."""

from __future__ import annotations

import uuid
from typing import Any

from profilehook.constants import (
    MAX_DESTINATION_DESCRIPTION_CHARS,
    MAX_DESTINATION_FILTER_NAMES,
    MAX_DESTINATIONS_PER_WORKSPACE,
)
from profilehook.destinations.addresses import parse_url, resolve
from profilehook.destinations.signing import new_secret
from profilehook.errors import DestinationRefused, InvalidCursor, NotFound, ValidationFailed
from profilehook.events import iso, now_us
from profilehook.stores.base import Store
from profilehook.stores.destinations import DELIVERY_STATUSES, Delivery, Destination
from profilehook.validation import Problem, problem, required_string, value_error

FIELDS = ("url", "description", "properties", "segments", "workspace")
MAX_NAME_CHARS = 256


def view(destination: Destination) -> dict[str, Any]:
    """A destination as the API answers it and ``destinations … --json`` prints it (never its
    secret: that is shown once, at creation)."""
    d = destination
    return {
        "destination_id": d.destination_id,
        "url": d.url,
        "description": d.description,
        "properties": list(d.properties),
        "segments": list(d.segments),
        "created_at": iso(d.created_us),
        "cursor": d.cursor,
        "status": "disabled" if d.disabled_us is not None else "active",
        "disabled_at": None if d.disabled_us is None else iso(d.disabled_us),
        "disabled_reason": d.disabled_reason,
        "failing_since": None if d.failing_since_us is None else iso(d.failing_since_us),
    }


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    """One delivery in ``GET /v1/destinations/{id}/deliveries``."""
    d = delivery
    return {
        "change_id": d.change_id,
        "cursor": d.cursor,
        "contact_id": d.contact_id,
        "status": d.status,
        "attempts": d.attempts,
        "status_code": d.last_status,
        "error": d.last_error,
        "next_attempt_at": iso(d.next_attempt_us) if d.status == "pending" else None,
        "updated_at": iso(d.updated_us),
    }


def _names(body: dict[str, Any], key: str, problems: list[Problem]) -> tuple[str, ...]:
    value = body.get(key, [])
    loc = ("body", key)
    if not isinstance(value, list):
        problems.append(problem("list_type", loc, "Input should be a valid list", value))
        return ()
    if len(value) > MAX_DESTINATION_FILTER_NAMES:
        problems.append(value_error(loc, value, f"at most {MAX_DESTINATION_FILTER_NAMES} names"))
    for i, name in enumerate(value):
        required_string(name, (*loc, i), problems, MAX_NAME_CHARS)
    return tuple(dict.fromkeys(n for n in value if isinstance(n, str) and n))


async def create(
    store: Store, workspace: str, body: Any, *, allow_private: bool
) -> tuple[Destination, str]:
    """A new destination and its secret (shown once). Raises ``ValidationFailed`` with every
    problem: the fields, a URL that is refused, a workspace with its most destinations."""
    if not isinstance(body, dict):
        raise ValidationFailed(
            [problem("dict_type", ("body",), "Input should be a valid dictionary", body)]
        )
    problems: list[Problem] = []
    for key, value in body.items():
        if key not in FIELDS:
            problems.append(
                problem("extra_forbidden", ("body", key), "Extra inputs are not permitted", value)
            )
    url = required_string(body.get("url"), ("body", "url"), problems, 2_000, body)
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESTINATION_DESCRIPTION_CHARS:
        problems.append(
            problem(
                "string_type",
                ("body", "description"),
                f"Input should be a string of at most {MAX_DESTINATION_DESCRIPTION_CHARS}"
                " characters",
                description,
            )
        )
    properties = _names(body, "properties", problems)
    segment_ids = _names(body, "segments", problems)
    given = body.get("workspace", workspace)
    if given != workspace:
        problems.append(value_error(("body", "workspace"), given, "not this key's workspace"))
    if url is not None:
        try:
            await resolve(parse_url(url, allow_private), allow_private)
        except DestinationRefused as exc:
            problems.append(value_error(("body", "url"), url, str(exc.detail)))
    if problems:
        raise ValidationFailed(problems)
    secret = new_secret()
    # It starts at the feed's end: every change committed from here on is delivered, none from
    # before (those come with a replay). Read before the destination exists, so a change
    # committed meanwhile is after it, not lost.
    end = await store.feed_end(workspace)
    destination = Destination(
        f"dst_{uuid.uuid4().hex}",
        workspace,
        str(url),
        secret,
        now_us(),
        description if isinstance(description, str) else "",
        properties,
        segment_ids,
        cursor=end,
    )
    if not await store.create_destination(destination, MAX_DESTINATIONS_PER_WORKSPACE):
        raise ValidationFailed(
            [
                value_error(
                    ("body",),
                    None,
                    f"a workspace has at most {MAX_DESTINATIONS_PER_WORKSPACE} destinations;"
                    " delete one first",
                )
            ]
        )
    return destination, secret


async def get(store: Store, workspace: str, destination_id: str) -> Destination:
    """Raises ``NotFound`` (also for another workspace's destination)."""
    found = await store.get_destination(workspace, destination_id)
    if found is None:
        raise NotFound("Destination not found")
    return found


async def delete(store: Store, workspace: str, destination_id: str) -> None:
    if not await store.delete_destination(workspace, destination_id):
        raise NotFound("Destination not found")


async def deliveries(
    store: Store, workspace: str, destination_id: str, status: str | None, limit: int
) -> list[Delivery]:
    """The destination's deliveries, newest first. Raises ``NotFound``, ``ValidationFailed``
    (an unknown status)."""
    await get(store, workspace, destination_id)
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationFailed(
            [
                problem(
                    "enum",
                    ("query", "status"),
                    f"Input should be {', '.join(repr(s) for s in DELIVERY_STATUSES)}",
                    status,
                )
            ]
        )
    return await store.list_deliveries(destination_id, status, limit)


async def replay(store: Store, workspace: str, destination_id: str, body: Any) -> str | None:
    """Deliver again every change after ``body["after"]`` (a cursor of the feed; null: from the
    oldest kept). Raises ``NotFound``, ``ValidationFailed``."""
    if not isinstance(body, dict) or "after" not in body:
        raise ValidationFailed([problem("missing", ("body", "after"), "Field required", body)])
    after = body["after"]
    if after is not None:
        if not isinstance(after, str) or not after:
            raise ValidationFailed(
                [problem("string_type", ("body", "after"), "Input should be a cursor", after)]
            )
        # A cursor this feed did not issue (a 422 pointing at it), or one already expired
        # (410), is refused here.
        try:
            await store.read_changes(workspace, after, 1)
        except InvalidCursor:
            raise ValidationFailed(
                [value_error(("body", "after"), after, "not a cursor of this feed")]
            ) from None
    if not await store.replay_destination(workspace, destination_id, after):
        raise NotFound("Destination not found")
    return str(after) if after is not None else None
