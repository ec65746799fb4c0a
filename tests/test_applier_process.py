"""`serve`'s applier runs in a child process (applier_process.py): it applies, reports its
metrics to the server, is restarted when it dies, and never outlives the server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import httpx2 as httpx
import msgspec
import pytest

from profilehook import applier_process, supervision
from profilehook.errors import StorageUnavailable
from profilehook.metrics import Metrics
from profilehook.queues import QUEUE_FILE
from profilehook.queues.sqlite import INDEX_BITS
from profilehook.settings import Settings
from profilehook.stores import STORE_FILE
from tests.support import ServerProcess, alive, create_key, wait_until

pytestmark = pytest.mark.slow


def applier_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    out = subprocess.run(
        ["pgrep", "-P", str(server.proc.pid), "-f", "profilehook worker --report-to-parent"],
        capture_output=True,
        text=True,
    )
    return [int(pid) for pid in out.stdout.split()]


def send(server: ServerProcess, key: str, contact_id: str, **properties: object) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/properties",
        json={
            "contact_id": contact_id,
            "event_name": "test",
            "timestamp": 1_700_000_000,
            "user_properties": properties,
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202, response.text


def profile(server: ServerProcess, key: str, contact_id: str) -> dict[str, object] | None:
    response = httpx.get(
        f"{server.base_url}/v1/contacts/{contact_id}", headers={"Authorization": f"Bearer {key}"}
    )
    return response.json()["properties"] if response.status_code == 200 else None


def metric(server: ServerProcess, line_start: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rpartition(" ")[2])
    return 0.0


def test_serve_applies_in_one_child_process_at_a_lower_priority(server: ServerProcess) -> None:
    key = create_key(server.data_dir)["key"]

    send(server, key, "c1", plan="pro")

    assert wait_until(lambda: profile(server, key, "c1")) == {"plan": "pro"}
    (child,) = applier_pids(server)
    assert os.getpriority(os.PRIO_PROCESS, child) > os.getpriority(os.PRIO_PROCESS, 0)


def test_the_childs_lower_priority_counts_against_the_server(server: ServerProcess) -> None:
    """Niceness orders threads only within one scheduler autogroup, which on Linux is a session:
    in a session of its own, the child at nice 19 got as much CPU as the whole server. It is in
    the server's session, but in a process group of its own (a Ctrl-C goes to the server)."""
    key = create_key(server.data_dir)["key"]
    send(server, key, "s1", plan="pro")
    assert wait_until(lambda: profile(server, key, "s1")) == {"plan": "pro"}
    assert server.proc is not None
    (child,) = applier_pids(server)

    assert os.getsid(child) == os.getsid(server.proc.pid)
    assert os.getpgid(child) == child != os.getpgid(server.proc.pid)
    # A kernel built with scheduler autogroups shows each process's group; one that has them
    # switched off (noautogroup, or sched_autogroup_enabled=0) shows an empty file.
    groups = [_autogroup(pid) for pid in (child, server.proc.pid)]
    if all(groups):
        assert groups[0] == groups[1]


def _autogroup(pid: int) -> str:
    try:
        return "".join(Path(f"/proc/{pid}/autogroup").read_text().split()[:1])
    except FileNotFoundError:
        return ""


def test_the_servers_metrics_count_what_the_child_applied(server: ServerProcess) -> None:
    key = create_key(server.data_dir)["key"]

    for i in range(5):
        send(server, key, f"m{i}", n=i)

    applied = 'profilehook_events_total{outcome="applied",source="api"}'
    wait_until(lambda: metric(server, applied) == 5)
    assert metric(server, "profilehook_apply_lag_seconds_count") == 5
    assert metric(server, "profilehook_apply_batches_total") >= 1


def test_a_killed_applier_process_is_replaced_and_nothing_is_lost(server: ServerProcess) -> None:
    key = create_key(server.data_dir)["key"]
    (first,) = wait_until(lambda: applier_pids(server))

    os.kill(first, signal.SIGKILL)
    for i in range(20):
        send(server, key, f"k{i}", n=i)

    (second,) = wait_until(lambda: [p for p in applier_pids(server) if p != first], 15)
    assert second != first
    for i in range(20):
        assert wait_until(lambda i=i: profile(server, key, f"k{i}"), 15) == {"n": i}


def test_the_child_exits_when_the_server_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    (child,) = wait_until(lambda: applier_pids(server))

    server.kill(signal.SIGKILL)

    wait_until(lambda: not alive(child), 10)


def test_a_stopped_server_stops_its_child_after_it_acknowledged_everything(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data").start()
    key = create_key(server.data_dir)["key"]
    (child,) = wait_until(lambda: applier_pids(server))
    for i in range(10):
        send(server, key, f"s{i}", n=i)
    wait_until(lambda: profile(server, key, "s9"))

    started = time.monotonic()
    server.stop()

    assert not alive(child)
    assert time.monotonic() - started < 10
    # Nothing left to apply: a server started on the same data finds an empty log.
    again = ServerProcess(tmp_path / "data").start()
    try:
        assert metric(again, "profilehook_queue_depth") == 0
    finally:
        again.stop()


def test_a_report_adds_only_what_grew_since_the_last_one() -> None:
    child, server = Metrics(), Metrics()
    child.events.labels("api", "applied").inc(3)
    child.apply_lag.observe_many([0.01, 0.2, 3.0])
    first = child.applier_totals()
    child.events.labels("api", "applied").inc(2)
    child.events.labels("copernica", "duplicate").inc(1)
    child.superseded.inc(4)
    second = child.applier_totals()

    server.add_applier_progress(None, first)
    server.add_applier_progress(first, second)

    assert server.applier_totals() == second


async def test_a_child_that_cannot_be_started_is_tried_again_not_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # fork/exec fails now and then (EAGAIN under a process limit, ENOMEM): the supervisor must
    # keep trying, not end silently and leave the server accepting events nobody applies.
    monkeypatch.setattr(supervision, "RESTART_BACKOFF_S", (0.001,))
    supervisor = applier_process.ApplierProcess(Settings(), Metrics(), _Log())
    stop = asyncio.Event()
    attempts = 0

    async def spawn() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            stop.set()
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(supervisor, "_spawn", spawn)

    await asyncio.wait_for(supervisor.run(stop), 5)

    assert attempts == 3


def test_every_thread_of_the_child_runs_at_the_lower_priority(server: ServerProcess) -> None:
    key = create_key(server.data_dir)["key"]
    send(server, key, "t1", n=1)
    assert wait_until(lambda: profile(server, key, "t1")) == {"n": 1}
    (child,) = applier_pids(server)

    tasks = [int(tid) for tid in os.listdir(f"/proc/{child}/task")]

    assert len(tasks) > 1  # the event loop, and the SQLite writer and reader threads
    server_nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert all(os.getpriority(os.PRIO_PROCESS, tid) > server_nice for tid in tasks)


class _Log:
    """The server's log, as the supervisor sees it: where handed-over acknowledgements go."""

    def __init__(self, failures: int = 0) -> None:
        self.written: list[int] = []
        self.failures = failures

    def hand_acknowledgements_to(self, record: Callable[[int], None]) -> None:
        raise AssertionError("the server's side only writes what the child hands over")

    async def acknowledge_upto(self, position: int) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("the log is busy")
        self.written.append(position)


async def _lines(lines: list[bytes]) -> AsyncIterator[bytes]:
    for line in lines:
        yield line


def _report(acknowledged: int | None, applied: float = 0) -> bytes:
    child = Metrics()
    child.events.labels("api", "applied").inc(applied)
    return msgspec.json.encode(applier_process.Report(child.applier_totals(), acknowledged)) + b"\n"


async def test_the_server_writes_each_acknowledgement_its_child_hands_over_once() -> None:
    log = _Log(failures=1)
    metrics = Metrics()
    supervisor = applier_process.ApplierProcess(Settings(), metrics, log)  # type: ignore[arg-type]
    reports = [
        _report(None),
        _report(5, 2),  # the write fails: the next report carries 5 again, and it is retried
        _report(5, 2),
        b"half a line\n",
        _report(9, 4),
        _report(9, 4),
        _report(12, 7),
    ]

    await supervisor._relay(SimpleNamespace(stdout=_lines(reports)))  # type: ignore[arg-type]

    assert log.written == [5, 9, 12]
    assert metrics.applier_totals().events == {"api": {"applied": 7}}


def test_the_child_hands_its_acknowledgements_to_the_server_to_write(
    server: ServerProcess,
) -> None:
    # At nice 19 the child could be preempted holding the log's write lock, which every commit
    # of the server needs: applying, it only reads the log; the server writes its acknowledgements.
    # With the server stopped (SIGSTOP), the child applies what is pending and the log's cursor
    # stays where it was; once the server runs again, it moves past everything.
    assert server.proc is not None
    key = create_key(server.data_dir)["key"]
    log, store = server.data_dir / QUEUE_FILE, server.data_dir / STORE_FILE
    batch = {
        "events": [
            {"contact_id": f"a{i}", "event_name": "t", "timestamp": 1, "user_properties": {"n": i}}
            for i in range(1_000)
        ]
    }
    sent = 0
    while True:  # until the server is stopped with some of what it took not yet acknowledged
        response = httpx.post(
            f"{server.base_url}/v1/properties/batch",
            json=batch,
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 202
        sent += 1_000
        server.proc.send_signal(signal.SIGSTOP)
        cursor = _read(log, "SELECT seq FROM cursors")
        if _read(log, "SELECT max(seq) FROM batches") > cursor >> INDEX_BITS:
            break
        server.proc.send_signal(signal.SIGCONT)
    try:
        wait_until(lambda: _read(store, "SELECT count(*) FROM events") == sent, 20)
        time.sleep(4 * applier_process.REPORT_INTERVAL_S)  # it has handed over its acks by now
        assert _read(log, "SELECT seq FROM cursors") == cursor
    finally:
        server.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: metric(server, "profilehook_queue_depth") == 0, 10)
    assert _read(log, "SELECT seq FROM cursors") > cursor


def _read(path: Path, sql: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return int(conn.execute(sql).fetchone()[0] or 0)


class _Child:
    """A child process, as the supervisor sees it, that runs until it is killed."""

    def __init__(self, stdout: AsyncIterator[bytes]) -> None:
        self.stdout = stdout
        self.stdin = SimpleNamespace(close=lambda: None)
        self.killed = False
        self.code = 1  # its own exit code, unless it is killed
        self._gone = asyncio.Event()

    async def wait(self) -> int:
        await self._gone.wait()
        return self.code

    def kill(self) -> None:
        self.killed, self.code = True, -signal.SIGKILL
        self._gone.set()


async def _unreadable_after_one_report() -> AsyncIterator[bytes]:
    yield _report(None, 1)
    raise ValueError("Separator is not found, and chunk exceed the limit")  # a line too long


async def test_a_child_whose_reports_cannot_be_read_is_killed_and_started_again() -> None:
    # Unread, its reports would fill the pipe and block it: it would apply nothing, silently.
    metrics = Metrics()
    supervisor = applier_process.ApplierProcess(Settings(), metrics, _Log())  # type: ignore[arg-type]
    child = _Child(_unreadable_after_one_report())

    code = await asyncio.wait_for(supervisor._supervise(child, asyncio.Event()), 5)  # type: ignore[arg-type]

    assert child.killed and code == -signal.SIGKILL  # run() then starts a new one
    assert metrics.applier_totals().events == {"api": {"applied": 1}}


async def _one_report_then_the_end() -> AsyncIterator[bytes]:
    yield _report(None, 1)


async def test_a_child_whose_output_ends_is_waited_for_not_killed() -> None:
    # Its output ends because it is exiting (a crash, a start-up error): its own exit code counts.
    supervisor = applier_process.ApplierProcess(Settings(), Metrics(), _Log())  # type: ignore[arg-type]
    child = _Child(_one_report_then_the_end())
    child.stdin = SimpleNamespace(close=child._gone.set)  # it exits when told to, or by itself

    code = await asyncio.wait_for(supervisor._supervise(child, asyncio.Event()), 5)  # type: ignore[arg-type]

    assert (child.killed, code) == (False, 1)


def test_the_servers_commits_reach_the_child_through_a_pipe_of_its_own(
    server: ServerProcess,
) -> None:
    """The child is told which descriptor is its wake-up pipe (the read end; the server keeps
    the write end): the server's appends wake it instead of its next look at the log."""
    (child,) = applier_pids(server)
    args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
    fd = int(args[args.index(b"--wake-fd") + 1])
    assert os.readlink(f"/proc/{child}/fd/{fd}").startswith("pipe:")


async def test_an_append_by_another_process_wakes_a_waiting_fetch_through_the_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a consumer waiting for events with no look at the log due for a minute, when
    another writer (its own connection and queue, as the server's) commits an append, then
    the consumer has it at once; once the pipe's writer is gone it falls back to looking."""
    from profilehook.queues import sqlite as sqlite_queue
    from tests.support import event

    monkeypatch.setattr(sqlite_queue, "POLL_INTERVAL_S", 60.0)
    path = tmp_path / "log.sqlite3"
    server, child = sqlite_queue.SqliteQueue(path), sqlite_queue.SqliteQueue(path)
    await server.open()
    await child.open()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    server.tell_appends_to(write_fd)
    child.woken_by(read_fd)
    try:
        fetching = asyncio.create_task(child.fetch(10, 50))
        await asyncio.sleep(0.1)  # waiting now
        await server.publish([event(event_id="woken", a=1)])
        (delivery,) = await asyncio.wait_for(fetching, 10)
        assert delivery.event.event_id == "woken"

        server.tell_appends_to(None)
        os.close(write_fd)
        monkeypatch.setattr(sqlite_queue, "POLL_INTERVAL_S", 0.01)
        await server.publish([event(event_id="polled", a=2)])
        (delivery,) = await asyncio.wait_for(child.fetch(10, 5), 10)
        assert delivery.event.event_id == "polled"
        assert await asyncio.wait_for(child.fetch(10, 0.2), 10) == []  # the pipe's end: no spin
    finally:
        os.close(read_fd)
        await child.close()
        await server.close()
