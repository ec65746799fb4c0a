"""The filter builder's form -> filter translation (console/filter_form.py), without a server:
nested all/any/none/not-all groups make the SPEC 2.9 filter, blank conditions and empty groups
are left out, each problem lands on the condition or group it points into, and the add/remove
buttons edit the tree and never run it."""

from __future__ import annotations

from typing import Any

import pytest

from profilehook.console.filter_form import MAX_DEPTH, Group, Row, read_builder
from profilehook.filters import parse_filter

Fields = dict[str, list[str]]


def form(match: str = "all", **items: Any) -> Fields:
    """A form's fields: ``c_1_0=("plan", "eq", "string", "pro")`` is the condition at path
    ``1-0``; ``g_1="any"`` the group at path ``1``; other keywords are buttons."""
    fields: Fields = {"match": [match]}
    for key, value in items.items():
        kind, _, path = key.partition("_")
        path = path.replace("_", "-")
        if kind == "c":
            for name, part in zip(("property", "op", "type", "value"), value, strict=True):
                fields[f"{name}-{path}"] = [part]
        elif kind == "g":
            fields[f"match-{path}"] = [value]
        else:
            fields[key] = [value]
    return fields


PLAN = ("plan", "eq", "string", "pro")
TIER = ("tier", "gte", "number", "3")
TRIAL = ("trial", "exists", "string", "")
PLAN_JSON = {"property": "plan", "op": "eq", "value": "pro"}
TIER_JSON = {"property": "tier", "op": "gte", "value": 3}
TRIAL_JSON = {"property": "trial", "op": "exists"}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (form(c_0=PLAN, c_1=TIER), {"all": [PLAN_JSON, TIER_JSON]}),
        (form("any", c_0=PLAN, c_1=TIER), {"any": [PLAN_JSON, TIER_JSON]}),
        (form("none", c_0=PLAN), {"not": {"any": [PLAN_JSON]}}),
        (form("not_all", c_0=PLAN, c_1=TIER), {"not": {"all": [PLAN_JSON, TIER_JSON]}}),
        (
            form(c_0=PLAN, g_1="any", c_1_0=TIER, c_1_1=TRIAL),
            {"all": [PLAN_JSON, {"any": [TIER_JSON, TRIAL_JSON]}]},
        ),
        (
            form("any", g_0="none", c_0_0=PLAN, g_0_1="all", c_0_1_0=TIER, c_0_1_1=TRIAL),
            {"any": [{"not": {"any": [PLAN_JSON, {"all": [TIER_JSON, TRIAL_JSON]}]}}]},
        ),
        # Blank conditions and groups holding nothing filled in are left out.
        (
            form(c_0=("", "eq", "string", ""), g_1="any", c_1_0=("", "eq", "string", ""), c_2=PLAN),
            {"all": [PLAN_JSON]},
        ),
        (form(), {"all": []}),
        (form("none"), {"not": {"any": []}}),
        # Items keep the order of their paths, whatever the order of the fields.
        (form(c_10=TIER, c_2=PLAN), {"all": [PLAN_JSON, TIER_JSON]}),
    ],
    ids=[
        "all",
        "any",
        "none-is-not-any",
        "not-all",
        "a-nested-any-group",
        "groups-in-groups",
        "blank-left-out",
        "empty-matches-everyone",
        "empty-none",
        "ordered-by-path",
    ],
)
def test_the_form_makes_the_spec_filter_and_it_parses(fields: Fields, expected: Any) -> None:
    builder = read_builder(fields)

    assert builder.filter_json == expected
    assert builder.valid and builder.problems == []
    node, problems = parse_filter(expected, ("filter",))
    assert problems == [] and builder.node == node


def test_the_deepest_builder_with_every_group_negated_fits_the_filters_depth() -> None:
    fields = form("none", g_0="none", g_0_0="not_all", c_0_0_0=PLAN)
    builder = read_builder(fields)

    assert builder.filter_json == {
        "not": {"any": [{"not": {"any": [{"not": {"all": [PLAN_JSON]}}]}}]}
    }
    assert builder.valid


def test_a_bad_value_in_a_nested_group_is_put_on_that_condition_and_nothing_runs() -> None:
    fields = form(
        c_0=PLAN,
        g_1="any",
        c_1_0=("", "eq", "string", ""),  # blank: left out, yet the next keeps its own place
        c_1_1=("active", "gt", "boolean", "true"),  # gt takes a number or a string
        c_1_2=("n", "eq", "number", "forty"),
    )

    builder = read_builder(fields)

    assert not builder.valid and builder.node is None
    conditions = {row.path: row.problems for row in builder.rows}
    assert conditions["0"] == [] and conditions["1-0"] == []
    assert len(conditions["1-1"]) == 1 and conditions["1-1"][0].startswith("value: ")
    assert conditions["1-2"] == ["value: 'forty' is not a number (such as 42 or -3.5)"]
    listed = builder.problem_list()
    assert listed[0].startswith("Condition 2.2: value: ")
    assert listed[1].startswith("Condition 2.3: value: 'forty'")


def test_a_problem_of_the_whole_filter_is_the_builders() -> None:
    rows = {f"c_{i}": PLAN for i in range(20)}
    builder = read_builder(form(**rows))
    assert builder.valid
    builder.place(
        [{"loc": ("filter",), "msg": "too many", "type": "value_error", "input": None}], 1
    )
    assert builder.problems == ["too many"] and not builder.valid


def test_adding_a_condition_to_a_nested_group_focuses_it_and_runs_nothing() -> None:
    builder = read_builder(form(c_0=PLAN, g_1="any", c_1_0=TIER, add="1"))

    assert builder.edited and builder.node is None
    assert [row.path for row in builder.rows] == ["0", "1-0", "1-1"]
    assert builder.focus == "1-1"
    group = builder.root.items[1]
    assert isinstance(group, Group) and group.match == "any"


def test_adding_a_group_adds_it_with_one_condition_which_gets_the_focus() -> None:
    builder = read_builder(form("any", c_0=PLAN, add_group="root"))

    added = builder.root.items[1]
    assert isinstance(added, Group) and added.path == "1" and added.match == "all"
    assert [item.path for item in added.items] == ["1-0"] and builder.focus == "1-0"
    assert builder.root.match == "any"


def test_no_group_is_added_deeper_than_the_builder_goes() -> None:
    fields = form(g_0="all", g_0_0="all", c_0_0_0=PLAN, add_group="0-0")
    builder = read_builder(fields)

    deepest = builder.root.items[0].items[0]  # type: ignore[union-attr]
    assert isinstance(deepest, Group) and deepest.depth == MAX_DEPTH
    assert [type(item) for item in deepest.items] == [Row]
    assert builder.edited and builder.focus is None


def test_removing_a_group_removes_what_it_holds_and_the_rest_is_renumbered() -> None:
    fields = form(g_0="any", c_0_0=PLAN, c_0_1=TIER, c_1=TRIAL, remove="0")
    builder = read_builder(fields)

    assert [(row.path, row.prop) for row in builder.rows] == [("0", "trial")]
    assert builder.edited and builder.node is None


def test_removing_the_last_condition_leaves_one_empty_row() -> None:
    builder = read_builder(form(c_0=PLAN, remove="0"))
    assert [(row.path, row.blank) for row in builder.rows] == [("0", True)]


def test_a_button_that_no_longer_fits_still_runs_nothing() -> None:
    builder = read_builder(form(c_0=PLAN, add="7"))
    assert builder.edited and builder.node is None and [r.path for r in builder.rows] == ["0"]


@pytest.mark.parametrize(
    "fields",
    [
        form(c_0=PLAN, c_0_1=TIER),  # under a condition
        form(c_0=PLAN, g_1_0="any", c_1_0_0=TIER),  # in a group whose parent is missing
        form(c_0=PLAN, g_1="all", g_1_0="all", g_1_0_0="all", c_1_0_0_0=TIER),  # too deep
        form(c_0=PLAN, c_100=TIER, c_01=TIER),  # not a place the builder makes
        form(c_0=PLAN) | {"property-x": ["tier"], "op-0-": ["eq"], "property": ["tier"]},
    ],
    ids=["under-a-condition", "orphan", "too-deep", "bad-index", "bad-names"],
)
def test_fields_that_do_not_fit_the_tree_are_dropped(fields: Fields) -> None:
    builder = read_builder(fields)

    assert builder.valid
    assert "tier" not in builder.shown_json and PLAN_JSON in builder.filter_json["all"]


def test_an_unknown_match_operator_or_type_falls_back_to_the_plain_one() -> None:
    builder = read_builder(form("nope", g_0="xor", c_0_0=("plan", "like", "date", "pro")))

    assert builder.filter_json == {"all": [{"all": [PLAN_JSON]}]}


def test_nothing_submitted_is_one_empty_row_and_nothing_to_run() -> None:
    builder = read_builder({})
    assert not builder.submitted and builder.node is None
    assert [(row.path, row.blank) for row in builder.rows] == [("0", True)]
