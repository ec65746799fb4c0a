"""FastAPI-style validation problems (``{"loc", "msg", "type", ...}``), built in one place."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from profilehook.constants import MAX_JSON_DEPTH, MAX_JSON_INT

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


def value_error(loc: Loc, value: Any, message: str) -> Problem:
    return problem("value_error", loc, f"Value error, {message}", value, {"error": message})


_BYTE_POS = re.compile(r"\(byte (\d+)\)")


def decode_json(body: bytes, loc: Loc = ("body",)) -> tuple[Any, list[Problem]]:
    """Decode a JSON body; on failure return FastAPI-style problems, never raise.

    An empty body is FastAPI's ``missing`` body. Invalid UTF-8 (also inside strings), lone
    surrogates, NaN/Infinity, numbers out of float range and trailing commas are all
    ``json_invalid``. Nesting deeper than ``MAX_JSON_DEPTH`` is refused too, and so is any
    integer outside the I-JSON range ``±MAX_JSON_INT`` (RFC 7493: what every JSON consumer,
    JavaScript included, holds exactly), each named by its ``loc``. A repeated object key keeps
    its last value, as JavaScript, Python and PostgreSQL's jsonb do.
    """
    if not body.strip():
        return None, [missing(loc, None)]
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        return None, [_json_invalid(loc, body, exc)]
    found = _walk(value, MAX_JSON_DEPTH)
    if found is _TOO_DEEP:
        error = f"JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        return None, [problem("json_invalid", loc, "JSON decode error", {}, {"error": error})]
    if found is _BIG_INT:
        return None, [_int_range(where, number) for where, number in _big_ints(value, loc)]
    return value, []


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
    return problem("json_invalid", (*loc, position), "JSON decode error", {}, {"error": text})


_TOO_DEEP = object()
_BIG_INT = object()


def _walk(value: Any, max_depth: int) -> object | None:
    """One pass over the decoded tree (iterative, no recursion): ``_TOO_DEEP`` when containers
    nest deeper than ``max_depth``, else ``_BIG_INT`` for an integer outside ``±MAX_JSON_INT``."""
    if type(value) is int:
        return _BIG_INT if not -MAX_JSON_INT <= value <= MAX_JSON_INT else None
    if type(value) is not dict and type(value) is not list:
        return None
    big = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return _TOO_DEEP
        for child in item.values() if type(item) is dict else item:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
            elif kind is int and not -MAX_JSON_INT <= child <= MAX_JSON_INT:
                big = True
    return _BIG_INT if big else None


def _big_ints(value: Any, loc: Loc) -> list[tuple[Loc, int]]:
    """Every integer outside ``±MAX_JSON_INT`` with its location, in document order (the slow
    path of a refusal; the depth is already known to be within bounds)."""
    found: list[tuple[Loc, int]] = []
    stack: list[tuple[Any, Loc]] = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if type(item) is dict:
            stack.extend(reversed([(child, (*where, key)) for key, child in item.items()]))
        elif type(item) is list:
            stack.extend(reversed([(child, (*where, i)) for i, child in enumerate(item)]))
        elif type(item) is int and not -MAX_JSON_INT <= item <= MAX_JSON_INT:
            found.append((where, item))
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

