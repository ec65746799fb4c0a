"""Delivery claims under any sequence of operations (SPEC 2.10, stores/destinations.py): one
random sequence (destinations created, batches enqueued, claims by several workers, outcomes
delivered, retried or failed for good, leases run out, outcomes of a lost lease, erasures,
replays, destinations disabled or deleted, retention) runs on every store at once, the memory
store the reference. After each step every store holds the same deliveries; every claim hands
out exactly the due, unleased earliest pending delivery of each (destination, contact), oldest
first, up to its limit, so no change goes out before an earlier one of its contact, none is
held by two workers at once, and none is stranded; on the SQL stores the head flag
(sqlite_destinations.HEADS, postgres_destinations.HEADS) is on each contact's earliest pending
row."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from profilehook.stores.base import Store
from profilehook.stores.destinations import Delivery, Destination, Finished, NewDelivery
from profilehook.stores.memory import MemoryStore
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import S
from tests.support import (
    POSTGRES_URL,
    drop_schema,
    examples,
    postgres_url,
    require_server,
    unique_schema,
)
from tests.test_delivery_claim_sqlite import as_version_2

T = TypeVar("T")
T0 = 1_700_000_000 * S
OWNERS = ("w1", "w2", "w3")
CONTACTS = ("a", "b")
Outcome = tuple[str, int]  # delivered / retry (after so many seconds) / failed (for good)
OUTCOMES = st.tuples(
    st.sampled_from(["delivered", "retry", "failed"]), st.sampled_from([1, 10, 120])
)
LATER = st.sampled_from([0, 0, 1, 6, 31, 200])  # seconds passed before a step (leases: 5, 30)
Key = tuple[str, bytes]  # (destination, payload): a delivery, whatever its position in a store


Heads = Callable[[Store, str], Awaitable[list[tuple[str, int, str, str, bool]]]]


@dataclass
class Backend:
    """A store's instances on the same data (another process each); worker ``i`` uses
    ``instances[i % len(instances)]``. ``heads``: the SQL stores' delivery rows with their head
    flag; ``reopen``: the SQLite file closed, put back as version 2 left it, and opened."""

    name: str
    instances: list[Store]
    heads: Heads | None = None
    reopen: Callable[[Backend], Awaitable[None]] | None = None

    def of(self, owner: str) -> Store:
        return self.instances[OWNERS.index(owner) % len(self.instances)]


@dataclass
class Run:
    loop: asyncio.AbstractEventLoop
    backends: list[Backend] = field(default_factory=list)

    def all(self, call: Callable[[Backend], Awaitable[T]]) -> list[T]:
        async def each() -> list[T]:
            return [await call(b) for b in self.backends]

        return self.loop.run_until_complete(each())


HEADS_SQL = (
    "SELECT destination_id, position, contact_id, status, head FROM deliveries"
    " WHERE destination_id LIKE {}"
)


async def sqlite_heads(store: Store, prefix: str) -> list[Any]:
    assert isinstance(store, SqliteStore)
    return await store.destinations_db.read(
        lambda conn: conn.execute(HEADS_SQL.format("?"), (f"{prefix}%",)).fetchall()
    )


async def postgres_heads(store: Any, prefix: str) -> list[Any]:
    async def select(conn: Any) -> list[Any]:
        cur = await conn.execute(HEADS_SQL.format("%s"), (f"{prefix}%",))
        return list(await cur.fetchall())

    found: list[Any] = await store._run(select)
    return found


def sqlite_reopened_as_version_2(path: Path) -> Callable[[Backend], Awaitable[None]]:
    async def reopen(b: Backend) -> None:
        for store in b.instances:
            assert isinstance(store, SqliteStore)
            file = store.destinations_db.path
            await store.close()
        try:
            as_version_2(file)
        finally:  # open again whatever happened: the next examples use these
            b.instances = [SqliteStore(path), SqliteStore(path)]
            for store in b.instances:
                await store.open()

    return reopen


def postgres_up() -> bool:
    try:
        require_server(POSTGRES_URL, 5432)  # fails in CI when absent: it must be up there
    except pytest.skip.Exception:
        return False
    return True


@pytest.fixture
def run() -> Iterator[Run]:
    """Memory, SQLite (two instances on one file) and PostgreSQL (two on one schema, when the
    server is up), open for the whole test: each example works in workspaces and destinations
    of its own and deletes them at its end."""
    loop = asyncio.new_event_loop()
    schema = unique_schema()
    with tempfile.TemporaryDirectory() as tmp:
        opened = Run(loop)
        opened.backends.append(Backend("memory", [MemoryStore()]))
        path = Path(tmp) / "profiles.sqlite3"
        sqlite = [SqliteStore(path), SqliteStore(path)]
        reopen = sqlite_reopened_as_version_2(path)
        opened.backends.append(Backend("sqlite", list(sqlite), sqlite_heads, reopen))
        if postgres_up():
            from profilehook.stores.postgres import PostgresStore

            pg = [PostgresStore(postgres_url(schema)) for _ in range(2)]
            opened.backends.append(Backend("postgres", list(pg), postgres_heads))
        try:
            for b in opened.backends:
                for store in b.instances:
                    loop.run_until_complete(store.open())
            yield opened
        finally:
            for b in opened.backends:
                for store in b.instances:
                    loop.run_until_complete(store.close())
            loop.close()
            if len(opened.backends) == 3:
                drop_schema(schema)


def row_state(d: Delivery) -> tuple[Any, ...]:
    """What a store must agree on about a delivery (its position is the store's own)."""
    return (
        d.payload,
        d.contact_id,
        d.status,
        d.attempts,
        d.next_attempt_us,
        d.updated_us,
        d.last_status,
        d.lease_owner,
        d.lease_until_us,
    )


class Deliveries(RuleBasedStateMachine):
    """One example: its own workspaces and destinations on every store, the same steps on
    each, the memory store's answers the reference, the claims checked against the rule."""

    run: ClassVar[Run]

    def __init__(self) -> None:
        super().__init__()
        prefix = uuid.uuid4().hex[:8]
        self.prefix = prefix
        self.workspaces = (f"{prefix}-acme", f"{prefix}-other")
        self.destinations: dict[str, str] = {}  # id -> workspace, created and not deleted
        self.made = 0
        self.now = T0
        self.used_times: set[int] = set()  # every next_attempt_us given: claims never tie
        self.serial = itertools.count(1)
        self.cursors: list[str] = []  # every cursor given, for replays
        self.handed: list[tuple[str, Key]] = []  # (owner, delivery) of every claim made
        self.contacts: dict[bytes, str] = {}  # payload -> contact
        # Per backend, each delivery's position there (they differ once rows are removed).
        self.positions: list[dict[Key, int]] = [{} for _ in self.run.backends]

    # --- helpers ---

    def call(self, call: Callable[[Backend], Awaitable[T]]) -> list[T]:
        return self.run.all(call)

    def agreed(self, call: Callable[[Backend], Awaitable[T]]) -> T:
        """What every store answered, which must be the same."""
        answers = self.call(call)
        assert all(a == answers[0] for a in answers), list(
            zip([b.name for b in self.run.backends], answers, strict=True)
        )
        return answers[0]

    def snapshot(self, b: Backend) -> Awaitable[dict[str, list[Delivery]]]:
        async def rows() -> dict[str, list[Delivery]]:
            store = b.instances[0]
            found = {}
            for n in range(1, self.made + 1):  # the deleted ones too: nothing is left of them
                destination_id = f"{self.prefix}-d{n}"
                listed = await store.list_deliveries(destination_id, None, 100_000)
                found[destination_id] = sorted(listed, key=lambda d: d.position)
            return found

        return rows()

    def learn(self, index: int, rows: list[Delivery]) -> None:
        for d in rows:
            self.positions[index][(d.destination_id, d.payload)] = d.position

    def picked(self, pick: int) -> str:
        """One of the destinations made, deleted or not."""
        return f"{self.prefix}-d{pick % self.made + 1}"

    def fresh_time(self, t: int) -> int:
        """``t`` or the next time no delivery falls due at yet: deliveries due at the same
        time and position (of two destinations) may be claimed in either order, which the
        contract allows, so the stores' claims would not compare."""
        while t in self.used_times:
            t += 1
        self.used_times.add(t)
        return t

    # --- rules ---

    @initialize()
    def create(self) -> None:
        """Two destinations of one workspace and one of another."""
        for workspace in (self.workspaces[0], self.workspaces[0], self.workspaces[1]):
            self.made += 1
            destination_id = f"{self.prefix}-d{self.made}"
            made = Destination(destination_id, workspace, "https://example.com/h", "whsec_eA==", T0)
            assert self.agreed(lambda b, d=made: b.instances[0].create_destination(d, 50))
            self.destinations[destination_id] = workspace

    @rule(
        pick=st.integers(0, 2),
        contacts=st.lists(st.sampled_from(CONTACTS), max_size=4),
        stale=st.integers(0, 4),
    )
    def enqueue(self, pick: int, contacts: list[str], stale: int) -> None:
        self.agreed(self.enqueuing(self.picked(pick), contacts, stale=not stale))

    def enqueuing(
        self, destination_id: str, contacts: list[str], *, stale: bool = False
    ) -> Callable[[Backend], Awaitable[bool]]:
        """An enqueue of changes of ``contacts`` (by a worker that read the cursor before
        another moved it, when ``stale``), to make on each store."""
        workspace = self.destinations.get(destination_id, self.workspaces[0])
        found = self.agreed(lambda b: b.instances[0].get_destination(workspace, destination_id))
        expected = found.cursor if found is not None else None
        if stale:
            expected = f"not-{expected}"
        cursor = str(next(self.serial))
        self.cursors.append(cursor)
        now = self.now = self.fresh_time(self.now)
        rows = [
            NewDelivery(f"ch{cursor}-{i}", cursor, c, now, b"%s-%d" % (cursor.encode(), i))
            for i, c in enumerate(contacts)
        ]
        self.contacts.update((d.payload, d.contact_id) for d in rows)
        return lambda b: b.instances[-1].enqueue_deliveries(
            destination_id, expected, cursor, rows, now
        )

    @rule(
        owner=st.sampled_from(OWNERS),
        limit=st.sampled_from([1, 2, 3, 100]),
        lease_s=st.sampled_from([5, 30]),
        outcomes=st.lists(OUTCOMES, max_size=4),
        after_s=LATER,
        meanwhile=st.lists(st.sampled_from(CONTACTS), max_size=3),
    )
    def claim(
        self,
        owner: str,
        limit: int,
        lease_s: int,
        outcomes: list[Outcome],
        after_s: int,
        meanwhile: list[str],
    ) -> None:
        """Some time later, a claim, and the outcomes of the first of what it claimed (the
        rest stay leased), recorded while another process enqueues ``meanwhile``'s changes to
        the first one's destination."""
        self.now += after_s * S
        before = self.agreed_rows()
        active = {
            d.destination_id for d in self.agreed(lambda b: b.instances[0].active_destinations())
        }
        # Due, unleased, of an active destination, each contact's earliest pending: oldest first.
        eligible = []
        for destination_id, rows in before.items():
            seen: set[str] = set()
            for d in rows:
                if d.status != "pending" or d.contact_id in seen:
                    continue
                seen.add(d.contact_id)
                free = d.lease_until_us is None or d.lease_until_us <= self.now
                if destination_id in active and d.next_attempt_us <= self.now and free:
                    eligible.append(d)
        eligible.sort(key=lambda d: (d.next_attempt_us, d.position))
        expected = [(d.destination_id, d.payload) for d in eligible[:limit]]
        now, until = self.now, self.now + lease_s * S
        claimed = self.call(lambda b: b.of(owner).claim_deliveries(owner, now, until, limit))
        for index, (b, got) in enumerate(zip(self.run.backends, claimed, strict=True)):
            keys = [(d.destination_id, d.payload) for d in got]
            assert sorted(keys) == sorted(expected), (b.name, keys, expected)
            order = [(d.next_attempt_us, d.position) for d in got]
            assert order == sorted(order), (b.name, order)  # oldest first
            assert all((d.lease_owner, d.lease_until_us) == (owner, until) for d in got)
            self.learn(index, got)
        self.handed += [(owner, key) for key in expected]
        finished = dict(zip(expected, outcomes, strict=False))
        also = (
            self.enqueuing(next(iter(finished))[0], meanwhile) if finished and meanwhile else None
        )
        self.finished(owner, finished, also)

    @rule(
        picks=st.lists(st.tuples(st.integers(0, 9), OUTCOMES), min_size=1, max_size=4),
        by=st.sampled_from([None, *OWNERS]),
        after_s=LATER,
    )
    def finish_late(self, picks: list[tuple[int, Outcome]], by: str | None, after_s: int) -> None:
        """Some time later, outcomes of what was handed out before, by the worker it was
        handed to (whose lease may have run out, and been claimed since by another) or, with
        ``by``, by another."""
        self.now += after_s * S
        if not self.handed:
            return
        chosen: dict[str, dict[Key, Outcome]] = {}
        for pick, outcome in picks:
            owner, key = self.handed[-1 - pick % len(self.handed)]  # the latest, mostly
            chosen.setdefault(by or owner, {})[key] = outcome
        for owner, outcomes in sorted(chosen.items()):
            self.finished(owner, outcomes)

    @rule(
        what=st.sampled_from(["erase", "replay", "disable", "delete", "purge"]),
        pick=st.integers(0, 2),
        back=st.integers(0, 5),
    )
    def disrupt(self, what: str, pick: int, back: int) -> None:
        """An erasure of the contact of a delivery handed out lately (while it may be being
        sent), a replay, a destination disabled or deleted, or retention's purge."""
        destination_id = self.picked(pick)
        workspace = self.destinations.get(destination_id, self.workspaces[0])
        now = self.now
        if what == "erase":
            if not self.handed:
                return
            _, (erased_in, payload) = self.handed[-1 - back % len(self.handed)]
            contact = self.contacts[payload]
            w = self.destinations.get(erased_in, self.workspaces[0])
            self.call(lambda b: b.instances[-1].forget_contact_deliveries(w, contact))
        elif what == "replay":
            after = None if back >= len(self.cursors) else self.cursors[-1 - back]
            self.agreed(
                lambda b: b.instances[0].replay_destination(workspace, destination_id, after)
            )
        elif what == "disable":
            self.call(lambda b: b.instances[-1].disable_destination(destination_id, now, "failing"))
        elif what == "delete":
            self.destinations.pop(destination_id, None)
            self.agreed(lambda b: b.instances[-1].delete_destination(workspace, destination_id))
        else:
            self.agreed(lambda b: b.instances[0].purge_deliveries(now + 1, 100_000))

    @rule()
    def reopen(self) -> None:
        """The SQLite destinations file reopened as version 2 left it: its heads are marked
        at open, whatever state its deliveries are in."""
        for b in self.run.backends:
            if b.reopen is not None:
                self.run.loop.run_until_complete(b.reopen(b))

    @rule()
    def drain(self) -> None:
        """Long after every lease and retry, one worker claims and delivers until nothing is
        left: every pending delivery of an active destination goes out, none is stranded."""
        self.now = max([self.now, *self.used_times]) + 3_600 * S
        while self.pending_left(self.agreed_rows()):
            handed = len(self.handed)
            self.claim("w1", 100, 30, [], 0, [])  # which checks it claims every contact's earliest
            assert len(self.handed) > handed, "pending deliveries that no claim hands out"
            self.finished("w1", {k: ("delivered", 0) for _, k in self.handed[handed:]})

    def finished(
        self,
        owner: str,
        outcomes: dict[Key, Outcome],
        also: Callable[[Backend], Awaitable[bool]] | None = None,
    ) -> None:
        """``owner`` records ``outcomes`` in one batch (while another process makes the call
        ``also``): those it still holds count."""
        if not outcomes:
            return
        before = {
            (d.destination_id, d.payload): d for rows in self.agreed_rows().values() for d in rows
        }
        batches: list[list[Finished]] = [[] for _ in self.run.backends]
        holds = 0
        for key, (outcome, delay_s) in outcomes.items():
            row = before.get(key)
            holds += row is not None and row.status == "pending" and row.lease_owner == owner
            at = self.fresh_time(self.now + delay_s * S) if outcome == "retry" else None
            code = 204 if outcome == "delivered" else 500
            for index, batch in enumerate(batches):
                position = self.positions[index][key]
                batch.append(Finished(key[0], position, outcome == "delivered", at, code))
        now = self.now

        async def finish(b: Backend) -> tuple[int, bool | None]:
            batch = batches[self.run.backends.index(b)]
            done = b.of(owner).finish_deliveries(owner, now, batch)
            if also is None:
                return await done, None
            return await asyncio.gather(done, also(b))

        answers = self.call(finish)
        assert all(a == answers[0] for a in answers), answers
        assert answers[0][0] == holds, (owner, outcomes, answers, holds)

    def pending_left(self, rows: dict[str, list[Delivery]]) -> bool:
        active = {
            d.destination_id for d in self.agreed(lambda b: b.instances[0].active_destinations())
        }
        return any(
            d.status == "pending"
            for destination_id in active & rows.keys()
            for d in rows[destination_id]
        )

    # --- invariants ---

    def agreed_rows(self) -> dict[str, list[Delivery]]:
        """Every store's deliveries of this example's destinations, which must be the same."""
        found = self.call(self.snapshot)
        for index, rows in enumerate(found):
            self.learn(index, [d for listed in rows.values() for d in listed])
        states = [{k: [row_state(d) for d in v] for k, v in rows.items()} for rows in found]
        for b, state in zip(self.run.backends[1:], states[1:], strict=True):
            assert state == states[0], (b.name, state, states[0])
        return found[0]

    @invariant()
    def stores_agree(self) -> None:
        rows = self.agreed_rows()
        for workspace in self.workspaces:
            self.agreed(lambda b, w=workspace: b.instances[0].list_destinations(w))
        stats = self.call(lambda b: b.instances[0].delivery_stats())
        mine = [{k: v for k, v in s.items() if k in self.destinations} for s in stats]
        assert all(m == mine[0] for m in mine), mine
        # Never two leases of one (destination, contact) running at once.
        for listed in rows.values():
            running = [
                d.contact_id
                for d in listed
                if d.lease_until_us is not None
                and d.lease_until_us > self.now
                and d.status == "pending"
            ]
            assert len(running) == len(set(running)), listed

    @invariant()
    def heads_are_each_contacts_earliest_pending(self) -> None:
        for b in self.run.backends:
            if b.heads is None:
                continue
            rows = sorted(self.run.loop.run_until_complete(b.heads(b.instances[0], self.prefix)))
            earliest: dict[tuple[str, str], int] = {}
            for destination_id, position, contact_id, status, _ in rows:
                if status == "pending":
                    earliest.setdefault((destination_id, contact_id), position)
            heads = {(r[0], r[1]) for r in rows if r[3] == "pending" and r[4]}
            assert heads == {(d, p) for (d, _), p in earliest.items()}, (b.name, rows)

    def teardown(self) -> None:
        for destination_id, workspace in self.destinations.items():
            self.call(
                lambda b, d=destination_id, w=workspace: b.instances[0].delete_destination(w, d)
            )


def test_claims_agree_with_the_memory_store_and_keep_each_contacts_order(run: Run) -> None:
    Deliveries.run = run
    run_state_machine_as_test(
        Deliveries,
        settings=settings(
            max_examples=examples(100),
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
