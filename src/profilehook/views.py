"""The JSON views of contacts and events: what the API answers, what `contacts get` and
`events get` print, what `export` writes. One place, so that the three never differ."""

from __future__ import annotations

from typing import Any

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
