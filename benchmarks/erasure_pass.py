"""What a pass of erasures costs on the embedded store: ``--erasures`` contacts erased from a store
of ``--contacts`` (contacts_loader.py's), one erasure a pass (each scrubbing the log, the store
and its destinations file: what the eraser did until 2026-12-06) against all of them in one
pass (``erasure.execute_pending``: each file scrubbed once). A scrub copies a whole file
(``SqliteDatabase.scrub``), so the first costs about ``--erasures`` times the second on a large
store. Alternated in ``--rounds`` rounds, each on a fresh copy of the store; medians.

    .venv/bin/python benchmarks/erasure_pass.py [--contacts 100000] [--erasures 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.contacts_loader import WORKSPACE, contact_id, data_dir_with_contacts

from profilehook import erasure
from profilehook.queues import QUEUE_FILE
from profilehook.queues.sqlite import SqliteQueue
from profilehook.stores import STORE_FILE
from profilehook.stores.sqlite import SqliteStore


async def erase(data_dir: Path, count: int, together: bool) -> float:
    """Seconds to carry out ``count`` erasures requested at once, in one pass or one a pass."""
    queue, store = SqliteQueue(data_dir / QUEUE_FILE), SqliteStore(data_dir / STORE_FILE)
    await queue.open()
    await store.open()
    try:
        contacts = [contact_id(i * 997) for i in range(count)]  # spread over the file
        requested = [await erasure.request_erasure(store, WORKSPACE, c) for c in contacts]
        started = time.perf_counter()
        if together:
            assert await erasure.execute_pending(queue, store) == count
        else:
            for each in requested:
                await erasure.execute(queue, store, [each])
        seconds = time.perf_counter() - started
        assert await store.pending_erasures(1) == []
        assert await store.get_contact(WORKSPACE, contacts[-1]) is None
        return seconds
    finally:
        await store.close()
        await queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--erasures", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.erasures * 997 >= args.contacts:
        parser.error("--erasures * 997 must stay below --contacts (the ids erased are spread)")
    timings: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="profilehook-erasures-") as tmp:
        size = 0
        for r in range(args.rounds):
            for together in (False, True):
                data_dir = data_dir_with_contacts(Path(tmp) / f"{r}-{together}", args.contacts)
                size = (data_dir / STORE_FILE).stat().st_size
                seconds = asyncio.run(erase(data_dir, args.erasures, together))
                timings[together].append(seconds)
                how = "in one pass" if together else "one a pass "
                print(f"round {r + 1}: {args.erasures} erasures {how}  {seconds:7.2f} s")
    one, all_ = (statistics.median(timings[k]) for k in (False, True))
    print(
        f"\n{args.contacts:,} contacts (store file {size / 1e6:,.0f} MB), {args.erasures} erasures,"
        f" medians of {args.rounds}: one a pass {one:.2f} s ({args.erasures / one:.1f} /s),"
        f" in one pass {all_:.2f} s ({args.erasures / all_:.1f} /s): {one / all_:.1f} x faster"
    )


if __name__ == "__main__":
    main()
