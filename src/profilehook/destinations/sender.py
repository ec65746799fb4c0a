"""One webhook call: a POST to a destination, on a connection to an address ``resolve`` allowed
(the name is resolved for this call and the connection goes to one of those addresses, TLS
checked against the host's name), answered within a deadline. Any 2xx is a success; anything
else, redirects included (never followed), a failure with its reason.

Written on asyncio and h11 rather than an HTTP client library: what it needs is to connect to
an address it chose itself, check the certificate for the name, and read no more than the
status, which a general client makes roundabout.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import h11

from profilehook.destinations.addresses import Resolver, Target, resolve
from profilehook.errors import DestinationRefused

USER_AGENT = "profilehook-webhooks/1"
READ_CHUNK_BYTES = 16_384


@dataclass(frozen=True)
class Outcome:
    """What one call came to: the status (None: no answer) and, unless 2xx, why it failed."""

    status_code: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    allow_private: bool,
    resolver: Resolver | None = None,
    tls: ssl.SSLContext | None = None,
) -> Outcome:
    """POST ``body`` to ``target`` (module doc). Never raises for the call's own failures."""
    try:
        async with asyncio.timeout(timeout_s):
            addresses = await resolve(target, allow_private, resolver)
            return await _call(target, addresses, body, headers, tls)
    except TimeoutError:
        return Outcome(None, f"no answer within {timeout_s:g} s")
    except DestinationRefused as exc:
        return Outcome(None, str(exc.detail))
    except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}")


async def _call(
    target: Target,
    addresses: list[str],
    body: bytes,
    headers: dict[str, str],
    tls: ssl.SSLContext | None,
) -> Outcome:
    reader, writer = await _connect(target, addresses, tls)
    try:
        conn = h11.Connection(h11.CLIENT)
        host = target.host if ":" not in target.host else f"[{target.host}]"
        default_port = 443 if target.tls else 80
        authority = host if target.port == default_port else f"{host}:{target.port}"
        request = h11.Request(
            method="POST",
            target=target.path,
            headers=[
                ("host", authority),
                ("user-agent", USER_AGENT),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("connection", "close"),
                *headers.items(),
            ],
        )
        writer.write(
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        await writer.drain()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_CHUNK_BYTES))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = int(event.status_code)
                if 200 <= status < 300:
                    return Outcome(status)
                why = "a redirect, not followed" if 300 <= status < 400 else f"answered {status}"
                return Outcome(status, why)
            return Outcome(None, "the connection closed before an answer")
    finally:
        writer.close()


async def _connect(
    target: Target, addresses: list[str], tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of ``addresses`` that answers (TLS for the host's name)."""
    context = (tls or ssl.create_default_context()) if target.tls else None
    failure: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(
                address,
                target.port,
                ssl=context,
                server_hostname=target.host if context is not None else None,
            )
        except OSError as exc:
            failure = exc
    assert failure is not None
    raise failure
