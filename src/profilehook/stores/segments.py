"""Segments: saved filters whose membership each store keeps as events apply, in the
transaction that writes the profiles (README, Segments). The interface (``Segments``, passed by
every backend: tests/test_segment_contract.py) and what the backends share: which segments a
contact's change can move (``Touched``, ``Rule.needs``) and the moves themselves
(``SegmentMoves``), decided by the reference evaluator ``filters.matches`` on the contact's new
profile.

A new segment is ``building``: ``backfill_segment`` walks the existing contacts in id order, a
chunk per transaction, while the applier already keeps every contact it touches; once the walk
ends the segment is ``ready``. Each chunk and each apply decide a contact under the same lock
(SQLite: the one writer; PostgreSQL: the applier's lock per contact), so neither can write a
membership from a profile the other has changed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from profilehook.constants import MAX_SEGMENTS_PER_WORKSPACE
from profilehook.events import Version
from profilehook.filters import (
    UPDATED_AT,
    All,
    AnyOf,
    Condition,
    Filter,
    Not,
    Predicate,
    compile_filter,
)
from profilehook.stores.base import Contact, ContactPlan, contact_exists

SegmentStatus = Literal["building", "ready"]
BACKFILL_CHUNK_CONTACTS = 500


@dataclass(frozen=True)
class Segment:
    segment_id: str
    workspace: str
    name: str
    filter: Filter
    created_us: int
    status: SegmentStatus = "building"
    size: int = 0  # its members now
    scanned: int = 0  # contacts the backfill has looked at so far


@dataclass(frozen=True)
class SegmentMoves:
    """What one apply did to one contact's memberships: the segments it entered and left (what a
    change record carries as ``segments: {"entered": [...], "exited": [...]}``)."""

    entered: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()

    def view(self) -> dict[str, list[str]]:
        return {"entered": list(self.entered), "exited": list(self.exited)}


Moves = dict[tuple[str, str], SegmentMoves]
"""(workspace, contact_id) -> its moves, for the contacts an apply moved."""


class Touched(msgspec.Struct, frozen=True):
    """What a batch changed of one contact: the names of the properties whose value changed
    (None: any of them, a delete or a recomputation), and whether its existence or its last
    update changed. (A Struct: the apply makes one per changed contact, and a frozen
    dataclass's ``__init__`` took ~7 us of it, 20 times a tuple's.)"""

    workspace: str
    contact_id: str
    names: frozenset[str] | None
    exists_changed: bool
    updated_changed: bool
    # The values of ``names`` before (absent: none), when the caller knew them, and whether
    # the contact existed then and its last update: what the profile before the batch was,
    # given the profile after (``before_of``). None: not known.
    before: Mapping[str, Any] | None = None
    existed: bool = False
    updated_before_us: int = 0


def touched_by(
    key: tuple[str, str],
    last: Version | None,
    deleted: Version | None,
    plan: ContactPlan,
    values: Mapping[str, Any] | None = None,
) -> Touched | None:
    """What ``plan`` changes of a contact whose row held ``last`` and ``deleted``; None when
    nothing a filter can see. ``values``: the row's values of (at least) the properties the
    plan writes, when the caller read them."""
    names = None if plan.delete_upto is not None else frozenset(plan.upserts) | plan.removes
    existed = last is not None and contact_exists(last, deleted)
    exists = plan.last_update is not None and contact_exists(plan.last_update, plan.deleted)
    updated = exists and (last is None or plan.last_update != last)
    if names is not None and not names and existed == exists and not updated:
        return None
    before = None
    if values is not None and names is not None:
        before = {n: v for n in names if (v := values.get(n)) is not None} if existed else {}
    return Touched(
        key[0],
        key[1],
        names,
        existed != exists,
        updated,
        before,
        existed,
        last[0] if last is not None else 0,
    )


def before_of(change: Touched, now: Contact | None) -> Contact | None:
    """The contact before the batch, from its profile now (with at least the properties the
    segments look at) and what ``change`` knew of the values it changed; only when
    ``change.before`` is known."""
    assert change.before is not None and change.names is not None
    if not change.existed:
        return None
    held = dict(now.properties) if now is not None else {}
    for name in change.names:
        held.pop(name, None)
    held.update(change.before)
    return Contact(change.contact_id, held, {}, change.updated_before_us)


def profile_before(
    contact_id: str,
    last: Version | None,
    deleted: Version | None,
    values: Mapping[str, Any],
    names: Iterable[str],
) -> Contact | None:
    """The contact before a batch, from its stored ``values`` (``ContactState.values``,
    tombstones as None) and versions, with only ``names`` of its properties (those the
    segments look at); None when it did not exist."""
    if last is None or not contact_exists(last, deleted):
        return None
    live = {n: v for n in names if (v := values.get(n)) is not None}
    return Contact(contact_id, live, {}, last[0])


def profile_after(
    contact_id: str,
    values: Mapping[str, Any],
    versions: Mapping[str, Version],
    plan: ContactPlan,
    names: Iterable[str],
) -> Contact | None:
    """The contact as ``plan`` leaves it (as the store writes it) from its stored ``values``
    and ``versions`` before, with only ``names`` of its properties; None when it does not
    exist then."""
    if plan.last_update is None or not contact_exists(plan.last_update, plan.deleted):
        return None
    upto, upserts, removes = plan.delete_upto, plan.upserts, plan.removes
    live = {}
    for name in names:
        if name in removes:
            continue
        if name in upserts:
            value = upserts[name][0]
        else:
            value = values.get(name)
            if value is not None and upto is not None and versions[name] <= upto:
                continue
        if value is not None:
            live[name] = value
    return Contact(contact_id, live, {}, plan.last_update[0])


def everything(workspace: str, contact_id: str) -> Touched:
    """A contact to decide anew in every segment (an erasure recomputed it)."""
    return Touched(workspace, contact_id, None, True, True)


@dataclass(frozen=True)
class Rule:
    """A segment as the applier checks it."""

    segment_id: str
    filter: Filter
    names: frozenset[str] = field(default_factory=frozenset)
    uses_updated: bool = False
    test: Predicate | None = None  # filters.compile_filter(filter)

    @classmethod
    def of(cls, segment_id: str, node: Filter) -> Rule:
        names = set(_names(node))
        return cls(
            segment_id,
            node,
            frozenset(names - {UPDATED_AT}),
            UPDATED_AT in names,
            compile_filter(node),
        )

    def needs(self, touched: Touched) -> bool:
        """Whether the change can move the contact in or out of this segment."""
        if touched.exists_changed or touched.names is None:
            return True
        if self.uses_updated and touched.updated_changed:
            return True
        return not self.names.isdisjoint(touched.names)


def _names(node: Filter) -> Iterable[str]:
    if isinstance(node, All | AnyOf):
        for item in node.items:
            yield from _names(item)
    elif isinstance(node, Not):
        yield from _names(node.item)
    elif isinstance(node, Condition):
        yield node.property


@dataclass
class RuleSet:
    """A workspace's segments, indexed by the properties their filters name."""

    rules: list[Rule] = field(default_factory=list)
    by_name: dict[str, list[Rule]] = field(default_factory=dict)
    on_updated: list[Rule] = field(default_factory=list)

    def add(self, rule: Rule) -> None:
        self.rules.append(rule)
        for name in rule.names:
            self.by_name.setdefault(name, []).append(rule)
        if rule.uses_updated:
            self.on_updated.append(rule)

    def needed(self, touched: Touched) -> list[Rule]:
        """The segments ``touched`` can move the contact in or out of (``Rule.needs``)."""
        if touched.exists_changed or touched.names is None:
            return self.rules
        found: dict[str, Rule] = {}
        for name in touched.names:
            for rule in self.by_name.get(name, ()):
                found[rule.segment_id] = rule
        if touched.updated_changed:
            for rule in self.on_updated:
                found[rule.segment_id] = rule
        return list(found.values())


Work = list[tuple[Touched, list[Rule]]]


def work(by_workspace: Mapping[str, RuleSet], touched: Iterable[Touched]) -> Work:
    """The touched contacts that some segment needs to decide, with those segments."""
    out: Work = []
    for change in touched:
        rules = by_workspace.get(change.workspace)
        needed = rules.needed(change) if rules is not None else []
        if needed:
            out.append((change, needed))
    return out


Profiles = Mapping[tuple[str, str], Contact | None]


def decide(
    todo: Work,
    contacts: Profiles,
    members: set[tuple[str, str, str]],
    before: Profiles | None = None,
    ready: frozenset[str] = frozenset(),
) -> Moves:
    """The moves of the contacts of ``todo`` (from ``work``): ``contacts`` their profiles now
    (None or left out: absent), ``members`` the (workspace, segment_id, contact_id)
    memberships stored for them before. A backend that knows a contact's profile before the
    batch (``before``) may leave out its memberships of the ``ready`` segments: those are
    exactly what the filter says of that profile."""
    moves: Moves = {}
    for change, rules in todo:
        workspace, contact_id = key = (change.workspace, change.contact_id)
        contact = contacts.get(key)
        known = before is not None and key in before
        old = before.get(key) if before is not None else None
        now_props = contact.properties if contact is not None else {}
        now_us = contact.updated_us if contact is not None else 0
        # Both profiles known and the contact there before and after: a ready segment whose
        # properties (and last update, if it looks at it) hold the same values gives the same
        # answer, whatever the batch wrote (a rewrite of the same value, say): nothing to move.
        same_contact = known and old is not None and contact is not None
        old_props = old.properties if old is not None else {}
        old_us = old.updated_us if old is not None else 0
        # The names whose value differs, once per contact (not per segment).
        changed = _changed(old_props, now_props) if same_contact else None
        entered, exited = [], []
        for rule in rules:
            test = rule.test or compile_filter(rule.filter)
            ready_before = known and rule.segment_id in ready
            if (
                changed is not None
                and ready_before
                and (not rule.uses_updated or old_us == now_us)
                and rule.names.isdisjoint(changed)
            ):
                continue
            now = contact is not None and test(contact_id, now_props, now_us)
            if ready_before:
                was = old is not None and test(contact_id, old_props, old_us)
            else:
                was = (workspace, rule.segment_id, contact_id) in members
            if now and not was:
                entered.append(rule.segment_id)
            elif was and not now:
                exited.append(rule.segment_id)
        if entered or exited:
            moves[key] = SegmentMoves(tuple(entered), tuple(exited))
    return moves


_SCALARS = (str, int, float, bool, type(None))


def _changed(old: Mapping[str, Any], now: Mapping[str, Any]) -> set[str]:
    """The names that do not hold the same scalar before and after: the same type too, since
    equal values of different types (1 and 1.0, 1 and True) answer a filter differently (no
    coercion: filters.py). A list or an object is never taken as unchanged. (A name in
    neither is unchanged: the profiles need hold only the names the segments look at.)"""
    changed = set()
    for name in old.keys() | now.keys():
        a, b = old.get(name), now.get(name)
        if a.__class__ is not b.__class__ or a.__class__ not in _SCALARS or a != b:
            changed.add(name)
    return changed


def member_rows(moves: Moves) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(workspace, segment_id, contact_id) rows to add and to remove."""
    added, removed = [], []
    for (workspace, contact_id), move in moves.items():
        added += [(workspace, s, contact_id) for s in move.entered]
        removed += [(workspace, s, contact_id) for s in move.exited]
    return added, removed


class Segments(ABC):
    """Segments and their members. Backend errors are raised as ``StorageUnavailable``."""

    @abstractmethod
    async def create_segment(
        self, segment: Segment, most: int = MAX_SEGMENTS_PER_WORKSPACE
    ) -> bool:
        """Record a new segment (``building``, no members yet); the applier keeps it from
        then on, ``backfill_segment`` fills it from the contacts that exist already. False
        (and nothing recorded) when its workspace has ``most`` segments already: decided
        atomically, so that creations at once never pass the limit together."""

    @abstractmethod
    async def list_segments(self, workspace: str) -> list[Segment]:
        """The workspace's segments by creation time, each with its size."""

    @abstractmethod
    async def get_segment(self, workspace: str, segment_id: str) -> Segment | None: ...

    @abstractmethod
    async def delete_segment(self, workspace: str, segment_id: str) -> bool:
        """Forget the segment and its members; False when there is no such segment."""

    @abstractmethod
    async def segment_members(
        self, workspace: str, segment_id: str, after: str | None, limit: int
    ) -> tuple[list[Contact], str | None]:
        """Up to ``limit`` members in contact_id order after ``after``, and the contact to
        continue after (None: the last page)."""

    @abstractmethod
    async def backfill_segment(
        self, workspace: str, segment_id: str, limit: int = BACKFILL_CHUNK_CONTACTS
    ) -> bool:
        """Decide the next ``limit`` contacts of a ``building`` segment in one transaction;
        True once it is ``ready`` (or gone)."""

    @abstractmethod
    async def building_segments(self) -> list[tuple[str, str]]:
        """(workspace, segment_id) of every segment still ``building``."""
