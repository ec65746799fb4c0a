"""Ceilings measured in the same run as what they bound (issue 23): what the machine does with
the least code for the same work, so that every target is a ratio that holds on any machine.

* apply: a raw upsert loop writing as many rows as the store's apply wrote for the same batches
  (the issue's "writing the same number of rows"): G's property updates, one row per (contact,
  property), and as many more made from them under other names, with ``executemany`` in one
  transaction per batch and a last-writer-wins guard, on SQLite (WAL, ``synchronous=NORMAL``
  and the WAL fsynced every 5 batches, as the store's applier does) and on PostgreSQL (a commit
  per batch); without a row count, the property updates alone (the ceiling before 2026-12-05);
* the HTTP ceilings are ASGI apps under uvicorn: A (apps/ceiling.py), the batch ceiling
  (apps/batch_ceiling.py: decodes D's body with msgspec, answers), the read ceiling
  (apps/read_ceiling.py: answers a fixed profile JSON); ``http_ceiling`` runs one with wrk.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.cpu_meter import cpu_seconds

UPSERT_COLUMNS = "workspace, contact_id, name, value, ts_us, event_id"
SYNC_EVERY_BATCHES = 5  # as G (and the applier, about 4 times a second)


def _rows(batch: Sequence[Any], count: int | None = None) -> list[tuple[Any, ...]]:
    """The rows of ``batch`` (Events): one per property update; with ``count``, exactly that
    many: the updates, then the same updates again under other names (``p3~1``, ``p3~2``, …: a
    key of their own each pass, so each is a row of its own and not the same row twice)."""
    updates = [
        (e.workspace, e.contact_id, name, value, e.ts_us, e.event_id)
        for e in batch
        for name, value in e.properties.items()
    ]
    if count is None:
        return updates
    rows, again = updates[:count], 0
    while len(rows) < count and updates:
        again += 1
        rows.extend(
            (w, c, f"{name}~{again}", value, ts, event_id)
            for w, c, name, value, ts, event_id in updates[: count - len(rows)]
        )
    return rows


def sqlite_upsert_ceiling(
    path: Path, batches: Sequence[Sequence[Any]], rows_per_batch: int | None = None
) -> tuple[float, float]:
    """Rows per second and per CPU-second of this process of the raw SQLite upsert loop over
    ``batches`` (of Events), on a new file at ``path``: ``rows_per_batch`` rows a batch, or
    (None) one per property update."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE props (workspace TEXT NOT NULL, contact_id TEXT NOT NULL, name TEXT NOT NULL,"
        " value, ts_us INTEGER NOT NULL, event_id TEXT NOT NULL,"
        " PRIMARY KEY (workspace, contact_id, name)) WITHOUT ROWID"
    )
    sql = (
        f"INSERT INTO props ({UPSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (workspace, contact_id, name) DO UPDATE SET value = excluded.value,"
        " ts_us = excluded.ts_us, event_id = excluded.event_id"
        " WHERE (excluded.ts_us, excluded.event_id) > (props.ts_us, props.event_id)"
    )
    updates = 0
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for i, batch in enumerate(batches, start=1):
        rows = _rows(batch, rows_per_batch)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        updates += len(rows)
        if i % SYNC_EVERY_BATCHES == 0:
            _fsync(f"{path}-wal")
    _fsync(f"{path}-wal")
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    conn.close()
    return updates / elapsed, updates / cpu


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def postgres_upsert_ceiling(
    url: str, batches: Sequence[Sequence[Any]], rows_per_batch: int | None = None
) -> float:
    """Rows/s of the raw PostgreSQL upsert loop (psycopg's ``executemany``, which pipelines the
    statements, one transaction per batch) in a schema of its own: ``rows_per_batch`` rows a
    batch, or (None) one per property update."""
    import psycopg

    schema = f"bench_ceiling_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            conn.execute(
                f'CREATE TABLE "{schema}".props (workspace text NOT NULL, contact_id text NOT NULL,'
                " name text NOT NULL, value double precision, ts_us bigint NOT NULL,"
                " event_id text NOT NULL, PRIMARY KEY (workspace, contact_id, name))"
            )
            sql = (
                f'INSERT INTO "{schema}".props AS p ({UPSERT_COLUMNS})'
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (workspace, contact_id, name) DO UPDATE SET value = excluded.value,"
                " ts_us = excluded.ts_us, event_id = excluded.event_id"
                " WHERE (excluded.ts_us, excluded.event_id) > (p.ts_us, p.event_id)"
            )
            updates = 0
            t0 = time.perf_counter()
            for batch in batches:
                rows = _rows(batch, rows_per_batch)
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(sql, rows)
                updates += len(rows)
            elapsed = time.perf_counter() - t0
        finally:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return updates / elapsed
