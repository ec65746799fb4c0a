"""The applier as a process of its own: ``profilehook worker`` (``run_applier``), and the
child process of ``serve``: started, watched, restarted, stopped (``ApplierProcess``).

Why a process: the applier's work (decoding, planning, msgpack, SQLite calls) needs the GIL that
the event loop needs to answer requests. In the same process it took half of the ingest
throughput on two cores; as a child it runs beside the server on the other core, and at a
lower CPU priority (``lower_priority``), so that answering clients comes first and applying
uses the time left.

The child is ``profilehook worker --report-to-parent`` with the server's settings. It stops
when its standard input closes (the server stopping, or dying: even a ``kill -9`` closes the
pipe), after acknowledging what it applied. On its standard output it writes one JSON line, a
``Report``, every ``REPORT_INTERVAL_S`` and at each acknowledgement: its ``ApplierTotals``, which
the server adds to its own ``/metrics``, and, for the SQLite log, the position it acknowledges,
which the server writes to the log (``HandsOverAcknowledgements``): applying, the child only
reads the log (it checks the log's schema once, when it starts). And for the SQLite log, the
server's commits wake the child waiting for events (``TellsOfAppends``): a byte on a pipe of
its own (``--wake-fd``), read by the child only while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from asyncio.subprocess import PIPE, Process

import msgspec

from profilehook.applier import Applier
from profilehook.applier_endpoints import ApplierEndpoints
from profilehook.destinations.delivery import Deliverer
from profilehook.destinations.process import DeliveryProcess, delivers_in_a_child
from profilehook.erasure import Eraser
from profilehook.errors import StorageUnavailable
from profilehook.metrics import ApplierTotals, Metrics
from profilehook.queues.base import HandsOverAcknowledgements, Queue, TellsOfAppends
from profilehook.retention import ChangePurger, HistoryPurger
from profilehook.service import running
from profilehook.settings import Settings
from profilehook.supervision import keep_running

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.25
STOP_TIMEOUT_S = 15.0  # to finish a batch and acknowledge it, before the child is killed


class Report(msgspec.Struct, frozen=True):
    """One line from the child. Both fields are running values: a lost line loses nothing."""

    totals: ApplierTotals
    acknowledged: int | None = None  # the log position applied and synced up to, for the server


_decode_report = msgspec.json.Decoder(Report).decode


async def run_applier(
    settings: Settings,
    metrics_port: int | None = None,
    report_to_parent: bool = False,
    wake_fd: int | None = None,
) -> None:
    """Apply the log to the store until SIGINT or SIGTERM (``profilehook worker``); with
    ``metrics_port``, serve the applier's Prometheus metrics there. ``report_to_parent``: as the
    child of ``serve``, at the lowest priority, until the server closes standard input.
    ``wake_fd``: the read end of the pipe the server's appends write to (``TellsOfAppends``).

    Raises ``asyncio.CancelledError`` when a signal stops it before the backends are open,
    ``ConfigurationError`` and ``StorageUnavailable`` as ``Services`` does.
    """
    if report_to_parent:
        leave_process_group()
        lower_priority()  # before any thread exists: threads inherit it
    stop, started = asyncio.Event(), asyncio.Event()
    _stop_on_signals(stop, started)
    async with running(settings) as services:
        started.set()
        if wake_fd is not None and isinstance(services.queue, TellsOfAppends):
            services.queue.woken_by(wake_fd)
        endpoints = None
        if metrics_port is not None:
            endpoints = ApplierEndpoints(services, settings.host, metrics_port)
        applier = Applier(
            services.queue, services.store, services.metrics, settings.apply_batch_max_events
        )
        # One line an operator can grep for: which log and store, and where the metrics are
        # (apply lag lives on each applier's own /metrics when it runs as `worker`).
        log.info(
            "applier started: %s -> %s, batches of up to %d events%s",
            type(services.queue).__name__,
            type(services.store).__name__,
            settings.apply_batch_max_events,
            f", metrics on port {metrics_port}" if metrics_port is not None else "",
        )
        # Retention's purge runs beside the applier, in short transactions of its own.
        purger = HistoryPurger(services.store, services.metrics, settings)
        purging = asyncio.create_task(purger.run(stop), name="history-purge")
        purging_changes = asyncio.create_task(
            ChangePurger(services.store, settings).run(stop), name="change-purge"
        )
        # Destinations are delivered to from here: serve's applier process and every worker
        # (they share the deliveries through the store's leases) start a delivery process that
        # the applier's commits wake; an in-memory store, which no other process can open, is
        # delivered from in this process.
        deliverer: Deliverer | DeliveryProcess
        if delivers_in_a_child(settings):
            deliverer = DeliveryProcess(settings)
            applier.on_applied = deliverer.wake
        else:
            deliverer = Deliverer(services.store, settings)
            applier.on_applied = deliverer.changes_committed
        delivering = asyncio.create_task(deliverer.run(stop), name="destinations")
        # A worker executes erasures too (any number may: each step is idempotent); serve's
        # applier process does not: the server does, it writes the embedded log.
        erasing = None
        if not report_to_parent:
            eraser = Eraser(services.queue, services.store)
            erasing = asyncio.create_task(eraser.run(stop), name="eraser")
        try:
            if report_to_parent:
                await _apply_reporting(applier, stop)
            else:
                await applier.run(stop)
        finally:
            stop.set()
            await purging
            await purging_changes
            await delivering
            if erasing is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await erasing
            if endpoints is not None:
                endpoints.close()


def _stop_on_signals(stop: asyncio.Event, started: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop``; until ``started`` they also cancel the running task:
    still connecting (maybe to a backend that is down), it stops at once."""
    main = asyncio.current_task()

    def on_signal() -> None:
        stop.set()
        if not started.is_set() and main is not None:
            main.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


async def _apply_reporting(applier: Applier, stop: asyncio.Event) -> None:
    """Apply as the applier process of ``serve``: stop when the server does, report to it, and
    hand it the acknowledgements to write when the log lets another process write them."""
    link = ParentLink(applier.metrics, stop)
    await link.open()
    if isinstance(applier.queue, HandsOverAcknowledgements):
        applier.queue.hand_acknowledgements_to(link.acknowledged)
    try:
        await applier.run(stop)
    finally:
        link.close()


class ApplierProcess:
    """Runs the applier in a child process until ``stop``, restarting it when it dies; writes
    to ``queue`` the acknowledgements the child hands over (a log without the capability gets
    none: its child acknowledges itself)."""

    def __init__(self, settings: Settings, metrics: Metrics, queue: Queue):
        self.settings = settings
        self.metrics = metrics
        self.acknowledgements = queue if isinstance(queue, HandsOverAcknowledgements) else None
        self.appends = queue if isinstance(queue, TellsOfAppends) else None
        self._wake_fd: int | None = None  # the write end of the running child's wake-up pipe

    async def run(self, stop: asyncio.Event) -> None:
        await keep_running("applier process", self._spawn, self._supervise, stop)

    async def _spawn(self) -> Process:
        env = {**os.environ, **self.settings.to_env()}
        wake: tuple[str, ...] = ()
        read_fd = None
        if self.appends is not None:
            read_fd, self._wake_fd = os.pipe()
            os.set_blocking(self._wake_fd, False)
            wake = ("--wake-fd", str(read_fd))
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "profilehook",
                "worker",
                "--report-to-parent",
                *wake,
                env=env,
                stdin=PIPE,
                stdout=PIPE,
                pass_fds=() if read_fd is None else (read_fd,),
                # In the server's session; the child moves to a process group of its own as it
                # starts (``leave_process_group``, which says why).
            )
        except BaseException:
            self._close_wake_pipe()
            raise
        finally:
            if read_fd is not None:
                os.close(read_fd)
            if self.appends is not None and self._wake_fd is not None:
                self.appends.tell_appends_to(self._wake_fd)

    def _close_wake_pipe(self) -> None:
        fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            assert self.appends is not None
            self.appends.tell_appends_to(None)  # before the close: the number may be reused
            os.close(fd)

    async def _supervise(self, proc: Process, stop: asyncio.Event) -> int:
        relay = asyncio.create_task(self._relay(proc))
        stopping = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(proc.wait())
        await asyncio.wait({stopping, exited, relay}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if relay.done() and relay.exception() is not None and not exited.done():
            # Nobody reads its reports any more: it would block on a full pipe, applying nothing.
            # (A relay that ended at the end of the output saw the child exiting: it is waited for.)
            log.error("applier process: its reports can no longer be read; restarting it")
            proc.kill()
        elif not exited.done():
            assert proc.stdin is not None
            proc.stdin.close()  # the child's signal to finish, acknowledge and exit
            try:
                await asyncio.wait_for(asyncio.shield(exited), STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("applier process did not stop within %ss; killing it", STOP_TIMEOUT_S)
                proc.kill()
        code = await exited
        self._close_wake_pipe()
        try:
            await relay
        except Exception:  # (a line longer than the reader's limit, say): the child is restarted
            log.exception("applier process: reading its reports failed")
        return code

    async def _relay(self, proc: Process) -> None:
        """Until the child's output ends: add each report's progress to the server's metrics,
        and write the acknowledgements it hands over."""
        assert proc.stdout is not None
        last = Report(ApplierTotals())
        async for line in proc.stdout:
            try:
                report = _decode_report(line)
                self.metrics.add_applier_progress(last.totals, report.totals)
            except (msgspec.DecodeError, ValueError):
                log.warning("applier process: unreadable report %r", line[:200])
                continue
            if (
                report.acknowledged is not None
                and report.acknowledged != last.acknowledged
                and self.acknowledgements is not None
            ):
                try:
                    await self.acknowledgements.acknowledge_upto(report.acknowledged)
                except Exception as exc:  # the next report carries it again
                    if isinstance(exc, StorageUnavailable):
                        log.warning("applier process: acknowledgement not written: %s", exc.detail)
                    else:
                        log.exception("applier process: acknowledgement not written")
                    report = msgspec.structs.replace(report, acknowledged=last.acknowledged)
            last = report


# The child's priority, the lowest: a CPU the server also wants gives it ~1/70 of its time, so at
# saturation applying waits (and catches up after) rather than slow answering (19 against 10:
# benchmarks/README.md).
NICENESS = 19


def leave_process_group() -> None:
    """Move the server's child to a process group of its own, in the server's session.

    Its own group: a Ctrl-C in the terminal goes to the foreground group, the server's, which
    then stops the child in order. The server's session: on Linux a session is a scheduler
    autogroup, and niceness orders threads only within one autogroup; in a session of its own
    (as it once was) the child at nice 19 got as much CPU as the whole server whenever both
    wanted it. (The child does this itself: uvloop, the server's loop, cannot start a process in
    a new group; a Ctrl-C in the fraction of a second before this runs stops the child, which
    the stopping server no longer needs.)"""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


def lower_priority() -> None:
    """Lower this process's CPU priority; call it before any thread starts. On Linux niceness
    belongs to each thread and new threads inherit their creator's, so a call made after the
    SQLite threads started would leave the applying itself at the server's priority. (Linux's
    idle policy, SCHED_IDLE, was measured too: it would leave a thread that holds a SQLite
    write lock unscheduled while the server waits for that lock.)"""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)


class ParentLink:
    """The child's side: ``stop`` is set when standard input closes; meanwhile a ``Report`` goes
    to standard output every ``REPORT_INTERVAL_S``, at each ``acknowledged``, and at ``close``."""

    def __init__(self, metrics: Metrics, stop: asyncio.Event):
        self.metrics = metrics
        self.stop = stop
        self._acknowledged: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(sys.stdin.fileno(), "rb", 0)
        )
        self._tasks = [
            asyncio.create_task(self._stop_at_eof(reader)),
            asyncio.create_task(self._report_often()),
        ]

    def acknowledged(self, position: int) -> None:
        """Hand the server an acknowledgement to write (``HandsOverAcknowledgements``)."""
        self._acknowledged = position
        self._report()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._report()

    async def _stop_at_eof(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(4096):
            pass
        self.stop.set()

    async def _report_often(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), REPORT_INTERVAL_S)
            self._report()

    def _report(self) -> None:
        report = Report(self.metrics.applier_totals(), self._acknowledged)
        try:
            sys.stdout.buffer.write(msgspec.json.encode(report) + b"\n")
            sys.stdout.buffer.flush()
        except OSError:  # the server is gone: finish up as if told to stop
            self.stop.set()
