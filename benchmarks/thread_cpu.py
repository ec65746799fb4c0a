"""Each thread's CPU, and its time waiting for a CPU, under D's load or C's (issue 23).

    .venv/bin/python benchmarks/thread_cpu.py [--batch 1000 | --single] [--no-applier]
        [--duration 8] [--idle-applier | --paused-applier [--burner DUTY,PERIOD_MS]]

Starts ``profilehook serve`` on a fresh data directory (its applier child with it, unless
``--no-applier``), drives D's batch body with wrk (16 connections, as run.py), or with
``--single`` C's one event on ``POST /v1/properties`` (64 connections, as run.py), and prints for
every thread of the server and of its children: CPU % of one core (user, system), CPU µs a
request, and the share of the time it was ready to run but waited for a CPU (the scheduler's
run-queue wait, /proc/<pid>/task/<tid>/schedstat), with its niceness and policy; then wrk's
CPU a request. ``--idle-applier`` puts every thread of the children at SCHED_IDLE from outside
(what ``applier_process.lower_priority`` now does itself: for the code before it).
``--paused-applier`` stops the children (SIGSTOP) for the load and lets them go on after: the
server as it is, but nothing applied meanwhile. With ``--burner 0.27,5``, a process at nice 19
that only spins for 27 % of every 5 ms runs beside it instead: CPU taken at the applier's
priority and rate, doing no work of the server's (what the applier's CPU alone costs C).
Load and server share the machine's cores; read the waits, not the rates.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CONNECTIONS, EVENT, embedded, ensure_wrk, lua, running, serve

_TICKS = os.sysconf("SC_CLK_TCK")
_POLICIES = {0: "other", 3: "batch", 5: "idle"}


ThreadCpu = dict[str, tuple[float, float, float]]  # _threads' answer


def _threads(pid: int) -> ThreadCpu:
    """Per thread of ``pid``, named ``pid:tid:name:nice:policy``: user and system CPU seconds,
    and seconds spent waiting on a run queue."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            waited = int((task / "schedstat").read_text().split()[1]) / 1e9
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        policy = _POLICIES.get(int(fields[38]), fields[38])
        key = f"{pid}:{task.name}:{name}:nice {fields[16]}:{policy}"
        found[key] = (int(fields[11]) / _TICKS, int(fields[12]) / _TICKS, waited)
    return found


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if parent == pid:
            found += _descendants(int(proc.name))
    return found


def _spin(duty: float, period_ms: float) -> None:
    """Busy for ``duty`` of every ``period_ms``, asleep the rest, at nice 19, until killed."""
    os.nice(19)
    period_s = period_ms / 1000
    while True:
        until = time.perf_counter() + duty * period_s
        while time.perf_counter() < until:
            pass
        time.sleep((1 - duty) * period_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1000, help="events a request")
    parser.add_argument("--duration", type=int, default=8, help="seconds of load")
    parser.add_argument("--single", action="store_true", help="C's load instead of D's")
    parser.add_argument("--no-applier", action="store_true")
    parser.add_argument("--idle-applier", action="store_true")
    parser.add_argument("--paused-applier", action="store_true")
    parser.add_argument("--burner", help="DUTY,PERIOD_MS: a nice 19 spinner (--paused-applier)")
    parser.add_argument("--spin", help=argparse.SUPPRESS)  # the burner's own process
    args = parser.parse_args()
    if args.spin:
        _spin(*(float(part) for part in args.spin.split(",")))
    if args.burner and not args.paused_applier:
        parser.error("--burner stands in for the applier: give --paused-applier with it")
    tmp = Path(tempfile.mkdtemp(prefix="thread-cpu-"))
    env, key = embedded(tmp, "d")
    if args.single:
        args.batch, body, path, connections = 1, EVENT, "/v1/properties", CONNECTIONS
    else:
        body = {"events": [{**EVENT, "contact_id": f"user{i}"} for i in range(args.batch)]}
        path, connections = "/v1/properties/batch", 16
    script = lua(tmp / "load.lua", body, key)
    flags = ("--no-applier",) if args.no_applier else ()
    with running(serve("profilehook", env, *flags)) as server:
        assert server.proc is not None
        time.sleep(1)  # the applier child started
        pids = _descendants(server.proc.pid)
        if args.idle_applier:
            for pid in pids[1:]:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    os.sched_setscheduler(int(task.name), os.SCHED_IDLE, os.sched_param(0))
        paused = _paused(pids[1:], args.burner) if args.paused_applier else contextlib.nullcontext()
        with paused as burner:
            if burner is not None:
                pids.append(burner)
            found = _measure(pids, server.url + path, script, connections, args.duration)
    _report(*found, args.batch)


def _measure(
    pids: list[int], url: str, script: Path, connections: int, duration_s: int
) -> tuple[float, float, ThreadCpu, ThreadCpu, float]:
    """wrk's req/s, its CPU seconds a second, each thread's CPU before and after, and the
    seconds between."""

    def every_thread() -> ThreadCpu:
        return {k: v for pid in pids for k, v in _threads(pid).items()}

    before, t0 = every_thread(), time.monotonic()
    load = subprocess.Popen(
        [ensure_wrk(), "-t2", f"-c{connections}", f"-d{duration_s}s", "-s", str(script), url],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    wrk0, w0 = _threads(load.pid), time.monotonic()
    time.sleep(duration_s - 1.5)
    wrk1, w1 = _threads(load.pid), time.monotonic()
    out = load.communicate()[0]
    after, t1 = every_thread(), time.monotonic()
    rps = float(out.split("Requests/sec:")[1].split()[0])
    wrk_cpu = sum(sum(wrk1[k][:2]) - sum(wrk0[k][:2]) for k in wrk1 if k in wrk0) / (w1 - w0)
    return rps, wrk_cpu, before, after, t1 - t0


@contextlib.contextmanager
def _paused(children: list[int], burner: str | None) -> Iterator[int | None]:
    """The children stopped (SIGSTOP) while the block runs, and with ``burner`` (DUTY,PERIOD_MS)
    a spinning process at nice 19 beside them; yields its pid. The children go on afterwards,
    whatever happened in the block (stopped, they would not see the server close their pipe)."""
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    spinner = None
    try:
        if burner:
            spinner = subprocess.Popen([sys.executable, __file__, "--spin", burner])
            # A thread's key holds its niceness: counted before the spinner lowers it, it would
            # not be found again after.
            time.sleep(0.5)
        yield None if spinner is None else spinner.pid
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _report(
    rps: float,
    wrk_cpu: float,
    before: ThreadCpu,
    after: ThreadCpu,
    elapsed: float,
    batch: int,
) -> None:
    print(f"{rps:,.0f} requests/s, {rps * batch:,.0f} events/s ({batch} a request)")
    print(
        "thread (pid:tid:name:nice:policy)  CPU %  (user, system)  µs a request  waiting for a CPU %"
    )
    for name in sorted(after):
        if name not in before:
            continue
        user, system, waited = (a - b for a, b in zip(after[name], before[name], strict=True))
        if user + system < 0.01:
            continue
        print(
            f"{name:45s} {100 * (user + system) / elapsed:5.1f}"
            f"  ({100 * user / elapsed:4.1f}, {100 * system / elapsed:4.1f})"
            f"  {1e6 * (user + system) / (rps * elapsed):8.1f}"
            f"  {100 * waited / elapsed:5.1f}"
        )
    print(f"wrk: {100 * wrk_cpu:.1f} % CPU, {1e6 * wrk_cpu / rps:.1f} µs a request")


if __name__ == "__main__":
    main()
