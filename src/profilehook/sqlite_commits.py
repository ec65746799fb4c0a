"""Whether any connection, of any process, committed to a SQLite file since last looked, told
without running a statement.

A file in WAL mode has a WAL-index beside it (``<file>-shm``), shared memory that every
connection maps; its header (https://www.sqlite.org/walformat.html, "The WAL-Index Header")
holds ``iChange``, which each write transaction increments, and the WAL's size and salts: its
first 48 bytes differ after every commit. Reading them from our own mapping of the file is a
memory read, where ``PRAGMA data_version`` is a statement that lets go of the GIL: on the event
loop, under load, that meant waiting for the log's threads to give it back (up to ~0.5 ms a
check, 15-19 % of the loop's time in a profile of the batch endpoint; benchmarks/README.md).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

WAL_INDEX_HEADER_BYTES = 48  # the header's first copy; writers update it after the second


class CommitWatch:
    """``mark()`` differs after any commit to the file (it may also differ without one, which
    only costs the caller a cache miss). Open it with a connection to the file open and in WAL
    mode (the index then exists and stays while that connection is open); when the index
    cannot be mapped, ``mark()`` is None and the caller asks SQLite instead."""

    def __init__(self, database: Path):
        self._map: mmap.mmap | None = None
        try:
            fd = os.open(f"{database}-shm", os.O_RDONLY)
        except OSError:
            return
        try:
            if os.fstat(fd).st_size >= WAL_INDEX_HEADER_BYTES:
                self._map = mmap.mmap(fd, WAL_INDEX_HEADER_BYTES, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            self._map = None
        finally:
            os.close(fd)

    def mark(self) -> bytes | None:
        return None if self._map is None else self._map[:WAL_INDEX_HEADER_BYTES]

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
