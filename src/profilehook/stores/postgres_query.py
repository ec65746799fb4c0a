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

from profilehook.filters import PSEUDO, Condition, Filter, Query
from profilehook.stores.query import (
    NEGATIONS,
    SQL_OPS,
    FilterCompiler,
    Sql,
    by_kind,
    kind_of,
    prefix_end,
)

KEY_CHARS = 200  # a string's index key: at most 800 bytes, well under a B-tree entry's limit
_TEXT = "(p.value #>> '{}')"
STRING_KEY = f"left(p.value #>> '{{}}', {KEY_CHARS}) COLLATE \"C\""
NUMBER = "(CASE WHEN json_typeof(p.value) = 'number' THEN (p.value::text)::numeric END)"
BOOLEAN = "(p.value::text)"

# Migration 11 (as it ran; never edited): the indexes (expressions as above, on the bare
# column: the compiler's ``p.`` prefix is an alias of the same column, so the planner matches
# them).
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

# A later migration: the same indexes with ``contact_id`` last. An equality on one value then
# reads the matching rows in ``contact_id`` order, which is the order of a page: a query of one
# condition (``select``) walks the index from the page's start and stops after a page, with no
# sort and without reading the other matches (a 1 % equality on a million contacts read all
# 10,000 and sorted them). A range reads all its matches and keeps the first page's worth
# (top-N): the numbers' index also holds the value (INCLUDE), so that it reads them from the
# index alone, not a table page per match (PostgreSQL uses an expression index for an
# index-only scan only when the column is in it too). Strings' values may be long: not there.
INDEXES_BY_CONTACT = f"""
DROP INDEX IF EXISTS properties_strings;
DROP INDEX IF EXISTS properties_numbers;
DROP INDEX IF EXISTS properties_booleans;
CREATE INDEX IF NOT EXISTS properties_strings_by_contact ON properties
    (workspace, name, ({STRING_KEY.replace("p.value", "value")}), contact_id)
    WHERE json_typeof(value) = 'string';
CREATE INDEX IF NOT EXISTS properties_numbers_by_contact ON properties
    (workspace, name, ({NUMBER.replace("p.value", "value")}), contact_id) INCLUDE (value)
    WHERE json_typeof(value) = 'number';
CREATE INDEX IF NOT EXISTS properties_booleans_by_contact ON properties
    (workspace, name, ({BOOLEAN.replace("p.value", "value")}), contact_id)
    WHERE json_typeof(value) = 'boolean';
"""
INDEX_NAMES = (
    "properties_strings_by_contact",
    "properties_numbers_by_contact",
    "properties_booleans_by_contact",
)

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
        test, params = self.test(node)
        return (
            "c.contact_id IN (SELECT p.contact_id FROM properties p"
            f" WHERE p.workspace = %s AND p.name = %s AND {test})",
            [self.workspace, node.property, *params],
        )

    def test(self, node: Condition) -> Sql:
        """A positive test of a stored property, as a condition on its ``properties`` row ``p``."""
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
        if len(values) == 1:
            # ``=`` rather than ``= ANY``: before PostgreSQL 17, an index scan with an array
            # on a column after the first does not return its rows in index order.
            return self._equal_one(kind, values[0])
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

    def _equal_one(self, kind: str, value: Any) -> Sql:
        if kind == "string":
            return (
                f"(json_typeof(p.value) = 'string' AND {STRING_KEY} = %s AND {_TEXT} = %s)",
                [value[:KEY_CHARS], value],
            )
        if kind == "number":
            return (
                f"(json_typeof(p.value) = 'number' AND {NUMBER} = %s::numeric)",
                [_number(value)],
            )
        return f"(json_typeof(p.value) = 'boolean' AND {BOOLEAN} = %s)", [
            "true" if value else "false"
        ]

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


def _drives(node: Filter) -> bool:
    """Whether a filter is one positive test of a stored property (``select`` reads such a
    page from that property's rows)."""
    return isinstance(node, Condition) and node.property not in PSEUDO and node.op not in NEGATIONS


async def select(conn: Any, workspace: str, query: Query, columns: str) -> list[tuple[Any, ...]]:
    """The page's contacts rows (``contact_id`` and ``columns``), one more than the page.

    A filter of one test of a stored property reads the property's matching rows first, in
    ``contact_id`` order, a page's worth at a time (with its LIMIT inside, PostgreSQL chooses
    between the kind's index, whose equality gives that order, and the primary key's order),
    and only then their contacts: a contact that no longer exists is skipped and the next
    rows read. Any other filter is one statement (``select_sql``)."""
    if not _drives(query.filter):
        cur = await conn.execute(*select_sql(workspace, query, columns))
        return list(await cur.fetchall())
    want, after = query.limit + 1, query.after
    found: list[tuple[Any, ...]] = []
    while True:
        chunk = max(want - len(found), CHUNK_ROWS_MIN)
        cur = await conn.execute(*driven_sql(workspace, query.filter, after, chunk, columns))
        rows = await cur.fetchall()
        found += [row[1:] for row in rows if row[1] is not None]
        if len(rows) < chunk or len(found) >= want:
            return found[:want]
        after = rows[-1][0]


CHUNK_ROWS_MIN = 100  # rows of the property read at once when contacts were skipped


def driven_sql(workspace: str, node: Filter, after: str | None, chunk: int, columns: str) -> Sql:
    """``chunk`` rows of the property of ``node`` (a ``_drives`` filter) that pass its test,
    after ``after`` in ``contact_id`` order, each with its contact's ``contact_id`` and
    ``columns`` (NULLs: the contact does not exist)."""
    assert isinstance(node, Condition) and _drives(node)
    test, params = PostgresCompiler(workspace).test(node)
    return (
        f"SELECT p.contact_id, c.contact_id, {columns} FROM (SELECT p.contact_id"
        " FROM properties p WHERE p.workspace = %s AND p.name = %s AND p.contact_id > %s"
        f" AND {test} ORDER BY p.contact_id LIMIT %s) p LEFT JOIN contacts c"
        f" ON c.workspace = %s AND c.contact_id = p.contact_id AND {EXISTS}"
        " ORDER BY p.contact_id",
        [workspace, node.property, after or "", *params, chunk, workspace],
    )


def select_sql(workspace: str, query: Query, columns: str) -> Sql:
    """The page's contacts rows (``contact_id`` and ``columns``), one more than the page, in
    one statement."""
    compiler = PostgresCompiler(workspace)
    where, params = compiler.compile(query.filter)
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
