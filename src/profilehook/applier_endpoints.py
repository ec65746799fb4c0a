"""The HTTP endpoints of a ``profilehook worker`` with ``--metrics-port``: ``/metrics`` (its own
Prometheus metrics: apply lag, applied, duplicates), ``/healthz`` (the process lives) and
``/readyz`` (its backends answer and its applier is not stalled: nothing applied for
``applier_stall_s`` while events wait, as on a frozen PostgreSQL connection).

A thread serves them, as prometheus_client's own server does, so a busy applier never delays a
scrape; the readiness check runs on the applier's event loop, where its backends live.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from profilehook.applier import StallWatch
from profilehook.constants import RETRY_AFTER_S
from profilehook.errors import ProfilehookError
from profilehook.service import Services

READY_TIMEOUT_S = 1.0


class ApplierEndpoints:
    """Serves the endpoints on ``host:port`` until ``close``."""

    def __init__(self, services: Services, host: str, port: int):
        self.services = services
        self.stall = StallWatch(services.settings.applier_stall_s)
        self._loop = asyncio.get_running_loop()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.endpoints = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="applier-endpoints", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def not_ready_because(self) -> str | None:
        """Why the applier is not ready, or None (called from the serving thread)."""
        future = asyncio.run_coroutine_threadsafe(self._readiness(), self._loop)
        try:
            return future.result(timeout=READY_TIMEOUT_S + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return f"A backend did not answer within {READY_TIMEOUT_S:g} s"

    async def _readiness(self) -> str | None:
        queue, store = self.services.queue, self.services.store
        try:
            # The stall first: it is the more telling answer (a frozen store also fails ping).
            async with asyncio.timeout(READY_TIMEOUT_S):
                pending = await queue.depth()
            batches = self.services.metrics.applier_totals().batches
            stalled = self.stall.reason(batches, pending, time.monotonic())
            if stalled is not None:
                return stalled
            async with asyncio.timeout(READY_TIMEOUT_S):
                await store.ping()
        except TimeoutError:
            return f"A backend did not answer within {READY_TIMEOUT_S:g} s"
        except ProfilehookError as exc:
            return str(exc.detail)
        return None


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        endpoints: ApplierEndpoints = self.server.endpoints  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(endpoints.services.metrics.registry)
            self._answer(200, body, CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            reason = endpoints.not_ready_because()
            if reason is None:
                self._json(200, {"status": "ready"})
            else:
                self._json(503, {"detail": reason}, {"Retry-After": str(RETRY_AFTER_S)})
        else:
            self._json(404, {"detail": "Not Found"})

    def _json(self, status: int, value: object, headers: dict[str, str] | None = None) -> None:
        self._answer(status, json.dumps(value).encode(), "application/json", headers)

    def _answer(
        self, status: int, body: bytes, media_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log: a scrape every few seconds is not news."""
