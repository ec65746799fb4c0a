"""What clients send, judged: FastAPI-style validation problems (``{"loc", "msg", "type",
...}``), built in one place, and the JSON content-type check. Below both ``sources/`` and ``api/``,
which both use them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from profilehook.constants import MAX_JSON_DEPTH, MAX_JSON_INT
from profilehook.errors import UnsupportedMediaType

Loc = tuple[str | int, ...]
Problem = dict[str, Any]


def problem(
    type_: str, loc: Loc, msg: str, input_: Any = None, ctx: dict[str, Any] | None = None
) -> Problem:
    p: Problem = {"type": type_, "loc": list(loc), "msg": msg, "input": input_}
    if ctx is not None:
        p["ctx"] = ctx
    return p


def missing(loc: Loc, input_: Any) -> Problem:
    return problem("missing", loc, "Field required", input_)


def string_type(loc: Loc, value: Any) -> Problem:
    return problem("string_type", loc, "Input should be a valid string", value)


def dict_type(loc: Loc, value: Any) -> Problem:
    return problem("dict_type", loc, "Input should be a valid dictionary", value)


def too_short(loc: Loc, value: Any, min_length: int = 1) -> Problem:
    unit = "character" if min_length == 1 else "characters"
    return problem(
        "string_too_short",
        loc,
        f"String should have at least {min_length} {unit}",
        value,
        {"min_length": min_length},
    )


def too_long(loc: Loc, value: Any, max_length: int) -> Problem:
    return problem(
        "string_too_long",
        loc,
        f"String should have at most {max_length} characters",
        value,
        {"max_length": max_length},
    )


def required_string(
    value: Any, loc: Loc, problems: list[Problem], max_chars: int, whole: Any = None
) -> str | None:
    """``value`` when it is a non-empty string of at most ``max_chars``; else None, with its
    problem appended (``whole`` is what a ``missing`` problem echoes, as FastAPI does)."""
    if value is None:
        problems.append(missing(loc, whole))
    elif not isinstance(value, str):
        problems.append(string_type(loc, value))
    elif not value:
        problems.append(too_short(loc, value))
    elif len(value) > max_chars:
        problems.append(too_long(loc, value, max_chars))
    else:
        return value
    return None


def fits_bytes(value: str | None, loc: Loc, problems: list[Problem], max_bytes: int) -> str | None:
    """``value`` when its UTF-8 form has at most ``max_bytes``; else None and a problem."""
    if value is None or len(value) * 4 <= max_bytes or len(value.encode()) <= max_bytes:
        return value
    problems.append(
        problem(
            "string_too_long",
            loc,
            f"String should have at most {max_bytes} bytes in UTF-8",
            value,
            {"max_bytes": max_bytes},
        )
    )
    return None


def value_error(loc: Loc, value: Any, message: str) -> Problem:
    return problem("value_error", loc, f"Value error, {message}", value, {"error": message})


def same_workspace(body: dict[str, Any], workspace: str, problems: list[Problem]) -> None:
    """A management request may name its key's ``workspace`` (as the CLI's forms do), no other."""
    given = body.get("workspace", workspace)
    if given != workspace:
        problems.append(
            value_error(
                ("body", "workspace"),
                given,
                f"a key manages its own workspace only ({workspace!r}); leave it out",
            )
        )


TOO_OLD = "timestamp is older than the retention window"


def too_old(loc: Loc, value: Any, oldest_us: int) -> Problem:
    """An event time before the retention window (``PROFILEHOOK_HISTORY_RETENTION_DAYS``):
    ``ctx.oldest_accepted`` is the oldest time accepted when it was judged, in Unix seconds."""
    return problem(
        "timestamp_too_old", loc, TOO_OLD, value, {"oldest_accepted": oldest_us / 1_000_000}
    )


_BYTE_POS = re.compile(r"\(byte (\d+)\)")


def decode_json(
    body: bytes, loc: Loc = ("body",), shallow: Callable[[Any], bool] | None = None
) -> tuple[Any, list[Problem]]:
    """Decode a JSON body; on failure return FastAPI-style problems, never raise.

    An empty body is FastAPI's ``missing`` body. Invalid UTF-8 (also inside strings), lone
    surrogates, NaN/Infinity, numbers beyond a double and trailing commas are ``json_invalid``,
    and so is nesting deeper than ``MAX_JSON_DEPTH``. Values no backend can keep are refused
    with their ``loc``: an integer outside the I-JSON range ``±MAX_JSON_INT`` (RFC 7493: what
    every JSON consumer, JavaScript included, holds exactly), and a string or key containing
    U+0000 (PostgreSQL cannot store it). A repeated object key keeps its last value, as
    JavaScript, Python and PostgreSQL's jsonb do.

    ``shallow(value)``, when given, is a cheap proof for the expected shape that the decoded
    value nests no deeper than ``MAX_JSON_DEPTH``; when it holds, the depth walk is skipped
    (the batch endpoint's bodies have too many brackets for the byte filter to tell).
    """
    value, problems, verdict = _decoded(body, loc, shallow)
    if verdict is _UNSTORABLE:
        return None, unstorable(value, loc)
    return value, problems


def decode_json_keeping_unstorable(
    body: bytes, loc: Loc = ("body",), in_pieces: bool = False
) -> tuple[Any, list[Problem], bool]:
    """``decode_json``, but values no backend can keep are left in the value for the caller to
    find, per item (``holds_unstorable``): the third item is False when the body has none.

    ``in_pieces`` decodes the top level's values and its lists' items one call each, for a
    large body decoded in a thread (see ``_decode_in_pieces``); the result is the same."""
    if not in_pieces:
        value = _plainly(body)
        if value is not _NOT_PLAIN:
            return value, [], False
    value, problems, verdict = _decoded(body, loc, None, in_pieces)
    return value, problems, verdict is _UNSTORABLE


# -- the everyday body, checked in C -----------------------------------------------------------
#
# A body whose containers nest at most ``_PLAIN_DEPTH`` deep, whose integers are all within
# ``±MAX_JSON_INT`` and that has no escaped NUL (JSON has no raw one) decodes with this type to
# exactly what ``msgspec.json.decode`` gives, and is then known to be neither too deep nor to
# hold anything unstorable: the walks of the decoded tree in Python (``_depth``, ``_walk``),
# which cost more than the decoding itself on a batch of a hundred events, are not needed.
# A body that does not fit the type goes to the general path, which decodes it again.

_PLAIN_DEPTH = 8
assert _PLAIN_DEPTH < MAX_JSON_DEPTH
_PlainInt = Annotated[int, Meta(ge=-MAX_JSON_INT, le=MAX_JSON_INT)]


def _plain_type(depth: int) -> Any:
    scalar: Any = str | _PlainInt | float | bool | None
    if depth == 0:
        return scalar
    inner = _plain_type(depth - 1)
    return scalar | list[inner] | dict[str, inner]  # type: ignore[valid-type]


_PLAIN = msgspec.json.Decoder(_plain_type(_PLAIN_DEPTH))
_NOT_PLAIN = object()


def holds_escaped_nul(body: bytes) -> bool:
    """Whether a JSON body may hold U+0000 (written ``\\u0000``), which no store keeps. Most
    bodies hold no backslash at all, which memchr finds out ~40x faster than the search for
    the escape (17 us on a 30 KB body)."""
    return b"\\" in body and b"\\u0000" in body


def _plainly(body: bytes) -> Any:
    """The decoded body when it is in the everyday shape (see above); else ``_NOT_PLAIN``."""
    if holds_escaped_nul(body):
        return _NOT_PLAIN
    try:
        return _PLAIN.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _NOT_PLAIN


def holds_unstorable(value: Any) -> bool:
    """True when ``value`` (a part of what ``decode_json_keeping_unstorable`` decoded) holds an
    integer outside ``±MAX_JSON_INT`` or a string or key with U+0000."""
    return _walk(value, MAX_JSON_DEPTH) is _UNSTORABLE


def _decoded(
    body: bytes, loc: Loc, shallow: Callable[[Any], bool] | None, in_pieces: bool = False
) -> tuple[Any, list[Problem], object | None]:
    """The value, its problems, and ``_UNSTORABLE`` when it may hold unstorable values."""
    if not body.strip():
        return None, [missing(loc, None)], None
    try:
        value = _decode_in_pieces(body) if in_pieces else msgspec.json.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        return None, [_json_invalid(loc, body, exc)], None
    except RecursionError:  # thousands of levels: msgspec gives up before our check can run
        return None, [_too_deep(loc)], None
    if _shallow(body):
        verdict = None if _plain_leaves(body) else _walk(value, MAX_JSON_DEPTH)
    else:
        verdict = (
            _walk(value, MAX_JSON_DEPTH)
            if not _plain_leaves(body)
            else None
            if shallow is not None and shallow(value)
            else _depth(value)
        )
    if verdict is _TOO_DEEP:
        return None, [_too_deep(loc)], None
    return value, [], verdict


_TOP_PIECES = msgspec.json.Decoder(dict[str, msgspec.Raw] | list[msgspec.Raw])
_LIST_PIECES = msgspec.json.Decoder(list[msgspec.Raw])
_WHOLE = msgspec.json.Decoder()


def _decode_in_pieces(body: bytes) -> Any:
    """What ``msgspec.json.decode(body)`` gives, built from a scan of the top level and of the
    lists in it, then each of their items decoded alone. msgspec holds the GIL for the whole
    of a call: over 8 MB of users, one call holds it for a quarter of a second and more, and
    a thread doing it would stall the event loop as much; each of these calls is short.
    A body the pieces cannot decode is decoded whole, which raises its exact problem."""
    try:
        top = _TOP_PIECES.decode(body)
        if type(top) is list:
            return [_WHOLE.decode(item) for item in top]
        return {name: _piece(raw) for name, raw in top.items()}
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _WHOLE.decode(body)


def _piece(raw: msgspec.Raw) -> Any:
    if memoryview(raw)[:1].tobytes() == b"[":  # a Raw starts at its first character
        return [_WHOLE.decode(item) for item in _LIST_PIECES.decode(raw)]
    return _WHOLE.decode(raw)


def _json_invalid(loc: Loc, body: bytes, exc: Exception) -> Problem:
    if isinstance(exc, UnicodeDecodeError):
        # msgspec reports invalid UTF-8 inside a string this way, with the string's offset.
        try:
            body.decode("utf-8")
            text, position = f"Invalid UTF-8: {exc.reason}", 0
        except UnicodeDecodeError as whole:
            text, position = f"Invalid UTF-8: {whole.reason}", whole.start
    else:
        text = str(exc)
        found = _BYTE_POS.search(text)
        position = int(found.group(1)) if found else 0
        if found is None or "surrogate" in text:
            # msgspec calls a lone high surrogate "truncated", without a place.
            lone = _lone_surrogate(body)
            if lone is not None:
                escape = body[lone : lone + 6].decode("ascii")
                text, position = f"lone UTF-16 surrogate {escape} (byte {lone})", lone
    return problem("json_invalid", (*loc, position), "JSON decode error", {}, {"error": text})


# A \uXXXX escape of a surrogate, not itself escaped (preceded by an even run of backslashes).
_SURROGATE_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*(\\u[dD][89a-fA-F][0-9a-fA-F]{2})")


def _lone_surrogate(body: bytes) -> int | None:
    """The offset of the first surrogate escape that is not half of a high-low pair."""
    pending_high: int | None = None
    for found in _SURROGATE_ESCAPE.finditer(body):
        start, is_low = found.start(1), found.group(1)[3] in b"cdefCDEF"
        if pending_high is not None:
            if is_low and start == pending_high + 6:
                pending_high = None
                continue
            return pending_high
        if is_low:
            return start
        pending_high = start
    return pending_high


def _too_deep(loc: Loc) -> Problem:
    error = f"JSON is nested deeper than {MAX_JSON_DEPTH} levels"
    return problem("json_invalid", loc, "JSON decode error", {}, {"error": error})


_TOO_DEEP = object()
_UNSTORABLE = object()
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0000000000")


def _shallow(body: bytes) -> bool:
    """Too few brackets in the raw body to nest past ``MAX_JSON_DEPTH``."""
    return body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH


def _plain_leaves(body: bytes) -> bool:
    """True when the raw body rules out every unstorable value ``_walk`` looks for: no escaped
    NUL (JSON has no raw one), no run of 16 digits (an integer beyond ``±MAX_JSON_INT`` has at
    least 16). With ``_shallow``, a filter that spares walking the decoded tree: scans of the
    bytes in C cost a fraction of the walk (a regex would cost more than the walk)."""
    return b"\\u0000" not in body and b"0000000000000000" not in body.translate(_DIGITS_AS_ZERO)


def _depth(value: Any) -> object | None:
    """``_TOO_DEEP`` when containers nest deeper than ``MAX_JSON_DEPTH``: ``_walk`` without
    the leaves, for bodies ``_plain_leaves`` cleared (a batch has too many brackets to be
    ``_shallow``)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if type(value) in (dict, list) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return _TOO_DEEP
        for child in item.values() if type(item) is dict else item:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
    return None


def _walk(value: Any, max_depth: int) -> object | None:
    """One pass over a decoded tree (iterative: no recursion): ``_TOO_DEEP`` when containers
    nest deeper than ``max_depth``, else ``_UNSTORABLE`` when a value is, else None."""
    bad = _unstorable_leaf(value)
    stack: list[tuple[Any, int]] = [(value, 1)] if type(value) in (dict, list) else []
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return _TOO_DEEP
        if type(item) is dict:
            for key, child in item.items():
                if "\x00" in key:
                    bad = True
                kind = type(child)
                if kind is dict or kind is list:
                    stack.append((child, depth + 1))
                elif (kind is int or kind is str) and _unstorable_leaf(child):
                    bad = True
        else:
            for child in item:
                kind = type(child)
                if kind is dict or kind is list:
                    stack.append((child, depth + 1))
                elif (kind is int or kind is str) and _unstorable_leaf(child):
                    bad = True
    return _UNSTORABLE if bad else None


def _unstorable_leaf(value: Any) -> bool:
    if type(value) is int:
        return not -MAX_JSON_INT <= value <= MAX_JSON_INT
    return type(value) is str and "\x00" in value


def unstorable(value: Any, loc: Loc) -> list[Problem]:
    """A problem for every integer outside ``±MAX_JSON_INT`` and every string or key with
    U+0000 in ``value``, in document order (the slow path of a refusal; call it on a tree
    whose depth is known to be bounded)."""
    found: list[Problem] = []
    stack: list[tuple[Any, Loc, bool]] = [(value, loc, False)]  # (item, loc, is a key)
    while stack:
        item, where, is_key = stack.pop()
        if is_key:
            found.append(_nul(item, where))
        elif type(item) is dict:
            entries: list[tuple[Any, Loc, bool]] = []
            for key, child in item.items():
                if "\x00" in key:
                    entries.append((key, (*where, key), True))
                entries.append((child, (*where, key), False))
            stack.extend(reversed(entries))
        elif type(item) is list:
            stack.extend(reversed([(child, (*where, i), False) for i, child in enumerate(item)]))
        elif type(item) is int and _unstorable_leaf(item):
            found.append(_int_range(where, item))
        elif type(item) is str and _unstorable_leaf(item):
            found.append(_nul(item, where))
    return found


def _int_range(loc: Loc, number: int) -> Problem:
    # pydantic's own types and wording for a bounded integer.
    if number > 0:
        return problem(
            "less_than_equal",
            loc,
            f"Input should be less than or equal to {MAX_JSON_INT}",
            number,
            {"le": MAX_JSON_INT},
        )
    return problem(
        "greater_than_equal",
        loc,
        f"Input should be greater than or equal to {-MAX_JSON_INT}",
        number,
        {"ge": -MAX_JSON_INT},
    )


def _nul(text: str, loc: Loc) -> Problem:
    return value_error(loc, text, "strings may not contain U+0000 (NUL)")


def check_json_content_type(value: bytes | None) -> None:
    """Absent, ``application/json`` or ``application/*+json`` pass; anything else is a 415."""
    if value is None:
        return
    media_type = value.split(b";", 1)[0].strip().lower()
    if media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    ):
        return
    raise UnsupportedMediaType(
        f"Content-Type {media_type.decode('latin-1')!r} is not supported; send application/json"
    )
