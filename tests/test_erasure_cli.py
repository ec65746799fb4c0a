"""`profilehook contacts erase|unsuppress` and `erasures get`: the library's erasure from the
shell, on the embedded default without a running server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_cli

pytestmark = pytest.mark.slow  # CLI subprocesses


def test_given_no_server_when_erase_waits_then_it_carries_the_erasure_out_and_prints_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    imported = tmp_path / "events.jsonl"
    imported.write_text(
        json.dumps(
            {
                "contact_id": "u1",
                "event_name": "x",
                "timestamp": 1,
                "user_properties": {"s": "MARKER"},
            }
        )
        + "\n"
    )
    assert run_cli(data_dir, "import", str(imported), "--workspace", "acme").returncode == 0

    erased = run_cli(
        data_dir, "contacts", "erase", "u1", "--workspace", "acme", "--suppress", "--wait", "--json"
    )

    assert erased.returncode == 0, erased.stderr
    view = json.loads(erased.stdout)
    assert view["status"] == "done" and view["contact_id"] == "u1" and view["suppress"] is True
    assert view["completed_at"] is not None
    found = run_cli(data_dir, "erasures", "get", view["erasure_id"], "--workspace", "acme")
    assert found.returncode == 0 and json.loads(found.stdout)["status"] == "done"
    for path in data_dir.iterdir():
        assert b"MARKER" not in path.read_bytes(), path
    assert run_cli(data_dir, "contacts", "unsuppress", "u1", "--workspace", "acme").returncode == 0
    again = run_cli(data_dir, "contacts", "unsuppress", "u1", "--workspace", "acme")
    assert again.returncode == 1 and "Contact is not suppressed" in again.stderr


def test_given_no_wait_then_erase_records_a_pending_erasure_and_says_who_carries_it_out(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    pending = run_cli(data_dir, "contacts", "erase", "u1", "--workspace", "acme")

    assert pending.returncode == 0, pending.stderr
    assert "pending" in pending.stdout and "worker" in pending.stdout
    unknown = run_cli(data_dir, "erasures", "get", "era_nope", "--workspace", "acme")
    assert unknown.returncode == 1 and "Erasure not found" in unknown.stderr
    empty = run_cli(data_dir, "contacts", "erase", "", "--workspace", "acme")
    assert empty.returncode == 1 and "contact id" in empty.stderr
