"""Segments of one range on one property's numbers are decided together by bisection over
their sorted thresholds (stores/segments.py ``Thresholds``): the same answers as the reference
evaluator (``filters.matches``) for any value, at the boundaries, for ints against floats, and
for a value that is missing or not a number (no coercion)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profilehook.filters import Condition, matches
from profilehook.stores.base import Contact
from profilehook.stores.segments import Rule, RuleSet, Thresholds, Touched, decide
from tests.support import examples

BOUNDARIES = [0, 1, -1, 0.5, 1.0, 2**53, 2**53 + 1, float(2**53), 1e300, -0.0]
numbers = st.one_of(
    st.sampled_from(BOUNDARIES),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-3, 3),
    st.floats(-3, 3).map(lambda x: round(x * 2) / 2),  # ties with the small integers
)
values = st.one_of(numbers, st.none(), st.booleans(), st.sampled_from(["1", "", "a"]), st.just([1]))
ranges = st.lists(
    st.tuples(st.sampled_from(["gt", "gte", "lt", "lte"]), numbers), min_size=1, max_size=12
)


def _reference(ranges: list[tuple[str, Any]], value: Any) -> list[str]:
    props = {} if value is None else {"x": value}
    return [
        f"s{i}" for i, (op, t) in enumerate(ranges) if matches(Condition("x", op, t), "c", props, 0)
    ]


@settings(max_examples=examples(500), deadline=None, suppress_health_check=list(HealthCheck))
@given(ranges=ranges, value=values)
def test_given_random_ranges_then_bisection_answers_as_the_reference_evaluator(
    ranges: list[tuple[str, Any]], value: Any
) -> None:
    thresholds = Thresholds((f"s{i}", op, t) for i, (op, t) in enumerate(ranges))
    assert sorted(thresholds.members(value)) == sorted(_reference(ranges, value))


@settings(max_examples=examples(500), deadline=None, suppress_health_check=list(HealthCheck))
@given(ranges=ranges, old=values, new=values)
def test_given_a_change_of_value_then_the_moves_are_the_reference_answers_difference(
    ranges: list[tuple[str, Any]], old: Any, new: Any
) -> None:
    thresholds = Thresholds((f"s{i}", op, t) for i, (op, t) in enumerate(ranges))
    entered, exited = thresholds.moves(old, new)
    was, now = set(_reference(ranges, old)), set(_reference(ranges, new))
    assert sorted(entered) == sorted(now - was)
    assert sorted(exited) == sorted(was - now)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=list(HealthCheck))
@given(ranges=ranges, old=st.dictionaries(st.sampled_from("xy"), values), data=st.data())
def test_given_ready_ranges_when_decided_then_moves_equal_the_per_segment_answers(
    ranges: list[tuple[str, Any]], old: dict[str, Any], data: st.DataObject
) -> None:
    # Given segments of ranges on x and y (and one that is not a range), all ready
    rules = [Rule.of(f"s{i}", Condition("xy"[i % 2], op, t)) for i, (op, t) in enumerate(ranges)]
    rules.append(Rule.of("other", Condition("x", "eq", 1)))
    ids = frozenset(r.segment_id for r in rules)
    found = RuleSet()
    for rule in rules:
        found.add(rule)
    found.set_ready(ids)
    assert found.ranged == ids - {"other"}
    # When a contact's values change
    now = {k: v for k, v in data.draw(st.dictionaries(st.sampled_from("xy"), values)).items()}
    old = {k: v for k, v in old.items() if v is not None}
    now = {k: v for k, v in now.items() if v is not None}
    change = Touched("w", "c", frozenset("xy"), False, False)
    before = {("w", "c"): Contact("c", old, {}, 1)}
    after = {("w", "c"): Contact("c", now, {}, 1)}
    moves = decide([(change, rules)], after, set(), before, ids, {"w": found})
    # Then the moves are each segment's answer before and after
    move = moves.get(("w", "c"))
    entered = sorted(move.entered) if move else []
    exited = sorted(move.exited) if move else []
    was = {r.segment_id for r in rules if matches(r.filter, "c", old, 1)}
    is_now = {r.segment_id for r in rules if matches(r.filter, "c", now, 1)}
    assert entered == sorted(is_now - was)
    assert exited == sorted(was - is_now)


def test_given_filters_then_only_one_number_range_on_one_property_is_a_threshold() -> None:
    def ranged(node: Any) -> Any:
        return Rule.of("s", node).ranged

    assert ranged(Condition("x", "gt", 1)) == ("x", "gt", 1)
    assert ranged(Condition("x", "lte", 0.5)) == ("x", "lte", 0.5)
    assert ranged(Condition("x", "gt", "b")) is None  # strings order otherwise
    assert ranged(Condition("x", "eq", 1)) is None
    assert ranged(Condition("$updated_at", "gt", 1)) is None
