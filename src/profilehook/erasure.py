"""Erasure: forget a contact everywhere profilehook keeps it, durably and resumably.

One library function per action, called by the CLI (`profilehook contacts erase|unsuppress`)
and by the routes (`DELETE /v1/contacts/{id}`, `GET /v1/erasures/{id}`,
`DELETE /v1/suppressions/{contact_id}`):

1. ``request_erasure`` records a pending erasure in the store (its time T = now) and marks the
   contact erased up to T. From that commit on, every apply drops the contact's events with an
   event time at or before T (status ``erased``), and all of them while it is suppressed.
2. An ``Eraser`` executes pending erasures (``execute``), up to ``ERASURES_PER_PASS`` together:
   it removes each contact's events still in the log (``Queue.erase_pending``) and what the
   store holds of it up to T (``Erasures.erase_contacts``), leaves no bytes of them in the files
   (``scrub``: once a pass, since a scrub copies a whole file), and only then marks the
   erasures done. Every step is idempotent: a process killed midway leaves the erasures
   pending, and the next eraser (the restarted one, or any other) does them again.

Who runs an ``Eraser``: ``serve`` (the server process, which owns the embedded log's writes)
and ``profilehook worker``; ``contacts erase --wait`` runs one pass itself, so that an erasure
completes without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence

from profilehook import constants as c
from profilehook.errors import NotFound, StorageUnavailable, ValidationFailed
from profilehook.events import now_us
from profilehook.queues.base import Queue
from profilehook.stores.base import Erasure, Erasures
from profilehook.validation import value_error

log = logging.getLogger(__name__)

ERASER_POLL_S = 1.0  # how often an eraser looks for erasures requested through other processes
ERASURES_PER_PASS = 100
ERASER_LOG_INTERVAL_S = 30.0  # a failing eraser logs at most this often
# Test hook: seconds to pause between an erasure's steps, so that a test can kill the process
# that executes it midway (tests/test_erasure_bytes.py). Never set in production.
STEP_PAUSE_ENV = "PROFILEHOOK_TEST_ERASURE_STEP_PAUSE_S"


def check_contact_id(contact_id: str, loc: tuple[str, ...] = ("path", "contact_id")) -> None:
    """The ids ingestion accepts; another could name no contact. Raises ``ValidationFailed``."""
    if not contact_id or "\x00" in contact_id or len(contact_id) > c.MAX_CONTACT_ID_CHARS:
        rule = f"a contact id has 1 to {c.MAX_CONTACT_ID_CHARS} characters and no U+0000"
        raise ValidationFailed([value_error(loc, contact_id, rule)])


async def request_erasure(
    store: Erasures, workspace: str, contact_id: str, suppress: bool = False
) -> Erasure:
    """Record a pending erasure of the contact as of now, durably. A contact that was never
    seen is erased all the same (its events may still be in the log or arrive late, and the
    answer must not tell whether it exists)."""
    check_contact_id(contact_id)
    erasure = Erasure(
        erasure_id=f"era_{uuid.uuid4().hex}",
        workspace=workspace,
        contact_id=contact_id,
        requested_us=now_us(),
        suppress=suppress,
    )
    await store.request_erasure(erasure)
    return erasure


async def get_erasure(store: Erasures, workspace: str, erasure_id: str) -> Erasure:
    """Raises ``NotFound`` for an id this workspace never issued."""
    found = await store.get_erasure(workspace, erasure_id)
    if found is None:
        raise NotFound("Erasure not found")
    return found


async def unsuppress(store: Erasures, workspace: str, contact_id: str) -> None:
    """Let the contact's later events in again. Raises ``NotFound`` when it is not suppressed."""
    check_contact_id(contact_id)
    if not await store.unsuppress(workspace, contact_id):
        raise NotFound("Contact is not suppressed")


async def execute(queue: Queue, store: Erasures, erasures: Sequence[Erasure]) -> None:
    """Carry out erasures to the end, together (see the module's docstring); idempotent."""
    await _pause()
    for erasure in erasures:
        await queue.erase_pending(
            erasure.workspace, erasure.contact_id, erasure.requested_us, everything=erasure.suppress
        )
    await _pause()
    await store.erase_contacts(erasures)
    await _pause()
    await queue.scrub()
    completed_us = now_us()
    for erasure in erasures:
        await store.complete_erasure(erasure.erasure_id, completed_us)
        log.info("erasure %s done", erasure.erasure_id)


async def execute_pending(queue: Queue, store: Erasures) -> int:
    """Carry out every pending erasure; returns how many were done."""
    done = 0
    while pending := await store.pending_erasures(ERASURES_PER_PASS):
        await execute(queue, store, pending)
        done += len(pending)
    return done


async def wait_done(store: Erasures, erasure: Erasure, timeout_s: float) -> Erasure:
    """The erasure once done, or as it is after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await store.get_erasure(erasure.workspace, erasure.erasure_id)
        if found is None or found.status == "done" or time.monotonic() >= deadline:
            return found or erasure
        await asyncio.sleep(0.1)


class Eraser:
    """Executes pending erasures until stopped: at once when ``wake`` is called (an erasure
    requested through this process), and every ``ERASER_POLL_S`` for the others'. A failure
    (a backend down) is logged and retried on the next pass."""

    def __init__(self, queue: Queue, store: Erasures, poll_s: float = ERASER_POLL_S):
        self.queue = queue
        self.store = store
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        logged_s = -ERASER_LOG_INTERVAL_S
        while not stop.is_set():
            self._wake.clear()
            try:
                await execute_pending(self.queue, self.store)
            except Exception as exc:  # the eraser must outlive any one failure
                # A backend down: one line now and then, not one a pass.
                if time.monotonic() - logged_s >= ERASER_LOG_INTERVAL_S:
                    logged_s = time.monotonic()
                    if isinstance(exc, StorageUnavailable):
                        log.warning("eraser: %s; retrying", exc.detail)
                    else:
                        log.exception("eraser: unexpected failure; retrying")
            stopping = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait(
                {stopping, woken}, timeout=self.poll_s, return_when="FIRST_COMPLETED"
            )
            for task in (stopping, woken):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _pause() -> None:
    pause_s = float(os.environ.get(STEP_PAUSE_ENV) or 0)
    if pause_s > 0:
        log.warning("erasure: pausing %.1f s between steps (%s)", pause_s, STEP_PAUSE_ENV)
        await asyncio.sleep(pause_s)
