"""README's 15-line receiver (Getting changes out) runs as written: it verifies a real delivery's
signature with ``standardwebhooks`` and prints the change; a call with a bad signature gets 400."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from profilehook.destinations import registry
from profilehook.destinations.delivery import Deliverer
from profilehook.events import Event
from profilehook.settings import Settings
from profilehook.stores.memory import MemoryStore

README = (Path(__file__).parent.parent / "README.md").read_text()


def receiver_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    (code,) = [b for b in blocks if "Webhook(" in b and "HTTPServer" in b]
    return str(code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_receiver_is_15_lines_and_verifies_a_delivery(tmp_path: Path) -> None:
    code = receiver_code()
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    store = MemoryStore()
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    made, secret = asyncio.run(registry.create(store, "acme", {"url": url}, allow_private=True))
    script = tmp_path / "receiver.py"
    script.write_text(code)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={"WEBHOOK_SECRET": secret, "PORT": str(port), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            try:
                bad = httpx.post(url, content=b"{}", headers={"webhook-id": "x"}, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.02)
        assert bad.status_code == 400  # not signed: refused

        async def deliver() -> None:
            await store.apply(
                [
                    Event(
                        workspace="acme",
                        event_id="e1",
                        contact_id="c1",
                        ts_us=1,
                        properties={"plan": "pro"},
                    )
                ]
            )
            deliverer = Deliverer(store, Settings(destinations_allow_private=True))
            for _ in range(200):
                await deliverer.step()
                await deliverer.drain()
                if await store.list_deliveries(made.destination_id, "delivered", 1):
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(await store.list_deliveries(made.destination_id, None, 1))

        asyncio.run(deliver())
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    line = out.decode().strip()
    assert (
        line.startswith("chg_") and "c1" in line and "'plan': {'old': None, 'new': 'pro'}" in line
    )
