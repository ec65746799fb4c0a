"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a destination's
receiver verifies with any Standard Webhooks library.

The secret is ``whsec_`` and the base64 of 24 random bytes, shown once at creation. A call
carries ``webhook-id`` (the change id: the same on every retry, receivers dedupe by it),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``: ``v1,`` and the
base64 HMAC-SHA256, under the secret's bytes, of ``{id}.{timestamp}.{body}``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret. Raises ``ValueError`` for anything else."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a Standard Webhooks secret starts with whsec_")
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a Standard Webhooks secret is whsec_ and base64") from None


def signature(key: bytes, webhook_id: str, timestamp_s: int, body: bytes) -> str:
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp_s, body)
    digest = hmac.digest(key, signed, "sha256")  # one C call: no HMAC object per signature
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, webhook_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """The three headers of one signed call."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature(key, webhook_id, timestamp_s, body),
    }
