"""Scale-out (SPEC 4): NATS JetStream + PostgreSQL, many ``serve`` and ``worker`` processes.

The multi-process test runs 2 ``profilehook serve --no-applier`` and 2 ``profilehook worker``
processes on one stream and one schema. Concurrent clients send overlapping contacts to both
servers, with duplicates (the same event to both servers at once, and again later) and event
times out of send order; one worker is SIGKILLed midway and not restarted. Every acknowledged
event must end applied, and every profile must equal a reference model computed here from the
acknowledged events alone.

Run with ``pytest -s`` to see the figures; ``SCALE_OUT_SEED=<seed>`` repeats a run's choices.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from profilehook.queues.nats import split_url
from tests.support import (
    NATS_URL,
    POSTGRES_URL,
    SHORT_ACK_WAIT_S,
    ServerProcess,
    cli_env,
    create_key,
    delete_stream,
    nats_postgres_env,
    require_server,
    run_cli,
    unique_stream,
)

pytestmark = pytest.mark.slow

EVENTS = 8_000
CONTACTS = 40
PROPERTIES = ("plan", "score", "colour", "city", "tier")
CLIENTS = 12
BASE_TS_S = 1_700_000_000
# Whole seconds over a short span: many events share a second, so the event_id decides.
TIME_SPAN_S = 600
NULL_SHARE = 0.15
TO_BOTH_SERVERS_SHARE = 0.15
RESENT_SHARE = 0.1
# The worker is killed once this share of the events was acknowledged and some were applied.
KILL_AT_ACKED_SHARE = 0.4
APPLIED_BEFORE_KILL = 300
SEND_TIMEOUT_S = 45.0
DRAIN_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0
READ_CONCURRENCY = 16


@dataclass
class WorkerProcess:
    """A real ``profilehook worker`` subprocess."""

    data_dir: Path
    name: str
    extra_env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "profilehook", "worker"],
                env=cli_env(self.data_dir, **self.extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


@dataclass
class Cluster:
    servers: list[ServerProcess]
    workers: list[WorkerProcess]
    stream: str
    schema: str

    def logs(self) -> str:
        parts = [f"--- server {s.port}:\n{s.log_text()[-2000:]}" for s in self.servers]
        parts += [f"--- {w.name}:\n{w.log_text()}" for w in self.workers]
        return "\n".join(parts)

    def applied_count(self) -> int:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            row = conn.execute(f'SELECT count(*) FROM "{self.schema}".events').fetchone()
        return int(row[0]) if row else 0

    async def ack_pending(self) -> int:
        """Events handed to the workers and not yet acknowledged."""
        import nats

        from profilehook.queues.nats import CONSUMER

        nc = await nats.connect(NATS_URL, connect_timeout=2)
        try:
            return int((await nc.jetstream().consumer_info(self.stream, CONSUMER)).num_ack_pending)
        finally:
            await nc.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """2 ``serve --no-applier`` + 2 ``worker`` on one NATS stream and one PostgreSQL schema,
    all started at once (so they race on the migrations and the consumer's creation)."""
    with nats_postgres_env(SHORT_ACK_WAIT_S) as env:
        data_dir = tmp_path / "data"
        servers = [
            ServerProcess(data_dir, extra_env=env, serve_args=("--no-applier",)) for _ in range(2)
        ]
        workers = [WorkerProcess(data_dir, f"worker-{i}", env) for i in range(2)]
        try:
            for process in [*workers, *servers]:
                process.spawn()
            for server in servers:
                server.wait_ready()
            stream = split_url(env["PROFILEHOOK_QUEUE_URL"])[1]
            schema = env["PROFILEHOOK_STORE_URL"].rsplit("schema=", 1)[1]
            yield Cluster(servers, workers, stream, schema)
        finally:
            for process in [*servers, *workers]:
                process.kill(signal.SIGTERM)


# --- the load --------------------------------------------------------------------------------


def make_events(rng: random.Random) -> list[dict[str, Any]]:
    """Events over overlapping contacts; times are random, so send order is not time order."""
    events = []
    for n in range(EVENTS):
        event_id = f"so-{n:05d}-{rng.randrange(16**4):04x}"
        names = rng.sample(PROPERTIES, rng.randint(1, 3))
        events.append(
            {
                "contact_id": f"contact-{rng.randrange(CONTACTS):02d}",
                "event_name": "scale_out",
                "timestamp": BASE_TS_S + rng.randrange(TIME_SPAN_S),
                "event_id": event_id,
                "user_properties": {
                    name: None if rng.random() < NULL_SHARE else f"{name}@{event_id}"
                    for name in names
                },
            }
        )
    rng.shuffle(events)
    return events


@dataclass
class Load:
    rng: random.Random
    todo: list[list[dict[str, Any]]]
    resend: list[list[dict[str, Any]]] = field(default_factory=list)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)

    def record(self, events: list[dict[str, Any]], response: httpx.Response) -> None:
        self.statuses[str(response.status_code)] += 1
        if response.status_code != 202:
            return
        body = response.json()
        accepted = (
            {r["event_id"] for r in body["results"] if r["status"] == "accepted"}
            if "results" in body
            else {body["event_id"]}
        )
        self.acked.update((e["event_id"], e) for e in events if e["event_id"] in accepted)


def requests_of(events: list[dict[str, Any]], rng: random.Random) -> list[list[dict[str, Any]]]:
    """Cut the events into single requests and batches of 2 to 20."""
    chunks, i = [], 0
    while i < len(events):
        size = 1 if rng.random() < 0.4 else rng.randint(2, 20)
        chunks.append(events[i : i + size])
        i += size
    return chunks


async def _post(
    client: httpx.AsyncClient, base_url: str, events: list[dict[str, Any]], auth: dict[str, str]
) -> httpx.Response:
    if len(events) == 1:
        return await client.post(f"{base_url}/v1/properties", json=events[0], headers=auth)
    return await client.post(
        f"{base_url}/v1/properties/batch", json={"events": events}, headers=auth
    )


async def _client(
    client: httpx.AsyncClient, urls: list[str], load: Load, auth: dict[str, str]
) -> None:
    """Send requests until none is left; some go to both servers at once, some are kept
    to be sent again once the first pass is over."""
    while load.todo:
        events = load.todo.pop()
        first = load.rng.randrange(len(urls))
        targets = urls if load.rng.random() < TO_BOTH_SERVERS_SHARE else [urls[first]]
        load.requests["to_both" if len(targets) > 1 else "to_one"] += 1
        if load.rng.random() < RESENT_SHARE:
            load.resend.append(events)
        responses = await asyncio.gather(*(_post(client, url, events, auth) for url in targets))
        for response in responses:
            load.record(events, response)


async def _send_all(cluster: Cluster, load: Load, auth: dict[str, str]) -> dict[str, Any]:
    urls = [s.base_url for s in cluster.servers]
    limits = httpx.Limits(max_connections=2 * CLIENTS)
    kill: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        clients = [asyncio.create_task(_client(client, urls, load, auth)) for _ in range(CLIENTS)]
        deadline = time.monotonic() + SEND_TIMEOUT_S
        while len(load.acked) < KILL_AT_ACKED_SHARE * EVENTS or (
            await asyncio.to_thread(cluster.applied_count) < APPLIED_BEFORE_KILL
        ):
            assert time.monotonic() < deadline, f"no progress: {dict(load.statuses)}"
            await asyncio.sleep(0.05)
        kill = {"in_flight_at_kill": await cluster.ack_pending()}
        cluster.workers[0].kill()
        kill.update(acked_at_kill=len(load.acked), applied_at_kill=cluster.applied_count())
        await asyncio.wait_for(asyncio.gather(*clients), deadline - time.monotonic())
        # Second pass: re-send some requests, to either server, while the log still drains.
        load.todo, load.requests["resent"] = load.resend, len(load.resend)
        clients = [asyncio.create_task(_client(client, urls, load, auth)) for _ in range(CLIENTS)]
        await asyncio.wait_for(asyncio.gather(*clients), deadline - time.monotonic())
    return kill


# --- the checks ------------------------------------------------------------------------------


def reference_profiles(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per contact and property, the value of the greatest (timestamp, event_id); null unsets.

    Returns {contact_id: {name: (value, event_id)}}; every contact with an event is present.
    """
    winners: dict[tuple[str, str], tuple[tuple[float, str], Any]] = {}
    for e in events:
        version = (e["timestamp"], e["event_id"])
        for name, value in e["user_properties"].items():
            key = (e["contact_id"], name)
            if key not in winners or version > winners[key][0]:
                winners[key] = (version, value)
    profiles: dict[str, dict[str, Any]] = {e["contact_id"]: {} for e in events}
    for (contact_id, name), ((_, event_id), value) in winners.items():
        if value is not None:
            profiles[contact_id][name] = (value, event_id)
    return profiles


async def _get(client: httpx.AsyncClient, url: str, auth: dict[str, str]) -> Any:
    response = await client.get(url, headers=auth)
    assert response.status_code in (200, 404), response.text
    return response.json() if response.status_code == 200 else None


async def _gather_limited(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``calls`` (each makes its coroutine when its turn comes, so none is left
    un-awaited when another fails) at most READ_CONCURRENCY at a time."""
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


async def _wait_all_applied(cluster: Cluster, load: Load) -> None:
    """Wait until the store holds as many events as were acknowledged (one count a poll),
    or the time is up; the histories then say which events they are."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if await asyncio.to_thread(cluster.applied_count) >= len(load.acked):
            return
        await asyncio.sleep(0.1)


async def _not_applied(
    client: httpx.AsyncClient, urls: list[str], ids: list[str], auth: dict[str, str]
) -> dict[str, str]:
    """The status each server gives the events missing from the histories, for the report."""
    views = await _gather_limited(
        [
            partial(_get, client, f"{urls[i % len(urls)]}/v1/events/{event_id}", auth)
            for i, event_id in enumerate(ids)
        ]
    )
    return {
        event_id: "missing" if view is None else view["status"]
        for event_id, view in zip(ids, views, strict=True)
    }


async def _feed(client: httpx.AsyncClient, url: str, auth: dict[str, str]) -> list[Any]:
    """Every change of the workspace, following cursors from the start."""
    found: list[Any] = []
    after = None
    while True:
        params = {"limit": 1000, **({"after": after} if after else {})}
        r = await client.get(f"{url}/v1/changes", params=params, headers=auth)
        r.raise_for_status()
        page = r.json()
        if not page["changes"]:
            return found
        found += page["changes"]
        after = page["next_cursor"]


async def _verify(cluster: Cluster, load: Load, auth: dict[str, str]) -> dict[str, Any]:
    urls = [s.base_url for s in cluster.servers]
    model = reference_profiles(load.acked.values())
    contacts = sorted(model)
    await _wait_all_applied(cluster, load)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        profiles = await _gather_limited(
            [
                partial(_get, client, f"{urls[i % len(urls)]}/v1/contacts/{c}", auth)
                for i, c in enumerate(contacts)
            ]
        )
        histories = await _gather_limited(
            [
                partial(
                    _get, client, f"{urls[i % len(urls)]}/v1/contacts/{c}/history?limit=500", auth
                )
                for i, c in enumerate(contacts)
            ]
        )
        # The history holds the stored events with their status (the view of
        # GET /v1/events/{id}): an acked event is applied when its entry there says so.
        applied = {
            e["event_id"]
            for history in histories
            for e in (history or {"events": []})["events"]
            if e["status"] in ("applied", "duplicate")
        }
        not_applied = await _not_applied(client, urls, sorted(set(load.acked) - applied), auth)
        feed = await _feed(client, urls[0], auth)
    mismatches = []
    for contact_id, profile in zip(contacts, profiles, strict=True):
        expected = model[contact_id]
        found = (
            None
            if profile is None
            else {
                name: (value, profile["versions"][name]["event_id"])
                for name, value in profile["properties"].items()
            }
        )
        if found != expected:
            mismatches.append({"contact_id": contact_id, "expected": expected, "found": found})
    acked_of: dict[str, set[str]] = defaultdict(set)
    for event_id, e in load.acked.items():
        acked_of[e["contact_id"]].add(event_id)
    history_repeats = history_differences = 0
    for contact_id, history in zip(contacts, histories, strict=True):
        ids = [e["event_id"] for e in (history or {"events": []})["events"]]
        history_repeats += len(ids) - len(set(ids))
        history_differences += len(set(ids) ^ acked_of[contact_id])
    # The change feed, read once from the start: one change per event at most, each of an
    # acknowledged event; per contact, each change's old values are what the ones before it
    # left, and together they give the profile (apply order kept across both workers).
    feed_breaks = 0
    folded: dict[str, dict[str, Any]] = defaultdict(dict)
    for change in feed:
        held = folded[change["contact_id"]]
        for name, values in change["properties"].items():
            feed_breaks += held.get(name) != values["old"]
            if values["new"] is None:
                held.pop(name, None)
            else:
                held[name] = values["new"]
    for contact_id, profile in zip(contacts, profiles, strict=True):
        feed_breaks += folded.get(contact_id, {}) != (profile or {"properties": {}})["properties"]
    feed_ids = [change["event_id"] for change in feed]
    return {
        "changes": len(feed),
        "change_repeats": len(feed_ids) - len(set(feed_ids)),
        "changes_not_acked": len(set(feed_ids) - set(load.acked)),
        "change_order_breaks": feed_breaks,
        "not_applied": len(not_applied),
        "not_applied_statuses": dict(Counter(not_applied.values())),
        "not_applied_sample": sorted(not_applied)[:5],
        "applied": len(load.acked) - len(not_applied),
        "contacts": len(contacts),
        "profile_mismatches": len(mismatches),
        "mismatch_sample": mismatches[:2],
        "history_repeats": history_repeats,
        "history_differences": history_differences,
    }


def test_given_two_servers_and_two_workers_when_one_worker_is_killed_then_profiles_match_the_model(
    cluster: Cluster,
) -> None:
    """Given 2 ``serve --no-applier`` and 2 ``worker`` processes on one stream and one schema,
    when clients send overlapping contacts to both servers, with duplicates and shuffled
    times, and one worker is SIGKILLed midway (the other carries on alone),
    then every acknowledged event is applied exactly once and every profile equals the
    reference model of the acknowledged events."""
    seed = int(os.environ.get("SCALE_OUT_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    events = make_events(rng)
    load = Load(rng, requests_of(events, rng))
    env = cluster.servers[0].extra_env
    auth = {"Authorization": f"Bearer {create_key(cluster.servers[0].data_dir, **env)['key']}"}
    started = time.monotonic()

    kill = asyncio.run(_send_all(cluster, load, auth))
    sent_s = time.monotonic() - started
    figures = asyncio.run(_verify(cluster, load, auth))
    figures = {
        "seed": seed,
        "events_sent": len(events),
        "requests": dict(load.requests),
        "responses": dict(load.statuses),
        "acknowledged": len(load.acked),
        **kill,
        **figures,
        "send_seconds": round(sent_s, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"\nscale-out figures: {figures}")

    assert cluster.workers[0].proc is not None and cluster.workers[0].proc.returncode == -9
    assert cluster.workers[1].proc is not None and cluster.workers[1].proc.poll() is None, (
        f"the surviving worker died: {cluster.logs()}"
    )
    # Nothing here is a client error or an outage: every event must have been accepted.
    assert figures["acknowledged"] == figures["events_sent"], f"events not acked: {figures}"
    assert figures["not_applied"] == 0, f"acked events not applied: {figures}\n{cluster.logs()}"
    assert figures["history_repeats"] == 0, f"events applied more than once: {figures}"
    assert figures["history_differences"] == 0, f"history is not the acked events: {figures}"
    assert figures["profile_mismatches"] == 0, f"profiles differ from the model: {figures}"
    assert figures["changes"] > 0
    assert figures["change_repeats"] == 0, f"a change recorded twice: {figures}"
    assert figures["changes_not_acked"] == 0, f"a change of no acknowledged event: {figures}"
    assert figures["change_order_breaks"] == 0, f"the feed is out of apply order: {figures}"


# --- configuration ---------------------------------------------------------------------------


def test_given_postgresql_store_url_when_serve_starts_then_it_creates_its_schema_and_check_passes(
    tmp_path: Path,
) -> None:
    """Given NATS + PostgreSQL settings and a schema that does not exist yet,
    when ``profilehook serve`` starts, then the schema and its tables exist (migrations ran),
    and ``profilehook check`` with the same settings exits 0."""
    import psycopg

    with nats_postgres_env() as env:
        schema = env["PROFILEHOOK_STORE_URL"].rsplit("schema=", 1)[1]
        server = ServerProcess(tmp_path / "data", extra_env=env).start()
        try:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                tables = {
                    row[0]
                    for row in conn.execute(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                        (schema,),
                    )
                }
                migrated = conn.execute(
                    f'SELECT max(version) FROM "{schema}".schema_migrations'
                ).fetchone()
            check = run_cli(server.data_dir, "check", **env)
        finally:
            server.stop()
    assert {"events", "properties", "contacts", "api_keys", "sources"} <= tables, tables
    assert migrated is not None and migrated[0] >= 1
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok:"), check.stdout
    assert not (tmp_path / "data" / "log.sqlite3").exists(), "fell back to the embedded log"


_WITHOUT_DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.modules[{module!r}] = None  # the driver is not installed
    from profilehook.errors import ConfigurationError
    from profilehook.queues import open_queue
    from profilehook.stores import open_store
    try:
        {opener}({url!r}, Path("."))
    except ConfigurationError as exc:
        print(json.dumps(str(exc.detail)))
    """
)


@pytest.mark.parametrize(
    ("module", "opener", "url", "extra"),
    [
        pytest.param(
            "psycopg", "open_store", "postgresql://db/x", "postgres", id="postgres-without-psycopg"
        ),
        pytest.param("nats", "open_queue", "nats://mq:4222", "nats", id="nats-without-nats-py"),
    ],
)
def test_given_a_missing_driver_when_its_url_is_chosen_then_the_error_names_the_extra(
    tmp_path: Path, module: str, opener: str, url: str, extra: str
) -> None:
    """Given a backend's driver cannot be imported, when its URL is chosen,
    then a ConfigurationError says which extra to install; so does the CLI."""
    script = _WITHOUT_DRIVER.format(module=module, opener=opener, url=url)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install 'profilehook[{extra}]'" in json.loads(result.stdout)

    setting = "PROFILEHOOK_STORE_URL" if opener == "open_store" else "PROFILEHOOK_QUEUE_URL"
    cli = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.modules[{module!r}] = None; "
            "from profilehook.cli import main; main(['check'])",
        ],
        env=cli_env(tmp_path / "data", **{setting: url}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1
    assert f"pip install 'profilehook[{extra}]'" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr


def test_stream_and_replicas_are_read_from_the_queue_url_and_the_rest_goes_to_nats() -> None:
    from profilehook.queues.nats import STREAM, split_url

    assert split_url("nats://mq:4222?stream=EVENTS&replicas=3&x=1") == (
        "nats://mq:4222?x=1",
        "EVENTS",
        3,
    )
    # Without replicas, a new stream gets 1 and an existing one keeps its own.
    assert split_url("nats://mq:4222") == ("nats://mq:4222", STREAM, None)


def test_ack_wait_s_in_the_queue_url_scales_the_redelivery_backoff_and_is_not_passed_to_nats() -> (
    None
):
    from profilehook.queues.nats import REDELIVERY_BACKOFF_S, NatsQueue

    assert NatsQueue("nats://mq:4222").redelivery_backoff_s == REDELIVERY_BACKOFF_S
    queue = NatsQueue("nats://mq:4222?stream=S&ack_wait_s=0.5&x=1")
    assert queue.redelivery_backoff_s == [0.5, 1.5, 3.0, 6.0, 12.0]
    assert (queue.url, queue.stream) == ("nats://mq:4222?x=1", "S")


@pytest.mark.parametrize("ack_wait_s", ["0", "-1", "soon", "", "nan", "inf"])
def test_given_an_ack_wait_that_is_not_a_positive_number_then_a_configuration_error(
    ack_wait_s: str,
) -> None:
    from profilehook.errors import ConfigurationError
    from profilehook.queues import open_queue

    with pytest.raises(ConfigurationError, match="ack_wait_s"):
        open_queue(f"nats://mq:4222?ack_wait_s={ack_wait_s}", Path("."))


def test_given_ack_wait_s_then_an_unacked_delivery_comes_back_after_that_wait() -> None:
    """Given ``?ack_wait_s=0.5``, when a consumer takes an event and closes without
    acknowledging it, then JetStream hands it out again after about 0.5 s, not the 5 s default."""
    require_server(NATS_URL, 4222)
    from profilehook.queues.nats import NatsQueue
    from tests.support import event

    stream = unique_stream()
    url = f"{NATS_URL}?stream={stream}&ack_wait_s=0.5"

    async def redelivered_after_s() -> float:
        queue = NatsQueue(url)
        await queue.open()
        await queue.publish([event(event_id="unacked")])
        assert [d.event.event_id for d in await queue.fetch(10, 1.0)] == ["unacked"]
        await queue.close()
        taken_s = time.monotonic()
        reopened = NatsQueue(url)
        await reopened.open()
        try:
            again = await reopened.fetch(10, 4.0)
        finally:
            await reopened.close()
        assert [d.event.event_id for d in again] == ["unacked"]
        return time.monotonic() - taken_s

    try:
        waited_s = asyncio.run(redelivered_after_s())
    finally:
        delete_stream(stream)
    assert waited_s < 3.0, f"redelivered after {waited_s:.1f} s"


@pytest.mark.parametrize("replicas", ["0", "6", "three", ""])
def test_given_replicas_that_jetstream_cannot_have_then_a_configuration_error(
    replicas: str,
) -> None:
    from profilehook.errors import ConfigurationError
    from profilehook.queues import open_queue

    with pytest.raises(ConfigurationError, match="replicas"):
        open_queue(f"nats://mq:4222?replicas={replicas}", Path("."))


def test_given_replicas_3_then_the_stream_has_3_copies_or_the_open_fails_plainly() -> None:
    """Given ``?replicas=3``, when the queue opens on a new stream, then JetStream holds 3
    copies, or (a single server, as in these tests) the open fails with a ConfigurationError
    that gives the server's reason instead of starting with fewer copies than asked."""
    require_server(NATS_URL, 4222)
    from profilehook.errors import ConfigurationError
    from profilehook.queues.nats import NatsQueue

    stream = unique_stream()

    async def open_and_count() -> int | str:
        queue = NatsQueue(f"{NATS_URL}?stream={stream}&replicas=3")
        try:
            await queue.open()
        except ConfigurationError as exc:
            return str(exc.detail)
        try:
            return int((await queue._js.stream_info(stream)).config.num_replicas)
        finally:
            await queue.close()

    try:
        outcome = asyncio.run(open_and_count())
    finally:
        delete_stream(stream)
    assert outcome == 3 or (
        isinstance(outcome, str) and f"NATS refused stream {stream} (replicas=3)" in outcome
    ), outcome
