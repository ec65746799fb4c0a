"""The erasures' contract (``Erasures``): requests recorded durably, what ``apply`` drops once a
contact is erased or suppressed, and what ``erase_contacts`` leaves. Every backend passes this
one suite (see tests/store_backends.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from profilehook.stores.base import Erasure, Store
from tests.store_backends import S, StoreBackend
from tests.support import event

T = 10 * S  # the erasure's time in these tests


@pytest.fixture
def store(backend: StoreBackend) -> Store:
    return backend.store


def erasure(contact_id: str = "c1", suppress: bool = False, erasure_id: str = "era_1") -> Erasure:
    return Erasure(erasure_id, "acme", contact_id, T, suppress)


async def test_given_a_requested_erasure_then_another_instance_reads_it_pending_then_done(
    backend: StoreBackend,
) -> None:
    await backend.store.request_erasure(erasure(suppress=True))
    other = await backend.open_another()

    found = await other.get_erasure("acme", "era_1")
    assert found == erasure(suppress=True)
    assert found is not None and found.status == "pending"
    assert await other.get_erasure("globex", "era_1") is None  # another workspace's id
    assert await other.get_erasure("acme", "era_unknown") is None
    assert [e.erasure_id for e in await other.pending_erasures(10)] == ["era_1"]

    await other.complete_erasure("era_1", 12 * S)
    await other.complete_erasure("era_1", 13 * S)  # a second completion changes nothing

    done = await backend.store.get_erasure("acme", "era_1")
    assert done is not None and done.status == "done" and done.completed_us == 12 * S
    assert await backend.store.pending_erasures(10) == []


async def test_given_an_applied_contact_when_erased_then_nothing_of_it_up_to_t_is_readable(
    store: Store,
) -> None:
    await store.apply(
        [
            event("c1", "e1", 1 * S, secret="MARKER-1"),
            event("c1", "e2", 2 * S, other="MARKER-2"),
            event("c2", "e3", 3 * S, keep="yes"),
        ]
    )
    await store.put_alias("acme", "src_1", "p7", "c1", (1 * S, "e1"))
    await store.request_erasure(erasure())

    await store.erase_contacts([erasure()])
    await store.erase_contacts([erasure()])  # idempotent

    assert await store.get_contact("acme", "c1") is None
    assert await store.history("acme", "c1", None, 10) == []
    record = await store.get_event("acme", "e1")
    assert record is not None and record.status == "erased"
    assert record.event.properties == {} and record.event.metadata is None
    assert await store.get_alias("acme", "src_1", "p7") is None
    contact = await store.get_contact("acme", "c2")
    assert contact is not None and contact.properties == {"keep": "yes"}
    assert await store.rebuild() == 1  # only c2's event is replayed
    assert await store.get_contact("acme", "c1") is None


async def test_given_erasures_of_several_contacts_erased_together_then_each_is_gone_and_others_kept(
    store: Store,
) -> None:
    await store.apply(
        [
            event("c1", "e1", 1 * S, secret="MARKER-1"),
            event("c2", "e2", 2 * S, secret="MARKER-2"),
            event("c3", "e3", 3 * S, keep="yes"),
            event("c2", "e4", 12 * S, after="kept"),  # after the erasure's time
        ]
    )
    together = [erasure("c1", erasure_id="era_1"), erasure("c2", erasure_id="era_2")]
    for each in together:
        await store.request_erasure(each)

    await store.erase_contacts(together)
    await store.erase_contacts(together)  # idempotent

    assert await store.get_contact("acme", "c1") is None
    c2 = await store.get_contact("acme", "c2")
    assert c2 is not None and c2.properties == {"after": "kept"}
    for event_id in ("e1", "e2"):
        record = await store.get_event("acme", event_id)
        assert record is not None and record.status == "erased" and record.event.properties == {}
    c3 = await store.get_contact("acme", "c3")
    assert c3 is not None and c3.properties == {"keep": "yes"}
    await store.erase_contacts([])  # nothing to erase: nothing changes
    assert await store.get_contact("acme", "c3") == c3


async def test_given_an_erased_contact_when_late_events_arrive_then_only_later_ones_apply(
    store: Store,
) -> None:
    await store.apply([event("c1", "e1", 1 * S, secret="MARKER")])
    await store.request_erasure(erasure())
    await store.erase_contacts([erasure()])

    result = await store.apply(
        [
            event("c1", "late", T, secret="LATE"),  # at T: dropped
            event("c1", "later", T + 1, fresh="new"),  # after T: a new profile
        ]
    )

    assert (result.applied, result.erased, result.duplicates) == (1, 1, 0)
    late = await store.get_event("acme", "late")
    assert late is not None and late.status == "erased" and late.event.properties == {}
    contact = await store.get_contact("acme", "c1")
    assert contact is not None and contact.properties == {"fresh": "new"}
    assert [r.event.event_id for r in await store.history("acme", "c1", None, 10)] == ["later"]


async def test_given_events_applied_between_request_and_execution_then_later_ones_are_kept(
    store: Store,
) -> None:
    await store.apply([event("c1", "e1", 1 * S, a="MARKER")])
    await store.request_erasure(erasure())
    await store.apply([event("c1", "e2", T + 5, b="kept")])

    await store.erase_contacts([erasure()])

    contact = await store.get_contact("acme", "c1")
    assert contact is not None and contact.properties == {"b": "kept"}


async def test_given_a_suppressed_contact_then_every_event_is_dropped_until_unsuppressed(
    store: Store,
) -> None:
    assert not await store.unsuppress("acme", "c1")  # not suppressed: said so
    await store.request_erasure(erasure(suppress=True))
    await store.request_erasure(erasure(suppress=True, erasure_id="era_2"))  # twice: still one
    assert await store.is_suppressed("acme", "c1")

    dropped = await store.apply([event("c1", "after", T + 100 * S, x="MARKER")])
    assert dropped.erased == 1 and await store.get_contact("acme", "c1") is None

    assert await store.unsuppress("acme", "c1")
    assert not await store.unsuppress("acme", "c1")
    assert not await store.is_suppressed("acme", "c1")
    applied = await store.apply([event("c1", "again", T + 200 * S, x="back")])
    assert applied.applied == 1
    contact = await store.get_contact("acme", "c1")
    assert contact is not None and contact.properties == {"x": "back"}
    # The suppression's time still stands: an old event stays out.
    assert (await store.apply([event("c1", "old", T - 1, y="old")])).erased == 1


async def test_given_an_erasure_of_another_workspace_then_this_workspace_is_untouched(
    store: Store,
) -> None:
    await store.apply([event("c1", "e1", 1 * S, workspace="globex", a=1)])
    await store.request_erasure(erasure())
    await store.erase_contacts([erasure()])

    assert (await store.apply([event("c1", "e2", 2 * S, workspace="globex", b=2)])).applied == 1
    contact = await store.get_contact("globex", "c1")
    assert contact is not None and contact.properties == {"a": 1, "b": 2}


async def test_given_a_future_dated_event_received_before_the_erasure_then_it_is_erased_too(
    store: Store,
) -> None:
    """A client clock ahead of the server's: an event dated after T but sent before the request
    is the contact's data all the same. What it had superseded, received after T, comes back
    (the profile is the fold of the events left)."""
    ahead = msgspec.structs.replace(event("c1", "ahead", T + 60 * S, p="MARKER"), received_us=T - 1)
    after = event("c1", "after", T + 30 * S, p="after the erasure")  # received now, after T
    await store.apply([ahead])
    await store.put_alias("acme", "src_1", "p7", "c1", (T + 60 * S, "ahead"))
    await store.request_erasure(erasure())
    await store.apply([after])
    contact = await store.get_contact("acme", "c1")
    assert contact is not None and contact.properties == {"p": "MARKER"}  # it won, until now

    await store.erase_contacts([erasure()])

    contact = await store.get_contact("acme", "c1")
    assert contact is not None and contact.properties == {"p": "after the erasure"}
    record = await store.get_event("acme", "ahead")
    assert record is not None and record.status == "erased" and record.event.properties == {}
    assert await store.get_alias("acme", "src_1", "p7") is None
    redelivered = await store.apply([ahead])  # the log delivering it again: dropped
    assert redelivered.applied == 0
    contact = await store.get_contact("acme", "c1")
    assert contact is not None and contact.properties == {"p": "after the erasure"}


async def test_given_an_erased_contact_when_its_late_event_fails_then_only_its_stub_is_kept(
    store: Store,
) -> None:
    await store.request_erasure(erasure())

    await store.record_failure(event("c1", "poison", 1 * S, secret="MARKER"), "it broke: MARKER")

    record = await store.get_event("acme", "poison")
    assert record is not None and record.status == "erased"
    assert record.event.properties == {} and record.error is None


async def test_given_a_contact_whose_old_history_retention_purged_when_erased_then_rebuild_brings_nothing_back(
    store: Store,
) -> None:
    """Retention folds purged events into a per-contact snapshot: the erasure removes it too."""
    await store.apply([event("c1", "old", 1 * S, a="MARKER"), event("c1", "mid", 2 * S, b="x")])
    assert await store.purge_history(before_us=int(1.5 * S), limit=100) == 1  # "old" -> snapshot
    await store.request_erasure(erasure())
    await store.apply([event("c1", "later", T + 1, c="kept")])

    await store.erase_contacts([erasure()])
    await store.rebuild()

    contact = await store.get_contact("acme", "c1")
    assert contact is not None and contact.properties == {"c": "kept"}


async def test_given_a_contact_with_operations_when_erased_then_its_stubs_keep_no_operation_and_later_ones_fold_anew(
    store: Store,
) -> None:
    def with_ops(e: Any, **ops: str) -> Any:
        return msgspec.structs.replace(e, ops=ops)

    await store.apply(
        [
            with_ops(
                event("c1", "e1", 1 * S, logins=5, tags=["MARKER-TAG"]), logins="add", tags="append"
            ),
            with_ops(event("c1", "e2", 2 * S, first="MARKER-1"), first="set_once"),
        ]
    )
    await store.request_erasure(erasure())
    await store.apply([with_ops(event("c1", "e3", T + 5, logins=1), logins="add")])

    await store.erase_contacts([erasure()])

    for event_id in ("e1", "e2"):
        record = await store.get_event("acme", event_id)
        assert record is not None and record.status == "erased"
        assert record.event.properties == {} and record.event.ops is None
    contact = await store.get_contact("acme", "c1")
    # The count starts again from the event after the erasure, not from the erased 5.
    assert contact is not None and contact.properties == {"logins": 1}
    await store.rebuild()
    rebuilt = await store.get_contact("acme", "c1")
    assert rebuilt is not None and rebuilt.properties == {"logins": 1}
