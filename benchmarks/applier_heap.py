"""The collector's settings of the applier process, for benchmarks that apply in process.

``profilehook worker`` (and so ``serve``'s applier child) settles its heap before it starts
(cli.py ``_settle_heap``): what start-up allocated is frozen, and the young generation is
collected every ``GC_YOUNG_THRESHOLD`` allocations instead of Python's 700. An apply in a
benchmark's process with Python's defaults measured 7 % (all sets) to 23 % (operations) more
CPU per event than the same apply with the applier's settings (benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from profilehook.constants import GC_YOUNG_THRESHOLD


@contextlib.contextmanager
def as_the_applier() -> Iterator[None]:
    """Within: the collector set as the applier process sets it; after: as it was."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
