"""One webhook call to a destination (README, Getting changes out): signed per Standard Webhooks
so the reference library verifies it; https only, never to loopback, private, link-local or
metadata addresses, checked when a destination is made and on the addresses of every connection
(DNS rebinding); redirects are not followed; any 2xx within the deadline is a success."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from profilehook.destinations.addresses import parse_url, resolve
from profilehook.destinations.sender import post
from profilehook.destinations.signing import new_secret, secret_key, signed_headers
from profilehook.errors import DestinationRefused
from tests.webhook_receiver import receiving


def test_given_a_signed_call_then_the_reference_library_verifies_it() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = b'{"type": "profile.changed", "data": {"n": 1}}'
    now = int(time.time())
    headers = signed_headers(secret_key(secret), "chg_1", now, body)

    assert Webhook(secret).verify(body, headers) == {"type": "profile.changed", "data": {"n": 1}}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1", b"2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/x", "must be https"),
        ("ftp://hooks.example.com/x", "must be https"),
        ("https:///x", "needs a host"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("https://10.1.2.3/x", "private"),
        ("https://192.168.0.1/x", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::ffff:127.0.0.1]/x", "loopback"),
        ("https://100.100.100.200/x", "metadata"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://hooks.example.com/a b", "spaces"),
    ],
)
def test_given_a_url_that_may_not_be_called_then_creation_refuses_it(url: str, why: str) -> None:
    with pytest.raises(DestinationRefused) as refused:
        parse_url(url, allow_private=False)
    assert why in str(refused.value.detail)


def test_given_allow_private_then_http_and_local_addresses_are_taken() -> None:
    target = parse_url("http://127.0.0.1:8080/hook?x=1", allow_private=True)
    assert (target.scheme, target.host, target.port, target.path) == (
        "http",
        "127.0.0.1",
        8080,
        "/hook?x=1",
    )
    assert parse_url("https://hooks.example.com", allow_private=False).path == "/"


async def test_given_a_name_that_resolves_to_a_private_address_then_it_is_refused() -> None:
    target = parse_url("https://hooks.example.com/x", allow_private=False)

    async def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"]  # one bad answer among good ones

    with pytest.raises(DestinationRefused, match=r"resolves to 127\.0\.0\.1"):
        await resolve(target, allow_private=False, resolver=rebinding)


async def test_given_a_name_that_rebinds_after_creation_then_the_call_is_refused_unsent() -> None:
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    async with receiving() as receiver:
        target = parse_url(f"https://hooks.example.com:{receiver.port}/x", allow_private=False)
        assert await resolve(target, False, rebinding) == ["93.184.216.34"]  # at creation
        outcome = await post(
            target, b"{}", {}, timeout_s=5, allow_private=False, resolver=rebinding
        )
    assert not outcome.delivered and outcome.status_code is None
    assert outcome.error is not None and "loopback" in outcome.error
    assert receiver.received == []


async def test_given_a_resolved_address_then_the_call_goes_there_with_the_name_as_host() -> None:
    """The connection goes to the address checked, not to one the system resolves again."""

    async def pinned(host: str, port: int) -> list[str]:
        assert host == "hooks.example.com"
        return ["127.0.0.1"]

    secret = new_secret()
    async with receiving(secret) as receiver:
        target = parse_url(f"http://hooks.example.com:{receiver.port}/in?a=1", allow_private=True)
        body = b'{"type": "profile.changed"}'
        headers = signed_headers(secret_key(secret), "chg_7", int(time.time()), body)
        outcome = await post(
            target, body, headers, timeout_s=5, allow_private=True, resolver=pinned
        )
    assert outcome.delivered and outcome.status_code == 200 and outcome.error is None
    (call,) = receiver.received
    assert call.path == "/in?a=1"
    assert call.headers["host"] == f"hooks.example.com:{receiver.port}"
    assert call.verified == {"type": "profile.changed"}
    assert call.headers["webhook-id"] == "chg_7"


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (302, 302, "a redirect, not followed"),
        (500, 500, "answered 500"),
        (410, 410, "answered 410"),
        ("hang", None, "no answer within 0.5 s"),
    ],
)
async def test_given_an_answer_other_than_2xx_then_the_call_failed_and_says_why(
    answer: int | str, status: int | None, error: str
) -> None:
    async with receiving() as receiver:
        receiver.answers.append(answer)
        target = parse_url(f"http://127.0.0.1:{receiver.port}/x", allow_private=True)
        outcome = await post(target, b"{}", {}, timeout_s=0.5, allow_private=True)
    assert (outcome.delivered, outcome.status_code, outcome.error) == (False, status, error)
    assert len(receiver.received) == 1  # the redirect was not followed


async def test_given_nothing_listening_then_the_call_failed_with_the_connection_error() -> None:
    target = parse_url("http://127.0.0.1:1/x", allow_private=True)
    outcome = await post(target, b"{}", {}, timeout_s=2, allow_private=True)
    assert not outcome.delivered and outcome.error is not None
    assert "Error" in outcome.error
