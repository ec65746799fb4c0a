"""The overview's charts: what /metrics counts, sampled every ``CONSOLE_SAMPLE_INTERVAL_S``
into the last hour of points (ingest and apply rates, queue depth, apply lag, refusals by
status). The figures are the server's (as /metrics, which is public), not one workspace's."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response

from profilehook.api.access import ScopedRoute
from profilehook.api.responses import json_response
from profilehook.console.web import Console, Viewer, secured
from profilehook.constants import CONSOLE_SAMPLE_INTERVAL_S, CONSOLE_SAMPLES_KEPT
from profilehook.errors import ProfilehookError
from profilehook.metrics import Metrics
from profilehook.queues.base import Queue

FIRST_POINT_S = 1.0


@dataclass(frozen=True)
class _Totals:
    at_s: float
    accepted: float
    applied: float
    refused: dict[str, float]
    lag_counts: list[int]
    lag_sum: float


@dataclass(frozen=True)
class Point:
    at_s: float
    ingest_per_s: float
    applied_per_s: float
    queue_depth: int | None
    lag_mean_s: float | None
    lag_p99_s: float | None  # the upper bound of the bucket that holds the 99th percentile
    refused: dict[str, float] = field(default_factory=dict)  # status -> calls in the interval


class Series:
    """The sampled points (see the module's docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        queue: Queue,
        interval_s: float = CONSOLE_SAMPLE_INTERVAL_S,
        kept: int = CONSOLE_SAMPLES_KEPT,
    ):
        self.metrics, self.queue, self.interval_s = metrics, queue, interval_s
        self.points: deque[Point] = deque(maxlen=kept)
        self._last: _Totals | None = None

    async def run(self, stop: asyncio.Event) -> None:
        # The baseline, then a first point soon (a fresh console shows something), then one
        # every interval.
        wait_s = min(FIRST_POINT_S, self.interval_s)
        while not stop.is_set():
            await self.sample()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
            wait_s = self.interval_s

    async def sample(self) -> Point | None:
        """Take one point (the first call only sets the baseline)."""
        try:
            depth: int | None = await asyncio.wait_for(self.queue.depth(), 1.0)
        except (ProfilehookError, TimeoutError):
            depth = None  # a gap in the chart, not a dead sampler
        now = self._totals()
        last, self._last = self._last, now
        if last is None:
            return None
        span = max(now.at_s - last.at_s, 1e-9)
        lag_deltas = [a - b for a, b in zip(now.lag_counts, last.lag_counts, strict=True)]
        observed = sum(lag_deltas)
        point = Point(
            at_s=now.at_s,
            ingest_per_s=(now.accepted - last.accepted) / span,
            applied_per_s=(now.applied - last.applied) / span,
            queue_depth=depth,
            lag_mean_s=(now.lag_sum - last.lag_sum) / observed if observed else None,
            lag_p99_s=_quantile(self.metrics.apply_lag.bounds, lag_deltas, 0.99),
            refused={
                status: count - last.refused.get(status, 0.0)
                for status, count in now.refused.items()
                if count > last.refused.get(status, 0.0)
            },
        )
        self.points.append(point)
        return point

    def view(self) -> dict[str, Any]:
        """The points as columns (what the charts take)."""
        points = list(self.points)
        statuses = sorted({s for p in points for s in p.refused})
        return {
            "interval_s": self.interval_s,
            "t": [round(p.at_s) for p in points],
            "ingest_per_s": [round(p.ingest_per_s, 2) for p in points],
            "applied_per_s": [round(p.applied_per_s, 2) for p in points],
            "queue_depth": [p.queue_depth for p in points],
            "lag_mean_s": [p.lag_mean_s for p in points],
            "lag_p99_s": [p.lag_p99_s for p in points],
            "refused": {s: [p.refused.get(s, 0) for p in points] for s in statuses},
        }

    def _totals(self) -> _Totals:
        events = dict(_by_labels(self.metrics.events, ("outcome",)))
        counts, lag_sum = self.metrics.apply_lag.totals()
        return _Totals(
            at_s=time.time(),
            accepted=events.get(("accepted",), 0.0),
            applied=events.get(("applied",), 0.0),
            refused={k[0]: v for k, v in _by_labels(self.metrics.requests_rejected, ("status",))},
            lag_counts=counts,
            lag_sum=lag_sum,
        )


def _by_labels(metric: Counter, labels: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], float]]:
    """A counter's totals summed by ``labels``."""
    sums: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + "_total":
                key = tuple(sample.labels[name] for name in labels)
                sums[key] = sums.get(key, 0.0) + sample.value
    yield from sums.items()


def _quantile(bounds: list[float], counts: list[int], q: float) -> float | None:
    total = sum(counts)
    if not total:
        return None
    running = 0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        running += count
        if running >= q * total:
            return bound if bound != float("inf") else bounds[-1]
    return bounds[-1]


def overview_routes(console: Console, series: Series) -> list[ScopedRoute]:
    async def overview(request: Request, viewer: Viewer) -> Response:
        return console.render(request, viewer, "overview.html", interval_s=series.interval_s)

    async def points(request: Request, viewer: Viewer) -> Response:
        return secured(json_response(series.view()))

    return [
        console.page("/", overview),
        console.page("/console/overview.json", points),
    ]
