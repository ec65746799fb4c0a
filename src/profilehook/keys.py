"""API keys: shown once at creation, stored only as a SHA-256 hash, revocable."""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from profilehook.constants import DEFAULT_KEY_SCOPES, KEY_PREFIX, SCOPE_ADMIN, SCOPES
from profilehook.errors import InvalidApiKey, MissingScope, NotFound
from profilehook.events import iso, now_us
from profilehook.stores.base import ApiKey, Catalog, KeyGrant, ordered_scopes
from profilehook.validation import Loc, Problem, problem


def hash_key(key: str) -> str:
    """Keys carry 192 random bits, so a fast hash is safe; lookups stay O(1) by hash."""
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(
    store: Catalog, workspace: str, scopes: Iterable[str] = DEFAULT_KEY_SCOPES
) -> tuple[str, ApiKey]:
    """Create a key for ``workspace`` with ``scopes`` (known ones: callers check what they
    were given); returns (the key, shown only now; its record)."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
    record = ApiKey(
        key_id=key_id, workspace=workspace, created_us=now_us(), scopes=ordered_scopes(scopes)
    )
    await store.add_key(record, hash_key(key))
    return key, record


_EXPECTED_SCOPES = ", ".join(repr(s) for s in SCOPES[:-1]) + f" or {SCOPES[-1]!r}"


def scopes_from_json(value: Any, loc: Loc, problems: list[Problem]) -> tuple[str, ...]:
    """A JSON list of scope names (absent: the default), in ``SCOPES``' order; each problem
    (not a list, not a string, an unknown scope) is appended to ``problems``."""
    if value is None:
        return DEFAULT_KEY_SCOPES
    if not isinstance(value, list):
        problems.append(problem("list_type", loc, "Input should be a valid list", value))
        return ()
    for index, item in enumerate(value):
        if item not in SCOPES:  # also a non-string: no string equals it
            problems.append(
                problem(
                    "enum",
                    (*loc, index),
                    f"Input should be {_EXPECTED_SCOPES}",
                    item,
                    {"expected": _EXPECTED_SCOPES},
                )
            )
    if not value:
        problems.append(
            problem(
                "too_short",
                loc,
                "List should have at least 1 item after validation, not 0",
                value,
                {"field_type": "List", "min_length": 1, "actual_length": 0},
            )
        )
    return ordered_scopes(item for item in value if item in SCOPES)


async def revoke_key(store: Catalog, key_id: str, workspace: str | None = None) -> dict[str, Any]:
    """Revoke a key (of ``workspace``, when given: another workspace's is not found), and say
    what happened as `keys revoke` and ``DELETE /v1/keys/{key_id}`` answer: the key's view,
    ``already_revoked``, and a ``warning`` when the workspace has no live admin key left.
    Revoking twice changes nothing (the first time is kept). Raises ``NotFound``."""
    found = {k.key_id: k for k in await store.list_keys(workspace)}
    key = found.get(key_id)
    if key is None:
        raise NotFound(f"No key with id {key_id!r}")
    already = key.revoked_us is not None
    if not already:
        await store.revoke_key(key_id, now_us())
    after = await store.list_keys(key.workspace)
    answer = {**key_view(next(k for k in after if k.key_id == key_id)), "already_revoked": already}
    admin_left = any(k.revoked_us is None and SCOPE_ADMIN in k.scopes for k in after)
    if SCOPE_ADMIN in key.scopes and not already and not admin_left:
        answer["warning"] = (
            f"Workspace {key.workspace!r} has no admin key left: its keys and sources can be"
            " managed from the command line only (profilehook keys create --workspace"
            f" {shlex.quote(key.workspace)} --scope admin)."
        )
    return answer


def created_view(key: str, record: ApiKey) -> dict[str, Any]:
    """What `keys create --json` prints (and POST /v1/keys answers): the key, shown only now."""
    return {
        "key": key,
        "key_id": record.key_id,
        "workspace": record.workspace,
        "scopes": list(record.scopes),
    }


async def list_keys(store: Catalog, workspace: str | None) -> list[dict[str, Any]]:
    """The keys (of ``workspace``, or all) as `keys list --json` prints them."""
    return [key_view(k) for k in await store.list_keys(workspace)]


def key_view(record: ApiKey) -> dict[str, Any]:
    """A key as `keys list --json` prints it (never the key itself)."""
    return {
        "key_id": record.key_id,
        "workspace": record.workspace,
        "scopes": list(record.scopes),
        "created_at": iso(record.created_us),
        "revoked_at": iso(record.revoked_us),
    }


def bearer_token(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


_hashes: dict[bytes, str | None] = {}  # Authorization header -> key hash (None: not a key)
MAX_REMEMBERED_HEADERS = 10_000


def key_hash_of(authorization: bytes | None) -> str | None:
    """The hash of the key an ``Authorization`` header carries (whatever its spelling), or None
    when it carries none. Whether the key is valid is the store's to say."""
    if not authorization:
        return None
    try:
        return _hashes[authorization]
    except KeyError:
        # Parsing and hashing a header is pure: remember it (the store decides what it grants).
        token = bearer_token(authorization)
        key_hash = hash_key(token) if token and token.startswith(KEY_PREFIX) else None
        if len(_hashes) >= MAX_REMEMBERED_HEADERS:
            _hashes.clear()
        _hashes[authorization] = key_hash
        return key_hash


@runtime_checkable
class GrantsAtOnce(Protocol):
    """A store that looks up a key's grant (``Catalog.key_grant``) on the calling thread."""

    def key_grant_at_once(self, key_hash: str) -> KeyGrant | None: ...


async def authenticate(store: Catalog, authorization: bytes | None) -> KeyGrant | None:
    """What an Authorization header's key grants (workspace, scopes), or None."""
    key_hash = key_hash_of(authorization)
    return None if key_hash is None else await store.key_grant(key_hash)


async def grant_of_key(store: Catalog, key: str | None) -> KeyGrant | None:
    """What a key given as such grants (the SDK protocols carry it in a body or as a Basic
    user name rather than as a Bearer token), or None."""
    if not key or not key.startswith(KEY_PREFIX):
        return None
    return await store.key_grant(hash_key(key))


async def authorize(store: Catalog, authorization: bytes | None, scope: str) -> KeyGrant:
    """What the header's key grants, when it has ``scope``. Raises ``InvalidApiKey`` (401)
    and ``MissingScope`` (403)."""
    grant = await authenticate(store, authorization)
    if grant is None:
        raise InvalidApiKey()
    if not grant.allows(scope):
        raise MissingScope(scope)
    return grant
