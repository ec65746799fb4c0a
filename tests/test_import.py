"""`profilehook import`: a JSONL backfill goes through the durable log and LWW like live events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from profilehook.applier import Applier
from profilehook.backfill import import_jsonl
from profilehook.metrics import Metrics
from profilehook.queues.memory import MemoryQueue
from profilehook.sources.native import event_from_object
from profilehook.stores.memory import MemoryStore
from tests.support import ServerProcess, create_key, run_cli, wait_until


def line(contact_id: str, ts: int, event_id: str, **props: object) -> str:
    return json.dumps(
        {
            "contact_id": contact_id,
            "event_name": "backfill",
            "timestamp": ts,
            "event_id": event_id,
            "user_properties": props,
        }
    )


async def test_given_history_when_imported_then_newer_live_values_are_not_overwritten(
    tmp_path: Path,
) -> None:
    queue, store = MemoryQueue(), MemoryStore()
    applier = Applier(queue, store, Metrics(), 100)
    file = tmp_path / "history.jsonl"
    file.write_text(
        "\n".join(
            [line("c1", 100, "h1", plan="free", seats=1), "", line("c1", 300, "h2", seats=3)]
            + [line(f"bulk{i}", 50, f"b{i}", n=i) for i in range(2_500)]
        )
    )
    live = event_from_object(json.loads(line("c1", 200, "live", plan="pro")), "acme", 0, ("body",))
    await queue.publish([live])  # type: ignore[list-item]
    calls: list[tuple[int, int]] = []

    result = await import_jsonl(
        queue, file, "acme", lambda done, total: calls.append((done, total))
    )
    await applier.drain()

    assert (result.accepted, result.rejected) == (2_502, 0)
    found = await store.get_contact("acme", "c1")
    assert found is not None and found.properties == {"plan": "pro", "seats": 3}
    assert await store.get_contact("acme", "bulk2499") is not None
    assert calls[-1][0] == calls[-1][1] == file.stat().st_size


def test_given_bad_lines_when_imported_by_the_cli_then_they_are_reported_and_the_exit_is_1(
    tmp_path: Path,
) -> None:
    file = tmp_path / "mixed.jsonl"
    file.write_text(line("c1", 1, "ok", a=1) + "\n{not json\n" + '{"contact_id": 5}\n')

    result = run_cli(tmp_path / "data", "import", str(file), "--workspace", "acme", "--json")

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["rejected"]) == (1, 2)
    assert [p["line"] for p in summary["problems"]] == [2, 3]
    assert summary["problems"][0]["detail"][0]["type"] == "json_invalid"
    status = run_cli(tmp_path / "data", "events", "get", "ok", "--workspace", "acme")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "queued"


def unnamed(contact_id: str, ts: int, **props: object) -> dict[str, object]:
    """An import line's event without an event_id."""
    return {
        "contact_id": contact_id,
        "event_name": "backfill",
        "timestamp": ts,
        "user_properties": props,
    }


async def test_given_lines_without_event_ids_when_imported_twice_then_each_event_is_kept_once(
    tmp_path: Path,
) -> None:
    """Given a file whose lines have no event_id, when it is imported twice (the second time
    written with other spacing and key order), then the history holds each event once."""
    queue, store = MemoryQueue(), MemoryStore()
    applier = Applier(queue, store, Metrics(), 100)
    events = [unnamed("c1", 100, plan="free"), unnamed("c1", 200, plan="pro"), unnamed("c2", 5)]
    first, again = tmp_path / "first.jsonl", tmp_path / "again.jsonl"
    first.write_text("".join(json.dumps(e) + "\n" for e in events))
    again.write_text(
        "".join(
            json.dumps(e, sort_keys=True, indent=None, separators=(" ,", " : ")) + "\n"
            for e in reversed(events)
        )
    )

    for file in (first, again, first):
        result = await import_jsonl(queue, file, "acme")
        assert (result.accepted, result.rejected) == (3, 0)
        await applier.drain()

    c1 = await store.history("acme", "c1", None, 100)
    c2 = await store.history("acme", "c2", None, 100)
    assert [r.event.properties for r in c1] == [{"plan": "pro"}, {"plan": "free"}]
    assert len(c2) == 1
    ids = [r.event.event_id for r in (*c1, *c2)]
    assert len(set(ids)) == 3
    for event_id in ids:  # each readable as GET /v1/events/{id} reads it: applied once, and
        # the imports after the first were dropped as repeats of it
        found = await store.get_event("acme", event_id)
        assert found is not None and found.status == "duplicate"
        assert found.applied_us is not None


@pytest.mark.slow
def test_given_a_file_without_event_ids_when_the_cli_imports_it_twice_then_nothing_is_doubled(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    file, last = tmp_path / "history.jsonl", tmp_path / "last.jsonl"
    file.write_text("".join(json.dumps(unnamed(f"c{i}", 100 + i, n=i)) + "\n" for i in range(5)))
    last.write_text(line("other", 1, "sentinel", done=True) + "\n")

    for imported in (file, file, last):
        result = run_cli(data_dir, "import", str(imported), "--workspace", "acme", "--json")
        assert result.returncode == 0, result.stderr
    key = create_key(data_dir)["key"]
    server = ServerProcess(data_dir).start()
    try:
        auth = {"Authorization": f"Bearer {key}"}

        def get(path: str) -> Any:
            response = httpx.get(f"{server.base_url}{path}", headers=auth, timeout=10)
            return response.json() if response.status_code == 200 else None

        # The log is applied in order: once the last import's event is, both others are.
        wait_until(lambda: (get("/v1/events/sentinel") or {}).get("status") == "applied")
        for i in range(5):
            events = get(f"/v1/contacts/c{i}/history")["events"]
            assert [e["properties"] for e in events] == [{"n": i}], events
            # Imported twice: applied once, the second import dropped as its repeat.
            view = get(f"/v1/events/{events[0]['event_id']}")
            assert view["status"] == "duplicate" and view["applied_at"] is not None
    finally:
        server.stop()
