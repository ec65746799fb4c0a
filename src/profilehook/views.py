"""The JSON views of contacts and events: what the API answers, what `contacts get` and
`events get` print, what `export` writes. One place, so that the three never differ."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from profilehook.events import Event, Version, iso, seconds
from profilehook.queues.base import Queue
from profilehook.stores.base import Contact, Erasure, EventRecord, ProfileStore


def contact_view(found: Contact) -> dict[str, Any]:
    """A contact as ``GET /v1/contacts/{id}`` answers it, and as export writes it."""
    # One view per version: the properties one event set share it (a read's hot path).
    views: dict[Version, dict[str, Any]] = {}
    versions: dict[str, dict[str, Any]] = {}
    for name, version in found.versions.items():
        view = views.get(version)
        if view is None:
            view = views[version] = {"timestamp": seconds(version[0]), "event_id": version[1]}
        versions[name] = view
    return {
        "contact_id": found.contact_id,
        "properties": found.properties,
        "updated_at": iso(found.updated_us),
        "versions": versions,
    }


_encode = msgspec.json.Encoder().encode


def contact_body(
    contact_id: str, updated_us: int, groups: Sequence[tuple[int, str, dict[str, Any]]]
) -> bytes:
    """``contact_view`` of a contact, encoded (byte for byte the same JSON), straight from its
    property groups as a store keeps them: (ts_us, event_id, {name: value}) per version, later
    groups over earlier ones, None a tombstone. A read's hot path: no ``Contact``, no view
    that is thrown away, one encode."""
    if len(groups) == 1:  # (most contacts: every property set by one event)
        ts_us, event_id, values = groups[0]
        names = sorted(values)
        if None in values.values():
            names = [n for n in names if values[n] is not None]
        version = {"timestamp": seconds(ts_us), "event_id": event_id}
        properties = {n: values[n] for n in names}
        versions = dict.fromkeys(names, version)
    else:
        held: dict[str, tuple[Any, dict[str, Any]]] = {}
        for ts_us, event_id, values in groups:
            version = {"timestamp": seconds(ts_us), "event_id": event_id}
            held.update((name, (value, version)) for name, value in values.items())
        live = sorted(n for n, (value, _) in held.items() if value is not None)
        properties = {n: held[n][0] for n in live}
        versions = {n: held[n][1] for n in live}
    return _encode(
        {
            "contact_id": contact_id,
            "properties": properties,
            "updated_at": iso(updated_us),
            "versions": versions,
        }
    )


async def event_status(
    queue: Queue, store: ProfileStore, workspace: str, event_id: str
) -> dict[str, Any] | None:
    """An event with its status, wherever it is now; None when never accepted."""
    # The log first, then the store: the store commits before the log lets an event go,
    # so an event is never missed while it moves from one to the other.
    pending = await queue.find(workspace, event_id)
    record = await store.get_event(workspace, event_id)
    if record is None and pending is not None:
        record = EventRecord(pending, "queued")
    return None if record is None else event_view(record)


def event_view(record: EventRecord) -> dict[str, Any]:
    """An event with its status, as ``GET /v1/events/{id}`` and a history page show it."""
    event: Event = record.event
    return {
        "event_id": event.event_id,
        "status": record.status,
        "contact_id": event.contact_id,
        "source": event.source,
        "kind": event.kind,
        "event_name": event.event_name,
        "timestamp": seconds(event.ts_us),
        "properties": event.properties,
        "operations": operations(event),
        "metadata": event.metadata,
        "received_at": iso(event.received_us),
        "applied_at": iso(record.applied_us),
        "error": record.error,
    }


def operations(event: Event) -> dict[str, str]:
    """What the event does to each of its properties (README, Property operations): ``set``, ``unset``,
    ``set_once``, ``add``, ``append`` or ``remove``; ``properties`` holds the arguments."""
    ops = event.ops or {}
    return {
        name: ops.get(name) or ("unset" if value is None else "set")
        for name, value in event.properties.items()
    }


def erasure_view(erasure: Erasure) -> dict[str, Any]:
    """An erasure as ``DELETE /v1/contacts/{id}`` and ``GET /v1/erasures/{id}`` answer it, and
    as ``contacts erase --json`` prints it."""
    return {
        "erasure_id": erasure.erasure_id,
        "status": erasure.status,
        "contact_id": erasure.contact_id,
        "suppress": erasure.suppress,
        "requested_at": iso(erasure.requested_us),
        "completed_at": iso(erasure.completed_us),
    }
