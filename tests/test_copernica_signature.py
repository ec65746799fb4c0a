"""Copernica's webhook signature: a request signed as Copernica signs it passes; every kind of
forgery, staleness, replay or misconfiguration is refused with 401 and a detail naming the check.

Requests are signed here with a freshly generated RSA key, following Copernica's documentation
and draft-cavage: ``Digest: SHA-256=<base64>``, then a signing string of ``name: value`` lines
(lower-cased names, ``(request-target)`` as ``post /path?query``) signed RSA-SHA256 PKCS#1 v1.5.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any

import dns.resolver
import dns.rrset
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from profilehook.errors import ConfigurationError, SignatureRejected
from profilehook.sources.copernica_signature import (
    DnsKeys,
    PinnedKeys,
    SignedRequest,
    TxtAnswer,
    TxtLookupFailed,
    Verified,
    dnspython_lookup,
    verify_request,
)

NOW_S = 1_700_000_000.0
ACCOUNT = "account_1234"
KEY_ID = "one._domainkey.copernica.com"
TARGET = "/v1/webhooks/src_1?token=s%20cret&x=1"
BODY = b"type=update&profile=123&fields%5Bname%5D=Johny&interests%5B0%5D=blue"
# As in Copernica's documentation: mixed case, lower-cased in the signing string.
COVERED = "(request-target) Host Date Content-length Content-type X-Copernica-ID Digest X-nonce"


@pytest.fixture(scope="module")
def copernica_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(private: rsa.RSAPrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def dkim_record(private: rsa.RSAPrivateKey) -> str:
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def digest_of(body: bytes) -> str:
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


def copernica_headers(body: bytes, date_s: float = NOW_S, nonce: str = "fsd9f2") -> dict[str, str]:
    return {
        "Host": "hooks.example.com",
        "Date": formatdate(date_s, usegmt=True),
        "X-Copernica-ID": ACCOUNT,
        "Digest": digest_of(body),
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": str(len(body)),
        "X-Nonce": nonce,
    }


def sign(
    private: rsa.RSAPrivateKey,
    headers: dict[str, str],
    *,
    target: str = TARGET,
    covered: str = COVERED,
    key_id: str = KEY_ID,
    algorithm: str = "rsa-sha256",
) -> str:
    """The Signature header Copernica would send for these headers."""
    lower = {name.lower(): value for name, value in headers.items()}
    lines = [
        f"{name}: post {target}" if name == "(request-target)" else f"{name}: {lower[name]}"
        for name in covered.lower().split()
    ]
    raw = private.sign("\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256())
    signature = base64.b64encode(raw).decode()
    return f'keyId="{key_id}",algorithm="{algorithm}",headers="{covered}",signature="{signature}"'


def signed_request(private: rsa.RSAPrivateKey, body: bytes = BODY, **kwargs: Any) -> SignedRequest:
    headers = copernica_headers(body)
    headers["Signature"] = sign(private, headers, **kwargs)
    return SignedRequest("POST", TARGET, list(headers.items()), body)


def with_header(request: SignedRequest, name: str, value: str | None) -> SignedRequest:
    """The request with one header replaced (or removed, for None)."""
    kept = [(n, v) for n, v in request.headers if n.lower() != name.lower()]
    return replace(request, headers=kept if value is None else [*kept, (name, value)])


def verify(request: SignedRequest, keys: Any, **kw: Any) -> Verified:
    return verify_request(
        request,
        account=kw.pop("account", ACCOUNT),
        keys=keys,
        now_s=kw.pop("now_s", NOW_S),
        **kw,
    )


@pytest.fixture
def pinned(copernica_key) -> PinnedKeys:
    return PinnedKeys.from_pem({KEY_ID: pem(copernica_key)})


def refused(request: SignedRequest, keys: Any, **kw: Any) -> SignatureRejected:
    with pytest.raises(SignatureRejected) as caught:
        verify(request, keys, **kw)
    assert caught.value.status_code == 401
    return caught.value


# -- the happy path ------------------------------------------------------------------------------


def test_given_a_request_signed_as_copernica_signs_when_verified_then_it_passes(
    copernica_key, pinned
):
    params = verify(signed_request(copernica_key), pinned).params
    assert params.key_id == KEY_ID
    assert params.algorithm == "rsa-sha256"
    assert params.headers[0] == "(request-target)"


def test_headers_may_come_as_a_mapping_and_in_any_case(copernica_key, pinned):
    request = signed_request(copernica_key)
    as_mapping = {name.upper(): value for name, value in request.headers}
    assert verify(replace(request, headers=as_mapping), pinned).params.key_id == KEY_ID


def test_the_documented_layout_with_folded_whitespace_and_no_comma_is_read(copernica_key, pinned):
    request = signed_request(copernica_key)
    value = dict(request.headers)["Signature"]
    sig = value.split('signature="')[1].rstrip('"')
    folded = value.replace(",signature=", "\n   signature=").replace(
        sig, sig[:40] + "\n      " + sig[40:]
    )
    folded = folded.replace(" X-Copernica-ID", "\n       X-Copernica-ID")
    assert verify(with_header(request, "Signature", folded), pinned).params.key_id == KEY_ID


def test_digest_algorithm_name_is_case_insensitive_and_may_be_one_of_several(copernica_key, pinned):
    body = BODY
    headers = copernica_headers(body)
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    headers["Digest"] = f"MD5={md5}, sha-256={digest_of(body).split('=', 1)[1]}"
    headers["Signature"] = sign(copernica_key, headers)
    request = SignedRequest("POST", TARGET, list(headers.items()), body)
    assert verify(request, pinned).params.key_id == KEY_ID


@pytest.mark.parametrize("offset_s", [-300, 300])
def test_a_date_exactly_300_s_away_is_accepted(copernica_key, pinned, offset_s):
    assert verify(signed_request(copernica_key), pinned, now_s=NOW_S + offset_s)


# -- every refusal names its check ---------------------------------------------------------------


def test_wrong_key(other_key, pinned):
    error = refused(signed_request(other_key), pinned)
    assert error.reason == "bad_signature"
    assert error.detail == f"Signature does not verify with key '{KEY_ID}'"


def test_tampered_body(copernica_key, pinned):
    request = replace(signed_request(copernica_key), body=BODY + b"&fields%5Bname%5D=Evil")
    error = refused(request, pinned)
    assert (error.reason, error.detail) == ("digest_mismatch", "Digest does not match the body")


def test_tampered_body_with_a_recomputed_digest(copernica_key, pinned):
    forged = BODY + b"&fields%5Bname%5D=Evil"
    request = with_header(
        replace(signed_request(copernica_key), body=forged), "Digest", digest_of(forged)
    )
    assert refused(request, pinned).reason == "bad_signature"


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Nonce", "other"), ("Host", "evil.example.com"), ("Content-Type", "text/plain")],
)
def test_tampered_covered_header(copernica_key, pinned, name, value):
    request = with_header(signed_request(copernica_key), name, value)
    assert refused(request, pinned).reason == "bad_signature"


@pytest.mark.parametrize("target", ["/v1/webhooks/src_2?token=s%20cret&x=1", "/v1/webhooks/src_1"])
def test_other_request_target(copernica_key, pinned, target):
    request = replace(signed_request(copernica_key), target=target)
    assert refused(request, pinned).reason == "bad_signature"


def test_missing_covered_header(copernica_key, pinned):
    error = refused(with_header(signed_request(copernica_key), "X-Nonce", None), pinned)
    assert error.reason == "missing_header"
    assert error.detail == "Headers covered by the signature are missing: x-nonce"


def test_signature_that_does_not_cover_the_nonce(copernica_key, pinned):
    request = signed_request(copernica_key, covered=COVERED.replace(" X-nonce", ""))
    error = refused(request, pinned)
    assert error.reason == "uncovered_headers"
    assert error.detail == "Signature does not cover required headers: x-nonce"


def test_missing_signature_header(copernica_key, pinned):
    error = refused(with_header(signed_request(copernica_key), "Signature", None), pinned)
    assert (error.reason, error.detail) == ("missing_signature", "Missing Signature header")


@pytest.mark.parametrize(
    ("now_s", "detail"),
    [
        (NOW_S + 301, "Date is 301 s old; allowed is ±300 s"),
        (NOW_S - 3600, "Date is 3600 s in the future; allowed is ±300 s"),
    ],
)
def test_old_or_future_date(copernica_key, pinned, now_s, detail):
    error = refused(signed_request(copernica_key), pinned, now_s=now_s)
    assert (error.reason, error.detail) == ("stale_date", detail)


def test_malformed_date(copernica_key, pinned):
    headers = copernica_headers(BODY)
    headers["Date"] = "yesterday"
    headers["Signature"] = sign(copernica_key, headers)
    request = SignedRequest("POST", TARGET, list(headers.items()), BODY)
    error = refused(request, pinned)
    assert (error.reason, error.detail) == ("malformed_date", "Malformed Date header 'yesterday'")


def test_a_verified_call_names_what_a_replay_repeats_and_until_when_it_is_fresh(
    copernica_key, pinned
):
    """The replay check itself is the store's (shared by every process): test_copernica.py."""
    request = signed_request(copernica_key)
    headers = dict(request.headers)

    verified = verify(request, pinned, now_s=NOW_S + 10)

    assert (verified.digest, verified.nonce) == (headers["Digest"], headers["X-Nonce"])
    assert verified.fresh_until_s == NOW_S + 300  # its Date + the skew allowed


def test_wrong_account(copernica_key, pinned):
    error = refused(signed_request(copernica_key), pinned, account="account_9999")
    assert error.reason == "wrong_account"
    assert error.detail == "X-Copernica-ID 'account_1234' is not this source's account"


def test_unknown_pinned_key_id(copernica_key, pinned):
    error = refused(signed_request(copernica_key, key_id="two._domainkey.copernica.com"), pinned)
    assert error.reason == "unknown_key"
    assert error.detail == (
        "Unknown keyId 'two._domainkey.copernica.com': not among this source's pinned keys"
    )


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("garbage", "cannot parse at character 0"),
        ('keyId="a",algorithm="rsa-sha256" ;', "cannot parse at character 33"),
        ('keyId="a",algorithm="rsa-sha256",headers="date"', "keyId and signature are required"),
        ('keyId="a",keyid="b",algorithm="rsa-sha256",signature="AA=="', "keyid is given twice"),
        ('keyId="a",algorithm="rsa-sha256",signature="not base64!"', "signature is not base64"),
        ('keyId="a"x,algorithm="rsa-sha256",signature="AA=="', "cannot parse at character 0"),
    ],
)
def test_malformed_signature_header(copernica_key, pinned, header, why):
    error = refused(with_header(signed_request(copernica_key), "Signature", header), pinned)
    assert (error.reason, error.detail) == (
        "malformed_signature",
        f"Malformed Signature header: {why}",
    )


@pytest.mark.parametrize(
    ("algorithm", "shown"),
    [("hmac-sha256", "'hmac-sha256'"), ("hs2019", "'hs2019'"), ("", "(none given)")],
)
def test_unsupported_algorithm(copernica_key, pinned, algorithm, shown):
    request = signed_request(copernica_key, algorithm=algorithm)
    error = refused(request, pinned)
    assert error.reason == "unsupported_algorithm"
    assert error.detail == f"Unsupported signature algorithm {shown}; only rsa-sha256 is accepted"


@pytest.mark.parametrize(
    ("digest", "detail"),
    [
        ("MD5=abc", "Digest header has no SHA-256 value"),
        ("SHA-256=%%%", "Malformed SHA-256 value in Digest"),
    ],
)
def test_malformed_digest(copernica_key, pinned, digest, detail):
    headers = copernica_headers(BODY)
    headers["Digest"] = digest
    headers["Signature"] = sign(copernica_key, headers)
    request = SignedRequest("POST", TARGET, list(headers.items()), BODY)
    error = refused(request, pinned)
    assert (error.reason, error.detail) == ("malformed_digest", detail)


def test_pinned_keys_must_be_rsa_public_keys_in_pem():
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    ed_pem = ed.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for bad in (ed_pem, b"not a key"):
        with pytest.raises(ConfigurationError, match="not an RSA public key in PEM"):
            PinnedKeys.from_pem({KEY_ID: bad})


# -- keys from DNS -------------------------------------------------------------------------------


@dataclass
class FakeTxt:
    """A TXT lookup that answers from a table and counts its queries."""

    records: dict[str, list[str]]
    ttl_s: float = 300.0
    queries: list[str] = field(default_factory=list)

    def __call__(self, name: str) -> TxtAnswer:
        self.queries.append(name)
        if name not in self.records:
            raise TxtLookupFailed("NXDOMAIN")
        return TxtAnswer(self.records[name], self.ttl_s)


def dns_keys(records: dict[str, list[str]]) -> tuple[DnsKeys, FakeTxt]:
    lookup = FakeTxt(records)
    return DnsKeys(lookup=lookup), lookup


def test_given_a_dkim_record_when_verified_then_the_key_is_cached_for_its_ttl(
    copernica_key, other_key
):
    keys, lookup = dns_keys({KEY_ID: ["v=spf1 -all", dkim_record(copernica_key)]})
    verify(signed_request(copernica_key), keys)
    verify(signed_request(copernica_key), keys, now_s=NOW_S + 299)
    assert lookup.queries == [KEY_ID]
    # After the TTL the record is read again, and a rotated key takes effect.
    lookup.records[KEY_ID] = [dkim_record(other_key)]
    assert refused(signed_request(copernica_key), keys, now_s=NOW_S + 300).reason == "bad_signature"
    assert lookup.queries == [KEY_ID, KEY_ID]


def test_key_id_outside_copernica_com_is_never_looked_up(copernica_key):
    keys, lookup = dns_keys({})
    for key_id in ("one._domainkey.copernica.com.evil.net", "copernica.com", "evilcopernica.com"):
        error = refused(signed_request(copernica_key, key_id=key_id), keys)
        assert error.reason == "foreign_key"
        assert error.detail == f"keyId '{key_id}' is not a name under copernica.com"
    assert lookup.queries == []


@pytest.mark.parametrize(
    ("records", "detail"),
    [
        (None, f"No key for '{KEY_ID}': NXDOMAIN"),
        (["v=spf1 -all"], f"No DKIM RSA key in the TXT record of '{KEY_ID}'"),
        (["v=DKIM1; k=rsa; p="], f"No DKIM RSA key in the TXT record of '{KEY_ID}'"),  # revoked
        (["v=DKIM1; k=ed25519; p=AAAA"], f"No DKIM RSA key in the TXT record of '{KEY_ID}'"),
        (["v=DKIM1; p=AAAA"], f"The key published at '{KEY_ID}' is not RSA"),
    ],
)
def test_unusable_dns_answers(copernica_key, records, detail):
    keys, _ = dns_keys({} if records is None else {KEY_ID: records})
    error = refused(signed_request(copernica_key), keys)
    assert (error.reason, error.detail) == ("key_lookup_failed", detail)


@dataclass
class FakeResolver:
    """Stands in for ``dns.resolver.Resolver``: answers with a real TXT rrset, or raises."""

    answer: Callable[[str], Any]

    def resolve(self, name: str, rdtype: str, lifetime: float) -> Any:
        assert rdtype == "TXT" and lifetime > 0
        return self.answer(name)


@dataclass
class FakeAnswer:
    rrset: dns.rrset.RRset

    def __iter__(self) -> Any:
        return iter(self.rrset)


def test_dnspython_lookup_joins_the_strings_of_each_record_and_reads_the_ttl(copernica_key):
    record = dkim_record(copernica_key)
    # Long DKIM keys are published as several character-strings in one TXT record.
    text = " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))
    rrset = dns.rrset.from_text(KEY_ID + ".", 123, "IN", "TXT", text)
    answer = dnspython_lookup(KEY_ID, FakeResolver(lambda name: FakeAnswer(rrset)))
    assert answer == TxtAnswer([record], 123.0)


def test_dnspython_failures_become_lookup_failures():
    def nxdomain(name: str) -> Any:
        raise dns.resolver.NXDOMAIN()

    with pytest.raises(TxtLookupFailed, match="NXDOMAIN"):
        dnspython_lookup(KEY_ID, FakeResolver(nxdomain))
