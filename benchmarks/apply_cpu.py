"""SQLite's apply on G's workloads per CPU-second of this process (less swayed than wall
clock by other work on a shared machine): all sets, the mix of operations, the mix with 5 %
late (benchmarks/run.py ``_operation_events``), each on a fresh store, with the syncs and the
garbage collection the applier process has (applier_heap.py). Prints one JSON line. To compare
two checkouts, alternate:

    for i in 1 2 3; do for src in OTHER/src src; do
        PYTHONPATH=$src .venv/bin/python benchmarks/apply_cpu.py --batches 10; done; done
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from applier_heap import as_the_applier
from run import _operation_events

import profilehook
from profilehook.stores.sqlite import SqliteStore


async def cpu_per_event(path: Path, chunks: list[list[Any]]) -> float:
    """CPU seconds of this process per event for applying ``chunks`` to a fresh SQLite store,
    synced every 5 batches as the applier does."""
    store = SqliteStore(path)
    await store.open()
    cpu0 = time.process_time()
    for i, chunk in enumerate(chunks, start=1):
        await store.apply(chunk)
        if i % 5 == 0:
            await store.sync()
    await store.sync()
    cpu = time.process_time() - cpu0
    await store.close()
    return cpu / sum(len(c) for c in chunks)


async def main(batches: int) -> None:
    result: dict[str, object] = {"code": str(Path(profilehook.__file__).parent)}
    with tempfile.TemporaryDirectory() as tmp:
        for workload in ("set", "mixed", "mixed_late"):
            events = _operation_events(batches * 2_000, workload)
            chunks = [events[i : i + 2_000] for i in range(0, len(events), 2_000)]
            cpu = await cpu_per_event(Path(tmp) / f"{workload}.sqlite3", chunks)
            result[f"{workload}_events_per_cpu_s"] = round(1 / cpu)
    for workload in ("mixed", "mixed_late"):
        ratio = result[f"{workload}_events_per_cpu_s"] / result["set_events_per_cpu_s"]  # type: ignore[operator]
        result[f"{workload}_ratio"] = round(ratio, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=10)
    with as_the_applier():
        asyncio.run(main(parser.parse_args().batches))
