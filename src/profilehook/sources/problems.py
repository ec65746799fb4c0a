"""FastAPI-style validation problems (``{"loc", "msg", "type", ...}``), built in one place."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from profilehook.constants import MAX_JSON_DEPTH

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
    """Decode a JSON body; on failure return FastAPI's ``json_invalid`` problem.

    An empty body is FastAPI's ``missing`` body. Invalid UTF-8, NaN/Infinity and trailing
    commas are all malformed JSON. Nesting deeper than ``MAX_JSON_DEPTH`` is refused.
    """
    if not body.strip():
        return None, [missing(loc, None)]
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        text = str(exc)
        found = _BYTE_POS.search(text)
        position = int(found.group(1)) if found else 0
        return None, [
            problem("json_invalid", (*loc, position), "JSON decode error", {}, {"error": text})
        ]
    if too_deep(value, MAX_JSON_DEPTH):
        return None, [
            problem(
                "json_invalid",
                loc,
                "JSON decode error",
                {},
                {"error": f"JSON is nested deeper than {MAX_JSON_DEPTH} levels"},
            )
        ]
    return value, []


def too_deep(value: Any, max_depth: int) -> bool:
    """True when ``value`` nests containers deeper than ``max_depth`` (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
