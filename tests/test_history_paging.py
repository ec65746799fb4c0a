"""Paging a contact's history (SPEC 2.5): the cursor's edge cases."""

from __future__ import annotations

from tests.test_reads import applied, send


def test_an_empty_cursor_is_the_first_page_as_an_absent_one_is(client, auth):
    """Given a contact with three events, when its history is asked for with ``?cursor=`` (a
    client that always sends the parameter), then it is the first page, not a 422."""
    for i, ts in enumerate([100, 300, 200]):
        send(client, auth, "c1", f"e{i}", ts, n=i)
    applied(client, auth, "e2")
    first = client.get("/v1/contacts/c1/history?limit=2", headers=auth)
    empty = client.get("/v1/contacts/c1/history?limit=2&cursor=", headers=auth)
    assert empty.status_code == 200, empty.text
    assert empty.json() == first.json()
    assert [e["event_id"] for e in empty.json()["events"]] == ["e1", "e2"]
