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
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from profilehook.constants import MAX_SEGMENTS_PER_WORKSPACE
from profilehook.events import Version
from profilehook.filters import (
    PSEUDO,
    RANGE_OPS,
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
_SCALARS = (str, int, float, bool, type(None))
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
    # The filter as (property, op, number) when it is one range on one property's numbers
    # (``Thresholds`` decides those by bisection); None otherwise.
    ranged: tuple[str, str, int | float] | None = None

    @classmethod
    def of(cls, segment_id: str, node: Filter) -> Rule:
        names = set(_names(node))
        return cls(
            segment_id,
            node,
            frozenset(names - {UPDATED_AT}),
            UPDATED_AT in names,
            compile_filter(node),
            _ranged(node),
        )

    def needs(self, touched: Touched) -> bool:
        """Whether the change can move the contact in or out of this segment."""
        if touched.exists_changed or touched.names is None:
            return True
        if self.uses_updated and touched.updated_changed:
            return True
        return not self.names.isdisjoint(touched.names)


def _ranged(node: Filter) -> tuple[str, str, int | float] | None:
    while isinstance(node, All | AnyOf) and len(node.items) == 1:
        node = node.items[0]
    if (
        isinstance(node, Condition)
        and node.op in RANGE_OPS
        and node.property not in PSEUDO
        and node.value.__class__ in _NUMBERS
    ):
        return node.property, node.op, node.value
    return None


_NUMBERS = (int, float)  # not bool: a filter's number never matches a boolean (no coercion)


class Thresholds:
    """The segments whose filter is one range on one property's numbers (``gt 0.5``), all on
    the same property, decided together by bisection over their sorted thresholds: a value's
    segments are a run of each op's sorted list, and a change of value moves only those
    between the old run and the new. The same answers as ``filters.matches``
    (tests/test_segments_thresholds.py): a value that is not an int or a float (missing, a
    string, a boolean) is in none of them."""

    __slots__ = ("kinds",)

    def __init__(self, rules: Iterable[tuple[str, str, int | float]]) -> None:
        """``rules``: (segment_id, op, threshold) of each."""
        by_op: dict[str, list[tuple[int | float, str]]] = {}
        for segment_id, op, value in rules:
            by_op.setdefault(op, []).append((value, segment_id))
        self.kinds = []
        for op, found in by_op.items():
            found.sort(key=lambda pair: pair[0])
            keys = [value for value, _ in found]
            ids = [segment_id for _, segment_id in found]
            self.kinds.append((op, keys, ids))

    @staticmethod
    def _run(op: str, keys: list[int | float], value: Any) -> tuple[int, int]:
        """The slice of ``keys`` (sorted) whose segment ``value`` is in."""
        if value.__class__ not in _NUMBERS:
            return 0, 0
        if op == "gt":  # threshold < value
            return 0, bisect_left(keys, value)
        if op == "gte":  # threshold <= value
            return 0, bisect_right(keys, value)
        if op == "lt":  # threshold > value
            return bisect_right(keys, value), len(keys)
        return bisect_left(keys, value), len(keys)  # lte: threshold >= value

    def members(self, value: Any) -> list[str]:
        """The segments a property holding ``value`` is in."""
        found = []
        for op, keys, ids in self.kinds:
            lo, hi = self._run(op, keys, value)
            found += ids[lo:hi]
        return found

    def moves(self, old: Any, new: Any) -> tuple[list[str], list[str]]:
        """The segments entered and left when the property's value goes from ``old`` to
        ``new`` (None: absent)."""
        entered: list[str] = []
        exited: list[str] = []
        for op, keys, ids in self.kinds:
            lo0, hi0 = self._run(op, keys, old)
            lo1, hi1 = self._run(op, keys, new)
            if lo0 == lo1 and hi0 == hi1:
                continue
            entered += [ids[i] for i in range(lo1, hi1) if not lo0 <= i < hi0]
            exited += [ids[i] for i in range(lo0, hi0) if not lo1 <= i < hi1]
        return entered, exited


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
    """A workspace's segments, indexed by the properties their filters name; ``ready`` marks
    those whose memberships are complete (the backfill is done): only those may be decided
    from the profile before instead of their stored memberships, and so by ``Thresholds``."""

    rules: list[Rule] = field(default_factory=list)
    by_name: dict[str, list[Rule]] = field(default_factory=dict)
    on_updated: list[Rule] = field(default_factory=list)
    ready: frozenset[str] = frozenset()
    # Ready segments of one range on one property, by that property; their ids.
    ranges: dict[str, Thresholds] = field(default_factory=dict)
    ranged: frozenset[str] = frozenset()
    # The others (not decided by ``Thresholds``), by the properties they name.
    unranged_by_name: dict[str, list[Rule]] = field(default_factory=dict)
    all_ready: bool = False
    _names_of: dict[str, frozenset[str]] = field(default_factory=dict)
    _needed: dict[tuple[frozenset[str], bool], list[Rule]] = field(default_factory=dict)
    _rest: dict[int, tuple[list[Rule], list[Rule]]] = field(default_factory=dict)

    def add(self, rule: Rule) -> None:
        self.rules.append(rule)
        for name in rule.names:
            self.by_name.setdefault(name, []).append(rule)
        if rule.uses_updated:
            self.on_updated.append(rule)
        self._names_of.clear()
        self._needed.clear()
        self._rest.clear()

    def set_ready(self, ready: frozenset[str]) -> RuleSet:
        """Mark the ready segments (and group the ranges among them); the set itself."""
        self.ready = ready
        grouped: dict[str, list[tuple[str, str, int | float]]] = {}
        for rule in self.rules:
            if rule.ranged is not None and rule.segment_id in ready:
                name, op, value = rule.ranged
                grouped.setdefault(name, []).append((rule.segment_id, op, value))
        self.ranges = {name: Thresholds(found) for name, found in grouped.items()}
        self.ranged = frozenset(s for found in grouped.values() for s, _, _ in found)
        self.unranged_by_name = {
            name: kept
            for name, rules in self.by_name.items()
            if (kept := [r for r in rules if r.segment_id not in self.ranged])
        }
        self.all_ready = all(rule.segment_id in ready for rule in self.rules)
        return self

    def quick(
        self,
        change: Touched,
        values: Mapping[str, Any],
        plan: ContactPlan,
        partial: bool = False,
        held: frozenset[str] | None = None,
    ) -> SegmentMoves | Literal[False] | None:
        """The moves of a contact that existed before the batch and still does (or did not
        and does not), decided from the values the batch's plan was made from (``values``:
        the stored ones, tombstones as None) and the plan itself, for a workspace whose
        segments are all ready and none looks at the last update (``quick_applies``). Only
        the names whose value the plan really changes are looked at (the segments' answers
        on unchanged values stand); the ranges by bisection, the other filters on the profiles
        before and after, of only the names they look at. None: no move. ``partial``:
        ``values`` holds only the names the plan writes (those read for it) or ``held``, so
        False (not decided here) when a filter to decide looks at another."""
        assert change.names is not None and plan.delete_upto is None
        if not contact_exists(plan.last_update, plan.deleted):
            return None  # nor did it exist before (``quick_applies``): in no segment
        upserts, removes = plan.upserts, plan.removes
        entered: list[str] = []
        exited: list[str] = []
        others: dict[str, Rule] = {}
        for name in change.names:
            if name not in self.by_name:
                continue
            old = values.get(name)
            new = None if name in removes else upserts[name][0] if name in upserts else old
            if old.__class__ is new.__class__ and old.__class__ in _SCALARS and old == new:
                continue
            thresholds = self.ranges.get(name)
            if thresholds is not None:
                e, x = thresholds.moves(old, new)
                entered += e
                exited += x
            for rule in self.unranged_by_name.get(name, ()):
                others[rule.segment_id] = rule
        if others:
            names = {n for rule in others.values() for n in rule.names}
            if partial and not names <= (change.names if held is None else held):
                return False
            before = {n: v for n in names if (v := values.get(n)) is not None}
            after = dict(before)
            for name in names:
                if name in removes:
                    after.pop(name, None)
                elif name in upserts:
                    if (value := upserts[name][0]) is None:
                        after.pop(name, None)
                    else:
                        after[name] = value
            contact_id, now_us = change.contact_id, plan.last_update[0]  # type: ignore[index]
            for rule in others.values():
                test = rule.test or compile_filter(rule.filter)
                was = test(contact_id, before, change.updated_before_us)
                now = test(contact_id, after, now_us)
                if now and not was:
                    entered.append(rule.segment_id)
                elif was and not now:
                    exited.append(rule.segment_id)
        return SegmentMoves(tuple(entered), tuple(exited)) if entered or exited else None

    def quick_reads(self, names: Iterable[str]) -> set[str]:
        """The properties ``quick`` may look at for a change of ``names``, besides them: those
        of the filters it tests on profiles (none when it does not apply to the workspace)."""
        if not self.all_ready or self.on_updated:
            return set()
        return {n for name in names for r in self.unranged_by_name.get(name, ()) for n in r.names}

    def quick_applies(self, change: Touched) -> bool:
        """Whether ``quick`` decides ``change``: all segments ready, none on the last update,
        and the contact's existence unchanged by a batch that deleted nothing."""
        return (
            self.all_ready
            and not self.on_updated
            and not change.exists_changed
            and change.names is not None
        )

    def needed(self, touched: Touched) -> list[Rule]:
        """The segments ``touched`` can move the contact in or out of (``Rule.needs``)."""
        if touched.exists_changed or touched.names is None:
            return self.rules
        key = (touched.names, touched.updated_changed)
        found = self._needed.get(key)
        if found is None:
            if len(self._needed) > 4096:
                self._needed.clear()
            chosen: dict[str, Rule] = {}
            for name in touched.names:
                for rule in self.by_name.get(name, ()):
                    chosen[rule.segment_id] = rule
            if touched.updated_changed:
                for rule in self.on_updated:
                    chosen[rule.segment_id] = rule
            found = self._needed[key] = list(chosen.values())
        return found

    def rest(self, rules: list[Rule]) -> list[Rule]:
        """``rules`` (a list ``needed`` gave) without the ranges (``Thresholds`` decides those)."""
        found = self._rest.get(id(rules))
        if found is None or found[0] is not rules:
            if len(self._rest) > 4096:
                self._rest.clear()
            found = self._rest[id(rules)] = (
                rules,
                [r for r in rules if r.segment_id not in self.ranged],
            )
        return found[1]

    def names_of(self, touched: Touched, rules: list[Rule]) -> frozenset[str]:
        """The properties that ``rules`` (``needed(touched)``) look at."""
        if touched.exists_changed or touched.names is None:
            return frozenset(name for rule in rules for name in rule.names)
        found: set[str] = set()
        for name in touched.names:
            named = self._names_of.get(name)
            if named is None:
                rules_of = self.by_name.get(name, ())
                named = self._names_of[name] = frozenset(n for r in rules_of for n in r.names)
            found |= named
        if touched.updated_changed and self.on_updated:
            found.update(name for rule in self.on_updated for name in rule.names)
        return frozenset(found)


_rule_sets: dict[tuple[str, tuple[tuple[str, str, str], ...]], RuleSet] = {}


def rule_set(
    workspace: str, rows: Iterable[tuple[str, str, str]], rule: Callable[[str, str], Rule]
) -> RuleSet:
    """A workspace's ``RuleSet`` from its stored segments' (segment_id, filter text, status),
    made once for the same rows (an apply reads them in every batch)."""
    key = (workspace, tuple(sorted(rows)))
    found = _rule_sets.get(key)
    if found is None:
        if len(_rule_sets) > 1_000:
            _rule_sets.clear()
        found = RuleSet()
        for segment_id, text, _ in key[1]:
            found.add(rule(segment_id, text))
        found.set_ready(frozenset(s for s, _, status in key[1] if status == "ready"))
        _rule_sets[key] = found
    return found


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
    sets: Mapping[str, RuleSet] | None = None,
) -> Moves:
    """The moves of the contacts of ``todo`` (from ``work``): ``contacts`` their profiles now
    (None or left out: absent), ``members`` the (workspace, segment_id, contact_id)
    memberships stored for them before. A backend that knows a contact's profile before the
    batch (``before``) may leave out its memberships of the ``ready`` segments: those are
    exactly what the filter says of that profile. ``sets``: the workspaces' rules (with
    ``RuleSet.set_ready``), whose ready ranges are then decided by bisection."""
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
        entered: list[str] = []
        exited: list[str] = []
        deciding = rules
        if changed is not None and sets is not None:
            found = sets.get(workspace)
            if found is not None and found.ranged:
                # All ready: decided here, from the profile before, and not one by one.
                deciding = found.rest(rules)
                for name in changed:
                    thresholds = found.ranges.get(name)
                    if thresholds is not None:
                        e, x = thresholds.moves(old_props.get(name), now_props.get(name))
                        entered += e
                        exited += x
        for rule in deciding:
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


def decide_quickly(
    by_workspace: Mapping[str, RuleSet],
    touched: Iterable[Touched],
    plans: Mapping[tuple[str, str], tuple[Mapping[str, Any], ContactPlan]],
    partial: bool = False,
    held: Mapping[tuple[str, str], frozenset[str]] | None = None,
) -> tuple[Moves, list[Touched]]:
    """The moves ``RuleSet.quick`` decides of the contacts in ``touched`` (from ``plans``: of
    each, the values its plan was made from and the plan), and the changes left to decide
    otherwise; a contact of a workspace without segments is in neither. ``partial`` and
    ``held`` (of each contact, when known): as for ``quick``."""
    moves: Moves = {}
    rest: list[Touched] = []
    for t in touched:
        rules = by_workspace.get(t.workspace)
        if rules is None:
            continue
        key = (t.workspace, t.contact_id)
        given = plans.get(key)
        if given is not None and rules.quick_applies(t):
            move = rules.quick(
                t, *given, partial=partial, held=None if held is None else held.get(key)
            )
            if move is False:
                rest.append(t)
            elif move is not None:
                moves[key] = move
        else:
            rest.append(t)
    return moves, rest


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
