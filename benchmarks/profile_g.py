"""Where SQLite's apply spends its time on G's workloads (issue 18/23): cProfile, top functions.

    .venv/bin/python benchmarks/profile_g.py [set|mixed|mixed_late|g] [--batches N] [--top N]

Applies G's events (benchmarks/run.py ``_operation_events``: 2,000-event batches of 5 properties
over 20,000 contacts) to a fresh SQLite store in process, under cProfile, on the store's writer
thread, and prints the functions by their own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from applier_heap import as_the_applier
from run import _operation_events, g_batches

from profilehook.stores.sqlite import SqliteStore


async def main(workload: str, batches: int, top: int) -> None:
    if workload == "g":  # G's own batches (random times and ids)
        events = [e for batch in g_batches(batches) for e in batch]
    else:
        events = _operation_events(batches * 2_000, workload)
    chunks = [events[i : i + 2_000] for i in range(0, len(events), 2_000)]
    profile = cProfile.Profile()
    threading.setprofile(lambda *_: None)  # (cProfile follows one thread: the writer's)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "g.sqlite3")
        await store.open()
        t0 = time.perf_counter()
        for i, chunk in enumerate(chunks, start=1):
            await store.db.write(lambda conn, chunk=chunk: profile.runcall(_apply, conn, chunk))
            if i % 5 == 0:
                await store.sync()
        await store.sync()
        elapsed = time.perf_counter() - t0
        await store.close()
    print(f"{workload}: {len(events) / elapsed:,.0f} events/s under the profiler")
    stats = pstats.Stats(profile).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def _apply(conn, chunk):  # type: ignore[no-untyped-def]
    from profilehook.stores.sqlite import _apply as apply

    return apply(conn, chunk)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", nargs="?", default="mixed")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    with as_the_applier():
        asyncio.run(main(args.workload, args.batches, args.top))
