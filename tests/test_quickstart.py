"""The quick start, run as a newcomer would: ``make run``, then the commands it prints.

``make run`` prints a ready-to-paste ``curl`` that sends the seed event and one that reads the
profile back; this test pastes them into bash, exactly as printed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.support import free_port, run_cli, wait_until

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
STAMP = ".venv/.installed"
OUTPUT_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0
APPLY_TIMEOUT_S = 20.0
SEED_EVENT_ID = "e3b0c442-98fc-4e4e-a83f-5f7d7edc2f38"


@dataclass
class Quickstart:
    """What ``make run`` printed before the server started."""

    text: str
    base_url: str
    send: str
    read: str


def _newcomer_env() -> dict[str, str]:
    """A shell with no profilehook settings and not inside another make."""
    drop = ("PROFILEHOOK_", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@contextmanager
def make_run(port: int, data_dir: Path) -> Iterator[Quickstart]:
    """``make run PORT=.. DATA_DIR=..`` in its own process group, stopped on exit."""
    # The venv install is the stamp's job and runs in CI's `make test`; here make must treat
    # the stamp as done so it never reinstalls the shared .venv (network, minutes).
    command = ["make", f"--assume-old={STAMP}", "run", f"PORT={port}", f"DATA_DIR={data_dir}"]
    stderr_path = data_dir.parent / f"make-run-{port}.err"
    with (
        stderr_path.open("wb") as stderr,
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=_newcomer_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        ) as proc,
    ):
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
        reader.start()
        try:
            yield _read_quickstart(lines, proc, stderr_path)
        finally:
            _stop_group(proc)
            reader.join(timeout=10)


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _read_quickstart(
    lines: queue.Queue[str | None], proc: subprocess.Popen[str], stderr_path: Path
) -> Quickstart:
    """Read stdout until the quick start text is complete (its last line names the docs)."""
    seen: list[str] = []
    deadline = time.monotonic() + OUTPUT_TIMEOUT_S
    while not (seen and seen[-1].startswith("API docs:")):
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.01))
        except queue.Empty:
            raise AssertionError(f"no quick start within {OUTPUT_TIMEOUT_S}s: {seen}") from None
        if line is None:
            raise AssertionError(
                f"make run exited ({proc.wait()}): {seen} {stderr_path.read_text()[-2000:]}"
            )
        seen.append(line)
    text = "\n".join(seen)
    header = next(line for line in seen if line.startswith("profilehook on "))
    return Quickstart(
        text=text,
        base_url=header.removeprefix("profilehook on ").split(",", 1)[0],
        send=_command_after(seen, "Send the first event:"),
        read=_command_after(seen, "Read the profile:"),
    )


def _command_after(lines: list[str], heading: str) -> str:
    command = lines[lines.index(heading) + 1].strip()
    assert command.startswith("curl "), command
    return command


def _stop_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def bash(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        env={**_newcomer_env(), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def send_printed(command: str, **env: str) -> tuple[int, Any]:
    """Run the printed send command as is, with only curl's status line appended."""
    result = bash(command + " -w '\\n%{http_code}'", **env)
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


def wait_ready(base_url: str) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout_s=READY_TIMEOUT_S, interval_s=0.05)


def read_profile(command: str, **env: str) -> dict[str, Any] | None:
    result = bash(command, **env)
    if result.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(result.stdout)
    return found if "properties" in found else None


def printed_key(quickstart: Quickstart) -> str:
    match = re.search(r"Authorization: Bearer (phk_[A-Za-z0-9_-]+)", quickstart.send)
    assert match, quickstart.send
    return match.group(1)


def test_given_a_fresh_data_dir_when_make_run_then_the_printed_commands_work_as_printed(
    tmp_path: Path,
) -> None:
    """Given a new data directory, when a newcomer runs ``make run`` and pastes the printed
    send command, then it answers 202 and the printed read command shows the profile."""
    data_dir, port = tmp_path / "data", free_port()

    with make_run(port, data_dir) as first:
        assert "Created workspace 'default' and its first API key" in first.text
        assert first.base_url == f"http://127.0.0.1:{port}"
        wait_ready(first.base_url)

        status, body = send_printed(first.send)
        assert (status, body) == (202, {"status": "accepted", "event_id": SEED_EVENT_ID})

        profile = wait_until(
            lambda: (
                (p := read_profile(first.read))
                and p["properties"].get("subscription_status") == "active"
                and p
            ),
            timeout_s=APPLY_TIMEOUT_S,
        )
    assert profile["contact_id"] == "user123"
    assert profile["properties"] == {"subscription_status": "active", "last_login": 1672531200}


@pytest.fixture
def used_data_dir(tmp_path: Path) -> tuple[Path, str]:
    """A data directory on which ``make run`` ran once: (the directory, the key it printed)."""
    data_dir = tmp_path / "data"
    with make_run(free_port(), data_dir) as first:
        wait_ready(first.base_url)
    return data_dir, printed_key(first)


def test_given_a_data_dir_with_keys_when_make_run_again_then_no_key_is_created(
    used_data_dir: tuple[Path, str],
) -> None:
    data_dir, key = used_data_dir
    keys_before = json.loads(run_cli(data_dir, "keys", "list", "--json").stdout)
    assert len(keys_before) == 1

    with make_run(free_port(), data_dir) as second:
        assert "Keys exist already" in second.text
        assert "Created workspace" not in second.text
        assert key not in second.text
        wait_ready(second.base_url)

    assert json.loads(run_cli(data_dir, "keys", "list", "--json").stdout) == keys_before


def test_given_a_second_run_when_the_printed_commands_are_pasted_with_the_key_exported_then_they_work(
    used_data_dir: tuple[Path, str],
) -> None:
    """Given ``make run`` on a data dir that has a key, when the user exports it as
    PROFILEHOOK_KEY (as the output says) and pastes the printed commands, then they work."""
    data_dir, key = used_data_dir
    with make_run(free_port(), data_dir) as second:
        assert "PROFILEHOOK_KEY" in second.text
        wait_ready(second.base_url)
        status, body = send_printed(second.send, PROFILEHOOK_KEY=key)
        assert (status, body) == (202, {"status": "accepted", "event_id": SEED_EVENT_ID})
        profile = wait_until(
            lambda: read_profile(second.read, PROFILEHOOK_KEY=key), APPLY_TIMEOUT_S
        )
        assert profile["properties"]["subscription_status"] == "active"


def test_given_a_second_run_when_the_printed_keys_create_is_pasted_elsewhere_then_its_key_works(
    used_data_dir: tuple[Path, str], tmp_path: Path
) -> None:
    """Given ``make run`` on a data dir that has a key, when the user pastes the printed
    ``keys create`` command into a shell elsewhere (no venv on PATH, another directory), then
    it creates a key of this data directory, which the running server accepts."""
    data_dir, _ = used_data_dir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with make_run(free_port(), data_dir) as second:
        printed = next(line for line in second.text.splitlines() if "keys create" in line)
        create = printed.rpartition("create one: ")[2].strip()
        wait_ready(second.base_url)

        created = subprocess.run(
            ["bash", "-c", create],
            cwd=elsewhere,
            env=_newcomer_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, (create, created.stderr)
        key = created.stdout.splitlines()[-1].strip()
        assert key.startswith("phk_"), created.stdout

        status, body = send_printed(second.send, PROFILEHOOK_KEY=key)
    assert (status, body) == (202, {"status": "accepted", "event_id": SEED_EVENT_ID})
    assert not any(elsewhere.iterdir())  # no stray data directory where it was pasted
