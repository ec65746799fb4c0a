"""What every webhook source implements: a request in, events and an answer out; and what a kind
of source declares to be registered (``sources/kinds.py``)."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from profilehook.errors import ExtraMissing
from profilehook.events import Event
from profilehook.settings import Settings
from profilehook.stores.base import Source, Store


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
    too_old: int = 0  # events skipped as older than the retention window (counted apart)
    released: list[Released] = field(default_factory=list)
    # Called when the request is refused after all (rate limit, storage unavailable), so that
    # what the source remembered of it (Copernica's nonce) does not refuse the sender's retry.
    undo: Callable[[], Awaitable[None]] | None = None


OldestAccepted = Callable[[int], int]
"""The oldest event time (us) accepted at a time (us): ``Settings.oldest_accepted_us``."""


def within_retention(
    events: list[Event], received_us: int, oldest_accepted_us: OldestAccepted | None
) -> tuple[list[Event], int]:
    """The events not older than the retention window, and how many were (to skip and count:
    a webhook's sender cannot fix an old event, and refusing the call would refuse the rest)."""
    oldest_us = 0 if oldest_accepted_us is None else oldest_accepted_us(received_us)
    if not oldest_us:
        return events, 0
    kept = [event for event in events if event.ts_us >= oldest_us]
    return kept, len(events) - len(kept)


class WebhookSource(Protocol):
    """One kind of source. Raises a ``ProfilehookError`` (401, 413, 415, 422…) to refuse."""

    kind: str
    max_body_bytes: int

    async def handle(self, source: Source, request: WebhookRequest) -> WebhookResult: ...


@dataclass(frozen=True)
class CreateOption:
    """One option of ``profilehook sources create <kind>``, as data: the CLI builds it.

    ``parse`` turns the given text into the value the kind's ``config`` gets; it raises
    ``ValueError`` with the message to show for a bad value. Over HTTP (``POST /v1/sources``,
    sources/management.py) the option is the JSON field ``name``: a boolean for a flag, else a
    string (a list of them when ``multiple``), or what ``from_json`` takes (described by
    ``json_schema``) and turns into the same value ``parse`` gives, raising ``ValueError``. An
    option with a ``parse`` but no ``from_json`` is set from the command line only."""

    flag: str
    name: str | None = None  # the key of its value in ``Kind.config``'s argument (else from flag)
    help: str | None = None
    required: bool = False
    is_flag: bool = False
    multiple: bool = False
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    from_json: Callable[[Any], Any] | None = None
    json_schema: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """The option's name in ``Kind.config``'s argument and in the JSON form."""
        return self.name or self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Kind:
    """One kind of webhook source."""

    name: str
    title: str  # as people write it: "Copernica"
    make_source: Callable[[Settings, Store], WebhookSource]
    # How its sender presents the source's secret: a header (always issued, the answer says
    # "secret") or a ``?token=`` in the URL (issued when asked, the answer says "token").
    secret_in: Literal["header", "query"]
    # Option values (by parameter name) -> the source's config and whether it gets a secret.
    config: Callable[[dict[str, Any]], tuple[dict[str, Any], bool]]
    create_help: str  # the help of ``sources create <kind>``, ending with an example
    json_help: str  # what ``--json`` prints
    media_type: str  # what its sender posts
    openapi: str  # one sentence for the webhook route's description
    options: tuple[CreateOption, ...] = ()
    extra: str | None = None  # ``pip install 'profilehook[<extra>]'`` brings...
    requires: tuple[str, ...] = ()  # ...these modules, which the kind cannot work without

    def missing_extra(self) -> ExtraMissing | None:
        """None when every module the kind requires imports; else the error naming the extra."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return ExtraMissing(self.name, self.extra, exc)
        return None

    def load(self, settings: Settings, store: Store) -> WebhookSource:
        """The kind's handler. Raises ``ExtraMissing`` (naming the extra) when a module it
        requires is not installed."""
        missing = self.missing_extra()
        if missing is not None:
            raise missing
        return self.make_source(settings, store)
