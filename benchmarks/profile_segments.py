"""Where scenario J's apply with segments spends its time (issue 19): loads ``--contacts``
contacts of ~20 properties into one store, defines ``--segments`` segments as scenario J does,
then profiles ``--batches`` batches of J's updates (cProfile, sorted by own time).

    python benchmarks/profile_segments.py --store sqlite --segments 100
    python benchmarks/profile_segments.py --store postgres --segments 100
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import J_BATCH, POSTGRES_URL, _j_profile

from profilehook.events import Event
from profilehook.filters import parse_filter
from profilehook.stores.segments import Segment


def _segment_filter(k: int) -> dict[str, object]:
    if k % 3:
        return {"property": f"p{k % 17}", "op": "gt", "value": 0.5 + (k % 7) / 20}
    return {
        "all": [
            {"property": "plan", "op": "eq", "value": "pro"},
            {"property": f"p{k % 17}", "op": "lt", "value": 0.3},
        ]
    }


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp())
    schema = f"prof_j_{uuid.uuid4().hex[:8]}"
    if args.store == "sqlite":
        from profilehook.stores.sqlite import SqliteStore

        store: object = SqliteStore(tmp / "p.sqlite3")
    else:
        from profilehook.stores.postgres import PostgresStore

        store = PostgresStore(f"{POSTGRES_URL}?schema={schema}")
    await store.open()  # type: ignore[attr-defined]
    rng = random.Random(19)
    for start in range(0, args.contacts, J_BATCH):
        await store.apply(  # type: ignore[attr-defined]
            [
                Event("w", f"load-{i}", f"c{i:08d}", 1_000_000 + i, _j_profile(rng, i))
                for i in range(start, min(args.contacts, start + J_BATCH))
            ]
        )
    for k in range(args.segments):
        node, _ = parse_filter(_segment_filter(k))
        segment_id = f"seg_{uuid.uuid4().hex}"  # as the API makes them (segments.py)
        await store.create_segment(Segment(segment_id, "w", f"s{k}", node, k))  # type: ignore
        while not await store.backfill_segment("w", segment_id, 2_000):  # type: ignore
            pass
    batches = [
        [
            Event(
                "w",
                f"upd-{b}-{j}",
                f"c{rng.randrange(args.contacts):08d}",
                10**12 + b * J_BATCH + j,
                {f"p{rng.randrange(17)}": rng.random() for _ in range(5)},
            )
            for j in range(J_BATCH)
        ]
        for b in range(args.batches)
    ]
    profile = cProfile.Profile()
    if args.store == "sqlite":
        # SQLite applies on its writer thread: profile the apply function there.
        from profilehook.stores import sqlite as module

        applying = module._apply_profiles

        def profiled(*a: object, **k: object) -> object:
            profile.enable()
            try:
                return applying(*a, **k)  # type: ignore[arg-type]
            finally:
                profile.disable()

        module._apply_profiles = profiled  # type: ignore[assignment]
        for batch in batches:
            await store.apply(batch)  # type: ignore[attr-defined]
        module._apply_profiles = applying
    else:
        profile.enable()
        for batch in batches:
            await store.apply(batch)  # type: ignore[attr-defined]
        profile.disable()
    await store.close()  # type: ignore[attr-defined]
    pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)
    if args.store == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--contacts", type=int, default=5_000)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=30)
    asyncio.run(main(parser.parse_args()))
