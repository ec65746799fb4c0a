"""SPEC 3, "Convergent": the profiles are a pure function of the set of accepted events.

Hypothesis draws events over a few contacts (colliding timestamps, nulls, deletes), delivers them
in any order, duplicated, in any batches -- straight into the real SqliteStore, and through the
Applier and the SqliteQueue with a crash in the middle -- and compares every contact with a
reference model written from the definition alone. ``rebuild`` must reproduce the same state.

Each example gets a fresh temporary directory of its own: function-scoped fixtures would be
shared between hypothesis examples.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profilehook.events import Event, Version
from profilehook.stores.base import Contact, Store
from profilehook.stores.memory import MemoryStore
from profilehook.stores.sqlite import SqliteStore
from tests.support import Crash, crashes, examples, resumed_after_a_crash

S = 1_000_000
WORKSPACES = ("acme", "globex")
CONTACTS = ("c1", "c2")
NAMES = ("a", "b", "c")
# None (unset) twice, so that unsets are common. With the values Python's == takes for one
# another (1 == 1.0 == True, 0 == -0.0 == False, [1] == [True], {"k": 1} == {"k": 1.0}): each
# is its own JSON value, and the profile must end with the very one that won.
VALUES: tuple[Any, ...] = (
    None,
    None,
    True,
    1,
    1.0,
    False,
    0,
    -0.0,
    7,
    2.5,
    "x",
    "ü😀",
    [1],
    [True],
    [3, {"k": None}],
    {"k": 1},
    {"k": 1.0},
    {"n": {"m": "deep"}},
)
KEYS = [(w, c) for w in WORKSPACES for c in CONTACTS]


# -- the reference model: the definition, with no incremental state ------------------------------


def reference(events: Sequence[Event]) -> dict[tuple[str, str], Contact | None]:
    """For each property the max-version update among all events wins; it counts only when its
    version is above the contact's newest delete; None unsets; a contact exists iff some update
    is newer than its newest delete."""
    unique = {(e.workspace, e.event_id): e for e in events}.values()
    expected: dict[tuple[str, str], Contact | None] = {}
    for workspace, contact_id in KEYS:
        mine = [e for e in unique if (e.workspace, e.contact_id) == (workspace, contact_id)]
        deletes = [e.version for e in mine if e.kind == "delete"]
        updates = [e for e in mine if e.kind == "update"]
        deleted: Version | None = max(deletes) if deletes else None

        def alive(version: Version, deleted: Version | None = deleted) -> bool:
            return deleted is None or version > deleted

        if not any(alive(e.version) for e in updates):
            expected[(workspace, contact_id)] = None
            continue
        properties: dict[str, Any] = {}
        versions: dict[str, Version] = {}
        for name in NAMES:
            setting = [(e.version, e.properties[name]) for e in updates if name in e.properties]
            if not setting:
                continue
            version, value = max(setting, key=lambda pair: pair[0])
            if alive(version) and value is not None:
                properties[name], versions[name] = value, version
        expected[(workspace, contact_id)] = Contact(
            contact_id, properties, versions, max(e.version for e in updates)[0]
        )
    return expected


async def actual(store: Store) -> dict[tuple[str, str], Contact | None]:
    return {key: await store.get_contact(*key) for key in KEYS}


def assert_same(found: dict[tuple[str, str], Contact | None], expected: Any, how: str) -> None:
    assert found == expected, how
    for key, contact in found.items():
        if contact is not None:
            # == says 1 == 1.0 == True; the encodings tell the types apart.
            exact = msgspec.json.encode(contact.properties, order="sorted")
            assert exact == msgspec.json.encode(expected[key].properties, order="sorted"), how


# -- scenarios -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    events: list[Event]  # each accepted event once
    batches: list[list[Event]]  # the deliveries: shuffled, with duplicates, split

    @property
    def duplicates(self) -> int:
        return sum(map(len, self.batches)) - len(self.events)


@st.composite
def an_event(draw: st.DrawFn, event_id: str) -> Event:
    is_delete = draw(st.integers(0, 5)) == 0
    properties = (
        {}
        if is_delete
        else draw(st.dictionaries(st.sampled_from(NAMES), st.sampled_from(VALUES), max_size=3))
    )
    return Event(
        workspace=draw(st.sampled_from(WORKSPACES)),
        event_id=event_id,
        contact_id=draw(st.sampled_from(CONTACTS)),
        ts_us=draw(st.integers(1, 4)) * S,  # few distinct times: the event_id often decides
        properties=properties,
        kind="delete" if is_delete else "update",
    )


def split(items: list[Event], cuts: set[int]) -> list[list[Event]]:
    bounds = [0, *sorted(cuts), len(items)]
    return [items[start:end] for start, end in itertools.pairwise(bounds) if end > start]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    ids = draw(
        st.lists(st.text("abyz", min_size=1, max_size=2), min_size=1, max_size=18, unique=True)
    )
    events = [draw(an_event(event_id)) for event_id in ids]
    repeats = draw(st.lists(st.sampled_from(events), max_size=6))
    deliveries = draw(st.permutations(events + repeats))
    cuts = draw(st.sets(st.integers(1, len(deliveries)), max_size=6))
    return Scenario(events, split(deliveries, cuts))


def fresh_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="convergence-")


# -- straight into the store ---------------------------------------------------------------------


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_given_any_delivery_order_duplication_and_batching_then_the_store_matches_the_definition(
    scenario: Scenario,
) -> None:
    async def run(data_dir: Path) -> None:
        expected = reference(scenario.events)
        sqlite_store = SqliteStore(data_dir / "profiles.sqlite3")
        await sqlite_store.open()
        try:
            for store in (sqlite_store, MemoryStore()):
                applied = duplicates = 0
                for batch in scenario.batches:
                    result = await store.apply(batch)
                    applied += result.applied
                    duplicates += result.duplicates
                assert (applied, duplicates) == (len(scenario.events), scenario.duplicates)
                assert_same(await actual(store), expected, f"{type(store).__name__} after apply")

                assert await store.rebuild() == len(scenario.events)
                assert_same(await actual(store), expected, f"{type(store).__name__} after rebuild")
        finally:
            await sqlite_store.close()

    with fresh_dir() as data_dir:
        asyncio.run(run(Path(data_dir)))


# -- through the log, with a crash ---------------------------------------------------------------


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), crash=crashes())
def test_given_a_crash_between_apply_and_ack_then_resuming_converges_to_the_definition(
    scenario: Scenario, crash: Crash
) -> None:
    async def run(data_dir: Path) -> None:
        async with resumed_after_a_crash(data_dir, scenario.batches, crash) as (queue, store):
            assert await queue.depth() == 0
            expected = reference(scenario.events)
            assert_same(await actual(store), expected, "after crash and resume")
            for e in scenario.events:
                record = await store.get_event(e.workspace, e.event_id)
                assert record is not None and record.status == "applied"
            await store.rebuild()
            assert_same(await actual(store), expected, "after rebuild")

    with fresh_dir() as data_dir:
        asyncio.run(run(Path(data_dir)))
