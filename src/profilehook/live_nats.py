"""The console's live tail scaled out (README, The console): several ``serve`` processes behind
a balancer, on one NATS, share what arrives, so a tail open on any of them shows the calls every
one of them receives (and a source's page their recent calls).

Core NATS, not JetStream: the tail is a view of now, nothing to keep or replay. Two subjects under
``profilehook.live.<stream>``: ``watching``, on which a process with an open tail says so when
the tail opens and every ``LIVE_INTEREST_EVERY_S``, and ``calls``, on which each process posts the
calls it receives (live.py's ``forward``). A process that heard ``watching`` within
``LIVE_INTEREST_TTL_S`` builds its calls as if it had a tail of its own; otherwise its ingest
path still pays one attribute read. Webhook calls are posted whether watched or not (a source's
recent calls are kept everywhere). Each process hands the calls it hears from the others to its
own watchers. It is best effort: a call that cannot be posted (NATS away, a backlog of
``LIVE_FANOUT_BACKLOG``) is missing from the other processes' tails, never delays a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import suppress
from typing import Any

import msgspec

from profilehook.constants import (
    LIVE_FANOUT_BACKLOG,
    LIVE_INTEREST_EVERY_S,
    LIVE_INTEREST_TTL_S,
)
from profilehook.live import Call, LiveCalls

log = logging.getLogger(__name__)
RETRY_CONNECT_S = 2.0
CLOSE_TIMEOUT_S = 2.0


class _Forwarded(msgspec.Struct, frozen=True):
    origin: str  # the process that received the call
    call: Call


def subject_prefix(queue_url: str) -> str:
    """The subjects of the processes sharing ``queue_url``'s stream."""
    from profilehook.queues.nats import split_url

    return f"profilehook.live.{split_url(queue_url)[1]}"


class LiveFanout:
    """Joins this process's bus (``live``) to the other processes' on the NATS of
    ``queue_url`` (module doc), for as long as ``run`` runs."""

    def __init__(self, live: LiveCalls, queue_url: str, connect_timeout_s: float = 5.0):
        from profilehook.queues.nats import server_list

        self.live = live
        self.servers = server_list(queue_url)
        self.prefix = subject_prefix(queue_url)
        self.connect_timeout_s = connect_timeout_s
        self.origin = uuid.uuid4().hex
        self.dropped = 0
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(LIVE_FANOUT_BACKLOG)
        self._announce = asyncio.Event()
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(_Forwarded)

    async def run(self, stop: asyncio.Event) -> None:
        """Share calls until ``stop`` is set; a NATS that cannot be reached is tried again
        every ``RETRY_CONNECT_S`` meanwhile (each tail shows its own process's calls)."""
        import nats.errors

        nc = None
        while nc is None:
            try:
                nc = await asyncio.wait_for(self._connect(), self.connect_timeout_s)
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                log.warning("live tail: cannot reach NATS to share calls: %s", exc)
                if await _stopped(stop, RETRY_CONNECT_S):
                    return
        sending = asyncio.create_task(self._send(nc), name="live-fanout-send")
        try:
            await nc.subscribe(f"{self.prefix}.calls", cb=self._heard_call)
            await nc.subscribe(f"{self.prefix}.watching", cb=self._heard_interest)
            self.live.forward, self.live.on_watch = self._forward, self._announce.set
            while not stop.is_set():
                self._announce.clear()
                if self.live.has_watchers:
                    with suppress(nats.errors.Error):
                        await nc.publish(f"{self.prefix}.watching", self.origin.encode())
                self.live.refresh()
                await _first(stop, self._announce, LIVE_INTEREST_EVERY_S)
        finally:
            self.live.forward = self.live.on_watch = None
            sending.cancel()
            with suppress(asyncio.CancelledError):
                await sending
            # Bounded: a server stopping while NATS is away must not wait on it.
            with suppress(Exception):
                await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT_S)

    async def _connect(self) -> Any:
        import nats

        # Reconnects by itself, without end, once connected.
        return await nats.connect(
            self.servers,
            connect_timeout=self.connect_timeout_s,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            name=f"profilehook-live-{self.origin[:8]}",
            error_cb=_quietly,  # the queue's connection already says when NATS is away
        )

    def _forward(self, call: Call) -> None:
        """live.py's ``forward``: queue the call for the others; never waits."""
        if self._outbox.full():
            self.dropped += 1
            return
        self._outbox.put_nowait(self._encoder.encode(_Forwarded(self.origin, call)))

    async def _send(self, nc: Any) -> None:
        import nats.errors

        subject = f"{self.prefix}.calls"
        while True:
            data = await self._outbox.get()
            try:
                await nc.publish(subject, data)
            except nats.errors.Error as exc:
                self.dropped += 1
                log.debug("live tail: a call was not shared: %s", exc)

    async def _heard_call(self, msg: Any) -> None:
        try:
            forwarded = self._decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        if forwarded.origin != self.origin:
            self.live.receive(forwarded.call)

    async def _heard_interest(self, msg: Any) -> None:
        if msg.data != self.origin.encode():
            self.live.remote_interest(time.monotonic() + LIVE_INTEREST_TTL_S)


async def _quietly(error: Exception) -> None:
    log.debug("live tail: NATS: %s", error)


async def _stopped(stop: asyncio.Event, timeout_s: float) -> bool:
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
    return stop.is_set()


async def _first(stop: asyncio.Event, other: asyncio.Event, timeout_s: float) -> None:
    """Wait until either event is set, or ``timeout_s``."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
