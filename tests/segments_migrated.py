"""What a store must show once it migrated memberships to the segment's integer key, whatever
the store (tests/test_segments_sqlite.py, tests/test_segments_postgres.py): before it, workspace
``a`` had a ready segment ``seg_1`` (plan = pro) with members c1 and c3, and workspace ``b`` a
segment of the same id still building over its contact c1 (a pro)."""

from __future__ import annotations

from profilehook.events import Event
from profilehook.filters import parse_filter
from profilehook.stores.base import Store
from profilehook.stores.segments import Segment


async def then_the_members_carried_over(store: Store, c1_free_c2_pro: list[Event]) -> None:
    """The members are as they were; ``c1_free_c2_pro`` (events of workspace ``a``) moves them;
    the building segment fills its own members; a new segment gets a key of its own, and
    deleting it leaves the others' members."""
    ready = await store.get_segment("a", "seg_1")
    assert ready is not None and (ready.status, ready.size) == ("ready", 2)
    page, _ = await store.segment_members("a", "seg_1", None, 10)
    assert [c.contact_id for c in page] == ["c1", "c3"]
    # the applier moves them: c1 leaves, c2 enters
    result = await store.apply(c1_free_c2_pro)
    assert {k[1]: m.view() for k, m in result.segment_moves.items()} == {
        "c1": {"entered": [], "exited": ["seg_1"]},
        "c2": {"entered": ["seg_1"], "exited": []},
    }
    page, _ = await store.segment_members("a", "seg_1", None, 10)
    assert [c.contact_id for c in page] == ["c2", "c3"]
    # the building one is backfilled into its own members, not the other workspace's
    while not await store.backfill_segment("b", "seg_1", 10):
        pass
    page, _ = await store.segment_members("b", "seg_1", None, 10)
    assert [c.contact_id for c in page] == ["c1"]
    # a new segment gets a key of its own: its members are its own
    node, _ = parse_filter({"property": "plan", "op": "eq", "value": "free"})
    assert node is not None
    await store.create_segment(Segment("seg_2", "a", "free", node, 2))
    while not await store.backfill_segment("a", "seg_2", 10):
        pass
    page, _ = await store.segment_members("a", "seg_2", None, 10)
    assert [c.contact_id for c in page] == ["c1"]
    assert [(s.segment_id, s.size) for s in await store.list_segments("a")] == [
        ("seg_1", 2),
        ("seg_2", 1),
    ]
    # and deleting one leaves the other's members
    assert await store.delete_segment("a", "seg_2")
    page, _ = await store.segment_members("a", "seg_1", None, 10)
    assert [c.contact_id for c in page] == ["c2", "c3"]
