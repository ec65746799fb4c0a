"""The everyday contact of a batch (one event of sets, no operation held) is planned and its
change read off by shorter paths than the fold of several events: they must decide exactly
as the general ones do, whatever the contact holds (versions older and newer, a delete, marks,
tombstones, values of every kind). So must the changes of a contact's run of several events of
sets, read with one state kept for the run rather than a new one per event."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from profilehook.events import Event, Version
from profilehook.stores.base import ContactState, _plan_sets, plan_contact
from profilehook.stores.changes import _change, _folded_changes, _set_changes

NAMES = ["a", "b", "c", "d"]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([0.0, -0.0, 1.0, 2.5]),
    st.sampled_from(["", "x", "1"]),
    st.lists(st.integers(0, 1), max_size=2),
)
versions = st.tuples(st.integers(1, 6), st.sampled_from(["e1", "e2"]))


@st.composite
def states(draw: st.DrawFn) -> ContactState:
    held = draw(st.dictionaries(st.sampled_from(NAMES), st.tuples(values, versions)))
    last: Version | None = max((v for _, v in held.values()), default=None)
    if last is None and draw(st.booleans()):
        last = draw(versions)
    marks = draw(
        st.dictionaries(
            st.sampled_from(NAMES), st.tuples(versions, st.none() | versions), max_size=2
        )
    )
    return ContactState(
        last,
        draw(st.none() | versions),
        {n: v for n, (_, v) in held.items()},
        {n: x for n, (x, _) in held.items()},
        None,
        marks,
    )


@st.composite
def set_events(draw: st.DrawFn) -> Event:
    ts_us, event_id = draw(versions)
    return Event(
        workspace="w",
        event_id=event_id,
        contact_id="c",
        ts_us=ts_us,
        properties=draw(st.dictionaries(st.sampled_from(NAMES), values, max_size=4)),
    )


@given(state=states(), event=set_events())
def test_given_one_event_of_sets_then_its_plan_is_the_fold_of_a_batch_of_sets(
    state: ContactState, event: Event
) -> None:
    # Given a contact in any state and one event that sets properties
    # When it is planned alone (the short path) and by the batch's loop (given a tuple)
    # Then both plans write, supersede and mark the same
    assert plan_contact(state, [event]) == _plan_sets(state, (event,))


@given(state=states(), event=set_events())
def test_given_one_event_of_sets_then_its_change_is_read_as_any_plan_s(
    state: ContactState, event: Event
) -> None:
    # Given the plan of one event of sets on a contact in any state
    plan = plan_contact(state, [event])
    # When its change is read off the writes alone (the short path) and by the general path
    # (a plan that also drops a property the contact never had: no change of its own)
    general = dataclasses.replace(plan, removes={"never-held"})
    # Then both changes are the same
    assert _change(state, event, plan) == _change(state, event, general)


@settings(max_examples=500)
@given(state=states(), events=st.lists(set_events(), min_size=2, max_size=6))
def test_given_a_run_of_events_of_sets_then_their_changes_are_the_general_fold_s(
    state: ContactState, events: list[Event]
) -> None:
    # Given a contact in any state and several events of sets, in any order (late ones too)
    # When their changes are read with one state kept for the run (the short path) and by the
    # general fold (a new state after each event)
    # Then both find the same changes, for the same events
    assert _set_changes(state, events) == _folded_changes(state, events, None)
