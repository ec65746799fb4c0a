"""Shared test helpers: real server processes, the CLI, and event builders."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from profilehook.events import Event
from profilehook.filters import Filter, parse_filter
from tests.nats_cluster import NatsCluster, free_ports

READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILEHOOK_")}
    env["PROFILEHOOK_DATA_DIR"] = str(data_dir)
    env["PROFILEHOOK_LOG_LEVEL"] = "warning"
    env.update(extra)
    return env


def run_cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``profilehook ARGS`` as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "profilehook", *args],
        env=cli_env(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def create_key(
    data_dir: Path, workspace: str = "acme", scopes: tuple[str, ...] = (), **env: str
) -> dict[str, Any]:
    """A key made with ``keys create`` (``scopes``: its ``--scope``s; none: the default)."""
    options = [word for scope in scopes for word in ("--scope", scope)]
    result = run_cli(
        data_dir, "keys", "create", "--workspace", workspace, *options, "--json", **env
    )
    assert result.returncode == 0, result.stderr
    created: dict[str, Any] = json.loads(result.stdout)
    return created


@dataclass
class ServerProcess:
    """A real ``profilehook serve`` subprocess on its own port and data directory."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    serve_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.spawn()
        self.wait_ready()
        return self

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready (``wait_ready`` does)."""
        with (self.data_dir.parent / f"server-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "profilehook",
                    "serve",
                    "--port",
                    str(self.port),
                    *self.serve_args,
                ],
                env=cli_env(self.data_dir, **self.extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready in {READY_TIMEOUT_S}s: {self.log_text()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_text(self) -> str:
        path = self.data_dir.parent / f"server-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def event(
    contact_id: str = "c1",
    event_id: str = "e1",
    ts_us: int = 1_000_000,
    workspace: str = "acme",
    kind: str = "update",
    **properties: Any,
) -> Event:
    """A ready-made event for store and queue tests."""
    return Event(
        workspace=workspace,
        event_id=event_id,
        contact_id=contact_id,
        ts_us=ts_us,
        properties=properties,
        kind=kind,  # type: ignore[arg-type]
        received_us=time.time_ns() // 1000,
    )


def wait_until(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


POSTGRES_URL = os.environ.get(
    "PROFILEHOOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# The scaled-out tests run on the suite's own 3-node JetStream cluster (tests/nats_cluster.py),
# started on first use and stopped at the end of the session (conftest.py). Its ports are
# chosen now because test modules import NATS_URL. PROFILEHOOK_TEST_NATS_URL names another
# server instead (nothing is started then).
NATS_CLUSTER = NatsCluster(free_ports(9))
NATS_SERVERS = NATS_CLUSTER.urls
# One node: tests hand NATS_URL to nats-py and to TCP proxies, which take one server; the
# queue URL also takes ",".join(NATS_SERVERS), as the fault suite uses it.
NATS_URL = os.environ.get("PROFILEHOOK_TEST_NATS_URL", NATS_SERVERS[0])
_cluster_failure: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


# Locally, hypothesis properties run this share of their CI examples (the inner loop);
# CI=true runs them all (conftest.py loads the matching hypothesis profile).
LOCAL_EXAMPLES_SHARE = 0.2
LOCAL_EXAMPLES_MIN = 20


def hypothesis_profile() -> str:
    """The hypothesis profile conftest.py loads: ``ci`` under CI=true, else ``dev``."""
    return "ci" if _in_ci() else "dev"


def examples(ci_count: int) -> int:
    """``max_examples`` for a property whose CI run has ``ci_count`` examples."""
    if _in_ci():
        return ci_count
    return min(ci_count, max(LOCAL_EXAMPLES_MIN, int(ci_count * LOCAL_EXAMPLES_SHARE)))


def nats_cluster() -> NatsCluster:
    """The test cluster, started on first call. A cluster that cannot start fails the test
    in CI and skips it locally (once tried, the reason is remembered for the session)."""
    import pytest

    if not NATS_CLUSTER.started and not _cluster_failure:
        try:
            NATS_CLUSTER.start()
        except (RuntimeError, OSError, TimeoutError) as exc:
            _cluster_failure.append(f"the NATS test cluster did not start: {exc}")
    if _cluster_failure:
        if _in_ci():
            pytest.fail(_cluster_failure[0])
        pytest.skip(_cluster_failure[0])
    return NATS_CLUSTER


def stop_nats_cluster() -> None:
    NATS_CLUSTER.stop()


def require_server(url: str, default_port: int) -> None:
    """Skip when a real server is absent locally; fail in CI (CI=true), where it must be up.
    The NATS test cluster is started here when ``url`` is one of its nodes."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if f"nats://{parts.netloc}" in NATS_SERVERS:
        nats_cluster()
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return
    except OSError as exc:
        message = f"{url} is not reachable ({exc})"
    if _in_ci():
        import pytest

        pytest.fail(f"{message}; CI must run the real servers (.ci/run starts them)")
    import pytest

    pytest.skip(message)


def unique_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def postgres_url(schema: str) -> str:
    return f"{POSTGRES_URL}?schema={schema}"


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def store_url_for(kind: str) -> Iterator[str]:
    """``PROFILEHOOK_STORE_URL`` for the embedded store (``"sqlite"``: the default, ``""``) or
    for PostgreSQL on a schema of its own, dropped afterwards (skipped locally when absent)."""
    if kind == "sqlite":
        yield ""
        return
    require_server(POSTGRES_URL, 5432)
    schema = unique_schema()
    try:
        yield postgres_url(schema)
    finally:
        drop_schema(schema)


def unique_stream() -> str:
    return f"T{uuid.uuid4().hex[:12].upper()}"


def delete_stream(stream: str) -> None:
    """Remove a JetStream stream (and its consumers); no error when it does not exist."""
    import asyncio

    import nats
    import nats.js.errors

    async def delete() -> None:
        nc = await nats.connect(NATS_URL, connect_timeout=2)
        try:
            await nc.jetstream().delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(delete())


# A killed applier's unacknowledged batches come back after this (the default is 5 s), for
# the tests that kill one and wait for everything to be applied.
SHORT_ACK_WAIT_S = 1.0


@contextmanager
def nats_postgres_env(ack_wait_s: float | None = None) -> Iterator[dict[str, str]]:
    """Settings for the scale-out configuration on a stream and a schema of their own,
    both removed afterwards. Skips when a server is absent locally; fails in CI.
    ``ack_wait_s``: the queue URL's option of that name (None: the default backoff)."""
    require_server(NATS_URL, 4222)
    require_server(POSTGRES_URL, 5432)
    stream, schema = unique_stream(), unique_schema()
    ack_wait = "" if ack_wait_s is None else f"&ack_wait_s={ack_wait_s}"
    try:
        yield {
            "PROFILEHOOK_QUEUE_URL": f"{NATS_URL}?stream={stream}{ack_wait}",
            "PROFILEHOOK_STORE_URL": postgres_url(schema),
        }
    finally:
        try:
            delete_stream(stream)
        finally:
            drop_schema(schema)


# -- a crash between apply and acknowledgement, then a restart (the convergence tests) -----------


@dataclass(frozen=True)
class Crash:
    publish_before: int  # batches published before the crash; the rest after the restart
    batch_max_events: int
    steps_before: int  # applier steps (fetch, apply, ack) completed before the crash
    applied_unacked: bool  # the crashed batch reached the store (True) or only was fetched


def crashes() -> Any:
    """A hypothesis strategy of ``Crash``es."""
    from hypothesis import strategies as st

    return st.builds(
        Crash,
        publish_before=st.integers(0, 7),
        batch_max_events=st.integers(1, 6),
        steps_before=st.integers(0, 4),
        applied_unacked=st.booleans(),
    )


async def _open_log_and_store(data_dir: Path) -> tuple[Any, Any]:
    from profilehook.queues.sqlite import SqliteQueue
    from profilehook.stores.sqlite import SqliteStore

    queue = SqliteQueue(data_dir / "queue.sqlite3")
    store = SqliteStore(data_dir / "profiles.sqlite3")
    await queue.open()
    await store.open()
    return queue, store


@asynccontextmanager
async def resumed_after_a_crash(
    data_dir: Path, batches: list[list[Event]], crash: Crash
) -> AsyncIterator[tuple[Any, Any]]:
    """The SQLite log and store of ``data_dir`` after a crash and a restart: the first
    ``crash.publish_before`` batches published, ``crash.steps_before`` applier steps, then a
    batch fetched (and, with ``applied_unacked``, committed to the store) but never
    acknowledged; both reopened, the other batches published and the log drained. Yields
    (queue, store), open until the block ends."""
    from profilehook.applier import Applier
    from profilehook.metrics import Metrics

    queue, store = await _open_log_and_store(data_dir)
    try:
        for batch in batches[: crash.publish_before]:
            await queue.publish(batch)
        applier = Applier(queue, store, Metrics(), crash.batch_max_events)
        for _ in range(crash.steps_before):
            await applier.step()
        in_flight = await queue.fetch(crash.batch_max_events, 0.0)
        if crash.applied_unacked and in_flight:
            await store.apply([d.event for d in in_flight])
    finally:
        await queue.close()
        await store.close()

    queue, store = await _open_log_and_store(data_dir)
    try:
        for batch in batches[crash.publish_before :]:
            await queue.publish(batch)
        await Applier(queue, store, Metrics(), crash.batch_max_events).drain()
        yield queue, store
    finally:
        await queue.close()
        await store.close()


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (exited, not yet reaped) counts as gone, and so
    does a process that ends while its state is read."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...), read from /proc. A thread or a
    process that ends while it is read is passed over: the listing races with exits."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += [int(child), *descendants(int(child))]
    return found


def parsed_filter(raw: dict[str, Any]) -> Filter:
    """``raw`` parsed as a filter (SPEC 2.9), which it must be."""
    node, problems = parse_filter(raw)
    assert node is not None, problems
    return node


def responses(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` complete responses (each with a content-length) from ``sock``."""
    buffer, found = b"", []
    while len(found) < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(found)} responses: {buffer!r}"
        buffer += chunk
        while b"\r\n\r\n" in buffer:
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(rest) < length:
                break
            found.append(head + b"\r\n\r\n" + rest[:length])
            buffer = rest[length:]
    return found
