"""Scenario R (issue 23): ``GET /v1/contacts/{id}`` on ``--read-contacts`` contacts (1,000,000
by default, benchmarks/contacts_loader.py), random ids, against a read ceiling measured in
the same run (apps/read_ceiling.py, answering the same profile JSON), and the same while F's
sustained ingest runs beside it on the same server: full rate, then half of that rate for the
p99. F's ingest is offered ``--sustain-rate`` events/s as in F (batches of ``--sustain-batch``,
32 connections), paced by the clock (``paced_lua``): offered whatever the reads do to its
answers' latency.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

READ_CONNECTIONS = 64
HALF_RATE_CONNECTIONS = 16
INGEST_CONNECTIONS = 32


def read_lua(path: Path, key: str, contacts: int, delay_ms: float | None = None) -> Path:
    """A wrk script that GETs a random one of the loaded contacts per request (each wrk
    thread with its own seed)."""
    from benchmarks.contacts_loader import contact_id

    width = len(contact_id(0)) - 1
    text = (
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        "local threads = 0\n"
        "function setup(thread) threads = threads + 1; thread:set('seed', threads) end\n"
        "function init(args) math.randomseed(seed * 7919 + os.time()) end\n"
        "function request()\n"
        f'  return wrk.format("GET", string.format("/v1/contacts/c%0{width}d",'
        f" math.random(0, {contacts - 1})))\n"
        "end\n"
    )
    if delay_ms is not None:
        text += f"function delay() return {delay_ms:.3f} end\n"
    path.write_text(text)
    return path


def scenario_r(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    import httpx2
    from benchmarks import run as harness
    from benchmarks.contacts_loader import contact_id, data_dir_with_contacts

    count = args.read_contacts
    t0 = time.perf_counter()
    data_dir = data_dir_with_contacts(tmp / "r", count)
    loaded_s = time.perf_counter() - t0
    env = harness.profilehook_env(data_dir)
    key = harness.cli(env, "keys", "create", "--workspace", "bench")["key"]
    script = read_lua(tmp / "r.lua", key, count)
    result: dict[str, Any] = {"contacts": count, "load_or_copy_s": loaded_s}
    with harness.running(harness.serve("profilehook", env)) as server:
        answer = httpx2.get(
            f"{server.url}/v1/contacts/{contact_id(count // 2)}",
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 200, answer.text
        result["answer_bytes"] = len(answer.content)
        alone = harness.measured(server, script, args.duration, path="")
        result["alone_rps"] = alone["rps"]
        result["alone_p99_ms"] = alone["p99_ms"]
        result["alone_cpu_us_per_read"] = _cpu_us_per_request(alone)
        # The read ceiling, between the server's runs: the same answer, nothing looked up;
        # alone, and again with F's ingest running on the server beside it (like for like).
        ceiling_env = {**os.environ, "READ_CEILING_BODY": answer.text}
        ceiling_app = harness.uvicorn_app(
            "read-ceiling", "benchmarks.apps.read_ceiling:app", ceiling_env
        )
        with harness.running(ceiling_app) as ceiling:
            top = harness.measured(ceiling, script, args.duration, path="")
            result["ceiling_rps"] = top["rps"]
            result["ceiling_p99_ms"] = top["p99_ms"]
            result["ceiling_cpu_us_per_read"] = _cpu_us_per_request(top)
            result.update(_beside_ingest(tmp, server, ceiling, key, script, count, args))
    result["rps"] = result["beside_ingest_rps"]
    result["p50_ms"] = result["beside_ingest_p50_ms"]
    result["p99_ms"] = result["beside_ingest_p99_ms"]
    result["ratio_alone"] = result["alone_rps"] / result["ceiling_rps"]
    result["ratio_to_ceiling_alone"] = result["rps"] / result["ceiling_rps"]
    result["ratio"] = result["rps"] / result["ceiling_beside_ingest_rps"]
    return result


def _cpu_us_per_request(run: dict[str, float]) -> float:
    """The server's CPU per request (all its threads): less sensitive to what else the machine
    runs than requests per second."""
    return 1e4 * run["server_cpu_pct"] / run["rps"] if run["rps"] else float("nan")


def _beside_ingest(
    tmp: Path,
    server: Any,
    ceiling: Any,
    key: str,
    script: Path,
    count: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """While F's ingest runs on the server: the read ceiling at full rate, the server's reads
    at full rate, then at half that rate."""
    from benchmarks import run as harness

    ingest_script = harness.sustained_ingest(tmp / "r-ingest.lua", key, args, threads=1)
    load: dict[str, float] = {}
    span_s = 3 * args.duration + 5
    before = harness.metric(server.url, "profilehook_events_total")
    ingest = threading.Thread(
        target=lambda: load.update(
            harness.wrk(
                server.url + "/v1/properties/batch",
                ingest_script,
                span_s,
                connections=INGEST_CONNECTIONS,
                threads=1,
            )
        )
    )
    ingest.start()
    time.sleep(2)  # the ingest under way before the reads start
    top = harness.measured(ceiling, script, args.duration, path="")
    full = harness.measured(server, script, args.duration, path="")
    half_rate = full["rps"] / 2
    delay_ms = max(0.0, 1000 * HALF_RATE_CONNECTIONS / half_rate - full["p50_ms"] / 4)
    half = harness.measured(
        server,
        read_lua(tmp / "r-half.lua", key, count, delay_ms),
        args.duration,
        path="",
        connections=HALF_RATE_CONNECTIONS,
    )
    ingest.join()
    t_end = time.monotonic()
    while (
        harness.metric(server.url, "profilehook_queue_depth").get("profilehook_queue_depth", 0) > 0
        and time.monotonic() - t_end < 60
    ):
        time.sleep(0.2)
    drained_s = time.monotonic() - t_end
    after = harness.metric(server.url, "profilehook_events_total")
    lag = harness.metric(server.url, "profilehook_apply_lag_seconds_bucket")
    applied_key = 'profilehook_events_total{outcome="applied",source="api"}'
    return {
        "ceiling_beside_ingest_rps": top["rps"],
        "beside_ingest_rps": full["rps"],
        "beside_ingest_p50_ms": full["p50_ms"],
        "beside_ingest_p99_ms": full["p99_ms"],
        "beside_ingest_non_2xx": full["non_2xx"],
        "half_rate_rps": half["rps"],
        "half_rate_p50_ms": half["p50_ms"],
        "half_rate_p99_ms": half["p99_ms"],
        "server_cpu_pct": full["server_cpu_pct"],
        "peak_rss_mb": max(full["peak_rss_mb"], half["peak_rss_mb"]),
        "ingest_offered_events_per_s": args.sustain_rate,
        "ingest_events_per_s": load.get("rps", 0.0) * args.sustain_batch,
        "ingest_non_2xx": load.get("non_2xx", 0.0),
        "ingest_applied_events_per_s": (after.get(applied_key, 0) - before.get(applied_key, 0))
        / (span_s + drained_s),
        "ingest_drain_after_load_s": drained_s,
        "ingest_apply_lag_p99_s": harness.histogram_quantile(lag, 0.99),
    }
