"""API keys: shown once at creation, stored only as a SHA-256 hash, revocable."""

from __future__ import annotations

import hashlib
import secrets

from profilehook.constants import KEY_PREFIX
from profilehook.events import now_us
from profilehook.stores.base import ApiKey, Catalog


def hash_key(key: str) -> str:
    """Keys carry 192 random bits, so a fast hash is safe; lookups stay O(1) by hash."""
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(store: Catalog, workspace: str) -> tuple[str, ApiKey]:
    """Create a key for ``workspace``; returns (the key, shown only now; its record)."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
    record = ApiKey(key_id=key_id, workspace=workspace, created_us=now_us())
    await store.add_key(record, hash_key(key))
    return key, record


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


async def authenticate(store: Catalog, authorization: bytes | None) -> str | None:
    """The workspace an Authorization header grants, or None."""
    key_hash = key_hash_of(authorization)
    return None if key_hash is None else await store.workspace_for(key_hash)
