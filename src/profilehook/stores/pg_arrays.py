"""Columns of rows as PostgreSQL arrays in the binary format, made in one pass in C.

The PostgreSQL store sends a batch's rows as one array per column (``unnest(%b::text[], ...)``).
psycopg's generic list dumper finds a dumper for, and calls it on, every element in Python
(about 0.25 µs an element); G's 2,000-event batches carry some 100,000 elements per apply.
A column of ``str``, ``int`` (in int8's range) or ``bytes``, with or without ``None``, is encoded
here by ``struct`` and ``bytes.join`` instead; any other column is left to psycopg.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import Any

TEXT_ARRAY, INT8_ARRAY, BYTEA_ARRAY = 1009, 1016, 1001  # the arrays' type oids
_ELEMENT = {TEXT_ARRAY: 25, INT8_ARRAY: 20, BYTEA_ARRAY: 17}
_HEAD = struct.Struct("!iiIii").pack  # dimensions, has NULLs, element oid, length, lower bound
_LENGTH = struct.Struct("!i").pack
_INT8 = struct.Struct("!iq").pack  # an element: its length (8), its value
_NULL = _LENGTH(-1)
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1


class Array:
    """An array already encoded, with its type's oid."""

    __slots__ = ("data", "oid")

    def __init__(self, oid: int, data: bytes):
        self.oid = oid
        self.data = data


def register(adapters: Any) -> None:
    """Teach ``adapters`` (a psycopg ``AdaptersMap``) to send an ``Array``: its bytes, typed by
    its oid (a dumper per oid, by psycopg's ``get_key``/``upgrade``, so that none becomes *the*
    dumper of text[], say). psycopg is imported here: by the store, once it has loaded it."""
    from psycopg import adapt, pq

    class ArrayDumper(adapt.Dumper):
        format = pq.Format.BINARY

        def __init__(self, cls: type, context: Any = None, oid: int = 0):
            super().__init__(cls, context)
            self.oid = oid

        def get_key(self, obj: Any, format: adapt.PyFormat) -> Any:
            return (self.cls, obj.oid)

        def upgrade(self, obj: Any, format: adapt.PyFormat) -> adapt.Dumper:
            return ArrayDumper(self.cls, None, obj.oid)

        def dump(self, obj: Any) -> bytes:
            data: bytes = obj.data
            return data

    adapters.register_dumper(Array, ArrayDumper)


def columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[Any]:
    """``width`` columns of ``rows``, each an ``Array`` when its values allow (else a list)."""
    if not rows:
        return [[] for _ in range(width)]
    return arrays(*([row[i] for row in rows] for i in range(width)))


def arrays(*columns: list[Any]) -> list[Any]:
    """Each of ``columns`` as ``array`` makes it."""
    return [array(values) for values in columns]


def array(values: list[Any]) -> Any:
    """``values`` as an ``Array`` of text, int8 or bytea; as they are (a list, which psycopg
    adapts) if they are none of those or mixed."""
    kinds = set(map(type, values))
    nulls = type(None) in kinds
    kinds.discard(type(None))
    if kinds == {int}:
        present = [v for v in values if v is not None] if nulls else values
        if min(present) < _INT8_MIN or max(present) > _INT8_MAX:
            return values  # psycopg sends it as numeric: the server's cast refuses it
        if nulls:
            body = b"".join(_NULL if v is None else _INT8(8, v) for v in values)
        else:
            body = b"".join(map(_INT8, itertools.repeat(8, len(values)), values))
        return _array(INT8_ARRAY, nulls, len(values), body)
    encoded: list[Any]
    if kinds == {str}:
        oid = TEXT_ARRAY
        encoded = [None if v is None else v.encode() for v in values]
    elif kinds == {bytes}:
        oid, encoded = BYTEA_ARRAY, values
    else:
        return values
    if nulls:
        body = b"".join(_NULL if e is None else _LENGTH(len(e)) + e for e in encoded)
    else:
        lengths = map(_LENGTH, map(len, encoded))
        body = b"".join(itertools.chain.from_iterable(zip(lengths, encoded, strict=True)))
    return _array(oid, nulls, len(values), body)


def _array(oid: int, nulls: bool, length: int, body: bytes) -> Array:
    return Array(oid, _HEAD(1, int(nulls), _ELEMENT[oid], length, 1) + body)
