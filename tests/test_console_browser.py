"""The console in a real browser: Debian's headless Chromium, driven by Playwright, against a real
``profilehook serve`` process, at 1280 px and at 360 px wide. Every test fails on any error in the
browser's console, any uncaught script error and any failed request (tests/console_browser.py).

Screenshots of each page land in ``test-artifacts/console/`` (not committed)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.console_browser import (
    ARTIFACTS,
    Browser,
    Watched,
    browser_or_skip,
    no_horizontal_scroll,
    sign_in,
    unlabelled_fields,
)
from tests.support import ServerProcess, create_key, wait_until
from tests.test_destinations_api import receiver  # noqa: F401  (a fixture)
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

WIDTHS = {"wide": 1280, "narrow": 360}
HOSTILE_NAME = "<script>window.__pwned=1</script>\"quoted'"
HOSTILE_VALUE = '"><img src=/hostile-img onerror="window.__pwned=2">'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("console") / "data"
    # Destinations may call the tests' local receiver, and give up on a closed port in about
    # a second (then are disabled after about 4 s) instead of a day and a half.
    allowed = {
        "PROFILEHOOK_DESTINATIONS_ALLOW_PRIVATE": "true",
        "PROFILEHOOK_DESTINATIONS_RETRY_SCALE": "0.00001",
    }
    server = ServerProcess(data_dir, extra_env=allowed).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin_key(server: ServerProcess) -> str:
    key: str = create_key(server.data_dir, "acme", ("admin",))["key"]
    return key


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with browser_or_skip() as launched:
        yield launched


@pytest.fixture(params=list(WIDTHS), ids=list(WIDTHS))
def watched(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Watched]:
    with Watched.open(browser, WIDTHS[request.param], request.param) as page:
        yield page
    page.assert_clean()


def send(server: ServerProcess, key: str, body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/properties",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=5,
    )


def test_sign_in_by_keyboard_then_an_event_sent_with_curl_appears_in_the_live_tail_within_1_s(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    page.goto(f"{server.base_url}/")
    assert "/console/login" in page.url
    # Keyboard only: the key field has focus and a label; Enter submits.
    assert page.get_by_label("API key").evaluate("el => el === document.activeElement")
    page.keyboard.type(admin_key)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.base_url}/")
    page.get_by_role("heading", name="Overview").wait_for()
    watched.shot("overview")

    page.get_by_role("link", name="Live events").click()
    page.get_by_text("Watching").wait_for()
    contact = f"tail-{watched.name}"
    body = {
        "contact_id": contact,
        "event_name": "signup",
        "timestamp": 1_700_000_000,
        "user_properties": {HOSTILE_NAME: HOSTILE_VALUE, "plan": "pro"},
    }
    sent = time.monotonic()
    answer = send(server, admin_key, body)
    assert answer.status_code == 202
    event_id = answer.json()["event_id"]
    row = page.locator("li.call", has_text=event_id)
    row.wait_for(timeout=1000)
    print(f"{watched.name}: in the tail {time.monotonic() - sent:.3f} s after the 202")
    assert "202 accepted" in row.locator(".status").inner_text()
    row.locator(".event-status").filter(has_text="applied").wait_for(timeout=5000)
    # The hostile name and value are text in the page, never markup.
    row.get_by_text("Body and curl").click()
    assert HOSTILE_NAME.replace('"', '\\"') in row.locator(".body").inner_text()
    assert "$KEY" in row.locator(".curl").inner_text() and admin_key not in page.content()

    # A refused call shows its reason: the 422's problems.
    refused = send(server, admin_key, {"contact_id": contact, "timestamp": "soon"})
    assert refused.status_code == 422
    problem = page.locator("li.call.refused").first
    problem.wait_for(timeout=1000)
    assert "422 refused" in problem.inner_text()
    assert "body.event_name: Field required" in problem.locator(".detail").inner_text()
    watched.shot("live")
    assert page.evaluate("window.__pwned") is None

    # Filter by contact: another contact's call does not show.
    page.get_by_label("Contact id").fill("someone-else")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("button", name="Clear").click()
    page.get_by_text("Watching").wait_for()
    other = send(server, admin_key, {**body, "contact_id": contact, "event_id": f"x-{contact}"})
    mine = send(server, admin_key, {**body, "contact_id": "someone-else"})
    assert other.status_code == mine.status_code == 202
    page.locator("li.call", has_text=mine.json()["event_id"]).wait_for(timeout=1000)
    assert page.locator("li.call", has_text=f"x-{contact}").count() == 0


def test_the_live_tail_pauses_and_resumes_filters_by_source_and_copies_a_call_as_curl(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, server.base_url, admin_key)
    page.goto(f"{server.base_url}/console/live")
    page.get_by_text("Watching").wait_for()
    contact = f"pause-{watched.name}"

    page.get_by_role("button", name="Pause").click()
    held = send(server, admin_key, _event(contact, 1, {"plan": "pro"}))
    assert held.status_code == 202
    page.get_by_text("Paused: 1 new call(s) held.").wait_for(timeout=2000)
    assert page.locator("li.call", has_text=held.json()["event_id"]).count() == 0
    page.get_by_role("button", name="Resume").press("Enter")
    row = page.locator("li.call", has_text=held.json()["event_id"])
    row.wait_for(timeout=1000)

    # Copy as curl: what lands in the clipboard sends the same body, the key left as $KEY.
    row.get_by_text("Body and curl").click()
    row.get_by_role("button", name="Copy as curl").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("curl ") and "$KEY" in copied and admin_key not in copied
    assert "/v1/properties" in copied and contact in copied

    # Only the amplitude sources' calls: an API call does not show, a webhook call after it does
    # (the tail keeps the order calls arrive in).
    source = httpx.post(
        f"{server.base_url}/v1/sources",
        json={"kind": "amplitude"},
        headers={"Authorization": f"Bearer {admin_key}"},
    ).json()
    page.get_by_label("Source").fill("amplitude")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("button", name="Clear").click()
    page.get_by_text("Watching").wait_for()
    hidden = send(server, admin_key, _event(contact, 2, {"plan": "team"}))
    assert hidden.status_code == 202
    webhook = httpx.post(
        f"{server.base_url}/v1/webhooks/{source['source_id']}",
        json={"users": []},
        headers={"Authorization": "Bearer wrong"},
    )
    assert webhook.status_code == 401
    page.locator("li.call.refused", has_text=source["source_id"]).wait_for(timeout=1000)
    assert page.locator("li.call", has_text=hidden.json()["event_id"]).count() == 0
    no_horizontal_scroll(page)


def test_a_contact_shows_each_property_with_the_event_that_set_it_escaped_and_its_history(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    contact = f"why-{watched.name}"
    first = send(server, admin_key, _event(contact, 100, {"plan": "free", HOSTILE_NAME: "a"}))
    last = send(server, admin_key, _event(contact, 200, {"plan": "pro"}))
    late = send(server, admin_key, _event(contact, 150, {"plan": "trial"}))  # loses: superseded
    assert first.status_code == last.status_code == late.status_code == 202
    sign_in(page, server.base_url, admin_key)
    page.get_by_role("link", name="Contacts").click()
    page.get_by_label("Contact id").fill(contact)
    page.get_by_label("Contact id").press("Enter")
    page.get_by_role("heading", name=f"Contact {contact}").wait_for()
    wait_until(lambda: _reload_until(page, '"pro"'), timeout_s=10)

    plan = page.locator("table.props tr", has=page.locator("th", has_text="plan"))
    assert plan.locator("td.value").inner_text() == '"pro"'
    hostile = page.locator("table.props th.name", has_text="window.__pwned")
    assert hostile.inner_text() == HOSTILE_NAME
    history = page.locator("ol.history > li")
    assert history.count() == 3
    late_write = page.locator("ol.history > li", has_text=late.json()["event_id"])
    assert "superseded" in late_write.inner_text()
    watched.shot("contact")
    assert page.evaluate("window.__pwned") is None

    plan.locator("a.set-by").click()  # "why does plan have this value?"
    page.get_by_role("heading", name=f"Event {last.json()['event_id']}").wait_for()
    assert page.locator(".event-status").inner_text().startswith("applied")
    assert "sets the current value" in page.locator("table").inner_text()
    watched.shot("event")
    no_horizontal_scroll(page)
    assert unlabelled_fields(page) == []


def test_create_a_source_and_see_its_url_then_its_calls_then_rotate_it(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    sign_in(page, server.base_url, admin_key)
    page.get_by_role("link", name="Sources").click()
    page.get_by_label("Amplitude (cohort webhooks)").check()
    assert unlabelled_fields(page) == []
    page.get_by_role("button", name="Create source").click()
    url = page.locator("#source-url").inner_text()
    assert url.startswith(f"{server.base_url}/v1/webhooks/src_") or "/v1/webhooks/" in url
    secret = page.locator("#source-secret").inner_text().removeprefix("Bearer ")
    assert "shown only this once" in page.content()
    watched.shot("source-created")

    source_id = url.rsplit("/", 1)[1]
    cohort = {
        "cohort_name": "Buyers",
        "cohort_id": "c9",
        "in_cohort": True,
        "computed_time": "1700000000",
        "message_id": f"m-{watched.name}",
        "users": [{"user_id": f"amp-{watched.name}"}],
    }
    webhook = f"{server.base_url}/v1/webhooks/{source_id}"
    ok = httpx.post(webhook, json=cohort, headers={"Authorization": f"Bearer {secret}"})
    bad = httpx.post(webhook, json=cohort, headers={"Authorization": "Bearer wrong"})
    assert (ok.status_code, bad.status_code) == (200, 401)
    page.get_by_role("link", name="Open the source").click()
    calls = page.locator("table.calls tbody tr")
    assert calls.count() == 2
    assert "401" in calls.nth(0).inner_text() and "200" in calls.nth(1).inner_text()
    watched.shot("source")

    page.get_by_role("button", name="Rotate the secret").click()
    rotated = page.locator("#source-secret").inner_text().removeprefix("Bearer ")
    assert rotated != secret
    both = [
        httpx.post(webhook, json=cohort, headers={"Authorization": f"Bearer {s}"}).status_code
        for s in (secret, rotated)
    ]
    assert both == [200, 200]


def test_create_a_key_shown_once_sign_in_with_it_read_only_then_revoke_it_and_its_session_ends(
    server: ServerProcess, admin_key: str, watched: Watched, browser: Browser
) -> None:
    page = watched.page
    sign_in(page, server.base_url, admin_key)
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("ingest").uncheck()
    page.get_by_role("button", name="Create key").click()
    new_key = page.locator("#new-key-value").inner_text()
    key_id = new_key.split("_")[1]
    assert new_key.startswith("phk_")
    watched.shot("key-created")

    # Another browser signs in with it: a read-only console.
    with Watched.open(browser, WIDTHS[watched.name], f"{watched.name}-reader") as other:
        sign_in(other.page, server.base_url, new_key)
        assert other.page.get_by_text("read-only").count() == 1
        assert other.page.get_by_role("link", name="Keys").count() == 0
        other.page.goto(f"{server.base_url}/console/keys")
        assert other.page.get_by_role("heading", name="Cannot do that").count() == 1
        other.expect_failed_status(403)

        page.get_by_role("link", name="All keys").click()
        page.on("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name=f"Revoke key {key_id}").click()
        assert "is revoked" in page.locator(".warn").inner_text()
        assert page.locator(f"#key-{key_id} td").nth(2).inner_text() != "—"
        watched.shot("keys")

        # Its session ends on the next request.
        other.page.goto(f"{server.base_url}/console/contacts")
        assert "/console/login" in other.page.url
        assert send(server, new_key, _event("x", 1, {"a": 1})).status_code == 401


def test_erase_a_contact_after_confirming_then_it_is_gone(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    contact = f"erase-{watched.name}"
    assert send(server, admin_key, _event(contact, 5, {"email": "a@b.c"})).status_code == 202
    sign_in(page, server.base_url, admin_key)
    page.goto(f"{server.base_url}/console/contact?id={contact}")
    page.get_by_role("link", name="Erase this contact…").click()
    page.get_by_label("Type the contact id to confirm").fill("not it")
    page.get_by_role("button", name="Erase").click()
    assert "Type the contact's id exactly" in page.locator(".problem").inner_text()
    watched.expect_failed_status(422)
    page.get_by_label("Type the contact id to confirm").fill(contact)
    page.get_by_role("button", name="Erase").click()
    page.get_by_role("heading", name="Erasure").wait_for()
    wait_until(lambda: _reload_until(page, "done"), timeout_s=15)
    watched.shot("erasure")
    page.goto(f"{server.base_url}/console/contact?id={contact}")
    assert page.get_by_role("heading", name="Not found").count() == 1
    watched.expect_failed_status(404)

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in").wait_for()
    page.goto(f"{server.base_url}/console/contacts")
    assert "/console/login" in page.url


def test_the_api_reference_is_interactive_from_the_servers_own_document(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    sign_in(page, server.base_url, admin_key)
    page.get_by_role("link", name="API reference").click()
    page.locator(".swagger-ui .opblock").first.wait_for(timeout=10_000)
    assert page.locator(".swagger-ui .opblock-summary-path", has_text="/v1/properties").count()
    watched.shot("reference")


def test_every_control_is_reachable_by_keyboard_and_a_key_is_created_with_tab_and_enter(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    sign_in(page, server.base_url, admin_key)
    for path in (
        "/",
        "/console/live",
        "/console/contacts",
        "/console/segments",
        "/console/segments/new",
        "/console/sources",
        "/console/destinations",
        "/console/keys",  # last: a key is then created on it by keyboard
    ):
        page.goto(f"{server.base_url}{path}")
        unreachable = page.evaluate(
            """() => [...document.querySelectorAll('a[href], button, input, summary')]
              .filter(el => el.type !== 'hidden' && el.offsetParent !== null)
              .filter(el => el.tabIndex < 0 || el.disabled).map(el => el.outerHTML)"""
        )
        assert unreachable == [], path
        assert unlabelled_fields(page) == [], path
        no_horizontal_scroll(page)
    before = page.locator("table.keys tbody tr").count()
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Create key":
            break
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Key created").wait_for()
    page.goto(f"{server.base_url}/console/keys")
    assert page.locator("table.keys tbody tr").count() == before + 1


def test_the_overview_draws_the_last_hours_points(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    sign_in(page, server.base_url, admin_key)
    wait_until(
        lambda: len(page.request.get(f"{server.base_url}/console/overview.json").json()["t"]) >= 2,
        timeout_s=25,
        interval_s=0.5,
    )
    page.reload()
    page.locator(".chart .uplot canvas").nth(3).wait_for()
    assert page.locator("#charts-note").inner_text() == ""
    figures = page.request.get(f"{server.base_url}/console/overview.json").json()
    assert max(figures["ingest_per_s"]) > 0 and "422" in figures["refused"]
    watched.shot("overview-later")


def _event(contact: str, ts: int, props: dict[str, Any]) -> dict[str, Any]:
    return {"contact_id": contact, "event_name": "e", "timestamp": ts, "user_properties": props}


def _reload_until(page: Any, text: str) -> bool:
    if text in page.content():
        return True
    page.reload()
    return text in page.content()


def test_screenshots_go_to_an_ignored_directory() -> None:
    ignored = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().splitlines()
    assert f"{ARTIFACTS.relative_to(ARTIFACTS.parents[1]).as_posix()}/" in ignored or (
        "test-artifacts/" in ignored
    )


# -- the filter builder and segments -----------------------------------------------------------


def _listed(page: Any) -> list[str]:
    ids: list[str] = page.locator("table.results tbody th a").all_inner_texts()
    return ids


def test_build_a_filter_with_the_keyboard_and_open_a_matching_contact(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    team = f"fb-{watched.name}"
    people = {f"{team}-a": 3, f"{team}-b": "3", f"{team}-c": 5}  # the number 3 and the string "3"
    for contact, tier in people.items():
        assert send(
            server, admin_key, _event(contact, 100, {"team": team, "tier": tier})
        ).is_success
    sign_in(page, server.base_url, admin_key)
    page.goto(f"{server.base_url}/console/contacts")
    wait_until(
        lambda: (
            page.request.get(
                f"{server.base_url}/console/contacts/count?match=all&property-0=team&op-0=eq&type-0=string&value-0={team}"
            ).json()["count"]
            == 3
        ),
        timeout_s=10,
    )

    # Keyboard only: from the id lookup, Tab to the builder; the first row, then "Add condition".
    page.get_by_label("Contact id").focus()
    for keys in ("Tab", "Tab", "Tab"):  # Open, "Contacts must match", the first property
        page.keyboard.press(keys)
    assert page.evaluate("document.activeElement.id") == "property-0"
    page.keyboard.type("team")
    page.keyboard.press("Tab")  # operator: equals
    page.keyboard.press("Tab")  # type: string
    page.keyboard.press("Tab")
    page.keyboard.type(team)
    page.keyboard.press("Tab")  # Remove
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Add condition"
    page.keyboard.press("Enter")
    page.locator("#property-1").wait_for()
    assert page.evaluate("document.activeElement.id") == "property-1"  # the new row has focus
    page.keyboard.type("tier")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.type("n")  # type: number
    assert page.locator("#type-1").input_value() == "number"
    page.keyboard.press("Tab")
    page.keyboard.type("3")
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="1 matching contact").wait_for()

    assert _listed(page) == [f"{team}-a"]  # not the string "3"
    shown = json.loads(page.locator("#filter-json").inner_text())
    assert shown == {
        "all": [
            {"property": "team", "op": "eq", "value": team},
            {"property": "tier", "op": "eq", "value": 3},
        ]
    }
    watched.shot("contacts-filter")
    no_horizontal_scroll(page)
    assert unlabelled_fields(page) == []

    # A value that is not of its row's type: a 422, the problem next to that row.
    page.locator("#value-1").fill("three")
    page.locator("#value-1").press("Enter")
    problem = page.locator("#problems-1")
    problem.wait_for()
    watched.expect_failed_status(422)
    assert "not a number" in problem.inner_text()
    assert page.locator("#condition-1").evaluate(
        "(el, p) => el.contains(p)", problem.element_handle()
    )
    watched.shot("contacts-filter-problem")
    no_horizontal_scroll(page)

    page.locator("#type-1").select_option("string")
    page.locator("#value-1").fill("3")
    page.locator("#value-1").press("Enter")
    page.get_by_role("heading", name="1 matching contact").wait_for()
    assert _listed(page) == [f"{team}-b"]
    page.get_by_role("link", name=f"{team}-b").focus()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name=f"Contact {team}-b").wait_for()


def test_build_a_nested_negated_group_by_keyboard_and_see_a_bad_value_on_its_row(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    team = f"nest-{watched.name}"
    people = {
        f"{team}-a": {"plan": "pro"},
        f"{team}-b": {"plan": "free"},
        f"{team}-c": {"plan": "pro", "trial": True},
    }
    for contact, props in people.items():
        assert send(server, admin_key, _event(contact, 100, {"team": team, **props})).is_success
    sign_in(page, server.base_url, admin_key)
    page.goto(f"{server.base_url}/console/contacts")
    wait_until(
        lambda: (
            page.request.get(
                f"{server.base_url}/console/contacts/count?match=all&property-0=team&op-0=eq"
                f"&type-0=string&value-0={team}"
            ).json()["count"]
            == 3
        ),
        timeout_s=10,
    )

    page.locator("#property-0").fill("team")
    page.locator("#value-0").fill(team)
    page.get_by_role("button", name="Add group", exact=True).focus()
    page.keyboard.press("Enter")
    page.locator("#group-1").wait_for()
    assert page.evaluate("document.activeElement.id") == "property-1-0"  # the group's first row
    page.keyboard.type("plan")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.type("free")
    page.get_by_label("Group 2 matches a contact that matches").select_option("none")
    page.get_by_role("button", name="Add a condition to group 2").focus()
    page.keyboard.press("Enter")
    page.locator("#property-1-1").wait_for()
    assert page.evaluate("document.activeElement.id") == "property-1-1"
    assert page.locator("#match-1").input_value() == "none"  # kept across the edit
    page.keyboard.type("trial")
    page.keyboard.press("Tab")
    page.locator("#op-1-1").select_option("exists")
    page.locator("#value-1-1").press("Enter")
    page.get_by_role("heading", name="1 matching contact").wait_for()

    assert _listed(page) == [f"{team}-a"]  # not free, and no trial
    shown = json.loads(page.locator("#filter-json").inner_text())
    assert shown == {
        "all": [
            {"property": "team", "op": "eq", "value": team},
            {
                "not": {
                    "any": [
                        {"property": "plan", "op": "eq", "value": "free"},
                        {"property": "trial", "op": "exists"},
                    ]
                }
            },
        ]
    }
    watched.shot("contacts-nested")
    no_horizontal_scroll(page)
    assert unlabelled_fields(page) == []

    # A value not of its row's type, inside the group: the 422's problem is on that row.
    page.locator("#type-1-0").select_option("number")
    page.locator("#value-1-0").press("Enter")
    problem = page.locator("#problems-1-0")
    problem.wait_for()
    watched.expect_failed_status(422)
    assert "not a number" in problem.inner_text()
    assert page.locator("#group-1").evaluate("(el, p) => el.contains(p)", problem.element_handle())
    watched.shot("contacts-nested-problem")
    no_horizontal_scroll(page)

    page.get_by_role("button", name="Remove group 2").click()
    page.locator("#group-1").wait_for(state="detached")
    assert page.locator("#property-0").input_value() == "team"


def test_create_a_segment_with_its_live_count_see_its_members_then_delete_it(
    server: ServerProcess, admin_key: str, watched: Watched
) -> None:
    page = watched.page
    team = f"seg-{watched.name}"
    for n, contact in enumerate((f"{team}-1", f"{team}-2", f"{team}-3")):
        props = {"team": team, "paid": n < 2, HOSTILE_NAME: HOSTILE_VALUE}
        assert send(server, admin_key, _event(contact, 100, props)).is_success
    sign_in(page, server.base_url, admin_key)
    page.get_by_role("link", name="Segments").click()
    page.get_by_role("link", name="New segment").focus()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="New segment").wait_for()
    count = page.locator("#live-count")

    page.get_by_label("Name").fill(f"Paid {team}")
    page.locator("#property-0").fill("team")
    page.locator("#value-0").fill(team)
    count.filter(has_text="3 matching contacts now").wait_for(timeout=10_000)
    page.get_by_role("button", name="Add condition").click()
    page.locator("#property-1").fill("paid")
    page.locator("#type-1").select_option("boolean")
    page.locator("#value-1").fill("tru")
    count.filter(has_text="not a boolean").wait_for()  # the count says why it cannot count
    page.locator("#value-1").fill("true")
    count.filter(has_text="2 matching contacts now").wait_for()
    watched.shot("segment-new")
    no_horizontal_scroll(page)
    assert unlabelled_fields(page) == []
    page.get_by_role("button", name="Create segment").click()

    page.locator("#segment-size").wait_for()
    assert f"Paid {team}" in page.locator("h1").inner_text()
    wait_until(lambda: _reload_until(page, "ready</span>"), timeout_s=10)
    assert page.locator("#segment-size").inner_text() == "2"
    assert _listed(page) == [f"{team}-1", f"{team}-2"]
    assert page.evaluate("window.__pwned") is None
    watched.shot("segment")
    no_horizontal_scroll(page)

    page.get_by_role("link", name="Back to segments").click()
    row = page.locator("table tbody tr", has_text=f"Paid {team}")
    assert row.locator("td[data-label=Size]").inner_text() == "2"
    assert "ready" in row.inner_text()
    watched.shot("segments")
    no_horizontal_scroll(page)

    row.get_by_role("link", name=f"Paid {team}").click()
    page.get_by_role("link", name="Delete segment").click()
    page.get_by_text("This cannot be undone").wait_for()
    page.get_by_role("button", name="Delete segment").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server.base_url}/console/segments")
    assert page.locator("table tbody tr", has_text=f"Paid {team}").count() == 0


# -- destinations --------------------------------------------------------------------------------


def test_create_destinations_see_deliveries_and_failures_replay_then_delete_them(
    server: ServerProcess,
    admin_key: str,
    watched: Watched,
    receiver: Receiver,  # noqa: F811
) -> None:
    page = watched.page
    name = watched.name
    sign_in(page, server.base_url, admin_key)
    page.get_by_role("link", name="Destinations").click()
    page.get_by_role("heading", name="Destinations", exact=True).wait_for()
    assert unlabelled_fields(page) == []
    page.get_by_label("URL").fill(f"http://127.0.0.1:{receiver.port}/in-{name}")
    page.get_by_label("Description").fill(f"CRM {name}")
    # Only this test's property: the replay below sends every change the feed still keeps.
    page.get_by_label("Only changes of these properties").fill(f"plan-{name}")
    page.get_by_role("button", name="Create destination").click()
    secret = page.locator("#destination-secret").inner_text()
    assert secret.startswith("whsec_") and "shown only this once" in page.content()
    receiver.secret = secret  # the receiver verifies each call with the reference library
    watched.shot("destination-created")
    no_horizontal_scroll(page)
    good = page.locator("h1 code").inner_text()

    # A second one by keyboard only; this one's receiver is not there.
    page.get_by_role("link", name="All destinations").click()
    page.get_by_label("URL").focus()
    page.keyboard.type(f"http://127.0.0.1:9/closed-{name}")
    page.keyboard.press("Tab")  # the description
    page.keyboard.press("Tab")
    page.keyboard.type(f"plan-{name}")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Create destination":
            break
    page.keyboard.press("Enter")
    bad = page.locator("h1 code").inner_text()
    assert page.locator("#destination-secret").inner_text() != secret

    contact = f"dst-{name}"
    assert send(server, admin_key, _event(contact, 1, {f"plan-{name}": "pro"})).is_success
    wait_until(lambda: len(receiver.received) == 1 or None, timeout_s=10)
    assert receiver.received[0].verified is not None
    page.goto(f"{server.base_url}/console/destination?id={good}")
    wait_until(lambda: _reload_until(page, ">delivered"), timeout_s=10)
    row = page.locator("table.deliveries tbody tr").first
    assert row.locator("td[data-label=Contact]").inner_text() == contact
    assert "HTTP 200" in row.locator(".outcome").inner_text()
    watched.shot("destination")
    no_horizontal_scroll(page)

    # The other one fails every attempt, gives up, then is disabled, and says why.
    page.goto(f"{server.base_url}/console/destinations")
    wait_until(lambda: _reload_until(page, ">disabled</span>"), timeout_s=20)
    listed = page.locator(f"#destination-{bad}")
    assert "every delivery failed for" in listed.locator("td[data-label=Status]").inner_text()
    watched.shot("destinations")
    no_horizontal_scroll(page)
    listed.get_by_role("link", name="1 failed").click()
    failed = page.locator("table.deliveries tbody tr").first
    assert failed.locator(".outcome").inner_text().strip() == "failed"
    assert failed.locator("td[data-label=Attempts]").inner_text() == "8"
    assert failed.locator("td.error").inner_text() not in ("", "—")
    assert page.locator("a[aria-current]", has_text="Failures").count() == 1
    watched.shot("destination-failures")
    no_horizontal_scroll(page)

    # Replay the good one from the oldest change kept, after confirming: the change comes again.
    page.goto(f"{server.base_url}/console/destination?id={good}")
    page.get_by_role("button", name="Replay…").click()
    page.get_by_role("heading", name=f"Replay to {good}?").wait_for()
    assert len(receiver.received) == 1
    no_horizontal_scroll(page)
    page.get_by_role("button", name="Replay", exact=True).focus()
    page.keyboard.press("Enter")
    page.get_by_text("Replay started").wait_for()
    wait_until(lambda: len(receiver.received) == 2 or None, timeout_s=10)
    ids = [call.headers["webhook-id"] for call in receiver.received]
    assert ids[0] == ids[1] and receiver.received[1].verified is not None

    for destination_id in (bad, good):
        page.goto(f"{server.base_url}/console/destination?id={destination_id}")
        page.get_by_role("link", name="Delete this destination…").click()
        page.get_by_text("This cannot be undone").wait_for()
        page.get_by_role("button", name="Delete destination").click()
        assert f"{destination_id} is deleted" in page.locator(".warn").inner_text()
    assert page.locator(f"#destination-{good}").count() == 0
