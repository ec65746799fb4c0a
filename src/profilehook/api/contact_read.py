"""``GET /v1/contacts/{contact_id}`` as raw ASGI: the read hot path.

The route is also declared to Starlette (api/routes.py: its history page, other methods, the
API description); this handler answers the profile itself, byte for byte as that route would,
without Starlette's routing and request objects, which cost as much CPU as the rest of a read
(benchmarks/README.md, The read path). Its deadline is the routes' (api/routes.py ``deadline``:
``backend_timeout_s`` over the key check and the lookup, then ``503``, on time even when the
store is slow to let go of a cancelled query).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from starlette.types import ASGIApp, Receive, Scope, Send

from profilehook import keys
from profilehook.api.deadlines import within
from profilehook.api.responses import encode, error_body, send_json
from profilehook.api.routes import contact_path
from profilehook.errors import (
    InvalidApiKey,
    MissingScope,
    NotFound,
    ProfilehookError,
    StorageUnavailable,
)
from profilehook.service import Services
from profilehook.sqlite_db import LATER, Later
from profilehook.stores.base import KeyGrant
from profilehook.views import contact_body, contact_view

log = logging.getLogger(__name__)

PREFIX = "/v1/contacts/"
ACCESS = "read"


class ContactRead:
    """Answers ``GET /v1/contacts/{id}``; hands every other request under the prefix (a
    history page) to ``fallback``, the Starlette app."""

    def __init__(self, services: Services, fallback: ASGIApp):
        self.store = store = services.store
        self.fallback = fallback
        self.timeout_s = services.settings.backend_timeout_s
        self.at_once = store if isinstance(store, ReadsAtOnce) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self.answer_at_once(scope)
        if answer is LATER:
            try:
                found = await within(self.timeout_s, self._lookup(scope))
            except Exception as exc:
                answer = self._refused(scope, exc)
            else:
                answer = found if found is _HISTORY else _answer(found)
        if answer is _HISTORY:
            await self.fallback(scope, receive, send)
        else:
            assert isinstance(answer, tuple)
            await send_json(send, *answer)

    def answer_at_once(self, scope: Scope) -> Answer | object:
        """The answer, when this thread can give it (api/protocol.py writes it without a task);
        ``LATER`` when the lookup would wait (then ``_lookup``, under the deadline), ``_HISTORY``
        for a history page."""
        if self.at_once is None:
            return LATER
        try:
            found = self._at_once(scope)
        except Exception as exc:
            return self._refused(scope, exc)
        if found is LATER or found is _HISTORY:
            return found
        return _answer(found)

    def _refused(self, scope: Scope, exc: Exception) -> Answer:
        """The answer to a read that raised ``exc`` (a timeout: the deadline passed)."""
        if isinstance(exc, TimeoutError):
            error = f"Storage did not answer within {self.timeout_s:g} s, retry later"
            exc = StorageUnavailable(error)
        if isinstance(exc, ProfilehookError):
            return exc.status_code, error_body(exc.detail), exc.headers
        log.exception("unexpected error on GET %s", scope["path"], exc_info=exc)
        return 500, error_body("Internal error"), None

    async def _lookup(self, scope: Scope) -> bytes | object | None:
        """The contact's answer (its JSON), None when not found, or ``_HISTORY`` for a history
        page (after the key's check, as the route makes it). Raises 401, 403, 404 and the
        store's errors."""
        grant = await keys.authenticate(self.store, _authorization(scope))
        workspace, contact_id = _checked(grant, scope)
        if contact_id is None:
            return _HISTORY
        found = await self.store.get_contact(workspace, contact_id)
        return None if found is None else encode(contact_view(found))

    def _at_once(self, scope: Scope) -> bytes | object | None:
        """``_lookup`` without a task or a timer, for a store that looks up keys and contacts
        on this thread (SQLite: nothing to wait for, so nothing to bound); ``LATER`` when
        either would wait (then ``_lookup`` under the deadline)."""
        assert self.at_once is not None  # (the store, as ReadsAtOnce)
        key_hash = keys.key_hash_of(_authorization(scope))
        grant = None if key_hash is None else self.at_once.key_grant_at_once(key_hash)
        workspace, contact_id = _checked(grant, scope)
        if contact_id is None:
            return _HISTORY
        found = self.at_once.contact_groups_at_once(workspace, contact_id)
        if found is None or found is LATER:
            return found
        updated_us, groups = found
        return contact_body(contact_id, updated_us, groups)


_HISTORY = object()
Answer = tuple[int, bytes, dict[str, str] | None]
"""Status, JSON body and extra headers, as ``send_json`` takes them."""


def _answer(found: object) -> Answer:
    """The answer to a contact's lookup: its JSON, or a 404."""
    if found is None:
        exc = NotFound("Contact not found")
        return exc.status_code, error_body(exc.detail), exc.headers
    assert isinstance(found, bytes)
    return 200, found, None


@runtime_checkable
class ReadsAtOnce(keys.GrantsAtOnce, Protocol):
    """A store that can look up a key's grant (``Catalog.key_grant``) and a contact on the
    calling thread; the contact lookup answers ``LATER`` when it would wait."""

    def contact_groups_at_once(
        self, workspace: str, contact_id: str
    ) -> tuple[int, Sequence[tuple[int, str, dict[str, Any]]]] | Later | None: ...


def _checked(grant: KeyGrant | None, scope: Scope) -> tuple[str, str | None]:
    """The workspace and the contact id the request may read (None: a history page).
    Raises 401, 403 (the key first, as the route checks it), then 404."""
    if grant is None:
        raise InvalidApiKey()
    if not grant.allows(ACCESS):
        raise MissingScope(ACCESS)
    raw = scope.get("raw_path")
    if raw is not None and raw.startswith(_RAW_PREFIX):
        tail = raw[len(_RAW_PREFIX) :]
        if tail and not _NEEDS_PARSING.search(tail):  # (most ids: nothing to decode or refuse)
            return grant.workspace, tail.decode("latin-1")
    contact_id, is_history = contact_path(scope)
    return grant.workspace, None if is_history else contact_id


_RAW_PREFIX = PREFIX.encode()
# What ``contact_path`` decodes, splits or refuses: an escape, a slash, a query, a NUL.
_NEEDS_PARSING = re.compile(rb"[%/?\x00]")
# A request target that is a contact's path with an id taken as it is (ASCII, no fragment).
_PLAIN_TARGET = re.compile(rb"/v1/contacts/[^%/?#\x00\x80-\xff]+")


def plain_contact_target(target: bytes) -> bool:
    """True when ``target`` (the request line's) is a contact's path whose id needs no parsing."""
    return _PLAIN_TARGET.fullmatch(target) is not None


def _authorization(scope: Scope) -> bytes | None:
    """The Authorization header; None when absent or repeated (two keys: refused, rather than
    choosing one of them)."""
    found = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                return None
            found = value
    return found
