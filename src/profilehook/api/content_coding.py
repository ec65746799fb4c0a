"""Request bodies sent with ``Content-Encoding: gzip`` or ``deflate`` (the SDK protocols send
gzip), decoded as they arrive, with the body limit applied to the decoded size.

Only a request that declares a coding comes here: the everyday uncompressed body pays one
dictionary lookup for the header. ``identity`` is no coding. One coding is undone; anything
else (``br``, ``compress``, or codings stacked on each other) is a ``415``. A body that does
not decode as its declared coding (a plain body labelled gzip, a truncated stream, bytes after
its end) is a ``400`` that says so. Each arriving chunk is inflated at most to one byte past
what the limit leaves, so a zip bomb is a ``413`` after inflating no more than the limit.
"""

from __future__ import annotations

import zlib

from starlette.types import Receive

from profilehook.errors import BadRequest, ClientDisconnected, PayloadTooLarge, UnsupportedMediaType

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate data
_ZLIB_WBITS = zlib.MAX_WBITS  # RFC 9110's "deflate": zlib-wrapped (RFC 1950)
_RAW_WBITS = -zlib.MAX_WBITS  # what some senders mean by "deflate": no wrapper at all
_CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
SUPPORTED = "gzip, deflate or identity"


def coding_of(declared: str) -> str | None:
    """The one coding to undo for a ``Content-Encoding`` value (repeated headers joined with
    commas), or None for ``identity``. Raises ``UnsupportedMediaType`` (415)."""
    codings = [part.strip().lower() for part in declared.split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _CODINGS:
        return _CODINGS[codings[0]]
    raise UnsupportedMediaType(
        f"Content-Encoding {', '.join(codings)!r} is not supported; send {SUPPORTED}"
    )


async def read_decoded_body(
    receive: Receive, coding: str, content_length: bytes | None, limit_bytes: int
) -> bytes:
    """The body, decoded as it arrives. Raises ``PayloadTooLarge`` (413) when it is, sent or
    decoded, over ``limit_bytes``; ``BadRequest`` (400) when it is not valid ``coding``."""
    if (
        content_length is not None
        and content_length.isdigit()
        and int(content_length) > limit_bytes
    ):
        raise PayloadTooLarge(limit_bytes)
    inflater = Inflater(coding, limit_bytes)
    sent_bytes = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client went away")
        chunk = message.get("body", b"")
        sent_bytes += len(chunk)
        if sent_bytes > limit_bytes:
            raise PayloadTooLarge(limit_bytes)
        inflater.feed(chunk)
        if not message.get("more_body", False):
            return inflater.finish()


class Inflater:
    """Incremental gzip or deflate decoding, refused past ``limit_bytes`` of output."""

    def __init__(self, coding: str, limit_bytes: int):
        self.coding = coding
        self.limit_bytes = limit_bytes
        self.size_bytes = 0  # decoded so far
        self._parts: list[bytes] = []
        self._head = b""  # the first bytes of a deflate body, until its wrapper is known
        self._stream: zlib._Decompress | None = None

    def feed(self, data: bytes) -> None:
        """Decode ``data``. Raises ``PayloadTooLarge`` or ``BadRequest``."""
        if self._stream is None:
            data = self._start(data)
            if self._stream is None:
                return  # too little yet to tell a deflate body's wrapper
        self._decode(data)

    def finish(self) -> bytes:
        """Everything decoded, once the body has ended. Raises ``BadRequest``."""
        if self._stream is None and self._head:  # a deflate body of one byte
            self._decode(self._start(b"", final=True))
        if self._stream is None or not self._stream.eof:
            raise self._invalid("the body ends before the end of the compressed data")
        return b"".join(self._parts)

    def _start(self, data: bytes, final: bool = False) -> bytes:
        """Choose the decoder once enough of the body has arrived to tell; returns the input
        that is still to decode (empty while waiting for more)."""
        if self.coding == "gzip":
            self._stream = zlib.decompressobj(_GZIP_WBITS)
            return data
        self._head += data
        if len(self._head) < 2 and not final:
            return b""
        first = self._head[:2]
        wrapped = len(first) == 2 and first[0] & 0x0F == 8 and int.from_bytes(first) % 31 == 0
        self._stream = zlib.decompressobj(_ZLIB_WBITS if wrapped else _RAW_WBITS)
        data, self._head = self._head, b""
        return data

    def _decode(self, data: bytes) -> None:
        try:
            self._inflate(data)
        except zlib.error as exc:
            raise self._invalid(str(exc)) from None

    def _inflate(self, data: bytes) -> None:
        assert self._stream is not None
        while data:
            if self._stream.eof:
                if self.coding != "gzip":
                    raise self._invalid("bytes after the end of the compressed data")
                self._stream = zlib.decompressobj(_GZIP_WBITS)  # a further gzip member
            room = self.limit_bytes - self.size_bytes
            out = self._stream.decompress(data, room + 1)
            self.size_bytes += len(out)
            if self.size_bytes > self.limit_bytes:
                raise PayloadTooLarge(self.limit_bytes)
            self._parts.append(out)
            # Below the output cap, all input was taken; what follows a stream's end is next.
            data = self._stream.unused_data if self._stream.eof else b""

    def _invalid(self, reason: str) -> BadRequest:
        return BadRequest(f"The body is not valid {self.coding} (Content-Encoding): {reason}")
