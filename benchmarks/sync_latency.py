"""How long this machine's disk takes to sync, by the pause before the sync (issue 23, C).

    .venv/bin/python benchmarks/sync_latency.py [--dir /tmp] [--seconds 3]

Two measurements on a scratch file in ``--dir`` (the filesystem the data directory is on):

1. one thread: ``pwrite`` 12 KiB (a commit of C's size), ``fdatasync``, then pause, for each
   pause (nothing, busy CPU for 50 µs to 0.8 ms, asleep for 1 and 7 ms): p50/p90/p99 of the
   sync. A disk that takes up a flush slowly after a pause shows it here.
2. two processes: one ``pwrite``s a 64 KiB frame (the log's page) every 30 or 300 µs, the other
   ``fdatasync``s the file back to back, or with 0.3 ms between syncs: what a syncer that never
   waits would get beside the writer.

C's commit (the log's writer) syncs about once a millisecond: benchmarks/README.md, session 21.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

FILE_BYTES = 4 << 20


def _pause(busy_s: float, asleep_s: float) -> None:
    if asleep_s:
        time.sleep(asleep_s)
    started = time.perf_counter()
    while time.perf_counter() - started < busy_s:
        pass


def _percentiles(seconds: list[float]) -> str:
    seconds.sort()
    n = len(seconds)
    p50, p90, p99 = (seconds[n * q // 100] * 1e6 for q in (50, 90, 99))
    return f"n {n:>7,}  p50 {p50:6.0f} µs  p90 {p90:6.0f} µs  p99 {p99:6.0f} µs"


def _scratch(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"x" * FILE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)


def one_thread(path: Path, seconds: float, busy_s: float, asleep_s: float) -> str:
    fd = os.open(path, os.O_WRONLY)
    taken: list[float] = []
    try:
        deadline, offset = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            os.pwrite(fd, b"y" * 12_288, offset)
            offset = (offset + 12_288) % FILE_BYTES
            started = time.perf_counter()
            os.fdatasync(fd)
            taken.append(time.perf_counter() - started)
            _pause(busy_s, asleep_s)
    finally:
        os.close(fd)
    return _percentiles(taken)


def _writer(path: Path, deadline: float, every_s: float) -> None:
    fd = os.open(path, os.O_WRONLY)
    offset = 0
    try:
        while time.time() < deadline:
            os.pwrite(fd, b"z" * 65_560, offset)  # a WAL frame: its header and a 64 KiB page
            offset = (offset + 65_560) % (FILE_BYTES - 65_560)
            _pause(every_s, 0.0)
    finally:
        os.close(fd)


def _syncer(path: Path, deadline: float, gap_s: float, results: multiprocessing.Queue[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    taken: list[float] = []
    try:
        while time.time() < deadline:
            started = time.perf_counter()
            os.fdatasync(fd)
            taken.append(time.perf_counter() - started)
            _pause(gap_s, 0.0)
    finally:
        os.close(fd)
    results.put(_percentiles(taken))


def two_processes(path: Path, seconds: float, every_s: float, gap_s: float) -> str:
    results: multiprocessing.Queue[str] = multiprocessing.Queue()
    deadline = time.time() + seconds
    writer = multiprocessing.Process(target=_writer, args=(path, deadline, every_s))
    syncer = multiprocessing.Process(target=_syncer, args=(path, deadline, gap_s, results))
    writer.start()
    syncer.start()
    found: str = results.get()
    writer.join()
    syncer.join()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--seconds", type=float, default=3.0, help="for each line")
    args = parser.parse_args()
    path = args.dir / f"profilehook-sync-latency-{os.getpid()}"
    _scratch(path)
    try:
        print("one thread: pwrite 12 KiB, fdatasync, then a pause of")
        pauses = [("nothing", 0.0, 0.0)]
        pauses += [(f"{us} µs busy", us / 1e6, 0.0) for us in (50, 100, 200, 400, 800)]
        pauses += [("1 ms asleep", 0.0, 0.001), ("7 ms asleep", 0.0, 0.007)]
        for name, busy_s, asleep_s in pauses:
            print(f"  {name:<14}{one_thread(path, args.seconds, busy_s, asleep_s)}")
        print("two processes: a writer of 64 KiB frames, a syncer")
        for every_us in (30, 300):
            for gap_us in (0, 300):
                found = two_processes(path, args.seconds, every_us / 1e6, gap_us / 1e6)
                print(f"  writer every {every_us:>3} µs, syncer pausing {gap_us:>3} µs: {found}")
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
