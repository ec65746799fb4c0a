"""Queries at scale (issue 19): ``--contacts`` contacts of 20 properties (scenario J's profile:
a plan, 1 % "enterprise"; a score 0-999; a country; p0-p16 random numbers) loaded in bulk,
then J's measurements: a selective equality (1 % match) and a range
(1 %), first page of 100, p50/p99 over ``--runs``; a full paged listing (pages of 1,000).

    python benchmarks/query_scale.py --contacts 1000000 --runs 100

The loads write the store's tables directly (through the applier, ~1,200 contacts/s into
PostgreSQL here), and are first checked to write exactly the rows the store's own
apply writes for the same events (``check_sqlite_load``, ``check_postgres_load``: 2,000
contacts both ways, every column of the tables a query reads compared). SQLite: the contacts'
rows from Python (properties as the store's msgpack), the ``contact_values`` copy
(stores/sqlite_values.py) generated and sorted by SQLite, each name in key order. PostgreSQL:
the contacts from ``generate_series``, the properties by COPY (values as msgspec's JSON text,
as the store writes them), the query indexes made after, then VACUUM ANALYZE. Before
measuring, a few contacts are read back with ``get_contact`` and each query's first page is
checked against the reference evaluator (``filters.matches``) and the ids the generator put
there.
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

import msgspec

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


def _sqlite_value(name: str) -> str:
    """The SQL of contact i's ``name`` as ``sqlite_values.stored`` keeps it (``profile``'s
    value: the same integer, text or double; an integer divided by a real is the same
    correctly rounded double as Python's ``/``)."""
    if name == "plan":
        return (
            "CASE WHEN i % 100 = 7 THEN 'enterprise' ELSE"
            " CASE (i / 100) % 3 WHEN 0 THEN 'free' WHEN 1 THEN 'pro' ELSE 'team' END END"
        )
    if name == "score":
        return "(i * 7919) % 1000"
    if name == "country":
        return "'C' || printf('%02d', i % 50)"
    k = OTHERS.index(name)
    return f"((i * 2654435761 + {k * 40_503}) % {_MODULUS}) / {_MODULUS}.0"


def load_sqlite(path: Path, count: int) -> None:
    """``count`` contacts written straight into the store's tables, as its apply writes them
    (``check_load`` compares the two): the contacts' rows from Python (their properties are
    the store's msgpack), the ``contact_values`` copy generated and sorted by SQLite itself,
    one property at a time in key order, in one transaction."""
    from profilehook.stores.sqlite import _encode_groups

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-400000")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO contacts (workspace, contact_id, last_ts_us, last_event_id,"
        " deleted_ts_us, deleted_event_id, properties, ops_ts_us, ops_event_id, marks)"
        " VALUES (?, ?, ?, ?, NULL, NULL, ?, NULL, NULL, NULL)",
        (
            (
                WORKSPACE,
                cid(i),
                1_000_000 + i,
                f"load-{i}",
                _encode_groups([(1_000_000 + i, f"load-{i}", profile(i))]),
            )
            for i in range(count)
        ),
    )
    for name in ("plan", "score", "country", *OTHERS):
        kind = sqlite_values.stored(profile(0)[name])[0]
        conn.execute(
            "INSERT INTO contact_values (workspace, name, kind, value, contact_id)"
            " WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ? - 1)"
            f" SELECT ?, ?, ?, {_sqlite_value(name)}, 'c' || printf('%08d', i) FROM s"
            " ORDER BY 4, 5",
            (count, WORKSPACE, name, kind),
        )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def load_postgres(schema: str, count: int) -> None:
    """``count`` contacts written straight into the store's tables, as its apply writes them
    (``check_postgres_load`` compares the two): the contacts from ``generate_series``, their
    properties by COPY in key order, each value the JSON text the store writes (msgspec's:
    PostgreSQL spells some floats otherwise); the query indexes dropped meanwhile and made
    again as the migration makes them."""
    import psycopg

    from profilehook.stores import postgres_query

    names = sorted(("plan", "score", "country", *OTHERS))  # key order (bytewise)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET max_parallel_maintenance_workers = 0")  # a shared machine: one core
        for index in postgres_query.INDEX_NAMES:
            conn.execute(f"DROP INDEX {index}")
        conn.execute(
            "INSERT INTO contacts (workspace, contact_id, last_ts_us, last_event_id)"
            " SELECT %s, 'c' || lpad(i::text, 8, '0'), 1000000 + i, 'load-' || i"
            " FROM generate_series(0, %s - 1) i",
            (WORKSPACE, count),
        )
        with conn.cursor().copy(
            "COPY properties (workspace, contact_id, name, value, ts_us, event_id) FROM STDIN"
        ) as copy:
            for start in range(0, count, _LOAD_CHUNK):
                lines = []
                for i in range(start, min(count, start + _LOAD_CHUNK)):
                    props, tail = profile(i), f"\t{1_000_000 + i}\tload-{i}\n"
                    head = f"{WORKSPACE}\t{cid(i)}\t"
                    lines += [f"{head}{n}\t{_json(props[n]).decode()}{tail}" for n in names]
                copy.write("".join(lines))
        conn.execute(postgres_query.INDEXES_BY_CONTACT)
        conn.execute("VACUUM ANALYZE contacts")  # the visibility map: index-only scans
        conn.execute("VACUUM ANALYZE properties")


_json = msgspec.json.encode
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


# -- the bulk loads write what apply writes -----------------------------------------------------

CHECK_CONTACTS = 2_000


def _events(count: int) -> list[Any]:
    from profilehook.events import Event

    return [Event(WORKSPACE, f"load-{i}", cid(i), 1_000_000 + i, profile(i)) for i in range(count)]


async def check_sqlite_load(tmp: Path) -> None:
    """``load_sqlite``'s rows equal those the store's apply writes for the same events: every
    column of ``contacts`` and of ``contact_values`` (with each value's SQLite type), the two
    tables a query reads."""
    from profilehook.stores.sqlite import SqliteStore

    applied, loaded = tmp / "applied.sqlite3", tmp / "loaded.sqlite3"
    for path in (applied, loaded):
        store = SqliteStore(path)
        await store.open()
        if path == applied:
            for start in range(0, CHECK_CONTACTS, 500):
                await store.apply(_events(CHECK_CONTACTS)[start : start + 500])
        await store.close()
    load_sqlite(loaded, CHECK_CONTACTS)
    for sql in (
        "SELECT * FROM contacts ORDER BY workspace, contact_id",
        "SELECT workspace, name, kind, value, typeof(value), contact_id FROM contact_values"
        " ORDER BY workspace, name, kind, value, contact_id",
    ):
        rows = [sqlite3.connect(path).execute(sql).fetchall() for path in (applied, loaded)]
        assert rows[0] == rows[1] and len(rows[0]) >= CHECK_CONTACTS, sql


async def check_postgres_load() -> None:
    """``load_postgres``'s rows equal those the store's apply writes for the same events:
    ``contacts`` and ``properties`` (each value's JSON text), the tables a query reads."""
    import psycopg

    from profilehook.stores.postgres import PostgresStore

    schemas = [f"bench_check_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        for schema in schemas:
            store = PostgresStore(f"{POSTGRES_URL}?schema={schema}")
            await store.open()
            if schema == schemas[0]:
                for start in range(0, CHECK_CONTACTS, 500):
                    await store.apply(_events(CHECK_CONTACTS)[start : start + 500])
            await store.close()
        load_postgres(schemas[1], CHECK_CONTACTS)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for sql in (
                "SELECT * FROM {}.contacts ORDER BY workspace, contact_id",
                "SELECT workspace, contact_id, name, value::text, ts_us, event_id"
                " FROM {}.properties ORDER BY workspace, contact_id, name",
            ):
                rows = [conn.execute(sql.format(f'"{s}"')).fetchall() for s in schemas]
                assert rows[0] == rows[1] and len(rows[0]) >= CHECK_CONTACTS, sql
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def server_times(schema: str) -> dict[str, float]:
    """PostgreSQL's own time for each query's first page (EXPLAIN ANALYZE of the statement
    ``query_contacts`` runs first, median of 5): what the plan costs, apart from the round
    trips and the Python around it, which a loaded machine stretches."""
    import psycopg

    from profilehook.stores import postgres_query
    from profilehook.stores.postgres import _VERSION_COLUMNS

    out = {}
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        for label, raw in QUERIES.items():
            sql, params = postgres_query.driven_sql(
                WORKSPACE, node(raw), None, 101, _VERSION_COLUMNS
            )
            times = []
            for _ in range(5):
                plan = [row[0] for row in conn.execute(f"EXPLAIN ANALYZE {sql}", params)]
                times.append(float(plan[-1].split(":")[1].split()[0]))
            out[f"postgres_{label}_server_ms"] = sorted(times)[2]
    return out


async def main(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {"contacts": args.contacts, "properties_per_contact": 20}
    if "sqlite" in args.stores:
        from profilehook.stores.sqlite import SqliteStore

        await check_sqlite_load(Path(tempfile.mkdtemp()))
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

        await check_postgres_load()
        schema = f"bench_scale_{uuid.uuid4().hex[:8]}"
        pg = PostgresStore(f"{POSTGRES_URL}?schema={schema}")
        try:
            await pg.open()
            t0 = time.perf_counter()
            load_postgres(schema, args.contacts)
            result["postgres_bulk_load_s"] = round(time.perf_counter() - t0, 1)
            measured = await measure(pg, args.contacts, args.runs)
            result.update({f"postgres_{k}": v for k, v in measured.items()})
            result.update(server_times(schema))
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
