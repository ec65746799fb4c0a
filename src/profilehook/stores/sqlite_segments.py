"""Segments on the SQLite store: their tables, the applier's one call (``keep``) that moves the
contacts a batch touched, and the backfill's chunks. Everything runs on the store's writer,
in the caller's transaction (stores/segments.py says why that keeps memberships exact)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from profilehook.filters import parse_filter, to_json
from profilehook.stores.base import Contact, ContactPlan
from profilehook.stores.segments import (
    Moves,
    Rule,
    RuleSet,
    Segment,
    Touched,
    decide,
    decide_quickly,
    member_rows,
    rule_set,
    work,
)
from profilehook.stores.sqlite_values import EXISTS, SqliteCompiler

TABLES = """
CREATE TABLE IF NOT EXISTS segments (
    workspace TEXT NOT NULL,
    segment_id TEXT NOT NULL,
    name TEXT NOT NULL,
    filter TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    status TEXT NOT NULL,
    scanned INTEGER NOT NULL,
    backfill_after TEXT,
    segment_key INTEGER NOT NULL,  -- its members' rows name it by this (``create``)
    PRIMARY KEY (workspace, segment_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS segments_by_key ON segments (segment_key);
-- Keyed by the segment's integer: a row is the contact's id and a small number, so a page holds
-- twice to three times the rows of (workspace, segment_id, contact_id) and an apply's moved
-- memberships dirty that many fewer pages. Read and written by the whole key only (an index by
-- contact, once here, doubled the cost of every membership an apply moves).
CREATE TABLE IF NOT EXISTS segment_members (
    segment_key INTEGER NOT NULL,
    contact_id TEXT NOT NULL,
    PRIMARY KEY (segment_key, contact_id)
) WITHOUT ROWID;
"""


def keys_7_to_8(conn: sqlite3.Connection) -> None:
    """Memberships keyed by (workspace, segment_id, contact_id) to (segment_key, contact_id):
    each segment numbered, its members copied under its number."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(segment_members)")}
    if "workspace" not in columns:
        return  # none yet (the schema makes them), or keyed so already
    conn.execute("ALTER TABLE segments RENAME TO segments_7")
    conn.execute("DROP INDEX IF EXISTS segment_members_by_contact")
    conn.execute("ALTER TABLE segment_members RENAME TO segment_members_7")
    for statement in TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        f"INSERT INTO segments ({_COLUMNS}, backfill_after, segment_key)"
        f" SELECT {_COLUMNS}, backfill_after, ROW_NUMBER() OVER (ORDER BY workspace, segment_id)"
        " FROM segments_7"
    )
    conn.execute(
        "INSERT INTO segment_members (segment_key, contact_id)"
        " SELECT s.segment_key, m.contact_id FROM segment_members_7 m JOIN segments s"
        " ON s.workspace = m.workspace AND s.segment_id = m.segment_id"
    )
    conn.execute("DROP TABLE segment_members_7")
    conn.execute("DROP TABLE segments_7")


Load = Callable[
    [list[tuple[str, str]], Mapping[tuple[str, str], frozenset[str]]],
    Mapping[tuple[str, str], Contact | None],
]
"""The profiles of these contacts (absent ones may be left out), each with at least the
properties named for it (those its segments look at)."""

_rules_cache: dict[tuple[str, str], Rule] = {}
_json = msgspec.json.encode


def _rule(segment_id: str, text: str) -> Rule:
    found = _rules_cache.get((segment_id, text))
    if found is None:
        node, _ = parse_filter(msgspec.json.decode(text))
        assert node is not None  # stored only after it parsed
        if len(_rules_cache) > 10_000:
            _rules_cache.clear()
        found = _rules_cache[(segment_id, text)] = Rule.of(segment_id, node)
    return found


Keys = dict[tuple[str, str], int]
"""(workspace, segment_id) -> the segment's key in its members' rows."""


def rules(
    conn: sqlite3.Connection, workspaces: set[str]
) -> tuple[dict[str, RuleSet], frozenset[str], Keys]:
    """The workspaces' segments, the ids of those that are ready, and their keys."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    keys: Keys = {}
    rows = conn.execute(
        "SELECT workspace, segment_id, filter, status, segment_key FROM segments"
        " WHERE workspace IN (SELECT value FROM json_each(?))",
        (_json(sorted(workspaces)).decode(),),
    )
    for workspace, segment_id, text, status, key in rows:
        found.setdefault(workspace, []).append((segment_id, text, status))
        keys[(workspace, segment_id)] = key
    by_workspace = {w: rule_set(w, segments, _rule) for w, segments in found.items()}
    return by_workspace, frozenset(s for r in by_workspace.values() for s in r.ready), keys


Plans = Mapping[tuple[str, str], tuple[Mapping[str, Any], ContactPlan]]
"""Of each touched contact: its stored values before the batch (tombstones as None) and the
batch's plan for it."""


def keep(
    conn: sqlite3.Connection,
    touched: Sequence[Touched],
    load: Load,
    before: Load | None = None,
    plans: Plans | None = None,
) -> Moves:
    """Move the touched contacts in and out of their workspaces' segments (the applier's
    call, after it wrote the profiles, in its transaction); the moves. ``before``: the
    contacts' profiles before the batch, when the caller knows them (``decide``); ``plans``:
    the values and plans the batch wrote them from, which decide most updates with nothing
    else built (``RuleSet.quick``)."""
    if not touched:
        return {}
    by_workspace, ready, keys = rules(conn, {t.workspace for t in touched})
    if not by_workspace:
        return {}
    quick: Moves = {}
    if plans is not None:
        quick, touched = decide_quickly(by_workspace, touched, plans)
    moves = _keep(conn, touched, load, before, by_workspace, ready, keys)
    if quick:
        _write(conn, quick, keys)
        moves.update(quick)
    return moves


def _keep(
    conn: sqlite3.Connection,
    touched: Sequence[Touched],
    load: Load,
    before: Load | None,
    by_workspace: dict[str, RuleSet],
    ready: frozenset[str],
    keys: Keys,
) -> Moves:
    todo = work(by_workspace, touched)
    if not todo:
        return {}
    contacts = [(t.workspace, t.contact_id) for t, _ in todo]
    names = {
        (t.workspace, t.contact_id): by_workspace[t.workspace].names_of(t, rules)
        for t, rules in todo
    }
    old = before(contacts, names) if before is not None else None
    # Stored memberships are read only where the profile before is no answer, by their key
    # (none to look for when every segment is ready and the profiles before are known).
    all_ready = old is not None and all(len(r.ready) == len(r.rules) for r in by_workspace.values())
    unknown = (
        []
        if all_ready
        else [
            (keys[(t.workspace, r.segment_id)], t.contact_id)
            for t, needed in todo
            for r in needed
            if old is None or r.segment_id not in ready
        ]
    )
    members: set[tuple[str, str, str]] = set()
    if unknown:
        named = {key: segment for segment, key in keys.items()}
        rows = conn.execute(
            "SELECT m.segment_key, m.contact_id FROM json_each(?) k"
            " CROSS JOIN segment_members m ON m.segment_key = json_extract(k.value, '$[0]')"
            " AND m.contact_id = json_extract(k.value, '$[1]')",
            (_json(unknown).decode(),),
        )
        members = {(*named[key], contact_id) for key, contact_id in rows}
    moves = decide(todo, load(contacts, names), members, old, ready, by_workspace)
    _write(conn, moves, keys)
    return moves


def _write(conn: sqlite3.Connection, moves: Moves, keys: Keys) -> None:
    added, removed = member_rows(moves)
    conn.executemany(
        "DELETE FROM segment_members WHERE segment_key = ? AND contact_id = ?",
        [(keys[(w, s)], c) for w, s, c in removed],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO segment_members (segment_key, contact_id) VALUES (?, ?)",
        [(keys[(w, s)], c) for w, s, c in added],
    )


# -- the segments themselves -----------------------------------------------------------------

_COLUMNS = "workspace, segment_id, name, filter, created_us, status, scanned"


def create(conn: sqlite3.Connection, segment: Segment, most: int) -> bool:
    """Record ``segment`` unless its workspace has ``most`` already (on the one writer: the
    count holds until the insert)."""
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM segments WHERE workspace = ?", (segment.workspace,)
    ).fetchone()
    if count >= most:
        return False
    # A key no segment holds now: one deleted had its members deleted with it.
    conn.execute(
        f"INSERT INTO segments ({_COLUMNS}, backfill_after, segment_key)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, NULL,"
        " (SELECT COALESCE(MAX(segment_key), 0) + 1 FROM segments))",
        (
            segment.workspace,
            segment.segment_id,
            segment.name,
            _json(to_json(segment.filter)).decode(),
            segment.created_us,
            segment.status,
            0,
        ),
    )
    return True


def _segment(conn: sqlite3.Connection, row: Sequence[Any]) -> Segment:
    workspace, segment_id, name, text, created_us, status, scanned, key = row
    size = conn.execute(
        "SELECT COUNT(*) FROM segment_members WHERE segment_key = ?", (key,)
    ).fetchone()[0]
    rule = _rule(segment_id, text)
    return Segment(segment_id, workspace, name, rule.filter, created_us, status, size, scanned)


def listed(conn: sqlite3.Connection, workspace: str) -> list[Segment]:
    rows = conn.execute(
        f"SELECT {_COLUMNS}, segment_key FROM segments WHERE workspace = ?"
        " ORDER BY created_us, segment_id",
        (workspace,),
    ).fetchall()
    return [_segment(conn, row) for row in rows]


def get(conn: sqlite3.Connection, workspace: str, segment_id: str) -> Segment | None:
    row = conn.execute(
        f"SELECT {_COLUMNS}, segment_key FROM segments WHERE workspace = ? AND segment_id = ?",
        (workspace, segment_id),
    ).fetchone()
    return None if row is None else _segment(conn, row)


def delete(conn: sqlite3.Connection, workspace: str, segment_id: str) -> bool:
    row = conn.execute(
        "DELETE FROM segments WHERE workspace = ? AND segment_id = ? RETURNING segment_key",
        (workspace, segment_id),
    ).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM segment_members WHERE segment_key = ?", row)
    return True


def members_sql(columns: str) -> str:
    """The rows of a page of members: contact_id and ``columns`` of the contacts table."""
    return (
        f"SELECT c.contact_id, {columns} FROM segments s"
        " CROSS JOIN segment_members m ON m.segment_key = s.segment_key"
        " JOIN contacts c ON c.workspace = s.workspace AND c.contact_id = m.contact_id"
        " WHERE s.workspace = ? AND s.segment_id = ? AND m.contact_id > ?"
        " ORDER BY m.contact_id LIMIT ?"
    )


def backfill(conn: sqlite3.Connection, workspace: str, segment_id: str, limit: int) -> bool:
    """Decide the next ``limit`` contacts of a building segment with its filter compiled to
    SQL (the query's compiler: the same answers as the reference evaluator); True once it is
    ready."""
    row = conn.execute(
        "SELECT filter, status, backfill_after, segment_key FROM segments"
        " WHERE workspace = ? AND segment_id = ?",
        (workspace, segment_id),
    ).fetchone()
    if row is None or row[1] == "ready":
        return True
    rule, after = _rule(segment_id, row[0]), row[2] or ""
    ids = [
        i
        for (i,) in conn.execute(
            "SELECT contact_id FROM contacts WHERE workspace = ? AND contact_id > ?"
            " ORDER BY contact_id LIMIT ?",
            (workspace, after, limit),
        )
    ]
    if ids:
        key = row[3]
        conn.execute(
            "DELETE FROM segment_members WHERE segment_key = ? AND contact_id > ?"
            " AND contact_id <= ?",
            (key, after, ids[-1]),
        )
        where, params = SqliteCompiler(workspace).compile(rule.filter)
        conn.execute(
            "INSERT OR IGNORE INTO segment_members (segment_key, contact_id)"
            f" SELECT ?, c.contact_id FROM contacts c WHERE c.workspace = ? AND {EXISTS}"
            f" AND c.contact_id > ? AND c.contact_id <= ? AND {where}",
            (key, workspace, after, ids[-1], *params),
        )
    done = len(ids) < limit
    conn.execute(
        "UPDATE segments SET backfill_after = ?, scanned = scanned + ?, status = ?"
        " WHERE workspace = ? AND segment_id = ?",
        (
            ids[-1] if ids else row[2],
            len(ids),
            "ready" if done else "building",
            workspace,
            segment_id,
        ),
    )
    return done


def building(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [
        (w, s)
        for w, s in conn.execute(
            "SELECT workspace, segment_id FROM segments WHERE status = 'building'"
        )
    ]


def restart_all(conn: sqlite3.Connection) -> None:
    """Every segment to be filled again from the start (after a rebuild of the profiles)."""
    conn.execute("DELETE FROM segment_members")
    conn.execute("UPDATE segments SET status = 'building', scanned = 0, backfill_after = NULL")
