"""The one frozen type that crosses every stage: a normalised property update."""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

Kind = Literal["update", "delete"]
Version = tuple[int, str]
"""(event time in microseconds, event_id): the order in which updates win."""


class Event(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """One update of one contact's properties, as every source produces it.

    ``kind="update"`` sets ``properties`` (``None`` unsets a property); ``kind="delete"``
    deletes the contact as of ``ts_us``: every property with a version at or below it.
    """

    workspace: str
    event_id: str
    contact_id: str
    ts_us: int
    properties: dict[str, Any]
    source: str = "api"
    event_name: str = ""
    metadata: dict[str, Any] | None = None
    received_us: int = 0
    kind: Kind = "update"

    @property
    def version(self) -> Version:
        return (self.ts_us, self.event_id)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    """Raises ``msgspec.DecodeError`` / ``msgspec.ValidationError`` on a corrupt record."""
    return _decoder.decode(data)


_random = random.Random()  # seeded from os.urandom: ids differ across processes and restarts
os.register_at_fork(after_in_child=_random.seed)  # and across forked workers


_V4_CLEAR = ~(0xF000 << 64) & ~(0xC << 60)  # the version and variant bits ...
_V4_SET = (0x4000 << 64) | (0x8 << 60)  # ... of a version 4, RFC 4122 variant UUID


def new_event_id() -> str:
    """A UUID in version 4 form whose first 48 bits are the time in milliseconds (the layout of
    RFC 9562's version 7) and whose other 74 are random. Ids made later sort later, so the store's
    index of ids grows at its end instead of at random places: applying an event costs about half
    the CPU it did with fully random ids (benchmarks/README.md). The random part comes from a
    seeded PRNG: ids need uniqueness, not secrecy, and it is ~10x cheaper than the OS pool."""
    value = (time.time_ns() // 1_000_000) << 80 | _random.getrandbits(80)
    h = "%032x" % (value & _V4_CLEAR | _V4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_us() -> int:
    return time.time_ns() // 1_000


def seconds(us: int) -> int | float:
    """Microseconds as Unix seconds, an int when whole (as clients usually send them)."""
    whole, frac = divmod(us, 1_000_000)
    return whole if frac == 0 else us / 1_000_000


def iso(us: int | None) -> str | None:
    """Microseconds since the epoch as an RFC 3339 UTC string."""
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")
