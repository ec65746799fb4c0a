"""Rate limits (SPEC 5): a token bucket per API key and per webhook source -> 429 + Retry-After.

The bucket is checked with a fake clock (exact figures at the defaults); the app with a small
limit, so that a handful of requests shows every edge.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from profilehook import constants as c
from profilehook.api.ratelimit import RateLimiter
from profilehook.errors import RateLimited
from profilehook.settings import Settings
from tests.conftest import new_key
from tests.test_amplitude import new_source

RATE_PER_S, BURST = 10, 3
EVENT = {"contact_id": "c", "event_name": "e", "timestamp": 1, "user_properties": {"a": 1}}


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


# -- the bucket -------------------------------------------------------------------------------


def test_the_defaults_are_1000_per_second_with_a_burst_of_2000():
    settings = Settings()
    assert (settings.rate_limit_per_s, settings.rate_limit_burst) == (1_000, 2_000)
    assert (c.RATE_LIMIT_PER_S, c.RATE_LIMIT_BURST) == (1_000, 2_000)


def test_given_a_full_bucket_then_the_burst_passes_and_the_next_request_waits_one_token():
    clock = FakeClock()
    limiter = RateLimiter(1_000, 2_000, clock)
    assert all(limiter.wait_s("k") == 0.0 for _ in range(2_000))
    assert limiter.wait_s("k") == pytest.approx(0.001)
    clock.now_s += 0.0011  # one token's time (and a hair, for float rounding)
    assert limiter.wait_s("k") == 0.0


def test_a_client_sending_twice_the_rate_gets_exactly_the_rate_after_its_burst():
    clock = FakeClock()
    limiter = RateLimiter(1_000, 2_000, clock)
    admitted = 0
    for _ in range(20_000):  # 10 s at 2,000 requests/s
        clock.now_s += 0.0005
        admitted += limiter.wait_s("k") == 0.0
    assert admitted == pytest.approx(2_000 + 10 * 1_000, abs=2)


def test_an_idle_bucket_refills_only_up_to_its_burst():
    clock = FakeClock()
    limiter = RateLimiter(RATE_PER_S, BURST, clock)
    limiter.wait_s("k")
    clock.now_s += 3_600
    assert [limiter.wait_s("k") == 0.0 for _ in range(BURST + 1)] == [True] * BURST + [False]


def test_one_noisy_key_never_takes_tokens_from_another():
    clock = FakeClock()
    limiter = RateLimiter(RATE_PER_S, BURST, clock)
    for _ in range(1_000):
        limiter.wait_s("noisy")
    assert limiter.wait_s("quiet") == 0.0


def test_a_refusal_says_when_to_retry_in_whole_seconds_at_least_1():
    limiter = RateLimiter(RATE_PER_S, 1, FakeClock())
    limiter.admit("k")
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k")
    assert refused.value.status_code == 429
    assert refused.value.headers == {"retry-after": "1"}


def test_a_rate_of_0_turns_the_limit_off():
    limiter = RateLimiter(0, 1, FakeClock())
    assert all(limiter.wait_s("k") == 0.0 for _ in range(10_000))


# -- through the app --------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", rate_limit_per_s=RATE_PER_S, rate_limit_burst=BURST)


def test_given_a_key_over_its_burst_then_429_with_retry_after_and_nothing_is_stored(client, auth):
    answers = [
        client.post("/v1/properties", json={**EVENT, "event_id": f"e{i}"}, headers=auth)
        for i in range(BURST + 1)
    ]
    assert [r.status_code for r in answers] == [202] * BURST + [429]
    refused = answers[-1]
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == {"detail": "Too many requests, retry later"}
    assert client.get(f"/v1/events/e{BURST}", headers=auth).status_code == 404


def test_the_batch_endpoint_shares_the_keys_bucket(client, auth):
    for _ in range(BURST):
        client.post("/v1/properties", json=EVENT, headers=auth)
    r = client.post("/v1/properties/batch", json={"events": [EVENT]}, headers=auth)
    assert r.status_code == 429


def test_given_a_noisy_key_then_a_key_of_another_workspace_is_still_served(client, auth, settings):
    quiet = {"Authorization": f"Bearer {new_key(settings, 'quiet-workspace')}"}
    served = []
    for round_ in range(BURST):  # the quiet key stays within its own burst, however fast this runs
        noisy = [client.post("/v1/properties", json=EVENT, headers=auth) for _ in range(20)]
        assert round_ > 0 or 429 in {r.status_code for r in noisy}
        served.append(client.post("/v1/properties", json=EVENT, headers=quiet).status_code)
    assert served == [202] * BURST


def test_unauthenticated_requests_spend_no_tokens(client, auth):
    for _ in range(3 * BURST):
        assert client.post("/v1/properties", json=EVENT).status_code == 401
    assert client.post("/v1/properties", json=EVENT, headers=auth).status_code == 202


def test_given_a_webhook_source_over_its_burst_then_429_and_other_requests_are_untouched(
    client, auth, settings
):
    source_id, secret = new_source(settings)
    body = msgspec.json.encode([{"user_id": "u1", "plan": "pro"}])
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    path = f"/v1/webhooks/{source_id}"
    for _ in range(2 * BURST):  # a wrong secret is refused before the bucket
        assert (
            client.post(path, content=body, headers={**headers, "Authorization": "x"}).status_code
            == 401
        )
    statuses = [
        client.post(path, content=body, headers=headers).status_code for _ in range(BURST + 1)
    ]
    assert statuses == [200] * BURST + [429]
    assert client.post("/v1/properties", json=EVENT, headers=auth).status_code == 202


def test_429_is_documented_for_every_rate_limited_operation(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/properties", "/v1/properties/batch", "/v1/webhooks/{source_id}"):
        assert "429" in paths[path]["post"]["responses"], path
