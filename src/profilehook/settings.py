"""Settings: one immutable object, built from an injected environment (never at import time).

Every field has an environment variable ``PROFILEHOOK_<NAME>``; CLI flags override them.
``profilehook settings`` prints this table, so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from profilehook import constants as c
from profilehook.errors import ConfigurationError

ENV_PREFIX = "PROFILEHOOK_"
MIN_PORT, MAX_PORT = 1, 65535  # TCP's; 0 ("any free port") would make every printed URL wrong
LOG_LEVELS = ("debug", "info", "warning", "error")
SECRET_SETTINGS = frozenset({"console_secret"})  # `profilehook settings` does not print them

# The least value each numeric setting can work with (timeouts have their own rule below).
_MINIMUMS: dict[str, int] = {
    "port": MIN_PORT,
    "max_single_body_bytes": 1,
    "max_batch_body_bytes": 1,
    "max_copernica_body_bytes": 1,
    "max_amplitude_body_bytes": 1,
    "rate_limit_per_s": 0,
    "rate_limit_burst": 1,
    "apply_batch_max_events": 1,
    "history_retention_days": 0,
    "changes_retention_days": 1,
}


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    data_dir: Path = _setting(Path("./profilehook-data"), "Directory of the embedded SQLite files")
    queue_url: str = _setting(
        "",
        "Durable log: empty = SQLite in data_dir;"
        " nats://host:4222[,nats://host2:4222]?stream=S&replicas=N; memory://",
    )
    store_url: str = _setting(
        "", "Profile store: empty = SQLite in data_dir; postgresql://…?schema=S; memory://"
    )
    host: str = _setting("127.0.0.1", "Address `serve` listens on")
    port: int = _setting(8000, "Port `serve` listens on")
    public_url: str = _setting("", "Base URL clients use to reach the service (for printed URLs)")
    max_single_body_bytes: int = _setting(c.MAX_SINGLE_BODY_BYTES, "Body cap, POST /v1/properties")
    max_batch_body_bytes: int = _setting(c.MAX_BATCH_BODY_BYTES, "Body cap, batch endpoint")
    max_copernica_body_bytes: int = _setting(
        c.MAX_COPERNICA_BODY_BYTES, "Body cap, Copernica webhooks"
    )
    max_amplitude_body_bytes: int = _setting(
        c.MAX_AMPLITUDE_BODY_BYTES, "Body cap, Amplitude webhooks"
    )
    rate_limit_per_s: int = _setting(
        c.RATE_LIMIT_PER_S, "Requests per second per API key and per source; 0 = no limit"
    )
    rate_limit_burst: int = _setting(c.RATE_LIMIT_BURST, "Requests a key or source may burst")
    header_timeout_s: float = _setting(
        c.HEADER_TIMEOUT_S, "Seconds a client has to send the request line and headers"
    )
    body_timeout_s: float = _setting(c.BODY_TIMEOUT_S, "Seconds a client has to send the body")
    keep_alive_s: float = _setting(
        c.KEEP_ALIVE_S,
        "Seconds an idle keep-alive connection stays open; behind a load balancer, more than"
        " its idle timeout",
    )
    backend_timeout_s: float = _setting(
        c.BACKEND_TIMEOUT_S,
        "Seconds to wait for the log or store before answering 503 (a request of many events"
        " has 0.2 ms more per event past the first, at most 5 s more)",
    )
    connect_timeout_s: float = _setting(
        c.CONNECT_TIMEOUT_S,
        "Seconds `serve`, `worker` and `check` keep trying to reach NATS at start-up (with"
        " backoff, one log line a try) before they exit non-zero; 0 = try once",
    )
    apply_batch_max_events: int = _setting(c.APPLY_BATCH_MAX_EVENTS, "Events per apply batch")
    auth_cache_max_stale_s: float = _setting(
        c.AUTH_CACHE_MAX_STALE_S,
        "PostgreSQL store: seconds a known API key or source keeps working while PostgreSQL or"
        " its change notifications are down; a revocation is seen within this. Unknown keys get"
        " 503 while they cannot be checked",
    )
    store_timeout_s: float = _setting(
        c.STORE_TIMEOUT_S,
        "PostgreSQL store: seconds one transaction may take (statement and idle-in-transaction"
        " timeouts); a connection silent for longer is dropped. Rebuild and migrations are exempt",
    )
    applier_stall_s: float = _setting(
        c.APPLIER_STALL_S,
        "/readyz fails when the applier applied nothing for this many seconds while events wait",
    )
    history_retention_days: int = _setting(
        0,
        "Days of history kept: an event older than this is refused at ingest, and history"
        " older than this plus the 7-day dedupe window is purged continuously (profiles"
        " unchanged). 0 = keep forever",
    )
    console_secret: str = _setting(
        "",
        "Secret that signs console sessions; empty = a random one kept in"
        " data_dir/console-secret. Scaled out, give every serve process the same one",
    )
    changes_retention_days: int = _setting(
        c.CHANGES_RETENTION_DAYS,
        "Days the change feed keeps each change (GET /v1/changes); older ones are purged"
        " continuously, and a cursor before them is answered 410",
    )
    destinations_allow_private: bool = _setting(
        False,
        "Let destination URLs be http and reach loopback, private and link-local addresses"
        " (tests, closed networks); otherwise https and public addresses only",
    )
    destinations_retry_scale: float = _setting(
        1.0,
        "Multiplies the destinations' retry schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h,"
        " 10 h) and the 5 days after which a failing destination is disabled (tests: 0.001)",
    )
    log_level: str = _setting("info", "Log level: debug, info, warning, error")

    def __post_init__(self) -> None:
        """Refuse values that cannot work, with a one-line message naming the variable: a
        zero body cap would make every request a 413, an unknown log level a traceback.

        Raises ``ConfigurationError``.
        """
        for name, minimum in _MINIMUMS.items():
            if not getattr(self, name) >= minimum:
                _refuse(name, getattr(self, name), f"must be {minimum} or more")
        if self.port > MAX_PORT:
            _refuse("port", self.port, f"must be {MIN_PORT}-{MAX_PORT}")
        for name in (
            "header_timeout_s",
            "body_timeout_s",
            "backend_timeout_s",
            "keep_alive_s",
            "store_timeout_s",
        ):
            if math.isinf(getattr(self, name)):  # a timer that never fires is no timeout
                _refuse(name, getattr(self, name), "must be a finite number of seconds")
        for name in (
            "header_timeout_s",
            "body_timeout_s",
            "backend_timeout_s",
            "auth_cache_max_stale_s",
            "store_timeout_s",
            "applier_stall_s",
        ):
            if not getattr(self, name) > 0:
                _refuse(name, getattr(self, name), "must be more than 0 seconds")
        if not self.keep_alive_s >= 0:
            _refuse("keep_alive_s", self.keep_alive_s, "must be 0 seconds (no keep-alive) or more")
        if self.log_level.lower() not in LOG_LEVELS:
            _refuse("log_level", self.log_level, f"must be one of {', '.join(LOG_LEVELS)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build from ``PROFILEHOOK_*`` variables; ``overrides`` (CLI flags) win when not None.

        Raises ``ConfigurationError`` for a value that does not parse.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def oldest_accepted_us(self, now_us: int) -> int:
        """The oldest event time (microseconds) accepted at ``now_us``: the retention window's
        start, or 0 (everything) when history is kept forever."""
        if self.history_retention_days <= 0:
            return 0
        return max(0, now_us - self.history_retention_days * c.DAY_US)

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    def describe(self) -> list[tuple[str, str, str]]:
        """(environment variable, current value, help) for every setting."""
        return [
            (
                ENV_PREFIX + f.name.upper(),
                "(set)"
                if f.name in SECRET_SETTINGS and getattr(self, f.name)
                else str(getattr(self, f.name)),
                f.metadata["help"],
            )
            for f in fields(self)
        ]

    def to_env(self) -> dict[str, str]:
        """The ``PROFILEHOOK_*`` variables that make ``from_env`` give these settings again
        (how ``serve`` hands its settings, flags included, to its applier process)."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _refuse(name: str, value: Any, rule: str) -> NoReturn:
    raise ConfigurationError(f"{ENV_PREFIX}{name.upper()} {rule}, not {value!r}")


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = type(f.default)
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            return _flag(raw)
        if issubclass(kind, Path):
            return Path(raw)
    except ValueError:
        what = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a path")
        raise ConfigurationError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not {what}") from None
    return raw


def _flag(raw: str) -> bool:
    """A yes/no setting: 1, true, yes, on or 0, false, no, off. Raises ``ValueError``."""
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
