"""What every webhook source implements: a request in, events and an answer out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from profilehook.events import Event
from profilehook.stores.base import Source


@dataclass(frozen=True)
class WebhookRequest:
    """A webhook request as a source sees it; ``target`` is the raw path and query."""

    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    received_us: int
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Released:
    """Events a source kept back (parked) and released by this request, with the key of the
    store's ``unpark``. The route publishes them, then unparks them: a crash in between
    releases them again on the next mapping, so they are never lost (at worst duplicates)."""

    workspace: str
    source_id: str
    profile_id: str
    events: list[Event]


@dataclass(frozen=True)
class WebhookResult:
    """Events to store durably, then the JSON ``body`` to answer with ``status``."""

    events: list[Event]
    body: dict[str, Any]
    status: int = 200
    ignored: int = 0
    skipped: int = 0
    released: list[Released] = field(default_factory=list)
    # Called when the request is refused after all (rate limit, storage unavailable), so that
    # what the source remembered of it (Copernica's nonce) does not refuse the sender's retry.
    undo: Callable[[], Awaitable[None]] | None = None


class WebhookSource(Protocol):
    """One kind of source. Raises a ``ProfilehookError`` (401, 413, 415, 422…) to refuse."""

    kind: str
    max_body_bytes: int

    async def handle(self, source: Source, request: WebhookRequest) -> WebhookResult: ...
