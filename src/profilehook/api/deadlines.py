"""Deadlines for slow clients and slow backends, without a timer per request.

A request on the ingest path says which phase it is in: waiting for a backend (the key
lookup, the durable append: ``backend_timeout_s``) or reading its body (``body_timeout_s``).
One watchdog task, alive only while some request is watched, wakes every ``TICK_S``; for a
request past its deadline it sends the answer itself (``503`` + ``Retry-After`` for a backend,
``408`` for a body) and cancels the request's work. It answers rather than waiting for the
cancellation to arrive because a driver may take its time over it: psycopg spends up to ten
seconds trying to cancel a query on a server that does not answer. Entering a phase is two
attribute writes, where ``asyncio.timeout`` would arm and cancel a timer each time (several
microseconds on a hot path of about ten).

A ``503`` after a backend deadline means "not known to be stored": the append may still
complete. Retrying with the same ``event_id`` is exact (duplicates are dropped).

The same object remembers whether durable writes are failing, which ``/readyz`` reports.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, TypeVar

from starlette.types import Send

from profilehook.api.responses import send_error
from profilehook.constants import (
    BACKEND_TIMEOUT_EXTRA_MAX_S,
    BACKEND_TIMEOUT_PER_EVENT_S,
    READY_FAILURE_HOLD_S,
)
from profilehook.errors import ProfilehookError, RequestTimeout, StorageUnavailable
from profilehook.settings import Settings

T = TypeVar("T")
TICK_S = 0.1
BODY_SINCE = "profilehook.body_since"
"""A scope's key for when its body began to be awaited (``time.monotonic()``), when that was
before its handler ran: the HTTP protocol awaits a hot request's body itself (api/protocol.py),
and hands one still incomplete to the handler, whose body deadline counts from then."""
_BACKEND, _BODY, _NONE = 0, 1, 2
# Work cancelled after its answer was sent, kept referenced until it ends.
_abandoned: set[asyncio.Future[Any]] = set()


class AlreadyAnswered(ProfilehookError):
    """The watchdog answered this request at its deadline with ``error``: await ``answer``
    (the send in progress) and send nothing more."""

    def __init__(self, answer: asyncio.Task[None], error: ProfilehookError):
        super().__init__(error.detail, error.headers)
        self.status_code = error.status_code
        self.answer = answer
        self.error = error


class Deadlines:
    """Phase deadlines of the requests in flight, and the health of durable writes."""

    def __init__(self, body_timeout_s: float, backend_timeout_s: float, tick_s: float = TICK_S):
        self.body_timeout_s = body_timeout_s
        self.backend_timeout_s = backend_timeout_s
        self._tick_s = tick_s
        self._watched: dict[asyncio.Future[Any], Watch] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._failing_since_s: float | None = None
        self._failure = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Deadlines:
        return cls(settings.body_timeout_s, settings.backend_timeout_s)

    def backend_timeout_for(self, events: int) -> float:
        """The backend deadline of a request that stores ``events`` events: the setting for
        one, growing with each event past the first (up to a cap)."""
        extra_s = min(max(events - 1, 0) * BACKEND_TIMEOUT_PER_EVENT_S, BACKEND_TIMEOUT_EXTRA_MAX_S)
        return self.backend_timeout_s + extra_s

    def watch(self, send: Send, work: asyncio.Future[Any] | None = None) -> Watch:
        """``with deadlines.watch(send) as watch:`` around a request's work, which begins
        waiting for a backend (the key lookup); ``watch`` moves it to its next phase. Nothing
        may be sent inside the block: at its deadline the watchdog sends the answer.

        ``work``: a request's backend wait given as a future rather than as the calling task
        (a request answered from its future's callback, without a task of its own); at the
        deadline the future is cancelled, and ``watch.ended`` is called when it is done."""
        task = asyncio.current_task() if work is None else work
        assert task is not None, "deadlines watch a request's task"
        watch = Watch(self, task, send)
        self._watched[task] = watch
        watchdog = self._watchdog
        if watchdog is None or watchdog.get_loop() is not task.get_loop():  # (a new loop: tests)
            self._watchdog = task.get_loop().create_task(self._watch(), name="deadlines")
        return watch

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._watched:
                await asyncio.sleep(self._tick_s)
                now_s = time.monotonic()
                for watch in list(self._watched.values()):
                    if (
                        watch.deadline_s <= now_s
                        and watch.answer is None
                        and watch.task.get_loop() is loop
                    ):
                        watch.expire(self._error(watch))
        finally:
            if self._watchdog is asyncio.current_task():
                self._watchdog = None

    def _error(self, watch: Watch) -> ProfilehookError:
        if watch.phase == _BODY:
            return RequestTimeout(self.body_timeout_s)
        return StorageUnavailable(
            f"Storage did not answer within {watch.backend_timeout_s:g} s, retry later"
        )

    # -- health, for /readyz ----------------------------------------------------------------

    def _wrote(self) -> None:
        self._failing_since_s = None

    def failed(self, error: ProfilehookError) -> None:
        """A request's backend failed with ``error``: a ``StorageUnavailable`` marks durable
        writes failing (what the ``Watch`` of a request notes by itself)."""
        if isinstance(error, StorageUnavailable):
            self._failing_since_s = time.monotonic()
            self._failure = str(error.detail)

    def failing(self) -> str | None:
        """Why durable writes fail, when the last one failed within ``READY_FAILURE_HOLD_S``.

        The mark expires so that an instance a load balancer took out of rotation, and that
        therefore gets no writes to prove itself with, is tried again.
        """
        since = self._failing_since_s
        if since is None or time.monotonic() - since > READY_FAILURE_HOLD_S:
            return None
        return self._failure


class Watch:
    """One request's current phase and deadline; a phase change is two attribute writes."""

    __slots__ = (
        "answer",
        "backend_timeout_s",
        "deadline_s",
        "deadlines",
        "error",
        "phase",
        "send",
        "task",
    )

    def __init__(self, deadlines: Deadlines, task: asyncio.Future[Any], send: Send):
        self.deadlines = deadlines
        self.task = task
        self.send = send
        self.backend_timeout_s = deadlines.backend_timeout_s
        self.deadline_s = time.monotonic() + self.backend_timeout_s
        self.phase = _BACKEND
        self.answer: asyncio.Task[None] | None = None
        self.error: ProfilehookError | None = None

    def reading_body(self, since: float | None = None) -> None:
        """Reading the body, awaited since ``since`` (``time.monotonic()``; None: now)."""
        self.deadline_s = (time.monotonic() if since is None else since) + (
            self.deadlines.body_timeout_s
        )
        self.phase = _BODY

    def awaiting_backend(self, events: int = 1) -> None:
        """Waiting for a backend to store ``events`` events (or to answer a lookup)."""
        deadlines = self.deadlines
        timeout_s = self.backend_timeout_s = (
            deadlines.backend_timeout_s if events <= 1 else deadlines.backend_timeout_for(events)
        )
        self.deadline_s = time.monotonic() + timeout_s
        self.phase = _BACKEND

    def unwatched(self) -> None:
        """No deadline until the next phase (for work bounded by its own limits)."""
        self.deadline_s = math.inf
        self.phase = _NONE

    def expire(self, error: ProfilehookError) -> None:
        """Answer ``error`` now and cancel the request's work (the watchdog's part)."""
        self.answer = self.task.get_loop().create_task(send_error(self.send, error))
        self.error = error
        self.deadlines.failed(error)
        self.task.cancel()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop watching: ``ended``, the task's cancellation by the watchdog undone."""
        if self.answer is not None and self.error is not None:
            assert isinstance(self.task, asyncio.Task)
            self.task.uncancel()
        self.ended(exc)

    def ended(self, exc: BaseException | None) -> None:
        """Stop watching the work, which ended with ``exc`` (None: it succeeded). After the
        watchdog answered, raise ``AlreadyAnswered`` whatever the work came to (it was
        cancelled, or finished too late to be told).

        Only an append that completed clears the failure mark, and only a backend that failed
        sets it; other outcomes (a 422, a 401) say nothing about storage.
        """
        deadlines = self.deadlines
        del deadlines._watched[self.task]
        if self.answer is not None and self.error is not None:
            raise AlreadyAnswered(self.answer, self.error) from None
        if exc is None:
            if self.phase == _BACKEND and deadlines._failing_since_s is not None:
                deadlines._wrote()
        elif isinstance(exc, StorageUnavailable):
            deadlines.failed(exc)


async def within(timeout_s: float, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, or ``TimeoutError`` after ``timeout_s`` - on time even when the
    work does not yield to cancellation at once (it is cancelled and left to end alone)."""
    task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)
    raise TimeoutError


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned failure is not an unhandled one
