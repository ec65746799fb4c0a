"""Segments (README, Segments): created, listed, shown and deleted by the API and the CLI
through these functions, and filled in the background by ``Backfiller`` (in ``serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, cast

from profilehook.constants import MAX_SEGMENT_NAME_CHARS, MAX_SEGMENTS_PER_WORKSPACE
from profilehook.errors import NotFound, StorageUnavailable, ValidationFailed
from profilehook.events import now_us
from profilehook.filters import parse_filter, to_json
from profilehook.stores.base import Store
from profilehook.stores.segments import Segment, Segments
from profilehook.validation import Problem, problem, required_string, value_error

log = logging.getLogger(__name__)
BACKFILL_POLL_S = 1.0  # how soon a segment created by another process starts filling
BACKFILL_PAUSE_S = 0.01  # between two chunks: the applier's writes go first
BACKFILL_LOG_INTERVAL_S = 60.0


def of(store: Store) -> Segments:
    """The store's segments (every backend has them: tests/test_segment_contract.py)."""
    return cast(Segments, store)


def view(segment: Segment) -> dict[str, Any]:
    """A segment as the API answers it and ``segments … --json`` prints it."""
    return {
        "segment_id": segment.segment_id,
        "name": segment.name,
        "filter": to_json(segment.filter),
        "size": segment.size,
        "status": segment.status,
        "scanned": segment.scanned,
        "created_at": segment.created_us / 1_000_000,
    }


def from_json(body: Any, loc: tuple[str, ...] = ("body",)) -> tuple[str, Any]:
    """The name and the filter of a segment to create. Raises ``ValidationFailed`` with every
    problem (the filter's inside it)."""
    problems: list[Problem] = []
    if not isinstance(body, dict):
        raise ValidationFailed(
            [problem("dict_type", loc, "Input should be a valid dictionary", body)]
        )
    for key, value in body.items():
        if key not in ("name", "filter"):
            problems.append(
                problem("extra_forbidden", (*loc, key), "Extra inputs are not permitted", value)
            )
    name = required_string(body.get("name"), (*loc, "name"), problems, MAX_SEGMENT_NAME_CHARS, body)
    node = None
    if "filter" not in body:
        problems.append(problem("missing", (*loc, "filter"), "Field required", body))
    else:
        node, found = parse_filter(body["filter"], (*loc, "filter"))
        problems += found
    if problems:
        raise ValidationFailed(problems)
    return str(name), node


async def create(store: Store, workspace: str, body: Any) -> Segment:
    """A new segment, ``building``: the backfill fills it from the profiles there are. Raises
    ``ValidationFailed`` (bad name or filter, or the workspace has its most segments)."""
    name, node = from_json(body)
    segment = Segment(f"seg_{uuid.uuid4().hex}", workspace, name, node, now_us())
    # The store counts and inserts at once: creations at the same moment cannot pass the limit.
    if not await of(store).create_segment(segment, MAX_SEGMENTS_PER_WORKSPACE):
        raise ValidationFailed(
            [
                value_error(
                    ("body",),
                    None,
                    f"a workspace has at most {MAX_SEGMENTS_PER_WORKSPACE} segments;"
                    " delete one first",
                )
            ]
        )
    return segment


async def get(store: Store, workspace: str, segment_id: str) -> Segment:
    """Raises ``NotFound`` (also for another workspace's segment)."""
    found = await of(store).get_segment(workspace, segment_id)
    if found is None:
        raise NotFound("Segment not found")
    return found


async def delete(store: Store, workspace: str, segment_id: str) -> None:
    if not await of(store).delete_segment(workspace, segment_id):
        raise NotFound("Segment not found")


async def fill(store: Store, stop: asyncio.Event | None = None) -> int:
    """Backfill every building segment to the end (or until ``stop``); how many chunks."""
    chunks = 0
    segments = of(store)
    for workspace, segment_id in await segments.building_segments():
        while stop is None or not stop.is_set():
            chunks += 1
            if await segments.backfill_segment(workspace, segment_id):
                break
            await asyncio.sleep(BACKFILL_PAUSE_S)
    return chunks


class Backfiller:
    """Fills building segments until stopped: at once when ``wake`` is called (a segment
    created through this process), and every ``BACKFILL_POLL_S`` for others'. A failure is
    logged and retried on the next pass; the work is kept per chunk, so a restart resumes."""

    def __init__(self, store: Store, poll_s: float = BACKFILL_POLL_S):
        self.store = store
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        logged_s = -BACKFILL_LOG_INTERVAL_S
        while not stop.is_set():
            self._wake.clear()
            try:
                await fill(self.store, stop)
            except Exception as exc:  # the backfill must outlive any one failure
                if time.monotonic() - logged_s >= BACKFILL_LOG_INTERVAL_S:
                    logged_s = time.monotonic()
                    if isinstance(exc, StorageUnavailable):
                        log.warning("segment backfill: %s; retrying", exc.detail)
                    else:
                        log.exception("segment backfill: unexpected failure; retrying")
            stopping = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait(
                {stopping, woken}, timeout=self.poll_s, return_when="FIRST_COMPLETED"
            )
            for task in (stopping, woken):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
