"""Schemathesis against /openapi.json of a real server, with a valid key, on every operation:
no input gets a 5xx, and no answer contradicts the document (status, content type, schema).

The CI budget is small (``PROFILEHOOK_FUZZ_EXAMPLES``, default 20 per operation); the long run
is in RELIABILITY.md. The JSON and form decoders have their own hypothesis properties
(tests/test_limits.py, tests/test_forms.py).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.errors import InvalidSchema
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from profilehook.api import openapi
from profilehook.settings import Settings
from tests.support import ServerProcess, create_key
from tests.test_amplitude import new_source
from tests.test_limits import json_values

FUZZ_EXAMPLES = int(os.environ.get("PROFILEHOOK_FUZZ_EXAMPLES", "20"))
# Requests sent and answers by status class, printed at the end of the module (``-s``).
tally: Counter[str] = Counter()


@pytest.fixture(scope="module")
def amplitude(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, str, dict[str, str]]]:
    """An Amplitude source on the in-process app (one for all examples)."""
    from starlette.testclient import TestClient

    from profilehook.api.app import create_app

    settings = Settings(data_dir=tmp_path_factory.mktemp("amplitude") / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        source_id, secret = new_source(settings)
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        yield client, f"/v1/webhooks/{source_id}", headers


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    key = create_key(data_dir, scopes=("admin",))["key"]  # every operation, management included
    server = ServerProcess(data_dir).start()
    try:
        yield server, key
    finally:
        server.stop()
        print(f"\nfuzz: {dict(sorted(tally.items()))}")
        assert "server log has a traceback" not in server.log_text()


# The change stream's answer to a valid request never ends (Server-Sent Events):
# tests/test_changes_api.py tests it, and its refusals are GET /v1/changes's.
OPERATIONS = [
    (method.upper(), path)
    for path, methods in openapi.document("")["paths"].items()
    for method in methods
    if path != "/v1/changes/stream"
]
# Cursors are opaque: only those the server issued are valid, so a schema-valid string may be
# refused. A filter's value must be of the kind its op takes (a list for `in`), which the
# schema does not say.
_OPAQUE = {
    ("GET", "/v1/changes"),
    ("GET", "/v1/segments/{segment_id}/contacts"),
    ("POST", "/v1/contacts/query"),
    ("POST", "/v1/segments"),
    ("POST", "/v1/destinations/{destination_id}/replay"),
    # A destination's URL must be a public https address that resolves, which a schema cannot
    # say (and a fuzzer's strings are not).
    ("POST", "/v1/destinations"),
}


@pytest.fixture(scope="module")
def api_schema(fuzzed: tuple[ServerProcess, str]) -> Any:
    server, _ = fuzzed
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=server.base_url)
    return schema


_OPERATION_FIELDS = ("user_properties", "set_once", "add", "append", "remove")


def _names_in_two_operations(body: Any) -> bool:
    """Whether an event of ``body`` (one, or a batch's) names a property in two operations."""
    events = body.get("events") if isinstance(body, dict) else None
    for event in events if isinstance(events, list) else [body]:
        if not isinstance(event, dict):
            continue
        names: list[Any] = []
        for field in _OPERATION_FIELDS:
            if isinstance(event.get(field), dict):
                names += list(event[field])
        if isinstance(event.get("unset"), list):
            names += list(dict.fromkeys(n for n in event["unset"] if isinstance(n, str)))
        if len(names) != len(set(names)):
            return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_request_gets_a_5xx_or_an_answer_the_document_does_not_describe(
    fuzzed, api_schema, method, path, mode
):
    _, key = fuzzed
    auth = {"Authorization": f"Bearer {key}"}

    # The request schemas say what is accepted, not all that is refused: unknown query
    # parameters and body fields are ignored, not refused, so "negative data must be rejected"
    # does not apply. And a cursor is opaque: only those the server issued are valid.
    # Management bodies refuse unknown fields, and a pinned key must be a real PEM key.
    excluded = [negative_data_rejection]
    if path.endswith("/history") or (method, path) in {("POST", "/v1/sources"), *_OPAQUE}:
        excluded.append(positive_data_acceptance)
    # Amplitude's key is its body's api_key, and Amplitude answers a wrong one 400 (what its SDK
    # reads as a bad key): a well-formed body with any other key is refused, as it should be.
    if path.startswith("/amplitude/"):
        excluded.append(positive_data_acceptance)

    @given(case=api_schema[path][method].as_strategy(mode))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: Any) -> None:
        if path == "/v1/changes" and isinstance(case.query, dict) and "wait_s" in case.query:
            case.query["wait_s"] = 0  # the answers, not the waits (tests/test_changes_api.py)
        response = case.call(headers=auth)
        tally["requests"] += 1
        tally[f"{response.status_code // 100}xx"] += 1
        # A property in two operations of one event is refused (README, Property operations),
        # which a JSON Schema cannot say: such a body is not positive data.
        twice = [] if not _names_in_two_operations(case.body) else [positive_data_acceptance]
        case.validate_response(response, headers=auth, excluded_checks=excluded + twice)

    try:
        fuzz()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE
        pytest.skip("the document declares nothing this operation could violate")
    except InvalidSchema as exc:
        # Negating the batch's `contains` sometimes defeats schemathesis's generator itself.
        assert mode is GenerationMode.NEGATIVE and "Cannot generate" in str(exc), exc
        pytest.skip(f"schemathesis could not negate the document here: {exc}")


# -- the JSON webhook path, in process ----------------------------------------------------------

users = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.one_of(st.text(max_size=12), st.integers(), st.none()),
            "user_properties": json_values,
        },
    ),
    max_size=5,
)
amplitude_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"users": users},
        optional={
            "cohort_id": json_values,
            "cohort_name": json_values,
            "in_cohort": json_values,
            "computed_time": st.one_of(st.text(max_size=12), json_values),
            "message_id": json_values,
        },
    ),
    st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), max_size=4),
    st.fixed_dictionaries({"batch": st.lists(json_values, max_size=4)}),
)


@settings(max_examples=FUZZ_EXAMPLES * 5, deadline=None, database=None)
@given(body=amplitude_bodies)
def test_whatever_an_amplitude_source_is_sent_it_never_answers_5xx(amplitude, body):
    client, path, headers = amplitude
    r = client.post(path, content=msgspec.json.encode(body), headers=headers)
    assert r.status_code in (200, 413, 422), r.text
    assert list(r.json()) == (["detail"] if r.status_code != 200 else list(r.json()))
