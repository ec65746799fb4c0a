"""The change feed's pull (README, Getting changes out): ``GET /v1/changes``, answered at once
when changes exist past the cursor and otherwise long-polled, and ``GET /v1/changes/stream``,
the same as Server-Sent Events whose ``id`` is the cursor (``Last-Event-ID`` resumes).

A waiting reader looks at the store every ``CHANGES_POLL_S``: the changes are written by the
applier, which may be another process (serve's applier process, a worker elsewhere); each look
is one indexed read, bounded by the backend timeout. A store that can tell a commit by a memory
read (``feed_mark``: SQLite's WAL-index header) has it looked at every ``CHANGES_MARK_POLL_S``
instead, by one timer for all the waiting readers (``_Commits``), which wakes them when it
moves: a change is seen a few milliseconds after its commit, not up to 50.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from profilehook import constants as c
from profilehook.api.access import ScopedRoute
from profilehook.api.deadlines import within
from profilehook.api.responses import json_response
from profilehook.changes import Change
from profilehook.errors import (
    CursorExpired,
    InvalidCursor,
    StorageUnavailable,
    ValidationFailed,
)
from profilehook.service import Services
from profilehook.stores.base import ChangeFeed, KeyGrant
from profilehook.validation import Problem, problem, value_error

_encode = msgspec.json.Encoder().encode


def change_routes(services: Services) -> list[ScopedRoute]:
    store = services.store
    settings = services.settings
    feed = _Feed(store, settings.backend_timeout_s, settings.changes_retention_days)

    async def changes(request: Request, grant: KeyGrant) -> Response:
        after, limit, wait_s = _query(request)
        deadline = time.monotonic() + wait_s
        mark = feed.mark()  # before the read: a commit after it moves the mark
        found = await feed.read(grant.workspace, after, limit)
        while not found and time.monotonic() < deadline:
            await feed.commits.after(mark, min(c.CHANGES_POLL_S, deadline - time.monotonic()))
            mark = feed.mark()
            found = await feed.read(grant.workspace, after, limit)
        return json_response(
            {
                "changes": [change.view() for change in found],
                "next_cursor": found[-1].cursor if found else after,
            }
        )

    async def stream(request: Request, grant: KeyGrant) -> Response:
        resume = request.headers.get("last-event-id")
        after, limit, _ = _query(request, resume)
        first = await feed.read(grant.workspace, after, limit)  # a 410 or 422 before the stream
        return StreamingResponse(
            feed.events(grant.workspace, after, limit, first),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return [
        ScopedRoute("/v1/changes", changes, access="read", store=store),
        ScopedRoute("/v1/changes/stream", stream, access="read", store=store),
    ]


class _Feed:
    """Reads of one workspace's changes, each bounded by the backend timeout."""

    def __init__(self, store: ChangeFeed, timeout_s: float, retention_days: int):
        self.store = store
        self.timeout_s = timeout_s
        self.retention_days = retention_days
        self.commits = _Commits(store)

    def mark(self) -> object:
        return self.store.feed_mark()

    async def read(self, workspace: str, after: str | None, limit: int) -> list[Change]:
        """Raises ``ValidationFailed`` (a cursor never issued), ``CursorExpired`` (410),
        ``StorageUnavailable``."""
        try:
            return await within(self.timeout_s, self.store.read_changes(workspace, after, limit))
        except TimeoutError:
            raise StorageUnavailable(
                f"Storage did not answer within {self.timeout_s:g} s, retry later"
            ) from None
        except InvalidCursor:
            raise ValidationFailed([_bad_cursor(after)]) from None
        except CursorExpired:
            raise CursorExpired(self.retention_days) from None

    async def events(
        self, workspace: str, after: str | None, limit: int, first: list[Change]
    ) -> AsyncIterator[bytes]:
        """The stream: every change from ``after`` on, then each new one as it comes; a comment
        line every ``CHANGES_STREAM_KEEPALIVE_S`` while nothing does (proxies keep it open)."""
        found = first
        quiet_since = time.monotonic()
        mark = self.mark()  # a commit since ``first`` was read is seen at the next look at most
        while True:
            if found:
                yield b"".join(_event(change) for change in found)
                after = found[-1].cursor
                quiet_since = time.monotonic()
            else:
                if time.monotonic() - quiet_since >= c.CHANGES_STREAM_KEEPALIVE_S:
                    yield b": keep-alive\n\n"
                    quiet_since = time.monotonic()
                await self.commits.after(mark, c.CHANGES_POLL_S)
            mark = self.mark()
            try:
                found = await self.read(workspace, after, limit)
            except StorageUnavailable:
                found = []  # the client keeps its place; the next look may succeed
            except CursorExpired as exc:  # fell more than the retention behind
                yield b"event: error\ndata: " + _encode({"detail": exc.detail}) + b"\n\n"
                return


class _Commits:
    """Waits for a commit to the store, for every waiting reader of one process at once: one
    task looks at ``feed_mark`` every ``CHANGES_MARK_POLL_S`` while anyone waits, and wakes them
    all when it moved; a store without a mark is waited for by time alone."""

    def __init__(self, store: ChangeFeed):
        self.store = store
        self._moved: asyncio.Future[None] | None = None
        self._waiting = 0
        self._watching: asyncio.Task[None] | None = None

    async def after(self, mark: object, timeout_s: float) -> None:
        """Return once the mark is no longer ``mark`` (a commit, or a checkpoint's reset of the
        WAL, since it was taken), or after ``timeout_s``, whichever comes first."""
        if timeout_s <= 0:
            return
        if mark is None:
            await asyncio.sleep(timeout_s)
            return
        if self.store.feed_mark() != mark:
            return
        if self._moved is None:
            self._moved = asyncio.get_running_loop().create_future()
        moved = self._moved
        self._waiting += 1
        if self._watching is None or self._watching.done():
            self._watching = asyncio.create_task(self._watch(mark))
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(moved)
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1

    async def _watch(self, last: object) -> None:
        while self._waiting:
            await asyncio.sleep(c.CHANGES_MARK_POLL_S)
            now = self.store.feed_mark()
            if now != last:
                last = now
                moved, self._moved = self._moved, None
                if moved is not None and not moved.done():
                    moved.set_result(None)


def _event(change: Change) -> bytes:
    return b"id: %s\ndata: %s\n\n" % (change.cursor.encode(), _encode(change.view()))


def _bad_cursor(after: str | None) -> Problem:
    return value_error(("query", "after"), after, "not a cursor of this feed")


def _query(request: Request, resume: str | None = None) -> tuple[str | None, int, float]:
    """``after`` (``resume``, a Last-Event-ID, wins), ``limit``, ``wait_s``. Raises
    ``ValidationFailed`` with every problem."""
    params = request.query_params
    problems: list[Problem] = []
    after = resume or params.get("after") or None  # empty: from the start
    if after is not None and (len(after) > 64 or not after.isprintable()):
        problems.append(_bad_cursor(after))
    limit = _number(params, "limit", c.CHANGES_PAGE_DEFAULT, 1, c.CHANGES_PAGE_MAX, problems)
    wait_s = _number(params, "wait_s", 0, 0, c.CHANGES_WAIT_MAX_S, problems)
    if problems:
        raise ValidationFailed(problems)
    return after, int(limit), wait_s


def _number(
    params: QueryParams, name: str, default: int, low: int, high: int, problems: list[Problem]
) -> float:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw) if name == "wait_s" else int(raw)
    except ValueError:
        value = None
    if value is None or value != value or not low <= value <= high:
        kind = "a number" if name == "wait_s" else "a whole number"
        problems.append(
            problem(
                "int_range" if name == "limit" else "float_range",
                ("query", name),
                f"Input should be {kind} from {low} to {high}",
                raw,
            )
        )
        return default
    return value
