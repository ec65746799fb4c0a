"""The one exception root. Errors that reach HTTP carry their status and their detail.

Third-party exceptions (sqlite3, psycopg, nats) are translated into these at the edge of
``queues/`` and ``stores/``; nothing else escapes those packages.
"""

from __future__ import annotations

from typing import Any

from profilehook.constants import RETRY_AFTER_S


class ProfilehookError(Exception):
    """Root of every error profilehook raises on purpose."""

    status_code = 500

    def __init__(self, detail: Any = "Internal error", headers: dict[str, str] | None = None):
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail
        self.headers = headers or {}


class InvalidApiKey(ProfilehookError):
    status_code = 401

    def __init__(self) -> None:
        super().__init__("Invalid API Key", {"www-authenticate": "Bearer"})


class NotFound(ProfilehookError):
    status_code = 404


class PayloadTooLarge(ProfilehookError):
    status_code = 413

    def __init__(self, limit_bytes: int):
        super().__init__(f"Request body is larger than the limit of {limit_bytes} bytes")


class UnsupportedMediaType(ProfilehookError):
    status_code = 415


class ValidationFailed(ProfilehookError):
    """422 with FastAPI's detail list: every problem found, not only the first."""

    status_code = 422

    def __init__(self, problems: list[dict[str, Any]]):
        super().__init__(problems)


class BadRequest(ProfilehookError):
    status_code = 400


class StoreRefused(ProfilehookError):
    """The store refused this data itself (too long for an index, a value it cannot hold):
    retrying will not help. The applier records the event as failed instead of stalling."""

    status_code = 422


class StorageUnavailable(ProfilehookError):
    """A backend cannot take or serve data right now; the client should retry."""

    status_code = 503

    def __init__(self, detail: str = "Storage unavailable, retry later"):
        super().__init__(detail, {"retry-after": str(RETRY_AFTER_S)})


class RateLimited(ProfilehookError):
    """Over the key's or source's request rate (SPEC 5); retry after ``Retry-After`` seconds."""

    status_code = 429

    def __init__(self, retry_after_s: int):
        super().__init__(
            "Too many requests, retry later", {"retry-after": str(max(1, retry_after_s))}
        )


class RequestTimeout(ProfilehookError):
    """The client did not send its whole body in time (SPEC 5, slow clients)."""

    status_code = 408

    def __init__(self, timeout_s: float):
        super().__init__(
            f"Request body not received within {timeout_s:g} s", {"connection": "close"}
        )


class ConfigurationError(ProfilehookError):
    """Settings that cannot work (bad URL, missing optional driver)."""


class ExtraMissing(ConfigurationError):
    """A kind of webhook source whose optional dependencies are not installed."""

    def __init__(self, kind: str, extra: str | None, cause: ImportError):
        hint = f"pip install 'profilehook[{extra}]'" if extra else "reinstall profilehook"
        super().__init__(f"{kind} webhooks need: {hint}")
        self.kind, self.extra, self.cause = kind, extra, cause


class ClientDisconnected(ProfilehookError):
    status_code = 499


class FormTooComplex(ProfilehookError):
    """A form body over the field-count or bracket-depth limit (SPEC 5): too much to process."""

    status_code = 413


class SignatureRejected(ProfilehookError):
    """A webhook request whose signature, or one of the checks around it, failed.

    ``reason`` is a stable code for logs and metrics; ``detail`` says which check failed.
    """

    status_code = 401

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
