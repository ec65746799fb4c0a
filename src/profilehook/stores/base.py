"""The stores' contracts, and the last-writer-wins rules every backend shares.

A store is several interfaces, one per concern (as dramatiq splits ``Broker`` from
``Consumer``): ``ProfileStore`` (apply events, profiles, history, rebuild, export pages),
``Catalog`` (API keys and webhook sources), ``ProfileAliases`` (a source's own profile ids and
the events that wait for them), ``SeenNonces`` (replay protection) and ``Erasures`` (erasure
requests, suppressions). A backend implements
several in one class (``Store``, all of them); a caller asks only for the ones it uses. A new
concern (queries, segments, changes) gets an interface and a contract suite of its own.

Per property, the update with the greatest version ``(event time, event_id)`` wins; ``None``
unsets (the tombstone keeps its version). Deleting a contact at version D removes every
property with a version <= D, and no update with a version <= D can bring one back.
Besides setting, an event may operate on a property (``set_once``, ``add``, ``append``,
``remove``): the profile is the fold of all of a contact's events in version order (README,
Property operations). Every store reads what a batch touches and lets ``plan_contact`` decide
what to write (PostgreSQL, where several appliers work at once, under a lock per contact); a
late event on a property that an operation touched after it is decided by the property's
``Marks`` when they tell the answer, and otherwise has that property recomputed from the
contact's snapshot and history. What keeps the stores equal is the contract suites every
backend passes (tests/test_profile_store_contract.py, tests/test_operations.py), beside
tests/test_convergence.py and tests/test_operations.py (against reference models) and
tests/test_scale_out.py (PostgreSQL with concurrent appliers).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import msgspec

from profilehook.changes import Change
from profilehook.constants import DEFAULT_KEY_SCOPES, SCOPE_ADMIN, SCOPES
from profilehook.events import Event, Version, erased_stub, iso, predates, same_value
from profilehook.stores.destinations import Destinations

EventStatus = Literal["queued", "applied", "duplicate", "failed", "erased"]
"""``duplicate``: applied, and since then accepted again (another delivery, not the log's
redelivery of the same one) and dropped as a repeat; the first copy is what was applied.
``erased``: its contact was erased (or is suppressed): only the event's id, contact, time and
source are kept (``erased_stub``), none of its properties or metadata."""
Progress = Callable[[int, int], None]
"""Called with (done, total) during long operations."""


@dataclass(frozen=True)
class Contact:
    contact_id: str
    properties: dict[str, Any]
    versions: dict[str, Version]
    updated_us: int


@dataclass(frozen=True)
class EventRecord:
    event: Event
    status: EventStatus
    applied_us: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    workspace: str
    created_us: int
    revoked_us: int | None = None
    scopes: tuple[str, ...] = DEFAULT_KEY_SCOPES  # in SCOPES' order (``ordered_scopes``)


@dataclass(frozen=True)
class KeyGrant:
    """What a live key grants, looked up by its hash on every request."""

    key_id: str
    workspace: str
    scopes: tuple[str, ...]

    def allows(self, scope: str) -> bool:
        """Whether the key may do what ``scope`` names: ``admin`` implies every scope."""
        return scope in self.scopes or SCOPE_ADMIN in self.scopes


def ordered_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Known scopes once each, in ``SCOPES``' order (how they are stored and shown)."""
    given = set(scopes)
    return tuple(scope for scope in SCOPES if scope in given)


def scopes_text(scopes: Iterable[str]) -> str:
    """How the stores keep scopes: space-separated, in ``SCOPES``' order."""
    return " ".join(ordered_scopes(scopes))


def scopes_of(text: str) -> tuple[str, ...]:
    return ordered_scopes(text.split())


SourceKind = str  # a name in the registry of kinds, sources/kinds.py


@dataclass(frozen=True)
class Source:
    """A configured webhook integration of a workspace. ``config`` holds its options and the
    hashes of its secrets (never the secrets themselves)."""

    source_id: str
    workspace: str
    kind: SourceKind
    config: dict[str, Any]
    created_us: int


@dataclass(frozen=True)
class AliasUpdate:
    """What ``put_alias`` leaves: the contact the profile maps to now, and the events parked
    for that profile, to publish with that contact and then ``unpark``."""

    contact_id: str
    parked: list[Event]


@dataclass
class ApplyResult:
    """What one ``apply`` did: counts that feed the metrics."""

    applied: int = 0
    duplicates: int = 0
    superseded: int = 0
    written: int = 0
    erased: int = 0
    changes: int = 0  # changes recorded in the change feed (what a destination may want)
    applied_by_source: dict[str, int] = field(default_factory=dict)
    # (workspace, event_id) -> why an operation of the event changed nothing (README, Property operations: ``add``
    # on a value that is not a number): the store keeps it as the event record's ``error``.
    warnings: dict[tuple[str, str], str] = field(default_factory=dict)
    # (workspace, event_id) -> a property whose recompute found that the event's ``add`` on it
    # applied after all: a warning the event's record holds about that property goes.
    cleared: dict[tuple[str, str], str] = field(default_factory=dict)
    erased_by_source: dict[str, int] = field(default_factory=dict)
    # (workspace, contact_id) -> the segments the contact entered and left (stores/segments.py
    # ``SegmentMoves``), decided in the apply transaction.
    segment_moves: dict[tuple[str, str], Any] = field(default_factory=dict)
    # New events refused as older than what retention purged (``split_purged``): kept ``failed``.
    refused: int = 0
    refused_by_source: dict[str, int] = field(default_factory=dict)

    def add(self, other: ApplyResult) -> None:
        self.applied += other.applied
        self.refused += other.refused
        for source, count in other.refused_by_source.items():
            self.refused_by_source[source] = self.refused_by_source.get(source, 0) + count
        self.duplicates += other.duplicates
        self.superseded += other.superseded
        self.written += other.written
        self.changes += other.changes
        self.warnings.update(other.warnings)
        self.segment_moves.update(other.segment_moves)
        self.cleared.update(other.cleared)
        self.erased += other.erased
        for source, count in other.applied_by_source.items():
            self.applied_by_source[source] = self.applied_by_source.get(source, 0) + count
        for source, count in other.erased_by_source.items():
            self.erased_by_source[source] = self.erased_by_source.get(source, 0) + count

    def count_new(
        self,
        batch: Sequence[Event],
        new: Sequence[Event],
        erased: Sequence[Event] = (),
        refused: Sequence[Event] = (),
    ) -> ApplyResult:
        """Record which events of ``batch`` were new (applied), which were new and dropped for
        an erasure (``erased``), which were new and refused as too old (``refused``), and which
        were repeats."""
        self.applied = len(new)
        self.erased = len(erased)
        self.refused = len(refused)
        self.duplicates = len(batch) - len(new) - len(erased) - len(refused)
        for event in refused:
            self.refused_by_source[event.source] = self.refused_by_source.get(event.source, 0) + 1
        for event in new:
            self.applied_by_source[event.source] = self.applied_by_source.get(event.source, 0) + 1
        for event in erased:
            self.erased_by_source[event.source] = self.erased_by_source.get(event.source, 0) + 1
        return self


Marks = tuple[Version, Version | None]
"""What a contact keeps of one property that an operation touched, so that a late event on it
is decided without the history: the newest version of an operation on it, and the newest
version of an event on it that is not an ``add`` (None: none since the first operation)."""


_encode_marks = msgspec.msgpack.Encoder().encode
_decode_marks = msgspec.msgpack.Decoder(
    dict[str, tuple[tuple[int, str], tuple[int, str] | None]]
).decode


def encode_marks(marks: dict[str, Marks] | None, ops_upto: Version | None) -> bytes | None:
    """How the stores keep ``ContactState.marks`` (msgpack): None (NULL) when they are not
    known, and for a contact that no operation touched (as every contact before marks)."""
    if marks is None or (not marks and ops_upto is None):
        return None
    return _encode_marks(marks)


def decode_marks(data: bytes | None, ops_upto: Version | None) -> dict[str, Marks] | None:
    """``encode_marks``' inverse, given the contact's ``ops_upto``: no marks kept for a
    contact with operations means they are not known (None)."""
    if data is None:
        return None if ops_upto is not None else {}
    return _decode_marks(data)


@dataclass
class ContactState:
    """What a backend knows of one contact before a batch, as much as the batch touches:
    per property its version and its value (None: a tombstone)."""

    last_update: Version | None = None
    deleted: Version | None = None
    versions: dict[str, Version] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    # The newest event with an operation (not a set) applied to it: a late event older than
    # it may need its properties recomputed; one newer needs only the versions.
    ops_upto: Version | None = None
    # Per property an operation touched, its ``Marks``; None: not known (a contact whose
    # operations were applied before marks were kept: ``ops_upto`` bounds them).
    marks: dict[str, Marks] | None = field(default_factory=dict)


Base = Callable[[], tuple[ContactState, list[Event]]]
"""What a late event's property is recomputed from (README, Property operations): the contact's retention snapshot
(the folded state of its purged events) and its applied events other than the batch's."""


@dataclass
class ContactPlan:
    """The writes that one batch makes to one contact; nothing else is written."""

    upserts: dict[str, tuple[Any, Version]]  # value None = tombstone
    delete_upto: Version | None  # set when the batch deletes the contact at a newer version
    last_update: Version | None
    deleted: Version | None
    superseded: int
    warnings: dict[str, str] = field(default_factory=dict)  # event_id -> what was ignored
    removes: set[str] = field(default_factory=set)  # rows to drop (a recomputed property)
    ops_upto: Version | None = None  # the contact's ``ContactState.ops_upto`` after the batch
    marks: dict[str, Marks] | None = None  # the contact's ``ContactState.marks`` after it
    marks_changed: bool = False
    read_history: bool = False  # whether ``base`` was called
    cleared: dict[str, str] = field(default_factory=dict)  # event_id -> property (ApplyResult)

    @property
    def touches_contact_row(self) -> bool:
        return bool(self.upserts) or self.delete_upto is not None or bool(self.removes)


def plan_contact(
    state: ContactState, events: Iterable[Event], base: Base | None = None
) -> ContactPlan:
    """Decide, for one contact, which property rows a batch of new events writes: the fold
    rule of README "Property operations". A batch of sets (the everyday one) is decided by
    versions alone, as before operations existed. One with operations folds them in version
    order onto the stored values. A late event (older than what the contact holds) on a
    property that an operation touched after it is decided by the property's ``Marks`` when
    they tell the answer (``_Folding.late``); only otherwise is the property recomputed from
    ``base()`` (not given: the late event is dropped, as if the batch came after what the
    state holds, which is what the rebuild and the retention snapshots use, whose events come
    in version order)."""
    events = events if isinstance(events, list) else list(events)
    if len(events) == 1 and state.ops_upto is None and not events[0].ops:
        return _plan_sets(state, events)  # (the everyday contact: no operation, as below)
    newest = newest_version(state)
    oldest = min(e.version for e in events) if events and newest is not None else None
    # Otherwise what came after each late event on its properties were sets, which versions
    # decide: folding the batch in version order onto the stored values is the fold.
    late_after_ops = (
        oldest is not None
        and newest is not None
        and oldest < newest
        and state.ops_upto is not None
        and state.ops_upto > oldest
    )
    if not late_after_ops and not any(event.ops for event in events):
        return _plan_sets(state, events)
    return _plan_ops(state, events, base)


def newest_version(state: ContactState) -> Version | None:
    """The newest version applied to the contact: its last update or its delete."""
    last, deleted = state.last_update, state.deleted
    if last is None or deleted is None:
        return last or deleted
    return max(last, deleted)


def _plan_sets(state: ContactState, events: Iterable[Event]) -> ContactPlan:
    """``plan_contact`` for events that only set (or unset) properties."""
    if isinstance(events, list) and len(events) == 1 and events[0].kind != "delete":
        return _plan_one_set(state, events[0])
    best: dict[str, tuple[Any, Version]] = {}
    batch_delete: Version | None = None
    last_update = state.last_update
    writes = 0
    for event in events:
        version = event.version
        if event.kind == "delete":
            batch_delete = version if batch_delete is None else max(batch_delete, version)
            continue
        if last_update is None or version > last_update:
            last_update = version
        for name, value in event.properties.items():
            writes += 1
            held = best.get(name)
            if held is None or version > held[1]:
                best[name] = (value, version)
    marks = state.marks
    marked = _marked_by_sets(marks, events) if marks else None
    deleted = state.deleted
    delete_upto = None
    if batch_delete is not None and (deleted is None or batch_delete > deleted):
        deleted = delete_upto = batch_delete
    upserts = {
        name: (value, version)
        for name, (value, version) in best.items()
        if (deleted is None or version > deleted)
        and (name not in state.versions or version > state.versions[name])
    }
    return ContactPlan(
        upserts,
        delete_upto,
        last_update,
        deleted,
        writes - len(upserts),
        ops_upto=state.ops_upto,
        marks=marks if marked is None else marked,
        marks_changed=marked is not None,
    )


def _plan_one_set(state: ContactState, event: Event) -> ContactPlan:
    """``_plan_sets`` for one event that sets (the everyday contact of a batch)."""
    version = event.version
    last_update = state.last_update
    if last_update is None or version > last_update:
        last_update = version
    deleted, versions = state.deleted, state.versions
    if deleted is not None and version <= deleted:
        upserts = {}
    else:
        upserts = {
            name: (value, version)
            for name, value in event.properties.items()
            if (held := versions.get(name)) is None or version > held
        }
    marks = state.marks
    marked = _marked_by_sets(marks, (event,)) if marks else None
    return ContactPlan(
        upserts,
        None,
        last_update,
        deleted,
        len(event.properties) - len(upserts),
        ops_upto=state.ops_upto,
        marks=marks if marked is None else marked,
        marks_changed=marked is not None,
    )


def _marked_by_sets(marks: dict[str, Marks], events: Iterable[Event]) -> dict[str, Marks] | None:
    """``marks`` after these sets (each an event on its property that is not an ``add``);
    None when they move none."""
    marked: dict[str, Marks] | None = None
    for event in events:
        if event.kind == "delete" or marks.keys().isdisjoint(event.properties):
            continue
        version = event.version
        for name in event.properties:
            mark = (marked or marks).get(name)
            if mark is not None and (mark[1] is None or version > mark[1]):
                marked = marked or dict(marks)
                marked[name] = (mark[0], version)
    return marked


_ABSENT: Any = object()  # a property with no row (never set, or deleted)


def _plan_ops(state: ContactState, events: list[Event], base: Base | None) -> ContactPlan:
    events = sorted(events, key=_version_of)
    last_update, deleted, ops_upto = state.last_update, state.deleted, state.ops_upto
    batch_delete: Version | None = None
    for event in events:
        if event.ops and (ops_upto is None or event.version > ops_upto):
            ops_upto = event.version
        if event.kind == "delete":
            if batch_delete is None or event.version > batch_delete:
                batch_delete = event.version
        elif last_update is None or event.version > last_update:
            last_update = event.version
    delete_upto = None
    if batch_delete is not None and (deleted is None or batch_delete > deleted):
        deleted = delete_upto = batch_delete
    fold = _Folding(state, delete_upto, base is not None)
    writes = 0
    for event in events:
        if event.kind == "delete":
            fold.delete(event.version)
            continue
        writes += len(event.properties)
        if deleted is not None and event.version <= deleted:
            continue
        ops = event.ops
        for name, arg in event.properties.items():
            fold.step(event, name, arg, None if ops is None else ops.get(name))
    upserts: dict[str, tuple[Any, Version]] = {}
    removes: set[str] = set()
    if base is not None and (fold.recompute or fold.recompute_all):
        _recompute(fold, events, base(), upserts, removes)
    for name, now in fold.held.items():
        if now is None:
            continue
        stored = _stored(state, name, delete_upto)
        if stored is None or stored[1] != now[1] or not same_value(stored[0], now[0]):
            upserts[name] = now
    return ContactPlan(
        upserts,
        delete_upto,
        last_update,
        deleted,
        max(0, writes - len(upserts)),
        fold.warnings,
        removes,
        ops_upto,
        fold.marks,
        fold.marks_changed,
        read_history=base is not None and (bool(fold.recompute) or fold.recompute_all),
        cleared=fold.cleared,
    )


def _recompute(
    fold: _Folding,
    events: list[Event],
    found: tuple[ContactState, list[Event]],
    upserts: dict[str, tuple[Any, Version]],
    removes: set[str],
) -> None:
    """The properties ``fold`` could not decide, folded from the snapshot through the history
    and the batch."""
    snapshot, history = found
    everything = sorted([*history, *events], key=_version_of)
    names = fold.recompute
    if fold.recompute_all:  # (marks not known: every property the contact ever had)
        names = {*names, *fold.state.versions, *snapshot.versions}
        names.update(n for e in everything for n in e.properties)
    for name in names:
        fold.held.pop(name, None)
        found_now = _fold_property(snapshot, everything, name, fold.warnings, fold.cleared)
        stored = _stored(fold.state, name, fold.delete_upto)
        if found_now is None:
            if stored is not None:
                removes.add(name)
        elif stored is None or stored[1] != found_now[1] or not same_value(stored[0], found_now[0]):
            upserts[name] = found_now


class _Folding:
    """A batch's events folded, in version order, onto what a contact holds: per property its
    value now (``held``), the properties left to recompute from the history, and the marks.

    Every event folded before one being folded is older than it, so "a later event on this
    property" means one the contact held before the batch; by the fold rule (README, Property
    operations) a late event ``L`` at version v on property p changes nothing when the
    property's last change s (its version) is newer and no operation touched it after v (the
    change after v was a set); when nothing changed it after v (s < v), what it holds is what
    it held at v, so an ``L`` that changes nothing on it changes nothing at all; and when all
    that came after v were ``add``s of integers (no other event after v: marks), an ``add``
    of a non-zero integer onto a non-zero integer sums, the version staying s (every non-zero
    add changes, and a zero one changes only an absent value, which a non-zero sum rules out).
    Any other late event on a property with an operation after it has the property recomputed.
    """

    def __init__(self, state: ContactState, delete_upto: Version | None, recompute: bool):
        self.state = state
        self.delete_upto = delete_upto
        self.can_recompute = recompute
        self.held: dict[str, tuple[Any, Version] | None] = {}
        self.recompute: set[str] = set()
        self.recompute_all = False
        self.warnings: dict[str, str] = {}
        self.cleared: dict[str, str] = {}
        self.marks = None if state.marks is None else state.marks
        self.marks_changed = False

    def now(self, name: str) -> tuple[Any, Version] | None:
        held = self.held
        return held[name] if name in held else _stored(self.state, name, self.delete_upto)

    def delete(self, version: Version) -> None:
        """A delete in the batch: what it covers is absent; a late one has the properties an
        operation touched after it recomputed (their values were folded onto what it removes)."""
        for name, now in self.held.items():
            if now is not None and now[1] <= version:
                self.held[name] = None
        ops_upto = self.state.ops_upto
        if ops_upto is None or ops_upto < version:
            return
        if self.marks is None:
            self.recompute_all = True
        else:
            self.recompute.update(n for n, (o, _) in self.marks.items() if o > version)

    def step(self, event: Event, name: str, arg: Any, op: str | None) -> None:
        version = event.version
        held = self.held
        now = held[name] if name in held else _stored(self.state, name, self.delete_upto)
        s = None if now is None else now[1]
        marks = self.marks
        if marks is None:
            o, b = self._unknown_marks(s)
        else:
            mark = marks.get(name)
            o, b = (None, None) if mark is None else mark
        in_order = (s is None or s < version) and (o is None or o < version)
        if in_order and name not in self.recompute:
            # (in order, every mark it moves is older than it: the mark changes)
            if op is None:
                held[name] = (arg, version)
                if o is None or marks is None:
                    return
                mark = (o, version)
            elif marks is None:
                mark = None
            else:  # (b: the sets before a first operation are at most s)
                mark = (version, b if o is not None else s) if op == "add" else (version, version)
            if mark is not None and marks is not None:
                if not self.marks_changed:
                    marks = self.marks = dict(marks)
                    self.marks_changed = True
                marks[name] = mark
            if op is None:
                return
            value = _ABSENT if now is None or now[0] is None else now[0]
            changed, value, warning = apply_op(op, value, arg)
            if warning:
                self.warnings[event.event_id] = f"{name}: {warning}"
            if changed:
                held[name] = (None if value is _ABSENT else value, version)
            return
        if version in (s, o, b):  # this very event, folded before (a purge folding it again)
            return
        if marks is not None and (op is not None or o is not None):
            new_o = version if op is not None and (o is None or version > o) else o
            if o is None:
                b = s
            new_b = version if op != "add" and (b is None or version > b) else b
            if new_o is not None:
                self._set_mark(name, (new_o, new_b))
        if name in self.recompute or self.late(event, name, op, now, arg, o, b):
            return
        if not self.can_recompute:  # (as if it came before what the state holds)
            if op is None and (s is None or version > s):
                held[name] = (arg, version)
        else:
            self.recompute.add(name)
            held.pop(name, None)

    def late(
        self,
        event: Event,
        name: str,
        op: str | None,
        now: tuple[Any, Version] | None,
        arg: Any,
        o: Version | None,
        b: Version | None,
    ) -> bool:
        """Fold a late event by the shortcuts of the class docstring; False: none applies."""
        version = event.version
        if o is None or o < version:  # (then s > v): a set after it decides
            return True
        if op is None:
            return False
        if now is None or now[1] < version:
            value = _ABSENT if now is None or now[0] is None else now[0]
            changed, _, warning = apply_op(op, value, arg)
            if warning:
                self.warnings[event.event_id] = f"{name}: {warning}"
            return not changed
        if op != "add" or (b is not None and b > version) or type(arg) is not int or not arg:
            return False
        value = now[0]
        if type(value) is not int or not value:
            return False
        self.held[name] = (value + arg, now[1])
        return True

    def _unknown_marks(self, s: Version | None) -> tuple[Version | None, Version | None]:
        """Marks not kept: bounded by the contact's newest operation and the value's version."""
        o = self.state.ops_upto
        return o, o if s is None or (o is not None and o > s) else s

    def _set_mark(self, name: str, mark: Marks) -> None:
        marks = self.marks
        assert marks is not None
        if marks.get(name) == mark:
            return
        if not self.marks_changed:
            marks = self.marks = dict(marks)
            self.marks_changed = True
        marks[name] = mark


def _version_of(event: Event) -> Version:
    return (event.ts_us, event.event_id)


def _stored(state: ContactState, name: str, upto: Version | None) -> tuple[Any, Version] | None:
    """A property as stored (value None: a tombstone), unless the batch's delete covers it."""
    version = state.versions.get(name)
    if version is None or (upto is not None and version <= upto):
        return None
    return state.values.get(name), version


def _fold_property(
    start: ContactState,
    events: list[Event],
    name: str,
    warnings: dict[str, str],
    cleared: dict[str, str],
) -> tuple[Any, Version] | None:
    """One property folded from ``start`` through ``events`` (in version order): its value
    (None: a tombstone) and the version of the last event that changed it; None: no row.
    Each event whose operation on it warns is in ``warnings``; each ``add`` that applied is
    in ``cleared`` (a warning it got when it came before events older than it is wrong now)."""
    now = _stored(start, name, None)
    for event in events:
        version = event.version
        if start.deleted is not None and version <= start.deleted:
            continue
        if event.kind == "delete":
            now = None
            continue
        if name not in event.properties:
            continue
        arg = event.properties[name]
        op = None if event.ops is None else event.ops.get(name)
        if op is None:
            now = (arg, version)
            continue
        value = _ABSENT if now is None or now[0] is None else now[0]
        changed, value, warning = apply_op(op, value, arg)
        if warning:
            warnings[event.event_id] = f"{name}: {warning}"
        elif op == "add":
            cleared[event.event_id] = name
        if changed:
            now = (None if value is _ABSENT else value, version)
    return now


def apply_op(op: str, value: Any, arg: Any) -> tuple[bool, Any, str | None]:
    """One operation on a property's value (``_ABSENT`` when it has none): whether it changed
    it, the new value (``_ABSENT``: none), and a warning when the operation did not apply."""
    if op == "set_once":
        return (True, arg, None) if value is _ABSENT else (False, value, None)
    if op == "add":
        if value is _ABSENT:
            return True, arg, None
        kind = type(value)
        if kind is bool or not (kind is int or kind is float):
            return False, value, "add on a value that is not a number: unchanged"
        total = value + arg  # integers stay exact integers, however large (README)
        return not same_value(total, value), total, None
    if op == "append":
        was_list = type(value) is list
        items = [] if value is _ABSENT else list(value) if was_list else [value]
        for item in arg:
            if not contains(items, item):
                items.append(item)
        changed = not was_list or len(items) != len(value)
        return changed, items if changed else value, None
    if op == "remove":
        if value is _ABSENT:
            return False, value, None
        if type(value) is list:
            kept = [item for item in value if not contains(arg, item)]
            return (True, kept, None) if len(kept) != len(value) else (False, value, None)
        return (True, _ABSENT, None) if contains(arg, value) else (False, value, None)
    raise ValueError(f"unknown operation {op!r}")


def contains(items: list[Any], item: Any) -> bool:
    return any(same_value(item, other) for other in items)


def contact_exists(last_update: Version | None, deleted: Version | None) -> bool:
    return last_update is not None and (deleted is None or last_update > deleted)


def first_of_each(events: Iterable[Event]) -> list[Event]:
    """Drop repeats of an (workspace, event_id) within one batch, keeping the first."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for event in events:
        key = (event.workspace, event.event_id)
        if key not in seen:
            seen.add(key)
            unique.append(event)
    return unique


def repeats(batch: Sequence[Event], applied: Sequence[Event]) -> list[Event]:
    """The events of ``batch`` that ``apply`` dropped: repeats of an event_id recorded before or
    earlier in the batch. Their stored copy becomes ``duplicate`` unless they are the same bytes
    (the log delivering one acceptance again, after a crash)."""
    if len(applied) == len(batch):
        return []
    kept = {id(event) for event in applied}
    return [event for event in batch if id(event) not in kept]


def by_contact(events: Iterable[Event]) -> dict[tuple[str, str], list[Event]]:
    groups: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        groups.setdefault((event.workspace, event.contact_id), []).append(event)
    return groups


@dataclass(frozen=True)
class Nonce:
    """A signed webhook call's ``(Digest, X-Nonce)`` pair, per source: seen twice, a replay."""

    source_id: str
    digest: str
    nonce: str

    def key(self) -> bytes:
        """A fixed-size key for the pair, whatever the headers' lengths (index rows are bounded)."""
        parts = "\x00".join((self.source_id, self.digest, self.nonce))
        return hashlib.sha256(parts.encode(errors="surrogatepass")).digest()


class SeenNonces(ABC):
    """The nonces of signed calls, shared by every process on the store, each kept until its
    call's ``Date`` would be refused anyway: a replay is refused by any process, after a
    restart too. Passes tests/test_nonce_contract.py."""

    @abstractmethod
    async def remember_nonce(self, nonce: Nonce, expires_us: int, now_us: int) -> bool:
        """Atomically remember ``nonce`` until ``expires_us`` unless it is remembered already:
        True when it was not (of two processes racing on one nonce, exactly one gets True).
        Forgets the nonces that expired before ``now_us``."""

    @abstractmethod
    async def forget_nonce(self, nonce: Nonce) -> None:
        """Forget ``nonce``: its call was refused after all, and the sender's retry of it (same
        Digest and X-Nonce) must not be taken for a replay."""


class ProfileStore(ABC):
    """Profiles and the applied-event history: what the applier writes, and the reads, the
    export and the rebuild. Passes tests/test_profile_store_contract.py.

    Backend errors are raised as ``StorageUnavailable``.
    """

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` when the backend cannot be reached."""
        await self.get_event("", "")

    @abstractmethod
    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        """Apply a batch atomically: events already applied count as duplicates and change
        nothing but the stored copy's status (``duplicate``, see ``repeats``); the rest update
        the profiles by the rules above and join the history."""

    async def sync(self) -> None:
        """Make every ``apply`` so far survive a power loss. The applier acknowledges events to
        the log only after this. A store whose commits are durable already has nothing to do."""
        return None

    @abstractmethod
    async def record_failure(self, event: Event, error: str) -> None:
        """Keep an event that could not be applied, with status ``failed`` and the reason."""

    @abstractmethod
    async def get_contact(self, workspace: str, contact_id: str) -> Contact | None: ...

    @abstractmethod
    async def contacts_page(
        self, workspace: str, after: str | None, limit: int
    ) -> tuple[list[Contact], str | None]:
        """The workspace's contacts in ``contact_id`` order (the backend's), after ``after``
        (None: from the first), looking at up to ``limit`` stored contacts; and the
        ``contact_id`` to pass as ``after`` for the next page, None at the end. Deleted
        contacts are skipped: a page may hold fewer than ``limit``, even none, before the end."""

    @abstractmethod
    async def count_contacts(self, workspace: str) -> int:
        """How many contacts the workspace has stored, deleted ones included (what
        ``contacts_page`` looks at: a progress total)."""

    @abstractmethod
    async def history(
        self, workspace: str, contact_id: str, before: Version | None, limit: int
    ) -> list[EventRecord]:
        """Applied events of a contact, newest (by version) first, older than ``before``. Once
        the contact is deleted, its events at or below the delete's version are not shown (a
        deleted contact's data is not readable here); later ones are."""

    @abstractmethod
    async def get_event(self, workspace: str, event_id: str) -> EventRecord | None: ...

    @abstractmethod
    async def rebuild(self, progress: Progress | None = None) -> int:
        """Recompute every profile from the contacts' snapshots (what ``purge_history`` folded)
        and the event history (``applied`` and ``duplicate``); returns the events replayed."""

    @abstractmethod
    async def purge_history(self, before_us: int, limit: int) -> int:
        """Retention: forget up to ``limit`` event records (any status) whose event time is
        before ``before_us``, oldest first, in one short transaction; returns how many.

        The applied ones (``applied``, ``duplicate``) are first folded into their contact's
        snapshot, by the same rules as the profile: per property the value and version it had
        as of the purged events (tombstones too), the contact's last update and its delete.
        A snapshot is the folded state of the purged prefix of the history, so ``rebuild``
        (snapshot, then the remaining events) gives every profile exactly as before, and an
        event applied later still loses to a newer version the snapshot holds. Profiles are
        not touched. Safe with any number of processes purging at once. The store keeps the
        newest event time it purged: ``apply`` refuses a new event no newer than it
        (``split_purged``; a redelivery of a purged event would otherwise be applied twice)."""


class Catalog(ABC):
    """The API keys and the webhook sources of every workspace, read on every request.
    Passes tests/test_catalog_contract.py.

    Backend errors are raised as ``StorageUnavailable``.
    """

    @abstractmethod
    async def add_key(self, key: ApiKey, key_hash: str) -> None: ...

    @abstractmethod
    async def list_keys(self, workspace: str | None = None) -> list[ApiKey]: ...

    @abstractmethod
    async def revoke_key(self, key_id: str, revoked_us: int) -> bool:
        """Revoke a key; False when there is no such key."""

    @abstractmethod
    async def key_grant(self, key_hash: str) -> KeyGrant | None:
        """What a live (unrevoked) key with this hash grants (its workspace and scopes),
        checked on every request: a revocation from another process takes effect on the next
        request."""

    async def workspace_for(self, key_hash: str) -> str | None:
        """The workspace of a live key with this hash (``key_grant``'s, for callers that need
        no scopes)."""
        grant = await self.key_grant(key_hash)
        return None if grant is None else grant.workspace

    @abstractmethod
    async def put_source(self, source: Source) -> None:
        """Create or replace a source (by ``source_id``)."""

    @abstractmethod
    async def get_source(self, source_id: str) -> Source | None:
        """A source by id, checked on every webhook request: changes made by another process
        (a rotated secret) take effect on the next request."""

    @abstractmethod
    async def list_sources(self, workspace: str | None = None) -> list[Source]: ...

    @abstractmethod
    async def delete_source(self, source_id: str) -> bool:
        """Delete a source: its webhook calls are refused (404) from the next one on, also in
        other processes. False when there is no such source."""


class ProfileAliases(ABC):
    """Profile aliases: a source's own id of a profile -> the contact it maps to (Copernica's
    ``--contact-field``), and the events that wait for a profile's first mapping. Passes
    tests/test_alias_contract.py.

    Backend errors are raised as ``StorageUnavailable``.
    """

    @abstractmethod
    async def get_alias(self, workspace: str, source_id: str, profile_id: str) -> str | None:
        """The contact a source's profile maps to; None when it has never been mapped."""

    @abstractmethod
    async def put_alias(
        self, workspace: str, source_id: str, profile_id: str, contact_id: str, version: Version
    ) -> AliasUpdate:
        """Durably map the profile to ``contact_id`` unless a greater ``version`` maps it already;
        in the same transaction, read the winning contact and the events parked for the profile
        (they stay parked until ``unpark``, so a crash before publishing them loses nothing)."""

    @abstractmethod
    async def park_until_alias(self, source_id: str, profile_id: str, event: Event) -> str | None:
        """Atomically: the contact the profile maps to, if any; otherwise durably keep ``event``
        (once per ``event_id``) for the next ``put_alias`` of the profile and return None."""

    @abstractmethod
    async def unpark(
        self, workspace: str, source_id: str, profile_id: str, event_ids: Sequence[str]
    ) -> None:
        """Forget parked events once they have been published."""


ErasureStatus = Literal["pending", "done"]


@dataclass(frozen=True)
class Erasure:
    """A request to forget one contact: everything of it with an event time at or before
    ``requested_us`` (T) goes; with ``suppress``, every later event of it is dropped too until
    the suppression is removed. ``completed_us`` is set once nothing of it is left."""

    erasure_id: str
    workspace: str
    contact_id: str
    requested_us: int
    suppress: bool
    completed_us: int | None = None

    @property
    def status(self) -> ErasureStatus:
        return "pending" if self.completed_us is None else "done"


@dataclass(frozen=True)
class ErasedContact:
    """What ``apply`` checks for a contact that was erased: its events that ``predates`` the
    newest erasure's T (``upto_us``) are dropped, and all of them while ``suppressed``."""

    upto_us: int
    suppressed: bool

    def drops(self, event: Event) -> bool:
        return self.suppressed or predates(event, self.upto_us)


def split_erased(
    events: Sequence[Event], erased: dict[tuple[str, str], ErasedContact]
) -> tuple[list[Event], list[Event]]:
    """``events`` split into those to apply and those an erasure drops (as stubs)."""
    if not erased:
        return list(events), []
    kept: list[Event] = []
    dropped: list[Event] = []
    for event in events:
        found = erased.get((event.workspace, event.contact_id))
        if found is not None and found.drops(event):
            dropped.append(erased_stub(event))
        else:
            kept.append(event)
    return kept, dropped


def split_purged(
    events: Sequence[Event], purged_upto_us: int | None
) -> tuple[list[Event], list[Event]]:
    """``events`` (new: no record of them is held) split into those to apply and those to
    refuse: no newer than the newest event time retention purged (``purged_upto_us``; None:
    nothing purged yet). Such an event may have been applied before and its record purged (a
    log redelivered after a long outage): applied again, an ``add`` would count twice. It is
    kept ``failed`` with ``too_old_error`` instead."""
    if purged_upto_us is None:
        return list(events), []
    kept: list[Event] = []
    refused: list[Event] = []
    for event in events:
        (refused if event.ts_us <= purged_upto_us else kept).append(event)
    return kept, refused


def too_old_error(purged_upto_us: int) -> str:
    """The error a refused event's record holds (``split_purged``)."""
    return (
        f"too_old: the event time is not after {iso(purged_upto_us)}, the newest event time"
        " whose history records retention (PROFILEHOOK_HISTORY_RETENTION_DAYS) purged; whether"
        " this event was applied before cannot be known, so it is not applied"
    )


H = TypeVar("H")


@dataclass
class ContactErasure(Generic[H]):
    """What ``erase_contacts`` does to a contact's stored events (each with a backend's handle):
    the ones the erasure covers become stubs; the contact's profile is then the fold of the
    applied ones left (``remaining``), recomputed from nothing."""

    stubs: list[tuple[H, Event]]
    remaining: list[Event]
    erased_ids: set[str]

    @classmethod
    def of(cls, records: Iterable[tuple[H, str, Event]], upto_us: int) -> ContactErasure[H]:
        """``records``: (handle, status, event) of the contact's events not erased yet."""
        plan: ContactErasure[H] = cls([], [], set())
        for handle, status, event in records:
            if predates(event, upto_us):
                plan.stubs.append((handle, erased_stub(event)))
                plan.erased_ids.add(event.event_id)
            elif status in ("applied", "duplicate"):
                plan.remaining.append(event)
        return plan

    def covers_alias(self, version: Version, upto_us: int) -> bool:
        """Whether a profile alias set at ``version`` goes with the erasure."""
        return version[0] <= upto_us or version[1] in self.erased_ids


class Erasures(ABC):
    """Erasure requests and suppressions. Passes tests/test_erasure_contract.py.

    A request is recorded durably first (``request_erasure``): from then on ``apply`` drops the
    contact's events up to its time (in the apply transaction, so that concurrent appliers
    agree). Whoever executes it (erasure.py) then removes the contact's data up to that time
    (``erase_contacts``, idempotent), and marks it done (``complete_erasure``).

    Backend errors are raised as ``StorageUnavailable``.
    """

    @abstractmethod
    async def request_erasure(self, erasure: Erasure) -> None:
        """Record a pending erasure durably, and the contact as erased up to its time (and
        suppressed, if it asks). Committed before this returns."""

    @abstractmethod
    async def get_erasure(self, workspace: str, erasure_id: str) -> Erasure | None: ...

    @abstractmethod
    async def pending_erasures(self, limit: int) -> list[Erasure]:
        """Erasures not done yet, oldest first."""

    @abstractmethod
    async def erase_contacts(self, erasures: Sequence[Erasure]) -> None:
        """Remove what the store holds of each erasure's contact from before its time: its
        events that ``predates`` T become ``erased_stub`` records, its profile is recomputed from
        the events left (none: no profile), its profile aliases set by those events go with the
        events parked for them, and its deliveries go. Idempotent. On SQLite, no byte of what
        was removed is left in the files, nor any page image of it in the WALs, once this
        returns: each file is copied once for all the erasures (a copy's time grows with the
        file, not with what it removes)."""

    @abstractmethod
    async def complete_erasure(self, erasure_id: str, completed_us: int) -> None:
        """Mark an erasure done (a second call changes nothing)."""

    @abstractmethod
    async def unsuppress(self, workspace: str, contact_id: str) -> bool:
        """Stop dropping the contact's later events; False when it was not suppressed."""

    @abstractmethod
    async def is_suppressed(self, workspace: str, contact_id: str) -> bool: ...


class ChangeFeed(ABC):
    """The change feed (README, Getting changes out): ``apply`` records one change
    per applied event that changed a profile (``stores/changes.py`` says which and how), in the
    transaction that writes the profile, and the feed serves them per workspace in the order
    they were applied, each at a position (its cursor) that no later reader can find a change
    behind. ``erase_contacts`` removes the contacts' changes. Passes
    tests/test_change_feed_contract.py.

    Backend errors are raised as ``StorageUnavailable``.
    """

    @abstractmethod
    async def read_changes(self, workspace: str, after: str | None, limit: int) -> list[Change]:
        """Up to ``limit`` changes of ``workspace`` after the cursor ``after`` (None: from the
        oldest kept), in apply order. Read again from the last one's cursor, a reader sees every
        change once, also while others are applied (one that commits later never lands behind
        a cursor handed out). Raises ``InvalidCursor`` for a cursor this store did not issue,
        ``CursorExpired`` when changes after ``after`` were purged."""

    def feed_mark(self) -> object:
        """A value that differs after any commit that may have recorded changes, by any process,
        read without a statement (a memory read): a waiting reader looks at the feed again when
        it moves. None: this store cannot tell (readers look every ``CHANGES_POLL_S``)."""
        return None

    @abstractmethod
    async def feed_end(self, workspace: str) -> str | None:
        """The cursor at the end of the workspace's feed now (None: no change was ever made):
        ``read_changes`` after it finds exactly the changes committed after this call began,
        also one committed while it runs, never one committed before (a new destination starts
        here). It stays valid when the changes before it are purged or erased."""

    @abstractmethod
    async def purge_changes(self, before_us: int, limit: int) -> int:
        """Retention: forget up to ``limit`` changes applied before ``before_us``, oldest first;
        how many. A cursor behind a purged change is expired from then on."""


class Store(
    ProfileStore, Catalog, ProfileAliases, SeenNonces, Erasures, ChangeFeed, Destinations, ABC
):
    """Every interface above, over one backend's data (what each backend class implements, and
    what ``open_store`` returns): opened and closed once for all of them."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...
