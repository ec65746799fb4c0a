"""G against a raw upsert loop of the same rows (issue 23), alternated in one process.

    .venv/bin/python benchmarks/apply_ceiling.py [--stores sqlite,postgres] [--rounds 3]
        [--batches 10] [--workloads set,mixed,mixed_late]

Each round applies G's events (benchmarks/run.py ``_operation_events``: 2,000-event batches of
5 properties over 20,000 contacts) to a fresh store, syncing as the applier does, and writes the
same events' rows with a raw loop: one ``executemany`` upsert per batch of (workspace,
contact_id, version, the properties as msgpack) into a table keyed by contact, one transaction
per batch, on a file with the store's settings (WAL, ``synchronous=NORMAL``, fsync at the same
syncs) or a PostgreSQL schema of its own. SQLite is timed per CPU-second of this process (the
writer thread included: less swayed by other work on a shared machine) and by wall clock;
PostgreSQL by wall clock. Prints one JSON line per round and the median ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
from applier_heap import as_the_applier
from run import POSTGRES_URL, _operation_events

BATCH = 2_000
SYNC_EVERY = 5  # batches, as G syncs


def _raw_sqlite(path: Path, chunks: list[list[Any]]) -> tuple[float, float]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE contacts (workspace TEXT NOT NULL, contact_id TEXT NOT NULL,"
        " ts_us INTEGER, event_id TEXT, properties BLOB,"
        " PRIMARY KEY (workspace, contact_id)) WITHOUT ROWID"
    )
    encode = msgspec.msgpack.encode
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, chunk in enumerate(chunks, start=1):
        rows = [
            (e.workspace, e.contact_id, e.ts_us, e.event_id, encode(e.properties)) for e in chunk
        ]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace, contact_id)"
            " DO UPDATE SET ts_us = excluded.ts_us, event_id = excluded.event_id,"
            " properties = excluded.properties",
            rows,
        )
        conn.execute("COMMIT")
        if i % SYNC_EVERY == 0:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            os.fsync(os.open(f"{path}-wal", os.O_RDONLY))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    conn.close()
    return cpu, wall


def _raw_postgres(schema: str, chunks: list[list[Any]]) -> float:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".contacts (workspace TEXT NOT NULL, contact_id TEXT NOT NULL,'
            " ts_us BIGINT, event_id TEXT, properties JSONB, PRIMARY KEY (workspace, contact_id))"
        )
        encode = msgspec.json.encode
        t0 = time.perf_counter()
        for chunk in chunks:
            # One row per contact: PostgreSQL refuses to upsert a row twice in one statement.
            last = {(e.workspace, e.contact_id): e for e in chunk}
            rows = [
                (e.workspace, e.contact_id, e.ts_us, e.event_id, encode(e.properties).decode())
                for e in last.values()
            ]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    f'INSERT INTO "{schema}".contacts VALUES (%s, %s, %s, %s, %s)'
                    " ON CONFLICT (workspace, contact_id) DO UPDATE SET ts_us = excluded.ts_us,"
                    " event_id = excluded.event_id, properties = excluded.properties",
                    rows,
                )
        wall = time.perf_counter() - t0
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return wall


async def _store(name: str, tmp: Path, tag: str, chunks: list[list[Any]]) -> tuple[float, float]:
    from profilehook.stores.postgres import PostgresStore
    from profilehook.stores.sqlite import SqliteStore

    schema = f"bench_ceiling_{os.getpid()}_{tag}"
    store: Any = (
        SqliteStore(tmp / f"{tag}.sqlite3")
        if name == "sqlite"
        else PostgresStore(f"{POSTGRES_URL}?schema={schema}")
    )
    await store.open()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, chunk in enumerate(chunks, start=1):
        await store.apply(chunk)
        if i % SYNC_EVERY == 0:
            await store.sync()
    await store.sync()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    await store.close()
    if name == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return cpu, wall


async def main(args: argparse.Namespace) -> None:
    workloads = args.workloads.split(",")
    events = {w: _operation_events(args.batches * BATCH, w) for w in workloads}
    chunks = {w: [e[i : i + BATCH] for i in range(0, len(e), BATCH)] for w, e in events.items()}
    n = args.batches * BATCH
    ratios: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        line: dict[str, Any] = {"round": round_, "loadavg": os.getloadavg()[0]}
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            for name in args.stores.split(","):
                if name == "sqlite":
                    cpu, wall = _raw_sqlite(tmp / f"raw{round_}.sqlite3", chunks[workloads[0]])
                    line["sqlite_raw_rows_per_cpu_s"] = round(n / cpu)
                    line["sqlite_raw_rows_per_s"] = round(n / wall)
                else:
                    wall = _raw_postgres(f"bench_raw_{os.getpid()}", chunks[workloads[0]])
                    line["postgres_raw_rows_per_s"] = round(n / wall)
                for w in workloads:
                    cpu, wall = await _store(name, tmp, f"{name}_{w}_{round_}", chunks[w])
                    if name == "sqlite":
                        line[f"sqlite_{w}_per_cpu_s"] = round(n / cpu)
                        ratio = (n / cpu) / line["sqlite_raw_rows_per_cpu_s"]
                        ratios.setdefault(f"sqlite_{w}_cpu_ratio", []).append(ratio)
                        wall_ratio = (n / wall) / line["sqlite_raw_rows_per_s"]
                        ratios.setdefault(f"sqlite_{w}_wall_ratio", []).append(wall_ratio)
                        line[f"sqlite_{w}_per_s"] = round(n / wall)
                    else:
                        line[f"postgres_{w}_per_s"] = round(n / wall)
                        ratio = (n / wall) / line["postgres_raw_rows_per_s"]
                        ratios.setdefault(f"postgres_{w}_wall_ratio", []).append(ratio)
        print(json.dumps(line), flush=True)
    print(json.dumps({k: round(statistics.median(v), 3) for k, v in ratios.items()}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--workloads", default="set,mixed,mixed_late")
    with as_the_applier():
        asyncio.run(main(parser.parse_args()))
