"""Querying profiles: the stores' interface (``ContactQueries``, passed by every backend:
tests/test_query_contract.py) and what the SQL compilers of the backends share.

A backend answers a ``Query`` from its own tables with the filter compiled to SQL (parameters
only: no name or value of a filter ever becomes SQL text), and pages by ``contact_id`` (bytewise
order): a page starts after the last contact of the page before, so a listing of contacts
that do not change meanwhile has each of them exactly once, whatever else is applied.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from profilehook.filters import (
    CONTACT_ID,
    RANGE_OPS,
    UPDATED_AT,
    All,
    AnyOf,
    Condition,
    Filter,
    Not,
    Query,
)
from profilehook.stores.base import Contact

US_PER_S = 1_000_000


@dataclass(frozen=True)
class QueryPage:
    """One page: the matching contacts, the contact to continue after (None: the last page),
    and how many contacts match in all (when the query asked for ``count``)."""

    contacts: list[Contact]
    next_after: str | None
    count: int | None = None


class ContactQueries(ABC):
    """The contacts of a workspace that match a filter (filters.py defines the meaning; the
    reference evaluator ``filters.matches`` is what every backend is tested against).

    Backend errors are raised as ``StorageUnavailable``."""

    @abstractmethod
    async def query_contacts(self, workspace: str, query: Query) -> QueryPage:
        """Up to ``query.limit`` existing (not deleted) contacts matching ``query.filter``, in
        ``contact_id`` order after ``query.after``; ``next_after`` is set when more may
        follow; ``count`` counts every match (not only this page's) when ``query.count``."""


def prefix_end(prefix: str) -> str | None:
    """The least string greater than every string that begins with ``prefix`` (in code point
    order), None when there is none: ``s.startswith(p)`` is ``p <= s < prefix_end(p)``."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:  # no string holds a surrogate: skip them
                following = 0xE000
            return "".join(chars) + chr(following)
    return None


def updated_bound(op: str, seconds: Any) -> tuple[str, int] | None:
    """``$updated_at <op> seconds`` as a comparison of the stored microseconds (an integer)
    with an integer: the comparison and the bound, exact for any number; None when nothing
    can match (``eq`` with a value between two microseconds)."""
    scaled = Fraction(seconds) * US_PER_S
    if op == "eq":
        return ("=", int(scaled)) if scaled.denominator == 1 else None
    if op == "gt":
        return (">", math.floor(scaled))
    if op == "gte":
        return (">=", math.ceil(scaled))
    if op == "lt":
        return ("<", math.ceil(scaled))
    if op == "lte":
        return ("<=", math.floor(scaled))
    raise AssertionError(op)


Sql = tuple[str, list[Any]]
NEGATIONS = {"ne": "eq", "not_in": "in", "not_exists": "exists"}


class FilterCompiler(ABC):
    """A filter as one SQL condition on a contacts row ``c`` (``c.contact_id``,
    ``c.last_ts_us``) and its parameters: the structure (all/any/not, the negated operators,
    the pseudo-properties) here, the property tests per dialect."""

    mark = "?"  # the dialect's parameter placeholder

    def compile(self, node: Filter) -> Sql:
        if isinstance(node, All | AnyOf):
            if not node.items:
                return ("1 = 1", []) if isinstance(node, All) else ("1 = 0", [])
            parts = [self.compile(item) for item in node.items]
            joiner = " AND " if isinstance(node, All) else " OR "
            return "(" + joiner.join(p[0] for p in parts) + ")", [v for p in parts for v in p[1]]
        if isinstance(node, Not):
            inner, params = self.compile(node.item)
            return f"NOT {inner}", params
        if node.op in NEGATIONS:
            inner, params = self.compile(Condition(node.property, NEGATIONS[node.op], node.value))  # type: ignore[arg-type]
            return f"NOT {inner}", params
        if node.property == CONTACT_ID:
            return self.contact_id(node)
        if node.property == UPDATED_AT:
            return self.updated_at(node)
        return self.property(node)

    def contact_id(self, node: Condition) -> Sql:
        m, op, value = self.mark, node.op, node.value
        if op == "exists":
            return "1 = 1", []
        if op == "eq":
            return f"c.contact_id = {m}", [value]
        if op == "in":
            return self.one_of("c.contact_id", list(value))
        if op in RANGE_OPS:
            return f"c.contact_id {_SQL_OPS[op]} {m}", [value]
        if op == "starts_with":
            return self.prefix("c.contact_id", value)
        if op == "contains":
            return self.substring("c.contact_id", value)
        raise AssertionError(op)

    def updated_at(self, node: Condition) -> Sql:
        op, value = node.op, node.value
        if op == "exists":
            return "1 = 1", []
        if op == "in":
            parts = [self.updated_at(Condition(UPDATED_AT, "eq", v)) for v in value]
            return "(" + " OR ".join(p[0] for p in parts) + ")", [v for p in parts for v in p[1]]
        bound = updated_bound(op, value)
        if bound is None:
            return "1 = 0", []
        return f"c.last_ts_us {bound[0]} {self.mark}", [bound[1]]

    def prefix(self, column: str, prefix: str) -> Sql:
        """``column`` (text, compared bytewise) begins with ``prefix``: a range an index serves."""
        end = prefix_end(prefix)
        if end is None:
            return f"{column} >= {self.mark}", [prefix]
        return f"({column} >= {self.mark} AND {column} < {self.mark})", [prefix, end]

    def one_of(self, column: str, values: list[Any]) -> Sql:
        return f"{column} IN ({', '.join(self.mark for _ in values)})", values

    @abstractmethod
    def substring(self, column: str, value: str) -> Sql: ...

    @abstractmethod
    def property(self, node: Condition) -> Sql:
        """A positive test (eq, in, a range, contains, starts_with, exists) of a stored
        property, as a condition on ``c``."""


_SQL_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
SQL_OPS = _SQL_OPS


def kind_of(value: Any) -> str:
    """A filter value's kind, as the stores keep it apart: number, string or boolean."""
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "number"


def by_kind(values: list[Any]) -> dict[str, list[Any]]:
    """The values of an ``in`` grouped by kind (each kind is its own indexed test)."""
    groups: dict[str, list[Any]] = {}
    for value in values:
        groups.setdefault(kind_of(value), []).append(value)
    return groups
