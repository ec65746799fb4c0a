"""The one frozen type that crosses every stage: a normalised property update."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

Kind = Literal["update", "delete"]
Op = Literal["set_once", "add", "append", "remove"]
"""What an event does to one property besides setting it (README, Property operations); a property an event's
``ops`` does not name is set (``None``: unset). The argument is its entry in ``properties``."""
OPS: tuple[Op, ...] = ("set_once", "add", "append", "remove")
Version = tuple[int, str]
"""(event time in microseconds, event_id): the order in which updates win."""


def same_value(a: Any, b: Any) -> bool:
    """Whether two property values (decoded JSON; None: absent) are the same JSON value, the
    one equality of values every stage uses (the fold, change detection, the stores' copies).
    Python's == is not it: ``1``, ``1.0`` and ``true`` are three values, as are ``0``, ``-0.0``
    and ``false``, ``[1]`` and ``[true]``, ``{"a": 1}`` and ``{"a": 1.0}`` (no
    coercion). Lists and objects are the same when their JSON text is (keys in their order)."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is str or kind is int or kind is bool or a is None:
        return bool(a == b)
    if kind is float:  # -0.0 == 0.0 in Python, not as JSON text
        return bool(a == b) and (a != 0.0 or _copysign(1.0, a) == _copysign(1.0, b))
    return bool(_encode_json(a) == _encode_json(b))


_encode_json = msgspec.json.Encoder().encode
_copysign = math.copysign


# gc=False: an event holds JSON values, which cannot refer back to it, so no reference cycle
# runs through one; untracked, making and freeing one (hundreds a batch request) skips the
# collector's list (benchmarks/README.md).
class Event(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True, gc=False):
    """One update of one contact's properties, as every source produces it.

    ``kind="update"`` sets ``properties`` (``None`` unsets a property), except those that
    ``ops`` names: for them the value is the argument of that operation (``set_once``: the
    value, ``add``: a number, ``append``/``remove``: a list). ``ops`` is None on an event of
    sets only (most of them: they encode as before, and records from before decode as such).
    ``kind="delete"`` deletes the contact as of ``ts_us``: every property absent as of it.
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
    ops: dict[str, Op] | None = None  # appended last: older records decode without it

    @property
    def version(self) -> Version:
        return (self.ts_us, self.event_id)


def predates(event: Event, upto_us: int) -> bool:
    """Whether an erasure at ``upto_us`` covers the event: its event time is at or before it, or
    it was received at or before it (a future-dated event sent before the erasure is the
    contact's data all the same)."""
    return event.ts_us <= upto_us or 0 < event.received_us <= upto_us


def erased_stub(event: Event) -> Event:
    """What is kept of an event dropped or erased for its contact's erasure: which event it
    was (id, contact, time, source, kind), none of what it said."""
    return msgspec.structs.replace(event, properties={}, metadata=None, event_name="", ops=None)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def encode_events(events: Sequence[Event]) -> bytes:
    """``b"".join(encode_event(e) for e in events)``, byte for byte, in one msgspec call: the
    events encoded as one msgpack array, less the array's header (1, 3 or 5 bytes by length).
    A third of the CPU of encoding them one by one at 100 events."""
    count = len(events)
    encoded = _encoder.encode(events)
    return encoded[1 if count < 16 else 3 if count < 2**16 else 5 :]


def decode_event(data: bytes) -> Event:
    """Raises ``msgspec.DecodeError`` / ``msgspec.ValidationError`` on a corrupt record."""
    return _decoder.decode(data)


_random = random.Random()  # seeded from os.urandom: ids differ across processes and restarts
os.register_at_fork(after_in_child=_random.seed)  # and across forked workers


_getrandbits = _random.getrandbits
_made_in: list[Any] = [-1, ""]  # the millisecond of the last id, and its ids' common start


def new_event_id() -> str:
    """A UUID in version 4 form whose first 48 bits are the time in milliseconds (the layout of
    RFC 9562's version 7) and whose other 74 are random. Ids made later sort later, so the store's
    index of ids grows at its end instead of at random places: applying an event costs about half
    the CPU it did with fully random ids (benchmarks/README.md). The random part comes from a
    seeded PRNG: ids need uniqueness, not secrecy, and it is ~10x cheaper than the OS pool."""
    bits = _getrandbits(74)  # 12 after the version digit, 14 after the variant bits, 48 last
    # %-formatting: a third faster than the f-string here, and this runs once per event.
    return "%s%03x-%04x-%012x" % (  # noqa: UP031
        _time_prefix(),
        bits >> 62,
        0x8000 | (bits >> 48) & 0x3FFF,
        bits & 0xFFFFFFFFFFFF,
    )


def new_event_ids(count: int) -> list[str]:
    """``count`` ids for the events of one request, made as ``new_event_id`` makes one but for
    their last 48 bits: a random number for the first, counting up (modulo 2**48) for the rest.
    Within the request they differ by construction; against any other id they have the same odds
    of a clash as ids made one by one, give or take the count (~2**-62 per pair of requests made
    in one millisecond). A batch's ids then cost about a third of the CPU."""
    return ids_of_run(new_id_run(), count)


IdRun = tuple[str, int, int]
"""What a request's ids are made from (``new_event_ids``): their first ``ID_RUN_CHARS``
characters, then the first id's last 48 bits as 36 and 12 (the ones that count up). The SQLite
log keeps a plain batch's run instead of its ids (plain_batch.py)."""
ID_RUN_CHARS = 24  # the characters every id of a run starts with (an IdRun's first item)


def new_id_run() -> IdRun:
    bits = _getrandbits(74)
    variant = 0x8000 | (bits >> 48) & 0x3FFF
    return (
        f"{_time_prefix()}{bits >> 62:03x}-{variant:04x}-",
        bits >> 12 & 0xFFFFFFFFF,
        bits & 0xFFF,
    )


def ids_of_run(run: IdRun, count: int) -> list[str]:
    """The first ``count`` ids of ``run``, the same each time."""
    start, high, low = run
    # The last 48 bits as 9 hex digits that change once in 4,096 ids and 3 that count, from a
    # table: one concatenation an id instead of a formatting (a third of the CPU).
    ids: list[str] = []
    while len(ids) < count:
        head = "%s%09x" % (start, high)  # noqa: UP031
        ids += [head + digits for digits in _HEX3[low : low + count - len(ids)]]
        high, low = high + 1 & 0xFFFFFFFFF, 0  # modulo 2**48 with the 3 digits
    return ids


_HEX3 = ["%03x" % i for i in range(4096)]  # noqa: UP031


def _time_prefix() -> str:
    """The ids' first 13 characters and the version digit, for the current millisecond."""
    ms = time.time_ns() // 1_000_000
    if ms != _made_in[0]:
        _made_in[:] = [ms, f"{ms >> 16 & 0xFFFFFFFF:08x}-{ms & 0xFFFF:04x}-4"]
    prefix: str = _made_in[1]
    return prefix


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
    if 0 <= us < _ISO_BY_DAYS_US:
        # ``_iso_of_datetime``'s string from integers and the day's date (what it costs on a
        # read's hot path: a third).
        whole, micro = divmod(us, 1_000_000)
        day, second = divmod(whole, 86_400)
        date = _days.get(day)
        if date is None:
            if len(_days) >= 4_096:
                _days.clear()
            date = _days[day] = _iso_of_datetime(day * 86_400_000_000)[:10]
        minute, second = divmod(second, 60)
        if micro:
            return f"{date}T{_HOURS_MINUTES[minute]}:{_SECONDS[second]}.{micro:06d}Z"
        return f"{date}T{_HOURS_MINUTES[minute]}:{_SECONDS[second]}Z"
    return _iso_of_datetime(us)


def _iso_of_datetime(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


# Below 2**51 microseconds (the year 2041) ``us / 1_000_000`` is within 0.25 µs of the exact
# time, so ``_iso_of_datetime`` rounds it back to ``us`` and ``iso`` may count instead; past
# that, its float's rounding is the answer, as it always was (tests/test_native_api.py).
_ISO_BY_DAYS_US = 2**51
_days: dict[int, str] = {}  # day since the epoch -> its date, "YYYY-MM-DD"
_HOURS_MINUTES = ["%02d:%02d" % divmod(minute, 60) for minute in range(1_440)]  # noqa: UP031
_SECONDS = ["%02d" % second for second in range(60)]  # noqa: UP031
