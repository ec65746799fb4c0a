"""Errors are grouped as httpx groups its own, defined in one module, and a missing optional extra
is a configuration error that names the extra (said at start-up, answered 501), not a 503."""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from profilehook import cli, errors
from profilehook.api.app import create_app
from profilehook.service import running
from profilehook.settings import Settings
from profilehook.sources import registry
from profilehook.sources.kinds import KINDS

PACKAGE = Path(errors.__file__).parent
GROUPS = (errors.ClientError, errors.BackendError, errors.ConfigurationError)
# The deadline watchdog's signal to a handler that the answer is out; never raised further.
INTERNAL = {("api/deadlines.py", "AlreadyAnswered")}


def _error_classes() -> list[type[errors.ProfilehookError]]:
    return [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, errors.ProfilehookError)
    ]


def test_every_error_is_in_one_group_and_client_errors_carry_a_4xx_status():
    for cls in _error_classes():
        if cls in (errors.ProfilehookError, *GROUPS, errors.OutputUnwritable):
            continue
        assert sum(issubclass(cls, group) for group in GROUPS) == 1, cls
        if issubclass(cls, errors.ClientError):
            assert 400 <= cls.status_code < 500, cls


def test_every_error_class_is_used_somewhere_in_the_package():
    sources = {path: path.read_text() for path in PACKAGE.rglob("*.py") if path.name != "errors.py"}
    unused = [
        cls.__name__
        for cls in _error_classes()
        if cls not in (errors.ProfilehookError, *GROUPS)
        and not any(cls.__name__ in text for text in sources.values())
    ]
    assert unused == []


def test_no_error_is_defined_outside_errors_py_but_the_internal_signal():
    defined = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                }
                if bases & {"ProfilehookError", *(c.__name__ for c in _error_classes())}:
                    defined.add((path.relative_to(PACKAGE).as_posix(), node.name))
    assert defined == INTERNAL


def _copernica_source(settings: Settings) -> str:
    async def make() -> str:
        async with running(settings) as services:
            config = {"account": "1", "contact_field": None, "public_keys": {}}
            source, _ = await registry.create_source(
                services.store, "copernica", "acme", config, with_secret=False
            )
            return source.source_id

    return asyncio.run(make())


def test_given_the_copernica_extra_is_missing_then_start_up_says_so_and_its_calls_get_a_501(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    source_id = _copernica_source(settings)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # as if not installed

    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as client:
        started = caplog.text
        answer = client.post(
            f"/v1/webhooks/{source_id}",
            content=b"type=update",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        amplitude_kind_still_works = client.post("/v1/webhooks/src_none", json={})

    assert "pip install 'profilehook[copernica]'" in started
    assert answer.status_code == 501
    assert answer.json() == {
        "detail": "copernica webhooks need: pip install 'profilehook[copernica]'"
    }
    assert "retry-after" not in answer.headers  # not a storage outage
    assert amplitude_kind_still_works.status_code == 404


def test_given_the_copernica_extra_is_missing_then_creating_such_a_source_says_what_to_install(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "cryptography", None)
    command = cli._create_command(KINDS["copernica"])
    result = CliRunner().invoke(command, ["--workspace", "acme", "--account", "1"], obj=settings)
    assert result.exit_code == 0, result.output
    assert "pip install 'profilehook[copernica]'" in result.output
