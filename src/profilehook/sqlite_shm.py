"""Whether any connection, of any process, committed to a SQLite file since we last looked, told
by a memory read instead of a statement.

A database in WAL mode has a WAL-index beside it (``<file>-shm``), shared memory that every
connection maps. It starts with the WAL-index header (SQLite's ``WalIndexHdr``, wal.c; "The
WAL-Index Format" in https://www.sqlite.org/walformat.html), 48 bytes in native byte order:

    0  iVersion (3007000)   4 unused          8 iChange: +1 at every commit (and WAL restart)
    12 isInit, bigEndCksum  14 szPage         16 mxFrame: last valid frame of the WAL
    20 nPage                24 aFrameCksum[2] 32 aSalt[2]: new at every WAL reset
    40 aCksum[2]

A writer stores its new header in the second copy (bytes 48-95), then, after a memory barrier,
in this first one: once these 48 bytes are read unchanged, no commit has completed since. They
also change without a commit (a checkpoint that resets the WAL), which only costs a cache miss.
``PRAGMA data_version`` answers the same question, but it is a statement: it lets go of the GIL,
and on a busy event loop that meant waiting for other threads to give it back.

The hazard, and why one mapping per file per process: POSIX locks belong to the process and the
file, not to a descriptor, so closing *any* descriptor of ``<file>-shm`` drops every lock the
process holds on it, SQLite's among them (its "DMS" lock, which tells another process that the
index is in use and must not be reset; "How To Corrupt An SQLite Database File", 2.2). The
descriptor (and the one ``mmap`` duplicates) therefore stays open while any ``SqliteDatabase`` of
this process uses the file: each ``acquire`` takes a reference, each ``release`` gives one back,
and the last ``release``, which its caller makes only after closing all its connections, closes
them. A process that opens the file through other means must keep its connections within the
lifetime of a ``SqliteDatabase`` on it.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

HEADER_BYTES = 48  # the header's first copy
WAL_INDEX_VERSION = 3007000  # iVersion of every SQLite since 3.7.0
# POSIX only: elsewhere SQLite's locks and shared memory work differently (the caller then asks
# SQLite with PRAGMA data_version).
SUPPORTED = os.name == "posix"


@dataclass(slots=True)
class WalIndex:
    """One process's hold on a ``-shm`` file: its descriptor, and its mapping when the file
    holds a WAL-index this code can read (``map`` is None otherwise: the caller asks SQLite)."""

    shm_path: str
    fd: int
    map: mmap.mmap | None
    readable: bool  # the index is of the version this code knows
    references: int = 1

    def header(self) -> bytes | None:
        """The WAL-index header: differs after every commit; None when not readable."""
        return self.map[:HEADER_BYTES] if self.readable and self.map is not None else None


_lock = threading.Lock()
_held: dict[str, WalIndex] = {}


def acquire(database: Path) -> WalIndex | None:
    """This process's hold on ``database``'s WAL-index, shared with its other users of the file;
    None when there is no ``-shm`` to open (not in WAL mode, exclusive locking, another
    platform). Call it while a connection to the file is open (the index then exists and is not
    reset under us), and ``release`` it after closing them all."""
    if not SUPPORTED:
        return None
    shm_path = os.path.realpath(f"{database}-shm")
    with _lock:
        index = _held.get(shm_path)
        if index is not None:
            index.references += 1
            return index
        try:
            fd = os.open(shm_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        # From here on ``fd`` is closed only by the last ``release``, even when the file cannot
        # be mapped: closing it now would drop SQLite's locks.
        mapping = _map(fd)
        index = _held[shm_path] = WalIndex(shm_path, fd, mapping, _known(mapping))
        return index


def release(index: WalIndex) -> None:
    """Give back one reference; the last one closes the mapping and its descriptors (which drops
    this process's locks on the file: its connections must all be closed by then)."""
    with _lock:
        index.references -= 1
        if index.references > 0:
            return
        if _held.get(index.shm_path) is index:
            del _held[index.shm_path]
        index.readable = False
        if index.map is not None:
            index.map.close()  # and the duplicate of ``fd`` that Python's mmap keeps
            index.map = None
        os.close(index.fd)


def held() -> dict[str, int]:
    """The ``-shm`` files held and their references (for tests and diagnostics)."""
    with _lock:
        return {path: index.references for path, index in _held.items()}


def _map(fd: int) -> mmap.mmap | None:
    """The header's page, read-only and shared: we see the writers' stores and can never write
    into the index."""
    try:
        if os.fstat(fd).st_size < 2 * HEADER_BYTES:
            return None  # reading a mapping past the end of the file would fault
        return mmap.mmap(fd, HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
    except (OSError, ValueError):
        return None


def _known(mapping: mmap.mmap | None) -> bool:
    if mapping is None:
        return False
    version, _, _, is_init = struct.unpack_from("=IIIB", mapping, 0)
    return bool(version == WAL_INDEX_VERSION and is_init == 1)
