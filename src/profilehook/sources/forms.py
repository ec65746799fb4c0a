"""PHP-bracket ``application/x-www-form-urlencoded`` bodies, decoded as PHP decodes them.

Copernica posts its webhooks from PHP, so the reference is PHP's own parser (``parse_str``,
``$_POST``: ``php_default_treat_data`` and ``php_register_variable_ex``), reproduced rule by rule:

* pairs split on ``&`` (empty pairs skipped) and each on its first ``=``; a pair without ``=`` has
  the value ``""``; ``+`` is a space and ``%XX`` a byte (malformed escapes stay as written), so
  percent-encoded brackets (``%5B``, ``%5D``, as ``http_build_query`` writes them) are brackets;
* a name is cut at its first NUL byte; leading spaces are dropped; in the top-level name (before
  the first ``[``) every space and ``.`` becomes ``_`` (``a.b=1`` is ``a_b``); a name that is
  empty there (``=x``, ``[a]=x``) is ignored;
* ``[key]`` nests, ``[]`` (or ``[ ]``) appends at the next integer index; anything after a ``]``
  that is not ``[`` is ignored (``a[b]c=1`` is ``a[b]=1``); a ``[`` never closed turns into ``_``
  at the top level (``a[b=1`` is ``a_b``) and ends the name deeper down (``a[b][c=1`` is ``a[b]``);
* keys that are canonical decimal integers in 64-bit range (``0``, ``-3``, not ``03`` or ``-0``)
  are integer keys, so ``a[1]`` and ``a[]`` share one index sequence (PHP >= 8.3 numbering: after
  only negative keys the next index follows the largest, not 0);
* the last value of a repeated name wins; a value where an array is needed is replaced by an
  array, and an array is replaced by a later plain value.

Output (the one choice PHP leaves open): each PHP array becomes what ``json_encode`` would make of
it, read back by Python's ``json`` - a ``list`` when its keys are exactly ``0..n-1`` in order
(``a[]=x&a[]=y`` and ``a[0]=x&a[1]=y`` alike), otherwise a ``dict`` with ``str`` keys in PHP's
order. The top level is always a ``dict``. Every leaf is a ``str``.

Departures from PHP, on purpose: more than ``max_fields`` pairs or more than ``max_depth``
brackets raise ``FormTooComplex`` (413) where PHP silently truncates or drops; a name or value
that is not UTF-8 raises ``ValidationFailed`` (422) where PHP keeps raw bytes.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from profilehook.constants import FORM_MAX_DEPTH, FORM_MAX_FIELDS
from profilehook.errors import FormTooComplex, ValidationFailed
from profilehook.validation import problem

Key = int | str
# A parsed name: the top-level key and one entry per bracket (``None`` appends).
Name = tuple[str, list[str | None]]

_INT_KEY = re.compile(r"(?:0|-?[1-9][0-9]*)")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def decode_form(
    body: bytes, max_fields: int = FORM_MAX_FIELDS, max_depth: int = FORM_MAX_DEPTH
) -> dict[str, Any]:
    """Decode a form body into nested dicts/lists of strings exactly as PHP reads it.

    Raises ``FormTooComplex`` (413) over ``max_fields`` pairs or ``max_depth`` brackets in a
    name, and ``ValidationFailed`` (422) when a name or value is not valid UTF-8.
    """
    pairs = [(start, raw) for start, raw in _pairs(body) if raw]
    if len(pairs) > max_fields:
        raise FormTooComplex(f"Form has more than {max_fields} fields")
    root = _PhpArray()
    for start, raw in pairs:
        name_bytes, _, value_bytes = raw.partition(b"=")
        name = _text(_unescape(name_bytes).split(b"\0", 1)[0], start, raw)
        parsed = parse_name(name, max_depth)
        if parsed is not None:
            _register(root, parsed, _text(_unescape(value_bytes), start, raw))
    return {str(key): _plain(value) for key, value in root.items.items()}


def parse_name(name: str, max_depth: int = FORM_MAX_DEPTH) -> Name | None:
    """Split a decoded field name the way ``php_register_variable_ex`` does.

    Returns ``None`` for a name PHP ignores. Raises ``FormTooComplex`` past ``max_depth``.
    """
    name = name.lstrip(" ")
    bracket = name.find("[")
    head = name if bracket < 0 else name[:bracket]
    base = head.replace(" ", "_").replace(".", "_")
    if not base:
        return None
    if bracket < 0:
        return base, []
    return _brackets(name, bracket, base, max_depth)


def _brackets(name: str, bracket: int, base: str, max_depth: int) -> Name:
    """Read ``[...]`` groups from ``name[bracket]`` on, with PHP's handling of the malformed."""
    indices: list[str | None] = []
    while True:
        if len(indices) >= max_depth:
            raise FormTooComplex(f"Form field nests brackets deeper than {max_depth} levels")
        start = bracket + 1
        probe = start + 1 if name[start : start + 1] == " " else start
        close = probe if name[probe : probe + 1] == "]" else name.find("]", probe)
        if close < 0:
            if indices:
                return base, indices
            tail = re.sub(r"[ .\[]", "_", name[start:])
            return f"{base}_{tail}", []
        indices.append(None if close == probe else name[start:close])
        bracket = close + 1
        if name[bracket : bracket + 1] != "[":
            return base, indices


class _PhpArray:
    """A PHP array: an ordered map with int|str keys and a next free integer index."""

    __slots__ = ("items", "next_free")

    def __init__(self) -> None:
        self.items: dict[Key, Any] = {}
        self.next_free: int | None = None

    def set(self, key: Key, value: Any) -> None:
        self.items[key] = value
        if isinstance(key, int) and (self.next_free is None or key >= self.next_free):
            self.next_free = min(key + 1, _LONG_MAX)

    def append(self, value: Any) -> bool:
        """``$a[] = value``; False (nothing stored) when the next index is taken."""
        key = 0 if self.next_free is None else self.next_free
        if key in self.items:
            return False
        self.set(key, value)
        return True


def php_key(index: str) -> Key:
    """A key as PHP stores it: canonical decimal integers in 64-bit range become ints."""
    if not _INT_KEY.fullmatch(index):
        return index
    number = int(index)
    return number if _LONG_MIN <= number <= _LONG_MAX else index


def _register(root: _PhpArray, name: Name, value: str) -> None:
    base, indices = name
    table = root
    key: Key | None = php_key(base)
    for index in indices:
        if key is None:
            child = _PhpArray()
            if not table.append(child):
                return
        else:
            found = table.items.get(key)
            child = found if isinstance(found, _PhpArray) else _PhpArray()
            if child is not found:
                table.set(key, child)
        table, key = child, None if index is None else php_key(index)
    if key is None:
        table.append(value)
    else:
        table.set(key, value)


def _plain(value: Any) -> Any:
    """PHP array -> list (keys exactly 0..n-1 in order) or dict with str keys, like json_encode."""
    if not isinstance(value, _PhpArray):
        return value
    keys = list(value.items)
    values = [_plain(item) for item in value.items.values()]
    if keys == list(range(len(keys))):
        return values
    return {str(key): item for key, item in zip(keys, values, strict=True)}


def _pairs(body: bytes) -> list[tuple[int, bytes]]:
    """Every ``&``-separated piece with its byte offset in the body."""
    out: list[tuple[int, bytes]] = []
    start = 0
    for raw in body.split(b"&"):
        out.append((start, raw))
        start += len(raw) + 1
    return out


def _unescape(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _text(data: bytes, start: int, raw: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    shown = raw.decode("utf-8", "replace")
    raise ValidationFailed(
        [
            problem(
                "string_unicode",
                ("body", start),
                "Input should be a valid string, unable to parse raw data as a unicode string",
                shown,
            )
        ]
    )
