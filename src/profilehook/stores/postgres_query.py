"""Filters compiled to SQL on the PostgreSQL store, and the indexes that serve them.

The store keeps one row per property, ``properties (workspace, contact_id, name, value json,
...)``: the value as the JSON text it came as (``json``, not ``jsonb``, so numbers and object
keys stay exact). That is already the (workspace, name, value) layout a filter needs, so a
condition is a sub-select of the contacts whose row for the property passes the test, and
three partial expression indexes, one per kind, make an equality or a range on any property a
range of a B-tree instead of a scan (a GIN ``jsonb_path_ops`` index would need ``jsonb`` values,
and serves equality only, not ranges):

* strings: ``(workspace, name, left(text, 200) COLLATE "C")``. The key is a prefix, so that a
  long string never exceeds a B-tree entry's size; equality, ranges and ``starts_with`` use the
  key to find candidates and compare the whole string after it (bytewise, as Python compares
  code points, whatever the database's collation);
* numbers: ``(workspace, name, numeric)``;
* booleans: ``(workspace, name, text)``.

Each index holds only the rows of its kind, so a property write updates one of them at most.
``contains`` on a list, and ``exists``, read the property's rows without an index of their
own (documented in README, Querying profiles). Each cast sits in a CASE on the value's type:
PostgreSQL may evaluate a filter's conditions in any order, and ``'"a"'::numeric`` fails.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from profilehook.filters import Condition, Query
from profilehook.stores.query import SQL_OPS, FilterCompiler, Sql, by_kind, kind_of, prefix_end

KEY_CHARS = 200  # a string's index key: at most 800 bytes, well under a B-tree entry's limit
_TEXT = "(p.value #>> '{}')"
STRING_KEY = f"left(p.value #>> '{{}}', {KEY_CHARS}) COLLATE \"C\""
NUMBER = "(CASE WHEN json_typeof(p.value) = 'number' THEN (p.value::text)::numeric END)"
BOOLEAN = "(p.value::text)"

# Migration: the indexes (expressions as above, on the bare column: the compiler's ``p.``
# prefix is an alias of the same column, so the planner matches them).
INDEXES = f"""
CREATE INDEX IF NOT EXISTS properties_strings ON properties
    (workspace, name, ({STRING_KEY.replace("p.value", "value")}))
    WHERE json_typeof(value) = 'string';
CREATE INDEX IF NOT EXISTS properties_numbers ON properties
    (workspace, name, ({NUMBER.replace("p.value", "value")}))
    WHERE json_typeof(value) = 'number';
CREATE INDEX IF NOT EXISTS properties_booleans ON properties
    (workspace, name, ({BOOLEAN.replace("p.value", "value")}))
    WHERE json_typeof(value) = 'boolean';
"""

EXISTS = (
    "c.last_ts_us IS NOT NULL AND (c.deleted_ts_us IS NULL"
    " OR (c.last_ts_us, c.last_event_id) > (c.deleted_ts_us, c.deleted_event_id))"
)


def _number(value: Any) -> Decimal:
    """A filter's number as ``numeric``: a float by its shortest repr, the decimal that JSON
    text of it (as stored) holds; always a Decimal, so that an ``in`` list of integers and
    floats is one type (psycopg refuses a list of mixed types)."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(int(value))


class PostgresCompiler(FilterCompiler):
    mark = "%s"

    def __init__(self, workspace: str):
        self.workspace = workspace

    def substring(self, column: str, value: str) -> Sql:
        return f"strpos({column}, %s) > 0", [value]

    def prefix(self, column: str, prefix: str) -> Sql:
        test, params = super().prefix(f'{column} COLLATE "C"', prefix)
        return test, params

    def property(self, node: Condition) -> Sql:
        test, params = self._test(node)
        return (
            "c.contact_id IN (SELECT p.contact_id FROM properties p"
            f" WHERE p.workspace = %s AND p.name = %s AND {test})",
            [self.workspace, node.property, *params],
        )

    def _test(self, node: Condition) -> Sql:
        op, value = node.op, node.value
        if op == "exists":
            return "p.value IS NOT NULL", []
        if op == "eq":
            return self._equal(kind_of(value), [value])
        if op == "in":
            parts = [self._equal(kind, values) for kind, values in by_kind(list(value)).items()]
            return "(" + " OR ".join(p[0] for p in parts) + ")", [v for p in parts for v in p[1]]
        if op in SQL_OPS:
            return self._range(op, value)
        if op == "starts_with":
            return self._starts_with(value)
        if op == "contains":
            return self._contains(value)
        raise AssertionError(op)

    def _equal(self, kind: str, values: list[Any]) -> Sql:
        if kind == "string":
            return (
                f"(json_typeof(p.value) = 'string' AND {STRING_KEY} = ANY(%s)"
                f" AND {_TEXT} = ANY(%s))",
                [[v[:KEY_CHARS] for v in values], values],
            )
        if kind == "number":
            return (
                f"(json_typeof(p.value) = 'number' AND {NUMBER} = ANY(%s::numeric[]))",
                [[_number(v) for v in values]],
            )
        return (
            f"(json_typeof(p.value) = 'boolean' AND {BOOLEAN} = ANY(%s))",
            [["true" if v else "false" for v in values]],
        )

    def _range(self, op: str, value: Any) -> Sql:
        sign = SQL_OPS[op]
        if kind_of(value) == "number":
            return f"json_typeof(p.value) = 'number' AND {NUMBER} {sign} %s::numeric", [
                _number(value)
            ]
        # The key bounds the whole string from the same side (a prefix is never greater).
        key_sign = ">=" if op in ("gt", "gte") else "<="
        return (
            f"json_typeof(p.value) = 'string' AND {STRING_KEY} {key_sign} %s"
            f' AND {_TEXT} COLLATE "C" {sign} %s',
            [value[:KEY_CHARS], value],
        )

    def _starts_with(self, prefix: str) -> Sql:
        whole = f"starts_with({_TEXT}, %s)"
        if len(prefix) > KEY_CHARS:
            return (
                f"json_typeof(p.value) = 'string' AND {STRING_KEY} = %s AND {whole}",
                [prefix[:KEY_CHARS], prefix],
            )
        end = prefix_end(prefix)
        upper = "" if end is None else f" AND {STRING_KEY} < %s"
        return (
            f"json_typeof(p.value) = 'string' AND {STRING_KEY} >= %s{upper} AND {whole}",
            [prefix, *([] if end is None else [end]), prefix],
        )

    def _contains(self, value: Any) -> Sql:
        kind = kind_of(value)
        elements = (
            "json_array_elements(CASE WHEN json_typeof(p.value) = 'array'"
            " THEN p.value ELSE '[]'::json END) e"
        )
        if kind == "string":
            member = "json_typeof(e) = 'string' AND (e #>> '{}') = %s"
        elif kind == "number":
            member = (
                "json_typeof(e) = 'number'"
                " AND (CASE WHEN json_typeof(e) = 'number' THEN (e::text)::numeric END)"
                " = %s::numeric"
            )
            value = _number(value)
        else:
            member = "json_typeof(e) = 'boolean' AND e::text = %s"
            value = "true" if value else "false"
        in_list = f"EXISTS (SELECT 1 FROM {elements} WHERE {member})"
        if kind != "string":
            return f"json_typeof(p.value) = 'array' AND {in_list}", [value]
        return (
            f"((json_typeof(p.value) = 'string' AND strpos({_TEXT}, %s) > 0)"
            f" OR (json_typeof(p.value) = 'array' AND {in_list}))",
            [value, value],
        )


def select_sql(workspace: str, query: Query, columns: str) -> Sql:
    """The page's contacts rows (``contact_id`` and ``columns``), one more than the page."""
    where, params = PostgresCompiler(workspace).compile(query.filter)
    after = "" if query.after is None else " AND c.contact_id > %s"
    sql = (
        f"SELECT c.contact_id, {columns} FROM contacts c WHERE c.workspace = %s AND {EXISTS}"
        f"{after} AND {where} ORDER BY c.contact_id LIMIT %s"
    )
    head = [workspace] if query.after is None else [workspace, query.after]
    return sql, [*head, *params, query.limit + 1]


def count_sql(workspace: str, query: Query) -> Sql:
    where, params = PostgresCompiler(workspace).compile(query.filter)
    sql = f"SELECT COUNT(*) FROM contacts c WHERE c.workspace = %s AND {EXISTS} AND {where}"
    return sql, [workspace, *params]
