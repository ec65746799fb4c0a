"""The console's filter builder (Contacts) and Segments pages, in process (the browser drives
them in tests/test_console_browser.py): typed conditions, paging, problems on their row, the live
count, creating and deleting segments with CSRF, read-only keys, and escaping."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.settings import Settings
from tests.test_console import HOSTILE, csrf_of, make_key, sign_in


@pytest.fixture
def console(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, queue_url="memory://", store_url="memory://")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def send(client: TestClient, key: str, people: dict[str, dict[str, Any]]) -> None:
    """Ingest one event per contact and wait until every one is applied."""
    events = [
        {
            "contact_id": contact_id,
            "event_id": f"ev-{i}",
            "event_name": "e",
            "timestamp": 1_700_000_000 + i,
            "user_properties": props,
        }
        for i, (contact_id, props) in enumerate(people.items())
    ]
    headers = {"Authorization": f"Bearer {key}"}
    sent = client.post("/v1/properties/batch", json={"events": events}, headers=headers)
    assert sent.json()["accepted"] == len(events)
    for _ in range(200):
        found = client.post("/v1/contacts/query", json={"count": True}, headers=headers)
        if found.json()["count"] == len(events):
            return
        time.sleep(0.02)
    raise AssertionError("never applied")


def rows(*conditions: tuple[str, str, str, str], match: str = "all", **extra: str) -> str:
    fields: list[tuple[str, str]] = [("match", match)]
    for i, (prop, op, type_, value) in enumerate(conditions):
        fields += [(f"property-{i}", prop), (f"op-{i}", op), (f"type-{i}", type_)]
        fields += [(f"value-{i}", value)]
    return urlencode(fields + list(extra.items()))


def listed(page: str) -> list[str]:
    """The contact ids a page of results links to, in order."""
    return [
        m.replace("%20", " ")
        for m in re.findall(r'<th scope="row"><a href="/console/contact\?id=([^"]+)"', page)
    ]


@pytest.fixture
def people(console: TestClient) -> str:
    key = make_key(console, ("admin",))
    send(
        console,
        key,
        {
            "num": {"n": 42, "plan": "pro", "active": True},
            "str": {"n": "42", "plan": "pro", "active": False},
            "big": {"n": 100, "plan": "free"},
            "none": {"plan": "free"},
        },
    )
    sign_in(console, key)
    return key


# -- the filter builder ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conditions", "match", "expected"),
    [
        ([("n", "eq", "number", "42")], "all", ["num"]),
        ([("n", "eq", "string", "42")], "all", ["str"]),
        ([("active", "eq", "boolean", "true")], "all", ["num"]),
        ([("n", "gte", "number", "42")], "all", ["big", "num"]),
        ([("plan", "eq", "string", "pro"), ("n", "gt", "number", "50")], "all", []),
        (
            [("plan", "eq", "string", "pro"), ("n", "gt", "number", "50")],
            "any",
            ["big", "num", "str"],
        ),
        ([("n", "in", "number", "42, 100")], "all", ["big", "num"]),
        ([("n", "not_exists", "string", "")], "all", ["none"]),
        ([("$contact_id", "starts_with", "string", "n")], "all", ["none", "num"]),
        ([], "all", ["big", "none", "num", "str"]),
    ],
    ids=[
        "number",
        "string-42-is-not-42",
        "boolean",
        "gte",
        "all",
        "any",
        "in",
        "not-exists",
        "pseudo-property",
        "empty-lists-everyone",
    ],
)
def test_the_builder_finds_the_contacts_its_typed_conditions_match(
    console: TestClient,
    people: str,
    conditions: list[tuple[str, str, str, str]],
    match: str,
    expected: list[str],
) -> None:
    page = console.get(f"/console/contacts?{rows(*conditions, match=match)}")

    assert page.status_code == 200
    assert listed(page.text) == expected
    assert f"{len(expected)} matching contact" in page.text


def test_the_builder_shows_the_filter_it_made_as_json_to_copy(
    console: TestClient, people: str
) -> None:
    page = console.get(
        "/console/contacts?" + rows(("n", "eq", "number", "42"), ("x", "exists", "string", ""))
    )
    shown = re.search(r'<pre id="filter-json">(.*?)</pre>', page.text, re.S)
    assert shown
    text = shown.group(1).replace("&#34;", '"')
    assert text.replace(" ", "").replace("\n", "") == (
        '{"all":[{"property":"n","op":"eq","value":42},{"property":"x","op":"exists"}]}'
    )
    assert 'class="copy' in page.text and "data-copy=" in page.text
    # The same filter is what the API takes.
    answer = console.post(
        "/v1/contacts/query",
        json={"filter": {"all": [{"property": "n", "op": "eq", "value": 42}]}},
        headers={"Authorization": f"Bearer {people}"},
    )
    assert [c["contact_id"] for c in answer.json()["contacts"]] == ["num"]


def test_the_results_are_paged_with_a_cursor_and_link_to_each_contact(
    console: TestClient,
) -> None:
    key = make_key(console, ("admin",))
    send(console, key, {f"c{i:02}": {"i": i} for i in range(30)})
    sign_in(console, key)

    first = console.get("/console/contacts?" + rows(("i", "gte", "number", "0")))
    assert listed(first.text) == [f"c{i:02}" for i in range(25)]
    assert "30 matching contacts" in first.text
    assert 'href="/console/contact?id=c00"' in first.text
    following = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first.text)
    assert following
    second = console.get(following.group(1).replace("&amp;", "&"))
    assert listed(second.text) == [f"c{i:02}" for i in range(25, 30)]
    assert "Next page" not in second.text and "First page" in second.text


def test_a_bad_condition_is_a_422_with_its_problem_next_to_its_row(
    console: TestClient, people: str
) -> None:
    page = console.get(
        "/console/contacts?"
        + rows(
            ("plan", "eq", "string", "pro"),
            ("", "eq", "string", ""),  # a blank row is skipped, and does not shift the others
            ("n", "eq", "number", "forty"),
            ("active", "gt", "boolean", "true"),
        )
    )

    assert page.status_code == 422
    assert listed(page.text) == []
    problems = dict(
        re.findall(
            r'<ul class="problem" id="problems-(\d)" role="alert">(.*?)</ul>', page.text, re.S
        )
    )
    assert set(problems) == {"2", "3"}
    assert "not a number" in problems["2"]
    assert "op" in problems["3"] or "value" in problems["3"]
    assert 'id="property-2" name="property-2" value="n"' in page.text
    assert 'aria-invalid="true" aria-describedby="problems-2"' in page.text


def nested(match: str, **fields: str) -> str:
    """A builder's query string: ``fields`` named as the form names them (``value-1-0``)."""
    return urlencode([("match", match), *fields.items()])


def test_a_nested_group_and_a_negated_one_find_what_the_same_api_filter_finds(
    console: TestClient, people: str
) -> None:
    # plan is "pro" and NOT (n is 42 or n is "42"): nobody; then free and not any n = 100.
    both = {"property-0": "plan", "op-0": "eq", "type-0": "string", "value-0": "pro"}
    both |= {"match-1": "none", "property-1-0": "n", "op-1-0": "eq", "type-1-0": "number"}
    both |= {"value-1-0": "42", "property-1-1": "n", "op-1-1": "eq", "type-1-1": "string"}
    both |= {"value-1-1": "42"}
    nobody = console.get("/console/contacts?" + nested("all", **both))
    free = console.get(
        "/console/contacts?"
        + nested("all", **(both | {"value-0": "free", "value-1-0": "100", "value-1-1": "x"}))
    )

    assert nobody.status_code == 200 and listed(nobody.text) == []
    assert listed(free.text) == ["none"]
    shown = re.search(r'<pre id="filter-json">(.*?)</pre>', free.text, re.S)
    assert shown and '"not"' in shown.group(1).replace("&#34;", '"')
    assert 'id="group-1"' in free.text and 'id="property-1-1" name="property-1-1"' in free.text
    api = console.post(
        "/v1/contacts/query",
        json={
            "filter": {
                "all": [
                    {"property": "plan", "op": "eq", "value": "free"},
                    {"not": {"any": [{"property": "n", "op": "eq", "value": 100}]}},
                ]
            }
        },
        headers={"Authorization": f"Bearer {people}"},
    )
    assert [c["contact_id"] for c in api.json()["contacts"]] == ["none"]


def test_a_bad_condition_in_a_nested_group_is_a_422_on_the_page_not_a_500(
    console: TestClient, people: str
) -> None:
    fields = {"match-0": "any", "property-0-0": "plan", "op-0-0": "eq", "type-0-0": "string"}
    fields |= {"value-0-0": "pro", "property-0-1": "active", "op-0-1": "starts_with"}
    fields |= {"type-0-1": "boolean", "value-0-1": "true"}  # starts_with takes a string

    page = console.get("/console/contacts?" + nested("all", **fields))
    counted = console.get("/console/contacts/count?" + nested("all", **fields))

    assert page.status_code == 422 and listed(page.text) == []
    problem = re.search(r'<ul class="problem" id="problems-0-1" role="alert">(.*?)</ul>', page.text)
    assert problem and problem.group(1).startswith("<li>value: ")
    assert 'aria-describedby="problems-0-1"' in page.text
    assert counted.status_code == 200 and counted.json()["count"] is None
    assert counted.json()["problems"][0].startswith("Condition 1.2: value: ")


def test_adding_a_group_focuses_its_first_condition_and_runs_nothing(
    console: TestClient, people: str
) -> None:
    page = console.get(
        "/console/contacts?" + rows(("plan", "eq", "string", "pro"), add_group="root")
    )

    assert page.status_code == 200 and listed(page.text) == []
    assert re.search(r'id="property-1-0" name="property-1-0" value=""[^>]*autofocus', page.text)
    assert 'aria-label="Remove group 2"' in page.text
    assert 'aria-label="Add a condition to group 2"' in page.text


def test_adding_and_removing_a_row_runs_nothing_and_focuses_the_new_row(
    console: TestClient, people: str
) -> None:
    added = console.get("/console/contacts?" + rows(("plan", "eq", "string", "pro"), add="root"))
    assert added.status_code == 200 and listed(added.text) == []
    assert re.search(r'id="property-1" name="property-1" value=""[^>]*autofocus', added.text)
    assert 'value="plan"' in added.text

    removed = console.get(
        "/console/contacts?"
        + rows(("plan", "eq", "string", "pro"), ("n", "eq", "number", "42"), remove="0")
    )
    assert removed.status_code == 200 and listed(removed.text) == []
    assert 'id="property-0" name="property-0" value="n"' in removed.text
    assert 'id="property-1"' not in removed.text


def test_the_count_answers_how_many_match_and_problems_without_failing(
    console: TestClient, people: str
) -> None:
    counted = console.get("/console/contacts/count?" + rows(("plan", "eq", "string", "pro")))
    wrong = console.get("/console/contacts/count?" + rows(("n", "eq", "number", "x")))

    assert counted.status_code == 200 and counted.json() == {"count": 2, "problems": []}
    assert wrong.status_code == 200 and wrong.json()["count"] is None
    assert "Condition 1" in wrong.json()["problems"][0]
    assert counted.headers["content-security-policy"]


def test_hostile_names_and_values_are_escaped_in_the_builder_and_its_results(
    console: TestClient,
) -> None:
    key = make_key(console, ("admin",))
    send(console, key, {HOSTILE: {HOSTILE: HOSTILE}})
    sign_in(console, key)

    page = console.get("/console/contacts?" + rows((HOSTILE, "eq", "string", HOSTILE)))

    assert page.status_code == 200 and "1 matching contact" in page.text
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;&#34;" in page.text
    assert f'href="/console/contact?id={quote(HOSTILE, safe="")}"' in page.text


# -- segments --------------------------------------------------------------------------------


def create_form(
    client: TestClient, name: str, *conditions: tuple[str, str, str, str]
) -> dict[str, Any]:
    token = csrf_of(client, "/console/segments/new")
    fields: dict[str, Any] = {"csrf_token": token, "name": name, "match": "all"}
    for n, condition in enumerate(conditions):
        for column, value in zip(("property", "op", "type", "value"), condition, strict=True):
            fields[f"{column}-{n}"] = value
    return fields


def wait_ready(client: TestClient, url: str) -> str:
    for _ in range(200):
        page = client.get(url).text
        if "ready</span>" in page:
            return page
        time.sleep(0.02)
    raise AssertionError("never ready")


def test_an_admin_creates_a_segment_sees_its_size_and_members_and_deletes_it(
    console: TestClient, people: str
) -> None:
    assert "New segment" in console.get("/console/segments").text
    assert console.get("/console/segments/new").status_code == 200

    made = console.post(
        "/console/segments/new",
        data=create_form(console, "Pro plan", ("plan", "eq", "string", "pro")),
        follow_redirects=False,
    )

    assert made.status_code == 303
    url = made.headers["location"]
    segment_id = url.split("id=")[1]
    page = wait_ready(console, url)
    assert listed(page) == ["num", "str"]
    assert '<dd id="segment-size">2</dd>' in page
    listing = console.get("/console/segments").text
    assert "Pro plan" in listing and '<td data-label="Size">2</td>' in listing

    confirm = console.get(f"/console/segment/delete?id={segment_id}")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    gone = console.post(
        "/console/segment/delete",
        data={"csrf_token": csrf_of(console, "/console/segments"), "segment_id": segment_id},
        follow_redirects=False,
    )
    assert gone.status_code == 303 and gone.headers["location"] == "/console/segments"
    assert "Pro plan" not in console.get("/console/segments").text
    assert console.get(url).status_code == 404


def test_a_segment_with_a_bad_filter_or_no_name_is_a_422_and_is_not_made(
    console: TestClient, people: str
) -> None:
    bad = console.post(
        "/console/segments/new", data=create_form(console, "x", ("n", "eq", "number", "y"))
    )
    unnamed = console.post(
        "/console/segments/new", data=create_form(console, "", ("n", "eq", "number", "1"))
    )

    assert bad.status_code == 422 and 'id="problems-0"' in bad.text
    assert unnamed.status_code == 422 and 'id="name-problems"' in unnamed.text
    assert 'value="1"' in unnamed.text  # the builder keeps what was typed
    assert "No segments yet" in console.get("/console/segments").text


def test_adding_a_row_to_a_new_segment_keeps_its_name_and_makes_nothing(
    console: TestClient, people: str
) -> None:
    form = create_form(console, "Kept", ("plan", "eq", "string", "pro")) | {"add": "root"}
    page = console.post("/console/segments/new", data=form)

    assert page.status_code == 200
    assert 'value="Kept"' in page.text and 'id="property-1"' in page.text
    assert "No segments yet" in console.get("/console/segments").text


@pytest.mark.parametrize(
    ("token", "headers"),
    [
        (None, {}),
        ("x" * 43, {}),
        ("valid", {"Origin": "https://evil.example"}),
        ("valid", {"Sec-Fetch-Site": "cross-site"}),
    ],
    ids=["missing", "forged", "cross-site-origin", "cross-site-fetch"],
)
def test_creating_or_deleting_a_segment_needs_this_sessions_token_from_this_site(
    console: TestClient, people: str, token: str | None, headers: dict[str, str]
) -> None:
    made = console.post(
        "/console/segments/new",
        data=create_form(console, "Kept", ("plan", "eq", "string", "pro")),
        follow_redirects=False,
    )
    segment_id = made.headers["location"].split("id=")[1]
    valid = csrf_of(console, "/console/segments")
    sent_token = {} if token is None else {"csrf_token": valid if token == "valid" else token}
    fields = create_form(console, "Forged", ("plan", "exists", "string", ""))
    fields.pop("csrf_token")

    create = console.post("/console/segments/new", data=fields | sent_token, headers=headers)
    delete = console.post(
        "/console/segment/delete", data={"segment_id": segment_id} | sent_token, headers=headers
    )

    assert create.status_code == delete.status_code == 403
    listing = console.get("/console/segments").text
    assert "Kept" in listing and "Forged" not in listing


def test_a_read_key_sees_segments_but_gets_no_forms_and_a_403_on_post(
    console: TestClient, people: str
) -> None:
    made = console.post(
        "/console/segments/new",
        data=create_form(console, "Pro plan", ("plan", "eq", "string", "pro")),
        follow_redirects=False,
    )
    url = made.headers["location"]
    segment_id = url.split("id=")[1]
    wait_ready(console, url)
    console.cookies.clear()
    sign_in(console, make_key(console, ("read",)))
    token = csrf_of(console, "/console/segments")

    listing = console.get("/console/segments")
    page = console.get(url)
    assert listing.status_code == page.status_code == 200
    assert "Pro plan" in listing.text and listed(page.text) == ["num", "str"]
    for shown in (listing.text, page.text):
        assert "New segment" not in shown and "Delete segment" not in shown
        assert re.findall(r'<form method="post" action="([^"]+)"', shown) == ["/console/logout"]
    assert console.get("/console/segments/new").status_code == 403
    assert console.get(f"/console/segment/delete?id={segment_id}").status_code == 403
    create = console.post(
        "/console/segments/new",
        data=create_form_fields("Nope") | {"csrf_token": token},
    )
    delete = console.post(
        "/console/segment/delete", data={"csrf_token": token, "segment_id": segment_id}
    )
    assert create.status_code == delete.status_code == 403
    assert "Nope" not in console.get("/console/segments").text
    assert console.get(url).status_code == 200


def create_form_fields(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "match": "all",
        "property-0": "plan",
        "op-0": "exists",
        "type-0": "string",
    }


def test_hostile_names_and_values_are_escaped_in_segments_and_their_members(
    console: TestClient,
) -> None:
    key = make_key(console, ("admin",))
    send(console, key, {HOSTILE: {HOSTILE: HOSTILE}})
    sign_in(console, key)
    made = console.post(
        "/console/segments/new",
        data=create_form(console, HOSTILE, (HOSTILE, "eq", "string", HOSTILE)),
        follow_redirects=False,
    )
    url = made.headers["location"]

    page = wait_ready(console, url)
    listing = console.get("/console/segments").text
    confirm = console.get(url.replace("/console/segment?", "/console/segment/delete?")).text

    for shown in (page, listing, confirm):
        assert "<script>" not in shown
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;&#34;" in shown
    assert f'href="/console/contact?id={quote(HOSTILE, safe="")}"' in page


def test_the_new_pages_carry_the_security_headers_and_no_inline_script(
    console: TestClient, people: str
) -> None:
    made = console.post(
        "/console/segments/new",
        data=create_form(console, "Pro", ("plan", "eq", "string", "pro")),
        follow_redirects=False,
    )
    url = made.headers["location"]
    for path in [
        "/console/contacts?" + rows(("plan", "eq", "string", "pro")),
        "/console/segments",
        "/console/segments/new",
        url,
        url.replace("/console/segment?", "/console/segment/delete?"),
        "/console/static/segments.js",
    ]:
        answer = console.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["x-frame-options"] == "DENY"
        assert "script-src 'self';" in answer.headers["content-security-policy"]
        if answer.headers["content-type"].startswith("text/html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)", answer.text), path
            assert not re.search(r"<[^>]+\son[a-z]+=", answer.text), path


def test_a_building_segment_shows_its_progress_then_ready_with_its_size(
    console: TestClient, people: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def held(store: Any, stop: Any = None) -> int:  # the backfill waits for this test
        return 0

    monkeypatch.setattr("profilehook.segments.fill", held)
    made = console.post(
        "/console/segments/new",
        data=create_form(console, "Later", ("plan", "eq", "string", "free")),
        follow_redirects=False,
    )
    url = made.headers["location"]
    segment_id = url.split("id=")[1]

    building = console.get("/console/segments").text
    assert "building</span>" in building and "0 contacts checked so far" in building
    assert "No members yet: reload in a moment" in console.get(url).text

    store = console.app.services.store  # type: ignore[attr-defined]
    done = console.portal.call(store.backfill_segment, "acme", segment_id)  # type: ignore[union-attr]
    assert done
    page = console.get(url).text
    assert "ready</span>" in page and listed(page) == ["big", "none"]
    assert '<td data-label="Size">2</td>' in console.get("/console/segments").text


def test_a_segments_members_are_paged_with_a_cursor(console: TestClient) -> None:
    key = make_key(console, ("admin",))
    send(console, key, {f"m{i:02}": {"i": i} for i in range(30)})
    sign_in(console, key)
    made = console.post(
        "/console/segments/new",
        data=create_form(console, "All", ("i", "gte", "number", "0")),
        follow_redirects=False,
    )

    first = wait_ready(console, made.headers["location"])
    assert listed(first) == [f"m{i:02}" for i in range(25)]
    following = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first)
    assert following
    second = console.get(following.group(1).replace("&amp;", "&")).text
    assert listed(second) == [f"m{i:02}" for i in range(25, 30)]
    assert "Next page" not in second and "First page" in second
    bad = console.get(made.headers["location"] + "&cursor=nope")
    assert bad.status_code == 404
