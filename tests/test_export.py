"""`profilehook export`: every page exported once, and a file written whole or not at all."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profilehook.export import OutputUnwritable, export_jsonl, whole_file
from profilehook.stores.memory import MemoryStore
from profilehook.stores.sqlite import SqliteStore
from tests.support import cli_env, event, run_cli


async def test_given_more_than_a_page_after_a_deleted_one_then_each_contact_is_written_once() -> (
    None
):
    store = MemoryStore()
    ids = [f"c{i:05d}" for i in range(2_500)]
    await store.apply(
        [event(contact_id=c, event_id=f"u-{c}", ts_us=1, n=i) for i, c in enumerate(ids)]
    )
    await store.apply(
        [event(contact_id=c, event_id=f"d-{c}", ts_us=2, kind="delete") for c in ids[:1_000]]
    )
    out, progress = io.BytesIO(), []

    written = await export_jsonl(
        store, "acme", out, lambda done, total: progress.append((done, total))
    )

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert written == 1_500
    assert [line["contact_id"] for line in lines] == ids[1_000:]
    assert [line["properties"] for line in lines] == [{"n": i} for i in range(1_000, 2_500)]
    assert progress == [(1_000, 2_500), (2_000, 2_500), (2_500, 2_500)]


def test_given_a_symlink_then_its_target_is_replaced_and_the_link_kept(tmp_path: Path) -> None:
    target = tmp_path / "exports" / "profiles.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "profiles.jsonl"
    link.symlink_to(target)

    with whole_file(link) as out:
        out.write(b"new\n")

    assert link.is_symlink()
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["profiles.jsonl"]


def test_given_an_existing_file_then_it_keeps_its_permissions(tmp_path: Path) -> None:
    kept, new = tmp_path / "kept.jsonl", tmp_path / "new.jsonl"
    kept.write_text("old\n")
    kept.chmod(0o600)
    umask = os.umask(0o027)
    try:
        for path in (kept, new):
            with whole_file(path) as out:
                out.write(b"new\n")
    finally:
        os.umask(umask)

    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(new.stat().st_mode) == 0o640  # 0o666 less the umask, as for any file
    assert kept.read_text() == new.read_text() == "new\n"


def test_given_a_fifo_then_it_is_written_into_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        with whole_file(fifo) as out:
            out.write(b"line\n")
        assert reader.communicate(timeout=10)[0] == b"line\n"
    finally:
        if reader.poll() is None:
            reader.kill()
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_given_a_failure_midway_then_the_previous_file_is_left_as_it_was(tmp_path: Path) -> None:
    output = tmp_path / "profiles.jsonl"
    output.write_text("the previous export\n")

    with (
        pytest.raises(OutputUnwritable, match="No space left on device"),
        whole_file(output) as out,
    ):
        out.write(b'{"contact_id": "half"}\n')
        raise OSError(28, "No space left on device")
    with pytest.raises(KeyboardInterrupt), whole_file(output) as out:
        out.write(b'{"contact_id": "half"}\n')
        raise KeyboardInterrupt

    assert output.read_text() == "the previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["profiles.jsonl"]


@pytest.mark.slow
async def test_given_a_sigterm_midway_then_no_temporary_file_is_left(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir / "profiles.sqlite3")
    await store.open()
    try:
        for start in range(0, 150_000, 5_000):
            await store.apply(
                [
                    event(contact_id=f"c{i:06d}", event_id=f"e{i}", ts_us=1, n=i, pad="x" * 200)
                    for i in range(start, start + 5_000)
                ]
            )
    finally:
        await store.close()
    # SIGTERM at a few moments just after the temporary file appears: that is when the export
    # starts its reads. A handler that raised wherever the main thread was once landed between
    # a reader thread's start and its bookkeeping, and the process died of a segfault (-11)
    # in about one run in seven.
    for attempt in range(12):
        exports = tmp_path / f"exports{attempt}"
        exports.mkdir()
        argv = ["export", "--workspace", "acme", "-o", str(exports / "profiles.jsonl")]
        export = subprocess.Popen(
            [sys.executable, "-m", "profilehook", *argv],
            env=cli_env(data_dir),
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not any(exports.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(attempt * 0.0005)
        export.send_signal(signal.SIGTERM)

        _, stderr = export.communicate(timeout=30)
        assert export.returncode == 128 + signal.SIGTERM, (attempt, stderr)
        assert list(exports.iterdir()) == []


def test_a_data_dir_problem_is_reported_as_one_not_as_the_output(tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()

    result = run_cli(
        tmp_path / "a-file" / "data", "export", "--workspace", "acme", "-o", str(tmp_path / "x")
    )

    assert result.returncode == 1
    assert "Cannot write" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()
