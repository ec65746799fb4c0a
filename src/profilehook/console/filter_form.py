"""The console's filter builder: conditions (property, op, type, value) in groups that match all,
any, none or not all of what they hold, nested up to ``MAX_DEPTH`` groups deep; read from a
form and turned into the filter (README, Querying profiles) that ``filters.parse_filter`` reads.
Each field is named after its item's place in the tree (``value-1-0``: the first item of the
second item of the root group). Every problem, ours (a value that is not of its row's type) or
the library's, is put on the condition or group it points into. Values are typed by the row's
type and never coerced: ``42`` as a string is the string ``"42"``. Adding and removing
conditions and groups are submit buttons, so the builder needs no script."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from profilehook.filters import Filter, parse_filter
from profilehook.validation import Problem

OP_LABELS: tuple[tuple[str, str], ...] = (
    ("eq", "equals"),
    ("ne", "does not equal"),
    ("gt", "greater than"),
    ("gte", "greater than or equal to"),
    ("lt", "less than"),
    ("lte", "less than or equal to"),
    ("in", "is one of (comma-separated)"),
    ("not_in", "is none of (comma-separated)"),
    ("contains", "contains"),
    ("starts_with", "starts with"),
    ("exists", "exists"),
    ("not_exists", "does not exist"),
)
TYPES = ("string", "number", "boolean")
LIST_OPS = ("in", "not_in")
NO_VALUE_OPS = ("exists", "not_exists")
# How a group matches: the filter it makes of its items' filters F.
MATCHES: tuple[tuple[str, str], ...] = (
    ("all", "all of"),  # {"all": F}
    ("any", "any of"),  # {"any": F}
    ("none", "none of"),  # {"not": {"any": F}}
    ("not_all", "not all of"),  # {"not": {"all": F}}
)
MAX_ROWS = 20  # conditions in one builder
MAX_DEPTH = 3  # the root group, and groups two deep in it (at most 6 of the filter's 8 levels)
ROOT = "root"  # the add buttons' value for the root group (whose path is "")
# A field of a condition or group: its name, then its path ("0", "1-0"; the root's is none).
_INDEX = "(?:0|[1-9][0-9]?)"
_FIELD = re.compile(rf"(property|op|type|value|match)-({_INDEX}(?:-{_INDEX}){{0,2}})")
# The form's buttons, which edit it without running it.
EDIT_FIELDS = ("add", "add_group", "remove")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


@dataclass
class Row:
    """A condition as submitted. ``path`` is where it is in the builder (``"1-0"``: the first
    item of the root's second item), which names its fields (``property-1-0``)."""

    prop: str = ""
    op: str = "eq"
    type: str = "string"
    value: str = ""
    problems: list[str] = field(default_factory=list)
    path: str = ""

    @property
    def blank(self) -> bool:
        return not self.prop and not self.value

    @property
    def label(self) -> str:
        return _label(self.path)


@dataclass
class Group:
    """A group of conditions and groups: ``match`` is one of ``MATCHES``; the root's ``path``
    is ``""``."""

    match: str = "all"
    items: list[Row | Group] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    path: str = ""

    @property
    def label(self) -> str:
        return _label(self.path)

    @property
    def depth(self) -> int:
        """1 for the root, 2 for a group in it, ..."""
        return 1 + (len(self.path.split("-")) if self.path else 0)

    @property
    def empty(self) -> bool:
        """Whether it holds no condition that is filled in (then the filter leaves it out)."""
        return all(item.blank if isinstance(item, Row) else item.empty for item in self.items)

    def walk(self) -> Iterator[Row | Group]:
        """This group and everything in it, in the order of the page."""
        yield self
        for item in self.items:
            if isinstance(item, Group):
                yield from item.walk()
            else:
                yield item


@dataclass
class Builder:
    """A builder as submitted: its tree of groups and conditions (each with its problems),
    ``problems`` not about one of them, the filter it makes (as JSON, shown on the page) and,
    when that filter is valid, the parsed filter to run. ``edited`` when a condition or group
    was added or removed (then nothing runs), and ``focus`` the path of the condition a
    keyboard user lands on after that."""

    root: Group = field(default_factory=lambda: Group(items=[Row(path="0")]))
    problems: list[str] = field(default_factory=list)
    filter_json: dict[str, Any] = field(default_factory=lambda: {"all": []})
    node: Filter | None = None
    edited: bool = False
    focus: str | None = None
    submitted: bool = False
    # Where each part of ``filter_json`` came from: its loc (under the filter) -> group or row.
    sources: dict[tuple[str | int, ...], Row | Group] = field(default_factory=dict)

    @property
    def rows(self) -> list[Row]:
        """Every condition, in the order of the page."""
        return [item for item in self.root.walk() if isinstance(item, Row)]

    @property
    def shown_json(self) -> str:
        return json.dumps(self.filter_json, indent=2, ensure_ascii=False)

    def place(self, problems: Sequence[Problem], prefix: int) -> None:
        """Put the library's problems (``loc`` = ``prefix`` parts, then the place inside the
        filter) on the condition or group they point into; the rest on the builder."""
        for found in problems:
            loc = tuple(found["loc"])[prefix:]
            text = str(found["msg"])
            for cut in range(len(loc), 0, -1):
                target = self.sources.get(loc[:cut])
                if target is not None and target is not self.root:
                    rest = loc[cut : cut + 1]
                    if isinstance(target, Row) and rest:
                        text = f"{rest[0]}: {text}"
                    target.problems.append(text)
                    break
            else:
                self.problems.append(text)

    @property
    def valid(self) -> bool:
        return self.node is not None and not self.problems and not self.row_problems

    @property
    def row_problems(self) -> bool:
        return any(item.problems for item in self.root.walk())

    def problem_list(self) -> list[str]:
        """Every problem, each saying which condition or group it is about."""
        named = [
            f"{'Condition' if isinstance(item, Row) else 'Group'} {item.label}: {text}"
            for item in self.root.walk()
            for text in item.problems
        ]
        return [*named, *self.problems]


def form_context() -> dict[str, Any]:
    """What ``_builder.html`` needs beside the builder."""
    return {"op_labels": OP_LABELS, "types": TYPES, "matches": MATCHES, "max_depth": MAX_DEPTH}


def read_builder(fields: Mapping[str, list[str]]) -> Builder:
    """The builder a form's fields (every value of each) describe, with the edit its buttons
    asked for. Without a ``match`` field nothing was submitted: one empty row, nothing to
    run. Fields that do not fit (a path under a condition, deeper than ``MAX_DEPTH``, beyond
    ``MAX_ROWS`` items) are dropped."""
    if "match" not in fields:
        return Builder()

    def last(name: str) -> str:
        return (fields.get(name) or [""])[-1]

    root = Group(_match(last("match")))
    builder = Builder(root=root, submitted=True)
    found: dict[str, Row | Group] = {"": root}
    groups = {m.group(2) for m in map(_FIELD.fullmatch, fields) if m and m.group(1) == "match"}
    paths = {m.group(2) for m in map(_FIELD.fullmatch, fields) if m}
    for path in sorted(paths, key=_order)[: MAX_ROWS * 2]:
        parent = found.get(path.rpartition("-")[0])
        if not isinstance(parent, Group):
            continue
        item: Row | Group
        if path in groups and parent.depth < MAX_DEPTH:
            item = Group(_match(last(f"match-{path}")))
        elif path not in groups:
            op, type_ = last(f"op-{path}"), last(f"type-{path}")
            item = Row(
                last(f"property-{path}").strip(),
                op if op in dict(OP_LABELS) else "eq",
                type_ if type_ in TYPES else "string",
                last(f"value-{path}"),
            )
        else:
            continue
        item.path = path  # as submitted, until the edit is made and ``_number`` renumbers
        parent.items.append(item)
        found[path] = item
    focus = _edit(builder, found, fields)
    _number(root)
    if focus is not None:
        builder.focus = focus.path
    if builder.edited:
        return builder
    builder.filter_json = _group_json(builder, root, ())
    node, problems = parse_filter(builder.filter_json, ("filter",))
    builder.place(problems, 1)
    if not builder.problems and not builder.row_problems:
        builder.node = node
    return builder


def _edit(
    builder: Builder, found: dict[str, Row | Group], fields: Mapping[str, list[str]]
) -> Row | None:
    """Apply the button pressed (remove a condition or group, add a condition or a group to a
    group); the new condition a keyboard user should land on, if any."""
    root = builder.root
    # A button pressed is an edit, even one that no longer fits (nothing runs or is made).
    builder.edited = any(fields.get(name) for name in EDIT_FIELDS)
    removed = (fields.get("remove") or [""])[-1]
    target = found.get(removed) if removed else None
    if target is not None:
        parent = found.get(removed.rpartition("-")[0])
        if isinstance(parent, Group):
            parent.items = [item for item in parent.items if item is not target]
    focus = None
    count = sum(1 for item in root.walk() if isinstance(item, Row))
    for button in ("add", "add_group"):
        where = (fields.get(button) or [""])[-1]
        group = found.get("" if where == ROOT else where)
        if not where or not isinstance(group, Group) or count >= MAX_ROWS:
            continue
        if button == "add":
            focus = Row()
            group.items.append(focus)
        elif group.depth < MAX_DEPTH:
            focus = Row()
            group.items.append(Group(items=[focus]))
    if not root.items:
        root.items.append(Row())
    return focus


def _number(group: Group) -> None:
    """Give every item its path: its place, counted from 0, under each enclosing group."""
    for i, item in enumerate(group.items):
        item.path = f"{group.path}-{i}" if group.path else str(i)
        if isinstance(item, Group):
            _number(item)


def _group_json(builder: Builder, group: Group, loc: tuple[str | int, ...]) -> dict[str, Any]:
    """The filter a group makes (its blank conditions and empty groups left out), recording
    where each part came from in ``builder.sources``."""
    builder.sources[loc] = group
    key = "any" if group.match in ("any", "none") else "all"
    negated = group.match in ("none", "not_all")
    inner = (*loc, "not", key) if negated else (*loc, key)
    items: list[dict[str, Any]] = []
    for item in group.items:
        if item.blank if isinstance(item, Row) else item.empty:
            continue
        here = (*inner, len(items))
        if isinstance(item, Group):
            items.append(_group_json(builder, item, here))
        else:
            builder.sources[here] = item
            items.append(_condition_json(item))
    return {"not": {key: items}} if negated else {key: items}


def _condition_json(row: Row) -> dict[str, Any]:
    condition: dict[str, Any] = {"property": row.prop, "op": row.op}
    if row.op not in NO_VALUE_OPS:
        if row.op in LIST_OPS:
            condition["value"] = [_typed(row, part.strip()) for part in row.value.split(",")]
        else:
            condition["value"] = _typed(row, row.value)
    return condition


def _match(value: str) -> str:
    return value if value in dict(MATCHES) else "all"


def _order(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in path.split("-"))


def _label(path: str) -> str:
    """A path as people count: ``"1-0"`` is 2.1."""
    return ".".join(str(int(part) + 1) for part in path.split("-")) if path else ""


def _typed(row: Row, text: str) -> Any:
    """``text`` as a value of the row's type; a problem on the row when it is not one."""
    if row.type == "number":
        if _INTEGER.fullmatch(text):
            return int(text)
        if _NUMBER.fullmatch(text) and math.isfinite(float(text)):
            return float(text)
        row.problems.append(f"value: {text!r} is not a number (such as 42 or -3.5)")
        return text
    if row.type == "boolean":
        if text in ("true", "false"):
            return text == "true"
        row.problems.append(f"value: {text!r} is not a boolean: enter true or false")
        return text
    return text


def builder_query(fields: Mapping[str, list[str]], **extra: str) -> str:
    """The query string of the builder's fields (without its edit buttons), plus ``extra``:
    a link to the next page of the same search."""
    pairs = [
        (name, value)
        for name, values in fields.items()
        if name not in EDIT_FIELDS and name not in extra and name != "csrf_token"
        for value in values
    ]
    pairs += list(extra.items())
    return urlencode(pairs)
