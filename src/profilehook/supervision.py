"""Keeping a child process running: started again after a backoff whenever it exits or cannot
be started, until told to stop. The applier's child (applier_process.py) and the delivery child
(destinations/process.py) are both kept this way; each says how it starts and watches its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio.subprocess import Process
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
HEALTHY_RUN_S = 60.0  # a child that ran this long starts the backoff over when it dies


async def keep_running(
    name: str,
    spawn: Callable[[], Awaitable[Process]],
    supervise: Callable[[Process, asyncio.Event], Awaitable[int]],
    stop: asyncio.Event,
) -> None:
    """Until ``stop``: ``spawn`` a child and ``supervise`` it (which returns its exit code, and
    stops it once ``stop`` is set); when it exits, or cannot be started (fork/exec fails for a
    while: EAGAIN, ENOMEM), log it as ``name`` and start it again after the next backoff of
    ``RESTART_BACKOFF_S``. Never gives up: a service whose child is gone does nothing useful."""
    failures = 0
    while not stop.is_set():
        started_s = time.monotonic()
        try:
            proc = await spawn()
        except OSError as exc:
            outcome = f"could not start ({exc})"
        else:
            outcome = f"exited with code {await supervise(proc, stop)}"
        if stop.is_set():
            return
        if time.monotonic() - started_s > HEALTHY_RUN_S:
            failures = 0  # it had been running fine: this is a new failure, not a streak
        delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
        failures += 1
        log.error("%s %s; restarting in %.1fs", name, outcome, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
