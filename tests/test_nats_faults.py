"""NATS node faults under load (issue 15 item 1): on the suite's own 3-node JetStream cluster,
an R3 stream, a real ``profilehook serve --no-applier`` and ``profilehook worker`` on
PostgreSQL, and a client that retries every 503 with the same event_ids until it gets a 202.

While the load runs, one fault per scenario: kill -9 the stream leader, the consumer leader
(once, and three times), a follower, two of the three nodes (all restarted after 2 s); step the
stream leader down and kill the new one at once; a rolling restart of every node. Then every
acknowledged event must be applied exactly once, every profile must equal a reference
last-writer-wins model of the acknowledged events, and every replica of the drained stream must
hold the same messages at the same last sequence (on nats-server 2.9.10 one replica kept hundreds
of applied events: the divergence that lost acknowledged events in the operator's run), and the
stream must be empty within the drain's wait (a worker whose ack failed once acknowledged nothing
again, and 1,830 applied events stayed in it: RELIABILITY.md). When it is not, the figures hold
each node's view of the stream and the consumer (``/jsz``, ``/subsz``) and the worker's log.

The processes name all three servers in their queue URL, so a killed node's clients reconnect to
another. Figures per scenario (acked, applied, lost, 503s, outage) are printed
and written to ``fault-figures.json`` in the test's tmp dir; RELIABILITY.md quotes them.
``NATS_FAULTS_SEED=<seed>`` repeats a run's events.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from profilehook.queues.nats import CONSUMER
from tests.nats_cluster import NatsCluster, NatsNode
from tests.support import (
    POSTGRES_URL,
    ServerProcess,
    create_key,
    drop_schema,
    postgres_url,
    require_server,
    unique_schema,
    unique_stream,
    wait_until,
)
from tests.test_scale_out import WorkerProcess, reference_profiles

pytestmark = pytest.mark.slow

EVENTS = 2_400
CONTACTS = 30
PROPERTIES = ("plan", "score", "colour", "city")
BASE_TS_S = 1_700_000_000
TIME_SPAN_S = 300  # many events share a second: the event_id breaks the ties
LOAD_S = 10.0  # the events are sent at a steady rate over this long (plus retries)
FAULT_AT_S = 2.5
DOWN_S = 2.0  # how long a killed node stays down
CONCURRENCY = 16
RETRY_AFTER_S = 0.2  # shorter than the Retry-After: 1 a client gets, to keep the test short
GIVE_UP_AFTER_S = 60.0
READ_ATTEMPTS = 20  # a profile or history read answered 503 is asked again this many times
REQUEST_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 45.0
READY_TIMEOUT_S = 30.0
JS_API_TIMEOUT_S = 2.0


# --- JetStream's own view: leaders and replicas ---------------------------------------------


async def _quiet(exc: Exception) -> None:
    pass


@dataclass
class JetStream:
    """JetStream API requests (``$JS.API.…``) to whichever nodes are up, from the main thread."""

    cluster: NatsCluster
    stream: str

    def request(self, subject: str) -> dict[str, Any] | None:
        """The API's JSON answer; None when no node answers or the answer is an error."""
        import nats

        urls = [n.url for n in self.cluster.nodes if n.running]

        async def call() -> dict[str, Any] | None:
            try:
                nc = await nats.connect(
                    servers=urls,
                    connect_timeout=JS_API_TIMEOUT_S,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    error_cb=_quiet,  # a node that is starting refuses; another answers
                )
            except Exception:
                return None
            try:
                reply = await nc.request(subject, b"", timeout=JS_API_TIMEOUT_S)
                body: dict[str, Any] = json.loads(reply.data)
                return None if "error" in body else body
            except Exception:
                return None
            finally:
                await nc.close()

        return asyncio.run(call()) if urls else None

    def stream_group(self) -> dict[str, Any]:
        return (self.request(f"$JS.API.STREAM.INFO.{self.stream}") or {}).get("cluster") or {}

    def consumer_group(self) -> dict[str, Any]:
        info = self.request(f"$JS.API.CONSUMER.INFO.{self.stream}.{CONSUMER}") or {}
        return info.get("cluster") or {}

    def stream_leader(self) -> str | None:
        return self.stream_group().get("leader")

    def consumer_leader(self) -> str | None:
        return self.consumer_group().get("leader")

    def step_down_stream(self) -> bool:
        reply = self.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{self.stream}")
        return bool(reply and reply.get("success"))

    def step_down_consumer(self) -> bool:
        reply = self.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{self.stream}.{CONSUMER}")
        return bool(reply and reply.get("success"))

    def whole(self) -> bool:
        """Stream and consumer each have a leader and two current replicas."""
        for group in (self.stream_group(), self.consumer_group()):
            replicas = group.get("replicas") or []
            if not group.get("leader") or len(replicas) != 2:
                return False
            if not all(r.get("current") and not r.get("offline") for r in replicas):
                return False
        return True

    def wait_whole(self) -> None:
        wait_until(self.whole, READY_TIMEOUT_S, interval_s=0.2)

    def consumer_view(self) -> dict[str, Any]:
        """Per node, its own copy of the stream's state and of the consumer's (delivered, ack
        floor, pending) from the monitoring endpoint: what to look at when applied events stay
        in the stream (is the ack floor behind? does the consumer still mean to redeliver?)."""
        view: dict[str, Any] = {}
        for node in self.cluster.nodes:
            try:
                report = httpx.get(
                    f"http://127.0.0.1:{node.http_port}/jsz"
                    "?accounts=true&streams=true&consumers=true",
                    timeout=JS_API_TIMEOUT_S,
                ).json()
            except (httpx.HTTPError, ValueError) as exc:
                view[node.name] = f"no answer: {exc!r}"
                continue
            for account in report.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail["name"] != self.stream:
                        continue
                    state = detail["state"]
                    entry: dict[str, Any] = {
                        "stream": {
                            k: state.get(k)
                            for k in ("messages", "first_seq", "last_seq", "num_deleted")
                        },
                        "stream_leader": (detail.get("cluster") or {}).get("leader"),
                    }
                    for consumer in detail.get("consumer_detail") or []:
                        entry["consumer"] = {
                            "leader": (consumer.get("cluster") or {}).get("leader"),
                            "delivered": consumer.get("delivered"),
                            "ack_floor": consumer.get("ack_floor"),
                            "num_ack_pending": consumer.get("num_ack_pending"),
                            "num_redelivered": consumer.get("num_redelivered"),
                            "num_waiting": consumer.get("num_waiting"),
                            "num_pending": consumer.get("num_pending"),
                        }
                    entry["subscriptions"] = self.consumer_subscriptions(node)
                    view[node.name] = entry
        return view

    def consumer_subscriptions(self, node: NatsNode) -> list[str] | str:
        """The consumer's subscriptions to its acks and pull requests on this node (only its
        leader has them), each with the messages it has taken: do the worker's acks reach the
        leader?"""
        try:
            report = httpx.get(
                f"http://127.0.0.1:{node.http_port}/subsz?subs=true&limit=100000",
                timeout=JS_API_TIMEOUT_S,
            ).json()
        except (httpx.HTTPError, ValueError) as exc:
            return f"no answer: {exc!r}"
        return [
            f"{sub['subject']} cid={sub.get('cid')} msgs={sub.get('msgs')}"
            for sub in report.get("subscriptions_list") or []
            if self.stream in sub["subject"]
            and sub["subject"].startswith(("$JS.ACK", "$JS.API.CONSUMER.MSG.NEXT"))
        ]

    def replica_states(self) -> dict[str, tuple[int, int]]:
        """Per node, the stream's (messages, last_seq) as that node's own copy holds them."""
        states = {}
        for node in self.cluster.nodes:
            try:
                report = httpx.get(
                    f"http://127.0.0.1:{node.http_port}/jsz?accounts=true&streams=true",
                    timeout=JS_API_TIMEOUT_S,
                ).json()
            except (httpx.HTTPError, ValueError):
                continue
            for account in report.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail["name"] == self.stream:
                        state = detail["state"]
                        states[node.name] = (int(state["messages"]), int(state["last_seq"]))
        return states


# --- the faults -------------------------------------------------------------------------------


@dataclass
class Fault:
    cluster: NatsCluster
    js: JetStream
    notes: dict[str, Any] = field(default_factory=dict)

    def kill_and_restart(self, *nodes: NatsNode) -> None:
        for node in nodes:
            node.kill(signal.SIGKILL)
        self.notes["killed"] = [n.name for n in nodes]
        time.sleep(DOWN_S)
        for node in nodes:
            self.cluster.restart(node)

    def named(self, name: str | None) -> NatsNode:
        assert name is not None, "no leader"
        return self.cluster.node(name)


def kill_stream_leader(fault: Fault) -> None:
    fault.kill_and_restart(fault.named(fault.js.stream_leader()))


def kill_consumer_leader(fault: Fault) -> None:
    fault.kill_and_restart(fault.named(fault.js.consumer_leader()))


def kill_consumer_leader_thrice(fault: Fault) -> None:
    """As the operator's run that lost 226 events on 2.9.10: the consumer leader's node killed
    three times, each once the cluster is whole again (the later ones during the drain)."""
    killed = []
    for _ in range(3):
        fault.js.wait_whole()
        node = fault.named(fault.js.consumer_leader())
        fault.kill_and_restart(node)
        killed.append(node.name)
    fault.notes["killed"] = killed


def kill_follower(fault: Fault) -> None:
    leader = fault.js.stream_leader()
    fault.kill_and_restart(next(n for n in fault.cluster.nodes if n.name != leader))


def kill_two_nodes(fault: Fault) -> None:
    """The stream leader and a follower: no quorum until they are back."""
    leader = fault.named(fault.js.stream_leader())
    follower = next(n for n in fault.cluster.nodes if n is not leader)
    fault.kill_and_restart(leader, follower)


def stepdown_then_kill(fault: Fault) -> None:
    """The stream leader steps down and the new leader is killed as soon as it is known."""
    old = fault.js.stream_leader()
    assert fault.js.step_down_stream(), "stepdown refused"
    new = wait_until(lambda: new_leader(fault.js, old), READY_TIMEOUT_S)
    fault.notes["stepped_down"] = old
    fault.kill_and_restart(fault.named(new))


def new_leader(js: JetStream, old: str | None) -> str | None:
    leader = js.stream_leader()
    return leader if leader != old else None


def rolling_restart(fault: Fault) -> None:
    """Each node in turn, as an operator upgrades: SIGTERM, start, wait until whole again."""
    order = list(fault.cluster.nodes)
    for node in order:
        node.kill(signal.SIGTERM)
        fault.cluster.restart(node)
        fault.cluster.wait_healthy()
        fault.js.wait_whole()
    fault.notes["restarted"] = [n.name for n in order]


SCENARIOS: dict[str, Callable[[Fault], None]] = {
    "kill_stream_leader": kill_stream_leader,
    "kill_consumer_leader": kill_consumer_leader,
    "kill_consumer_leader_3x": kill_consumer_leader_thrice,
    "kill_follower": kill_follower,
    "kill_two_of_three": kill_two_nodes,
    "stepdown_then_kill": stepdown_then_kill,
    "rolling_restart": rolling_restart,
}


# --- the load ---------------------------------------------------------------------------------


def make_requests(rng: random.Random) -> list[list[dict[str, Any]]]:
    """Single events and batches of 2 to 20, over overlapping contacts, times out of order."""
    events = []
    for n in range(EVENTS):
        event_id = f"nf-{n:05d}-{rng.randrange(16**4):04x}"
        events.append(
            {
                "contact_id": f"contact-{rng.randrange(CONTACTS):02d}",
                "event_name": "fault",
                "timestamp": BASE_TS_S + rng.randrange(TIME_SPAN_S),
                "event_id": event_id,
                "user_properties": {
                    name: None if rng.random() < 0.15 else f"{name}@{event_id}"
                    for name in rng.sample(PROPERTIES, rng.randint(1, 3))
                },
            }
        )
    requests, i = [], 0
    while i < len(events):
        size = 1 if rng.random() < 0.4 else rng.randint(2, 20)
        requests.append(events[i : i + size])
        i += size
    return requests


@dataclass
class Load:
    requests: list[list[dict[str, Any]]]
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    ack_times: list[float] = field(default_factory=list)
    given_up: int = 0
    unexpected: list[str] = field(default_factory=list)
    started: float = 0.0

    def run_in_thread(self, base_url: str, auth: dict[str, str]) -> None:
        try:
            asyncio.run(self.run(base_url, auth))
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.unexpected.append(f"the load failed: {exc!r}")

    async def run(self, base_url: str, auth: dict[str, str]) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)
        interval_s = LOAD_S / len(self.requests)
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits
        ) as client:

            async def one(events: list[dict[str, Any]]) -> None:
                async with gate:
                    await self.send_until_acked(client, events, auth)

            tasks = []
            for i, events in enumerate(self.requests):
                await asyncio.sleep(max(0.0, self.started + i * interval_s - time.monotonic()))
                tasks.append(asyncio.create_task(one(events)))
            await asyncio.gather(*tasks)

    async def send_until_acked(
        self, client: httpx.AsyncClient, events: list[dict[str, Any]], auth: dict[str, str]
    ) -> None:
        """As a client should: a 503 or a lost connection is sent again, same event_ids."""
        give_up_at = time.monotonic() + GIVE_UP_AFTER_S
        while time.monotonic() < give_up_at:
            try:
                if len(events) == 1:
                    response = await client.post("/v1/properties", json=events[0], headers=auth)
                else:
                    response = await client.post(
                        "/v1/properties/batch", json={"events": events}, headers=auth
                    )
            except httpx.HTTPError:
                self.statuses["no answer"] += 1
                await asyncio.sleep(RETRY_AFTER_S)
                continue
            self.statuses[str(response.status_code)] += 1
            if response.status_code == 202:
                self.ack_times.append(time.monotonic())
                self.acked.update((e["event_id"], e) for e in events)
                return
            if response.status_code != 503:  # a client error or a 500: not to be retried
                self.unexpected.append(f"{response.status_code} {response.text[:200]}")
                return
            await asyncio.sleep(RETRY_AFTER_S)
        self.given_up += len(events)

    def outage_s(self) -> float:
        """The longest time without a 202, from the start of the fault on."""
        times = sorted(t for t in self.ack_times if t >= self.started + FAULT_AT_S - 1.0)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return round(max(gaps, default=0.0), 2)


# --- the processes ----------------------------------------------------------------------------


@dataclass
class Deployment:
    server: ServerProcess
    worker: WorkerProcess
    stream: str
    schema: str
    auth: dict[str, str]

    def logs(self) -> str:
        return (
            f"--- serve:\n{self.server.log_text()[-2000:]}\n--- worker:\n{self.worker.log_text()}"
        )


@contextmanager
def deployment(cluster: NatsCluster, data_dir: Path) -> Iterator[Deployment]:
    """``serve --no-applier`` + ``worker`` on an R3 stream and a schema of their own."""
    require_server(POSTGRES_URL, 5432)
    stream, schema = unique_stream(), unique_schema()
    # A 1 s ack wait: an acknowledgement lost with a killed leader is redelivered (and
    # dropped as a duplicate) within the drain's wait, not after the 5-15-30 s default backoff.
    queue_url = f"{','.join(cluster.urls)}?stream={stream}&replicas=3&ack_wait_s=1"
    env = {
        "PROFILEHOOK_QUEUE_URL": queue_url,
        "PROFILEHOOK_STORE_URL": postgres_url(schema),
    }
    server = ServerProcess(data_dir, extra_env=env, serve_args=("--no-applier",))
    worker = WorkerProcess(data_dir, "worker", env)
    try:
        server.start()
        worker.spawn()
        auth = {"Authorization": f"Bearer {create_key(data_dir, **env)['key']}"}
        yield Deployment(server, worker, stream, schema, auth)
    finally:
        server.stop()
        worker.kill(signal.SIGTERM)
        JetStream(cluster, stream).request(f"$JS.API.STREAM.DELETE.{stream}")
        drop_schema(schema)


# --- the checks -------------------------------------------------------------------------------


def stored_events(schema: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(f'SELECT event_id, status FROM "{schema}".events').fetchall()
    return {str(event_id): str(status) for event_id, status in rows}


# The store's statuses of an applied event: "duplicate" is one that was applied and then came
# again (a request re-sent after a 503 may be stored twice in the stream; applied once).
APPLIED = {"applied", "duplicate"}


def wait_applied(schema: str, acked: set[str]) -> dict[str, str]:
    """The stored events once every acknowledged one is applied, or when the time is up."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        stored = stored_events(schema)
        if all(stored.get(e) in APPLIED for e in acked) or time.monotonic() > deadline:
            return stored
        time.sleep(0.25)


async def read_contacts(
    base_url: str, contacts: list[str], auth: dict[str, str]
) -> list[tuple[Any, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:

        async def get(path: str) -> Any:
            """As a client should, a 503 is asked again (30 concurrent 500-event histories
            on a loaded machine can pass the backend deadline)."""
            for _ in range(READ_ATTEMPTS):
                response = await client.get(path, headers=auth)
                if response.status_code != 503:
                    break
                await asyncio.sleep(RETRY_AFTER_S)
            assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
            return response.json()

        async def one(contact_id: str) -> tuple[Any, Any]:
            profile = await get(f"/v1/contacts/{contact_id}")
            return profile, await get(f"/v1/contacts/{contact_id}/history?limit=500")

        return await asyncio.gather(*(one(c) for c in contacts))


def verify(deployment: Deployment, load: Load, js: JetStream) -> dict[str, Any]:
    acked = set(load.acked)
    stored = wait_applied(deployment.schema, acked)
    model = reference_profiles(load.acked.values())
    contacts = sorted(model)
    views = asyncio.run(read_contacts(deployment.server.base_url, contacts, deployment.auth))
    mismatches = history_repeats = 0
    in_history: set[str] = set()
    for contact_id, (profile, history) in zip(contacts, views, strict=True):
        found = {
            name: (value, profile["versions"][name]["event_id"])
            for name, value in profile["properties"].items()
        }
        mismatches += found != model[contact_id]
        ids = [e["event_id"] for e in history["events"]]
        history_repeats += len(ids) - len(set(ids))
        in_history.update(ids)
    # Every applied event was acknowledged, so a drained work queue is empty on every replica,
    # at the same last sequence. On 2.9.10 acknowledged messages stayed in the stream after a
    # node kill (a "phantom backlog"), and the replicas' sequences drifted apart.
    replicas: dict[str, tuple[int, int]] = {}

    def drained_everywhere() -> bool:
        replicas.update(js.replica_states())
        return len(replicas) == 3 and set(replicas.values()) == {(0, max(replicas.values())[1])}

    drained = False
    with suppress(AssertionError):
        drained = wait_until(drained_everywhere, DRAIN_TIMEOUT_S, interval_s=0.5)
    return {
        # What each node holds when the stream did not drain: is the consumer's ack floor
        # behind, does it still redeliver, do the worker's acks reach its leader?
        "stream_and_consumer": {} if drained else js.consumer_view(),
        "acked": len(acked),
        "applied": sum(1 for e in acked if stored.get(e) in APPLIED),
        "applied_and_sent_again": sum(1 for e in acked if stored.get(e) == "duplicate"),
        "lost": len(acked - stored.keys()),
        "not_applied": sum(1 for e in acked if stored.get(e) not in APPLIED),
        "not_applied_sample": sorted(
            (e, stored.get(e, "missing")) for e in acked if stored.get(e) not in APPLIED
        )[:5],
        "stored_not_acked": len(stored.keys() - acked),
        "history_repeats": history_repeats,
        "history_differences": len(in_history ^ acked),
        "profile_mismatches": mismatches,
        "replicas": {name: list(state) for name, state in sorted(replicas.items())},
        "replicas_agree": len(replicas) == 3 and len(set(replicas.values())) == 1,
        "left_in_stream": max((messages for messages, _ in replicas.values()), default=-1),
    }


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_given_a_nats_node_fault_under_load_then_every_acked_event_is_applied_once(
    scenario: str, jetstream_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Given an R3 stream on 3 nodes and a client sending known event_ids, retrying 503s,
    when ``scenario`` strikes during the load, then every acknowledged event is applied
    exactly once, the profiles equal the model, and every replica of the stream is empty."""
    cluster = jetstream_cluster
    seed = int(os.environ.get("NATS_FAULTS_SEED", random.randrange(2**32)))
    load = Load(make_requests(random.Random(seed)))
    with deployment(cluster, tmp_path / "data") as deployed:
        js = JetStream(cluster, deployed.stream)
        wait_until(js.consumer_leader, READY_TIMEOUT_S, interval_s=0.2)  # the worker's consumer
        js.wait_whole()
        fault = Fault(cluster, js)

        load.started = time.monotonic()
        sender = threading.Thread(
            target=load.run_in_thread, args=(deployed.server.base_url, deployed.auth)
        )
        sender.start()
        try:
            time.sleep(FAULT_AT_S)
            fault.notes["acked_at_fault"] = len(load.acked)
            SCENARIOS[scenario](fault)  # nodes start from the main thread: see nats_cluster
        finally:
            for node in cluster.nodes:  # whatever happened, the next test has 3 nodes
                if not node.running:
                    cluster.restart(node)
            sender.join(GIVE_UP_AFTER_S + LOAD_S + 30)
        cluster.wait_healthy()
        load_s = time.monotonic() - load.started
        figures = {
            "scenario": scenario,
            "seed": seed,
            "events": sum(len(r) for r in load.requests),
            **fault.notes,
            **verify(deployed, load, js),
            "given_up": load.given_up,
            "unexpected": load.unexpected[:5],
            "responses": dict(load.statuses),
            "503s": load.statuses["503"],
            "outage_s": load.outage_s(),
            "load_s": round(load_s, 1),
        }
        alive = deployed.server.proc is not None and deployed.server.proc.poll() is None
        worker = deployed.worker.proc
        figures["processes_alive"] = alive and worker is not None and worker.poll() is None
        logs = deployed.logs()
    print(f"\nnats fault figures: {json.dumps(figures)}")
    (tmp_path / "fault-figures.json").write_text(json.dumps(figures, indent=2))

    assert not sender.is_alive(), "the load did not finish"
    assert not figures["unexpected"], f"answers other than 202 and 503: {figures}"
    assert figures["given_up"] == 0, f"requests never acknowledged: {figures}"
    assert figures["acked"] == figures["events"], f"events never acknowledged: {figures}"
    assert figures["lost"] == 0, f"acknowledged events lost: {figures}\n{logs}"
    assert figures["not_applied"] == 0, f"acknowledged events not applied: {figures}\n{logs}"
    assert figures["history_repeats"] == 0, f"events applied more than once: {figures}"
    assert figures["history_differences"] == 0, f"history is not the acked events: {figures}"
    assert figures["profile_mismatches"] == 0, f"profiles differ from the model: {figures}"
    assert figures["replicas_agree"], f"the replicas diverged: {figures}"
    assert figures["left_in_stream"] == 0, f"applied events left in the stream: {figures}\n{logs}"
    assert figures["processes_alive"], f"serve or worker died: {figures}\n{logs}"
