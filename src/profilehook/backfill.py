"""`profilehook import`: a JSONL file of native events into the durable log, in batches.

Each line is one event as ``POST /v1/properties`` takes it, checked alone. Valid lines are
appended to the log like any accepted request; the applier then applies them by event time, so
a historical backfill can never overwrite newer values.

A line without an ``event_id`` gets one derived from its content (``event_id_of_line``), so
importing a file again, whole or after an interruption, adds nothing: every line is a duplicate
of itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from profilehook.constants import MAX_BATCH_EVENTS
from profilehook.events import Event, now_us
from profilehook.queues.base import Queue
from profilehook.sources.native import event_from_object
from profilehook.validation import Problem, decode_json

Progress = Callable[[int, int], None]
"""Called with (bytes read, file size)."""

MAX_REPORTED_LINES = 100
IMPORTED_ID_PREFIX = "imp-"


@dataclass
class ImportResult:
    accepted: int = 0
    rejected: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)  # the first rejected lines

    def refuse(self, line_no: int, problems: list[Problem]) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_REPORTED_LINES:
            self.problems.append({"line": line_no, "detail": problems})


async def import_jsonl(
    queue: Queue,
    path: Path,
    workspace: str,
    progress: Progress | None = None,
    oldest_accepted_us: Callable[[int], int] | None = None,
) -> ImportResult:
    """Append every valid line of ``path`` to ``queue`` for ``workspace``. A line whose event
    time is before ``oldest_accepted_us(now)`` (the retention window's start) is refused.

    Raises ``OSError`` when the file cannot be read, ``StorageUnavailable`` when the log
    cannot take a batch (the batches before it are stored: importing again is harmless).
    """
    result = ImportResult()
    total = path.stat().st_size
    done = 0
    batch: list[Event] = []
    with path.open("rb") as lines:
        for line_no, line in enumerate(lines, start=1):
            done += len(line)
            if line.strip():
                _read_line(line, line_no, workspace, batch, result, oldest_accepted_us)
            if len(batch) >= MAX_BATCH_EVENTS:
                await queue.publish(batch)
                batch = []
                if progress is not None:
                    progress(done, total)
    if batch:
        await queue.publish(batch)
    if progress is not None:
        progress(total, total)
    return result


def _read_line(
    line: bytes,
    line_no: int,
    workspace: str,
    batch: list[Event],
    result: ImportResult,
    oldest_accepted_us: Callable[[int], int] | None,
) -> None:
    value, problems = decode_json(line, ("line", line_no))
    if not problems:
        if isinstance(value, dict) and value.get("event_id") is None:
            value["event_id"] = event_id_of_line(value)
        now = now_us()
        oldest_us = 0 if oldest_accepted_us is None else oldest_accepted_us(now)
        parsed = event_from_object(value, workspace, now, ("line", line_no), oldest_us)
        if isinstance(parsed, Event):
            batch.append(parsed)
            result.accepted += 1
            return
        problems = parsed
    result.refuse(line_no, problems)


def event_id_of_line(value: dict[str, Any]) -> str:
    """The event_id of an imported line that has none: a digest of its JSON value in canonical
    form (keys sorted at every level, no whitespace), so that the same event written with
    other spacing or key order is the same event, and importing twice changes nothing."""
    content = {k: v for k, v in value.items() if k != "event_id"}
    canonical = msgspec.json.encode(content, order="sorted")
    return IMPORTED_ID_PREFIX + hashlib.sha256(canonical).hexdigest()[:32]
