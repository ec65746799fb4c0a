"""No server-side request forgery through a destination URL (README, Getting changes out).

A destination URL must be ``https`` and name a host whose every address is public: loopback,
private, link-local (cloud metadata at 169.254.169.254 among them), shared (100.64/10),
multicast, reserved and unspecified addresses are refused, IPv4-mapped IPv6 included. The check
runs when a destination is created and again for every connection, on the addresses the
connection then uses (``resolve``: the sender connects to one of exactly those, so a name that
resolves elsewhere a moment later, DNS rebinding, cannot slip through). Redirects are never
followed (sender.py). ``allow_private`` (``PROFILEHOOK_DESTINATIONS_ALLOW_PRIVATE``) lifts both
rules, for tests and closed networks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from profilehook.errors import DestinationRefused

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
MAX_URL_CHARS = 2_000

# Metadata services outside the ranges above (Alibaba's is in 100.64/10, refused anyway).
_METADATA = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}


@dataclass(frozen=True)
class Target:
    """Where a destination's calls go: scheme, host (as written, for TLS and ``Host``), port,
    and the path with its query."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def parse_url(url: str, allow_private: bool) -> Target:
    """A destination URL's target. Raises ``DestinationRefused``: not ``https`` (``http`` too
    with ``allow_private``), no host, credentials in it, a literal address that is refused."""
    if len(url) > MAX_URL_CHARS or not url.isprintable() or any(c.isspace() for c in url):
        raise DestinationRefused("the URL is too long or holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"not a URL: {exc}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise DestinationRefused("a destination URL must be https")
    if not parts.hostname:
        raise DestinationRefused("a destination URL needs a host")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("a destination URL may not hold credentials")
    host = parts.hostname
    if not allow_private:
        literal = _literal(host)
        if literal is not None and refused(literal):
            raise DestinationRefused(f"{host} is {refused(literal)}: not allowed")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path)


def refused(address: IpAddress) -> str | None:
    """Why a destination may not be called at ``address``; None: it may."""
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    if address in _METADATA:
        return "a cloud metadata address"
    for why, test in (
        ("a loopback address", address.is_loopback),
        ("an unspecified address", address.is_unspecified),
        ("a link-local address (cloud metadata among them)", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("a reserved address", address.is_reserved),
        ("a private address", address.is_private),
    ):
        if test:
            return why
    if not address.is_global:
        return "not a public address"
    return None


async def resolve(
    target: Target, allow_private: bool, resolver: Resolver | None = None
) -> list[str]:
    """The addresses to connect to for ``target``, all of them allowed. Raises
    ``DestinationRefused`` when the host does not resolve or any address it resolves to is
    refused (one bad answer is enough: the caller could not tell which it would get)."""
    literal = _literal(target.host)
    if literal is not None:
        found = [str(literal)]
    else:
        try:
            found = await (resolver or _getaddrinfo)(target.host, target.port)
        except OSError as exc:
            raise DestinationRefused(f"{target.host} does not resolve: {exc}") from None
    if not found:
        raise DestinationRefused(f"{target.host} does not resolve")
    if not allow_private:
        for text in found:
            why = refused(ipaddress.ip_address(text.split("%", 1)[0]))
            if why is not None:
                raise DestinationRefused(f"{target.host} resolves to {text}, {why}: not allowed")
    return found


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
