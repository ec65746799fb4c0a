"""Every error answer, from every route, has the one shape: {"detail": ...} as JSON."""

from __future__ import annotations

import pytest


def _cases(auth: dict[str, str]) -> list[tuple[str, str, dict[str, str], bytes | None, int]]:
    json_ct = {"Content-Type": "application/json"}
    return [
        ("POST", "/v1/properties", {}, b"{}", 401),
        ("POST", "/v1/properties", {**auth, **json_ct}, b"{", 422),
        ("POST", "/v1/properties", {**auth, "Content-Type": "text/plain"}, b"x", 415),
        ("POST", "/v1/properties", {**auth, **json_ct}, b" " * 300_000, 413),
        ("POST", "/v1/properties/batch", {}, b"{}", 401),
        ("POST", "/v1/properties/batch", {**auth, **json_ct}, b"[]", 422),
        ("GET", "/v1/contacts/x", {}, None, 401),
        ("GET", "/v1/contacts/x", auth, None, 404),
        ("GET", "/v1/contacts/x/history", auth, None, 404),
        ("GET", "/v1/contacts/x/history?limit=-1", auth, None, 422),
        ("GET", "/v1/events/x", auth, None, 404),
        ("GET", "/v1/events/x", {}, None, 401),
        ("GET", "/nowhere", {}, None, 404),
        ("DELETE", "/v1/properties", auth, None, 405),
        ("PUT", "/healthz", {}, None, 405),
        ("GET", "/v1/properties/batch", auth, None, 405),
    ]


@pytest.mark.parametrize("index", range(16))
def test_every_error_route_answers_json_detail(client, auth, index):
    method, path, headers, body, status = _cases(auth)[index]
    r = client.request(method, path, headers=headers, content=body)
    assert r.status_code == status, (method, path, r.text)
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert list(r.json()) == ["detail"]
    if status == 422:
        assert all({"loc", "msg", "type"} <= set(p) for p in detail)
    else:
        assert isinstance(detail, str) and detail
