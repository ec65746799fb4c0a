"""Segments on the PostgreSQL store: their tables, the applier's one call (``keep``) that moves
the contacts a batch touched (in its transaction, under its locks per contact), and the
backfill's chunks, which take the same locks per contact (stores/segments.py says why)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec

from profilehook.filters import parse_filter, to_json
from profilehook.stores.base import Contact, ContactPlan
from profilehook.stores.postgres_query import EXISTS, PostgresCompiler
from profilehook.stores.segments import (
    Moves,
    Rule,
    RuleSet,
    Segment,
    Touched,
    before_of,
    decide,
    member_rows,
    rule_set,
    work,
)

TABLES = """
CREATE TABLE segments (
    workspace text NOT NULL,
    segment_id text NOT NULL,
    name text NOT NULL,
    filter text NOT NULL,
    created_us bigint NOT NULL,
    status text NOT NULL,
    scanned bigint NOT NULL DEFAULT 0,
    backfill_after text COLLATE "C",
    PRIMARY KEY (workspace, segment_id)
);
CREATE TABLE segment_members (
    workspace text NOT NULL,
    segment_id text NOT NULL,
    contact_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (workspace, segment_id, contact_id)
);
CREATE INDEX segment_members_by_contact ON segment_members (workspace, contact_id);
"""
# Memberships are read and written by their whole key only (``keep``, the backfill, a page of
# members): the index by contact was read by nothing and was a third random page to write for
# every membership an apply moves (SQLite dropped its own for the same reason).
DROP_BY_CONTACT = "DROP INDEX IF EXISTS segment_members_by_contact;"

Conn = Any  # psycopg.AsyncConnection (loaded by the store)
Load = Callable[
    [Conn, list[tuple[str, str]], list[tuple[str, str, str]] | None],
    Awaitable[dict[tuple[str, str], Contact | None]],
]
"""The profiles of these contacts now (absent ones left out), with only the (workspace,
contact_id, name) properties given (None: all of them)."""

_rules_cache: dict[tuple[str, str], Rule] = {}


def _rule(segment_id: str, text: str) -> Rule:
    found = _rules_cache.get((segment_id, text))
    if found is None:
        node, _ = parse_filter(msgspec.json.decode(text))
        assert node is not None  # stored only after it parsed
        if len(_rules_cache) > 10_000:
            _rules_cache.clear()
        found = _rules_cache[(segment_id, text)] = Rule.of(segment_id, node)
    return found


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


Plans = Mapping[tuple[str, str], tuple[Mapping[str, Any], ContactPlan]]
"""Of touched contacts that existed: the values the apply read for its plan (those of the
names its events set) and the plan."""


async def keep(
    conn: Conn, touched: Sequence[Touched], load: Load, plans: Plans | None = None
) -> Moves:
    """Move the touched contacts in and out of their workspaces' segments (the applier's call,
    after it wrote the profiles, in its transaction); the moves. ``plans``: what decides most
    updates with nothing read (``RuleSet.quick``)."""
    if not touched:
        return {}
    cur = await conn.execute(
        "SELECT workspace, segment_id, filter, status FROM segments WHERE workspace = ANY(%s)",
        (sorted({t.workspace for t in touched}),),
    )
    found: dict[str, list[tuple[str, str, str]]] = {}
    for workspace, segment_id, text, status in await cur.fetchall():
        found.setdefault(workspace, []).append((segment_id, text, status))
    by_workspace = {w: rule_set(w, segments, _rule) for w, segments in found.items()}
    ready = {s for r in by_workspace.values() for s in r.ready}
    if not by_workspace:
        return {}
    quick: Moves = {}
    if plans is not None:
        rest = []
        for t in touched:
            rule_set_of = by_workspace.get(t.workspace)
            if rule_set_of is None:
                continue
            key = (t.workspace, t.contact_id)
            given = plans.get(key)
            if given is not None and rule_set_of.quick_applies(t):
                move = rule_set_of.quick(t, *given, partial=True)
                if move is False:
                    rest.append(t)
                elif move is not None:
                    quick[key] = move
            else:
                rest.append(t)
        touched = rest
    moves = await _keep(conn, touched, load, by_workspace, frozenset(ready))
    if quick:
        await _write(conn, *member_rows(quick))
        moves.update(quick)
    return moves


async def _keep(
    conn: Conn,
    touched: Sequence[Touched],
    load: Load,
    by_workspace: dict[str, RuleSet],
    ready: frozenset[str],
) -> Moves:
    todo = work(by_workspace, touched)
    if not todo:
        return {}
    keys = [(t.workspace, t.contact_id) for t, _ in todo]
    # Of each contact, only the properties its segments look at: a rule's answer is a
    # function of those (and of the contact's id and last update), so the rest are not read.
    names = [
        (t.workspace, t.contact_id, n)
        for t, rules in todo
        for n in by_workspace[t.workspace].names_of(t, rules)
    ]
    now = await load(conn, keys, names)
    # A ready segment's membership is the filter's answer on the profile before, which the
    # apply knew where it read the values its plan changes (``Touched.before``): only the
    # other memberships are read.
    before = {
        (t.workspace, t.contact_id): before_of(t, now.get((t.workspace, t.contact_id)))
        for t, _ in todo
        if t.before is not None
    }
    all_ready = all(len(r.ready) == len(r.rules) for r in by_workspace.values())
    pairs = [
        (t.workspace, r.segment_id, t.contact_id)
        for t, rules in todo
        if t.before is None or not all_ready
        for r in rules
        if t.before is None or r.segment_id not in ready
    ]
    members: set[tuple[str, str, str]] = set()
    if pairs:
        cur = await conn.execute(
            "SELECT m.workspace, m.segment_id, m.contact_id FROM segment_members m"
            " JOIN unnest(%s::text[], %s::text[], %s::text[]) AS u(w, s, c)"
            " ON m.workspace = u.w AND m.segment_id = u.s AND m.contact_id = u.c",
            _columns(pairs, 3),
        )
        members = {(w, s, c) for w, s, c in await cur.fetchall()}
    moves = decide(todo, now, members, before, ready, by_workspace)
    await _write(conn, *member_rows(moves))
    return moves


async def _write(
    conn: Conn, added: list[tuple[str, str, str]], removed: list[tuple[str, str, str]]
) -> None:
    if removed:
        await conn.execute(
            "DELETE FROM segment_members m USING unnest(%s::text[], %s::text[], %s::text[])"
            " AS u(w, s, c) WHERE m.workspace = u.w AND m.segment_id = u.s AND m.contact_id = u.c",
            _columns(removed, 3),
        )
    if added:
        await conn.execute(
            "INSERT INTO segment_members (workspace, segment_id, contact_id)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) ON CONFLICT DO NOTHING",
            _columns(added, 3),
        )


_COLUMNS = "workspace, segment_id, name, filter, created_us, status, scanned"


async def create(conn: Conn, segment: Segment, most: int) -> bool:
    """Record ``segment`` unless its workspace has ``most`` already: one creation per
    workspace at a time (a transaction lock of its own), so the count holds until the insert."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        ("segments\x1f" + segment.workspace,),
    )
    cur = await conn.execute(
        "SELECT COUNT(*) FROM segments WHERE workspace = %s", (segment.workspace,)
    )
    if (await cur.fetchone() or (0,))[0] >= most:
        return False
    await conn.execute(
        f"INSERT INTO segments ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, 0)",
        (
            segment.workspace,
            segment.segment_id,
            segment.name,
            msgspec.json.encode(to_json(segment.filter)).decode(),
            segment.created_us,
            segment.status,
        ),
    )
    return True


async def _segment(conn: Conn, row: Sequence[Any]) -> Segment:
    workspace, segment_id, name, text, created_us, status, scanned = row
    cur = await conn.execute(
        "SELECT COUNT(*) FROM segment_members WHERE workspace = %s AND segment_id = %s",
        (workspace, segment_id),
    )
    size = int((await cur.fetchone())[0])
    node = _rule(segment_id, text).filter
    return Segment(segment_id, workspace, name, node, created_us, status, size, int(scanned))


async def listed(conn: Conn, workspace: str) -> list[Segment]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM segments WHERE workspace = %s ORDER BY created_us, segment_id",
        (workspace,),
    )
    return [await _segment(conn, row) for row in await cur.fetchall()]


async def get(conn: Conn, workspace: str, segment_id: str) -> Segment | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM segments WHERE workspace = %s AND segment_id = %s",
        (workspace, segment_id),
    )
    row = await cur.fetchone()
    return None if row is None else await _segment(conn, row)


async def delete(conn: Conn, workspace: str, segment_id: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM segments WHERE workspace = %s AND segment_id = %s", (workspace, segment_id)
    )
    await conn.execute(
        "DELETE FROM segment_members WHERE workspace = %s AND segment_id = %s",
        (workspace, segment_id),
    )
    return bool(cur.rowcount)


async def member_ids(
    conn: Conn, workspace: str, segment_id: str, after: str | None, limit: int
) -> list[str]:
    cur = await conn.execute(
        "SELECT contact_id FROM segment_members WHERE workspace = %s AND segment_id = %s"
        " AND contact_id > %s ORDER BY contact_id LIMIT %s",
        (workspace, segment_id, after or "", limit),
    )
    return [row[0] for row in await cur.fetchall()]


async def backfill(
    conn: Conn,
    workspace: str,
    segment_id: str,
    limit: int,
    lock_contacts: Callable[[Conn, list[tuple[str, str]]], Awaitable[None]],
) -> bool:
    """Decide the next ``limit`` contacts of a building segment; True once it is ready. The
    segment's row is locked (one backfill of it at a time), then the chunk's contacts as an
    apply locks them (an apply under way on one of them ends first); the filter, compiled to
    SQL as for a query, then decides them all in one statement."""
    cur = await conn.execute(
        "SELECT filter, status, backfill_after FROM segments"
        " WHERE workspace = %s AND segment_id = %s FOR UPDATE",
        (workspace, segment_id),
    )
    row = await cur.fetchone()
    if row is None or row[1] == "ready":
        return True
    rule, after = _rule(segment_id, row[0]), row[2] or ""
    cur = await conn.execute(
        "SELECT contact_id FROM contacts WHERE workspace = %s AND contact_id > %s"
        " ORDER BY contact_id LIMIT %s",
        (workspace, after, limit),
    )
    ids = [i for (i,) in await cur.fetchall()]
    if ids:
        await lock_contacts(conn, [(workspace, i) for i in ids])
        span = (workspace, segment_id, after, ids[-1])
        await conn.execute(
            "DELETE FROM segment_members WHERE workspace = %s AND segment_id = %s"
            " AND contact_id > %s AND contact_id <= %s",
            span,
        )
        where, params = PostgresCompiler(workspace).compile(rule.filter)
        await conn.execute(
            "INSERT INTO segment_members (workspace, segment_id, contact_id)"
            f" SELECT %s, %s, c.contact_id FROM contacts c WHERE c.workspace = %s AND {EXISTS}"
            f" AND c.contact_id > %s AND c.contact_id <= %s AND {where} ON CONFLICT DO NOTHING",
            (workspace, segment_id, workspace, after, ids[-1], *params),
        )
    done = len(ids) < limit
    await conn.execute(
        "UPDATE segments SET backfill_after = %s, scanned = scanned + %s, status = %s"
        " WHERE workspace = %s AND segment_id = %s",
        (
            ids[-1] if ids else row[2],
            len(ids),
            "ready" if done else "building",
            workspace,
            segment_id,
        ),
    )
    return done


async def building(conn: Conn) -> list[tuple[str, str]]:
    cur = await conn.execute("SELECT workspace, segment_id FROM segments WHERE status = 'building'")
    return [(w, s) for w, s in await cur.fetchall()]


async def restart_all(conn: Conn) -> None:
    """Every segment to be filled again from the start (after a rebuild of the profiles)."""
    await conn.execute("DELETE FROM segment_members")
    await conn.execute(
        "UPDATE segments SET status = 'building', scanned = 0, backfill_after = NULL"
    )
