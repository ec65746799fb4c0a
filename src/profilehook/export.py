"""`profilehook export`: every profile of a workspace as JSONL.

Each line is one contact exactly as ``GET /v1/contacts/{contact_id}`` answers it. Profiles are
read a page at a time while the service may go on applying: each line is one contact as it was
when its page was read, and a contact applied meanwhile may or may not be in the file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import msgspec

from profilehook.api.routes import contact_view
from profilehook.stores.base import Store

Progress = Callable[[int, int], None]
"""Called with (contacts looked at, contacts stored)."""

EXPORT_PAGE_CONTACTS = 1_000
_encode = msgspec.json.Encoder().encode


async def export_jsonl(
    store: Store, workspace: str, out: BinaryIO, progress: Progress | None = None
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
