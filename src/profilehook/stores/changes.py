"""Which changes a batch makes: per applied event, the properties it changed from what to what
(README, Getting changes out), computed from what the store holds of the contact and the plan, with no store in
sight. Every store calls ``ChangeLog.add`` once per contact of an ``apply`` (beside
``plan_contact``) and writes ``ChangeLog.records()`` in the same transaction.

An event's change is its effect on the profile as the events of a batch were applied one by one
in the order they came (the log's): the contact as it stood before the event, and after it. So a
batch makes the same changes as the same events applied one batch each, and a late event that
loses to a newer version makes none. A contact with one event in the batch (the everyday case)
has its change read off the batch's plan; several are planned again one event at a time (the
fold is the same whatever the batching: tests/test_convergence.py).

Segments: the segments' membership is decided after the batch's profile writes
(``ApplyResult.segment_moves``); ``ChangeLog.note_segments`` puts each contact's entries and exits
on its last change of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from profilehook.changes import ChangeBody, ChangeRecord, PropertyChange, SegmentChanges
from profilehook.events import Event, same_value
from profilehook.stores.base import (
    Base,
    ContactPlan,
    ContactState,
    contact_exists,
    plan_contact,
)
from profilehook.stores.segments import Moves


class ChangeLog:
    """The changes of one ``apply``, collected contact by contact, handed out in the batch's
    order (per contact, the order its events came)."""

    def __init__(self, batch: Sequence[Event]):
        self._order = {id(event): i for i, event in enumerate(batch)}
        self._found: list[tuple[int, ChangeRecord]] = []

    def add(
        self,
        state: ContactState,
        events: Sequence[Event],
        plan: ContactPlan,
        base: Base | None = None,
    ) -> None:
        """Record the changes that ``events`` (one contact's, in the order they came) make to
        the contact held as ``state`` (with the values of every property they name, and of all
        of them when one deletes), whose batch plan is ``plan``; ``base`` as for
        ``plan_contact``. ``state`` is not modified."""
        order = self._order
        if len(events) == 1:  # (the everyday contact: its change read off the batch's plan)
            event = events[0]
            found = _change(state, event, plan)
            if found is not None:
                self._found.append((order.get(id(event), len(order)), found))
            return
        for event, record in contact_changes(state, events, plan, base):
            self._found.append((order.get(id(event), len(order)), record))

    def note_segments(self, moves: Moves) -> None:
        """Put each contact's segment entries and exits (``ApplyResult.segment_moves``, decided
        after the batch's profile writes) on its last change of the batch: the change that left
        the profile as the segments judged it."""
        if not moves:
            return
        last: dict[tuple[str, str], int] = {}
        for i, (_, record) in enumerate(self._found):
            key = (record.workspace, record.contact_id)
            if key in moves and (key not in last or self._found[last[key]][0] < self._found[i][0]):
                last[key] = i
        for key, i in last.items():
            order, record = self._found[i]
            segments = SegmentChanges(list(moves[key].entered), list(moves[key].exited))
            body = msgspec.structs.replace(record.body, segments=segments)
            self._found[i] = (order, msgspec.structs.replace(record, body=body))

    def records(self) -> list[ChangeRecord]:
        self._found.sort(key=_first)
        return [record for _, record in self._found]

    def __len__(self) -> int:
        return len(self._found)


def _first(item: tuple[int, ChangeRecord]) -> int:
    return item[0]


def contact_changes(
    state: ContactState,
    events: Sequence[Event],
    plan: ContactPlan,
    base: Base | None = None,
) -> list[tuple[Event, ChangeRecord]]:
    """Each event of one contact that changed its profile, with its change (module doc)."""
    if len(events) == 1:
        found = _change(state, events[0], plan)
        return [] if found is None else [(events[0], found)]
    if state.ops_upto is None and all(not e.ops and e.kind != "delete" for e in events):
        return _set_changes(state, events)
    return _folded_changes(state, events, base)


def _folded_changes(
    state: ContactState, events: Sequence[Event], base: Base | None
) -> list[tuple[Event, ChangeRecord]]:
    """``contact_changes`` in general: each event planned alone on the contact as the events
    before it left it."""
    changes: list[tuple[Event, ChangeRecord]] = []
    now = state
    loaded: list[tuple[ContactState, list[Event]]] = []

    for index, event in enumerate(events):
        step_base = None if base is None else _step_base(base, loaded, events[:index])
        step = plan_contact(now, [event], step_base)
        found = _change(now, event, step)
        if found is not None:
            changes.append((event, found))
        now = _after(now, step)
    return changes


def _set_changes(state: ContactState, events: Sequence[Event]) -> list[tuple[Event, ChangeRecord]]:
    """``_folded_changes`` for events that only set, on a contact no operation touched, where
    each event's plan is its versions against the contact's (``_plan_one_set``): decided here
    property by property in one state kept for the whole run, without a plan and a new state
    per event. A contact with many events in a batch (one user's burst) pays per event only
    what it sets (tests/test_plan_one_event.py holds it equal to the general fold)."""
    versions, values, hidden_upto = dict(state.versions), dict(state.values), state.deleted
    changes: list[tuple[Event, ChangeRecord]] = []
    for event in events:
        version = event.version
        if hidden_upto is not None and version <= hidden_upto:
            continue  # older than the contact's delete: writes nothing
        properties: dict[str, PropertyChange] = {}
        for name, new in event.properties.items():
            held = versions.get(name)
            if held is not None and version <= held:
                continue
            old = (
                None
                if held is None or (hidden_upto is not None and held <= hidden_upto)
                else values.get(name)
            )
            _note(properties, name, old, new)
            versions[name] = version
            values[name] = new
        if properties:
            if len(properties) > 1:
                properties = dict(sorted(properties.items()))
            body = ChangeBody(event.source, False, properties)
            changes.append(
                (event, ChangeRecord(event.workspace, event.contact_id, event.event_id, body))
            )
    return changes


def _step_base(
    base: Base, loaded: list[tuple[ContactState, list[Event]]], before: Sequence[Event]
) -> Base:
    """``base`` for one event of several: the history then holds the batch's events before it
    (read once, when a late event first needs it)."""

    def step() -> tuple[ContactState, list[Event]]:
        if not loaded:
            loaded.append(base())
        snapshot, history = loaded[0]
        return snapshot, [*history, *before]

    return step


def _change(before: ContactState, event: Event, plan: ContactPlan) -> ChangeRecord | None:
    """What ``plan`` (of ``event`` alone) changes in the contact held as ``before``."""
    upserts = plan.upserts
    upto = plan.delete_upto
    properties: dict[str, PropertyChange] = {}
    versions, values, hidden_upto = before.versions, before.values, before.deleted
    if upto is None and not plan.removes:  # (the everyday event writes only)
        for name, (new, _) in upserts.items():
            version = versions.get(name)
            if version is None or (hidden_upto is not None and version <= hidden_upto):
                old = None
            else:
                old = values.get(name)
            _note(properties, name, old, new)
    else:
        names = {*upserts, *plan.removes}
        if upto is not None:
            names.update(n for n, version in versions.items() if version <= upto)
        for name in names:  # (each property's value as the profile shows it)
            version = versions.get(name)
            if version is None or (hidden_upto is not None and version <= hidden_upto):
                old = None
            else:
                old = values.get(name)
            held = upserts.get(name)
            _note(properties, name, old, None if held is None else held[0])
    deleted = (
        event.kind == "delete"
        and contact_exists(before.last_update, before.deleted)
        and not contact_exists(plan.last_update, plan.deleted)
    )
    if not properties and not deleted:
        return None
    if len(properties) > 1:
        properties = dict(sorted(properties.items()))
    body = ChangeBody(event.source, deleted, properties)
    return ChangeRecord(event.workspace, event.contact_id, event.event_id, body)


def _note(properties: dict[str, PropertyChange], name: str, old: Any, new: Any) -> None:
    """Put in ``properties`` the change of ``name`` from ``old`` to ``new``, if it is one."""
    kind = type(old)
    if kind is type(new) and (old is None or (kind in _SCALARS and old == new)):
        return
    if not same_value(old, new):
        properties[name] = PropertyChange(old, new)


_SCALARS = (str, int, bool)  # (not float: -0.0 == 0.0, which ``same_value`` tells apart)


def _after(state: ContactState, plan: ContactPlan) -> ContactState:
    """The contact once ``plan`` is written (a new state; ``state`` is left as it was)."""
    versions = dict(state.versions)
    values = dict(state.values)
    for name in plan.removes:
        versions.pop(name, None)
        values.pop(name, None)
    upto = plan.delete_upto
    if upto is not None:
        for name in [n for n, version in versions.items() if version <= upto]:
            del versions[name]
            values.pop(name, None)
    for name, (value, version) in plan.upserts.items():
        versions[name] = version
        values[name] = value
    return ContactState(plan.last_update, plan.deleted, versions, values, plan.ops_upto, plan.marks)
