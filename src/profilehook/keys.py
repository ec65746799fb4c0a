"""API keys: shown once at creation, stored only as a SHA-256 hash, revocable."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Any

from profilehook.constants import DEFAULT_KEY_SCOPES, KEY_PREFIX
from profilehook.errors import InvalidApiKey, MissingScope
from profilehook.events import iso, now_us
from profilehook.stores.base import ApiKey, Catalog, KeyGrant, ordered_scopes


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


def created_view(key: str, record: ApiKey) -> dict[str, Any]:
    """What `keys create --json` prints (and POST /v1/keys answers): the key, shown only now."""
    return {
        "key": key,
        "key_id": record.key_id,
        "workspace": record.workspace,
        "scopes": list(record.scopes),
    }


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


async def authenticate(store: Catalog, authorization: bytes | None) -> KeyGrant | None:
    """What an Authorization header's key grants (workspace, scopes), or None."""
    key_hash = key_hash_of(authorization)
    return None if key_hash is None else await store.key_grant(key_hash)


async def authorize(store: Catalog, authorization: bytes | None, scope: str) -> KeyGrant:
    """What the header's key grants, when it has ``scope``. Raises ``InvalidApiKey`` (401)
    and ``MissingScope`` (403)."""
    grant = await authenticate(store, authorization)
    if grant is None:
        raise InvalidApiKey()
    if not grant.allows(scope):
        raise MissingScope(scope)
    return grant
