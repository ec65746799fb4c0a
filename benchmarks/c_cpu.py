"""Where C's CPU goes, by process and by thread, beside A's: CPU microseconds per request.

    .venv/bin/python benchmarks/c_cpu.py [--duration 8] [--rounds 2] [--connections 64]
    .venv/bin/python benchmarks/c_cpu.py --profile [--duration 10] [--top 45]

Runs A's raw-ASGI ceiling and C (``profilehook serve``, embedded, applier child running; then
with ``--no-applier``) under wrk with C's body, alternated, and reads the CPU each thread of
the server, its applier child and wrk used (/proc/PID/task/TID/stat; wrk's from
``RUSAGE_CHILDREN``), with the server's context switches. Per request, CPU time is what a
shared machine does not distort much (run.py's req/s are wall-clock): the table says which
thread's work C adds over A. With the applier running, C's row also has the applier child's CPU
per event it applied and its batches' size, counted once it has applied everything (at nice 19
it may lag the load). Linux only.

``--profile``: instead, one C run with ``serve`` itself under cProfile (its event loop: uvicorn's
protocol and the handlers, as wrk drives them; the profile is written on SIGUSR1 when wrk is
done), printed by own and by cumulative time. For the threads and the kernel, beside it:
``perf record -F 999 -g -p <serve's pid> -- sleep 8`` then ``perf report --sort pid,dso``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as harness

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s main thread and of its other threads."""
    cpu: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        # Python 3.11 does not name its threads for the OS: the event loop is the main thread.
        name = "main" if tid == str(pid) else "other threads"
        fields = text.rsplit(")", 1)[1].split()
        cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * TICK_S
        # Of it, in the kernel (system calls, GIL hand-overs, the loopback's TCP work).
        cpu[f"{name} in the kernel"] = cpu.get(f"{name} in the kernel", 0.0) + (
            int(fields[12]) * TICK_S
        )
    return cpu


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return found


def _switches(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


def _snapshot(pid: int) -> dict[str, float]:
    cpu = {f"server:{name}": s for name, s in _threads(pid).items()}
    for child in _children(pid):
        for name, s in _threads(child).items():
            cpu[f"child:{name}"] = cpu.get(f"child:{name}", 0.0) + s
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["wrk"] = usage.ru_utime + usage.ru_stime  # grows only when wrk ends (it is waited for)
    cpu["switches"] = float(_switches(pid))
    return cpu


def measure(server: harness.Server, script: Path, args: argparse.Namespace) -> dict[str, Any]:
    assert server.proc is not None
    before = _snapshot(server.proc.pid)
    t0 = time.monotonic()
    result = harness.wrk(server.url + "/v1/properties", script, args.duration, args.connections)
    wall = time.monotonic() - t0
    after = _snapshot(server.proc.pid)
    requests = result["rps"] * args.duration
    every = {
        name: round(1e6 * (after[name] - before.get(name, 0.0)) / requests, 1)
        for name in after
        if name != "switches" and after[name] - before.get(name, 0.0) > 0
    }
    per_request = {k: v for k, v in every.items() if not k.endswith(" in the kernel")}
    # (A has no applier; nor has C with --no-applier, whose events stay in the log)
    applier = _applier_until_drained(server, before) if _children(server.proc.pid) else {}
    return {
        "rps": round(result["rps"]),
        "p50_ms": result["p50_ms"],
        "loadavg": os.getloadavg()[0],
        "wall_s": round(wall, 1),
        "cpu_us_per_request": per_request,
        "server_us": round(sum(v for k, v in per_request.items() if k.startswith("server:")), 1),
        "all_us": round(sum(per_request.values()), 1),
        "of_it_in_the_kernel_us": {
            k.removesuffix(" in the kernel"): v for k, v in every.items() if k not in per_request
        },
        "switches_per_request": round((after["switches"] - before["switches"]) / requests, 2),
        **applier,
    }


def _applier_until_drained(server: harness.Server, before: dict[str, float]) -> dict[str, Any]:
    """The applier child's CPU per event it applied and its batches' size, counted once it has
    applied every event accepted (at most 30 s after the load): at nice 19 it may still be
    applying when wrk ends, and the per-request figure above leaves that part out."""
    assert server.proc is not None
    deadline = time.monotonic() + 30
    while True:
        counts = harness.metric(server.url, "profilehook_")
        applied = sum(v for k, v in counts.items() if 'outcome="applied"' in k and "_total" in k)
        accepted = sum(v for k, v in counts.items() if 'outcome="accepted"' in k and "_total" in k)
        if applied >= accepted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    cpu = _snapshot(server.proc.pid)
    child = sum(
        cpu[k] - before.get(k, 0.0) for k in cpu if k in ("child:main", "child:other threads")
    )
    batches = counts.get("profilehook_apply_batches_total", 0.0)
    return {
        "applier_us_per_event": round(1e6 * child / applied, 1) if applied else None,
        "events_per_batch": round(applied / batches) if batches else None,
    }


def _serve_profiled() -> None:
    """``profilehook serve`` under cProfile, the profile written to argv[2] on SIGUSR1."""
    out = sys.argv[2]
    profile = cProfile.Profile()

    def dump(*_: Any) -> None:
        profile.disable()
        profile.dump_stats(out)
        os._exit(0)

    signal.signal(signal.SIGUSR1, dump)
    from profilehook.cli import main as cli_main

    sys.argv = ["profilehook", *sys.argv[3:]]
    profile.enable()
    cli_main()


def profiled(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="profilehook-c-cpu-") as tmp:
        root = Path(tmp)
        env, key = harness.embedded(root, "c")
        script = harness.lua(root / "c.lua", harness.EVENT, key)
        out = root / "serve.prof"
        argv = [sys.executable, __file__, "--serve-profiled", str(out), "serve", "--port", "{port}"]
        server = harness.Server("profilehook (cProfile)", argv, env)
        with harness.running(server):
            time.sleep(1)
            result = harness.wrk(server.url + "/v1/properties", script, args.duration)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGUSR1)
            server.proc.wait(60)
        print(json.dumps({"rps": result["rps"], "loadavg": os.getloadavg()[0]}))
        stats = pstats.Stats(str(out)).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


def main() -> None:
    if sys.argv[1:2] == ["--serve-profiled"]:
        _serve_profiled()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=harness.CONNECTIONS)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    if args.profile:
        profiled(args)
        return
    with tempfile.TemporaryDirectory(prefix="profilehook-c-cpu-") as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            a_script = harness.lua(root / "a.lua", harness.EVENT, "x")
            ceiling = harness.uvicorn_app(
                "ceiling", "benchmarks.apps.ceiling:app", dict(os.environ)
            )
            with harness.running(ceiling) as server:
                print(
                    json.dumps({"round": r + 1, "scenario": "A", **measure(server, a_script, args)})
                )
            for flags in ((), ("--no-applier",)):
                env, key = harness.embedded(root / f"r{r}{len(flags)}", "c")
                script = harness.lua(root / "c.lua", harness.EVENT, key)
                with harness.running(harness.serve("profilehook", env, *flags)) as server:
                    time.sleep(1)  # the applier child started
                    row = measure(server, script, args)
                print(json.dumps({"round": r + 1, "scenario": "C" + "".join(flags), **row}))


if __name__ == "__main__":
    main()
