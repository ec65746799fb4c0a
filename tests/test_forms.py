"""The PHP-bracket form decoder reads every body as PHP's ``parse_str`` / ``$_POST`` would.

Bodies are written by hand, byte for byte as PHP's ``http_build_query`` produces them (brackets
as ``%5B``/``%5D``, ``urlencode``: space as ``+``, everything but ``A-Za-z0-9_.-`` escaped) or as
Copernica's documentation shows them (bare brackets). Hypothesis then round-trips structures
through an encoder that mimics ``http_build_query``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profilehook.errors import FormTooComplex, ValidationFailed
from profilehook.sources.forms import decode_form, parse_name

# -- what http_build_query writes --------------------------------------------------------------

COPERNICA_PROFILE = (
    b"type=update&profile=123&parameters%5Bmail%5D=johny%2Bnewemail%40example.com"
    b"&timestamp=1979-02-12+12%3A49%3A23&time=287671763&id=123&database=1"
    b"&fields%5Bname%5D=Johny&fields%5Bmail%5D=johny%2Bnewemail%40example.com"
    b"&interests%5Bblue%5D=1&interests%5Bred%5D=0"
    b"&created=1979-02-12+12%3A49%3A23&modified=1979-02-12+12%3A49%3A23"
)


def test_copernica_profile_as_http_build_query_writes_it():
    assert decode_form(COPERNICA_PROFILE) == {
        "type": "update",
        "profile": "123",
        "parameters": {"mail": "johny+newemail@example.com"},
        "timestamp": "1979-02-12 12:49:23",
        "time": "287671763",
        "id": "123",
        "database": "1",
        "fields": {"name": "Johny", "mail": "johny+newemail@example.com"},
        "interests": {"blue": "1", "red": "0"},
        "created": "1979-02-12 12:49:23",
        "modified": "1979-02-12 12:49:23",
    }


def test_copernica_subprofile_as_http_build_query_writes_it():
    body = (
        b"type=update&subprofile=123&id=12&database=1&collection=2&profile=123"
        b"&fields%5Bname%5D=Johny&fields%5Bempty%5D="
    )
    assert decode_form(body) == {
        "type": "update",
        "subprofile": "123",
        "id": "12",
        "database": "1",
        "collection": "2",
        "profile": "123",
        "fields": {"name": "Johny", "empty": ""},
    }


def test_a_php_list_written_with_numeric_indices_is_a_list():
    # http_build_query(['interests' => ['blue', 'red']])
    body = b"interests%5B0%5D=blue&interests%5B1%5D=red"
    assert decode_form(body) == {"interests": ["blue", "red"]}


def test_nested_maps_and_lists():
    # http_build_query(['a' => ['b' => ['c' => 'd', 'e' => ['f', 'g']]]])
    body = b"a%5Bb%5D%5Bc%5D=d&a%5Bb%5D%5Be%5D%5B0%5D=f&a%5Bb%5D%5Be%5D%5B1%5D=g"
    assert decode_form(body) == {"a": {"b": {"c": "d", "e": ["f", "g"]}}}


def test_utf8_plus_and_escaped_plus():
    # http_build_query(['name' => 'Zoë €', 'mail' => 'a+b@x.nl', 'tilde' => '~'])
    body = b"name=Zo%C3%AB+%E2%82%AC&mail=a%2Bb%40x.nl&tilde=%7E"
    assert decode_form(body) == {"name": "Zoë €", "mail": "a+b@x.nl", "tilde": "~"}


# -- what Copernica's documentation shows: bare brackets ---------------------------------------


def test_documented_wire_shapes_with_bare_brackets():
    body = b"parameters[key]=value&interests[]=xyz&interests[]=abc&fields[a][]=1&fields[a][b]=2"
    assert decode_form(body) == {
        "parameters": {"key": "value"},
        "interests": ["xyz", "abc"],
        "fields": {"a": {"0": "1", "b": "2"}},
    }


# -- PHP's rules, one by one -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", {}),
        (b"&&a=1&", {"a": "1"}),  # empty pairs are skipped
        (b"flag&x=", {"flag": "", "x": ""}),  # no '=' means the empty string
        (b"a=1&a=2", {"a": "2"}),  # the last of a repeated name wins
        (b"a=x=y", {"a": "x=y"}),  # split on the first '='
        (b"x=%zz%4&y=%41", {"x": "%zz%4", "y": "A"}),  # malformed escapes stay as written
        (b"v=a%00b", {"v": "a\x00b"}),  # values are binary-safe
        (b"a%00b=1", {"a": "1"}),  # names are C strings: cut at NUL
        (b"a.b=1&c+d=2&e%20f=3", {"a_b": "1", "c_d": "2", "e_f": "3"}),  # top-level . and space
        (b"a.b[c.d]=1", {"a_b": {"c.d": "1"}}),  # ... but only in the top-level name
        (b"++a=1", {"a": "1"}),  # leading spaces are dropped
        (b"=1&[a]=2&+=3", {}),  # an empty top-level name is ignored
        (b"a[b=1", {"a_b": "1"}),  # an unclosed '[' at the top level becomes '_'
        (b"a[b.c d[e=1", {"a_b_c_d_e": "1"}),  # ... and so do . space [ after it
        (b"a[b][c=1", {"a": {"b": "1"}}),  # an unclosed '[' deeper ends the name
        (b"a[b]c=1&d[e]f[g]=2", {"a": {"b": "1"}, "d": {"e": "2"}}),  # junk after ']' ignored
        (b"a[]]=1", {"a": ["1"]}),
        (b"a[ ]=1&a[ b]=2", {"a": {"0": "1", " b": "2"}}),  # '[ ]' appends; ' b' keeps its space
        (b"a[x[y]=1", {"a": {"x[y": "1"}}),  # '[' inside an index is literal
        (b"a]b[c]=1", {"a]b": {"c": "1"}}),  # ']' in the top-level name is literal
    ],
)
def test_php_parse_str_rules(body, expected):
    assert decode_form(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # canonical decimal integers are integer keys, sharing the index sequence with '[]'
        (b"a[5]=x&a[]=y", {"a": {"5": "x", "6": "y"}}),
        (b"a[0]=x&a[]=y", {"a": ["x", "y"]}),
        (b"a[]=x&a[1]=y&a[0]=z", {"a": ["z", "y"]}),  # overwrites keep their place
        # not integers: leading zero, '-0', '+1', beyond 64 bits -- string keys, so a dict
        (b"a[05]=x", {"a": {"05": "x"}}),
        (b"a[-0]=x&a[]=y", {"a": {"-0": "x", "0": "y"}}),
        (b"a[%2B1]=x", {"a": {"+1": "x"}}),
        (b"a[9223372036854775808]=x&a[]=y", {"a": {"9223372036854775808": "x", "0": "y"}}),
        # out of order: PHP keeps insertion order, so it is not a list
        (b"a[1]=x&a[0]=y", {"a": {"1": "x", "0": "y"}}),
        # PHP >= 8.3: after only negative keys the next index follows the largest
        (b"a[-5]=x&a[]=y", {"a": {"-5": "x", "-4": "y"}}),
        # the index after PHP_INT_MAX is taken: PHP drops the appended value
        (b"a[9223372036854775807]=x&a[]=y", {"a": {"9223372036854775807": "x"}}),
        # top-level numeric names stay names of a dict
        (b"0=a&1=b", {"0": "a", "1": "b"}),
    ],
)
def test_integer_keys_follow_php_arrays(body, expected):
    assert decode_form(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"a=1&a[b]=2", {"a": {"b": "2"}}),  # a scalar where an array is needed is replaced
        (b"a[b]=2&a=1", {"a": "1"}),  # an array is replaced by a later scalar
        (b"a[b]=1&a[b][c]=2", {"a": {"b": {"c": "2"}}}),
        (b"a[b][c]=1&a[b][d]=2&a[e]=3", {"a": {"b": {"c": "1", "d": "2"}, "e": "3"}}),
        (b"a[][x]=1&a[][x]=2", {"a": [{"x": "1"}, {"x": "2"}]}),  # each '[]' is a new item
    ],
)
def test_repeated_and_conflicting_names(body, expected):
    assert decode_form(body) == expected


def test_parse_name_exposes_php_name_splitting():
    assert parse_name("a.b[c][][ d]") == ("a_b", ["c", None, " d"])
    assert parse_name(" [x]") is None


# -- limits and errors -------------------------------------------------------------------------


def test_given_max_fields_pairs_when_decoded_then_accepted_and_one_more_is_413():
    body = b"&".join(b"f%d=1" % i for i in range(1000))
    assert len(decode_form(body)) == 1000
    with pytest.raises(FormTooComplex) as caught:
        decode_form(body + b"&one=more")
    assert caught.value.status_code == 413
    assert caught.value.detail == "Form has more than 1000 fields"


def test_empty_pairs_do_not_count_as_fields():
    assert decode_form(b"a=1&&&&b=2", max_fields=2) == {"a": "1", "b": "2"}


def test_given_depth_4_when_a_fifth_bracket_then_413():
    assert decode_form(b"a[1][2][3][4]=x") == {"a": {"1": {"2": {"3": {"4": "x"}}}}}
    for body in (b"a[1][2][3][4][5]=x", b"a[][][][][]=x", b"a[1][2][3][4][5=x"):
        with pytest.raises(FormTooComplex) as caught:
            decode_form(body)
        assert caught.value.status_code == 413
        assert caught.value.detail == "Form field nests brackets deeper than 4 levels"


def test_junk_after_the_last_bracket_is_not_depth():
    # PHP stops reading at the junk, so no fifth level is ever opened.
    assert decode_form(b"a[1][2][3][4]x[5]=y") == {"a": {"1": {"2": {"3": {"4": "y"}}}}}


def test_limits_are_parameters():
    with pytest.raises(FormTooComplex):
        decode_form(b"a=1&b=2", max_fields=1)
    with pytest.raises(FormTooComplex):
        decode_form(b"a[b][c]=1", max_depth=1)


@pytest.mark.parametrize("body", [b"ok=1&name=%FF", b"ok=1&%C3%28=1", b"ok=1&v=\xe2\x82"])
def test_invalid_utf8_in_a_name_or_value_is_422(body):
    with pytest.raises(ValidationFailed) as caught:
        decode_form(body)
    assert caught.value.status_code == 422
    [problem] = caught.value.detail
    assert problem["type"] == "string_unicode"
    assert problem["loc"] == ["body", 5]  # the byte offset of the offending pair


# -- hypothesis: http_build_query round-trips ---------------------------------------------------


def urlencode(text: str) -> str:
    """PHP's urlencode: like quote_plus, but '~' is escaped too."""
    return quote_plus(text, safe="").replace("~", "%7E")


def http_build_query(data: dict[str, Any]) -> bytes:
    """PHP's http_build_query for nested arrays of strings (lists as 0..n-1 indices)."""
    parts: list[str] = []
    for key, value in data.items():
        _emit(parts, urlencode(key), value)
    return "&".join(parts).encode("ascii")


def _emit(parts: list[str], prefix: str, value: Any) -> None:
    if isinstance(value, str):
        parts.append(f"{prefix}={urlencode(value)}")
        return
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        _emit(parts, f"{prefix}%5B{urlencode(str(key))}%5D", item)


_INTEGER = re.compile(r"0|-?[1-9][0-9]*")
characters = st.characters(codec="utf-8")
values = st.text(characters, max_size=8)
# Names PHP reads back unchanged: no '.', ' ', '[' or NUL at the top level; inside brackets no
# ']' or NUL, not '' or ' ' (those append), not an integer (that would make a list).
top_names = st.text(
    st.characters(codec="utf-8", exclude_characters=". [\x00"), min_size=1, max_size=6
)
inner_names = st.text(
    st.characters(codec="utf-8", exclude_characters="]\x00"), min_size=1, max_size=6
).filter(lambda k: k != " " and not _INTEGER.fullmatch(k))


def trees(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return values
    inner = trees(depth - 1)
    return st.one_of(
        values,
        st.dictionaries(inner_names, inner, min_size=1, max_size=3),
        st.lists(inner, min_size=1, max_size=3),
    )


forms = st.dictionaries(top_names, trees(4), max_size=5)


@given(forms)
def test_http_build_query_round_trips(data):
    assert decode_form(http_build_query(data)) == data


@given(st.binary(max_size=64) | st.text("ab1[]&=%+. \x00", max_size=40).map(str.encode))
def test_any_body_decodes_to_strings_or_raises_a_client_error(body):
    try:
        decoded = decode_form(body)
    except (FormTooComplex, ValidationFailed):
        return
    assert all(isinstance(name, str) and name for name in decoded)
    stack = list(decoded.values())
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            assert isinstance(item, str)
