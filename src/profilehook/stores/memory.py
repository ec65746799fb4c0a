"""In-memory store for tests: the same contract and rules as the durable ones."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from profilehook.changes import Change, change_id
from profilehook.constants import MAX_SEGMENTS_PER_WORKSPACE
from profilehook.errors import CursorExpired, InvalidCursor
from profilehook.events import Event, Version, encode_event, now_us
from profilehook.filters import Query, matches
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
    split_purged,
    too_old_error,
)
from profilehook.stores.changes import ChangeLog
from profilehook.stores.memory_destinations import MemoryDestinations
from profilehook.stores.query import ContactQueries, QueryPage
from profilehook.stores.segments import (
    BACKFILL_CHUNK_CONTACTS,
    Moves,
    Segment,
    SegmentMoves,
    Segments,
)


@dataclass
class _Profile:
    state: ContactState = field(default_factory=ContactState)
    values: dict[str, Any] = field(default_factory=dict)  # None = tombstone


class MemoryStore(Store, ContactQueries, Segments, MemoryDestinations):
    def __init__(self) -> None:
        MemoryDestinations.__init__(self)
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
        self._purged_upto_us: int | None = None  # the newest event time purge_history forgot
        self._segments: dict[tuple[str, str], Segment] = {}
        self._members: dict[tuple[str, str], set[str]] = {}  # (workspace, segment_id) -> ids
        self._backfilled: dict[tuple[str, str], str] = {}  # the backfill's last contact
        self._changes: list[tuple[int, Change]] = []  # (position, change), in apply order
        self._change_seq = 0
        self._changes_purged: dict[str, int] = {}  # workspace -> the last position purged

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        fresh = [e for e in first_of_each(events) if (e.workspace, e.event_id) not in self._events]
        new, erased = split_erased(fresh, self._erased)  # an erased contact's: a stub, first
        new, refused = split_purged(new, self._purged_upto_us)
        applied_us = now_us()
        for event in refused:
            error = too_old_error(self._purged_upto_us or 0)
            self._events[(event.workspace, event.event_id)] = EventRecord(
                event, "failed", applied_us, error
            )
        for event in new:
            self._events[(event.workspace, event.event_id)] = EventRecord(
                event, "applied", applied_us
            )
        for stub in erased:
            self._events[(stub.workspace, stub.event_id)] = EventRecord(stub, "erased", applied_us)
        for repeat in repeats(events, fresh):
            stored = self._events[(repeat.workspace, repeat.event_id)]
            # As bytes, as the other stores compare them: decoded, {"v": 1} == {"v": True}.
            if stored.status == "applied" and encode_event(stored.event) != encode_event(repeat):
                self._events[(repeat.workspace, repeat.event_id)] = replace(
                    stored, status="duplicate"
                )
        changes = ChangeLog(new)
        result = _fold(self._profiles, new, self._base, changes)
        result.segment_moves = self._move({(e.workspace, e.contact_id) for e in new})
        changes.note_segments(result.segment_moves)
        result.changes = len(changes)
        for record in changes.records():
            self._change_seq += 1
            cursor = str(self._change_seq)
            self._changes.append(
                (
                    self._change_seq,
                    Change(
                        change_id(cursor),
                        cursor,
                        record.workspace,
                        record.contact_id,
                        record.event_id,
                        applied_us,
                        record.body,
                    ),
                )
            )
        for key, name in result.cleared.items():
            warned = self._events.get(key)
            if warned is not None and (warned.error or "").startswith(f"{name}: "):
                self._events[key] = replace(warned, error=None)
        for key, warning in result.warnings.items():
            if key in self._events:
                self._events[key] = replace(self._events[key], error=warning)
        return result.count_new(events, new, erased, refused)

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

    async def query_contacts(self, workspace: str, query: Query) -> QueryPage:
        """The reference evaluator over every profile (a store for tests)."""
        found = []
        for (ws, contact_id), profile in self._profiles.items():
            if ws != workspace or (query.after is not None and contact_id <= query.after):
                continue
            contact = _contact_of(contact_id, profile)
            if contact is not None and matches(
                query.filter, contact_id, contact.properties, contact.updated_us
            ):
                found.append(contact)
        found.sort(key=lambda c: c.contact_id)
        count = None
        if query.count:
            count = sum(
                1
                for (ws, contact_id), profile in self._profiles.items()
                if ws == workspace
                and (contact := _contact_of(contact_id, profile)) is not None
                and matches(query.filter, contact_id, contact.properties, contact.updated_us)
            )
        page = found[: query.limit]
        more = len(found) > query.limit
        return QueryPage(page, page[-1].contact_id if more else None, count)

    def _move(self, keys: Iterable[tuple[str, str]]) -> Moves:
        """Decide these contacts anew in every segment of their workspace."""
        moves: Moves = {}
        for workspace, contact_id in keys:
            found = self._profiles.get((workspace, contact_id))
            contact = None if found is None else _contact_of(contact_id, found)
            entered, exited = [], []
            for (ws, segment_id), segment in self._segments.items():
                if ws != workspace:
                    continue
                members = self._members[(ws, segment_id)]
                now = contact is not None and matches(
                    segment.filter, contact_id, contact.properties, contact.updated_us
                )
                if now and contact_id not in members:
                    members.add(contact_id)
                    entered.append(segment_id)
                elif not now and contact_id in members:
                    members.discard(contact_id)
                    exited.append(segment_id)
            if entered or exited:
                moves[(workspace, contact_id)] = SegmentMoves(tuple(entered), tuple(exited))
        return moves

    async def create_segment(
        self, segment: Segment, most: int = MAX_SEGMENTS_PER_WORKSPACE
    ) -> bool:
        if sum(w == segment.workspace for w, _ in self._segments) >= most:
            return False
        self._segments[(segment.workspace, segment.segment_id)] = segment
        self._members[(segment.workspace, segment.segment_id)] = set()
        return True

    def _sized(self, segment: Segment) -> Segment:
        members = self._members[(segment.workspace, segment.segment_id)]
        return replace(segment, size=len(members))

    async def list_segments(self, workspace: str) -> list[Segment]:
        found = [s for (w, _), s in self._segments.items() if w == workspace]
        return [self._sized(s) for s in sorted(found, key=lambda s: (s.created_us, s.segment_id))]

    async def get_segment(self, workspace: str, segment_id: str) -> Segment | None:
        found = self._segments.get((workspace, segment_id))
        return None if found is None else self._sized(found)

    async def delete_segment(self, workspace: str, segment_id: str) -> bool:
        self._members.pop((workspace, segment_id), None)
        return self._segments.pop((workspace, segment_id), None) is not None

    async def segment_members(
        self, workspace: str, segment_id: str, after: str | None, limit: int
    ) -> tuple[list[Contact], str | None]:
        ids = sorted(
            i for i in self._members.get((workspace, segment_id), ()) if after is None or i > after
        )
        page = [c for i in ids[:limit] if (c := await self.get_contact(workspace, i))]
        return page, ids[limit - 1] if len(ids) > limit else None

    async def backfill_segment(
        self, workspace: str, segment_id: str, limit: int = BACKFILL_CHUNK_CONTACTS
    ) -> bool:
        key = (workspace, segment_id)
        segment = self._segments.get(key)
        if segment is None or segment.status == "ready":
            return True
        after = self._backfilled.get(key, "")
        ids = sorted(c for w, c in self._profiles if w == workspace and c > after)[:limit]
        members = self._members[key]
        for contact_id in ids:
            contact = _contact_of(contact_id, self._profiles[(workspace, contact_id)])
            if contact is not None and matches(
                segment.filter, contact_id, contact.properties, contact.updated_us
            ):
                members.add(contact_id)
            else:
                members.discard(contact_id)
        if ids:
            self._backfilled[key] = ids[-1]
        done = len(ids) < limit
        self._segments[key] = replace(
            segment, status="ready" if done else "building", scanned=segment.scanned + len(ids)
        )
        return done

    async def building_segments(self) -> list[tuple[str, str]]:
        return [key for key, s in self._segments.items() if s.status == "building"]

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
        self._move({*self._profiles, *((w, c) for (w, _), m in self._members.items() for c in m)})
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
        if old:
            newest = max(self._purged_upto_us or 0, old[-1].event.ts_us)
            self._purged_upto_us = newest
        _fold(self._snapshots, [r.event for r in old if r.status in _APPLIED])
        return len(old)

    async def read_changes(self, workspace: str, after: str | None, limit: int) -> list[Change]:
        start = _position(after)
        if after is not None and start < self._changes_purged.get(workspace, 0):
            raise CursorExpired()
        found = []
        for position, change in self._changes:
            if position > start and change.workspace == workspace:
                found.append(change)
                if len(found) >= limit:
                    break
        return found

    async def feed_end(self, workspace: str) -> str | None:
        # One position counter for every workspace: past every change of this one.
        return str(self._change_seq) if self._change_seq else None

    async def purge_changes(self, before_us: int, limit: int) -> int:
        old = [(p, c) for p, c in self._changes if c.applied_us < before_us][:limit]
        for position, change in old:
            purged = self._changes_purged.get(change.workspace, 0)
            self._changes_purged[change.workspace] = max(purged, position)
        gone = {p for p, _ in old}
        self._changes = [(p, c) for p, c in self._changes if p not in gone]
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

    async def erase_contacts(self, erasures: Sequence[Erasure]) -> None:
        for erasure in erasures:
            await self._erase_contact(erasure)

    async def _erase_contact(self, erasure: Erasure) -> None:
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
        self._move({(workspace, contact_id)})
        self._changes = [
            (p, c)
            for p, c in self._changes
            if (c.workspace, c.contact_id) != (workspace, contact_id)
        ]
        await self.forget_contact_deliveries(workspace, contact_id)
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
    changes: ChangeLog | None = None,
) -> ApplyResult:
    """Apply ``events`` to ``profiles`` (the profiles, or the snapshots) by the shared rules;
    ``base``: what a late event's properties are recomputed from (``plan_contact``)."""
    result = ApplyResult()
    for key, group in by_contact(events).items():
        profile = profiles.setdefault(key, _Profile())
        state = _state_of(profile)
        contact_base = None if base is None else base(key, group)
        plan = plan_contact(state, group, contact_base)
        if changes is not None:  # before the profile below changes under ``state``
            changes.add(state, group, plan, contact_base)
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


def _position(cursor: str | None) -> int:
    """A cursor of this store (the decimal position of a change) as a number; None: 0."""
    if cursor is None:
        return 0
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise InvalidCursor("not a cursor of this feed")
    return int(cursor)
