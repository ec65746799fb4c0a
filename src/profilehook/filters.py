"""The filter language of ``POST /v1/contacts/query`` (README, Querying profiles), as a typed
value: parsed and judged here (every problem, with its ``loc`` inside the filter), evaluated here
by the reference evaluator (``matches``), and compiled to SQL by each store
(stores/query_sql.py), whose answers the tests hold against ``matches``.

A filter is ``{"all": [F, ...]}``, ``{"any": [F, ...]}``, ``{"not": F}`` or a condition
``{"property": NAME, "op": OP, "value": V}``. The meaning, one definition for every store:

* Comparisons never coerce: a number never equals a string, ``true`` is not ``1``; an integer
  and a float compare as numbers (``1 == 1.0``). ``gt``/``gte``/``lt``/``lte`` compare two
  numbers, or two strings by code point; anything else does not match.
* A condition on an absent property is false, except ``ne``, ``not_in`` and ``not_exists``,
  which are the negations of ``eq``, ``in`` and ``exists`` (an absent property is "not equal").
* ``contains``: the property is a list holding an item equal to the value, or a string holding
  the value (a string) as a substring. ``starts_with``: a string beginning with the value.
* ``$contact_id`` (a string) and ``$updated_at`` (the contact's last update, Unix seconds) are
  pseudo-properties; a stored property of either name is not reachable by a filter.
* An empty ``all`` matches every contact; an empty ``any`` matches none.
"""

from __future__ import annotations

import base64
import binascii
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, cast, get_args

import msgspec

from profilehook.constants import (
    MAX_FILTER_CONDITIONS,
    MAX_FILTER_DEPTH,
    MAX_FILTER_LIST_ITEMS,
    MAX_PROPERTY_NAME_CHARS,
    QUERY_PAGE_DEFAULT,
    QUERY_PAGE_MAX,
)
from profilehook.validation import Loc, Problem, problem, value_error

Op = Literal[
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "exists",
    "not_exists",
]
OPS: tuple[str, ...] = get_args(Op)
RANGE_OPS = ("gt", "gte", "lt", "lte")
CONTACT_ID = "$contact_id"
UPDATED_AT = "$updated_at"
PSEUDO = (CONTACT_ID, UPDATED_AT)


@dataclass(frozen=True)
class Condition:
    property: str
    op: Op
    value: Any = None  # a Scalar; a tuple of them for in/not_in; None for (not_)exists


@dataclass(frozen=True)
class All:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    item: Filter


Filter = All | AnyOf | Not | Condition
EVERYONE: Filter = All(())


# -- parsing ---------------------------------------------------------------------------------


def parse_filter(raw: Any, loc: Loc = ("body", "filter")) -> tuple[Filter | None, list[Problem]]:
    """The filter ``raw`` (decoded JSON) holds, or None and every problem found, each with its
    ``loc`` under ``loc``. Limits: at most ``MAX_FILTER_CONDITIONS`` conditions, nested at most
    ``MAX_FILTER_DEPTH`` levels of all/any/not."""
    problems: list[Problem] = []
    counter = [0]
    parsed = _node(raw, loc, 1, problems, counter)
    if counter[0] > MAX_FILTER_CONDITIONS:
        problems.append(
            problem(
                "too_long",
                loc,
                f"A filter may hold at most {MAX_FILTER_CONDITIONS} conditions"
                f" (this one has {counter[0]})",
                None,
                {"max_conditions": MAX_FILTER_CONDITIONS},
            )
        )
    return (None, problems) if problems else (parsed, [])


_GROUP_KEYS = ("all", "any", "not")
_CONDITION_KEYS = ("property", "op", "value")


def _node(
    raw: Any, loc: Loc, depth: int, problems: list[Problem], counter: list[int]
) -> Filter | None:
    if not isinstance(raw, dict):
        problems.append(
            problem(
                "dict_type", loc, "A filter should be an object (all, any, not or a condition)", raw
            )
        )
        return None
    groups = [k for k in _GROUP_KEYS if k in raw]
    if len(groups) > 1 or (groups and "property" in raw):
        problems.append(
            value_error(loc, raw, "a filter is one of all, any, not or a condition, not several")
        )
        return None
    if not groups:
        counter[0] += 1
        return _condition(raw, loc, problems)
    key = groups[0]
    for extra in raw:
        if extra != key:
            problems.append(
                problem(
                    "extra_forbidden", (*loc, extra), "Extra inputs are not permitted", raw[extra]
                )
            )
    if depth > MAX_FILTER_DEPTH:
        problems.append(
            problem(
                "too_deep",
                (*loc, key),
                f"Filters may nest at most {MAX_FILTER_DEPTH} levels of all, any and not",
                None,
                {"max_depth": MAX_FILTER_DEPTH},
            )
        )
        return None
    if key == "not":
        inner = _node(raw["not"], (*loc, "not"), depth + 1, problems, counter)
        return None if inner is None else Not(inner)
    items = raw[key]
    if not isinstance(items, list):
        problems.append(problem("list_type", (*loc, key), "Input should be a valid list", items))
        return None
    parsed = [
        _node(item, (*loc, key, i), depth + 1, problems, counter) for i, item in enumerate(items)
    ]
    if any(p is None for p in parsed):
        return None
    kept = tuple(p for p in parsed if p is not None)
    return All(kept) if key == "all" else AnyOf(kept)


def _condition(raw: dict[str, Any], loc: Loc, problems: list[Problem]) -> Condition | None:
    before = len(problems)
    for extra in raw:
        if extra not in _CONDITION_KEYS:
            problems.append(
                problem(
                    "extra_forbidden", (*loc, extra), "Extra inputs are not permitted", raw[extra]
                )
            )
    name = raw.get("property")
    if "property" not in raw:
        problems.append(problem("missing", (*loc, "property"), "Field required", raw))
    elif not isinstance(name, str):
        problems.append(
            problem("string_type", (*loc, "property"), "Input should be a valid string", name)
        )
    elif not name or len(name) > MAX_PROPERTY_NAME_CHARS:
        problems.append(
            value_error(
                (*loc, "property"),
                name,
                f"a property name has 1 to {MAX_PROPERTY_NAME_CHARS} characters",
            )
        )
    op = raw.get("op")
    if "op" not in raw:
        problems.append(problem("missing", (*loc, "op"), "Field required", raw))
    elif op not in OPS:
        problems.append(
            problem(
                "literal_error",
                (*loc, "op"),
                "Input should be " + ", ".join(f"'{o}'" for o in OPS),
                op,
                {"expected": ", ".join(OPS)},
            )
        )
    if len(problems) > before:
        return None
    value = _value(str(name), str(op), raw, (*loc, "value"), problems)
    if len(problems) > before:
        return None
    return Condition(str(name), cast(Op, op), value)


def _value(name: str, op: str, raw: dict[str, Any], loc: Loc, problems: list[Problem]) -> Any:
    value = raw.get("value")
    if op in ("exists", "not_exists"):
        if value is not None:
            problems.append(value_error(loc, value, f"{op} takes no value"))
        return None
    if "value" not in raw or value is None:
        problems.append(
            problem(
                "missing",
                loc,
                f"Field required (a value to compare with; {op} null: use not_exists)",
                raw,
            )
        )
        return None
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            problems.append(
                problem("list_type", loc, "Input should be a non-empty list of values", value)
            )
            return None
        if len(value) > MAX_FILTER_LIST_ITEMS:
            problems.append(
                value_error(loc, len(value), f"{op} takes at most {MAX_FILTER_LIST_ITEMS} values")
            )
            return None
        for i, item in enumerate(value):
            _scalar(name, op, item, (*loc, i), problems)
        return tuple(value)
    _scalar(name, op, value, loc, problems)
    return value


def _scalar(name: str, op: str, value: Any, loc: Loc, problems: list[Problem]) -> None:
    """Whether ``value`` is something ``op`` can compare ``name`` with."""
    if isinstance(value, (list, dict)) or value is None:
        problems.append(value_error(loc, value, "a value is a string, a number or a boolean"))
    elif op in RANGE_OPS and not (_is_number(value) or isinstance(value, str)):
        problems.append(value_error(loc, value, f"{op} compares a number or a string"))
    elif op == "starts_with" and not isinstance(value, str):
        problems.append(problem("string_type", loc, "Input should be a valid string", value))
    elif name == CONTACT_ID and not isinstance(value, str):
        problems.append(value_error(loc, value, "$contact_id is a string"))
    elif name == UPDATED_AT and not _is_number(value):
        problems.append(value_error(loc, value, "$updated_at is a number (Unix seconds)"))
    elif name == UPDATED_AT and op in ("contains", "starts_with"):
        problems.append(value_error(loc, value, f"$updated_at is a number: {op} does not apply"))


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


# -- the JSON form ---------------------------------------------------------------------------


def to_json(node: Filter) -> dict[str, Any]:
    """The filter as JSON again (what a segment shows)."""
    if isinstance(node, All):
        return {"all": [to_json(i) for i in node.items]}
    if isinstance(node, AnyOf):
        return {"any": [to_json(i) for i in node.items]}
    if isinstance(node, Not):
        return {"not": to_json(node.item)}
    out: dict[str, Any] = {"property": node.property, "op": node.op}
    if node.op in ("in", "not_in"):
        out["value"] = list(node.value)
    elif node.op not in ("exists", "not_exists"):
        out["value"] = node.value
    return out


# -- the reference evaluator -----------------------------------------------------------------


def matches(node: Filter, contact_id: str, properties: Mapping[str, Any], updated_us: int) -> bool:
    """Whether a contact (its id, live properties and last update) matches ``node``: the
    definition every store's compiled query is tested against."""
    if isinstance(node, All):
        return all(matches(i, contact_id, properties, updated_us) for i in node.items)
    if isinstance(node, AnyOf):
        return any(matches(i, contact_id, properties, updated_us) for i in node.items)
    if isinstance(node, Not):
        return not matches(node.item, contact_id, properties, updated_us)
    if node.property == CONTACT_ID:
        return _holds(node.op, contact_id, node.value)
    if node.property == UPDATED_AT:
        return _holds(node.op, Fraction(updated_us, 1_000_000), node.value)
    return _holds(node.op, properties.get(node.property), node.value)


def _holds(op: str, held: Any, value: Any) -> bool:
    """``op`` on a property's value (None: absent)."""
    if op == "exists":
        return held is not None
    if op == "not_exists":
        return held is None
    if op == "ne":
        return not _holds("eq", held, value)
    if op == "not_in":
        return not _holds("in", held, value)
    if held is None:
        return False
    if op == "eq":
        return same(held, value)
    if op == "in":
        return any(same(held, v) for v in value)
    if op in RANGE_OPS:
        return _ordered(op, held, value)
    if op == "contains":
        if isinstance(held, list):
            return any(same(item, value) for item in held)
        return isinstance(held, str) and isinstance(value, str) and value in held
    if op == "starts_with":
        return isinstance(held, str) and held.startswith(value)
    raise AssertionError(op)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, Fraction)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def same(held: Any, value: Any) -> bool:
    """Equality without coercion: same kind, equal (numbers as numbers)."""
    kind = _kind(held)
    return kind != "other" and kind == _kind(value) and held == value


def _ordered(op: str, held: Any, value: Any) -> bool:
    kind = _kind(held)
    if kind not in ("number", "string") or kind != _kind(value):
        return False
    if op == "gt":
        return bool(held > value)
    if op == "gte":
        return bool(held >= value)
    if op == "lt":
        return bool(held < value)
    return bool(held <= value)


# -- a query: a filter, a page ---------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One page of ``POST /v1/contacts/query``: the contacts matching ``filter`` in contact_id
    order (bytewise) after ``after``, at most ``limit``; with ``count``, how many match in all."""

    filter: Filter
    limit: int = QUERY_PAGE_DEFAULT
    after: str | None = None
    count: bool = False


_QUERY_KEYS = ("filter", "limit", "cursor", "count")


def parse_query(body: Any) -> tuple[Query | None, list[Problem]]:
    """The query a decoded request body holds, or None and every problem in it."""
    if not isinstance(body, dict):
        return None, [problem("dict_type", ("body",), "Input should be a valid dictionary", body)]
    problems = [
        problem("extra_forbidden", ("body", k), "Extra inputs are not permitted", v)
        for k, v in body.items()
        if k not in _QUERY_KEYS
    ]
    node, found = (EVERYONE, []) if "filter" not in body else parse_filter(body["filter"])
    problems += found
    limit = body.get("limit", QUERY_PAGE_DEFAULT)
    if type(limit) is not int or not 1 <= limit <= QUERY_PAGE_MAX:
        problems.append(
            problem(
                "int_range",
                ("body", "limit"),
                f"Input should be a whole number from 1 to {QUERY_PAGE_MAX}",
                limit,
                {"ge": 1, "le": QUERY_PAGE_MAX},
            )
        )
    after = None
    raw_cursor = body.get("cursor")
    if raw_cursor is not None:
        after = decode_cursor(raw_cursor) if isinstance(raw_cursor, str) else None
        if after is None:
            problems.append(value_error(("body", "cursor"), raw_cursor, "not a cursor we issued"))
    count = body.get("count", False)
    if not isinstance(count, bool):
        problems.append(
            problem("bool_type", ("body", "count"), "Input should be a valid boolean", count)
        )
    if problems or node is None:
        return None, problems
    return Query(node, limit, after, count), []


def encode_cursor(after: str) -> str:
    """The opaque cursor of the page after the contact ``after``."""
    return base64.urlsafe_b64encode(msgspec.json.encode(["c", after])).decode().rstrip("=")


def decode_cursor(raw: str) -> str | None:
    """The contact id a cursor we issued names; None for anything else."""
    try:
        tag, after = msgspec.json.decode(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, TypeError, msgspec.DecodeError):
        return None
    return after if tag == "c" and isinstance(after, str) and "\x00" not in after else None


# -- the JSON Schema (for the OpenAPI document) ----------------------------------------------

_SCALAR = {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}


def json_schemas(ref: str = "#/components/schemas/") -> dict[str, Any]:
    """The filter and the query body as JSON Schema components: ``Filter`` (recursive),
    ``Condition``, ``ContactQuery``."""
    filter_ref = {"$ref": f"{ref}Filter"}
    group = {"type": "array", "items": filter_ref}
    return {
        "Filter": {
            "description": f"At most {MAX_FILTER_CONDITIONS} conditions, nested at most"
            f" {MAX_FILTER_DEPTH} levels of all/any/not. An empty `all` matches every contact.",
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"all": group},
                    "required": ["all"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"any": group},
                    "required": ["any"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"not": filter_ref},
                    "required": ["not"],
                    "additionalProperties": False,
                },
                {"$ref": f"{ref}Condition"},
            ],
        },
        "Condition": {
            "type": "object",
            "description": "No coercion: a number never equals a string. An absent property"
            " matches only `ne`, `not_in` and `not_exists`. `contains`: a list member or a"
            " substring. `$contact_id` and `$updated_at` (Unix seconds) are pseudo-properties.",
            "properties": {
                "property": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_PROPERTY_NAME_CHARS,
                    "pattern": "^[^\\u0000]*$",
                },
                "op": {"enum": list(OPS)},
                "value": {
                    "description": "A string, number or boolean; a list of them for `in` and"
                    " `not_in`; none for `exists` and `not_exists`.",
                    "oneOf": [
                        _SCALAR,
                        {
                            "type": "array",
                            "items": _SCALAR,
                            "minItems": 1,
                            "maxItems": MAX_FILTER_LIST_ITEMS,
                        },
                    ],
                },
            },
            "required": ["property", "op"],
            "additionalProperties": False,
        },
        "ContactQuery": {
            "type": "object",
            "properties": {
                "filter": filter_ref,
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": QUERY_PAGE_MAX,
                    "default": QUERY_PAGE_DEFAULT,
                },
                "cursor": {"type": ["string", "null"], "description": "`next_cursor` of a page"},
                "count": {"type": "boolean", "default": False},
            },
            "additionalProperties": False,
        },
    }


# -- compiled: the reference evaluator as closures (the applier decides segments with it) ----

Predicate = Callable[[str, Mapping[str, Any], int], bool]
_NUMBER_TYPES = (int, float)


def compile_filter(node: Filter) -> Predicate:
    """``matches`` for one filter, as a function of (contact_id, properties, updated_us): the
    same answers (tests/test_filters.py), without walking the filter on each call."""
    if isinstance(node, All | AnyOf):
        parts = [compile_filter(item) for item in node.items]
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:  # the common pair, without a generator per call
            first, second = parts
            if isinstance(node, All):
                return lambda c, p, u: first(c, p, u) and second(c, p, u)
            return lambda c, p, u: first(c, p, u) or second(c, p, u)
        if isinstance(node, All):
            return lambda c, p, u: all(f(c, p, u) for f in parts)
        return lambda c, p, u: any(f(c, p, u) for f in parts)
    if isinstance(node, Not):
        inner = compile_filter(node.item)
        return lambda c, p, u: not inner(c, p, u)
    name, op, value = node.property, node.op, node.value
    if name in PSEUDO or op not in ("eq", "ne", *RANGE_OPS, "exists", "not_exists"):
        return lambda c, p, u: matches(node, c, p, u)
    if op == "exists":
        return lambda c, p, u: p.get(name) is not None
    if op == "not_exists":
        return lambda c, p, u: p.get(name) is None
    types: tuple[type, ...] = (
        (bool,) if isinstance(value, bool) else (str,) if isinstance(value, str) else _NUMBER_TYPES
    )
    if op in ("eq", "ne"):
        negate = op == "ne"
        return lambda c, p, u: ((x := p.get(name)).__class__ in types and x == value) ^ negate
    compare: Callable[[Any, Any], bool] = {
        "gt": operator.gt,
        "gte": operator.ge,
        "lt": operator.lt,
        "lte": operator.le,
    }[op]
    return lambda c, p, u: (x := p.get(name)).__class__ in types and compare(x, value)
