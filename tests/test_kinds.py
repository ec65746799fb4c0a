"""One registry of source kinds: a kind registered in ``sources/kinds.py`` gets its webhook route,
its ``sources create <kind>`` command with its options and answer, and its OpenAPI entry, with
nothing else to edit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from profilehook import cli
from profilehook.api.app import create_app
from profilehook.api.openapi import document
from profilehook.events import Event
from profilehook.settings import Settings
from profilehook.sources.kinds import KINDS
from profilehook.sources.webhooks import CreateOption, Kind, WebhookRequest, WebhookResult
from profilehook.stores.base import Source, Store
from tests.conftest import new_key
from tests.support import wait_until


class Echo:
    """A third kind for the test: each call sets ``seen=<the body>`` on contact ``?contact=``."""

    kind = "echo"
    max_body_bytes = 1_000

    async def handle(self, source: Source, request: WebhookRequest) -> WebhookResult:
        event = Event(
            source.workspace,
            f"echo-{request.received_us}",
            request.query["contact"],
            request.received_us,
            {"seen": request.body.decode(), "color": source.config["color"]},
            source="echo",
        )
        return WebhookResult([event], {"status": "accepted", "event_ids": [event.event_id]})


def _make_echo(settings: Settings, store: Store) -> Echo:
    return Echo()


ECHO = Kind(
    name="echo",
    title="Echo",
    make_source=_make_echo,
    secret_in="query",
    config=lambda values: ({"color": values["color"]}, False),
    create_help="An echo source.\n\nExample:\n  profilehook sources create echo --workspace a",
    json_help="Print the source.",
    media_type="text/plain",
    openapi="Echo: any text, set as it came.",
    options=(CreateOption("--color", required=True, help="The color it adds."),),
)


@pytest.fixture
def echo_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[Kind]:
    monkeypatch.setitem(KINDS, "echo", ECHO)
    yield ECHO


def test_the_cli_has_a_create_command_for_every_registered_kind_and_no_other():
    assert set(cli.sources_create.commands) == set(KINDS)
    assert {"copernica", "amplitude"} <= set(KINDS)


def test_given_a_registered_kind_then_the_cli_creates_it_with_its_options_and_the_route_takes_it(
    echo_registered: Kind, settings: Settings
):
    command = cli._create_command(echo_registered)
    assert "--color" in CliRunner().invoke(command, ["--help"]).output
    missing = CliRunner().invoke(command, ["--workspace", "acme"], obj=settings)
    assert missing.exit_code == 2 and "--color" in missing.output

    created = CliRunner().invoke(
        command, ["--workspace", "acme", "--color", "blue", "--json"], obj=settings
    )
    assert created.exit_code == 0, created.output
    answer: dict[str, Any] = json.loads(created.stdout)
    assert (answer["kind"], answer["workspace"], "token" in answer) == ("echo", "acme", False)

    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {new_key(settings, 'acme')}"}
        sent = client.post(f"{answer['url']}?contact=c1", content=b"hello")
        assert sent.status_code == 200, sent.text

        def applied() -> dict[str, Any] | None:
            found = client.get("/v1/contacts/c1", headers=auth)
            return found.json()["properties"] if found.status_code == 200 else None

        assert wait_until(applied) == {"seen": "hello", "color": "blue"}


def test_given_a_registered_kind_then_the_openapi_document_describes_its_webhook(
    echo_registered: Kind,
):
    webhook = document("http://localhost")["paths"]["/v1/webhooks/{source_id}"]["post"]
    assert "Echo" in webhook["summary"] and "Echo: any text" in webhook["description"]
    assert "text/plain" in webhook["requestBody"]["content"]
