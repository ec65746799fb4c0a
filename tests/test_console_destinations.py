"""The console's Destinations page, in process (the browser drives it in
tests/test_console_browser.py): create one (its secret shown once), its status, its deliveries
and failures, replay from a cursor after confirming, delete after confirming; the same records
the API shows, CSRF and same-origin on every form, admin only, and escaping."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.console.destinations import body_of
from profilehook.console.web import CSP
from profilehook.settings import Settings
from tests.support import wait_until
from tests.test_console import HOSTILE, csrf_of, make_key, sign_in
from tests.test_destinations_api import receiver  # noqa: F401  (a fixture)
from tests.webhook_receiver import Receiver


@pytest.fixture
def console(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path,
        queue_url="memory://",
        store_url="memory://",
        destinations_allow_private=True,
        destinations_retry_scale=0.000_01,  # every retry within a second; disabled after 4 s
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def admin(console: TestClient) -> dict[str, str]:
    key = make_key(console, ("admin",))
    sign_in(console, key)
    return {"Authorization": f"Bearer {key}"}


def create(console: TestClient, **form: Any) -> Any:
    token = csrf_of(console, "/console/destinations")
    return console.post("/console/destinations", data={"csrf_token": token, **form})


def created_id(page: str) -> str:
    found = re.search(r"Destination created: <code>(dst_[0-9a-f]+)</code>", page)
    assert found, page
    return found.group(1)


def send(console: TestClient, headers: dict[str, str], contact: str, ts: int) -> None:
    body = {"contact_id": contact, "event_name": "e", "timestamp": ts, "user_properties": {"n": ts}}
    assert console.post("/v1/properties", json=body, headers=headers).status_code == 202


def test_the_form_becomes_the_apis_body_properties_one_per_line_or_comma_separated() -> None:
    form = {"url": " https://x.test/in ", "description": "", "properties": "plan, tier\nemail\n"}
    assert body_of(form, ["seg_1"]) == {
        "url": "https://x.test/in",
        "properties": ["plan", "tier", "email"],
        "segments": ["seg_1"],
    }
    assert body_of({"url": "https://x.test", "description": " CRM "}, []) == {
        "url": "https://x.test",
        "description": "CRM",
    }


def test_an_admin_creates_a_destination_its_secret_is_shown_once_and_the_api_lists_it(
    console: TestClient, admin: dict[str, str]
) -> None:
    page = create(console, url="https://127.0.0.1:9/hook", description="CRM", properties="plan")

    assert page.status_code == 200 and "shown only this once" in page.text
    secret = re.search(r'<code id="destination-secret">(whsec_[^<]+)</code>', page.text)
    assert secret
    destination_id = created_id(page.text)
    # It says it starts now, and links the replay that sends what is kept from before.
    assert "none from before" in page.text
    replay = f"/console/destination/replay?id={destination_id}&amp;from=oldest"
    assert replay in page.text
    confirm = console.get(replay.replace("&amp;", "&"))
    assert confirm.status_code == 200 and "kept (from the oldest)" in confirm.text
    listed = console.get("/v1/destinations", headers=admin).json()["destinations"]
    assert [(d["destination_id"], d["properties"]) for d in listed] == [(destination_id, ["plan"])]
    # Never again: not on the list, not on its page.
    listing = console.get("/console/destinations")
    shown = console.get(f"/console/destination?id={destination_id}")
    assert secret.group(1) not in listing.text + shown.text
    assert destination_id in listing.text and ">enabled<" in listing.text
    assert "changes of" in listing.text and "plan" in shown.text


def test_a_refused_url_is_a_422_with_its_problem_and_nothing_is_made(
    tmp_path: Path,
) -> None:
    strict = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
    with TestClient(create_app(strict), raise_server_exceptions=False) as console:
        key = make_key(console, ("admin",))
        sign_in(console, key)
        page = create(console, url="http://127.0.0.1:9/in", description="kept")

        assert page.status_code == 422
        assert "url: Value error, a destination URL must be https" in page.text
        assert 'value="kept"' in page.text  # what was typed stays
        listed = console.get("/v1/destinations", headers={"Authorization": f"Bearer {key}"})
        assert listed.json()["destinations"] == []


def test_a_destination_shows_its_deliveries_outcomes_attempts_last_error_and_failures(
    console: TestClient,
    admin: dict[str, str],
    receiver: Receiver,  # noqa: F811
) -> None:
    good = created_id(create(console, url=f"http://127.0.0.1:{receiver.port}/in").text)
    bad = created_id(create(console, url="http://127.0.0.1:9/closed").text)
    send(console, admin, "c1", 1)

    def outcomes(destination_id: str, status: str = "") -> list[str]:
        page = console.get(f"/console/destination?id={destination_id}&status={status}")
        assert page.status_code == 200
        found = re.findall(r'<td data-label="Outcome" class="outcome">([^<]+)', page.text)
        return [text.strip() for text in found]

    wait_until(lambda: outcomes(good) == ["delivered"] and outcomes(bad) == ["failed"], 20)
    failed = console.get(f"/console/destination?id={bad}&status=failed").text
    assert "Connect" in failed or "refused" in failed, failed
    assert '<td data-label="Attempts">8</td>' in failed
    assert outcomes(bad, "delivered") == [] and outcomes(good, "failed") == []
    api = console.get(f"/v1/destinations/{bad}/deliveries?status=failed", headers=admin).json()
    assert [(d["status"], d["attempts"]) for d in api["deliveries"]] == [("failed", 8)]
    listing = console.get("/console/destinations").text
    assert f'href="/console/destination?id={bad}&amp;status=failed" class="bad">1 failed' in (
        listing
    )


def test_a_disabled_destination_says_so_and_why(console: TestClient, admin: dict[str, str]) -> None:
    destination_id = created_id(create(console, url="https://127.0.0.1:9/hook").text)
    store = console.app.services.store  # type: ignore[attr-defined]
    console.portal.call(  # type: ignore[union-attr]
        store.disable_destination, destination_id, int(time.time() * 1e6), "failed 5 days"
    )

    for path in ("/console/destinations", f"/console/destination?id={destination_id}"):
        page = console.get(path).text
        assert ">disabled</span>" in page and "failed 5 days" in page


def test_replay_asks_first_then_refuses_a_foreign_cursor_then_replays_from_the_oldest(
    console: TestClient,
    admin: dict[str, str],
    receiver: Receiver,  # noqa: F811
) -> None:
    destination_id = created_id(create(console, url=f"http://127.0.0.1:{receiver.port}/in").text)
    send(console, admin, "c1", 1)
    send(console, admin, "c2", 2)
    wait_until(lambda: len(receiver.received) == 2 or None, 20)
    shown = console.get(f"/console/destination?id={destination_id}").text
    cursors = re.findall(r"replay\?id=dst_[0-9a-f]+&amp;after=([^\"]+)\"", shown)
    assert len(cursors) == 2

    ask = console.get(f"/console/destination/replay?id={destination_id}&after={cursors[1]}")
    assert ask.status_code == 200 and "delivered again" in ask.text
    assert len(receiver.received) == 2  # asking sends nothing
    token = csrf_of(console, "/console/destinations")
    foreign = console.post(
        "/console/destination/replay",
        data={"csrf_token": token, "destination_id": destination_id, "after": "nope"},
    )
    assert foreign.status_code == 422 and "after: Value error, not a cursor" in foreign.text

    # After the older delivery's cursor: only the later change comes again.
    again = console.post(
        "/console/destination/replay",
        data={"csrf_token": token, "destination_id": destination_id, "after": cursors[1]},
    )
    assert again.status_code == 200 and "Replay started" in again.text
    wait_until(lambda: len(receiver.received) == 3 or None, 20)
    assert receiver.received[2].headers["webhook-id"] == receiver.received[1].headers["webhook-id"]
    everything = console.post(
        "/console/destination/replay",
        data={"csrf_token": token, "destination_id": destination_id, "after": ""},
    )
    assert "every change kept" in everything.text
    wait_until(lambda: len(receiver.received) == 5 or None, 20)


def test_delete_asks_first_then_the_destination_is_gone_from_the_api_too(
    console: TestClient, admin: dict[str, str]
) -> None:
    destination_id = created_id(create(console, url="https://127.0.0.1:9/hook").text)
    ask = console.get(f"/console/destination/delete?id={destination_id}")
    assert ask.status_code == 200 and "cannot be undone" in ask.text
    assert console.get(f"/v1/destinations/{destination_id}", headers=admin).status_code == 200

    done = console.post(
        "/console/destination/delete",
        data={
            "csrf_token": csrf_of(console, "/console/destinations"),
            "destination_id": destination_id,
        },
    )

    assert done.status_code == 200 and "is deleted" in done.text
    assert console.get(f"/v1/destinations/{destination_id}", headers=admin).status_code == 404
    assert console.get(f"/console/destination?id={destination_id}").status_code == 404


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/console/destinations", {"url": "https://127.0.0.1:9/x"}),
        ("/console/destination/replay", {"after": ""}),
        ("/console/destination/delete", {}),
    ],
    ids=["create", "replay", "delete"],
)
@pytest.mark.parametrize(
    ("token", "headers"),
    [(None, {}), ("forged", {}), ("valid", {"Origin": "https://evil.example"})],
    ids=["missing-token", "forged-token", "cross-site"],
)
def test_every_destination_form_needs_this_sessions_token_from_this_site(
    console: TestClient,
    admin: dict[str, str],
    path: str,
    form: dict[str, str],
    token: str | None,
    headers: dict[str, str],
) -> None:
    destination_id = created_id(create(console, url="https://127.0.0.1:9/hook").text)
    tokens = {"valid": csrf_of(console, "/console/destinations"), "forged": "x" * 43}
    data = {**form, "destination_id": destination_id}
    if token is not None:
        data["csrf_token"] = tokens[token]

    answer = console.post(path, data=data, headers=headers)

    assert answer.status_code == 403
    listed = console.get("/v1/destinations", headers=admin).json()["destinations"]
    assert [(d["destination_id"], d["cursor"]) for d in listed] == [(destination_id, None)]


def test_a_read_key_has_no_destinations_page_as_the_api_gives_it_none(
    console: TestClient,
) -> None:
    admin_key = make_key(console, ("admin",))
    sign_in(console, admin_key)
    destination_id = created_id(create(console, url="https://127.0.0.1:9/hook").text)
    console.cookies.clear()
    sign_in(console, make_key(console, ("read",)))
    token = csrf_of(console, "/console/contacts")

    assert 'href="/console/destinations"' not in console.get("/").text
    for path in (
        "/console/destinations",
        f"/console/destination?id={destination_id}",
        f"/console/destination/replay?id={destination_id}",
        f"/console/destination/delete?id={destination_id}",
    ):
        assert console.get(path).status_code == 403, path
    delete = console.post(
        "/console/destination/delete",
        data={"csrf_token": token, "destination_id": destination_id},
    )
    assert delete.status_code == 403
    admin = {"Authorization": f"Bearer {admin_key}"}
    assert console.get(f"/v1/destinations/{destination_id}", headers=admin).status_code == 200


def test_another_workspaces_destination_is_not_found(console: TestClient) -> None:
    sign_in(console, make_key(console, ("admin",), workspace="other"))
    theirs = created_id(create(console, url="https://127.0.0.1:9/hook").text)
    console.cookies.clear()
    sign_in(console, make_key(console, ("admin",)))

    assert console.get(f"/console/destination?id={theirs}").status_code == 404
    delete = console.post(
        "/console/destination/delete",
        data={"csrf_token": csrf_of(console, "/console/destinations"), "destination_id": theirs},
    )
    assert delete.status_code == 404


def test_hostile_descriptions_urls_and_property_names_are_escaped(
    console: TestClient, admin: dict[str, str]
) -> None:
    page = create(
        console, url=f"https://example.com/{HOSTILE}", description=HOSTILE, properties=HOSTILE
    )
    # The URL is refused (it holds spaces) and comes back escaped; then a valid one is made.
    assert page.status_code == 422 and "<script>" not in page.text
    made = create(console, url="https://127.0.0.1:9/x", description=HOSTILE, properties=HOSTILE)
    destination_id = created_id(made.text)
    for path in ("/console/destinations", f"/console/destination?id={destination_id}"):
        answer = console.get(path)
        assert "<script>" not in answer.text and "&lt;script&gt;" in answer.text, path
        assert answer.headers["content-security-policy"] == CSP
        assert not re.search(r"<script(?![^>]*\bsrc=)", answer.text), path
