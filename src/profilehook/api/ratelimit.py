"""Token buckets per API key and per webhook source (RELIABILITY.md, Rate limits): ``429`` with ``Retry-After``.

Each key (or source) has its own bucket, so one noisy client can only exhaust its own
allowance, never another's. A bucket holds up to ``burst`` tokens, refills at ``rate_per_s``
and each request takes one. Buckets live in this process: with N ``serve`` processes behind
a load balancer a client may get up to N times the rate.

On the hot path this is one dict lookup and a few float operations; buckets are created only
for credentials that authenticated, so their number is bounded by the keys and sources that
exist.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from profilehook.errors import RateLimited

Clock = Callable[[], float]


class RateLimiter:
    """A token bucket per key. ``rate_per_s <= 0`` admits everything."""

    __slots__ = ("_buckets", "_burst", "_clock", "_rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic):
        self._rate_per_s = float(rate_per_s)
        self._burst = float(max(burst, 1))
        self._clock = clock
        # key -> [tokens left, when they were counted]
        self._buckets: dict[str, list[float]] = {}

    def admit(self, key: str) -> None:
        """Take a token from ``key``'s bucket. Raises ``RateLimited`` (429) when it is empty."""
        wait_s = self.wait_s(key)
        if wait_s > 0.0:
            raise RateLimited(math.ceil(wait_s))

    def wait_s(self, key: str) -> float:
        """0.0 when admitted (a token is taken), else how long until a token is there."""
        rate = self._rate_per_s
        if rate <= 0.0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [self._burst - 1.0, now]
            return 0.0
        tokens = bucket[0] + (now - bucket[1]) * rate
        if tokens > self._burst:
            tokens = self._burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / rate
