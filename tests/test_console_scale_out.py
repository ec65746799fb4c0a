"""The console's live tail scaled out (live_nats.py): two real ``serve --no-applier`` processes on
one NATS and one PostgreSQL, as behind a balancer; a tail open on one shows the calls the other
receives, accepted and refused, and a source's page the other's recent webhook calls. And the bus's
rules for it (live.py): another process's interest makes calls be built, for a while only;
forwarded calls are not forwarded again."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from profilehook.constants import LIVE_INTEREST_TTL_S
from profilehook.live import Call, LiveCalls
from tests.support import ServerProcess, create_key, nats_postgres_env, wait_until


def a_call(workspace: str = "acme", event_id: str = "e1") -> Call:
    return Call(
        workspace,
        1,
        "api",
        None,
        "POST",
        "/v1/properties",
        (),
        b"{}",
        False,
        202,
        None,
        (event_id,),
    )


def test_another_processs_interest_makes_calls_be_built_until_it_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = LiveCalls()
    assert live.watched is False
    now = [1_000.0]
    monkeypatch.setattr("profilehook.live.time.monotonic", lambda: now[0])

    live.remote_interest(now[0] + LIVE_INTEREST_TTL_S)
    assert live.watched is True
    now[0] += LIVE_INTEREST_TTL_S - 0.1
    live.refresh()
    assert live.watched is True
    now[0] += 0.2
    live.refresh()
    assert live.watched is False  # the ingest path is back to one attribute read


def test_a_local_watcher_keeps_it_watched_and_a_first_one_is_announced() -> None:
    live = LiveCalls()
    announced: list[int] = []
    live.on_watch = lambda: announced.append(1)

    watcher = live.watch("acme")
    live.refresh()
    assert live.watched and live.has_watchers and announced == [1]
    live.unwatch(watcher)
    assert not live.watched and not live.has_watchers


def test_a_received_call_is_forwarded_and_a_call_heard_from_another_process_is_not() -> None:
    live = LiveCalls()
    forwarded: list[Call] = []
    live.forward = forwarded.append
    watcher = live.watch("acme")

    live.publish(a_call(event_id="mine"))
    live.receive(a_call(event_id="theirs"))
    live.receive(a_call("other", event_id="elsewhere"))

    assert [c.event_ids for c in forwarded] == [("mine",)]
    shown = [watcher.queue.get_nowait() for _ in range(watcher.queue.qsize())]
    assert [(c.event_ids, c.seq) for c in shown] == [(("mine",), 1), (("theirs",), 2)]


# -- two real servers -----------------------------------------------------------------------------


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess, dict[str, str]]]:
    with nats_postgres_env() as env:
        data_dir = tmp_path / "data"
        servers = [
            ServerProcess(data_dir, extra_env=env, serve_args=("--no-applier",)) for _ in range(2)
        ]
        try:
            for server in servers:
                server.spawn()
            for server in servers:
                server.wait_ready()
            yield servers[0], servers[1], env
        finally:
            for server in servers:
                server.stop()


class Tail:
    """A console signed in on one server, its live tail open, collecting the calls shown."""

    def __init__(self, base_url: str, key: str):
        self.client = httpx.Client(base_url=base_url, timeout=10)
        login = self.client.get("/console/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', login)
        assert token
        signed_in = self.client.post(
            "/console/login", data={"key": key, "csrf_token": token.group(1), "next": "/"}
        )
        assert signed_in.status_code in (200, 303), signed_in.text
        self.calls: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.connected.wait(10)

    def _read(self) -> None:
        with self.client.stream("GET", "/console/live/stream", timeout=None) as answer:
            for line in answer.iter_lines():
                if self._stop:
                    return
                if line.startswith(": connected"):
                    self.connected.set()
                elif line.startswith("data: ") and line != "data: {}":
                    self.calls.append(json.loads(line.removeprefix("data: ")))

    def shown(self, text: str) -> dict[str, Any] | None:
        return next((c for c in self.calls if text in json.dumps(c)), None)

    def close(self) -> None:
        self._stop = True
        self.client.close()


def test_a_tail_on_one_server_shows_what_the_other_receives_within_1_s(
    two_servers: tuple[ServerProcess, ServerProcess, dict[str, str]],
) -> None:
    watched_on, other, env = two_servers
    key = create_key(watched_on.data_dir, "acme", ("admin",), **env)["key"]
    headers = {"Authorization": f"Bearer {key}"}
    tail = Tail(watched_on.base_url, key)
    try:
        # The other server hears that a tail is open (milliseconds): probe until it shows.
        probes = iter(range(100))

        def probe_shown() -> bool:
            body = _event(f"probe-{next(probes)}")
            assert httpx.post(f"{other.base_url}/v1/properties", json=body, headers=headers)
            return tail.shown(body["event_id"]) is not None

        wait_until(probe_shown, timeout_s=10, interval_s=0.1)

        sent = time.monotonic()
        answer = httpx.post(f"{other.base_url}/v1/properties", json=_event("c1"), headers=headers)
        assert answer.status_code == 202
        wait_until(lambda: tail.shown("ev-c1"), timeout_s=1.0, interval_s=0.01)
        print(f"shown {time.monotonic() - sent:.3f} s after the other server's 202")

        refused = httpx.post(
            f"{other.base_url}/v1/properties",
            json={"contact_id": "c2", "timestamp": "soon"},
            headers=headers,
        )
        assert refused.status_code == 422
        call = wait_until(lambda: tail.shown('"event_name"]'), timeout_s=1.0, interval_s=0.01)
        assert call["status"] == 422 and "Field required" in json.dumps(call)

        # A source's recent calls: a refused webhook call to the other server, seen here.
        source = httpx.post(
            f"{watched_on.base_url}/v1/sources", json={"kind": "amplitude"}, headers=headers
        ).json()
        webhook = f"{other.base_url}/v1/webhooks/{source['source_id']}"
        wrong = httpx.post(webhook, json={"users": []}, headers={"Authorization": "Bearer no"})
        assert wrong.status_code == 401
        page = f"/console/source?id={source['source_id']}"
        wait_until(lambda: "<td>401</td>" in tail.client.get(page).text, timeout_s=2)
    finally:
        tail.close()


def _event(contact: str) -> dict[str, Any]:
    return {
        "contact_id": contact,
        "event_id": f"ev-{contact}",
        "event_name": "e",
        "timestamp": 1_700_000_000,
        "user_properties": {"plan": "pro"},
    }
