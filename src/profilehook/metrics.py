"""Prometheus metrics of one running service (its own registry: no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "profilehook_events",
            "Events by source and outcome (accepted, rejected, applied, duplicate, failed)",
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
        self.apply_lag = Histogram(
            "profilehook_apply_lag_seconds",
            "Time from durable acceptance to being applied to the profile",
            buckets=LAG_BUCKETS_S,
            registry=self.registry,
        )
        self.apply_batches = Counter(
            "profilehook_apply_batches", "Batches applied to the store", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
