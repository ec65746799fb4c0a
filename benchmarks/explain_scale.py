"""The PostgreSQL plans of query_scale.py's queries (issue 19): ``N`` contacts bulk-loaded as
query_scale.py loads them, the store's statements of one ``query_contacts`` captured and each
run under EXPLAIN (ANALYZE, BUFFERS).

    python benchmarks/explain_scale.py 100000
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

import query_scale as qs

from profilehook.filters import Query
from profilehook.stores.postgres import PostgresStore


async def main(count: int) -> None:
    schema = f"bench_expl_{uuid.uuid4().hex[:6]}"
    store = PostgresStore(f"{qs.POSTGRES_URL}?schema={schema}")
    await store.open()
    seen: list[tuple[Any, Any]] = []
    execute = psycopg.AsyncConnection.execute

    async def capture(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        seen.append((query, params))
        return await execute(self, query, params, **kw)

    psycopg.AsyncConnection.execute = capture  # type: ignore[method-assign]
    t0 = time.perf_counter()
    qs.load_postgres(schema, count)
    print(f"bulk load: {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        for raw in qs.QUERIES.values():
            await store.query_contacts("bench", Query(qs.node(raw), 100))
    finally:
        psycopg.AsyncConnection.execute = execute  # type: ignore[method-assign]
        await store.close()
    with psycopg.connect(qs.POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        for query, params in seen:
            if str(query).startswith("SELECT") and "FOR " not in str(query):
                print(query)
                for (line,) in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}", params):
                    print(line)
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
