"""Delivery in a process of its own (destinations/process.py): the applier runner starts
``profilehook deliver`` when the store is shared (a SQLite file, PostgreSQL), wakes it after its
commits, restarts it when it dies; it exits when its parent dies; a kill -9 mid-delivery loses
no change and breaks no contact's order; an in-memory store is delivered from in process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from profilehook.destinations import registry
from profilehook.destinations.process import DeliveryProcess, delivers_in_a_child
from profilehook.events import Event
from profilehook.settings import Settings
from profilehook.stores.sqlite import SqliteStore
from tests.store_backends import round_of_events
from tests.support import (
    ServerProcess,
    alive,
    cli_env,
    create_key,
    descendants,
    drop_schema,
    postgres_url,
    require_server,
    unique_schema,
    wait_until,
)
from tests.webhook_receiver import Receiver, receiving, tally

pytestmark = pytest.mark.slow

S = 1_000_000


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def delivery_pids(root: int) -> list[int]:
    return [p for p in descendants(root) if "profilehook deliver" in command_of(p)]


def events(first: int, count: int, contacts: int) -> list[Event]:
    return [
        Event(
            workspace="acme",
            event_id=f"e{i:05d}",
            contact_id=f"c{i % contacts}",
            ts_us=(100 + i) * S,
            properties={"n": i},
        )
        for i in range(first, first + count)
    ]


async def until(predicate: object, timeout_s: float) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def a_store_with_a_destination(path: Path, receiver: Receiver) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    _, secret = await registry.create(
        store, "acme", {"url": f"http://127.0.0.1:{receiver.port}/in"}, allow_private=True
    )
    receiver.secret = secret
    return store


def child_settings(path: Path) -> Settings:
    return Settings(
        destinations_allow_private=True,
        destinations_retry_scale=0.001,
        store_url=f"sqlite:///{path}",
    )


def test_only_a_store_other_processes_share_is_delivered_from_a_child() -> None:
    assert delivers_in_a_child(Settings(store_url=""))
    assert delivers_in_a_child(Settings(store_url="sqlite:///x.sqlite3"))
    assert delivers_in_a_child(Settings(store_url="postgresql://h/db?schema=s"))
    assert not delivers_in_a_child(Settings(store_url="memory://"))


async def test_wake_ups_of_one_loop_turn_are_one_byte_and_a_full_pipe_never_blocks() -> None:
    child = DeliveryProcess(Settings())
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    child._wake_fd = write_fd  # as _spawn leaves it
    try:
        for _ in range(3):
            child.wake()
        await asyncio.sleep(0)
        assert os.read(read_fd, 100) == b"\x01"
        while True:  # fill the pipe, as a child busy for long would leave it
            try:
                os.write(write_fd, b"\x01" * 4096)
            except BlockingIOError:
                break
        child.wake()
        await asyncio.sleep(0)  # dropped, not blocking: the child has bytes to read anyway
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_serve_delivers_from_a_child_of_its_applier_process(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with receiving() as receiver:
            server = ServerProcess(
                tmp_path / "data", extra_env={"PROFILEHOOK_DESTINATIONS_ALLOW_PRIVATE": "1"}
            )
            await asyncio.to_thread(server.start)
            try:
                admin = create_key(server.data_dir, scopes=("admin",))["key"]
                headers = {"Authorization": f"Bearer {admin}"}
                async with httpx.AsyncClient(headers=headers) as client:
                    r = await client.post(
                        f"{server.base_url}/v1/destinations",
                        json={"url": f"http://127.0.0.1:{receiver.port}/in"},
                    )
                    receiver.secret = r.json()["secret"]
                    assert server.proc is not None
                    (child,) = await asyncio.to_thread(
                        wait_until,
                        lambda: delivery_pids(server.proc.pid),  # type: ignore[union-attr]
                        15,
                    )
                    (applier,) = [
                        p for p in descendants(server.proc.pid) if "worker" in command_of(p)
                    ]
                    assert child in descendants(applier)
                    # In the applier's session, the server's (one scheduler autogroup), in a
                    # process group of its own, at the applier's priority (19: never above it).
                    assert os.getsid(child) == os.getsid(applier) == os.getsid(server.proc.pid)
                    assert len({os.getpgid(p) for p in (child, applier, server.proc.pid)}) == 3
                    assert os.getpriority(os.PRIO_PROCESS, child) == os.getpriority(
                        os.PRIO_PROCESS, applier
                    )
                    r = await client.post(
                        f"{server.base_url}/v1/properties",
                        json={
                            "contact_id": "c1",
                            "event_name": "e",
                            "timestamp": 1_700_000_000,
                            "user_properties": {"n": 1},
                        },
                    )
                    assert r.status_code == 202
                    await until(lambda: receiver.received, 20)
                    assert receiver.received[0].verified is not None
            finally:
                await asyncio.to_thread(server.stop)
            wait_until(lambda: not alive(child), 10)

    asyncio.run(scenario())


async def test_a_wake_up_delivers_without_waiting_for_the_next_look(tmp_path: Path) -> None:
    async with receiving() as receiver:
        store = await a_store_with_a_destination(tmp_path / "p.sqlite3", receiver)
        child = DeliveryProcess(child_settings(tmp_path / "p.sqlite3"), poll_s=60)
        stop = asyncio.Event()
        running = asyncio.create_task(child.run(stop))
        try:
            await asyncio.sleep(2)  # started, and has looked once: the next look is a minute off
            await store.apply(events(0, 3, 3))
            await asyncio.sleep(1.5)
            assert receiver.received == []  # without a wake-up, nothing yet
            child.wake()
            child.wake()  # the same turn: one byte
            await until(lambda: len(receiver.received) == 3, 10)
        finally:
            stop.set()
            await running
            await store.close()


async def test_a_killed_delivery_process_is_started_again(tmp_path: Path) -> None:
    async with receiving() as receiver:
        store = await a_store_with_a_destination(tmp_path / "p.sqlite3", receiver)
        child = DeliveryProcess(child_settings(tmp_path / "p.sqlite3"))
        stop = asyncio.Event()
        running = asyncio.create_task(child.run(stop))
        try:
            await until(lambda: child.pid is not None, 10)
            first = child.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await until(lambda: child.pid not in (None, first), 10)
            assert child.starts == 2
            await store.apply(events(0, 5, 5))
            child.wake()
            await until(lambda: len(receiver.received) == 5, 15)
        finally:
            stop.set()
            await running
            await store.close()
        assert not alive(first)


def test_the_delivery_process_exits_when_its_applier_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        assert server.proc is not None
        (child,) = wait_until(lambda: delivery_pids(server.proc.pid), 15)
        (applier,) = [p for p in descendants(server.proc.pid) if "worker" in command_of(p)]

        os.kill(applier, signal.SIGKILL)  # no chance to stop it: only its end of the pipe closes

        wait_until(lambda: not alive(child), 10)
        (replacement,) = wait_until(lambda: delivery_pids(server.proc.pid), 20)  # type: ignore[union-attr]
        assert replacement != child
    finally:
        server.stop()


async def test_kill_9_of_the_delivery_process_mid_delivery_loses_nothing_and_keeps_order(
    tmp_path: Path,
) -> None:
    changes, contacts = 400, 10
    async with receiving() as receiver:
        receiver.delay_s = 0.01  # calls are in flight when it is killed
        store = await a_store_with_a_destination(tmp_path / "p.sqlite3", receiver)
        child = DeliveryProcess(child_settings(tmp_path / "p.sqlite3"))
        stop = asyncio.Event()
        running = asyncio.create_task(child.run(stop))
        kills = 0
        try:
            for first in range(0, changes, 100):
                await store.apply(events(first, 100, contacts))
                child.wake()
                if first in (100, 200):
                    await until(lambda f=first: len(receiver.received) >= f // 2, 30)
                    pid = child.pid
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                    await until(lambda p=pid: child.pid not in (None, p), 15)
            # A killed child's leases run out (DESTINATION_LEASE_S) before its calls go again.
            await until(lambda: tally(receiver.received).distinct >= changes, 120)
        finally:
            stop.set()
            await running
            await store.close()
    got = tally(receiver.received)
    print(
        f"\nkill -9 of the delivery process: kills={kills} changes={changes}"
        f" delivered={got.distinct} out-of-order={got.out_of_order} duplicates={got.duplicates}"
    )
    assert got.distinct == changes
    assert got.out_of_order == 0


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "profilehook", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stopped(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_worker_on_an_in_memory_store_starts_no_delivery_process(tmp_path: Path) -> None:
    shared = cli_env(tmp_path / "shared")  # a SQLite file: a child delivers
    memory = cli_env(
        tmp_path / "memory", PROFILEHOOK_STORE_URL="memory://", PROFILEHOOK_QUEUE_URL="memory://"
    )
    workers = [_worker(shared), _worker(memory)]
    try:
        (child,) = wait_until(lambda: delivery_pids(workers[0].pid), 20)
        # Below its worker's priority (the apply first), in its session (one autogroup).
        wanted = min(19, os.getpriority(os.PRIO_PROCESS, workers[0].pid) + 5)
        wait_until(lambda: os.getpriority(os.PRIO_PROCESS, child) == wanted, 20)
        assert os.getsid(child) == os.getsid(workers[0].pid)
        time.sleep(2)  # the in-memory worker has started by now too
        assert workers[1].poll() is None
        assert delivery_pids(workers[1].pid) == []
    finally:
        for proc in workers:
            _stopped(proc)


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = postgres_url(unique_schema())
    require_server(url, 5432)
    try:
        yield url
    finally:
        drop_schema(url.rpartition("schema=")[2])


def test_two_postgres_workers_deliver_from_their_children_without_doubles(
    tmp_path: Path, pg_url: str
) -> None:
    from profilehook.stores.postgres import PostgresStore

    contacts, rounds = 20, 10

    async def scenario() -> tuple[Counter[str], Receiver, list[int]]:
        async with receiving() as receiver:
            receiver.delay_s = 0.005
            store = PostgresStore(pg_url)
            await store.open()
            _, secret = await registry.create(
                store, "acme", {"url": f"http://127.0.0.1:{receiver.port}/in"}, allow_private=True
            )
            receiver.secret = secret
            env = cli_env(
                tmp_path / "w",
                PROFILEHOOK_STORE_URL=pg_url,
                PROFILEHOOK_QUEUE_URL="memory://",  # the test applies; the workers deliver
                PROFILEHOOK_DESTINATIONS_ALLOW_PRIVATE="1",
            )
            workers = [_worker(env), _worker(env)]
            try:
                async with asyncio.timeout(30):
                    while not all(delivery_pids(w.pid) for w in workers):
                        await asyncio.sleep(0.05)
                children = [delivery_pids(w.pid)[0] for w in workers]
                for n in range(rounds):
                    await store.apply(round_of_events(n, contacts))
                    await asyncio.sleep(0.05)
                await until(lambda: len(receiver.received) >= contacts * rounds, 60)
                await asyncio.sleep(0.5)  # a double would arrive by now
            finally:
                await asyncio.gather(*(asyncio.to_thread(_stopped, w) for w in workers))
                await store.close()
            by = Counter(call.headers["webhook-id"] for call in receiver.received)
            return by, receiver, children

    ids, receiver, children = asyncio.run(scenario())
    assert len(ids) == contacts * rounds
    assert max(ids.values()) == 1, "a change was delivered twice"
    assert tally(receiver.received).out_of_order == 0
    assert all(not alive(pid) for pid in children)
