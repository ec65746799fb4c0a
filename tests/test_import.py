"""`profilehook import`: a JSONL backfill goes through the durable log and LWW like live events."""

from __future__ import annotations

import json
from pathlib import Path

from profilehook.backfill import import_jsonl
from profilehook.metrics import Metrics
from profilehook.queues.memory import MemoryQueue
from profilehook.sources.native import event_from_object
from profilehook.stores.memory import MemoryStore
from profilehook.worker import Applier
from tests.support import run_cli


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
