"""Webhook sources of a workspace: creation, secrets (stored hashed, rotated), their URLs."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from typing import Any

from profilehook.errors import NotFound, RotationRefused
from profilehook.events import now_us
from profilehook.stores.base import Catalog, Source, SourceKind

SOURCE_ID_PREFIX = "src_"
SECRET_PREFIX = "phs_"
MAX_ACTIVE_SECRETS = 2  # the newest and the one it replaces, during a rotation


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return f"{SECRET_PREFIX}{secrets.token_urlsafe(24)}"


async def create_source(
    store: Catalog, kind: SourceKind, workspace: str, config: dict[str, Any], with_secret: bool
) -> tuple[Source, str | None]:
    """Create a source; returns it and its secret (shown only now) when it has one."""
    secret = new_secret() if with_secret else None
    config = {**config, "secret_hashes": [hash_secret(secret)] if secret else []}
    source = Source(
        source_id=f"{SOURCE_ID_PREFIX}{secrets.token_hex(8)}",
        workspace=workspace,
        kind=kind,
        config=config,
        created_us=now_us(),
    )
    await store.put_source(source)
    return source, secret


async def rotate_secret(
    store: Catalog, source_id: str, *, revoke_oldest: bool = False
) -> tuple[Source, str]:
    """Issue a new secret for the one the source checks (Amplitude's header secret, Copernica's
    ``?token=``); the previous one keeps working until ``drop_previous_secret``.

    Never adds a check: a source without a secret (Copernica without a token, checked by its
    signature alone) is refused, as a new ``?token=`` check would lock its webhook out. Never
    revokes an active secret unasked: with ``MAX_ACTIVE_SECRETS`` active (a rotation under way)
    it is refused unless ``revoke_oldest``, which retires the oldest of them now.

    Raises ``NotFound``, ``RotationRefused`` (nothing changed).
    """
    source = await _existing(store, source_id)
    active = _secret_hashes(source)
    if len(active) >= MAX_ACTIVE_SECRETS and not revoke_oldest:
        raise RotationRefused(
            "rotation_under_way",
            f"Source {source_id} has {len(active)} active secrets already (a rotation is under"
            " way): a new one would revoke the oldest, which may still be in use. Drop the"
            " previous secret first (only the newest keeps working), or ask to revoke the"
            " oldest.",
        )
    secret = new_secret()
    hashes = [hash_secret(secret), *active]
    updated = _with_config(source, secret_hashes=hashes[:MAX_ACTIVE_SECRETS])
    await store.put_source(updated)
    return updated, secret


async def drop_previous_secret(store: Catalog, source_id: str) -> Source:
    """Keep only the newest secret. Raises ``NotFound``, ``RotationRefused`` (no secret)."""
    source = await _existing(store, source_id)
    updated = _with_config(source, secret_hashes=_secret_hashes(source)[:1])
    await store.put_source(updated)
    return updated


def secret_matches(source: Source, presented: str | None) -> bool:
    """Constant-time check of a presented secret against every active one."""
    if not presented:
        return False
    digest = hash_secret(presented)
    matched = False
    for stored in source.config.get("secret_hashes", []):
        matched |= hmac.compare_digest(digest, stored)
    return matched


def webhook_url(base_url: str, source: Source) -> str:
    return f"{base_url.rstrip('/')}/v1/webhooks/{source.source_id}"


def public_view(source: Source, base_url: str) -> dict[str, Any]:
    """What `sources list/show` print: never a secret, only how many are active."""
    config = {k: v for k, v in source.config.items() if k != "secret_hashes"}
    return {
        "source_id": source.source_id,
        "url": webhook_url(base_url, source),
        "kind": source.kind,
        "workspace": source.workspace,
        "config": config,
        "active_secrets": len(source.config.get("secret_hashes", [])),
    }


async def _existing(store: Catalog, source_id: str) -> Source:
    source = await store.get_source(source_id)
    if source is None:
        raise NotFound(f"No source with id {source_id!r}")
    return source


def _secret_hashes(source: Source) -> list[str]:
    """The active secrets' hashes, newest first. Raises ``RotationRefused`` when there are
    none: the source checks no secret, and rotating (or dropping) would add a check."""
    hashes: list[str] = source.config.get("secret_hashes", [])
    if not hashes:
        raise RotationRefused(
            "no_secret",
            f"Source {source.source_id} has no secret to rotate: it was created without a"
            " token, and its calls are checked by their signature alone. Nothing was changed"
            " (a ?token= check now would refuse every call of its webhook); to use a token,"
            " create a new source with one.",
        )
    return hashes


def _with_config(source: Source, **changes: Any) -> Source:
    return dataclasses.replace(source, config={**source.config, **changes})
