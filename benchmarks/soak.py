"""Scenario S (issue 23): memory over a sustained run of the whole product. One ``profilehook
serve`` (embedded, applier running) on the ``--read-contacts`` store of scenario R, for
``--soak`` seconds (the issue's run is 600), with at once: batch ingest at ``--soak-rate``
events/s (batches of 10), reads of random contacts at ``--soak-read-rate`` req/s, a query
(``POST /v1/contacts/query``, an equality on a unique property, first page) every 100 ms, and one
destination receiving every change (benchmarks/receiver.py: a process of its own that verifies
every signature and answers 204). The resident memory of the server, of its applier process and
of the applier's delivery process is sampled every 2 s.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

SAMPLE_EVERY_S = 2.0
QUERY_EVERY_S = 0.1
CONNECTIONS = 16


def scenario_s(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    import httpx2
    from benchmarks import run as harness
    from benchmarks.contacts_loader import data_dir_with_contacts
    from benchmarks.reads import read_lua

    data_dir = data_dir_with_contacts(tmp / "s", args.read_contacts)
    env = harness.profilehook_env(data_dir, PROFILEHOOK_DESTINATIONS_ALLOW_PRIVATE="true")
    key = harness.cli(env, "keys", "create", "--workspace", "bench", "--scope", "admin")["key"]
    with harness._FastReceiver(tmp / "s-receiver") as receiver:
        made = harness.cli(
            env, "destinations", "create", "--workspace", "bench", "--url", receiver.url
        )
        receiver.secret(made["secret"])
        with harness.running(harness.serve("profilehook", env)) as server:
            per_request = 10
            ingest_delay_ms = 1000 * CONNECTIONS * per_request / args.soak_rate
            reads_delay_ms = 1000 * CONNECTIONS / args.soak_read_rate
            loads: dict[str, dict[str, float]] = {}
            jobs = [
                (
                    "ingest",
                    "/v1/properties/batch",
                    _changing_ingest_lua(tmp / "s-ingest.lua", key, per_request, ingest_delay_ms),
                ),
                (
                    "reads",
                    "",
                    read_lua(tmp / "s-reads.lua", key, args.read_contacts, reads_delay_ms),
                ),
            ]
            threads = [
                threading.Thread(
                    target=lambda n=name, p=path, s=script: loads.__setitem__(
                        n,
                        harness.wrk(
                            server.url + p, s, args.soak, connections=CONNECTIONS, threads=1
                        ),
                    )
                )
                for name, path, script in jobs
            ]
            for thread in threads:
                thread.start()
            samples: list[tuple[float, float]] = []
            query_ms: list[float] = []
            refused = 0
            auth = {"Authorization": f"Bearer {key}"}
            with httpx2.Client(base_url=server.url, headers=auth, timeout=30) as client:
                started = next_sample = time.monotonic()
                while time.monotonic() - started < args.soak:
                    now = time.monotonic()
                    if now >= next_sample:
                        samples.append(_rss_mb(server))
                        next_sample += SAMPLE_EVERY_S
                    q0 = time.perf_counter()
                    email = f"user{len(query_ms) * 7919 % args.read_contacts}@example.com"
                    query = {"filter": {"property": "email", "op": "eq", "value": email}}
                    answer = client.post("/v1/contacts/query", json=query)
                    refused += answer.status_code != 200
                    query_ms.append(1000 * (time.perf_counter() - q0))
                    time.sleep(max(0.0, QUERY_EVERY_S - (time.perf_counter() - q0)))
            for thread in threads:
                thread.join()
            delivered = receiver.counts()["changes"]
    third = max(1, len(samples) // 3)
    totals = [sum(sample) for sample in samples]
    query_ms.sort()
    return {
        "duration_s": args.soak,
        "ingest_events_per_s": loads["ingest"]["rps"] * per_request,
        "ingest_non_2xx": loads["ingest"]["non_2xx"],
        "reads_rps": loads["reads"]["rps"],
        "reads_p99_ms": loads["reads"]["p99_ms"],
        "reads_non_2xx": loads["reads"]["non_2xx"],
        "queries": len(query_ms),
        "queries_non_200": refused,
        "query_p99_ms": query_ms[int(len(query_ms) * 0.99) - 1],
        "deliveries": delivered,
        "peak_rss_mb": max(totals),
        "serve_peak_rss_mb": max(s for s, _, _ in samples),
        "applier_peak_rss_mb": max(a for _, a, _ in samples),
        "delivery_peak_rss_mb": max(d for _, _, d in samples),
        "rss_first_third_mb": max(totals[:third]),
        "rss_last_third_mb": max(totals[-third:]),
        "rss_growth_in_last_third_mb": totals[-1] - totals[-third],
        "rss_samples_mb": [round(t) for t in totals],
    }


def _changing_ingest_lua(path: Path, key: str, per_request: int, delay_ms: float) -> Path:
    """Batches of ``per_request`` events, each a newer value of ``n`` for its contact, so that
    every event changes its profile: a change in the feed, and a delivery to the destination."""
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        "local n = 0\n"
        "function request()\n"
        "  n = n + 1\n"
        "  local events = {}\n"
        f"  for i = 0, {per_request - 1} do\n"
        '    events[#events + 1] = string.format(\'{"contact_id":"user%d","event_name":'
        '"soak","timestamp":%d,"user_properties":{"n":%d}}\', i, 1672531200 + n, n)\n'
        "  end\n"
        "  return wrk.format(nil, nil, nil, '{\"events\":[' .. table.concat(events, ',') .. ']}')\n"
        "end\n"
        f"function delay() return {delay_ms:.3f} end\n"
    )
    return path


def _rss_mb(server: Any) -> tuple[float, float, float]:
    """The resident memory, in MB, of the server, of its applier process (its child) and of
    everything below that (the delivery process)."""
    from tests.support import descendants

    pid = server.proc.pid
    tree = descendants(pid)
    below = {d for child in tree for d in descendants(child)}
    applier = [p for p in tree if p not in below]
    return _vmrss(pid), sum(map(_vmrss, applier)), sum(map(_vmrss, below))


def _vmrss(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
