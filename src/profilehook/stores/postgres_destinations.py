"""``Destinations`` on PostgreSQL (stores/destinations.py). Several workers share the delivery
rows: a claim takes rows with ``FOR UPDATE SKIP LOCKED`` and leases them in the same statement,
so two workers never hold the same row; the destination's cursor moves by compare-and-set."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from profilehook.stores.destinations import (
    STATS_SQL,
    Delivery,
    DeliveryStats,
    DeliveryStatus,
    Destination,
    Destinations,
    Finished,
    NewDelivery,
    delivery_of,
    destination_of,
    failing_since,
    new_delivery_rows,
)

T = TypeVar("T")
Conn = Any  # psycopg.AsyncConnection (loaded by the store: psycopg is the postgres extra)

MIGRATION = """
CREATE TABLE destinations (
    destination_id text COLLATE "C" PRIMARY KEY,
    workspace text COLLATE "C" NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,
    created_us bigint NOT NULL,
    description text NOT NULL,
    properties jsonb NOT NULL,
    segments jsonb NOT NULL,
    cursor text,
    next_position bigint NOT NULL DEFAULT 1,
    failing_since_us bigint,
    disabled_us bigint,
    disabled_reason text
);
CREATE INDEX destinations_by_workspace ON destinations (workspace, created_us);
CREATE TABLE deliveries (
    destination_id text COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    change_id text NOT NULL,
    cursor text NOT NULL,
    contact_id text COLLATE "C" NOT NULL,
    applied_us bigint NOT NULL,
    payload bytea NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    next_attempt_us bigint NOT NULL,
    updated_us bigint NOT NULL,
    last_status integer,
    last_error text,
    lease_owner text,
    lease_until_us bigint,
    PRIMARY KEY (destination_id, position)
);
CREATE INDEX deliveries_pending ON deliveries (destination_id, contact_id, position)
    WHERE status = 'pending';
CREATE INDEX deliveries_by_status ON deliveries (destination_id, status, position);
"""
"""The tables (appended to ``stores/postgres.py`` MIGRATIONS)."""

INDEXES = """
CREATE INDEX deliveries_due ON deliveries (next_attempt_us, position) WHERE status = 'pending';
CREATE INDEX deliveries_finished ON deliveries (updated_us) WHERE status <> 'pending';
"""
"""A claim walks the due rows in order and stops after its batch; retention finds the finished
ones (appended to MIGRATIONS after ``MIGRATION``)."""

HEADS = """
ALTER TABLE deliveries ADD COLUMN head boolean NOT NULL DEFAULT false;
UPDATE deliveries d SET head = true WHERE status = 'pending' AND NOT EXISTS (
    SELECT 1 FROM deliveries e WHERE e.destination_id = d.destination_id
    AND e.contact_id = d.contact_id AND e.status = 'pending' AND e.position < d.position
);
CREATE INDEX deliveries_heads_due ON deliveries (next_attempt_us, position)
    WHERE status = 'pending' AND head;
"""
"""Each (destination, contact)'s earliest pending row is its **head**, and only heads are
claimable: the claim walks the due heads in order through their own index and reads only what
it claims, where walking every due row read the ones waiting behind a leased or retrying head
too (14,000 rows, 40-57 ms, for a batch of nothing). ``enqueue_deliveries`` makes a new row a
head when its contact has no pending row; ``finish_deliveries`` makes the next pending row one
when a head is delivered or failed. Both (and an erasure's delete) hold the destination's row
locked, so one always sees what the other committed: a row is never left waiting behind a head
that is gone. The claim still checks for an earlier pending row, so the order per contact never
rests on the flag. (Appended to MIGRATIONS last.)"""

_DESTINATION = (
    "destination_id, workspace, url, secret, created_us, description, properties, segments,"
    " cursor, failing_since_us, disabled_us, disabled_reason"
)
_DELIVERY = (
    "destination_id, position, change_id, cursor, contact_id, applied_us, payload, status,"
    " attempts, next_attempt_us, updated_us, last_status, last_error, lease_owner, lease_until_us"
)


class PostgresDestinations(Destinations):
    _run: Callable[..., Awaitable[Any]]  # the store's: one transaction, errors translated

    async def create_destination(self, destination: Destination, most: int) -> bool:
        d = destination

        async def insert(conn: Conn) -> bool:
            # One creation per workspace at a time, so the count holds until the insert.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (d.workspace,))
            cur = await conn.execute(
                "SELECT count(*) FROM destinations WHERE workspace = %s", (d.workspace,)
            )
            if (await cur.fetchone() or (0,))[0] >= most:
                return False
            await conn.execute(
                f"INSERT INTO destinations ({_DESTINATION})"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    d.destination_id,
                    d.workspace,
                    d.url,
                    d.secret,
                    d.created_us,
                    d.description,
                    json.dumps(list(d.properties)),
                    json.dumps(list(d.segments)),
                    d.cursor,
                    d.failing_since_us,
                    d.disabled_us,
                    d.disabled_reason,
                ),
            )
            return True

        found: bool = await self._run(insert)
        return found

    async def list_destinations(self, workspace: str) -> list[Destination]:
        rows = await self._rows(
            f"SELECT {_DESTINATION} FROM destinations WHERE workspace = %s"
            " ORDER BY created_us, destination_id",
            (workspace,),
        )
        return [destination_of(row, row[6], row[7]) for row in rows]

    async def get_destination(self, workspace: str, destination_id: str) -> Destination | None:
        rows = await self._rows(
            f"SELECT {_DESTINATION} FROM destinations WHERE destination_id = %s AND workspace = %s",
            (destination_id, workspace),
        )
        return destination_of(rows[0], rows[0][6], rows[0][7]) if rows else None

    async def delete_destination(self, workspace: str, destination_id: str) -> bool:
        async def delete(conn: Conn) -> bool:
            cur = await conn.execute(
                "DELETE FROM destinations WHERE destination_id = %s AND workspace = %s",
                (destination_id, workspace),
            )
            if not cur.rowcount:
                return False
            await conn.execute(
                "DELETE FROM deliveries WHERE destination_id = %s", (destination_id,)
            )
            return True

        found: bool = await self._run(delete)
        return found

    async def forget_contact_deliveries(self, workspace: str, contact_id: str) -> None:
        async def delete(conn: Conn) -> None:
            await conn.execute(  # HEADS: not beside an enqueue or a finish of the same
                "SELECT 1 FROM destinations WHERE workspace = %s"
                " ORDER BY destination_id FOR NO KEY UPDATE",
                (workspace,),
            )
            await conn.execute(
                "DELETE FROM deliveries WHERE contact_id = %s AND destination_id IN"
                " (SELECT destination_id FROM destinations WHERE workspace = %s)",
                (contact_id, workspace),
            )

        await self._run(delete)

    async def active_destinations(self) -> list[Destination]:
        rows = await self._rows(
            f"SELECT {_DESTINATION} FROM destinations WHERE disabled_us IS NULL"
            " ORDER BY created_us, destination_id",
            (),
        )
        return [destination_of(row, row[6], row[7]) for row in rows]

    async def enqueue_deliveries(
        self,
        destination_id: str,
        expected: str | None,
        cursor: str,
        deliveries: Sequence[NewDelivery],
        now_us: int,
    ) -> bool:
        async def enqueue(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE destinations SET cursor = %s, next_position = next_position + %s"
                " WHERE destination_id = %s AND cursor IS NOT DISTINCT FROM %s"
                " RETURNING next_position",
                (cursor, len(deliveries), destination_id, expected),
            )
            row = await cur.fetchone()
            if row is None:
                return False
            start = row[0] - len(deliveries)
            if deliveries:
                # The destination's row is locked (above): a finish of one of these contacts'
                # heads has committed, or waits for this to commit (HEADS).
                cur = await conn.execute(
                    "SELECT DISTINCT contact_id FROM deliveries WHERE destination_id = %s"
                    " AND status = 'pending' AND contact_id = ANY(%s)",
                    (destination_id, list({d.contact_id for d in deliveries})),
                )
                waiting = {r[0] for r in await cur.fetchall()}
                heads = []
                for d in deliveries:
                    heads.append(d.contact_id not in waiting)
                    waiting.add(d.contact_id)
                rows = new_delivery_rows(destination_id, start, deliveries, now_us)
                async with conn.cursor() as c:
                    await c.executemany(
                        f"INSERT INTO deliveries ({_DELIVERY}, head) VALUES"
                        " (%s,%s,%s,%s,%s,%s,%s,'pending',0,%s,%s,NULL,NULL,NULL,NULL,%s)",
                        [(*r, h) for r, h in zip(rows, heads, strict=True)],
                    )
            return True

        done: bool = await self._run(enqueue)
        return done

    async def claim_deliveries(
        self, owner: str, now_us: int, lease_until_us: int, limit: int
    ) -> list[Delivery]:
        async def claim(conn: Conn) -> list[Delivery]:
            # The disabled destinations as a list, not a join: the claim stays a walk of one
            # index in order (a join to the small, rarely analysed destinations table made the
            # planner scan and sort every pending row instead).
            cur = await conn.execute(
                "SELECT destination_id FROM destinations WHERE disabled_us IS NOT NULL"
            )
            disabled = [row[0] for row in await cur.fetchall()]
            cur = await conn.execute(
                f"UPDATE deliveries SET lease_owner = %s, lease_until_us = %s"
                f" WHERE (destination_id, position) IN ({_CLAIMABLE})"
                f" RETURNING {_DELIVERY}",
                (owner, lease_until_us, now_us, disabled, now_us, limit),
            )
            found = [delivery_of(row) for row in await cur.fetchall()]
            found.sort(key=lambda d: (d.next_attempt_us, d.position))
            return found

        claimed: list[Delivery] = await self._run(claim)
        return claimed

    async def finish_deliveries(self, owner: str, now_us: int, finished: Sequence[Finished]) -> int:
        if not finished:
            return 0

        async def finish(conn: Conn) -> int:
            # The destinations' rows first, in one order (HEADS: a new row enqueued meanwhile
            # is seen below, or sees this one's outcome).
            await conn.execute(
                "SELECT 1 FROM destinations WHERE destination_id = ANY(%s)"
                " ORDER BY destination_id FOR NO KEY UPDATE",
                (sorted({f.destination_id for f in finished}),),
            )
            cur = await conn.execute(
                _FINISH,
                (
                    now_us,
                    [f.destination_id for f in finished],
                    [f.position for f in finished],
                    [f.outcome for f in finished],
                    [f.next_attempt_us for f in finished],
                    [f.status for f in finished],
                    [f.error for f in finished],
                    owner,
                ),
            )
            rows = await cur.fetchall()
            recorded = {(row[0], row[1]) for row in rows}
            done = [f for f in finished if (f.destination_id, f.position) in recorded]
            ended = [(row[0], row[2]) for row in rows if row[3] != "pending"]
            if ended:  # the next pending row of each of those contacts is its head now
                await conn.execute(_NEXT_HEADS, ([e[0] for e in ended], [e[1] for e in ended]))
            for destination_id, since in failing_since(done, now_us).items():
                await conn.execute(
                    "UPDATE destinations SET failing_since_us = coalesce(failing_since_us, %s)"
                    " WHERE destination_id = %s"
                    if since is not None
                    else "UPDATE destinations SET failing_since_us = %s"
                    " WHERE destination_id = %s AND failing_since_us IS NOT NULL",
                    (since, destination_id),
                )
            return len(done)

        count: int = await self._run(finish)
        return count

    async def purge_deliveries(self, before_us: int, limit: int) -> int:
        async def purge(conn: Conn) -> int:
            cur = await conn.execute(
                "DELETE FROM deliveries WHERE (destination_id, position) IN"
                " (SELECT destination_id, position FROM deliveries"
                "  WHERE status <> 'pending' AND updated_us < %s ORDER BY updated_us LIMIT %s"
                "  FOR UPDATE SKIP LOCKED)",
                (before_us, limit),
            )
            return int(cur.rowcount)

        count: int = await self._run(purge)
        return count

    async def list_deliveries(
        self, destination_id: str, status: DeliveryStatus | None, limit: int
    ) -> list[Delivery]:
        rows = await self._rows(
            f"SELECT {_DELIVERY} FROM deliveries WHERE destination_id = %s"
            " AND (%s::text IS NULL OR status = %s) ORDER BY position DESC LIMIT %s",
            (destination_id, status, status, limit),
        )
        return [delivery_of(row) for row in rows]

    async def replay_destination(
        self, workspace: str, destination_id: str, after: str | None
    ) -> bool:
        async def replay(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE destinations SET cursor = %s WHERE destination_id = %s AND workspace = %s",
                (after, destination_id, workspace),
            )
            return bool(cur.rowcount)

        done: bool = await self._run(replay)
        return done

    async def disable_destination(self, destination_id: str, at_us: int, reason: str) -> None:
        async def disable(conn: Conn) -> None:
            await conn.execute(
                "UPDATE destinations SET disabled_us = %s, disabled_reason = %s"
                " WHERE destination_id = %s",
                (at_us, reason, destination_id),
            )

        await self._run(disable)

    async def delivery_stats(self) -> dict[str, DeliveryStats]:
        rows = await self._rows(STATS_SQL, ())
        return {row[0]: DeliveryStats(*row[1:]) for row in rows}

    async def _rows(self, query: str, params: Sequence[Any]) -> list[Any]:
        async def select(conn: Conn) -> list[Any]:
            cur = await conn.execute(query, params)
            found: list[Any] = await cur.fetchall()
            return found

        rows: list[Any] = await self._run(select)
        return rows


# One UPDATE for a batch of outcomes; the rows it changed (the others: lease lost).
_FINISH = """
UPDATE deliveries d SET status = o.status, attempts = d.attempts + 1,
    next_attempt_us = coalesce(o.next_us, d.next_attempt_us), updated_us = %s,
    last_status = o.code, last_error = o.error, lease_owner = NULL, lease_until_us = NULL
FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::integer[], %s::text[])
    AS o(destination_id, position, status, next_us, code, error)
WHERE d.destination_id = o.destination_id AND d.position = o.position
    AND d.status = 'pending' AND d.lease_owner = %s
RETURNING d.destination_id, d.position, d.contact_id, d.status
"""

# The earliest pending row of each (destination, contact) given (their heads ended).
_NEXT_HEADS = """
UPDATE deliveries d SET head = true FROM (
    SELECT DISTINCT ON (e.destination_id, e.contact_id) e.destination_id, e.position
    FROM deliveries e JOIN unnest(%s::text[], %s::text[]) AS o(destination_id, contact_id)
        ON e.destination_id = o.destination_id AND e.contact_id = o.contact_id
    WHERE e.status = 'pending'
    ORDER BY e.destination_id, e.contact_id, e.position
) n
WHERE d.destination_id = n.destination_id AND d.position = n.position
"""

# Due, unleased, pending rows of active destinations that are their contact's earliest pending
# (the heads, through deliveries_heads_due: HEADS); rows another worker is claiming right now are
# skipped, not waited for.
_CLAIMABLE = """
SELECT d.destination_id, d.position FROM deliveries d
WHERE d.status = 'pending' AND d.head AND d.next_attempt_us <= %s
AND d.destination_id <> ALL(%s::text[])
AND (d.lease_until_us IS NULL OR d.lease_until_us <= %s)
AND NOT EXISTS (
    SELECT 1 FROM deliveries e WHERE e.destination_id = d.destination_id
    AND e.contact_id = d.contact_id AND e.status = 'pending' AND e.position < d.position
)
ORDER BY d.next_attempt_us, d.position
LIMIT %s
FOR UPDATE OF d SKIP LOCKED
"""
