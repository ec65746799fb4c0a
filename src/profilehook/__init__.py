"""profilehook: real-time user-property ingestion into always-correct per-contact profiles.

The pipeline, in the order data flows through it:
``sources`` (HTTP body -> events) -> ``queues`` (durable log) -> ``applier`` (batch apply)
-> ``stores`` (per-property last-writer-wins profiles) -> ``api`` (reads).
"""

from __future__ import annotations

__version__ = "0.1.0"
