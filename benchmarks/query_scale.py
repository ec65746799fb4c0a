"""Queries at scale (issue 19): ``--contacts`` contacts of 20 properties (scenario J's profile:
a plan, 1 % "enterprise"; a score 0-999; a country; p0-p16 random numbers) loaded in bulk
straight into each store's own tables (loading through the applier runs at ~1,200 contacts/s
into PostgreSQL here), then J's measurements: a selective equality (1 % match) and a range
(1 %), first page of 100, p50/p99 over ``--runs``; a full paged listing (pages of 1,000).

    python benchmarks/query_scale.py --contacts 1000000 --runs 100

PostgreSQL: ``generate_series`` into ``contacts`` and ``properties`` (the query indexes dropped
during the load and made again as the store's migration makes them), then ANALYZE. SQLite: the
contacts' rows as the applier writes them (properties as one msgpack group) and the
``contact_values`` copy (stores/sqlite_values.py), by executemany, each name's rows in key
order. Before measuring, a few contacts are read back with ``get_contact`` and each query's
first page is checked against the reference evaluator (``filters.matches``) and the ids the
generator put there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from run import POSTGRES_URL

from profilehook.filters import Query, matches, parse_filter
from profilehook.stores import sqlite_values

WORKSPACE = "bench"
OTHERS = [f"p{k}" for k in range(17)]
PLANS = ("free", "pro", "team")


def cid(i: int) -> str:
    return f"c{i:08d}"


_MODULUS = 1_000_003


def other(i: int, k: int) -> float:
    """p{k} of contact i: spread over [0, 1) (the same float in SQL: exact integers divided)."""
    return ((i * 2_654_435_761 + k * 40_503) % _MODULUS) / _MODULUS


def profile(i: int) -> dict[str, Any]:
    """Contact i's properties (computed again in SQL by ``load_postgres``)."""
    props: dict[str, Any] = {
        "plan": "enterprise" if i % 100 == 7 else PLANS[(i // 100) % 3],
        "score": (i * 7919) % 1000,
        "country": f"C{i % 50:02d}",
    }
    props.update({name: other(i, k) for k, name in enumerate(OTHERS)})
    return props


def node(raw: dict[str, Any]) -> Any:
    found, problems = parse_filter(raw)
    assert found is not None, problems
    return found


QUERIES = {
    "equality": {"property": "plan", "op": "eq", "value": "enterprise"},
    "range": {"property": "score", "op": "gte", "value": 990},
}


def expected_first_page(label: str, count: int) -> list[str]:
    want = {
        "equality": lambda i: i % 100 == 7,
        "range": lambda i: (i * 7919) % 1000 >= 990,
    }[label]
    found = []
    for i in range(count):
        if want(i):
            found.append(cid(i))
            if len(found) == 100:
                break
    return found


# -- bulk loads ---------------------------------------------------------------------------------


def load_sqlite(path: Path, count: int) -> None:
    from profilehook.stores.sqlite import _encode_groups

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-400000")
    conn.execute("BEGIN")
    chunk = 50_000
    for start in range(0, count, chunk):
        rows = []
        for i in range(start, min(count, start + chunk)):
            version = (1_000_000 + i, f"load-{i}")
            encoded = _encode_groups([(*version, profile(i))])
            rows.append((WORKSPACE, cid(i), *version, None, None, encoded, None, None, None))
        conn.executemany(
            "INSERT INTO contacts (workspace, contact_id, last_ts_us, last_event_id,"
            " deleted_ts_us, deleted_event_id, properties, ops_ts_us, ops_event_id, marks)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    # contact_values, one name at a time in key order (its rows are its primary key).
    names = ("plan", "score", "country", *OTHERS)
    for at, name in enumerate(names):
        rows = []
        for i in range(count):
            value = profile(i)[name] if at < 3 else other(i, at - 3)
            kind, stored = sqlite_values.stored(value)
            rows.append((WORKSPACE, name, kind, stored, cid(i)))
        rows.sort(key=lambda r: (r[2], r[3], r[4]))
        conn.executemany(
            "INSERT INTO contact_values (workspace, name, kind, value, contact_id)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def load_postgres(schema: str, count: int) -> None:
    import psycopg

    from profilehook.stores import postgres_query

    others = ", ".join(f"('{n}', {k})" for k, n in enumerate(OTHERS))
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET work_mem = '256MB'")  # each chunk sorts in memory
        conn.execute("SET synchronous_commit = off")
        for index in postgres_query.INDEX_NAMES:
            conn.execute(f"DROP INDEX {index}")
        conn.execute(
            "INSERT INTO contacts (workspace, contact_id, last_ts_us, last_event_id)"
            " SELECT %s, 'c' || lpad(i::text, 8, '0'), 1000000 + i, 'load-' || i"
            " FROM generate_series(0, %s - 1) i",
            (WORKSPACE, count),
        )
        # The same values as ``profile``: p0-p16 are exact integers divided, as in ``other``.
        # Chunks of contacts in key order: each sorts in memory and appends to the key's end.
        for start in range(0, count, _LOAD_CHUNK):
            conn.execute(
                "INSERT INTO properties (workspace, contact_id, name, value, ts_us, event_id)"
                " SELECT %s, 'c' || lpad(i::text, 8, '0'), n.name, CASE n.name"
                "  WHEN 'plan' THEN to_json(CASE WHEN i %% 100 = 7 THEN 'enterprise'"
                "   ELSE (ARRAY['free', 'pro', 'team'])[1 + (i / 100) %% 3] END)"
                "  WHEN 'score' THEN to_json((i::bigint * 7919) %% 1000)"
                "  WHEN 'country' THEN to_json('C' || lpad((i %% 50)::text, 2, '0'))"
                f"  ELSE to_json(((i::bigint * 2654435761 + n.k * 40503) %% {_MODULUS})::float8"
                f" / {_MODULUS}) END,"
                " 1000000 + i, 'load-' || i"
                " FROM generate_series(%s, %s) i CROSS JOIN (VALUES ('plan', -1), ('score', -1),"
                f" ('country', -1), {others}) AS n(name, k) ORDER BY 1, 2, 3",
                (WORKSPACE, start, min(count, start + _LOAD_CHUNK) - 1),
            )
        conn.execute(postgres_query.INDEXES_BY_CONTACT)
        conn.execute("VACUUM ANALYZE contacts")  # the visibility map: index-only scans
        conn.execute("VACUUM ANALYZE properties")


_LOAD_CHUNK = 50_000

# -- the measurements ---------------------------------------------------------------------------


async def measure(store: Any, count: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in (0, 7, count // 2, count - 1):
        contact = await store.get_contact(WORKSPACE, cid(i))
        assert contact is not None, i
        want = profile(i)
        assert contact.properties == want, (i, contact.properties, want)
    for label, raw in QUERIES.items():
        flt = node(raw)
        page = await store.query_contacts(WORKSPACE, Query(flt, 100))
        assert [c.contact_id for c in page.contacts] == expected_first_page(label, count), label
        assert all(matches(flt, c.contact_id, c.properties, c.updated_us) for c in page.contacts)
        timings = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await store.query_contacts(WORKSPACE, Query(flt, 100))
            timings.append((time.perf_counter() - t0) * 1000)
        timings.sort()
        out[f"{label}_p50_ms"] = round(timings[len(timings) // 2], 1)
        out[f"{label}_p99_ms"] = round(timings[max(0, int(len(timings) * 0.99) - 1)], 1)
    everyone, listed, after = node({"all": []}), 0, None
    t0 = time.perf_counter()
    while True:
        page = await store.query_contacts(WORKSPACE, Query(everyone, 1_000, after))
        listed += len(page.contacts)
        if page.next_after is None:
            break
        after = page.next_after
    assert listed == count
    out["listing_contacts_per_s"] = round(listed / (time.perf_counter() - t0))
    return out


async def main(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {"contacts": args.contacts, "properties_per_contact": 20}
    if "sqlite" in args.stores:
        from profilehook.stores.sqlite import SqliteStore

        path = Path(tempfile.mkdtemp()) / "scale.sqlite3"
        store = SqliteStore(path)
        await store.open()
        await store.close()
        t0 = time.perf_counter()
        load_sqlite(path, args.contacts)
        result["sqlite_bulk_load_s"] = round(time.perf_counter() - t0, 1)
        store = SqliteStore(path)
        await store.open()
        result.update(
            {f"sqlite_{k}": v for k, v in (await measure(store, args.contacts, args.runs)).items()}
        )
        await store.close()
        path.unlink()
        print(json.dumps(result), flush=True)
    if "postgres" in args.stores:
        import psycopg

        from profilehook.stores.postgres import PostgresStore

        schema = f"bench_scale_{uuid.uuid4().hex[:8]}"
        pg = PostgresStore(f"{POSTGRES_URL}?schema={schema}")
        try:
            await pg.open()
            t0 = time.perf_counter()
            load_postgres(schema, args.contacts)
            result["postgres_bulk_load_s"] = round(time.perf_counter() - t0, 1)
            measured = await measure(pg, args.contacts, args.runs)
            result.update({f"postgres_{k}": v for k, v in measured.items()})
            await pg.close()
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgres"])
    asyncio.run(main(parser.parse_args()))
