"""The OpenAPI 3 document of what the server really does, and a self-contained /docs page.

tests/test_openapi.py checks that every route of the app is described here and that the
answers the tests receive match the documented status codes.
"""

from __future__ import annotations

import html as html_lib
from typing import Any

import msgspec

from profilehook import __version__, filters
from profilehook import constants as c
from profilehook.api.openapi_peers import key_security, peer_paths
from profilehook.sources.kinds import KINDS
from profilehook.sources.webhooks import CreateOption, Kind

# The webhook route's request body, by the media type a kind's sender posts.
_ANY_BODY: dict[str, Any] = {"schema": {}}
_BODY_SCHEMAS: dict[str, dict[str, Any]] = {
    "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
    "application/json": _ANY_BODY,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ERRORS_INGEST = {
    "401": _error("Missing, malformed, unknown or revoked API key: `Invalid API Key`"),
    "408": _error("The body did not arrive within the body timeout; the connection is closed"),
    "413": _error("Body larger than the limit (decoded, when it has a Content-Encoding)"),
    "400": _error(
        "Malformed HTTP, or a body that is not valid in its declared Content-Encoding (a plain"
        " body labelled gzip)"
    ),
    "415": _error(
        "A declared Content-Type that is not JSON, or a Content-Encoding other than gzip,"
        " deflate or identity"
    ),
    "422": _json(_ref("ValidationError"), "Every problem found, in FastAPI's format"),
    "429": _error("Over the rate limit of the key or source; retry after `Retry-After` seconds"),
    "503": _error(
        "Storage unavailable or too slow; not known to be stored: retry after `Retry-After`"
        " seconds (with the same `event_id`, a retry is exact)"
    ),
}
_ERRORS_READ = {
    "401": _ERRORS_INGEST["401"],
    "503": _ERRORS_INGEST["503"],
}

_NO_NUL = "^[^\\u0000]*$"
_EVENT_TIME = {
    "type": "number",
    "minimum": 0,
    "maximum": c.MAX_EVENT_TIME_S * 1_000,
    "description": "Unix seconds (decimals allowed); a value >= 1e11 is milliseconds. With"
    " `PROFILEHOOK_HISTORY_RETENTION_DAYS` set, a time older than the window is refused"
    " (422, type `timestamp_too_old`)",
}
_OPERATIONS = ("set_once", "add", "append", "remove", "unset")
_PROPERTY_MAP: dict[str, Any] = {
    "type": "object",
    "maxProperties": c.MAX_PROPERTIES_PER_EVENT,
    "propertyNames": {"minLength": 1, "maxLength": c.MAX_PROPERTY_NAME_CHARS, "pattern": _NO_NUL},
    "additionalProperties": _ref("Value"),
}
_EVENT_IN: dict[str, Any] = {
    "type": "object",
    "required": ["contact_id", "event_name"],
    "propertyNames": {"pattern": _NO_NUL},
    "additionalProperties": _ref("Value"),
    "allOf": [
        {
            "anyOf": [
                {"required": ["timestamp"]},
                {"required": ["time"], "properties": {"time": _EVENT_TIME}},
            ]
        },
        {"anyOf": [{"required": [field]} for field in ("user_properties", *_OPERATIONS)]},
    ],
    "description": "`timestamp` is required; `time` is accepted in its place when it is absent."
    " Unknown fields are ignored; a repeated key keeps its last value. Integers must lie within"
    f" ±{c.MAX_JSON_INT} (I-JSON), strings may not contain U+0000, nesting is at most"
    f" {c.MAX_JSON_DEPTH} levels.",
    "properties": {
        "contact_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": c.MAX_CONTACT_ID_CHARS,
            "pattern": _NO_NUL,
        },
        "event_name": {
            "type": "string",
            "minLength": 1,
            "maxLength": c.MAX_PROPERTY_NAME_CHARS,
            "pattern": _NO_NUL,
        },
        "timestamp": _EVENT_TIME,
        "time": {
            **_ref("Value"),
            "description": "Alias of `timestamp`, read only when `timestamp` is absent",
        },
        "event_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": c.MAX_EVENT_ID_CHARS,
            "pattern": _NO_NUL,
            "description": "Idempotency key; a UUID4 is generated when absent",
        },
        "user_properties": {
            "type": "object",
            "maxProperties": c.MAX_PROPERTIES_PER_EVENT,
            "propertyNames": {
                "minLength": 1,
                "maxLength": c.MAX_PROPERTY_NAME_CHARS,
                "pattern": _NO_NUL,
            },
            "additionalProperties": _ref("Value"),
            "description": "Properties to set; `null` unsets one. May be absent when the"
            " event has an operation (`set_once`, `add`, `append`, `remove`, `unset`); a"
            " property may be in only one of them (else 422). They fold in event-time order"
            " whatever order events arrive in (README, Property operations)",
        },
        "set_once": {
            **_PROPERTY_MAP,
            "description": "Properties to set only when absent",
        },
        "add": {
            **_PROPERTY_MAP,
            "additionalProperties": {
                "anyOf": [
                    {"type": "integer", "minimum": -c.MAX_JSON_INT, "maximum": c.MAX_JSON_INT},
                    {"type": "number", "not": {"type": "integer"}},
                ]
            },
            "description": "Numbers to add (to a number; an absent property starts at 0)",
        },
        "append": {
            **_PROPERTY_MAP,
            "additionalProperties": {"type": "array", "items": _ref("Value")},
            "description": "Items to add to a list, those not in it already",
        },
        "remove": {
            **_PROPERTY_MAP,
            "additionalProperties": {"type": "array", "items": _ref("Value")},
            "description": "Items to take out of a list",
        },
        "unset": {
            "type": "array",
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": c.MAX_PROPERTY_NAME_CHARS,
                "pattern": _NO_NUL,
            },
            "description": "Properties to unset",
        },
        "metadata": {
            "anyOf": [
                {
                    "type": "object",
                    "propertyNames": {"pattern": _NO_NUL},
                    "additionalProperties": _ref("Value"),
                },
                {"type": "null"},
            ]
        },
    },
}
# What a property value may be: any JSON a consumer holds exactly.
_VALUE: dict[str, Any] = {
    "anyOf": [
        {"type": ["null", "boolean"]},
        {"type": "integer", "minimum": -c.MAX_JSON_INT, "maximum": c.MAX_JSON_INT},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "string", "pattern": _NO_NUL},
        {"type": "array", "items": _ref("Value")},
        {
            "type": "object",
            "propertyNames": {"pattern": _NO_NUL},
            "additionalProperties": _ref("Value"),
        },
    ]
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"type": "string"}},
    },
    "ValidationError": {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"type": "array", "items": _ref("Problem")}},
    },
    "Problem": {
        "type": "object",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
            "input": {},
            "ctx": {"type": "object"},
        },
    },
    "PropertyUpdate": _EVENT_IN,
    "Value": _VALUE,
    "Batch": {
        "type": "object",
        "required": ["events"],
        "propertyNames": {"pattern": _NO_NUL},
        "additionalProperties": _ref("Value"),
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": c.MAX_BATCH_EVENTS,
                "description": "Events as in PropertyUpdate, each checked alone: invalid ones are"
                " reported, and the batch is refused only when none is valid",
                "items": _ref("Value"),
                "contains": _ref("PropertyUpdate"),
            }
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["status", "event_id"],
        "properties": {"status": {"const": "accepted"}, "event_id": {"type": "string"}},
    },
    "BatchAccepted": {
        "type": "object",
        "required": ["accepted", "rejected", "results"],
        "properties": {
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "status"],
                    "properties": {
                        "index": {"type": "integer"},
                        "status": {"enum": ["accepted", "rejected"]},
                        "event_id": {"type": "string"},
                        "detail": {"type": "array", "items": _ref("Problem")},
                    },
                },
            },
        },
    },
    "WebhookAccepted": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"const": "accepted"},
            "event_ids": {"type": "array", "items": {"type": "string"}},
            "accepted": {"type": "integer"},
            "skipped": {"type": "integer"},
            "ignored": {"type": "integer"},
        },
    },
    "Contact": {
        "type": "object",
        "required": ["contact_id", "properties", "updated_at", "versions"],
        "properties": {
            "contact_id": {"type": "string"},
            "properties": {"type": "object"},
            "updated_at": {"type": "string", "format": "date-time"},
            "versions": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["timestamp", "event_id"],
                    "properties": {"timestamp": {"type": "number"}, "event_id": {"type": "string"}},
                },
            },
        },
    },
    "Event": {
        "type": "object",
        "required": ["event_id", "status", "contact_id", "source", "received_at", "applied_at"],
        "properties": {
            "event_id": {"type": "string"},
            "status": {"enum": ["queued", "applied", "duplicate", "failed", "erased"]},
            "contact_id": {"type": "string"},
            "source": {"type": "string"},
            "kind": {"enum": ["update", "delete"]},
            "event_name": {"type": "string"},
            "timestamp": {"type": "number"},
            "properties": {"type": "object"},
            "operations": {
                "type": "object",
                "additionalProperties": {
                    "enum": ["set", "unset", "set_once", "add", "append", "remove"]
                },
                "description": "What the event does to each of its properties; `properties`"
                " holds the values (the arguments)",
            },
            "metadata": {"type": ["object", "null"]},
            "received_at": {"type": "string", "format": "date-time"},
            "applied_at": {"type": ["string", "null"], "format": "date-time"},
            "error": {
                "type": ["string", "null"],
                "description": "Why it failed; on an applied event, an operation that changed"
                " nothing (`add` on a value that is not a number)",
            },
        },
    },
    "History": {
        "type": "object",
        "required": ["contact_id", "events", "next_cursor"],
        "properties": {
            "contact_id": {"type": "string"},
            "events": {"type": "array", "items": _ref("Event")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
    "Erasure": {
        "type": "object",
        "required": ["erasure_id", "status", "contact_id", "suppress", "requested_at"],
        "properties": {
            "erasure_id": {"type": "string"},
            "status": {"enum": ["pending", "done"]},
            "contact_id": {"type": "string"},
            "suppress": {"type": "boolean"},
            "requested_at": {"type": "string", "format": "date-time"},
            "completed_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Suppression": {
        "type": "object",
        "required": ["contact_id", "suppressed"],
        "properties": {"contact_id": {"type": "string"}, "suppressed": {"const": False}},
    },
}

# -- the management API (api/management.py) -----------------------------------------------------

_DATE_TIME = {"type": "string", "format": "date-time"}
_SCOPE_NAMES = {"enum": list(c.SCOPES)}
_KEY_PROPERTIES: dict[str, Any] = {
    "key_id": {"type": "string"},
    "workspace": {"type": "string"},
    "scopes": {"type": "array", "items": _SCOPE_NAMES},
    "created_at": _DATE_TIME,
    "revoked_at": {"type": ["string", "null"], "format": "date-time"},
}
_SOURCE_PROPERTIES: dict[str, Any] = {
    "source_id": {"type": "string"},
    "url": {"type": "string", "description": "The webhook URL to give the sender"},
    "kind": {"enum": list(KINDS)},
    "workspace": {"type": "string"},
    "config": {"type": "object", "description": "The source's options (never its secrets)"},
    "active_secrets": {"type": "integer", "minimum": 0},
}


def _option_schema(option: CreateOption) -> dict[str, Any]:
    if option.is_flag:
        schema: dict[str, Any] = {"type": "boolean", "default": False}
    elif option.json_schema is not None:
        schema = dict(option.json_schema)
    elif option.multiple:
        schema = {"type": "array", "items": {"type": "string", "minLength": 1}}
    else:
        schema = {"type": "string", "minLength": 1}
    if option.help:
        schema.setdefault("description", f"`{option.flag}`: {option.help}")
    return schema


def _source_create(kind: Kind) -> dict[str, Any]:
    """``POST /v1/sources``'s body for one kind: its ``sources create <kind>`` options."""
    settable = [o for o in kind.options if o.parse is None or o.from_json is not None]
    return {
        "type": "object",
        "title": kind.title,
        "required": ["kind", *(o.key for o in settable if o.required)],
        "additionalProperties": False,
        "properties": {
            "kind": {"const": kind.name},
            **{option.key: _option_schema(option) for option in settable},
        },
    }


_SCHEMAS.update(
    {
        "Key": {
            "type": "object",
            "required": list(_KEY_PROPERTIES),
            "properties": _KEY_PROPERTIES,
        },
        "KeyCreate": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "scopes": {
                    "type": "array",
                    "items": _SCOPE_NAMES,
                    "minItems": 1,
                    "default": list(c.DEFAULT_KEY_SCOPES),
                    "description": "`admin` implies the others",
                },
            },
        },
        "KeyCreated": {
            "type": "object",
            "required": ["key", "key_id", "workspace", "scopes"],
            "properties": {
                "key": {"type": "string", "description": "The key: shown only now"},
                "key_id": {"type": "string"},
                "workspace": {"type": "string"},
                "scopes": {"type": "array", "items": _SCOPE_NAMES},
            },
        },
        "KeyRevoked": {
            "type": "object",
            "required": [*_KEY_PROPERTIES, "already_revoked"],
            "properties": {
                **_KEY_PROPERTIES,
                "already_revoked": {
                    "type": "boolean",
                    "description": "Revoked before this call (nothing changed)",
                },
                "warning": {
                    "type": "string",
                    "description": "The workspace has no live admin key left",
                },
            },
        },
        "Source": {
            "type": "object",
            "required": list(_SOURCE_PROPERTIES),
            "properties": _SOURCE_PROPERTIES,
        },
        "SourceDeleted": {
            "type": "object",
            "required": [*_SOURCE_PROPERTIES, "deleted"],
            "properties": {**_SOURCE_PROPERTIES, "deleted": {"const": True}},
        },
        "SourceCreate": {"oneOf": [_source_create(kind) for kind in KINDS.values()]},
        "SourceCreated": {
            "type": "object",
            "required": ["source_id", "url", "kind", "workspace"],
            "properties": {
                "source_id": {"type": "string"},
                "url": {
                    "type": "string",
                    "description": "The webhook URL to give the sender (with its `?token=`)",
                },
                "kind": {"enum": list(KINDS)},
                "workspace": {"type": "string"},
                "secret": {"type": "string", "description": "Header secret: shown only now"},
                "token": {"type": "string", "description": "`?token=` secret: shown only now"},
            },
        },
        "SourceRotate": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "revoke_oldest": {
                    "type": "boolean",
                    "default": False,
                    "description": "Rotate although two secrets are active: the older stops now",
                },
                "drop_previous": {
                    "type": "boolean",
                    "default": False,
                    "description": "Finish a rotation: only the newest secret keeps working",
                },
            },
            # Two different rotations: asking for both at once is refused (422).
            "not": {
                "required": ["revoke_oldest", "drop_previous"],
                "properties": {
                    "revoke_oldest": {"const": True},
                    "drop_previous": {"const": True},
                },
            },
        },
        "SourceRotated": {
            "type": "object",
            "required": ["source_id", "secret", "url"],
            "properties": {
                "source_id": {"type": "string"},
                "secret": {"type": "string", "description": "The new secret: shown only now"},
                "url": {"type": "string"},
            },
        },
    }
)
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SOURCE_ID = {"name": "source_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ERRORS_ADMIN = {
    "401": _error("Missing, malformed, unknown or revoked API key: `Invalid API Key`"),
    "503": _error("Storage unavailable or too slow: retry after `Retry-After` seconds"),
}
_ERRORS_BODY = {
    "413": _error("Body larger than 64 KiB"),
    "415": _error("A declared Content-Type that is not JSON"),
    "422": _json(_ref("ValidationError"), "Every problem found, in FastAPI's format"),
}


def _management_paths() -> dict[str, Any]:
    own = "The key's own workspace only: another workspace's is a 404."
    return {
        "/v1/keys": {
            "get": {
                "summary": "The workspace's keys (never the keys themselves)",
                "description": "As `profilehook keys list --json` prints them.",
                SCOPE: c.SCOPE_ADMIN,
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Key")}, "The keys"),
                    **_ERRORS_ADMIN,
                },
            },
            "post": {
                "summary": "Create a key of the workspace; the key is in this answer only",
                "description": "As `profilehook keys create --scope S... --json`. A body that"
                " names a `workspace` must name the key's own. Unknown fields are refused.",
                SCOPE: c.SCOPE_ADMIN,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("KeyCreate")}},
                },
                "responses": {
                    "201": _json(_ref("KeyCreated"), "Created"),
                    **_ERRORS_BODY,
                    **_ERRORS_ADMIN,
                },
            },
        },
        "/v1/keys/{key_id}": {
            "delete": {
                "summary": "Revoke a key: refused from the next request on",
                "description": "As `profilehook keys revoke`. Revoking again changes nothing"
                " (`already_revoked`); revoking the workspace's last admin key is allowed,"
                f" with a `warning`. {own}",
                SCOPE: c.SCOPE_ADMIN,
                "parameters": [_KEY_ID],
                "responses": {
                    "200": _json(_ref("KeyRevoked"), "Revoked"),
                    "404": _error("`No key with id '…'`"),
                    **_ERRORS_ADMIN,
                },
            }
        },
        "/v1/sources": {
            "get": {
                "summary": "The workspace's webhook sources (never their secrets)",
                "description": "As `profilehook sources list --json` prints them.",
                SCOPE: c.SCOPE_ADMIN,
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Source")}, "The sources"),
                    **_ERRORS_ADMIN,
                },
            },
            "post": {
                "summary": "Create a webhook source; its secret is in this answer only",
                "description": "As `profilehook sources create <kind> --json`: `kind` and that"
                " kind's options by name (`--contact-field` is `contact_field`; a pinned"
                " `--public-key` is `public_keys`, key id to PEM text). A body that names a"
                " `workspace` must name the key's own. Unknown fields are refused.",
                SCOPE: c.SCOPE_ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SourceCreate")}},
                },
                "responses": {
                    "201": _json(_ref("SourceCreated"), "Created"),
                    **_ERRORS_BODY,
                    **_ERRORS_ADMIN,
                },
            },
        },
        "/v1/sources/{source_id}": {
            "get": {
                "summary": "A source: its URL, options, how many secrets are active",
                "description": f"As `profilehook sources show`. {own}",
                SCOPE: c.SCOPE_ADMIN,
                "parameters": [_SOURCE_ID],
                "responses": {
                    "200": _json(_ref("Source"), "The source"),
                    "404": _error("`No source with id '…'`"),
                    **_ERRORS_ADMIN,
                },
            },
            "delete": {
                "summary": "Delete a source: its webhook calls are answered 404 from now on",
                "description": f"As `profilehook sources delete --json`. {own}",
                SCOPE: c.SCOPE_ADMIN,
                "parameters": [_SOURCE_ID],
                "responses": {
                    "200": _json(_ref("SourceDeleted"), "Deleted"),
                    "404": _error("`No source with id '…'` (also when deleted already)"),
                    **_ERRORS_ADMIN,
                },
            },
        },
        "/v1/sources/{source_id}/rotate": {
            "post": {
                "summary": "Issue a new secret; the previous one works until `drop_previous`",
                "description": "As `profilehook sources rotate [--revoke-oldest | --drop-previous]"
                " --json`: a new secret (`SourceRotated`), or with `drop_previous` the source"
                f" as it is then (`Source`). {own}",
                SCOPE: c.SCOPE_ADMIN,
                "parameters": [_SOURCE_ID],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("SourceRotate")}},
                },
                "responses": {
                    "200": _json(
                        {"oneOf": [_ref("SourceRotated"), _ref("Source")]},
                        "Rotated, or the previous secret dropped",
                    ),
                    "404": _error("`No source with id '…'`"),
                    "409": _error(
                        "Refused, nothing changed: the source has no secret (a Copernica source"
                        " without a token), or a rotation is under way (two secrets active)"
                    ),
                    **_ERRORS_BODY,
                    **_ERRORS_ADMIN,
                },
            }
        },
    }


def _query_paths() -> dict[str, Any]:
    return {
        "/v1/contacts/query": {
            "post": {
                "summary": "The contacts that match a filter, paged by contact id",
                "description": "Each contact as `GET /v1/contacts/{contact_id}` shows it."
                " `next_cursor` continues the listing (null: the last page); with `count`, the"
                " number of matches of the whole listing.",
                SCOPE: c.SCOPE_READ,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ContactQuery")}},
                },
                "responses": {
                    "200": _json(_ref("ContactPage"), "A page of matching contacts"),
                    **_ERRORS_BODY,
                    **_ERRORS_READ,
                },
            }
        },
    }


_SEGMENT_ID = {"name": "segment_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NO_SEGMENT = {"404": _error("`Segment not found` (also for another workspace's segment)")}


def _segment_paths() -> dict[str, Any]:
    page = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": c.QUERY_PAGE_MAX},
        },
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    ]
    return {
        "/v1/segments": {
            "post": {
                "summary": "Create a segment: filled from the profiles in the background, then"
                " kept current as events apply",
                SCOPE: c.SCOPE_ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SegmentCreate")}},
                },
                "responses": {
                    "201": _json(_ref("Segment"), "Created, `building` until filled"),
                    **_ERRORS_BODY,
                    **_ERRORS_READ,
                },
            },
            "get": {
                "summary": "The workspace's segments",
                SCOPE: c.SCOPE_READ,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"segments": {"type": "array", "items": _ref("Segment")}},
                        },
                        "Oldest first",
                    ),
                    **_ERRORS_READ,
                },
            },
        },
        "/v1/segments/{segment_id}": {
            "get": {
                "summary": "A segment: its size, its status and its backfill's progress",
                SCOPE: c.SCOPE_READ,
                "parameters": [_SEGMENT_ID],
                "responses": {
                    "200": _json(_ref("Segment"), "The segment"),
                    **_NO_SEGMENT,
                    **_ERRORS_READ,
                },
            },
            "delete": {
                "summary": "Delete a segment and its members",
                SCOPE: c.SCOPE_ADMIN,
                "parameters": [_SEGMENT_ID],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "segment_id": {"type": "string"},
                                "deleted": {"type": "boolean"},
                            },
                        },
                        "Deleted",
                    ),
                    **_NO_SEGMENT,
                    **_ERRORS_READ,
                },
            },
        },
        "/v1/segments/{segment_id}/contacts": {
            "get": {
                "summary": "A segment's members, paged by contact id",
                SCOPE: c.SCOPE_READ,
                "parameters": [_SEGMENT_ID, *page],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "segment_id": {"type": "string"},
                                "contacts": {"type": "array", "items": _ref("Contact")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                        "A page of members",
                    ),
                    "422": _ERRORS_BODY["422"],
                    **_NO_SEGMENT,
                    **_ERRORS_READ,
                },
            }
        },
    }


_SCHEMAS.update(filters.json_schemas())
_SCHEMAS["SegmentCreate"] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": c.MAX_SEGMENT_NAME_CHARS},
        "filter": _ref("Filter"),
    },
    "required": ["name", "filter"],
    "additionalProperties": False,
}
_SCHEMAS["Segment"] = {
    "type": "object",
    "properties": {
        "segment_id": {"type": "string"},
        "name": {"type": "string"},
        "filter": _ref("Filter"),
        "size": {"type": "integer", "description": "Its members now"},
        "status": {"enum": ["building", "ready"]},
        "scanned": {"type": "integer", "description": "Contacts the backfill has looked at"},
        "created_at": {"type": "number", "description": "Unix seconds"},
    },
    "required": ["segment_id", "name", "filter", "size", "status", "scanned", "created_at"],
}
_SCHEMAS["ContactPage"] = {
    "type": "object",
    "properties": {
        "contacts": {"type": "array", "items": _ref("Contact")},
        "next_cursor": {"type": ["string", "null"]},
        "count": {"type": ["integer", "null"]},
    },
    "required": ["contacts", "next_cursor", "count"],
}


SCOPE = "x-scope"
"""An operation's key scope (api/access.py): ``_paths`` adds its security, its 403 and a line
saying which scope it needs. tests/test_access.py checks it against the routes' own."""
_CONTACT_ID = {
    "name": "contact_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Percent-encoded; `/` inside an id as `%2F`",
}


_MALFORMED = {"400": _error("Malformed HTTP (request line, headers or framing)")}


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/properties": {
            "post": {
                "summary": "Send one property update",
                SCOPE: "ingest",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PropertyUpdate")}},
                },
                "responses": {
                    "202": _json(_ref("Accepted"), "Durably stored; applied asynchronously"),
                    **_ERRORS_INGEST,
                },
            }
        },
        "/v1/properties/batch": {
            "post": {
                "summary": f"Send up to {c.MAX_BATCH_EVENTS} property updates",
                SCOPE: "ingest",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Batch")}},
                },
                "responses": {
                    "202": _json(_ref("BatchAccepted"), "Valid events stored, invalid ones listed"),
                    **_ERRORS_INGEST,
                },
            }
        },
        "/v1/webhooks/{source_id}": {
            "post": {
                "summary": f"A {' or '.join(k.title for k in KINDS.values())} webhook,"
                " authenticated as its source requires",
                "description": " ".join(k.openapi for k in KINDS.values())
                + " Answers 200 after durable storage.",
                "parameters": [
                    {
                        "name": "source_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        k.media_type: _BODY_SCHEMAS.get(k.media_type, _ANY_BODY)
                        for k in KINDS.values()
                    },
                },
                "responses": {
                    "200": _json(_ref("WebhookAccepted"), "Stored durably"),
                    "401": _error("Signature, token or secret refused; `detail` says which check"),
                    "404": _error("`Source not found`"),
                    "400": _ERRORS_INGEST["400"],
                    "408": _ERRORS_INGEST["408"],
                    "413": _ERRORS_INGEST["413"],
                    "415": _ERRORS_INGEST["415"],
                    "422": _ERRORS_INGEST["422"],
                    "429": _ERRORS_INGEST["429"],
                    "501": _error("This kind of source needs an extra that is not installed"),
                    "503": _ERRORS_INGEST["503"],
                },
            }
        },
        "/v1/contacts/{contact_id}": {
            "get": {
                "summary": "A contact's current properties, each with its version",
                SCOPE: "read",
                "parameters": [_CONTACT_ID],
                "responses": {
                    "200": _json(_ref("Contact"), "The profile"),
                    "404": _error("`Contact not found` (also for another workspace's contact)"),
                    **_ERRORS_READ,
                },
            },
            "delete": {
                "summary": "Erase a contact: nothing of it remains once the erasure is done",
                "description": "Its profile, history, aliases and events still in the log, up to"
                " now (T). Its events with an event time at or before T that arrive later are"
                " dropped (status `erased`); later ones start a new profile. `suppress=true`"
                " drops every later event too, until `DELETE /v1/suppressions/{contact_id}`. A"
                " contact never seen is answered the same (202): the answer does not tell"
                " whether it exists.",
                SCOPE: c.SCOPE_ADMIN,
                "parameters": [
                    _CONTACT_ID,
                    {
                        "name": "suppress",
                        "in": "query",
                        "schema": {"type": "boolean", "default": False},
                    },
                ],
                "responses": {
                    "202": _json(_ref("Erasure"), "Recorded; follow it at /v1/erasures/{id}"),
                    "422": _ERRORS_INGEST["422"],
                    **_ERRORS_READ,
                },
            },
        },
        "/v1/erasures/{erasure_id}": {
            "get": {
                "summary": "An erasure's status: pending, or done with completed_at",
                SCOPE: c.SCOPE_ADMIN,
                "parameters": [
                    {
                        "name": "erasure_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(_ref("Erasure"), "The erasure"),
                    "404": _error("`Erasure not found` (also another workspace's)"),
                    **_ERRORS_READ,
                },
            }
        },
        "/v1/suppressions/{contact_id}": {
            "delete": {
                "summary": "Let a suppressed contact's later events in again",
                SCOPE: c.SCOPE_ADMIN,
                "parameters": [_CONTACT_ID],
                "responses": {
                    "200": _json(_ref("Suppression"), "No longer suppressed"),
                    "404": _error("`Contact is not suppressed`"),
                    "422": _ERRORS_INGEST["422"],
                    **_ERRORS_READ,
                },
            }
        },
        "/v1/contacts/{contact_id}/history": {
            "get": {
                "summary": "A contact's applied events, newest first, paged",
                SCOPE: "read",
                "parameters": [
                    _CONTACT_ID,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": c.HISTORY_PAGE_MAX,
                            "default": c.HISTORY_PAGE_DEFAULT,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "`next_cursor` of the previous page",
                    },
                ],
                "responses": {
                    "200": _json(
                        _ref("History"),
                        "One page of events (what history retention has not purged)",
                    ),
                    "404": _error("`Contact not found`"),
                    "422": _ERRORS_INGEST["422"],
                    **_ERRORS_READ,
                },
            }
        },
        "/v1/events/{event_id}": {
            "get": {
                "summary": "An event's status: queued, applied, duplicate, failed or erased",
                SCOPE: "read",
                "parameters": [
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(_ref("Event"), "The event"),
                    "404": _error(
                        "`Event not found` (also an event that history retention purged)"
                    ),
                    **_ERRORS_READ,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "responses": {"200": _json(_ref("Status"), "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The log and the store answer",
                "responses": {
                    "200": _json(_ref("Status"), "Ready"),
                    "503": _error("A backend is unreachable, or the applier is stalled"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
        },
        "/docs": {
            "get": {
                "summary": "This document as a page",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
    }
    paths.update(_management_paths())
    paths.update(peer_paths())
    paths.update(_query_paths())
    paths.update(_segment_paths())
    paths.update(_change_paths())
    paths.update(_destination_paths())
    for operations in paths.values():
        for operation in operations.values():
            operation["responses"] = {**_MALFORMED, **operation["responses"]}
            scope = operation.get(SCOPE)
            if scope is not None:
                _needs(operation, scope)
            key_security(operation)
    return paths


_SCHEMAS.update(
    {
        "Change": {
            "type": "object",
            "description": "One applied event's effect on one profile",
            "required": [
                "change_id",
                "cursor",
                "contact_id",
                "event_id",
                "source",
                "applied_at",
                "deleted",
                "properties",
                "segments",
            ],
            "properties": {
                "change_id": {"type": "string", "description": "Stable: a webhook's webhook-id"},
                "cursor": {"type": "string", "description": "Its place in the feed (`after`)"},
                "contact_id": {"type": "string"},
                "event_id": {"type": "string"},
                "source": {"type": "string"},
                "applied_at": {"type": "string", "format": "date-time"},
                "deleted": {"type": "boolean", "description": "The event deleted the contact"},
                "properties": {
                    "type": "object",
                    "description": "Per property that changed: `{old, new}` (null: none)",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["old", "new"],
                        "properties": {"old": {}, "new": {}},
                    },
                },
                "segments": {
                    "type": "object",
                    "required": ["entered", "exited"],
                    "properties": {
                        "entered": {"type": "array", "items": {"type": "string"}},
                        "exited": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
        "ChangePage": {
            "type": "object",
            "required": ["changes", "next_cursor"],
            "properties": {
                "changes": {"type": "array", "items": _ref("Change")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as `after` for what comes next (null: none yet)",
                },
            },
        },
    }
)
_CHANGES_PARAMETERS = [
    {
        "name": "after",
        "in": "query",
        "schema": {"type": "string"},
        "description": "A cursor from this feed; absent: from the oldest change kept",
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": c.CHANGES_PAGE_MAX,
            "default": c.CHANGES_PAGE_DEFAULT,
        },
    },
]
_CHANGES_ERRORS = {
    "410": _error("The cursor has expired: changes after it were purged; read from the start"),
    "422": _ERRORS_INGEST["422"],
    **_ERRORS_READ,
}


def _change_paths() -> dict[str, Any]:
    return {
        "/v1/changes": {
            "get": {
                "summary": "Changes after a cursor, in apply order; long-polls up to wait_s",
                "description": "Answered at once when changes exist past `after`; otherwise"
                " when one comes or `wait_s` has passed (then with none). Follow"
                " `next_cursor`: every change once, in the order it was applied.",
                SCOPE: "read",
                "parameters": [
                    *_CHANGES_PARAMETERS,
                    {
                        "name": "wait_s",
                        "in": "query",
                        "schema": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": c.CHANGES_WAIT_MAX_S,
                            "default": 0,
                        },
                    },
                ],
                "responses": {
                    "200": _json(_ref("ChangePage"), "The changes (maybe none)"),
                    **_CHANGES_ERRORS,
                },
            }
        },
        "/v1/changes/stream": {
            "get": {
                "summary": "The changes as Server-Sent Events; Last-Event-ID resumes",
                "description": "Each event's `id` is the change's cursor and its `data` the"
                " change; a reconnecting client's `Last-Event-ID` takes the place of `after`.",
                SCOPE: "read",
                "parameters": _CHANGES_PARAMETERS,
                "responses": {
                    "200": {
                        "description": "A stream of `text/event-stream` events",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_CHANGES_ERRORS,
                },
            }
        },
    }


def _needs(operation: dict[str, Any], scope: str) -> None:
    """Document that ``operation`` needs a key with ``scope`` (``admin`` implies every scope)."""
    operation["security"] = [{"apiKey": []}]
    needs = f"Needs a key with the `{scope}` scope" + (
        "." if scope == c.SCOPE_ADMIN else f" (or `{c.SCOPE_ADMIN}`)."
    )
    described = operation.get("description")
    operation["description"] = f"{needs} {described}" if described else needs
    operation["responses"]["403"] = _error(
        f"The key lacks the scope: `This key lacks the '{scope}' scope`"
    )
    operation["responses"] = dict(sorted(operation["responses"].items()))


def document(base_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "profilehook",
            "version": __version__,
            "description": "Real-time user-property updates, stored durably before the answer"
            " and applied by event time into one profile per contact. Keys carry scopes:"
            " `ingest` (send updates), `read` (profiles and events), `admin` (everything,"
            " management included); a key without the scope a route needs gets a 403.",
        },
        "servers": [{"url": base_url}],
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "basicAuth": {"type": "http", "scheme": "basic"},
            },
        },
    }


def html(doc: dict[str, Any]) -> str:
    """A readable page of the document, with nothing fetched from elsewhere."""
    esc = html_lib.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>profilehook API</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.6rem;"
        "overflow:auto}h2{border-top:1px solid #ddd;padding-top:1rem}</style></head><body>",
        f"<h1>{esc(doc['info']['title'])} {esc(doc['info']['version'])}</h1>",
        f"<p>{esc(doc['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>."
        " Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>; each route says"
        " which scope its key needs (<code>ingest</code>, <code>read</code> or"
        " <code>admin</code>, which implies the others).</p>",
    ]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            parts.append(f"<h2><code>{method.upper()} {esc(path)}</code></h2>")
            parts.append(f"<p>{esc(op['summary'])}</p>")
            if op.get("description"):
                parts.append(f"<p>{esc(op['description'])}</p>")
            parts.append("<ul>")
            for status, response in op["responses"].items():
                parts.append(f"<li><b>{status}</b> {esc(response['description'])}</li>")
            parts.append("</ul>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        pretty = msgspec.json.format(msgspec.json.encode(schema)).decode()
        parts.append(f"<h3>{esc(name)}</h3><pre>{esc(pretty)}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


_DESTINATION_ID = {
    "name": "destination_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_NO_DESTINATION = {"404": _error("`Destination not found` (also another workspace's)")}


def _destination_paths() -> dict[str, Any]:
    def admin(summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {
            "summary": summary,
            SCOPE: c.SCOPE_ADMIN,
            **more,
            "responses": {**responses, **_ERRORS_ADMIN},
        }

    deleted = {
        "type": "object",
        "properties": {"destination_id": {"type": "string"}, "deleted": {"type": "boolean"}},
    }
    body = {
        "required": True,
        "content": {"application/json": {"schema": _ref("DestinationCreate")}},
    }
    replay = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"after": {"type": ["string", "null"]}},
                    "required": ["after"],
                }
            }
        },
    }
    deliveries = {
        "type": "object",
        "properties": {
            "destination_id": {"type": "string"},
            "deliveries": {"type": "array", "items": _ref("Delivery")},
        },
    }
    status = {
        "name": "status",
        "in": "query",
        "schema": {"enum": ["pending", "delivered", "failed"]},
    }
    limit = {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    }
    return {
        "/v1/destinations": {
            "post": admin(
                "Create a webhook destination: each matching change is POSTed to it, signed"
                " (Standard Webhooks), retried, in order per contact",
                {
                    "201": _json(_ref("DestinationCreated"), "Created; the secret is shown once"),
                    **_ERRORS_BODY,
                },
                requestBody=body,
            ),
            "get": admin(
                "The workspace's destinations",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "destinations": {"type": "array", "items": _ref("Destination")}
                            },
                        },
                        "Oldest first",
                    )
                },
            ),
        },
        "/v1/destinations/{destination_id}": {
            "get": admin(
                "A destination, and whether it is disabled and why",
                {"200": _json(_ref("Destination"), "The destination"), **_NO_DESTINATION},
                parameters=[_DESTINATION_ID],
            ),
            "delete": admin(
                "Stop and forget a destination",
                {"200": _json(deleted, "Deleted"), **_NO_DESTINATION},
                parameters=[_DESTINATION_ID],
            ),
        },
        "/v1/destinations/{destination_id}/deliveries": {
            "get": admin(
                "The destination's deliveries, newest first: attempts, status code, error,"
                " next retry",
                {
                    "200": _json(deliveries, "Newest first"),
                    "422": _ERRORS_BODY["422"],
                    **_NO_DESTINATION,
                },
                parameters=[_DESTINATION_ID, status, limit],
            ),
        },
        "/v1/destinations/{destination_id}/replay": {
            "post": admin(
                "Deliver again every change after a cursor of the feed (null: the oldest kept)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "destination_id": {"type": "string"},
                                "after": {"type": ["string", "null"]},
                            },
                        },
                        "Replaying",
                    ),
                    "410": _error("The cursor is older than the changes kept"),
                    **_ERRORS_BODY,
                    **_NO_DESTINATION,
                },
                parameters=[_DESTINATION_ID],
                requestBody=replay,
            ),
        },
    }


_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}}
_SCHEMAS["DestinationCreate"] = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "description": "https, resolving to public addresses only"},
        "description": {"type": "string", "maxLength": c.MAX_DESTINATION_DESCRIPTION_CHARS},
        "properties": {**_NAMES, "description": "Only changes of these properties"},
        "segments": {**_NAMES, "description": "Or entries into and exits from these segments"},
    },
    "required": ["url"],
    "additionalProperties": False,
}
_SCHEMAS["Destination"] = {
    "type": "object",
    "properties": {
        "destination_id": {"type": "string"},
        "url": {"type": "string"},
        "description": {"type": "string"},
        "properties": _NAMES,
        "segments": _NAMES,
        "created_at": {"type": "string"},
        "cursor": {"type": ["string", "null"], "description": "The feed looked at up to here"},
        "status": {"enum": ["active", "disabled"]},
        "disabled_at": {"type": ["string", "null"]},
        "disabled_reason": {"type": ["string", "null"]},
        "failing_since": {"type": ["string", "null"]},
    },
}
_SCHEMAS["DestinationCreated"] = {
    "allOf": [
        _ref("Destination"),
        {"type": "object", "properties": {"secret": {"type": "string", "pattern": "^whsec_"}}},
    ]
}
_SCHEMAS["Delivery"] = {
    "type": "object",
    "properties": {
        "change_id": {"type": "string"},
        "cursor": {"type": "string"},
        "contact_id": {"type": "string"},
        "status": {"enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "integer"},
        "status_code": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
        "next_attempt_at": {"type": ["string", "null"]},
        "updated_at": {"type": "string"},
    },
}
