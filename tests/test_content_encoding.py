"""Request bodies with a Content-Encoding (api/content_coding.py): gzip and deflate are decoded
on every POST endpoint, the body limits apply to the decoded size, other codings are a 415 and
a body that is not what its coding says is a 400."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from typing import Any

import pytest

from profilehook import constants as c
from profilehook.api.content_coding import Inflater, read_decoded_body
from profilehook.errors import BadRequest, PayloadTooLarge
from tests.test_amplitude import Hook, render_default
from tests.test_native_api import event, wait_applied


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


CODINGS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "GZIP": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": raw_deflate,  # sent as "deflate" by some clients: no zlib wrapper
    "identity": lambda data: data,
    "identity, gzip": gzip.compress,
}


def declared(name: str) -> str:
    return "deflate" if name == "deflate-raw" else name


def post(client: Any, path: str, body: bytes, auth: dict[str, str], coding: str) -> Any:
    headers = {**auth, "Content-Type": "application/json", "Content-Encoding": coding}
    return client.post(path, content=body, headers=headers)


@pytest.mark.parametrize("name", CODINGS)
def test_a_compressed_event_is_accepted_and_applied_as_the_plain_one_is(client, auth, name):
    body = json.dumps(event(event_id=f"e-{name}", user_properties={"plan": name})).encode()
    r = post(client, "/v1/properties", CODINGS[name](body), auth, declared(name))
    assert (r.status_code, r.json()) == (202, {"status": "accepted", "event_id": f"e-{name}"})
    assert wait_applied(client, auth, f"e-{name}")["properties"] == {"plan": name}


@pytest.mark.parametrize("name", ["gzip", "deflate", "deflate-raw"])
def test_a_compressed_batch_is_accepted(client, auth, name):
    events = [event(event_id=f"b{i}", contact_id=f"c{i}") for i in range(50)]
    body = CODINGS[name](json.dumps({"events": events}).encode())
    r = post(client, "/v1/properties/batch", body, auth, declared(name))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 50


@pytest.mark.parametrize("name", ["gzip", "deflate"])
def test_a_compressed_amplitude_webhook_is_accepted(client, settings, auth, name):
    hook = Hook(client, settings, auth)
    body = render_default([{"user_id": f"u{i}"} for i in range(20)])
    headers = {
        "Authorization": f"Bearer {hook.secret}",
        "Content-Type": "application/json",
        "Content-Encoding": name,
    }
    r = hook.post(CODINGS[name](body), headers)
    assert (r.status_code, r.json()) == (200, {"status": "accepted", "accepted": 20, "skipped": 0})


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", b'{"contact_id": "c1"}'),  # a plain body labelled gzip
        ("deflate", b'{"contact_id": "c1"}'),
        ("gzip", gzip.compress(b'{"contact_id": "c1"}')[:-6]),  # cut short
        ("gzip", gzip.compress(b"{}") + b"trailing"),
        ("deflate", zlib.compress(b"{}") + b"trailing"),
        ("gzip", b""),
    ],
    ids=[
        "plain-as-gzip",
        "plain-as-deflate",
        "truncated",
        "gzip-then-junk",
        "deflate-then-junk",
        "empty",
    ],
)
def test_a_body_that_is_not_its_declared_coding_is_a_400_that_says_so(client, auth, coding, body):
    for path in ("/v1/properties", "/v1/properties/batch"):
        r = post(client, path, body, auth, coding)
        assert r.status_code == 400, r.text
        assert r.json()["detail"].startswith(f"The body is not valid {coding} (Content-Encoding)")


@pytest.mark.parametrize(
    "coding", ["br", "compress", "zstd", "gzip, gzip", "deflate, gzip", "gzip;q=1"]
)
def test_an_unsupported_or_stacked_coding_is_a_415(client, settings, auth, coding):
    body = gzip.compress(json.dumps(event()).encode())
    for path in ("/v1/properties", "/v1/properties/batch"):
        r = post(client, path, body, auth, coding)
        assert r.status_code == 415, r.text
        assert "gzip, deflate or identity" in r.json()["detail"]
    hook = Hook(client, settings, auth)
    headers = {"Authorization": f"Bearer {hook.secret}", "Content-Encoding": coding}
    assert hook.post(body, headers).status_code == 415


def test_two_content_encoding_headers_are_stacked_codings(client, auth):
    body = gzip.compress(gzip.compress(json.dumps(event()).encode()))
    headers = [(k, v) for k, v in auth.items()] + [("content-encoding", "gzip")] * 2
    r = client.post("/v1/properties", content=body, headers=headers)
    assert r.status_code == 415, r.text


def test_the_single_event_limit_applies_to_the_decoded_size(client, auth):
    def sized(total: int) -> bytes:
        body = json.dumps(event(user_properties={"blob": ""})).encode()
        return json.dumps(event(user_properties={"blob": "x" * (total - len(body))})).encode()

    at_limit, over = sized(c.MAX_SINGLE_BODY_BYTES), sized(c.MAX_SINGLE_BODY_BYTES + 1)
    assert len(at_limit) == c.MAX_SINGLE_BODY_BYTES
    assert post(client, "/v1/properties", gzip.compress(at_limit), auth, "gzip").status_code == 202
    r = post(client, "/v1/properties", gzip.compress(over), auth, "gzip")
    assert r.status_code == 413 and str(c.MAX_SINGLE_BODY_BYTES) in r.json()["detail"]


def test_a_zip_bomb_is_a_413_without_being_inflated(client, auth):
    bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)  # 200 MiB of spaces
    assert len(bomb) < c.MAX_SINGLE_BODY_BYTES
    r = post(client, "/v1/properties", bomb, auth, "gzip")
    assert r.status_code == 413


def test_inflating_stops_one_byte_past_the_limit_whatever_the_chunk():
    limit = 64 * 1024
    bomb = zlib.compress(b"\0" * (50 * 1024 * 1024), 9)
    inflater = Inflater("deflate", limit)
    with pytest.raises(PayloadTooLarge):
        inflater.feed(bomb)
    assert inflater.size_bytes == limit + 1


def test_a_body_decodes_whatever_its_chunks_and_gzip_members():
    data = json.dumps(event(user_properties={"blob": "x" * 2000})).encode()
    for body, coding in [
        (gzip.compress(data[:10]) + gzip.compress(data[10:]), "gzip"),  # two members
        (zlib.compress(data), "deflate"),
        (raw_deflate(data), "deflate"),
    ]:
        for size in (1, 2, 7, 100, len(body)):
            chunks = [body[i : i + size] for i in range(0, len(body), size)]
            assert asyncio.run(_read(chunks, coding, limit_bytes=len(data))) == data
            with pytest.raises(PayloadTooLarge):
                asyncio.run(_read(chunks, coding, limit_bytes=len(data) - 1))


def test_a_body_sent_over_the_limit_is_413_before_it_is_decoded():
    body = bytes(range(256)) * 10  # does not compress: sent size over the limit
    with pytest.raises(PayloadTooLarge):
        asyncio.run(_read([body], "gzip", limit_bytes=1000))
    with pytest.raises(BadRequest):
        asyncio.run(_read([body[:900]], "gzip", limit_bytes=1000))


async def _read(chunks: list[bytes], coding: str, limit_bytes: int) -> bytes:
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return await read_decoded_body(receive, coding, None, limit_bytes)
