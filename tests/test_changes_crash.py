"""The change feed is an outbox (README, Getting changes out): a real ``profilehook serve`` is
SIGKILLed twice while events are sent and applied, and restarted; a reader that follows the
feed all along, across the restarts, sees exactly one change per accepted event, none made up,
and each contact's changes in the order they were applied."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from tests.support import ServerProcess, create_key

EVENTS = 600
CONTACTS = 12


def test_given_kills_during_apply_then_the_feed_has_one_change_per_accepted_event(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data").start()
    auth = {"Authorization": f"Bearer {create_key(tmp_path / 'data')['key']}"}
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:
        after = None
        while not done.is_set() or len(seen) < EVENTS:
            try:
                params: dict[str, Any] = {"wait_s": 1, **({"after": after} if after else {})}
                r = httpx.get(
                    f"{server.base_url}/v1/changes", params=params, headers=auth, timeout=5
                )
            except httpx.HTTPError:
                time.sleep(0.05)  # the server is down: try again, from the same cursor
                continue
            if r.status_code != 200:
                time.sleep(0.05)
                continue
            page = r.json()
            seen.extend(page["changes"])
            after = page["next_cursor"]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent: list[str] = []
    try:
        with httpx.Client(headers=auth, timeout=5) as client:
            for i in range(EVENTS):
                body = {
                    "contact_id": f"c{i % CONTACTS}",
                    "event_id": f"ev-{i:05d}",
                    "event_name": "e",
                    "timestamp": 1_700_000_000 + i,
                    "user_properties": {"n": i},
                }
                while True:  # until accepted: a retry with the same event_id is exact
                    try:
                        r = client.post(f"{server.base_url}/v1/properties", json=body)
                        if r.status_code == 202:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.02)
                sent.append(body["event_id"])
                if i in (EVENTS // 3, 2 * EVENTS // 3):
                    server.kill()  # SIGKILL, the applier's work under way or not
                    server.start()
        done.set()
        reader.join(60)
    finally:
        done.set()
        server.stop()

    assert not reader.is_alive(), f"the feed holds {len(seen)} of {EVENTS} changes"
    event_ids = [change["event_id"] for change in seen]
    assert sorted(event_ids) == sorted(sent)  # one per event: none lost, none twice or made up
    assert len({change["change_id"] for change in seen}) == EVENTS
    last: dict[str, Any] = {}
    for change in seen:  # per contact, in the order applied: each old is the previous new
        n = change["properties"]["n"]
        assert n["old"] == last.get(change["contact_id"]), change
        last[change["contact_id"]] = n["new"]
