"""The filter language (README "Querying profiles") as a value: what is refused, where (``loc`` points into the
filter), every problem at once, its limits; and the reference evaluator's meaning."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from profilehook.filters import (
    All,
    Condition,
    compile_filter,
    decode_cursor,
    encode_cursor,
    matches,
    parse_filter,
    parse_query,
    to_json,
)
from tests.support import examples
from tests.test_query_contract import FILTERS, PROFILES


def locs(raw: Any) -> list[tuple[Any, ...]]:
    node, problems = parse_filter(raw)
    assert node is None
    return [tuple(p["loc"]) for p in problems]


def test_given_bad_conditions_then_every_problem_with_its_place_in_the_filter() -> None:
    raw = {
        "all": [
            {"property": "plan", "op": "eq", "value": "pro"},
            {"property": "plan", "op": "equals", "value": "pro"},
            {"any": [{"op": "eq", "value": 1}, {"property": "x", "op": "gt", "value": [1]}]},
            {"not": {"property": "x", "op": "exists", "value": 3}},
        ]
    }
    assert locs(raw) == [
        ("body", "filter", "all", 1, "op"),
        ("body", "filter", "all", 2, "any", 0, "property"),
        ("body", "filter", "all", 2, "any", 1, "value"),
        ("body", "filter", "all", 3, "not", "value"),
    ]


def test_given_shapes_that_are_not_filters_then_refused() -> None:
    assert locs([]) == [("body", "filter")]
    assert locs({"all": {}}) == [("body", "filter", "all")]
    assert locs({"all": [], "any": []}) == [("body", "filter")]
    assert locs({"all": [], "extra": 1}) == [("body", "filter", "extra")]
    assert locs({"property": "a", "op": "eq"}) == [("body", "filter", "value")]
    assert locs({"property": "a", "op": "in", "value": []}) == [("body", "filter", "value")]
    assert locs({"property": "a", "op": "eq", "value": None}) == [("body", "filter", "value")]
    assert locs({"property": "a", "op": "starts_with", "value": 1}) == [("body", "filter", "value")]
    assert locs({"property": "$updated_at", "op": "eq", "value": "x"}) == [
        ("body", "filter", "value")
    ]
    assert locs({"property": "$contact_id", "op": "eq", "value": 1}) == [
        ("body", "filter", "value")
    ]
    assert locs({"property": "", "op": "exists"}) == [("body", "filter", "property")]


def test_given_the_limits_then_100_conditions_and_8_levels_pass_and_one_more_does_not() -> None:
    cond = {"property": "a", "op": "exists"}
    assert parse_filter({"all": [cond] * 100})[0] is not None
    node, problems = parse_filter({"all": [cond] * 101})
    assert node is None and problems[0]["type"] == "too_long"
    deep: dict[str, Any] = cond
    for _ in range(8):
        deep = {"not": deep}
    assert parse_filter(deep)[0] is not None
    node, problems = parse_filter({"all": [deep]})
    assert node is None and problems[0]["type"] == "too_deep"


def test_given_a_query_body_then_limit_cursor_and_count_are_judged_too() -> None:
    query, problems = parse_query({"filter": {"all": []}, "limit": 1001, "cursor": "zz", "x": 1})
    assert query is None
    assert sorted(tuple(p["loc"]) for p in problems) == [
        ("body", "cursor"),
        ("body", "limit"),
        ("body", "x"),
    ]
    query, problems = parse_query({"cursor": encode_cursor("u'1"), "count": True})
    assert query is not None and query.after == "u'1" and query.count and query.limit == 100
    assert query.filter == All(())
    assert decode_cursor(encode_cursor("é")) == "é"


def test_given_a_filter_then_its_json_parses_back_to_it() -> None:
    raw = {
        "any": [
            {"property": "a", "op": "in", "value": [1, "x"]},
            {"not": {"property": "b", "op": "exists"}},
        ]
    }
    node, _ = parse_filter(raw)
    assert node is not None and to_json(node) == raw


def test_reference_evaluator_meaning() -> None:
    props = {"n": 2, "s": "abc", "l": ["x", 1], "b": False}
    assert matches(Condition("n", "eq", 2.0), "c", props, 0)
    assert not matches(Condition("n", "eq", "2"), "c", props, 0)
    assert not matches(Condition("b", "eq", 0), "c", props, 0)
    assert matches(Condition("s", "contains", "bc"), "c", props, 0)
    assert matches(Condition("l", "contains", 1.0), "c", props, 0)
    assert not matches(Condition("l", "contains", True), "c", props, 0)
    assert not matches(Condition("s", "gt", 1), "c", props, 0)
    assert matches(Condition("missing", "ne", 1), "c", props, 0)
    assert matches(Condition("missing", "not_in", (1,)), "c", props, 0)
    assert matches(Condition("$updated_at", "eq", 1.5), "c", props, 1_500_000)
    assert matches(Condition("$contact_id", "starts_with", "c"), "c", props, 0)


@settings(max_examples=examples(500), deadline=None)
@given(profiles=PROFILES, raw=FILTERS, updated_s=st.integers(0, 10))
def test_given_random_filters_then_the_compiled_form_answers_as_the_reference(
    profiles: dict[str, dict[str, Any]], raw: dict[str, Any], updated_s: int
) -> None:
    node, _ = parse_filter(raw)
    assert node is not None
    compiled = compile_filter(node)
    for contact_id, props in profiles.items():
        updated_us = updated_s * 1_000_000
        assert compiled(contact_id, props, updated_us) == matches(
            node, contact_id, props, updated_us
        )
