"""SQLite's apply on G's workloads per CPU-second of this process (less swayed than wall
clock by other work on a shared machine), with the syncs and the garbage collection the applier
process has (applier_heap.py). Prints JSON lines.

Default: all sets, the mix of operations, the mix with 5 % late (benchmarks/run.py
``_operation_events``), each on a fresh store. ``--only-g``: G's own batches
(run.py ``g_batches``) against G's ceiling, the raw ``executemany`` upsert writing as many rows
as the apply wrote (ceilings.py), store and ceiling alternated in ``--rounds`` rounds; each
round's ratio per CPU-second and the median (issue 23's target: >= 0.5), and the ratio against
one row per property update (the former ceiling) beside it. To compare two checkouts, alternate:

    for i in 1 2 3; do for src in OTHER/src src; do
        PYTHONPATH=$src .venv/bin/python benchmarks/apply_cpu.py --batches 10; done; done
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from applier_heap import as_the_applier
from ceilings import sqlite_upsert_ceiling
from run import _g_rows_written, _operation_events, g_batches

import profilehook
from profilehook.stores.sqlite import SqliteStore


async def cpu_per_event(
    path: Path, chunks: list[list[Any]], rows: list[int] | None = None
) -> float:
    """CPU seconds of this process per event for applying ``chunks`` to a fresh SQLite store,
    synced every 5 batches as the applier does; the rows it wrote appended to ``rows``."""
    store = SqliteStore(path)
    await store.open()
    written = await _g_rows_written(store, "sqlite", "")
    cpu0 = time.process_time()
    for i, chunk in enumerate(chunks, start=1):
        await store.apply(chunk)
        if i % 5 == 0:
            await store.sync()
    await store.sync()
    cpu = time.process_time() - cpu0
    if rows is not None:
        rows.append(await _g_rows_written(store, "sqlite", "") - written)
    await store.close()
    return cpu / sum(len(c) for c in chunks)


async def workloads(batches: int) -> None:
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


async def against_the_ceiling(batches: int, rounds: int) -> None:
    chunks = g_batches(batches)
    updates = sum(len(e.properties) for chunk in chunks for e in chunk)
    events = sum(len(chunk) for chunk in chunks)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            written: list[int] = []
            cpu = await cpu_per_event(Path(tmp) / f"g{round_}.sqlite3", chunks, written) * events
            rows = written[0]
            _, ceiling = sqlite_upsert_ceiling(
                Path(tmp) / f"ceiling{round_}.sqlite3", chunks, round(rows / len(chunks))
            )
            _, per_update = sqlite_upsert_ceiling(Path(tmp) / f"updates{round_}.sqlite3", chunks)
            ratios.append(rows / cpu / ceiling)
            line = {
                "round": round_,
                "store_rows_per_cpu_s": round(rows / cpu),
                "ceiling_rows_per_cpu_s": round(ceiling),
                "rows_per_event": round(rows / events, 2),
                "store_us_per_event": round(cpu / events * 1e6, 1),
                "ceiling_us_per_event": round(rows / ceiling / events * 1e6, 1),
                "ratio": round(ratios[-1], 3),
                "ratio_one_row_per_update": round(updates / cpu / per_update, 3),
                "loadavg": os.getloadavg()[0],
            }
            print(json.dumps(line), flush=True)
    code = str(Path(profilehook.__file__).parent)
    print(json.dumps({"code": code, "ratio_median": round(statistics.median(ratios), 3)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--only-g", action="store_true", help="G against its ceiling, per CPU-s")
    parser.add_argument("--rounds", type=int, default=3, help="with --only-g")
    args = parser.parse_args()
    with as_the_applier():
        if args.only_g:
            asyncio.run(against_the_ceiling(args.batches, args.rounds))
        else:
            asyncio.run(workloads(args.batches))
