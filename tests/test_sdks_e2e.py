"""The real SDKs against a real ``profilehook serve`` (SPEC 2.8): segment-analytics-python,
rudder-sdk-python, posthog and amplitude-analytics, as pinned in the dev extra, pointed at the
server by their host setting and nothing else.

Each sends identifies for 1,000 users, its operations, and an older update after a newer one;
the profiles are checked through the read API (on the embedded default and on NATS JetStream +
PostgreSQL), and the SDK must have seen success: no error
callback, no error logged, and the server counted each event once (a retried request would
count its events again). With a wrong key, each SDK must see the failure it would see from its
real service: Segment's and RudderStack's 401 (not retried), PostHog's 401 with its detail,
Amplitude's ``Invalid API key:`` (which stops its client).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import pytest

from tests.support import ServerProcess, create_key, nats_postgres_env, wait_until

pytestmark = pytest.mark.slow

USERS = 1_000
NEW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OLD = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
APPLY_TIMEOUT_S = 60.0


@dataclass
class Live:
    server: ServerProcess
    key: str
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.server.base_url

    def profile(self, contact: str) -> dict[str, Any] | None:
        r = self.http.get(
            f"/v1/contacts/{contact}", headers={"Authorization": f"Bearer {self.key}"}
        )
        return r.json()["properties"] if r.status_code == 200 else None

    def settled(self, expected: dict[str, dict[str, Any]]) -> None:
        """Wait until each contact's profile is as expected (the last one first: the applier
        goes in order, so it is the one to wait for)."""
        last = list(expected)[-1]
        wait_until(lambda: self.profile(last) == expected[last], APPLY_TIMEOUT_S)
        for contact, properties in expected.items():
            assert self.profile(contact) == properties, contact

    def counted(self, source: str, outcome: str) -> float:
        line = f'profilehook_events_total{{outcome="{outcome}",source="{source}"}} '
        for text in self.http.get("/metrics").text.splitlines():
            if text.startswith(line):
                return float(text[len(line) :])
        return 0.0

    def refused(self) -> float:
        text = self.http.get("/metrics").text
        return sum(
            float(v)
            for v in re.findall(r"^profilehook_requests_rejected_total\{.*\} (\S+)$", text, re.M)
        )


@pytest.fixture(scope="module", params=["embedded", "nats-postgres"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """A real server: ``embedded`` (SQLite), or ``nats-postgres`` (the scale-out backends)."""
    with ExitStack() as cleanup:
        env = cleanup.enter_context(nats_postgres_env()) if request.param != "embedded" else {}
        data_dir = tmp_path_factory.mktemp("sdks") / "data"
        server = ServerProcess(data_dir, extra_env=env).start()
        cleanup.callback(server.stop)
        key = create_key(data_dir, "acme", ("ingest", "read"), **env)["key"]
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            yield Live(server, key, http)


@dataclass
class SdkLog(logging.Handler):
    """Every record an SDK logs at ``level`` or above."""

    records: list[logging.LogRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        logging.Handler.__init__(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __hash__(self) -> int:
        return id(self)


@pytest.fixture
def sdk_log() -> Iterator[SdkLog]:
    handler = SdkLog()
    handler.setLevel(logging.WARNING)
    names = ("segment", "rudderstack", "posthog", "amplitude")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)


def errors_of(handler: SdkLog) -> list[str]:
    return [r.getMessage() for r in handler.records]


# -- Segment ------------------------------------------------------------------------------------


def test_segment_sdk_identifies_a_thousand_users_and_an_old_update_loses(
    live: Live, sdk_log: SdkLog
) -> None:
    from segment.analytics import Client

    failures: list[Any] = []
    before = live.counted("segment", "accepted")
    refused = live.refused()
    client = Client(live.key, host=live.url, on_error=lambda e, batch: failures.append(e))
    for i in range(USERS):
        client.identify(f"seg-{i}", {"plan": "pro", "n": i, "gone": None}, timestamp=NEW)
    client.track("seg-0", "Signed Up", {"ignored": True})
    client.flush()
    client.identify("seg-0", {"plan": "OLD"}, timestamp=OLD)  # older, after the newer
    client.flush()
    client.shutdown()
    assert failures == [] and errors_of(sdk_log) == []
    live.settled({f"seg-{i}": {"plan": "pro", "n": i} for i in (1, 500, 0, USERS - 1)})
    assert live.counted("segment", "accepted") - before == USERS + 1  # each sent once
    assert live.refused() == refused  # no request of this SDK was refused


def test_segment_sdk_sees_a_wrong_key_as_segment_refuses_it_and_does_not_retry(
    live: Live, sdk_log: SdkLog
) -> None:
    from segment.analytics import Client
    from segment.analytics.request import APIError

    failures: list[Any] = []
    client = Client("phk_wrong", host=live.url, on_error=lambda e, batch: failures.append(e))
    client.identify("seg-wrong", {"a": 1}, timestamp=NEW)
    client.flush()
    client.shutdown()
    assert len(failures) == 1 and isinstance(failures[0], APIError)
    assert (failures[0].status, failures[0].code) == (401, "unauthorized")
    assert any("Non-retryable error 401 after 1 attempts" in m for m in errors_of(sdk_log))
    assert live.profile("seg-wrong") is None


# -- RudderStack --------------------------------------------------------------------------------


def test_rudder_sdk_identifies_gzipped_with_traits_in_context(live: Live, sdk_log: SdkLog) -> None:
    from rudderstack.analytics import Client

    failures: list[Any] = []
    before = live.counted("segment", "accepted")
    refused = live.refused()
    client = Client(live.key, host=live.url, on_error=lambda e, batch: failures.append(e))
    assert client.gzip  # the default: every batch below arrives gzipped
    for i in range(USERS):
        client.identify(f"rud-{i}", {"tier": "gold", "n": i}, timestamp=NEW)
    client.page("rud-0", "Docs", "Home")
    client.flush()
    client.identify("rud-0", {"tier": "OLD"}, timestamp=OLD)
    client.identify(anonymous_id="rud-anon", traits={"seen": True}, timestamp=NEW)
    client.flush()
    client.shutdown()
    assert failures == [] and errors_of(sdk_log) == []
    expected = {f"rud-{i}": {"tier": "gold", "n": i} for i in (0, 1, 500, USERS - 1)}
    live.settled({**expected, "rud-anon": {"seen": True}})
    assert live.counted("segment", "accepted") - before == USERS + 2
    assert live.refused() == refused  # no request of this SDK was refused


def test_rudder_sdk_sees_a_wrong_key_as_a_401_and_gives_up(live: Live, sdk_log: SdkLog) -> None:
    from rudderstack.analytics import Client
    from rudderstack.analytics.request import APIError

    failures: list[Any] = []
    client = Client("phk_wrong", host=live.url, on_error=lambda e, batch: failures.append(e))
    client.identify("rud-wrong", {"a": 1}, timestamp=NEW)
    client.flush()
    client.shutdown()
    assert len(failures) == 1 and isinstance(failures[0], APIError)
    assert (failures[0].status, failures[0].code) == (401, "unauthorized")
    assert live.profile("rud-wrong") is None


# -- PostHog ------------------------------------------------------------------------------------


def test_posthog_sdk_sets_sets_once_and_unsets_a_thousand_people(
    live: Live, sdk_log: SdkLog
) -> None:
    from posthog import Posthog

    failures: list[Any] = []
    before = live.counted("posthog", "accepted")
    refused = live.refused()
    client = Posthog(live.key, host=live.url, on_error=lambda e, batch: failures.append(e))
    for i in range(USERS):
        person = f"ph-{i}"
        client.set(
            distinct_id=person,
            properties={"plan": "pro", "legacy": 1},
            timestamp=OLD.replace(day=2),
        )
        client.set_once(distinct_id=person, properties={"first": "a"}, timestamp=OLD)
        client.capture(
            "upgraded",
            distinct_id=person,
            properties={"$set": {"n": i}, "$set_once": {"first": "b"}, "$unset": ["legacy"]},
            timestamp=NEW,
        )
    client.capture("pageview", distinct_id="ph-0", properties={"path": "/"})
    client.flush()
    client.set(distinct_id="ph-0", properties={"plan": "OLD"}, timestamp=OLD)  # older, after
    client.flush()
    client.shutdown()
    assert failures == [] and errors_of(sdk_log) == []
    expected = {"plan": "pro", "first": "a"}
    live.settled({f"ph-{i}": {**expected, "n": i} for i in (0, 1, 500, USERS - 1)})
    assert live.counted("posthog", "accepted") - before == 3 * USERS + 1
    assert live.refused() == refused  # no request of this SDK was refused


def test_posthog_sdk_sees_a_wrong_key_as_posthogs_401(live: Live, sdk_log: SdkLog) -> None:
    from posthog import Posthog
    from posthog.request import APIError

    failures: list[Any] = []
    client = Posthog("phc_wrong", host=live.url, on_error=lambda e, batch: failures.append(e))
    client.set(distinct_id="ph-wrong", properties={"a": 1})
    client.flush()
    client.shutdown()
    assert len(failures) == 1 and isinstance(failures[0], APIError)
    assert failures[0].status == 401 and "API key invalid" in failures[0].message
    assert live.profile("ph-wrong") is None


def test_posthog_sdk_in_capture_v1_mode_gets_a_result_per_event(
    live: Live, sdk_log: SdkLog
) -> None:
    """posthog 7.91.1 sends the newer protocol when asked (``capture_mode="v1"``): Bearer
    key, gzip, a result per event uuid."""
    from posthog import Posthog

    failures: list[Any] = []
    before = live.counted("posthog", "accepted")
    refused = live.refused()
    client = Posthog(
        live.key, host=live.url, on_error=lambda e, batch: failures.append(e),
        capture_mode="v1", capture_compression="gzip",
    )  # fmt: skip
    for i in range(USERS):
        client.set(distinct_id=f"v1-{i}", properties={"plan": "pro", "n": i}, timestamp=NEW)
        client.capture("seen", distinct_id=f"v1-{i}", properties={"$set_once": {"first": "a"}})
    client.set(distinct_id="v1-0", properties={"plan": "OLD"}, timestamp=OLD)  # older, after
    client.flush()
    client.shutdown()
    assert failures == [] and errors_of(sdk_log) == []
    live.settled({f"v1-{i}": {"plan": "pro", "n": i, "first": "a"} for i in (0, 1, USERS - 1)})
    assert live.counted("posthog", "accepted") - before == 2 * USERS + 1
    assert live.refused() == refused


def test_posthog_sdk_in_capture_v1_mode_sees_a_wrong_key_as_a_terminal_401(
    live: Live, sdk_log: SdkLog
) -> None:
    from posthog import Posthog
    from posthog.capture_v1 import CaptureV1Error

    failures: list[Any] = []
    client = Posthog(
        "phc_wrong", host=live.url, on_error=lambda e, batch: failures.append(e),
        capture_mode="v1",
    )  # fmt: skip
    client.set(distinct_id="v1-wrong", properties={"a": 1})
    client.flush()
    client.shutdown()
    assert len(failures) == 1 and isinstance(failures[0], CaptureV1Error)
    assert failures[0].status == 401 and failures[0].attempts == 1
    assert live.profile("v1-wrong") is None


# -- Amplitude ----------------------------------------------------------------------------------


class Outcomes:
    """Every callback of the Amplitude SDK: (code, message, retries of the event)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[int, str, int]] = []

    def __call__(self, event: Any, code: int, message: str | None = None) -> None:
        with self.lock:
            self.seen.append((code, message or "", event.retry))


def flushed(client: Any) -> None:
    """Send what the Amplitude client holds, and wait for the answers."""
    for future in client.flush():
        if future is not None:
            future.result()


def amplitude_client(live: Live, key: str, outcomes: Outcomes) -> Any:
    from amplitude import Amplitude, Config

    return Amplitude(key, Config(server_url=f"{live.url}/amplitude/2/httpapi", callback=outcomes))


def test_amplitude_sdk_applies_every_identify_operation_for_a_thousand_users(
    live: Live, sdk_log: SdkLog
) -> None:
    from amplitude import BaseEvent, EventOptions, Identify

    outcomes = Outcomes()
    before = live.counted("amplitude_http", "accepted")
    refused = live.refused()
    client = amplitude_client(live, live.key, outcomes)
    new_ms, old_ms = int(NEW.timestamp() * 1000), int(OLD.timestamp() * 1000)
    for i in range(USERS):
        first = Identify().set("plan", "pro").set_once("first", "a").add("logins", 2)
        first.append("tags", "x").unset("legacy")
        client.identify(first, EventOptions(user_id=f"amp-{i}", time=new_ms))
        later = Identify().add("logins", 3).append("tags", ["y", "z"]).set_once("first", "b")
        client.identify(later, EventOptions(user_id=f"amp-{i}", time=new_ms + 1))
        client.identify(
            Identify().remove("tags", "x"), EventOptions(user_id=f"amp-{i}", time=new_ms + 2)
        )
    client.track(BaseEvent("clicked", user_id="amp-0"))
    flushed(client)
    older = Identify().set("plan", "OLD").set("legacy", 1)
    client.identify(older, EventOptions(user_id="amp-0", time=old_ms))  # older, after
    cleared = Identify().clear_all()
    client.identify(cleared, EventOptions(user_id="amp-clear", time=old_ms))
    client.identify(Identify().set("kept", 1), EventOptions(user_id="amp-clear", time=new_ms))
    flushed(client)
    client.shutdown()
    assert errors_of(sdk_log) == []
    assert {code for code, _, _ in outcomes.seen} == {200}
    assert len(outcomes.seen) == 3 * USERS + 4 and {r for _, _, r in outcomes.seen} == {0}
    profile = {"plan": "pro", "first": "a", "logins": 5, "tags": ["y", "z"]}
    expected = {f"amp-{i}": profile for i in (0, 1, 500, USERS - 1)}
    live.settled({**expected, "amp-clear": {"kept": 1}})
    assert live.counted("amplitude_http", "accepted") - before == 3 * USERS + 3
    assert live.refused() == refused  # no request of this SDK was refused


def test_amplitude_sdk_sees_a_wrong_key_as_amplitudes_invalid_api_key(
    live: Live, sdk_log: SdkLog
) -> None:
    from amplitude import EventOptions, Identify

    outcomes = Outcomes()
    client = amplitude_client(live, "wrong-key", outcomes)
    client.identify(Identify().set("a", 1), EventOptions(user_id="amp-wrong"))
    flushed(client)
    client.shutdown()
    assert "Invalid API Key" in errors_of(sdk_log)  # the SDK's own line for Amplitude's answer
    assert outcomes.seen == []  # not retried, not reported as sent
    assert live.profile("amp-wrong") is None


# -- the README's two lines, as an app changes them ---------------------------------------------


def test_the_readmes_two_lines_point_each_sdk_at_profilehook(live: Live, sdk_log: SdkLog) -> None:
    import posthog
    import rudderstack.analytics as rudder_analytics
    import segment.analytics as analytics
    from amplitude import Amplitude, Config, EventOptions, Identify

    try:
        analytics.write_key = live.key
        analytics.host = live.url
        analytics.identify("readme-seg", {"via": "segment"}, timestamp=NEW)
        analytics.flush()
        rudder_analytics.write_key = live.key
        rudder_analytics.dataPlaneUrl = live.url
        rudder_analytics.identify("readme-rud", {"via": "rudder"}, timestamp=NEW)
        rudder_analytics.flush()
        posthog.api_key = live.key
        posthog.host = live.url
        posthog.set(distinct_id="readme-ph", properties={"via": "posthog"})
        posthog.flush()
        client = Amplitude(live.key, Config(server_url=f"{live.url}/amplitude/2/httpapi"))
        client.identify(Identify().set("via", "amplitude"), EventOptions(user_id="readme-amp"))
        flushed(client)
        client.shutdown()
    finally:
        for module in (analytics, rudder_analytics, posthog):
            module.shutdown()
            module.default_client = None
    assert errors_of(sdk_log) == []
    live.settled(
        {
            "readme-seg": {"via": "segment"},
            "readme-rud": {"via": "rudder"},
            "readme-ph": {"via": "posthog"},
            "readme-amp": {"via": "amplitude"},
        }
    )


# -- a large body beside other requests -----------------------------------------------------------


def test_an_8_mb_posthog_batch_does_not_hold_up_the_other_requests(server: ServerProcess) -> None:
    """A PostHog batch of 60,000 person updates (about 8 MB) is decoded, a piece at a time, and
    mapped in a thread: /healthz and single events sent beside it keep answering. (Embedded, as
    the Amplitude webhook's test: scaled out, a single event published behind 60,000 others in
    the JetStream pipeline may take past its deadline, a retryable 503, whatever sent them.)"""
    key = create_key(server.data_dir, "acme")["key"]
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        _send_8_mb_beside_probes(Live(server, key, http))


def _send_8_mb_beside_probes(live: Live) -> None:
    import statistics
    import time

    from tests.test_amplitude import _Probes

    batch = [
        {"event": "$set", "distinct_id": f"big-{i}", "$set": {"plan": "pro", "n": i},
         "properties": {"$lib": "posthog-python", "$lib_version": "7.91.1"},
         "timestamp": "2026-12-03T12:00:00+00:00", "uuid": f"0190b6a4-4e0c-7bd4-9d8a-{i:012d}"}
        for i in range(60_000)
    ]  # fmt: skip
    body = httpx.Request("POST", "/", json={"api_key": live.key, "batch": batch}).read()
    assert 7_000_000 < len(body) <= 20 * 2**20
    probes = _Probes(live.url, {"Authorization": f"Bearer {live.key}"})
    with probes.running():
        time.sleep(0.5)
        started = time.perf_counter()
        r = live.http.post("/batch/", content=body, timeout=60)
        took_s = time.perf_counter() - started
        time.sleep(0.2)
    assert (r.status_code, r.json()) == (200, {"status": 1})
    beside = probes.latencies_s(started, started + took_s)
    assert probes.statuses <= {200, 202} and len(beside) >= 5, (probes.statuses, beside)
    print(f"8 MB PostHog batch {took_s:.2f}s; beside it max {max(beside) * 1000:.0f} ms,"
          f" p50 {statistics.median(beside) * 1000:.0f} ms")  # fmt: skip
    assert max(beside) < min(1.0, took_s / 2)
    live.settled({"big-0": {"plan": "pro", "n": 0}, "big-59999": {"plan": "pro", "n": 59_999}})
