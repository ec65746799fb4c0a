"""`profilehook segments create|list|show|delete` (README, Segments) on the embedded default."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from profilehook.cli import main
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import S
from tests.support import event


def cli(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args])
    return result.exit_code, result.output


def test_given_profiles_when_segments_are_managed_from_the_shell_then_json_forms(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    async def seed() -> None:
        store = SqliteStore(data_dir / "profiles.sqlite3")
        await store.open()
        await store.apply(
            [event(f"u{i}", f"e{i}", S, plan="pro" if i else "free") for i in range(3)]
        )
        await store.close()

    asyncio.run(seed())
    flt = '{"property": "plan", "op": "eq", "value": "pro"}'
    code, out = cli(
        data_dir,
        "segments",
        "create",
        "--workspace",
        "acme",
        "--name",
        "Pro",
        "--filter",
        flt,
        "--wait",
        "--json",
    )
    assert code == 0, out
    created = json.loads(out)
    assert created["status"] == "ready" and created["size"] == 2 and created["name"] == "Pro"
    code, out = cli(data_dir, "segments", "list", "--workspace", "acme", "--json")
    assert code == 0 and [s["segment_id"] for s in json.loads(out)] == [created["segment_id"]]
    code, out = cli(data_dir, "segments", "show", created["segment_id"], "--workspace", "acme")
    assert code == 0 and json.loads(out)["size"] == 2
    code, out = cli(data_dir, "segments", "delete", created["segment_id"], "--workspace", "acme")
    assert code == 0
    code, out = cli(data_dir, "segments", "show", created["segment_id"], "--workspace", "acme")
    assert code == 1 and "Segment not found" in out


def test_given_a_bad_filter_then_exit_1_naming_the_problem(tmp_path: Path) -> None:
    bad = '{"property": "plan", "op": "like", "value": "p"}'
    code, out = cli(
        tmp_path, "segments", "create", "--workspace", "acme", "--name", "x", "--filter", bad
    )
    assert code == 1 and "op" in out
    code, out = cli(
        tmp_path, "segments", "create", "--workspace", "acme", "--name", "x", "--filter", "{"
    )
    assert code == 1 and "json_invalid" in out
