"""Copernica's webhook signature (draft-cavage HTTP signatures, RSA-SHA256), verified.

Copernica signs every webhook call: ``Signature: keyId="…",algorithm="rsa-sha256",headers="…",
signature="<base64>"`` over ``(request-target)``, ``Host``, ``Date``, ``X-Copernica-ID``,
``Digest`` (``SHA-256=<base64 of the body's hash>``) and ``X-Nonce``, among others. The public key
is published as a DKIM-style TXT record at the ``keyId`` name (``v=DKIM1; k=rsa; p=<base64 DER>``)
under ``copernica.com``; a source may pin PEM keys instead (tests, air-gapped installs).

``verify_request`` runs every check and raises ``SignatureRejected`` (401) naming the first that
failed; cheap checks run before the key lookup. What it returns names the call's ``(Digest,
X-Nonce)`` for the caller to refuse a replay with (``Store.remember_nonce``, shared by every
process), only once the signature holds, so unsigned requests cannot fill it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Protocol

from profilehook.constants import COPERNICA_DNS_TIMEOUT_S, COPERNICA_MAX_CLOCK_SKEW_S
from profilehook.errors import ConfigurationError, SignatureRejected

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from dns.resolver import Resolver

# Without these covered, a signature would not bind the request to its body, time, nonce,
# account and destination.
REQUIRED_HEADERS = ("(request-target)", "host", "date", "x-copernica-id", "digest", "x-nonce")
SUPPORTED_ALGORITHM = "rsa-sha256"
COPERNICA_KEY_ID = re.compile(r"(?:[a-z0-9_-]+\.)+copernica\.com")
MISSING_EXTRA = "Copernica signatures need extra packages: pip install 'profilehook[copernica]'"

HeaderPairs = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class SignedRequest:
    """What verification needs of a request. ``target`` is the path and query exactly as sent."""

    method: str
    target: str
    headers: HeaderPairs
    body: bytes


@dataclass(frozen=True)
class SignatureParams:
    """The parameters of a ``Signature`` header."""

    key_id: str
    algorithm: str
    headers: tuple[str, ...]
    signature: bytes


@dataclass(frozen=True)
class Verified:
    """A call whose signature holds: its parameters, and its ``(Digest, X-Nonce)``, which a
    replay repeats, to be remembered until ``fresh_until_s`` (after it, its Date is refused)."""

    params: SignatureParams
    digest: str
    nonce: str
    fresh_until_s: float


class KeyResolver(Protocol):
    """Finds the RSA public key a ``keyId`` names; raises ``SignatureRejected`` when it cannot."""

    def resolve(self, key_id: str, now_s: float) -> RSAPublicKey: ...


def verify_request(
    request: SignedRequest,
    *,
    account: str,
    keys: KeyResolver,
    now_s: float,
    max_skew_s: float = COPERNICA_MAX_CLOCK_SKEW_S,
) -> Verified:
    """Verify a Copernica webhook call; what it holds when it holds. Not a replay check: the
    caller remembers ``Verified.digest`` and ``nonce`` where every process sees them.

    Raises ``SignatureRejected`` (401) with the failed check in ``reason`` and ``detail``.
    """
    headers = header_values(request.headers)
    params = parse_signature_header(headers.get("signature"))
    _check_covered(params, headers)
    _check_account(headers["x-copernica-id"], account)
    date_s = check_date(headers["date"], now_s, max_skew_s)
    check_digest(headers["digest"], request.body)
    key = keys.resolve(params.key_id, now_s)
    text = signing_string(params.headers, request.method, request.target, headers)
    _verify_rsa(key, params, text)
    return Verified(params, headers["digest"], headers["x-nonce"], date_s + max_skew_s)


def header_values(headers: HeaderPairs) -> dict[str, str]:
    """Lower-cased names -> trimmed values; repeated headers joined with ``", "`` (draft-cavage)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    joined: dict[str, list[str]] = {}
    for name, value in pairs:
        joined.setdefault(name.lower(), []).append(value.strip())
    return {name: ", ".join(values) for name, values in joined.items()}


_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"([^"]*)"|([^",\s]*))\s*(?:,|\s|$)')


def parse_signature_header(value: str | None) -> SignatureParams:
    """Parse ``keyId="…",algorithm="…",headers="…",signature="…"`` (commas or whitespace between).

    ``headers`` defaults to ``date`` as the draft says. Raises ``SignatureRejected``.
    """
    if value is None:
        raise SignatureRejected("missing_signature", "Missing Signature header")
    params = _signature_params(value)
    if "keyid" not in params or "signature" not in params:
        raise _malformed("keyId and signature are required")
    algorithm = params.get("algorithm", "")
    if algorithm.lower() != SUPPORTED_ALGORITHM:
        shown = repr(algorithm) if algorithm else "(none given)"
        raise SignatureRejected(
            "unsupported_algorithm",
            f"Unsupported signature algorithm {shown}; only {SUPPORTED_ALGORITHM} is accepted",
        )
    return SignatureParams(
        key_id=params["keyid"],
        algorithm=algorithm.lower(),
        headers=tuple(params.get("headers", "date").lower().split()),
        signature=_base64(params["signature"], _malformed("signature is not base64")),
    )


def _signature_params(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    position, end = 0, len(value.rstrip())
    while position < end:
        found = _PARAM.match(value, position)
        if found is None:
            raise _malformed(f"cannot parse at character {position}")
        name = found.group(1).lower()
        if name in params:
            raise _malformed(f"{found.group(1)} is given twice")
        params[name] = found.group(2) if found.group(2) is not None else found.group(3)
        position = found.end()
    return params


def _malformed(why: str) -> SignatureRejected:
    return SignatureRejected("malformed_signature", f"Malformed Signature header: {why}")


def _check_covered(params: SignatureParams, headers: Mapping[str, str]) -> None:
    uncovered = [name for name in REQUIRED_HEADERS if name not in params.headers]
    if uncovered:
        raise SignatureRejected(
            "uncovered_headers", f"Signature does not cover required headers: {' '.join(uncovered)}"
        )
    missing = [n for n in params.headers if n != "(request-target)" and n not in headers]
    if missing:
        raise SignatureRejected(
            "missing_header", f"Headers covered by the signature are missing: {' '.join(missing)}"
        )


def _check_account(value: str, account: str) -> None:
    if not hmac.compare_digest(value.encode(), account.encode()):
        raise SignatureRejected(
            "wrong_account", f"X-Copernica-ID {value!r} is not this source's account"
        )


def check_date(value: str, now_s: float, max_skew_s: float) -> float:
    """The ``Date`` header as Unix seconds, refused when further than ``max_skew_s`` from now."""
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise SignatureRejected("malformed_date", f"Malformed Date header {value!r}") from None
    if date.tzinfo is None:
        raise SignatureRejected("malformed_date", f"Date header {value!r} has no time zone")
    date_s = date.timestamp()
    offset_s = date_s - now_s
    if abs(offset_s) > max_skew_s:
        side = "in the future" if offset_s > 0 else "old"
        raise SignatureRejected(
            "stale_date",
            f"Date is {abs(offset_s):.0f} s {side}; allowed is ±{max_skew_s:.0f} s",
        )
    return date_s


def check_digest(value: str, body: bytes) -> None:
    """``Digest: SHA-256=<base64>`` (RFC 3230; several digests may be listed) must match the body."""
    for item in value.split(","):
        algorithm, _, encoded = item.strip().partition("=")
        if algorithm.lower() == "sha-256":
            error = SignatureRejected("malformed_digest", "Malformed SHA-256 value in Digest")
            expected = _base64(encoded, error)
            if not hmac.compare_digest(expected, hashlib.sha256(body).digest()):
                raise SignatureRejected("digest_mismatch", "Digest does not match the body")
            return
    raise SignatureRejected("malformed_digest", "Digest header has no SHA-256 value")


def signing_string(
    covered: Sequence[str], method: str, target: str, headers: Mapping[str, str]
) -> bytes:
    """The draft-cavage signing string: one ``name: value`` line per covered header."""
    lines = []
    for name in covered:
        value = f"{method.lower()} {target}" if name == "(request-target)" else headers[name]
        lines.append(f"{name}: {value}")
    return "\n".join(lines).encode("utf-8")


def _verify_rsa(key: RSAPublicKey, params: SignatureParams, text: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        key.verify(params.signature, text, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureRejected(
            "bad_signature", f"Signature does not verify with key {params.key_id!r}"
        ) from None


def _base64(text: str, error: SignatureRejected) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise error from None


# --- keys -------------------------------------------------------------------------------------


class PinnedKeys:
    """Public keys fixed per ``keyId`` (``--public-key KEYID=PEMFILE``); no network."""

    def __init__(self, keys: Mapping[str, RSAPublicKey]):
        self._keys = dict(keys)

    @classmethod
    def from_pem(cls, pems: Mapping[str, bytes]) -> PinnedKeys:
        """Raises ``ConfigurationError`` for a PEM that is not an RSA public key."""
        return cls(
            {key_id: load_public_key(pem, pem=True, name=key_id) for key_id, pem in pems.items()}
        )

    def resolve(self, key_id: str, now_s: float) -> RSAPublicKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise SignatureRejected(
                "unknown_key", f"Unknown keyId {key_id!r}: not among this source's pinned keys"
            ) from None


@dataclass(frozen=True)
class TxtAnswer:
    """A TXT lookup's records (each one's strings already joined) and their TTL."""

    records: list[str]
    ttl_s: float


class TxtLookupFailed(Exception):
    """Raised by a ``TxtLookup`` when the name has no usable answer."""


TxtLookup = Callable[[str], TxtAnswer]


@dataclass
class DnsKeys:
    """DKIM-style keys in DNS at the ``keyId`` name, which must end in ``.copernica.com``.

    A found key is cached for its record's TTL. ``lookup`` is injectable so tests stay offline.
    """

    lookup: TxtLookup = field(default_factory=lambda: dnspython_lookup)
    _cache: dict[str, tuple[RSAPublicKey, float]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def resolve(self, key_id: str, now_s: float) -> RSAPublicKey:
        name = key_id.lower()
        if not COPERNICA_KEY_ID.fullmatch(name):
            raise SignatureRejected(
                "foreign_key", f"keyId {key_id!r} is not a name under copernica.com"
            )
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached[1] > now_s:
            return cached[0]
        key, ttl_s = self._fetch(name)
        with self._lock:
            self._cache[name] = (key, now_s + ttl_s)
        return key

    def _fetch(self, name: str) -> tuple[RSAPublicKey, float]:
        try:
            answer = self.lookup(name)
        except TxtLookupFailed as exc:
            raise SignatureRejected("key_lookup_failed", f"No key for {name!r}: {exc}") from None
        for record in answer.records:
            der = dkim_public_key(record)
            if der is not None:
                return load_public_key(der, pem=False, name=name), answer.ttl_s
        raise SignatureRejected(
            "key_lookup_failed", f"No DKIM RSA key in the TXT record of {name!r}"
        )


def dkim_public_key(record: str) -> bytes | None:
    """The DER key of a DKIM key record (``v=DKIM1; k=rsa; p=…``), or None if it is not one."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        tag, sep, value = part.partition("=")
        if sep:
            tags[tag.strip()] = "".join(value.split())
    if tags.get("v", "DKIM1") != "DKIM1" or tags.get("k", "rsa") != "rsa" or not tags.get("p"):
        return None
    try:
        return base64.b64decode(tags["p"], validate=True)
    except (binascii.Error, ValueError):
        return None


def load_public_key(data: bytes, *, pem: bool, name: str) -> RSAPublicKey:
    """An RSA public key from PEM or DER; ``ConfigurationError`` for a pinned PEM that is wrong,
    ``SignatureRejected`` for a published DER key that is wrong."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    except ImportError as exc:
        raise ConfigurationError(MISSING_EXTRA) from exc
    try:
        key = (serialization.load_pem_public_key if pem else serialization.load_der_public_key)(
            data
        )
    except ValueError:
        key = None
    if isinstance(key, RSAPublicKey):
        return key
    if pem:
        raise ConfigurationError(f"Public key for keyId {name!r} is not an RSA public key in PEM")
    raise SignatureRejected("key_lookup_failed", f"The key published at {name!r} is not RSA")


def dnspython_lookup(name: str, resolver: Resolver | None = None) -> TxtAnswer:
    """TXT records of ``name`` through dnspython (the system's resolvers unless one is given).

    Raises ``TxtLookupFailed`` for every DNS failure (no such name, no answer, timeout).
    """
    try:
        import dns.exception
        import dns.resolver
        from dns.rdtypes.txtbase import TXTBase
    except ImportError as exc:
        raise ConfigurationError(MISSING_EXTRA) from exc
    try:
        answer = (resolver or dns.resolver.get_default_resolver()).resolve(
            name, "TXT", lifetime=COPERNICA_DNS_TIMEOUT_S
        )
    except dns.exception.DNSException as exc:
        raise TxtLookupFailed(type(exc).__name__) from None
    records = [
        b"".join(rdata.strings).decode("ascii", "replace")
        for rdata in answer
        if isinstance(rdata, TXTBase)
    ]
    ttl_s = float(answer.rrset.ttl) if answer.rrset is not None else 0.0
    return TxtAnswer(records, ttl_s)
