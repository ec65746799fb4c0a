"""The console's rules, in process (the browser tests are tests/test_console_browser.py): the
session cookie's flags and lifetime, revocation on the next request, CSRF and same-origin on
every form, read-only keys, security headers, escaping, and the live bus's cost and scoping."""

from __future__ import annotations

import re
import shlex
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from profilehook import keys
from profilehook.api.app import create_app
from profilehook.console.live_events import as_curl
from profilehook.console.session import COOKIE, Sessions
from profilehook.console.web import CSP
from profilehook.constants import CONSOLE_SESSION_S
from profilehook.live import Call, LiveCalls, first_ids
from profilehook.settings import Settings
from profilehook.sources import management
from tests.support import ServerProcess, create_key, store_url_for

HOSTILE = '<script>alert("x")</script>\'"'


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app on each store (sessions look the key up in it on every request)."""
    if request.param == "memory":
        settings = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client
        return
    with (
        store_url_for(request.param) as url,
        TestClient(
            create_app(Settings(data_dir=tmp_path, store_url=url)), raise_server_exceptions=False
        ) as client,
    ):
        yield client


def make_key(client: TestClient, scopes: tuple[str, ...], workspace: str = "acme") -> str:
    store = client.app.services.store  # type: ignore[attr-defined]
    key, _ = client.portal.call(keys.create_key, store, workspace, scopes)  # type: ignore[union-attr]
    return key


def login_token(client: TestClient) -> str:
    page = client.get("/console/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


def sign_in(client: TestClient, key: str) -> Any:
    return client.post(
        "/console/login",
        data={"key": key, "csrf_token": login_token(client), "next": "/console/keys"},
        follow_redirects=False,
    )


def csrf_of(client: TestClient, path: str = "/console/keys") -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert found, path
    return found.group(1)


def key_count(client: TestClient) -> int:
    store = client.app.services.store  # type: ignore[attr-defined]
    return len(client.portal.call(store.list_keys, "acme"))  # type: ignore[union-attr]


# -- sign-in and the session -----------------------------------------------------------------


def test_given_an_admin_key_when_signing_in_then_the_session_cookie_is_httponly_strict_and_12_h(
    app_client: TestClient,
) -> None:
    answer = sign_in(app_client, make_key(app_client, ("admin",)))

    assert answer.status_code == 303 and answer.headers["location"] == "/console/keys"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert f"Max-Age={CONSOLE_SESSION_S}" in cookie and "Secure" not in cookie
    # The key itself is nowhere in the cookie.
    assert app_client.get("/console/keys").status_code == 200


def test_over_https_the_session_cookie_is_secure(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
    with TestClient(create_app(settings), base_url="https://console.test") as client:
        answer = sign_in(client, make_key(client, ("read",)))
        assert "Secure" in answer.headers["set-cookie"]


def test_a_session_expires_after_12_hours_and_a_forged_cookie_is_no_session() -> None:
    sessions = Sessions(b"k" * 32)
    cookie = sessions.issue("hash", 1_000)

    assert sessions.read(cookie, 1_000 + CONSOLE_SESSION_S - 1) is not None
    assert sessions.read(cookie, 1_000 + CONSOLE_SESSION_S) is None
    assert Sessions(b"other" * 8).read(cookie, 1_001) is None
    payload, mac = cookie.split(".")
    assert sessions.read(payload[:-2] + "AA." + mac, 1_001) is None


@pytest.mark.parametrize(
    "key, detail, status",
    [("phk_nope_nope", "Invalid API Key", 401), (None, "lacks the &#39;read&#39; scope", 403)],
)
def test_a_key_that_is_unknown_or_cannot_read_cannot_sign_in(
    app_client: TestClient, key: str | None, detail: str, status: int
) -> None:
    answer = sign_in(app_client, key or make_key(app_client, ("ingest",)))
    assert answer.status_code == status and detail in answer.text
    assert COOKIE not in answer.headers.get("set-cookie", "")


def test_given_a_signed_in_key_when_it_is_revoked_then_the_next_request_is_signed_out(
    each_store: TestClient,
) -> None:
    app_client = each_store
    key = make_key(app_client, ("admin",))
    sign_in(app_client, key)
    assert app_client.get("/console/contacts").status_code == 200
    store = app_client.app.services.store  # type: ignore[attr-defined]
    key_id = key.split("_")[1]
    app_client.portal.call(keys.revoke_key, store, key_id)  # type: ignore[union-attr]

    answer = app_client.get("/console/contacts", follow_redirects=False)

    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/console/login")


def test_sign_out_ends_the_session(app_client: TestClient) -> None:
    sign_in(app_client, make_key(app_client, ("read",)))
    token = csrf_of(app_client, "/console/contacts")

    answer = app_client.post("/console/logout", data={"csrf_token": token}, follow_redirects=False)

    assert answer.status_code == 303 and "Max-Age=0" in answer.headers["set-cookie"]
    assert app_client.get("/", follow_redirects=False).status_code == 303


def test_after_sign_in_only_a_path_of_this_site_is_followed(app_client: TestClient) -> None:
    answer = app_client.post(
        "/console/login",
        data={
            "key": make_key(app_client, ("read",)),
            "csrf_token": login_token(app_client),
            "next": "//evil.example/",
        },
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"


# -- CSRF, same origin, read-only ------------------------------------------------------------


@pytest.mark.parametrize(
    "token, headers",
    [
        (None, {}),  # missing
        ("forged", {}),
        ("other-session", {}),
        ("valid", {"Origin": "https://evil.example"}),
        ("valid", {"Sec-Fetch-Site": "cross-site"}),
    ],
    ids=["missing", "forged", "another-sessions", "cross-site-origin", "cross-site-fetch"],
)
def test_a_state_changing_post_without_this_sessions_token_or_from_another_site_is_refused(
    app_client: TestClient, token: str | None, headers: dict[str, str]
) -> None:
    sign_in(app_client, make_key(app_client, ("admin",)))
    tokens = {"valid": csrf_of(app_client), "forged": "x" * 43}
    if token == "other-session":  # a valid token, of another sign-in of another key
        sessions = app_client.app.console.sessions  # type: ignore[attr-defined]
        other = keys.hash_key(make_key(app_client, ("admin",)))
        session = sessions.read(sessions.issue(other, int(time.time())), int(time.time()))
        tokens["other-session"] = sessions.csrf_token(session)
    before = key_count(app_client)
    form = {"scope": "read"} | ({"csrf_token": tokens[token]} if token else {})

    answer = app_client.post("/console/keys", data=form, headers=headers)

    assert answer.status_code == 403
    assert key_count(app_client) == before
    assert "another site" in answer.text or "not sent by this console" in answer.text


def test_the_same_post_with_its_token_from_this_site_works(app_client: TestClient) -> None:
    sign_in(app_client, make_key(app_client, ("admin",)))
    before = key_count(app_client)
    answer = app_client.post(
        "/console/keys",
        data={"scope": "read", "csrf_token": csrf_of(app_client)},
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status_code == 200 and "shown only this once" in answer.text
    assert key_count(app_client) == before + 1


def test_the_login_form_needs_its_token_and_this_site_too(app_client: TestClient) -> None:
    key = make_key(app_client, ("admin",))
    bare = app_client.post("/console/login", data={"key": key}, follow_redirects=False)
    cross = app_client.post(
        "/console/login",
        data={"key": key, "csrf_token": login_token(app_client)},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert bare.status_code == cross.status_code == 403
    assert COOKIE not in bare.headers.get("set-cookie", "") + cross.headers.get("set-cookie", "")


def test_a_read_key_gets_a_read_only_console(each_store: TestClient) -> None:
    app_client = each_store
    sign_in(app_client, make_key(app_client, ("read",)))
    token = csrf_of(app_client, "/console/contacts")
    before = key_count(app_client)

    assert app_client.get("/console/contacts").status_code == 200
    assert app_client.get("/console/keys").status_code == 403
    assert app_client.get("/console/sources").status_code == 403
    assert app_client.post("/console/keys", data={"csrf_token": token}).status_code == 403
    erase = app_client.post(
        "/console/erase", data={"csrf_token": token, "contact_id": "c", "confirm": "c"}
    )
    assert erase.status_code == 403
    assert key_count(app_client) == before
    nav = app_client.get("/").text
    assert "read-only" in nav and 'href="/console/keys"' not in nav


# -- what every page sends ---------------------------------------------------------------------


def test_every_page_carries_the_security_headers_and_loads_nothing_from_elsewhere(
    app_client: TestClient,
) -> None:
    sign_in(app_client, make_key(app_client, ("admin",)))
    script_src = re.search(r"script-src ([^;]*)", CSP)
    assert script_src and script_src.group(1) == "'self'"
    assert "frame-ancestors 'none'" in CSP
    for path in [
        "/",
        "/console/login",
        "/console/live",
        "/console/contacts",
        "/console/keys",
        "/console/sources",
        "/console/reference",
        "/console/static/console.js",
    ]:
        answer = app_client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "same-origin"
        if answer.headers["content-type"].startswith("text/html"):
            # No inline script: every <script> has a src, no element an on* handler.
            assert not re.search(r"<script(?![^>]*\bsrc=)", answer.text), path
            assert not re.search(r"<[^>]+\son[a-z]+=", answer.text), path
            assert not re.search(r'(src|href)="(https?:)?//', answer.text), path


def test_the_console_files_are_served_from_the_package_and_nothing_else(
    app_client: TestClient,
) -> None:
    for name in ["vendor/uplot/uPlot.iife.min.js", "vendor/swagger-ui/swagger-ui-bundle.js"]:
        assert app_client.get(f"/console/static/{name}").status_code == 200
    for name in ["../session.py", "..%2Fsession.py", "vendor/VENDORED.md", "nope.js"]:
        assert app_client.get(f"/console/static/{name}").status_code == 404


# -- escaping ------------------------------------------------------------------------------------


def test_hostile_property_names_and_values_are_escaped_on_the_contact_and_event_pages(
    app_client: TestClient,
) -> None:
    key = make_key(app_client, ("admin",))
    event = {
        "contact_id": HOSTILE,
        "event_id": f"id-{HOSTILE}",
        "event_name": "e",
        "timestamp": 1,
        "user_properties": {HOSTILE: HOSTILE},
    }
    sent = app_client.post("/v1/properties", json=event, headers={"Authorization": f"Bearer {key}"})
    assert sent.status_code == 202
    sign_in(app_client, key)
    from urllib.parse import quote

    contact = app_client.get(f"/console/contact?id={quote(HOSTILE, safe='')}")
    shown = app_client.get(f"/console/event?id={quote(f'id-{HOSTILE}', safe='')}")

    for page in (contact, shown):
        assert page.status_code == 200
        assert "<script>" not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;&#34;" in page.text
    # The link to the event that set it carries the id percent-encoded.
    assert f"/console/event?id={quote(f'id-{HOSTILE}', safe='')}" in contact.text.replace(
        "&amp;", "&"
    )


# -- the live bus ------------------------------------------------------------------------------


def _call(workspace: str, n: int = 0) -> Call:
    return Call(workspace, n, "api", None, "POST", "/v1/properties", (), b"{}", False, 202, None)


def test_while_nobody_watches_the_ingest_path_builds_no_call(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = app_client.app.services.live  # type: ignore[attr-defined]

    def fail(call: Call) -> Call:
        raise AssertionError("published while nobody watches")

    monkeypatch.setattr(live, "publish", fail)
    key = make_key(app_client, ("ingest",))
    body = {"contact_id": "c", "event_name": "e", "timestamp": 1, "user_properties": {}}

    answer = app_client.post(
        "/v1/properties", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    refused = app_client.post("/v1/properties", json={}, headers={"Authorization": f"Bearer {key}"})

    assert (answer.status_code, refused.status_code) == (202, 422)


def test_a_watcher_gets_its_own_workspaces_calls_and_a_slow_one_loses_only_the_oldest() -> None:
    live = LiveCalls()
    mine, other = live.watch("acme"), live.watch("globex")
    assert live.watched
    for n in range(1_005):
        live.publish(_call("acme", n))

    assert other.queue.empty()
    assert mine.queue.qsize() == 1_000 and mine.dropped == 5
    assert mine.queue.get_nowait().at_us == 5
    live.unwatch(mine)
    live.unwatch(other)
    assert not live.watched


def test_the_tail_shows_a_refused_call_of_a_known_key_and_not_one_without_a_valid_key(
    app_client: TestClient,
) -> None:
    services = app_client.app.services  # type: ignore[attr-defined]
    watcher = services.live.watch("acme")
    key = make_key(app_client, ("ingest",))
    app_client.post(
        "/v1/properties", json={"contact_id": 1}, headers={"Authorization": f"Bearer {key}"}
    )
    app_client.post("/v1/properties", json={}, headers={"Authorization": "Bearer phk_bad_bad"})

    calls = []
    while not watcher.queue.empty():
        calls.append(watcher.queue.get_nowait())
    assert [c.status for c in calls] == [422]
    assert {p["loc"][-1] for p in calls[0].detail} >= {"contact_id", "event_name"}
    assert ("authorization", "Bearer $KEY") in calls[0].headers
    assert key.encode() not in repr(calls[0]).encode()


@pytest.mark.slow
def test_given_an_open_live_tail_when_the_server_is_stopped_then_it_exits_at_once(
    tmp_path: Path,
) -> None:
    """uvicorn waits for open responses before it stops: an open tail must end with it."""
    server = ServerProcess(tmp_path / "data").start()
    try:
        key = create_key(server.data_dir, "acme", ("read",))["key"]
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            form = client.get("/console/login").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form)
            assert token
            signed_in = client.post(
                "/console/login", data={"key": key, "csrf_token": token.group(1), "next": "/"}
            )
            assert signed_in.status_code == 303  # to the overview
            with client.stream("GET", "/console/live/stream") as stream:
                assert stream.status_code == 200
                chunks = stream.iter_bytes()  # held: a dropped iterator closes the stream
                assert next(chunks).startswith(b"retry:")
                stopped = time.monotonic()
                assert server.proc is not None
                server.proc.send_signal(signal.SIGTERM)
                server.proc.wait(timeout=10)
        assert time.monotonic() - stopped < 5
    finally:
        server.kill()


def test_a_call_keeps_the_first_100_distinct_ids_and_the_whole_count() -> None:
    ids = [f"u{i % 150}" for i in range(10_000)]
    assert first_ids(ids) == tuple(f"u{i}" for i in range(100))


def test_a_webhook_call_that_fails_its_check_is_in_the_tail_and_the_sources_recent_calls(
    app_client: TestClient,
) -> None:
    services = app_client.app.services  # type: ignore[attr-defined]
    kind, values = management.values_from_json({"kind": "amplitude"}, "acme")
    created = app_client.portal.call(  # type: ignore[union-attr]
        management.create, services.store, "http://testserver", kind, "acme", values
    )
    watcher = services.live.watch("acme")
    cohort = {
        "cohort_id": "c",
        "in_cohort": True,
        "computed_time": "1",
        "message_id": "m",
        "users": [{"user_id": "u1"}, {"user_id": "u2"}],
    }
    path = f"/v1/webhooks/{created['source_id']}"

    wrong = app_client.post(path, json=cohort, headers={"Authorization": "Bearer nope"})
    right = app_client.post(
        path, json=cohort, headers={"Authorization": f"Bearer {created['secret']}"}
    )

    assert (wrong.status_code, right.status_code) == (401, 200)
    tail = [watcher.queue.get_nowait() for _ in range(watcher.queue.qsize())]
    assert [(c.status, c.source, c.source_id) for c in tail] == [
        (401, "amplitude", created["source_id"]),
        (200, "amplitude", created["source_id"]),
    ]
    assert tail[0].detail == wrong.json()["detail"]
    assert tail[1].contact_ids == ("u1", "u2") and tail[1].event_count == 2
    assert ("authorization", "Bearer $SECRET") in tail[0].headers
    assert [c.status for c in services.live.recent(created["source_id"])] == [200, 401]
    sign_in(app_client, make_key(app_client, ("admin",)))
    page = app_client.get(f"/console/source?id={created['source_id']}")
    assert wrong.json()["detail"] in page.text and "2 event(s)" in page.text


def test_a_contacts_history_is_paged_newest_first(app_client: TestClient) -> None:
    key = make_key(app_client, ("admin",))
    events = [
        {
            "contact_id": "many",
            "event_id": f"e{t:03}",
            "event_name": "e",
            "timestamp": t,
            "user_properties": {"n": t},
        }
        for t in range(1, 56)
    ]
    sent = app_client.post(
        "/v1/properties/batch", json={"events": events}, headers={"Authorization": f"Bearer {key}"}
    )
    assert sent.json()["accepted"] == 55
    sign_in(app_client, key)

    def page(url: str) -> str:
        for _ in range(100):  # the applier runs beside: wait until every event is applied
            text = app_client.get(url).text
            if "e055" in text or "before=" in url:
                return text
            time.sleep(0.05)
        raise AssertionError("never applied")

    first = page("/console/contact?id=many")
    listed = re.findall(r"<li><div><a href=\"/console/event\?id=(e\d+)\"", first)
    assert listed == [f"e{t:03}" for t in range(55, 5, -1)]
    older = re.search(r'href="(/console/contact\?id=many&amp;before=[^"]+)">Older events', first)
    assert older
    second = app_client.get(older.group(1).replace("&amp;", "&")).text
    assert re.findall(r"<li><div><a href=\"/console/event\?id=(e\d+)\"", second) == [
        "e005",
        "e004",
        "e003",
        "e002",
        "e001",
    ]
    assert "Older events" not in second and "Newest events" in second


def test_copy_as_curl_sends_the_same_body_and_leaves_the_credential_to_the_shell() -> None:
    body = b'{"contact_id": "it\'s", "user_properties": {"a": "$HOME `x`"}}'
    call = Call(
        "acme", 0, "api", None, "POST", "/v1/properties?x=1",
        (("authorization", "Bearer $KEY"), ("content-type", "application/json")),
        body, False, 202, None,
    )  # fmt: skip

    command = as_curl(call, "http://127.0.0.1:8000/")

    words = shlex.split(command.replace('"authorization: Bearer $KEY"', "AUTH"))
    assert words[:4] == ["curl", "-X", "POST", "http://127.0.0.1:8000/v1/properties?x=1"]
    assert words[words.index("--data-binary") + 1].encode() == body
    assert '-H "authorization: Bearer $KEY"' in command
