"""The console's filter builder: rows of (property, op, type, value) joined by all/any, read from
a form and turned into the filter (README, Querying profiles) that ``filters.parse_filter`` reads;
every problem, ours (a value that is not of its row's type) or the library's, is put on the row
it points to. Values are typed by the row's type and never coerced: ``42`` as a string is the
string ``"42"``. Adding and removing rows are submit buttons, so the builder needs no script."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
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
MAX_ROWS = 20
# The form's fields: the builder's, and the buttons that edit it without running it.
ROW_FIELDS = ("property", "op", "type", "value")
EDIT_FIELDS = ("add", "remove")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


@dataclass
class Row:
    prop: str = ""
    op: str = "eq"
    type: str = "string"
    value: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def blank(self) -> bool:
        return not self.prop and not self.value


@dataclass
class Builder:
    """A builder as submitted: its rows (each with its problems), ``problems`` not about one
    row, the filter it makes (as JSON, shown on the page) and, when that filter is valid, the
    parsed filter to run. ``edited`` when a row was added or removed (then nothing runs), and
    ``focus`` the row a keyboard user lands on after that."""

    match: str = "all"
    rows: list[Row] = field(default_factory=lambda: [Row()])
    problems: list[str] = field(default_factory=list)
    filter_json: dict[str, Any] = field(default_factory=lambda: {"all": []})
    node: Filter | None = None
    edited: bool = False
    focus: int | None = None
    submitted: bool = False

    @property
    def shown_json(self) -> str:
        return json.dumps(self.filter_json, indent=2, ensure_ascii=False)

    def place(self, problems: Sequence[Problem], prefix: int) -> None:
        """Put the library's problems (``loc`` = ``prefix`` parts, then ``all|any, i, …``) on
        the rows they name; the rest on the builder."""
        kept = [i for i, row in enumerate(self.rows) if not row.blank]
        for found in problems:
            loc = list(found["loc"])[prefix:]
            text = str(found["msg"])
            row = loc[1] if len(loc) >= 2 and loc[0] in ("all", "any") else None
            if isinstance(row, int) and row < len(kept):
                where = " ".join(str(part) for part in loc[2:3])
                self.rows[kept[row]].problems.append(f"{where}: {text}" if where else text)
                continue
            self.problems.append(text)

    @property
    def valid(self) -> bool:
        return self.node is not None and not self.problems and not self.row_problems

    @property
    def row_problems(self) -> bool:
        return any(row.problems for row in self.rows)


def read_builder(fields: Mapping[str, list[str]]) -> Builder:
    """The builder a form's fields (every value of each) describe. Without a ``match`` field
    nothing was submitted: one empty row, nothing to run."""
    if "match" not in fields:
        return Builder()
    match = "any" if fields["match"][-1] == "any" else "all"
    columns = [list(fields.get(name, [])) for name in ROW_FIELDS]
    count = min(max((len(c) for c in columns), default=0), MAX_ROWS)
    rows = []
    for i in range(count):
        prop, op, type_, value = (c[i] if i < len(c) else "" for c in columns)
        rows.append(
            Row(
                prop.strip(),
                op if op in dict(OP_LABELS) else "eq",
                type_ if type_ in TYPES else "string",
                value,
            )
        )
    builder = Builder(match=match, rows=rows, submitted=True)
    remove = (fields.get("remove") or [""])[-1]
    if remove.isdigit() and int(remove) < len(rows):
        del rows[int(remove)]
        builder.edited = True
    if fields.get("add") and len(rows) < MAX_ROWS:
        rows.append(Row())
        builder.edited = True
        builder.focus = len(rows) - 1
    if not rows:
        rows.append(Row())
    if builder.edited:
        return builder
    conditions = []
    for row in rows:
        if row.blank:
            continue
        condition: dict[str, Any] = {"property": row.prop, "op": row.op}
        if row.op not in NO_VALUE_OPS:
            if row.op in LIST_OPS:
                condition["value"] = [_typed(row, part.strip()) for part in row.value.split(",")]
            else:
                condition["value"] = _typed(row, row.value)
        conditions.append(condition)
    builder.filter_json = {match: conditions}
    node, problems = parse_filter(builder.filter_json, ("filter",))
    builder.place(problems, 1)
    if not builder.problems and not builder.row_problems:
        builder.node = node
    return builder


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
