"""The OpenAPI operations of the SDK-compatible endpoints (api/peers.py): each peer's paths, its
answers and its error bodies, as its SDK reads them."""

from __future__ import annotations

from typing import Any

from profilehook import constants as c
from profilehook.api.peers import AMPLITUDE_PATHS, POSTHOG_PATHS, POSTHOG_V1_PATHS, SEGMENT_PATHS

SCOPE = "x-scope"  # (openapi.SCOPE: the key scope an operation needs)
KEY_IN_BODY = "x-key-in-body"
"""Operations whose key travels in the body (or as Basic auth): their ``security`` is stated
by the peer, not as a Bearer token."""


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _object(*required: str, **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": properties}


_SEGMENT_ERROR = _object("code", "message", code={"type": "string"}, message={"type": "string"})
_POSTHOG_ERROR = _object(
    "type", "code", "detail", type={"type": "string"}, code={"type": "string"},
    detail={"type": "string"}, attr={},
)  # fmt: skip
_AMPLITUDE_ERROR = _object(
    "code", "error", code={"type": "integer"}, error={"type": "string"},
    missing_field={"type": "string"},
    events_with_invalid_fields={"type": "object", "additionalProperties": {"type": "array"}},
)  # fmt: skip
_RETRY = {
    "408": "The body did not arrive within the body timeout (retried by the SDKs)",
    "429": "Over the key's rate limit; retry after `Retry-After` seconds",
    "503": "Storage unavailable or too slow, nothing stored: retried by the SDKs",
}


def _errors(schema: dict[str, Any], statuses: dict[str, str]) -> dict[str, Any]:
    answers = {status: _json(schema, text) for status, text in statuses.items()}
    # A deadline's 408 or 503 is sent by the watchdog, in the one error shape of the API.
    either = {"anyOf": [schema, {"$ref": "#/components/schemas/Error"}]}
    return answers | {status: _json(either, text) for status, text in _RETRY.items()}


_MESSAGE = {"type": "object", "properties": {"type": {"type": "string"}}}
_SEGMENT_BATCH = _object(
    "batch", batch={"type": "array", "items": _MESSAGE}, writeKey={"type": "string"}
)
_POSTHOG_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "distinct_id": {"type": "string"},
        "uuid": {"type": "string", "format": "uuid"},
        "properties": {"type": "object"},
    },
}
_POSTHOG_BODY = {
    "anyOf": [
        _object("batch", batch={"type": "array", "items": _POSTHOG_EVENT, "minItems": 1},
                api_key={"type": "string"}),
        {**_POSTHOG_EVENT, "required": ["event"]},
        {"type": "array", "items": _POSTHOG_EVENT, "minItems": 1},
    ]
}  # fmt: skip
_AMPLITUDE_BODY = _object(
    "api_key",
    "events",
    api_key={"type": "string", "minLength": 1},
    events={"type": "array", "minItems": 1, "items": _object(
        user_id={"type": "string"}, time={"type": "integer", "minimum": 0},
        insert_id={"type": "string"}, user_properties={"type": "object"})},
)  # fmt: skip


def _operation(
    summary: str, description: str, answers: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description,
        SCOPE: c.SCOPE_INGEST,
        KEY_IN_BODY: True,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": answers,
    }


def _segment(path: str) -> dict[str, Any]:
    single = path.rsplit("/", 1)[1] not in ("batch", "import")
    call = "One call" if single else "A batch of calls"
    return _operation(
        f"Segment HTTP Tracking API: {path.rsplit('/', 1)[1]}",
        f"{call} as Segment's and RudderStack's SDKs send it (gzip or not). The key: HTTP Basic"
        " with the key as user name, or `writeKey` in the body. `identify` sets its traits"
        " (or `context.traits`) on `userId`, else `anonymousId`, as of `timestamp`;"
        " `messageId` is the event_id. Other call types are counted as ignored. At most"
        f" {c.SEGMENT_MAX_MESSAGE_BYTES // 1024} KB a message,"
        f" {c.SEGMENT_MAX_BATCH_BYTES // 1024} KB a request.",
        {
            "200": _json(_object("success", success={"const": True}), "Durably stored"),
            **_errors(
                _SEGMENT_ERROR,
                {
                    "400": "Not JSON, not a batch, or over Segment's size limits",
                    "401": "No key, or not a live profilehook key (`unauthorized`)",
                },
            ),
        },
        _MESSAGE if single else _SEGMENT_BATCH,
    )


def _posthog(path: str) -> dict[str, Any]:
    return _operation(
        f"PostHog capture: {path}",
        'One event, a list, or `{"batch": [...]}` as PostHog\'s SDKs send them; the key as'
        " `api_key` or `token` (also in an event's `properties`). gzip as `Content-Encoding`"
        " or `?compression=gzip-js`. `$set`, `$set_once` and `$unset` (in `properties` or at"
        " the top level) update the person `distinct_id` as of `timestamp`; `uuid` is the"
        " event_id. Events that update nothing are counted as ignored.",
        {
            "200": _json(_object("status", status={"const": 1}), "Durably stored"),
            **_errors(
                _POSTHOG_ERROR,
                {
                    "400": "Not JSON, no events, or an event's `uuid` is not a UUID",
                    "401": "No key, or not a live profilehook key (`invalid_api_key`)",
                    "413": f"Body over {c.POSTHOG_MAX_BODY_BYTES // 2**20} MiB (decoded)",
                },
            ),
        },
        _POSTHOG_BODY,
    )


def _posthog_v1(path: str) -> dict[str, Any]:
    result = _object("result", result={"enum": ["ok", "drop"]}, details={"type": "string"})
    operation = _operation(
        f"PostHog capture v1: {path}",
        "`{\"created_at\", \"batch\": [...]}` as posthog-python sends it with"
        " `capture_mode=\"v1\"`: the key as a Bearer token; gzip or deflate as"
        " `Content-Encoding`. Events map as on the v0 paths; the answer has a result per event"
        " uuid: `ok` (stored, or nothing to store) or `drop` with the reason (no usable"
        " `distinct_id`, an invalid timestamp or update), which the SDK does not retry.",
        {
            "200": _json(
                _object("results", results={"type": "object", "additionalProperties": result}),
                "Durably stored; a result per event",
            ),
            **_errors(
                _POSTHOG_ERROR,
                {
                    "400": "Not JSON, no events, or an event's `uuid` is not a UUID",
                    "401": "No Bearer key, or not a live profilehook key",
                    "413": f"Body over {c.POSTHOG_MAX_BODY_BYTES // 2**20} MiB (decoded)",
                },
            ),
        },
        _object("batch", batch={"type": "array", "items": _POSTHOG_EVENT, "minItems": 1},
                created_at={"type": "string"}),
    )  # fmt: skip
    del operation[KEY_IN_BODY]  # a Bearer token, as every native route
    return operation


def _amplitude(path: str) -> dict[str, Any]:
    identify = path.endswith("/identify")
    operation = _operation(
        f"Amplitude {'Identify API' if identify else 'HTTP V2 / Batch API'}: {path}",
        (
            "A form with `api_key` and `identification` (JSON: one object or a list)"
            if identify
            else "`{\"api_key\", \"events\": [...]}` as amplitude-analytics sends it"
        )
        + ". `user_properties` update `user_id` as of `time` (ms): `$set`, `$setOnce`, `$add`,"
        " `$append`, `$postInsert`, `$remove`, `$unset`, `$clearAll` and plain keys;"
        " `insert_id` is the event_id. The SDK reads the JSON `code` of every answer.",
        {
            "200": (
                {"description": "Durably stored", "content": {"text/plain": {"schema": {"const": "success"}}}}
                if identify
                else _json(
                    _object("code", "events_ingested", code={"const": 200},
                            events_ingested={"type": "integer"},
                            payload_size_bytes={"type": "integer"},
                            server_upload_time={"type": "integer"}),
                    "Durably stored",
                )
            ),
            **_errors(
                _AMPLITUDE_ERROR,
                {
                    "400": "A missing field, invalid events (nothing stored), or a wrong key"
                    " (`Invalid API key: …`)",
                    "413": f"Body over {c.AMPLITUDE_HTTP_MAX_BODY_BYTES // 2**20} MiB (decoded)",
                },
            ),
        },
        _AMPLITUDE_BODY,
    )  # fmt: skip
    if identify:
        form = {"schema": _object("api_key", "identification")}
        operation["requestBody"]["content"] = {"application/x-www-form-urlencoded": form}
    return operation


def peer_paths() -> dict[str, Any]:
    """Every SDK-compatible path and its POST operation."""
    paths: dict[str, Any] = {}
    for build, found in (
        (_segment, SEGMENT_PATHS),
        (_posthog, POSTHOG_PATHS),
        (_posthog_v1, POSTHOG_V1_PATHS),
        (_amplitude, AMPLITUDE_PATHS),
    ):
        for path in found:
            paths[path] = {"post": build(path)}
    return paths


def key_security(operation: dict[str, Any]) -> None:
    """State where a peer operation's key goes, in place of the Bearer token."""
    if operation.pop(KEY_IN_BODY, False):
        operation["security"] = (
            [{"basicAuth": []}, {}] if "Segment" in operation["summary"] else [{}]
        )
