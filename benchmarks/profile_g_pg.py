"""Where PostgreSQL's apply spends G's wall time (issue 23): per statement, client and server.

    .venv/bin/python benchmarks/profile_g_pg.py [--batches N] [--rounds N] [--no-ceiling]

Applies G's own batches (benchmarks/run.py ``g_batches``: 2,000 events of up to 5 properties
over 20,000 contacts, random times and ids) to a fresh PostgreSQL store in process, syncing as
G does, and prints per round: the wall time, this process's CPU (the Python), the CPU of the
store's server backends (/proc/<pid>/stat: the server on this machine), the wall time of each
statement (from its ``execute`` to its last row fetched, keyed by its first words) and the
ceiling of the same batches (benchmarks/ceilings.py), measured right after, with its own
client and server CPU. On two shared cores the wall time is what the client and the server
cost together, plus their waits on each other and on the neighbours. (The apply runs in
pipeline mode: a statement whose answer is not read is timed to its sending only, and the
wait for it shows in the next statement whose answer is read.)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from applier_heap import as_the_applier
from benchmarks import ceilings
from run import POSTGRES_URL, g_batches

from profilehook.stores.postgres import PostgresStore

_TICKS = os.sysconf("SC_CLK_TCK")


def _backend_cpu(application_name: str) -> float:
    """CPU seconds of every backend serving ``application_name`` (0 when /proc is not ours)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
            )
        ]
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def _label(query: Any) -> str:
    text = query if isinstance(query, str) else repr(query)
    words = re.sub(r"\s+", " ", text).strip()
    return words[:60]


async def store_round(
    batches: list[list[Any]], timings: dict[str, list[float]]
) -> dict[str, float]:
    tag = f"gpg_{uuid.uuid4().hex[:6]}"
    schema = f"bench_{tag}"
    store = PostgresStore(f"{POSTGRES_URL}?schema={schema}&application_name={tag}")
    await store.open()
    original = psycopg.AsyncConnection.execute
    original_fetchall = psycopg.AsyncCursor.fetchall
    pending: dict[int, tuple[str, float]] = {}

    async def execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        t0 = time.perf_counter()
        cur = await original(self, query, params, **kw)
        pending[id(cur)] = (_label(query), t0)
        if cur.description is None:  # nothing to fetch: done
            timings[_label(query)].append(time.perf_counter() - t0)
            pending.pop(id(cur), None)
        return cur

    async def fetchall(self: Any) -> Any:
        rows = await original_fetchall(self)
        if (found := pending.pop(id(self), None)) is not None:
            timings[found[0]].append(time.perf_counter() - found[1])
        return rows

    updates = sum(len(e.properties) for b in batches for e in b)
    server0 = _backend_cpu(tag)
    cpu0, t0 = time.process_time(), time.perf_counter()
    with (
        mock.patch.object(psycopg.AsyncConnection, "execute", execute),
        mock.patch.object(psycopg.AsyncCursor, "fetchall", fetchall),
    ):
        for i, batch in enumerate(batches, start=1):
            await store.apply(batch)
            if i % 5 == 0:
                await store.sync()
        await store.sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    server = _backend_cpu(tag) - server0
    await store.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return {
        "updates_per_s": updates / wall,
        "wall_s": wall,
        "client_cpu_s": cpu,
        "server_cpu_s": server,
    }


def ceiling_round(batches: list[list[Any]]) -> dict[str, float]:
    tag = f"gpgc_{uuid.uuid4().hex[:6]}"
    url = f"{POSTGRES_URL}?application_name={tag}"
    cpu0 = time.process_time()
    # the backend's CPU is read while it is alive: sample it from another thread's loop
    import threading

    seen = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            seen[0] = max(seen[0], _backend_cpu(tag))

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    per_s = ceilings.postgres_upsert_ceiling(url, batches)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {
        "updates_per_s": per_s,
        "wall_s": wall,
        "client_cpu_s": time.process_time() - cpu0,
        "server_cpu_s": seen[0],
    }


async def main(args: argparse.Namespace) -> None:
    batches = g_batches(args.batches)
    timings: dict[str, list[float]] = collections.defaultdict(list)
    ratios = []
    for round_no in range(1, args.rounds + 1):
        found = await store_round(batches, timings)
        line = {"round": round_no, "store": {k: round(v, 3) for k, v in found.items()}}
        if not args.no_ceiling:
            ceiling = ceiling_round(batches)
            line["ceiling"] = {k: round(v, 3) for k, v in ceiling.items()}
            ratios.append(found["updates_per_s"] / ceiling["updates_per_s"])
            line["ratio"] = round(ratios[-1], 3)
        print(line, flush=True)
    if ratios:
        print("median ratio", round(statistics.median(ratios), 3))
    calls = args.batches * args.rounds
    print(f"statements, ms per batch (of {calls} batches), by total:")
    for label, values in sorted(timings.items(), key=lambda kv: -sum(kv[1])):
        print(f"{1000 * sum(values) / calls:8.2f}  x{len(values) / calls:4.1f}  {label}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-ceiling", action="store_true")
    with as_the_applier():
        asyncio.run(main(parser.parse_args()))
