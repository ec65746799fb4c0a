"""The batch endpoint's everyday answer, made from a template: the same bytes as the Structs
encode; and a watched batch in the live tail (the handler lets go of a request's events before
it waits for their commit: tests/test_commit_wait.py)."""

from __future__ import annotations

import string
from typing import Any

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from profilehook import constants as c
from profilehook.api.ingest import _Accepted, _all_accepted, _batch_answer, _BatchAnswer
from profilehook.events import Event, new_event_ids
from tests.support import examples


def encoded_by_the_structs(ids: list[str]) -> bytes:
    """The answer as it was made before the template, and still is when an id needs escaping."""
    accepted: list[Any] = [_Accepted(i, "accepted", event_id) for i, event_id in enumerate(ids)]
    return msgspec.json.encode(_BatchAnswer(len(ids), 0, accepted))


IDS = st.one_of(
    st.text(string.printable),  # control characters, quotes and backslashes among the plain
    st.text(),  # any character
    st.uuids().map(str),
)


@settings(max_examples=examples(2_000))
@given(st.lists(IDS, min_size=1, max_size=c.MAX_BATCH_EVENTS))
@example(new_event_ids(c.MAX_BATCH_EVENTS))
@example(new_event_ids(1))
@example(["a", 'quo"te', "back\\slash", "new\nline", "del\x7f", "é", "\u2028", "\x00", ""])
@example(["a" * c.MAX_EVENT_ID_CHARS])
def test_an_all_accepted_answer_is_byte_for_byte_what_the_structs_encode(ids: list[str]) -> None:
    # Given a batch whose events were all accepted, with these ids
    events = [Event("acme", event_id, "c1", 0, {}) for event_id in ids]
    # When it is answered, Then the bytes are the Structs' (the template's, or theirs)
    assert _batch_answer(events, None) == encoded_by_the_structs(ids)


def test_the_template_answers_the_ids_made_here_and_leaves_those_that_need_escaping():
    made = new_event_ids(100)
    assert _all_accepted(made) == encoded_by_the_structs(made)
    for needs_escaping in ('a"b', "a\\b", "a\tb", "a\x00b", "é", "\ud800"):
        assert _all_accepted([*made, needs_escaping]) is None
    assert _all_accepted([]) is None
    assert _all_accepted(new_event_ids(c.MAX_BATCH_EVENTS + 1)) is None


def test_a_watched_batch_is_in_the_live_tail_with_its_ids_and_count(client, auth):
    # Given a watcher of the key's workspace
    watcher = client.app.services.live.watch("acme")
    batch = {
        "events": [
            {"contact_id": contact, "event_name": "e", "timestamp": 1, "user_properties": {}}
            for contact in ("u1", "u2", "u1")
        ]
    }
    # When a batch is accepted, and another has an invalid item
    answer = client.post("/v1/properties/batch", json=batch, headers=auth)
    partly = client.post(
        "/v1/properties/batch", json={"events": [*batch["events"], {}]}, headers=auth
    )
    # Then both are in the tail with their events' ids, their contacts and how many
    assert (answer.status_code, partly.status_code) == (202, 202)
    tail = [watcher.queue.get_nowait() for _ in range(watcher.queue.qsize())]
    assert [(c.status, c.contact_ids, c.event_count) for c in tail] == [
        (202, ("u1", "u2"), 3),
        (202, ("u1", "u2"), 3),
    ]
    assert tail[0].event_ids == tuple(r["event_id"] for r in answer.json()["results"])
    assert partly.json()["rejected"] == 1
