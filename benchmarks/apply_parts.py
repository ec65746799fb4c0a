"""Where SQLite's apply spends its time on G's workload, without a profiler (issue 23).

    .venv/bin/python benchmarks/apply_parts.py [set|mixed|mixed_late|g] [--batches N] [--rounds N]

Two views of the same work (benchmarks/run.py ``_operation_events``: 2,000-event batches of 5
properties over 20,000 contacts, syncs as the applier makes them; ``g``: G's own batches,
run.py ``g_batches``), per CPU-second of this
process, on fresh stores:

- each part of the apply switched off in turn (in this process only, with ``mock``), rounds
  alternated: the change feed's records (``ChangeLog``), the searchable copy of the values
  (``sqlite_values``), the segments' check (no segment is defined: what is left is the
  bookkeeping), the event rows (the history). The CPU each saves is its price;
- the SQL statements' own CPU time per event (each ``execute``/``executemany`` timed on the
  writer thread), the rest being Python.

cProfile's view (by function, but with its overhead on every Python call) is profile_g.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from applier_heap import as_the_applier
from apply_cpu import cpu_per_event
from run import _operation_events, g_batches

from profilehook import sqlite_db
from profilehook.stores import sqlite as sqlite_store
from profilehook.stores import sqlite_segments, sqlite_values

BATCH = 2_000


class _NoChanges:
    def __init__(self, batch: Any):
        pass

    def add(self, *args: Any) -> None:
        pass

    def note_segments(self, moves: Any) -> None:
        pass

    def records(self) -> list[Any]:
        return []

    def __len__(self) -> int:
        return 0


PARTS: dict[str, list[Any]] = {
    "all": [],
    "without the change records": [mock.patch.object(sqlite_store, "ChangeLog", _NoChanges)],
    "without the values copy": [
        mock.patch.object(sqlite_values, "copy_rows", lambda *a: None),
        mock.patch.object(sqlite_values, "write_rows", lambda *a: None),
    ],
    "without the segments' check": [
        mock.patch.object(sqlite_segments, "keep", lambda *a: {}),
        mock.patch.object(sqlite_store, "touched_by", lambda *a: None),
    ],
    "without the event rows": [mock.patch.object(sqlite_store, "insert_rows", lambda *a: None)],
}


class _Timed:
    """A connection whose statements' CPU time (of the calling thread) is counted."""

    def __init__(self, conn: sqlite3.Connection, spent: collections.Counter[str]):
        self._conn = conn
        self._spent = spent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        t0 = time.thread_time()
        cursor = self._conn.execute(sql, *args)
        rows = cursor.fetchall() if cursor.description is not None else None
        self._spent[sql[:70]] += time.thread_time() - t0
        return cursor if rows is None else _Rows(rows)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        t0 = time.thread_time()
        cursor = self._conn.executemany(sql, rows)
        self._spent[sql[:70]] += time.thread_time() - t0
        return cursor


class _Rows(list[Any]):
    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)

    def fetchmany(self, size: int) -> list[Any]:
        taken = self[:size]
        del self[:size]
        return taken


@contextlib.contextmanager
def _timing(spent: collections.Counter[str]) -> Iterator[None]:
    connect = sqlite_db.connect
    with mock.patch.object(sqlite_db, "connect", lambda *a, **k: _Timed(connect(*a, **k), spent)):
        yield


async def main(args: argparse.Namespace) -> None:
    if args.workload == "g":  # G's own batches (random times and ids)
        events = [e for batch in g_batches(args.batches) for e in batch]
    else:
        events = _operation_events(args.batches * BATCH, args.workload)
    chunks = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    print(f"{args.workload}, {len(events):,} events; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        found: dict[str, list[float]] = {name: [] for name in PARTS}
        for round_ in range(args.rounds):
            for name, patches in PARTS.items():
                with contextlib.ExitStack() as stack:
                    for patch in patches:
                        stack.enter_context(patch)
                    path = Path(tmp) / f"{len(found[name])}-{round_}-{hash(name)}.sqlite3"
                    found[name].append(await cpu_per_event(path, chunks))
        whole = sorted(found["all"])[len(found["all"]) // 2]
        for name, cpus in found.items():
            cpu = sorted(cpus)[len(cpus) // 2]
            saved = "" if name == "all" else f"  (saves {(whole - cpu) / whole:.0%})"
            print(f"  {name:32} {cpu * 1e6:6.1f} us of CPU per event (median){saved}")
        spent: collections.Counter[str] = collections.Counter()
        with _timing(spent):
            cpu = await cpu_per_event(Path(tmp) / "timed.sqlite3", chunks)
        sql = sum(spent.values()) / len(events)
        print(f"statements timed: {cpu * 1e6:.1f} us per event, of which SQL {sql * 1e6:.1f} us:")
        for statement, seconds in spent.most_common(10):
            print(f"  {seconds / len(events) * 1e6:6.1f} us  {statement}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", nargs="?", default="set")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    with as_the_applier():
        asyncio.run(main(parser.parse_args()))
