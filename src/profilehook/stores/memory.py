"""In-memory store for tests: the same contract and rules as the durable ones."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from profilehook.events import Event, Version, now_us
from profilehook.stores.base import (
    AliasUpdate,
    ApiKey,
    ApplyResult,
    Base,
    Contact,
    ContactErasure,
    ContactState,
    ErasedContact,
    Erasure,
    EventRecord,
    KeyGrant,
    Nonce,
    Progress,
    Source,
    Store,
    by_contact,
    contact_exists,
    first_of_each,
    plan_contact,
    repeats,
    split_erased,
)


@dataclass
class _Profile:
    state: ContactState = field(default_factory=ContactState)
    values: dict[str, Any] = field(default_factory=dict)  # None = tombstone


class MemoryStore(Store):
    def __init__(self) -> None:
        self._events: dict[tuple[str, str], EventRecord] = {}
        self._profiles: dict[tuple[str, str], _Profile] = {}
        # What purge_history folded: the contact's state as of its purged events.
        self._snapshots: dict[tuple[str, str], _Profile] = {}
        self._keys: dict[str, tuple[ApiKey, str]] = {}
        self._sources: dict[str, Source] = {}
        # (workspace, source_id, profile_id) -> the mapped contact and the version that set it
        self._aliases: dict[tuple[str, str, str], tuple[str, Version]] = {}
        self._parked: dict[tuple[str, str, str], dict[str, Event]] = {}
        self._nonces: dict[bytes, int] = {}  # key -> expires_us
        self._erasures: dict[str, Erasure] = {}
        self._erased: dict[tuple[str, str], ErasedContact] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        fresh = [e for e in first_of_each(events) if (e.workspace, e.event_id) not in self._events]
        new, erased = split_erased(fresh, self._erased)
        applied_us = now_us()
        for event in new:
            self._events[(event.workspace, event.event_id)] = EventRecord(
                event, "applied", applied_us
            )
        for stub in erased:
            self._events[(stub.workspace, stub.event_id)] = EventRecord(stub, "erased", applied_us)
        for repeat in repeats(events, fresh):
            stored = self._events[(repeat.workspace, repeat.event_id)]
            if stored.status == "applied" and stored.event != repeat:
                self._events[(repeat.workspace, repeat.event_id)] = replace(
                    stored, status="duplicate"
                )
        result = _fold(self._profiles, new, self._base)
        for key, name in result.cleared.items():
            record = self._events.get(key)
            if record is not None and (record.error or "").startswith(f"{name}: "):
                self._events[key] = replace(record, error=None)
        for key, warning in result.warnings.items():
            if key in self._events:
                self._events[key] = replace(self._events[key], error=warning)
        return result.count_new(events, new, erased)

    def _base(self, key: tuple[str, str], new: Sequence[Event]) -> Base:
        """What a late event of contact ``key`` is recomputed from: its snapshot, and its
        applied events but ``new``."""

        def base() -> tuple[ContactState, list[Event]]:
            snapshot = self._snapshots.get(key) or _Profile()
            skip = {e.event_id for e in new}
            history = [
                r.event
                for r in self._events.values()
                if (r.event.workspace, r.event.contact_id) == key
                and r.status in _APPLIED
                and r.event.event_id not in skip
            ]
            return _state_of(snapshot), history

        return base

    async def record_failure(self, event: Event, error: str) -> None:
        key = (event.workspace, event.event_id)
        _, erased = split_erased([event], self._erased)  # an erased contact's: its stub
        record = EventRecord(erased[0], "erased", now_us()) if erased else None
        self._events.setdefault(key, record or EventRecord(event, "failed", now_us(), error))

    async def get_contact(self, workspace: str, contact_id: str) -> Contact | None:
        profile = self._profiles.get((workspace, contact_id))
        return None if profile is None else _contact_of(contact_id, profile)

    async def contacts_page(
        self, workspace: str, after: str | None, limit: int
    ) -> tuple[list[Contact], str | None]:
        ids = sorted(
            contact_id
            for ws, contact_id in self._profiles
            if ws == workspace and (after is None or contact_id > after)
        )[:limit]
        found = [_contact_of(i, self._profiles[(workspace, i)]) for i in ids]
        return [c for c in found if c is not None], ids[-1] if len(ids) == limit else None

    async def count_contacts(self, workspace: str) -> int:
        return sum(1 for ws, _ in self._profiles if ws == workspace)

    async def history(
        self, workspace: str, contact_id: str, before: Version | None, limit: int
    ) -> list[EventRecord]:
        profile = self._profiles.get((workspace, contact_id))
        deleted = None if profile is None else profile.state.deleted
        records = [
            r
            for r in self._events.values()
            if r.event.workspace == workspace
            and r.event.contact_id == contact_id
            and (before is None or r.event.version < before)
            and (deleted is None or r.event.version > deleted)
            and r.status != "erased"
        ]
        records.sort(key=lambda r: r.event.version, reverse=True)
        return records[:limit]

    async def get_event(self, workspace: str, event_id: str) -> EventRecord | None:
        return self._events.get((workspace, event_id))

    async def rebuild(self, progress: Progress | None = None) -> int:
        self._profiles = copy.deepcopy(self._snapshots)
        applied = [r.event for r in self._events.values() if r.status in _APPLIED]
        if progress is not None:
            progress(0, len(applied))
        snapshots = self._snapshots

        def base(key: tuple[str, str], _: Sequence[Event]) -> Base:
            # Every event of a contact is in this one batch: a late one's property is
            # recomputed from the snapshot through all of them.
            return lambda: (_state_of(snapshots.get(key) or _Profile()), [])

        _fold(self._profiles, applied, base)
        if progress is not None:
            progress(len(applied), len(applied))
        return len(applied)

    async def purge_history(self, before_us: int, limit: int) -> int:
        old = sorted(
            (r for r in self._events.values() if r.event.ts_us < before_us),
            key=lambda r: r.event.version,
        )[:limit]
        for record in old:
            del self._events[(record.event.workspace, record.event.event_id)]
        _fold(self._snapshots, [r.event for r in old if r.status in _APPLIED])
        return len(old)

    async def add_key(self, key: ApiKey, key_hash: str) -> None:
        self._keys[key.key_id] = (key, key_hash)

    async def list_keys(self, workspace: str | None = None) -> list[ApiKey]:
        return [k for k, _ in self._keys.values() if workspace in (None, k.workspace)]

    async def revoke_key(self, key_id: str, revoked_us: int) -> bool:
        if key_id not in self._keys:
            return False
        key, key_hash = self._keys[key_id]
        if key.revoked_us is None:
            self._keys[key_id] = (replace(key, revoked_us=revoked_us), key_hash)
        return True

    async def put_source(self, source: Source) -> None:
        self._sources[source.source_id] = source

    async def get_source(self, source_id: str) -> Source | None:
        return self._sources.get(source_id)

    async def list_sources(self, workspace: str | None = None) -> list[Source]:
        return [s for s in self._sources.values() if workspace in (None, s.workspace)]

    async def delete_source(self, source_id: str) -> bool:
        return self._sources.pop(source_id, None) is not None

    async def key_grant(self, key_hash: str) -> KeyGrant | None:
        for key, stored_hash in self._keys.values():
            if stored_hash == key_hash and key.revoked_us is None:
                return KeyGrant(key.key_id, key.workspace, key.scopes)
        return None

    async def get_alias(self, workspace: str, source_id: str, profile_id: str) -> str | None:
        found = self._aliases.get((workspace, source_id, profile_id))
        return None if found is None else found[0]

    async def put_alias(
        self, workspace: str, source_id: str, profile_id: str, contact_id: str, version: Version
    ) -> AliasUpdate:
        key = (workspace, source_id, profile_id)
        held = self._aliases.get(key)
        if held is None or version > held[1]:
            self._aliases[key] = held = (contact_id, version)
        parked = self._parked.get(key, {})
        return AliasUpdate(held[0], [parked[event_id] for event_id in sorted(parked)])

    async def park_until_alias(self, source_id: str, profile_id: str, event: Event) -> str | None:
        key = (event.workspace, source_id, profile_id)
        if key in self._aliases:
            return self._aliases[key][0]
        self._parked.setdefault(key, {}).setdefault(event.event_id, event)
        return None

    async def unpark(
        self, workspace: str, source_id: str, profile_id: str, event_ids: Sequence[str]
    ) -> None:
        parked = self._parked.get((workspace, source_id, profile_id), {})
        for event_id in event_ids:
            parked.pop(event_id, None)

    async def remember_nonce(self, nonce: Nonce, expires_us: int, now_us: int) -> bool:
        self._nonces = {k: until for k, until in self._nonces.items() if until >= now_us}
        key = nonce.key()
        if key in self._nonces:
            return False
        self._nonces[key] = expires_us
        return True

    async def forget_nonce(self, nonce: Nonce) -> None:
        self._nonces.pop(nonce.key(), None)

    async def request_erasure(self, erasure: Erasure) -> None:
        self._erasures[erasure.erasure_id] = erasure
        key = (erasure.workspace, erasure.contact_id)
        held = self._erased.get(key)
        self._erased[key] = ErasedContact(
            max(erasure.requested_us, held.upto_us if held else 0),
            erasure.suppress or (held is not None and held.suppressed),
        )

    async def get_erasure(self, workspace: str, erasure_id: str) -> Erasure | None:
        found = self._erasures.get(erasure_id)
        return found if found is not None and found.workspace == workspace else None

    async def pending_erasures(self, limit: int) -> list[Erasure]:
        pending = [e for e in self._erasures.values() if e.completed_us is None]
        return sorted(pending, key=lambda e: e.requested_us)[:limit]

    async def erase_contact(self, erasure: Erasure) -> None:
        workspace, contact_id, upto = erasure.workspace, erasure.contact_id, erasure.requested_us
        plan = ContactErasure.of(
            (
                (key, record.status, record.event)
                for key, record in self._events.items()
                if (record.event.workspace, record.event.contact_id) == (workspace, contact_id)
                and record.status != "erased"
            ),
            upto,
        )
        for key, stub in plan.stubs:
            self._events[key] = EventRecord(stub, "erased", self._events[key].applied_us)
        # Retention's snapshot of the contact holds only what predates the erasure.
        self._snapshots.pop((workspace, contact_id), None)
        self._profiles.pop((workspace, contact_id), None)
        _fold(self._profiles, plan.remaining)
        for alias, (mapped, version) in list(self._aliases.items()):
            if (alias[0], mapped) == (workspace, contact_id) and plan.covers_alias(version, upto):
                del self._aliases[alias]
                self._parked.pop(alias, None)

    async def complete_erasure(self, erasure_id: str, completed_us: int) -> None:
        found = self._erasures.get(erasure_id)
        if found is not None and found.completed_us is None:
            self._erasures[erasure_id] = replace(found, completed_us=completed_us)

    async def unsuppress(self, workspace: str, contact_id: str) -> bool:
        held = self._erased.get((workspace, contact_id))
        if held is None or not held.suppressed:
            return False
        self._erased[(workspace, contact_id)] = replace(held, suppressed=False)
        return True

    async def is_suppressed(self, workspace: str, contact_id: str) -> bool:
        held = self._erased.get((workspace, contact_id))
        return held is not None and held.suppressed


_APPLIED = ("applied", "duplicate")  # the statuses of events that were applied


def _fold(
    profiles: dict[tuple[str, str], _Profile],
    events: Sequence[Event],
    base: Callable[[tuple[str, str], Sequence[Event]], Base] | None = None,
) -> ApplyResult:
    """Apply ``events`` to ``profiles`` (the profiles, or the snapshots) by the shared rules;
    ``base``: what a late event's properties are recomputed from (``plan_contact``)."""
    result = ApplyResult()
    for key, group in by_contact(events).items():
        profile = profiles.setdefault(key, _Profile())
        plan = plan_contact(_state_of(profile), group, None if base is None else base(key, group))
        result.superseded += plan.superseded
        result.warnings.update(((key[0], i), w) for i, w in plan.warnings.items())
        result.cleared.update(((key[0], i), n) for i, n in plan.cleared.items())
        for name in plan.removes:
            profile.state.versions.pop(name, None)
            profile.values.pop(name, None)
        if plan.delete_upto is not None:
            for name, version in list(profile.state.versions.items()):
                if version <= plan.delete_upto:
                    del profile.state.versions[name]
                    del profile.values[name]
        for name, (value, version) in plan.upserts.items():
            profile.state.versions[name] = version
            profile.values[name] = value
        profile.state.last_update = plan.last_update
        profile.state.deleted = plan.deleted
        profile.state.ops_upto = plan.ops_upto
        profile.state.marks = plan.marks
        result.written += len(plan.upserts)
    return result


def _state_of(profile: _Profile) -> ContactState:
    state = profile.state
    return ContactState(
        state.last_update,
        state.deleted,
        state.versions,
        profile.values,
        state.ops_upto,
        state.marks,
    )


def _contact_of(contact_id: str, profile: _Profile) -> Contact | None:
    """The contact a profile holds; None when it does not exist (deleted)."""
    last, deleted = profile.state.last_update, profile.state.deleted
    if last is None or not contact_exists(last, deleted):
        return None
    live = sorted(name for name, value in profile.values.items() if value is not None)
    return Contact(
        contact_id,
        {name: profile.values[name] for name in live},
        {name: profile.state.versions[name] for name in live},
        last[0],
    )
