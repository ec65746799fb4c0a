"""At least once across crashes (SPEC 2.10): a real ``profilehook serve`` delivers to a local
receiver (which verifies every signature with ``standardwebhooks``); its delivering process (the
applier process's delivery child, ``profilehook deliver``), the applier process and the server
are SIGKILLed mid-delivery and restarted. Every change arrives,
none out of order per contact; duplicates (the calls in flight at the kill) carry the same
``webhook-id``. The figures are printed: changes, delivered, out-of-order, duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support import ServerProcess, create_key, descendants
from tests.webhook_receiver import Receiver, receiving, tally

EVENTS = 300
CONTACTS = 10


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    ready: list[Receiver] = []
    stop = threading.Event()

    async def serve() -> None:
        async with receiving() as found:
            found.delay_s = 0.01
            ready.append(found)
            while not stop.is_set():
                await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    for _ in range(500):
        if ready:
            break
        time.sleep(0.01)
    yield ready[0]
    stop.set()
    thread.join(5)


def delivering(pid: int) -> list[int]:
    """The ``profilehook deliver`` processes under ``pid``."""
    found = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if b"deliver" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0"):
                found.append(child)
    return found


def test_given_kill_9_of_the_delivering_process_then_every_change_arrives_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, extra_env={"PROFILEHOOK_DESTINATIONS_ALLOW_PRIVATE": "1"})
    server.start()
    admin = {"Authorization": f"Bearer {create_key(data, scopes=('admin',))['key']}"}
    r = httpx.post(
        f"{server.base_url}/v1/destinations",
        json={"url": f"http://127.0.0.1:{receiver.port}/in"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    receiver.secret = secret
    kills = 0
    try:
        with httpx.Client(headers=admin, timeout=5) as client:
            for i in range(EVENTS):
                body = {
                    "contact_id": f"c{i % CONTACTS}",
                    "event_id": f"ev-{i:05d}",
                    "event_name": "e",
                    "timestamp": 1_700_000_000 + i,
                    "user_properties": {"n": i},
                }
                while True:
                    try:
                        r = client.post(f"{server.base_url}/v1/properties", json=body)
                        if r.status_code == 202:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.02)
                if i in (EVENTS // 3, 2 * EVENTS // 3):
                    # Once deliveries are under way: the delivery process first (calls in
                    # flight), then the applier process and the server, all SIGKILLed.
                    deadline = time.monotonic() + 20
                    while len(receiver.received) < i // 2 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert server.proc is not None
                    while not delivering(server.proc.pid) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    (deliverer,) = delivering(server.proc.pid)
                    os.kill(deliverer, signal.SIGKILL)
                    for child in descendants(server.proc.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child, signal.SIGKILL)
                    server.kill()
                    kills += 1
                    server.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len({c.headers["webhook-id"] for c in receiver.received}) >= EVENTS:
                break
            time.sleep(0.1)
    finally:
        server.stop()

    calls = list(receiver.received)
    got = tally(calls)
    first = got.first
    print(
        f"\nkill -9 delivery: kills={kills} changes={EVENTS} delivered={got.distinct}"
        f" out-of-order={got.out_of_order} duplicates={got.duplicates} calls={len(calls)}"
    )
    assert len(first) == EVENTS
    assert sorted(d["event_id"] for d in first.values()) == [f"ev-{i:05d}" for i in range(EVENTS)]
    assert got.out_of_order == 0
