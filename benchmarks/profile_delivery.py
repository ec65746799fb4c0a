"""Where the delivery process spends its CPU on a backlog (scenario L's): py-spy, top functions.

    .venv/bin/pip install py-spy   # not a project dependency
    .venv/bin/python benchmarks/profile_delivery.py [--backlog 20000] [--top 30] [--gil]

Applies a backlog of changes (4 per contact, as L's) to a fresh SQLite store with one
destination to benchmarks/receiver.py (a process of its own), then runs ``profilehook deliver``
(the delivery process, as the applier runner starts it) under ``py-spy record`` (every thread:
the loop's and the store's SQLite threads, idle samples left out) until the receiver has every
change, and prints the functions by their own samples and by the samples they are in, with the
CPU seconds the process used per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import _cpu_s, _events, _FastReceiver

from profilehook.destinations import registry
from profilehook.settings import Settings
from profilehook.stores.sqlite import SqliteStore


async def _backlog(path: Path, receiver: _FastReceiver, count: int) -> None:
    store = SqliteStore(path)
    await store.open()
    _, secret = await registry.create(store, "bench", {"url": receiver.url}, allow_private=True)
    receiver.secret(secret)
    for start in range(0, count, 2_000):
        await store.apply(_events(start, min(2_000, count - start)))
    await store.sync()
    await store.close()


def _summary(raw: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")
        ]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inside[frame] += n
    print(f"{total} samples")
    for title, counter in (("own", own), ("inside", inside)):
        print(f"\n-- by {title} samples")
        for name, n in counter.most_common(top):
            print(f"{100 * n / total:5.1f}%  {name}")


def _threads(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) per thread of ``pid``."""
    found = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        found[int(task.name)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return found


def main(backlog: int, top: int, gil: bool) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp, _FastReceiver(Path(tmp) / "r") as receiver:
        path = Path(tmp) / "p.sqlite3"
        asyncio.run(_backlog(path, receiver, backlog))
        settings = Settings(destinations_allow_private=True, store_url=f"sqlite:///{path}")
        raw = Path(tmp) / "raw.txt"
        read_fd, write_fd = os.pipe()
        proc = subprocess.Popen(
            [spy, "record", "--format", "raw", "--threads", "--rate", "250", "-o", str(raw)]
            + (["--gil"] if gil else [])
            + ["--", sys.executable, "-m", "profilehook", "deliver"],
            env={**os.environ, **settings.to_env()},
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
        )
        os.close(read_fd)
        while receiver.counts()["changes"] < 1:
            time.sleep(0.005)
        child = [
            int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        t0, cpu0, threads0 = time.monotonic(), _cpu_s(child[0]), _threads(child[0])
        first = receiver.counts()["changes"]
        while receiver.counts()["changes"] < backlog:
            time.sleep(0.02)
        wall, cpu = time.monotonic() - t0, _cpu_s(child[0]) - cpu0
        threads = _threads(child[0])
        os.close(write_fd)  # the child's order to stop
        proc.wait(60)
        done = backlog - first
        print(
            f"{done} deliveries in {wall:.2f} s ({done / wall:,.0f} /s); {cpu:.2f} CPU s"
            f" ({done / cpu:,.0f} per CPU-second, {1e6 * cpu / done:.0f} us each); load"
            f" {os.getloadavg()[0]:.1f} (py-spy's sampling adds to the CPU)"
        )
        print(
            "CPU s per thread, user + system (the first: the event loop):",
            ", ".join(
                f"{u - threads0.get(t, (0, 0))[0]:.2f} + {s - threads0.get(t, (0, 0))[1]:.2f}"
                for t, (u, s) in sorted(threads.items())
            ),
        )
        _summary(raw, top)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    args = parser.parse_args()
    main(args.backlog, args.top, args.gil)
