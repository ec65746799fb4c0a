"""What arrives, as it arrives: a small in-process bus that the ingest and webhook routes post
each call to (accepted or refused, with the reason), read by the console's live tail and a
source's page ("recent calls").

The hot path pays one attribute read (``LiveCalls.watched``) while nobody watches: only then
is a ``Call`` built. Webhook calls are also kept, the last ``RECENT_PER_SOURCE`` per source,
whether watched or not (a webhook call costs milliseconds; a deque append is nothing beside it).
Each serve process has its own bus. Scaled out (several ``serve`` on one NATS), live_nats.py
joins them: a process with an open tail says so, the others then forward their calls (``forward``)
and each hands the calls it hears to its own watchers (``receive``); ``watched`` is then also
true while another process has a tail open (``remote_interest``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from profilehook.constants import (
    LIVE_BODY_MAX_BYTES,
    LIVE_IDS_MAX,
    LIVE_RECENT_PER_SOURCE,
    LIVE_WATCHER_BACKLOG,
)

_REDACTED_HEADERS = frozenset({"authorization", "x-api-key", "cookie"})
_KEPT_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "user-agent",
        "date",
        "digest",
        "signature",
        "x-copernica-id",
        "x-nonce",
    }
)


@dataclass(frozen=True)
class Call:
    """One HTTP call to an ingest or webhook route, as the console shows it.

    ``headers`` keeps the few that explain a call (credentials replaced by a placeholder);
    ``body`` its first ``LIVE_BODY_MAX_BYTES`` (``truncated`` says when there was more)."""

    workspace: str
    at_us: int
    source: str  # "api" (the native routes) or the source's kind
    source_id: str | None
    method: str
    target: str  # raw path and query
    headers: tuple[tuple[str, str], ...]
    body: bytes
    truncated: bool
    status: int
    detail: Any  # the refusal's {"detail"} value; None when accepted
    event_ids: tuple[str, ...] = ()  # the first LIVE_IDS_MAX
    contact_ids: tuple[str, ...] = ()  # the first LIVE_IDS_MAX
    event_count: int = 0
    seq: int = 0

    @property
    def accepted(self) -> bool:
        return self.status < 400


def kept_headers(
    raw: Iterable[tuple[bytes, bytes]], placeholder: str = "$KEY"
) -> tuple[tuple[str, str], ...]:
    """The headers a copy-as-curl needs, a credential replaced by ``placeholder`` (an API key's
    ``$KEY``, a webhook source's ``$SECRET``)."""
    kept = []
    for name_b, value_b in raw:
        name = name_b.decode("latin-1").lower()
        if name in _REDACTED_HEADERS:
            value = value_b.decode("latin-1")
            scheme = value.split(" ", 1)[0] if " " in value else ""
            kept.append((name, f"{scheme} {placeholder}".strip()))
        elif name in _KEPT_HEADERS:
            kept.append((name, value_b.decode("latin-1")))
    return tuple(kept)


@dataclass
class _Watcher:
    workspace: str
    queue: asyncio.Queue[Call] = field(default_factory=lambda: asyncio.Queue(LIVE_WATCHER_BACKLOG))
    dropped: int = 0


class LiveCalls:
    """The bus. ``publish`` never blocks: a watcher that falls behind loses its oldest calls
    (and is told how many), the routes never wait for a browser."""

    def __init__(self, recent_per_source: int = LIVE_RECENT_PER_SOURCE):
        self.watched = False
        self._watchers: list[_Watcher] = []
        self._recent: dict[str, deque[Call]] = {}
        self._recent_max = recent_per_source
        self._seq = itertools.count(1)
        self._remote_until_s = 0.0  # monotonic: another process has a tail open until then
        # Scaled out: each call this process receives also goes here (live_nats.py), and a
        # first watcher is announced at once.
        self.forward: Callable[[Call], None] | None = None
        self.on_watch: Callable[[], None] | None = None

    @property
    def has_watchers(self) -> bool:
        """Whether a tail is open on this process."""
        return bool(self._watchers)

    def watch(self, workspace: str) -> _Watcher:
        watcher = _Watcher(workspace)
        self._watchers.append(watcher)
        self.watched = True
        if self.on_watch is not None:
            self.on_watch()
        return watcher

    def unwatch(self, watcher: _Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
        self.refresh()

    def remote_interest(self, until_s: float) -> None:
        """Another process has a tail open, until ``until_s`` (monotonic) unless it says so
        again: build and forward calls meanwhile."""
        self._remote_until_s = max(self._remote_until_s, until_s)
        self.watched = True

    def refresh(self) -> None:
        """Recompute ``watched`` (a remote interest runs out unless renewed)."""
        self.watched = bool(self._watchers) or time.monotonic() < self._remote_until_s

    def publish(self, call: Call) -> Call:
        """Hand ``call`` to its workspace's watchers (and remember a webhook call), and
        forward it to the other processes when scaled out; returns it numbered."""
        if self.forward is not None:
            self.forward(call)
        return self.receive(call)

    def receive(self, call: Call) -> Call:
        """Like ``publish``, for a call another process received (not forwarded again)."""
        call = _numbered(call, next(self._seq))
        if call.source_id is not None:
            recent = self._recent.get(call.source_id)
            if recent is None:
                recent = self._recent[call.source_id] = deque(maxlen=self._recent_max)
            recent.append(call)
        for watcher in self._watchers:
            if watcher.workspace != call.workspace:
                continue
            if watcher.queue.full():
                watcher.queue.get_nowait()
                watcher.dropped += 1
            watcher.queue.put_nowait(call)
        return call

    def recent(self, source_id: str) -> list[Call]:
        """The source's last calls, newest first."""
        return list(reversed(self._recent.get(source_id, ())))


def _numbered(call: Call, seq: int) -> Call:
    return Call(**{**call.__dict__, "seq": seq})


def first_ids(ids: Iterable[str]) -> tuple[str, ...]:
    """The first ``LIVE_IDS_MAX`` distinct ids, in order."""
    kept: dict[str, None] = {}
    for value in ids:
        if len(kept) >= LIVE_IDS_MAX:
            break
        kept.setdefault(value, None)
    return tuple(kept)


def body_excerpt(body: bytes) -> tuple[bytes, bool]:
    """The body as a ``Call`` keeps it, and whether it was cut."""
    if len(body) <= LIVE_BODY_MAX_BYTES:
        return body, False
    return body[:LIVE_BODY_MAX_BYTES], True
