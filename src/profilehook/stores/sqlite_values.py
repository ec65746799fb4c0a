"""The SQLite store's searchable copy of every contact's live values, and filters compiled to
SQL over it.

The contacts table keeps a contact's properties as one msgpack value (read and written whole
by the applier: the fastest layout for applying), which SQL cannot look into. Beside it,
``contact_values`` holds one row per live property, ``(workspace, name, kind, value,
contact_id)``, and is its primary key: a WITHOUT ROWID table, so the rows are the index. An
equality, a range or a prefix on any property is then a range of that key, read without
scanning other properties or contacts. The kind keeps values of different kinds apart (no
coercion: a number never equals a string, ``true`` is not ``1``): 0 a number (INTEGER or
REAL, which SQLite compares exactly), 1 a string (TEXT, compared bytewise: code point order),
2 a boolean (0 or 1), 3 a list and 4 an object (their JSON text; ``contains`` looks into a
list with ``json_each``).

The applier keeps the copy in the transaction that writes the contact, from the plan of what
changes (``copy_rows``): only the properties a batch changes are written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from profilehook.events import Version, same_value
from profilehook.filters import PSEUDO, Condition, Filter, Query
from profilehook.sqlite_db import insert_rows
from profilehook.stores.base import ContactPlan
from profilehook.stores.query import NEGATIONS, SQL_OPS, FilterCompiler, Sql, by_kind, kind_of

TABLE = """
CREATE TABLE IF NOT EXISTS contact_values (
    workspace TEXT NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,  -- 0 number, 1 string, 2 boolean, 3 list, 4 object
    value NOT NULL,  -- no type: numbers stay numbers, strings text
    contact_id TEXT NOT NULL,
    PRIMARY KEY (workspace, name, kind, value, contact_id)
) WITHOUT ROWID
"""
NUMBER, STRING, BOOLEAN, LIST, OBJECT = 0, 1, 2, 3, 4
_KINDS = {"number": NUMBER, "string": STRING, "boolean": BOOLEAN}
_json = msgspec.json.encode
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def stored(value: Any) -> tuple[int, Any]:
    """A live value as ``contact_values`` keeps it: (kind, value)."""
    if isinstance(value, bool):
        return BOOLEAN, int(value)
    if isinstance(value, int):
        # SQLite's INTEGER is 64 bits; a sum of adds may be beyond (README, Property operations):
        # such a value is searched as the nearest REAL (its profile keeps it exact).
        return NUMBER, value if _INT64_MIN <= value <= _INT64_MAX else float(value)
    if isinstance(value, float):
        return NUMBER, value
    if isinstance(value, str):
        return STRING, value
    return (LIST if isinstance(value, list) else OBJECT), _json(value).decode()


# -- keeping the copy ------------------------------------------------------------------------

Change = tuple[str, str, str, Any, Any]
"""(workspace, contact_id, name, the value before, the value after); None: absent."""
Rows = list[tuple[Any, ...]]
"""Rows of ``contact_values``: (workspace, name, kind, value, contact_id)."""


def _row(workspace: str, name: str, value: Any, contact_id: str) -> tuple[Any, ...]:
    kind = type(value)  # (floats and strings, the most common values, without ``stored``)
    if kind is float:
        return (workspace, name, NUMBER, value, contact_id)
    if kind is str:
        return (workspace, name, STRING, value, contact_id)
    return (workspace, name, *stored(value), contact_id)


def copy_rows(
    workspace: str,
    contact_id: str,
    values: Mapping[str, Any],
    versions: Mapping[str, Version],
    plan: ContactPlan,
    gone: Rows,
    added: Rows,
) -> None:
    """Add to ``gone`` and ``added`` the rows of the copy that ``plan`` drops and writes, as
    ``ContactRow.merged`` writes the contact (``values`` and their ``versions``: the stored
    properties before it, tombstones included, as ``ContactState`` holds them); one pass."""
    upto = plan.delete_upto
    if upto is None and not plan.removes:  # (the everyday plan: writes only)
        for name, (new, _) in plan.upserts.items():
            old = values.get(name)
            if old is not None:
                if same_value(old, new):
                    continue
                gone.append(_row(workspace, name, old, contact_id))
            if new is not None:
                added.append(_row(workspace, name, new, contact_id))
        return
    touched = set(plan.upserts) | plan.removes if plan.removes else plan.upserts.keys()
    if upto is not None:
        touched = {*touched, *(n for n, version in versions.items() if version <= upto)}
    for name in touched:
        old = values.get(name)
        if name in plan.removes:
            new = None
        elif name in plan.upserts:
            new = plan.upserts[name][0]
        else:
            new = None  # covered by the delete
        if (old is None and new is None) or (old is not None and same_value(old, new)):
            continue
        if old is not None:
            gone.append(_row(workspace, name, old, contact_id))
        if new is not None:
            added.append(_row(workspace, name, new, contact_id))


def write_rows(conn: sqlite3.Connection, gone: Rows, added: Rows) -> None:
    """Drop ``gone`` from the copy and write ``added`` (in the caller's transaction)."""
    if gone:
        conn.executemany(
            "DELETE FROM contact_values WHERE workspace = ? AND name = ? AND kind = ?"
            " AND value = ? AND contact_id = ?",
            gone,
        )
    if added:
        # Multi-row statements, OR IGNORE: the key is the whole row, so a row already there is
        # this one; and a statement that cannot abort needs no statement journal (with one, a
        # multi-row insert cost twice a step per row).
        insert_rows(
            conn,
            "INSERT OR IGNORE INTO contact_values (workspace, name, kind, value, contact_id)"
            " VALUES (?, ?, ?, ?, ?)",
            added,
        )


def write_changes(conn: sqlite3.Connection, changes: Iterable[Change]) -> None:
    """Apply these changes of values to the copy (in the caller's transaction)."""
    gone: Rows = []
    added: Rows = []
    for workspace, contact_id, name, old, new in changes:
        if old is not None:
            gone.append(_row(workspace, name, old, contact_id))
        if new is not None:
            added.append(_row(workspace, name, new, contact_id))
    write_rows(conn, gone, added)


def forget(
    conn: sqlite3.Connection, workspace: str, contact_id: str, live: Mapping[str, Any]
) -> None:
    """Drop a contact's values (``live``: what it holds now) from the copy."""
    write_changes(conn, ((workspace, contact_id, n, v, None) for n, v in live.items()))


def index_all(
    conn: sqlite3.Connection, contacts: Iterable[tuple[str, str, Mapping[str, Any]]]
) -> None:
    """Fill the copy anew from every contact's live values (a rebuild, a migration)."""
    conn.execute("DELETE FROM contact_values")
    for workspace, contact_id, live in contacts:
        write_changes(conn, ((workspace, contact_id, n, None, v) for n, v in live.items()))


# -- queries ---------------------------------------------------------------------------------

EXISTS = (
    "c.last_ts_us IS NOT NULL AND (c.deleted_ts_us IS NULL"
    " OR (c.last_ts_us, c.last_event_id) > (c.deleted_ts_us, c.deleted_event_id))"
)


class SqliteCompiler(FilterCompiler):
    mark = "?"

    def __init__(self, workspace: str):
        self.workspace = workspace

    def substring(self, column: str, value: str) -> Sql:
        # Strings hold no NUL (refused at ingestion and in filters), where instr would stop.
        return f"instr({column}, ?) > 0", [value]

    def property(self, node: Condition) -> Sql:
        test, params = self.test(node)
        return (
            "c.contact_id IN (SELECT v.contact_id FROM contact_values v"
            f" WHERE v.workspace = ? AND v.name = ? AND {test})",
            [self.workspace, node.property, *params],
        )

    def test(self, node: Condition) -> Sql:
        """A positive test of a stored property, as a condition on its ``contact_values``
        row ``v``."""
        op, value = node.op, node.value
        if op == "exists":
            return "1 = 1", []
        if op == "eq":
            return "v.kind = ? AND v.value = ?", list(stored(value))
        if op == "in":
            parts = []
            params: list[Any] = []
            for kind, values in by_kind(list(value)).items():
                marks = ", ".join("?" for _ in values)
                parts.append(f"(v.kind = ? AND v.value IN ({marks}))")
                params += [_KINDS[kind], *(stored(v)[1] for v in values)]
            return "(" + " OR ".join(parts) + ")", params
        if op in SQL_OPS:
            return f"v.kind = ? AND v.value {SQL_OPS[op]} ?", list(stored(value))
        if op == "starts_with":
            test, params = self.prefix("v.value", value)
            return f"v.kind = {STRING} AND {test}", params
        if op == "contains":
            return self._contains(value)
        raise AssertionError(op)

    def _contains(self, value: Any) -> Sql:
        kind = kind_of(value)
        if kind == "boolean":
            member = f"j.type = '{'true' if value else 'false'}'"
            params: list[Any] = []
        else:
            types = "'text'" if kind == "string" else "'integer', 'real'"
            member, params = f"j.type IN ({types}) AND j.atom = ?", [stored(value)[1]]
        in_list = (
            f"(v.kind = {LIST} AND EXISTS (SELECT 1 FROM json_each(v.value) j WHERE {member}))"
        )
        if kind != "string":
            return in_list, params
        return f"((v.kind = {STRING} AND instr(v.value, ?) > 0) OR {in_list})", [value, *params]


def _drives(node: Filter) -> bool:
    """Whether a filter is one positive test of a stored property (``select`` reads such a
    page from that property's rows)."""
    return isinstance(node, Condition) and node.property not in PSEUDO and node.op not in NEGATIONS


CHUNK_ROWS_MIN = 100  # rows of the property read at once when contacts were skipped


def select(
    conn: sqlite3.Connection, workspace: str, query: Query, columns: str
) -> list[tuple[Any, ...]]:
    """The page's rows: ``contact_id`` and ``columns`` of the contacts table, one more than
    the page holds (telling whether another follows).

    A filter of one test of a stored property reads the property's matching keys first, a
    page's worth in ``contact_id`` order (an equality's come in that order from the key; a
    range's are all read from it, and the first kept), and only then their contacts: a
    contact that does not exist is skipped and the next keys read. Reading the contacts of
    every match first, as one statement does, grew with the matches (10,000 at 1 % of a
    million). Any other filter is one statement (``select_sql``)."""
    if not _drives(query.filter):
        return conn.execute(*select_sql(workspace, query, columns)).fetchall()
    want, after = query.limit + 1, query.after
    found: list[tuple[Any, ...]] = []
    while True:
        chunk = max(want - len(found), CHUNK_ROWS_MIN)
        rows = conn.execute(*driven_sql(workspace, query.filter, after, chunk, columns)).fetchall()
        found += [row[1:] for row in rows if row[1] is not None]
        if len(rows) < chunk or len(found) >= want:
            return found[:want]
        after = rows[-1][0]


def driven_sql(workspace: str, node: Filter, after: str | None, chunk: int, columns: str) -> Sql:
    """``chunk`` keys of the property of ``node`` (a ``_drives`` filter) that pass its test,
    after ``after`` in ``contact_id`` order, each with its contact's ``contact_id`` and
    ``columns`` (NULLs: the contact does not exist)."""
    assert isinstance(node, Condition) and _drives(node)
    test, params = SqliteCompiler(workspace).test(node)
    return (
        f"SELECT v.contact_id, c.contact_id, {columns} FROM (SELECT v.contact_id"
        " FROM contact_values v WHERE v.workspace = ? AND v.name = ? AND v.contact_id > ?"
        f" AND {test} ORDER BY v.contact_id LIMIT ?) v LEFT JOIN contacts c"
        f" ON c.workspace = ? AND c.contact_id = v.contact_id AND {EXISTS}"
        " ORDER BY v.contact_id",
        [workspace, node.property, after or "", *params, chunk, workspace],
    )


def select_sql(workspace: str, query: Query, columns: str) -> Sql:
    """The page's rows: ``contact_id`` and ``columns`` of the contacts table, one more than
    the page holds (telling whether another follows)."""
    where, params = SqliteCompiler(workspace).compile(query.filter)
    after = "" if query.after is None else " AND c.contact_id > ?"
    sql = (
        f"SELECT c.contact_id, {columns} FROM contacts c WHERE c.workspace = ? AND {EXISTS}"
        f"{after} AND {where} ORDER BY c.contact_id LIMIT ?"
    )
    head = [workspace] if query.after is None else [workspace, query.after]
    return sql, [*head, *params, query.limit + 1]


def count_sql(workspace: str, query: Query) -> Sql:
    where, params = SqliteCompiler(workspace).compile(query.filter)
    sql = f"SELECT COUNT(*) FROM contacts c WHERE c.workspace = ? AND {EXISTS} AND {where}"
    return sql, [workspace, *params]
