"""Prometheus metrics of one running service (its own registry: no global state)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "profilehook_events",
            "Events by source and outcome (accepted, rejected, ignored, skipped, too_old, applied,"
            " duplicate, failed, erased)",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.requests_rejected = Counter(
            "profilehook_requests_rejected",
            "Requests answered with an error, by HTTP status",
            ["status"],
            registry=self.registry,
        )
        self.superseded = Counter(
            "profilehook_superseded_writes",
            "Property writes that lost to a newer version and cost no store write",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "profilehook_queue_depth",
            "Events accepted and not yet applied",
            registry=self.registry,
        )
        self.apply_lag = BatchHistogram(
            "profilehook_apply_lag_seconds",
            "Time from durable acceptance to being applied to the profile",
            LAG_BUCKETS_S,
        )
        self.registry.register(self.apply_lag)
        self.apply_batches = Counter(
            "profilehook_apply_batches", "Batches applied to the store", registry=self.registry
        )
        self.history_purged = Counter(
            "profilehook_history_purged",
            "Event records purged from the history as older than the retention window",
            registry=self.registry,
        )

        # Destinations: read from the store at each scrape (deliveries may be made by any
        # process sharing it), so every server shows the same figures.
        self.deliveries = Gauge(
            "profilehook_destination_deliveries",
            "Deliveries kept per destination by outcome (delivered, failed, pending)",
            ["destination", "outcome"],
            registry=self.registry,
        )
        self.delivery_lag = Gauge(
            "profilehook_destination_delivery_lag_seconds",
            "Per destination, how long ago the oldest change still to deliver was applied"
            " (0: none waits)",
            ["destination"],
            registry=self.registry,
        )
        self.retry_queue = Gauge(
            "profilehook_destination_retry_queue_depth",
            "Per destination, deliveries waiting for a retry after a failed attempt",
            ["destination"],
            registry=self.registry,
        )

    def set_deliveries(self, stats: Mapping[str, Any], now_us: int) -> None:
        """The destination gauges from ``Destinations.delivery_stats`` (a destination gone
        since the last scrape is no longer shown)."""
        for gauge in (self.deliveries, self.delivery_lag, self.retry_queue):
            gauge.clear()
        for destination_id, st in stats.items():
            for outcome in ("delivered", "failed", "pending"):
                self.deliveries.labels(destination_id, outcome).set(getattr(st, outcome))
            oldest = st.oldest_pending_us
            lag_s = 0.0 if oldest is None else max(0.0, (now_us - oldest) / 1_000_000)
            self.delivery_lag.labels(destination_id).set(lag_s)
            self.retry_queue.labels(destination_id).set(st.retrying)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def applier_totals(self) -> ApplierTotals:
        """Everything an applier has counted so far (what its process reports to ``serve``)."""
        events: dict[str, dict[str, float]] = {}
        for sample in _samples(self.events, "_total"):
            source, outcome = sample.labels["source"], sample.labels["outcome"]
            if outcome in APPLIER_OUTCOMES:
                events.setdefault(source, {})[outcome] = sample.value
        counts, total = self.apply_lag.totals()
        return ApplierTotals(
            events=events,
            superseded=_value(self.superseded, "_total"),
            batches=_value(self.apply_batches, "_total"),
            purged=_value(self.history_purged, "_total"),
            lag_counts=counts,
            lag_sum=total,
        )

    def add_applier_progress(self, before: ApplierTotals | None, after: ApplierTotals) -> None:
        """Add what an applier process counted between two of its reports."""
        before = before or ApplierTotals()
        for source, outcomes in after.events.items():
            for outcome, count in outcomes.items():
                grown = count - before.events.get(source, {}).get(outcome, 0.0)
                if grown > 0:
                    self.events.labels(source, outcome).inc(grown)
        if after.superseded > before.superseded:
            self.superseded.inc(after.superseded - before.superseded)
        if after.batches > before.batches:
            self.apply_batches.inc(after.batches - before.batches)
        if after.purged > before.purged:
            self.history_purged.inc(after.purged - before.purged)
        old = before.lag_counts or [0] * len(after.lag_counts)
        self.apply_lag.add(
            [a - b for a, b in zip(after.lag_counts, old, strict=True)],
            after.lag_sum - before.lag_sum,
        )


APPLIER_OUTCOMES = ("applied", "duplicate", "failed", "erased")


class ApplierTotals(msgspec.Struct, frozen=True):
    """An applier's counts since it started: a running total per metric, so a lost report
    loses nothing (the next one carries it), and a new process starts again from zero."""

    events: dict[str, dict[str, float]] = {}  # source -> outcome -> count
    superseded: float = 0.0
    batches: float = 0.0
    purged: float = 0.0  # history records purged (retention)
    lag_counts: list[int] = []  # per bucket of LAG_BUCKETS_S, then +Inf
    lag_sum: float = 0.0


def _samples(metric: Counter, suffix: str) -> Iterator[Sample]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                yield sample


def _value(metric: Counter, suffix: str) -> float:
    return sum(sample.value for sample in _samples(metric, suffix))


class BatchHistogram(Collector):
    """A Prometheus histogram that takes a whole batch of observations under one lock.

    ``prometheus_client.Histogram.observe`` locks once per value; the applier observes one
    lag per event, thousands per batch, which made metrics its largest cost after SQLite.
    """

    def __init__(self, name: str, documentation: str, buckets_s: Iterable[float]):
        self.name = name
        self.documentation = documentation
        self.bounds = sorted(buckets_s)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, local, total = self.bounds, [0] * len(self._counts), 0.0
        for value in values:
            local[bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, local, strict=True)]
            self._sum += total

    def totals(self) -> tuple[list[int], float]:
        """The count in each bucket (not cumulative; the last is +Inf) and the sum."""
        with self._lock:
            return list(self._counts), self._sum

    def add(self, counts: list[int], total: float) -> None:
        """Add observations counted elsewhere (``totals`` of another histogram)."""
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)
