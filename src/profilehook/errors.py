"""The one exception root, and its three groups (as httpx groups its own):

* ``ClientError``: what a client sent cannot be taken; each carries its 4xx status and detail.
* ``BackendError``: a queue or store could not do it (``StorageUnavailable``: retry later;
  ``StoreRefused``: never). Third-party exceptions (sqlite3, psycopg, nats) are translated into
  these at the edge of ``queues/`` and ``stores/``; nothing else escapes those packages.
* ``ConfigurationError``: settings or an installation that cannot work, said at start-up.

``OutputUnwritable`` is the command line's own: a file it was asked to write. One error stays
outside this module on purpose: ``api/deadlines.AlreadyAnswered``, the deadline watchdog's
signal to a handler that the answer has been sent, never raised to anyone else.
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


# -- client errors: the request cannot be taken, and the status says why ---------------------


class ClientError(ProfilehookError):
    """A request refused for what it is or how it came (4xx)."""

    status_code = 400


class BadRequest(ClientError):
    status_code = 400


class PeerRefused(BadRequest):
    """A request to an SDK-compatible endpoint that the peer's real service refuses as a whole
    (README, Speaking the SDKs you already use), with what its SDK reads from the answer
    (``fields``: e.g. Amplitude's ``events_with_invalid_fields``)."""

    def __init__(self, detail: str, fields: dict[str, Any] | None = None):
        super().__init__(detail)
        self.fields = fields or {}


class InvalidApiKey(ClientError):
    status_code = 401

    def __init__(self) -> None:
        super().__init__("Invalid API Key", {"www-authenticate": "Bearer"})


class SignatureRejected(ClientError):
    """A webhook request whose signature, or one of the checks around it, failed.

    ``reason`` is a stable code for logs and metrics; ``detail`` says which check failed.
    """

    status_code = 401

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class MissingScope(ClientError):
    """A valid key without the scope the route needs (README, Access and privacy)."""

    status_code = 403

    def __init__(self, scope: str):
        super().__init__(f"This key lacks the {scope!r} scope")
        self.scope = scope


class NotFound(ClientError):
    status_code = 404


class RequestTimeout(ClientError):
    """The client did not send its whole body in time (RELIABILITY.md, Slow clients)."""

    status_code = 408

    def __init__(self, timeout_s: float):
        super().__init__(
            f"Request body not received within {timeout_s:g} s", {"connection": "close"}
        )


class RotationRefused(ClientError):
    """A rotation that would break the source's sender; nothing was changed.

    ``reason`` is ``"no_secret"`` (the source checks no secret: a Copernica source made without
    a token) or ``"rotation_under_way"`` (``MAX_ACTIVE_SECRETS`` are active already).
    """

    status_code = 409

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class CursorExpired(ClientError):
    """A change-feed cursor older than what is kept: changes after it were purged."""

    status_code = 410

    def __init__(self, retention_days: int | None = None):
        kept = f" (changes are kept {retention_days} days)" if retention_days else ""
        super().__init__(
            f"This cursor has expired: changes after it were purged{kept}; read from the start"
        )


class InvalidCursor(ClientError):
    """A change-feed cursor this store never issued; the API answers 422 for it."""

    status_code = 422


class DestinationRefused(ClientError):
    """A destination URL that may not be called (README, Getting changes out); ``detail`` says
    why: not https, credentials in it, or an address that is not public."""

    status_code = 422


class PayloadTooLarge(ClientError):
    status_code = 413

    def __init__(self, limit_bytes: int):
        super().__init__(f"Request body is larger than the limit of {limit_bytes} bytes")


class FormTooComplex(ClientError):
    """A form body over the field-count or bracket-depth limit (RELIABILITY.md, Limits): too much to process."""

    status_code = 413


class UnsupportedMediaType(ClientError):
    status_code = 415


class ValidationFailed(ClientError):
    """422 with FastAPI's detail list: every problem found, not only the first."""

    status_code = 422

    def __init__(self, problems: list[dict[str, Any]]):
        super().__init__(problems)


class RateLimited(ClientError):
    """Over the key's or source's request rate (RELIABILITY.md, Rate limits); retry after ``Retry-After`` seconds."""

    status_code = 429

    def __init__(self, retry_after_s: int):
        super().__init__(
            "Too many requests, retry later", {"retry-after": str(max(1, retry_after_s))}
        )


class ClientDisconnected(ClientError):
    """The client went away mid-request: nobody is left to answer (499 in the metrics)."""

    status_code = 499


# -- backend errors: a queue or store could not do it -------------------------------------------


class BackendError(ProfilehookError):
    """A queue or store could not do what was asked."""

    status_code = 503


class StorageUnavailable(BackendError):
    """A backend cannot take or serve data right now; the client should retry."""

    status_code = 503

    def __init__(self, detail: str = "Storage unavailable, retry later"):
        super().__init__(detail, {"retry-after": str(RETRY_AFTER_S)})


class StoreRefused(BackendError):
    """The store refused this data itself (too long for an index, a value it cannot hold):
    retrying will not help. The applier records the event as failed instead of stalling."""

    status_code = 422


# -- configuration errors: settings or an installation that cannot work ------------------------


class ConfigurationError(ProfilehookError):
    """Settings that cannot work (bad URL, missing optional driver)."""


class ExtraMissing(ConfigurationError):
    """A kind of webhook source whose optional dependencies are not installed. Reported when
    the server starts; its webhook calls are answered 501 with what to install (the sender's
    retries land once it is)."""

    status_code = 501

    def __init__(self, kind: str, extra: str | None, cause: ImportError):
        hint = f"pip install 'profilehook[{extra}]'" if extra else "reinstall profilehook"
        super().__init__(f"{kind} webhooks need: {hint}")
        self.kind, self.extra, self.cause = kind, extra, cause


# -- the command line's own ---------------------------------------------------------------------


class OutputUnwritable(ProfilehookError):
    """A file the command line was asked to write (``export``) could not be written."""
