"""``POST /v1/contacts/query`` (README, Querying profiles) through the app: the answer's form,
paging with the cursor, 422s that point into the filter, the scope and the workspace."""

from __future__ import annotations

from typing import Any

from tests.conftest import new_key
from tests.test_reads import applied, send


def query(client: Any, auth: dict[str, str], **body: Any) -> Any:
    return client.post("/v1/contacts/query", json=body, headers=auth)


def test_given_profiles_when_queried_then_matches_as_get_shows_them_paged(client, auth):
    for i in range(5):
        send(client, auth, f"u{i}", f"e{i}", 100 + i, plan="pro" if i % 2 == 0 else "free", n=i)
    applied(client, auth, "e4")
    flt = {"all": [{"property": "plan", "op": "eq", "value": "pro"}]}
    r = query(client, auth, filter=flt, limit=2, count=True)
    assert r.status_code == 200, r.text
    page = r.json()
    assert [c["contact_id"] for c in page["contacts"]] == ["u0", "u2"]
    assert page["count"] == 3
    assert page["contacts"][0] == client.get("/v1/contacts/u0", headers=auth).json()
    r = query(client, auth, filter=flt, limit=2, cursor=page["next_cursor"])
    assert [c["contact_id"] for c in r.json()["contacts"]] == ["u4"]
    assert r.json()["next_cursor"] is None and r.json()["count"] is None
    r = query(client, auth)  # no filter: everyone
    assert [c["contact_id"] for c in r.json()["contacts"]] == ["u0", "u1", "u2", "u3", "u4"]


def test_given_a_bad_filter_then_422_listing_every_problem_inside_the_filter(client, auth):
    flt = {
        "all": [
            {"property": "plan", "op": "eq", "value": "pro"},
            {"property": "plan", "op": "like", "value": "p%"},
            {"property": "n", "op": "gt", "value": {"a": 1}},
        ]
    }
    r = query(client, auth, filter=flt, limit=5000)
    assert r.status_code == 422
    assert [p["loc"] for p in r.json()["detail"]] == [
        ["body", "filter", "all", 1, "op"],
        ["body", "filter", "all", 2, "value"],
        ["body", "limit"],
    ]
    too_many = {"any": [{"property": "a", "op": "exists"}] * 101}
    r = query(client, auth, filter=too_many)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "filter"]
    nul = {"property": "a", "op": "eq", "value": "x\u0000"}
    r = query(client, auth, filter=nul)
    assert r.status_code == 422, r.text
    r = client.post(
        "/v1/contacts/query", content=b"{", headers={**auth, "content-type": "application/json"}
    )
    assert r.status_code == 422


def test_given_another_workspace_and_an_ingest_only_key_then_nothing_leaks(client, auth, settings):
    send(client, auth, "u1", "e1", 100, plan="pro")
    applied(client, auth, "e1")
    other = {"Authorization": f"Bearer {new_key(settings, 'globex')}"}
    assert query(client, other).json()["contacts"] == []
    assert query(client, {}).status_code == 401
