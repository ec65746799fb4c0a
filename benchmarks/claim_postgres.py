"""PostgreSQL delivery claim, old shape (every due row, joined to destinations) vs new (the due
heads of each (destination, contact), postgres_destinations.HEADS), side by side on one loaded
schema per case: 20,000 pending deliveries of 2 destinations x 3,000 contacts. From the repo
root: ``PYTHONPATH=. .venv/bin/python benchmarks/claim_postgres.py`` (PostgreSQL at
PROFILEHOOK_TEST_POSTGRES_URL or the tests' default)."""

from __future__ import annotations

import asyncio
import re
import statistics

import psycopg
from tests.support import POSTGRES_URL, drop_schema, postgres_url, unique_schema

from profilehook.stores import postgres_destinations as pd
from profilehook.stores.destinations import Destination, Finished, NewDelivery
from profilehook.stores.postgres import PostgresStore

T0 = 1_700_000_000_000_000
OLD = """
SELECT d.destination_id, d.position FROM deliveries d
JOIN destinations s ON s.destination_id = d.destination_id AND s.disabled_us IS NULL
WHERE d.status = 'pending' AND d.next_attempt_us <= %s
AND (d.lease_until_us IS NULL OR d.lease_until_us <= %s)
AND NOT EXISTS (
    SELECT 1 FROM deliveries e WHERE e.destination_id = d.destination_id
    AND e.contact_id = d.contact_id AND e.status = 'pending' AND e.position < d.position
)
ORDER BY d.next_attempt_us, d.position
LIMIT %s
FOR UPDATE OF d SKIP LOCKED
"""
SCAN = re.compile(
    r"(Seq Scan on deliveries d|Index Scan using \w+ on deliveries d|Bitmap Heap Scan on deliveries d) .*?actual time=\S+ rows=(\d+) loops"
)


async def load(schema: str, mode: str) -> None:
    """``fresh``: a backlog; ``retry``: every head failed once, waiting; ``leased``: every
    head in flight."""
    store = PostgresStore(postgres_url(schema))
    await store.open()
    for k in range(2):
        d = Destination(f"d{k}", "w", "https://example.com/h", "whsec_eA==", T0)
        await store.create_destination(d, 50)
        cursor = None
        for start in range(0, 10_000, 2_000):
            rows = [
                NewDelivery(f"ch{i}", str(i + 1), f"c{i % 3000}", T0 + i, b"{}")
                for i in range(start, start + 2_000)
            ]
            assert await store.enqueue_deliveries(f"d{k}", cursor, str(start + 2_000), rows, T0)
            cursor = str(start + 2_000)
    if mode != "fresh":
        heads = await store.claim_deliveries("w", T0, T0 + 10**9, 10_000)
        if mode == "retry":
            done = [Finished(h.destination_id, h.position, False, T0 + 10**9, 500) for h in heads]
            await store.finish_deliveries("w", T0, done)
    await store.close()


def main() -> None:
    for mode in ("retry", "leased", "fresh"):
        schema = unique_schema()
        asyncio.run(load(schema, mode))
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute("ANALYZE deliveries")
            line = [mode]
            for name, sql, params in (
                ("old", OLD, (T0 + 1, T0 + 1, 500)),
                ("new", pd._CLAIMABLE, (T0 + 1, [], T0 + 1, 500)),
            ):
                times = []
                plan = ""
                for _ in range(7):
                    rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                    plan = "\n".join(r[0] for r in rows)
                    found = re.search(r"Execution Time: ([\d.]+)", plan)
                    assert found
                    times.append(float(found.group(1)))
                scan = SCAN.search(plan)
                how = f"{scan.group(1)}, {scan.group(2)} rows read" if scan else plan
                line.append(f"{name} {statistics.median(times):.2f} ms ({how})")
            print("  ".join(line))
        drop_schema(schema)


if __name__ == "__main__":
    main()
