"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.keys import create_key
from profilehook.service import running
from profilehook.settings import Settings
from tests.nats_cluster import NatsCluster
from tests.support import (
    LOCAL_EXAMPLES_MIN,
    ServerProcess,
    hypothesis_profile,
    nats_cluster,
    stop_nats_cluster,
)

# The store backends of the contract suites (tests/store_backends.py), as fixtures for all.
pytest_plugins = ["tests.store_backends"]

# Properties without their own max_examples: hypothesis's default count in CI, fewer locally.
# Those that set one take it from tests.support.examples, which follows the same rule.
hypothesis_settings.register_profile("ci", max_examples=100)
hypothesis_settings.register_profile("dev", max_examples=LOCAL_EXAMPLES_MIN)
hypothesis_settings.load_profile(hypothesis_profile())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The whole app in-process on the embedded SQLite default, lifespan and applier running."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def key(client: TestClient, settings: Settings) -> str:
    """A key of workspace ``acme``, made by a second store on the same file (as the CLI does)."""
    return new_key(settings, "acme")


def new_key(settings: Settings, workspace: str) -> str:
    async def make() -> str:
        async with running(settings) as services:
            key, _ = await create_key(services.store, workspace)
            return key

    return asyncio.run(make())


@pytest.fixture
def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``profilehook serve`` subprocess on the embedded default."""
    proc = ServerProcess(tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session", autouse=True)
def _stop_nats_cluster_at_the_end() -> Iterator[None]:
    """The NATS test cluster starts lazily (on the first NATS test) and stops here."""
    yield
    stop_nats_cluster()


@pytest.fixture(scope="session")
def jetstream_cluster() -> NatsCluster:
    """The suite's own 3-node JetStream cluster, started on first use (see tests/support.py)."""
    return nats_cluster()
