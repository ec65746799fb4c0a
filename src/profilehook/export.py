"""`profilehook export`: every profile of a workspace as JSONL.

Each line is one contact exactly as ``GET /v1/contacts/{contact_id}`` answers it. Profiles are
read a page at a time while the service may go on applying: each line is one contact as it was
when its page was read, and a contact applied meanwhile may or may not be in the file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

from profilehook.errors import OutputUnwritable
from profilehook.stores.base import ProfileStore
from profilehook.views import contact_view

Progress = Callable[[int, int], None]
"""Called with (contacts looked at, contacts stored)."""

EXPORT_PAGE_CONTACTS = 1_000
_encode = msgspec.json.Encoder().encode


async def export_jsonl(
    store: ProfileStore, workspace: str, out: BinaryIO, progress: Progress | None = None
) -> int:
    """Write every contact of ``workspace`` to ``out``, one JSON object a line, in the store's
    contact_id order; the number written. Deleted contacts are not written.

    Raises ``StorageUnavailable`` when the store cannot be read, ``OSError`` when ``out``
    cannot be written.
    """
    total = await store.count_contacts(workspace)
    looked_at = written = 0
    after: str | None = None
    while True:
        contacts, after = await store.contacts_page(workspace, after, EXPORT_PAGE_CONTACTS)
        out.write(b"".join(_encode(contact_view(c)) + b"\n" for c in contacts))
        written += len(contacts)
        looked_at = looked_at + EXPORT_PAGE_CONTACTS if after is not None else total
        total = max(total, looked_at)  # contacts created meanwhile
        if progress is not None:
            progress(looked_at, total)
        if after is None:
            return written


@contextlib.contextmanager
def whole_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write the export into that replaces ``path`` only once complete and on disk.

    The data goes to a temporary file beside the target (``path`` with its symlinks resolved),
    which is renamed over it at the end; on any failure (SIGTERM too, when it raises) it is
    removed and the target left as it was. The target keeps its permissions; a new file gets
    the umask's. A target that is not a regular file (``/dev/null``, a FIFO) is written
    directly. Raises ``OutputUnwritable`` on an ``OSError``.
    """
    target = Path(os.path.realpath(path))
    try:
        try:
            found = os.stat(target).st_mode
            mode: int | None = stat.S_IMODE(found)
            regular = stat.S_ISREG(found)
        except FileNotFoundError:
            mode, regular = None, True
        if not regular:
            with target.open("wb") as direct:
                yield direct
            return
        fd, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
    except OSError as exc:
        raise OutputUnwritable(f"Cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode if mode is not None else 0o666 & ~_umask())
        os.replace(temporary, target)
        _fsync_directory(target.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise OutputUnwritable(f"Cannot write {path}: {exc.strerror or exc}") from None
        raise


def _umask() -> int:
    """The process's umask, read without setting it (other threads may be creating files)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: set and restore it
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
