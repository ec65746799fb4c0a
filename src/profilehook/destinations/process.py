"""Delivery in a process of its own (``DeliveryProcess``), started by the applier runner (serve's
applier process and every ``profilehook worker``), so that the delivery loop (delivery.py) does
not take the applier's interpreter lock: in one process the loop's calls cost the apply up to
half its rate.

The child is the hidden ``profilehook deliver`` (``run_delivery``) with the parent's settings.
Its standard input is a pipe that says two things: a byte is a wake-up (the applier committed a
batch that wrote changes: fill and deliver now, instead of at the next look, every
``WAKE_POLL_S``), the end of the input is the order to stop (after the calls in flight end and
are recorded). The end comes when the parent stops it and when the parent dies, even by
``kill -9``: a child never outlives its applier. The wake-up is one byte per turn of the
parent's event loop, written without blocking; a full pipe drops it (the child has bytes to read
anyway), and the child reads everything waiting at once, so any number of commits make one pass.
A child that dies is started again after a backoff; the leases of the calls it had in flight run
out and they are sent again (at least once).

Only a store other processes share (a SQLite file, PostgreSQL) is delivered from a child: with
an in-memory store the child would deliver from a store of its own, empty; ``delivers_in_a_child``
says which, and the applier runner delivers in process otherwise.

Priority: the child runs ``NICENESS_STEP`` levels below its parent (``os.nice``, relative, so
never above it; the kernel stops at 19) and in its parent's session, which on Linux is its
scheduler autogroup (niceness orders threads only within one autogroup). In a ``worker`` (nice 0)
the child is at 5: where applying and delivering want the same core, the apply comes first and
delivery uses what it leaves (a commit wakes the child, a backlog waits). In serve's applier
process (nice 19, in the server's session) both are at 19, equal turns of what the server
leaves: a child *above* the applier there (nice 5 against 19 in one autogroup) starved the
apply and made the ingest -> delivery p99 worse (benchmarks/README.md, scenario L). It gets a
process group of its own, so a Ctrl-C in a terminal reaches only the parent, which stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from asyncio.subprocess import Process

from profilehook.destinations.delivery import Deliverer
from profilehook.settings import Settings
from profilehook.stores import open_store
from profilehook.supervision import keep_running

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0  # to finish the calls in flight and record them, before it is killed
WAKE_POLL_S = 0.25  # the child looks for work this often without a wake-up
WAKE = b"\x01"
NICENESS_STEP = 5  # the child's niceness above its parent's (module doc)


def delivers_in_a_child(settings: Settings) -> bool:
    """Whether the store is one another process can open and share (not ``memory://``)."""
    return not settings.store_url.startswith("memory:")


class DeliveryProcess:
    """Runs ``profilehook deliver`` until ``stop``, restarting it when it dies; ``wake`` tells it
    that changes were committed."""

    def __init__(self, settings: Settings, poll_s: float = WAKE_POLL_S):
        self.settings = settings
        self.poll_s = poll_s
        self.pid: int | None = None  # the running child's
        self.starts = 0
        self._wake_fd: int | None = None
        self._wake_pending = False

    def wake(self) -> None:
        """Changes were committed: one byte to the child, at most one per loop turn."""
        if self._wake_pending or self._wake_fd is None:
            return
        self._wake_pending = True
        asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        if self._wake_fd is None:
            return
        # A full pipe (the child is busy) already holds a wake-up; a closed one: it is gone.
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self._wake_fd, WAKE)

    async def run(self, stop: asyncio.Event) -> None:
        await keep_running("delivery process", self._spawn, self._supervise, stop)

    async def _spawn(self) -> Process:
        env = {**os.environ, **self.settings.to_env()}
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "profilehook",
                "deliver",
                *(() if self.poll_s == WAKE_POLL_S else ("--poll-s", str(self.poll_s))),
                env=env,
                stdin=read_fd,
                process_group=0,  # module doc: same session, its own group
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        os.set_blocking(write_fd, False)
        self._wake_fd = write_fd
        self.pid = proc.pid
        self.starts += 1
        return proc

    def _close_pipe(self) -> None:
        fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            os.close(fd)

    async def _supervise(self, proc: Process, stop: asyncio.Event) -> int:
        stopping = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(proc.wait())
        try:
            await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self._close_pipe()  # the child's order to finish and exit
        if not exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(exited), STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("delivery process did not stop within %ss; killing it", STOP_TIMEOUT_S)
                proc.kill()
        code = await exited
        self.pid = None
        return code


async def run_delivery(settings: Settings, poll_s: float = WAKE_POLL_S) -> None:
    """The child's side (``profilehook deliver``): deliver from the settings' store until
    standard input ends (or SIGTERM); each byte read is a wake-up."""
    # Before the store's threads start: threads inherit their creator's niceness.
    with contextlib.suppress(OSError):
        os.nice(NICENESS_STEP)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (module doc)
    store = open_store(
        settings.store_url,
        settings.data_dir,
        auth_cache_max_stale_s=settings.auth_cache_max_stale_s,
        store_timeout_s=settings.store_timeout_s,
    )
    await store.open()
    try:
        deliverer = Deliverer(store, settings, poll_s=poll_s)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(sys.stdin.fileno(), "rb", 0)
        )

        async def listen() -> None:
            while await reader.read(65_536):
                deliverer.changes_committed()
            stop.set()

        listening = asyncio.create_task(listen())
        log.info("delivery process started: %s", type(store).__name__)
        try:
            await deliverer.run(stop)
        finally:
            listening.cancel()
            transport.close()
    finally:
        await store.close()
