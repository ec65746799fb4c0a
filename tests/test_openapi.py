"""/openapi.json describes what the server really does; /docs shows it without fetching anything."""

from __future__ import annotations

from starlette.routing import Route

from tests.test_error_shape import _cases


def _template(path: str) -> str:
    if path == "/v1/contacts/query":
        return path
    if path.startswith("/v1/contacts/"):
        return (
            "/v1/contacts/{contact_id}/history"
            if "/history" in path
            else "/v1/contacts/{contact_id}"
        )
    if path.startswith("/v1/events/"):
        return "/v1/events/{event_id}"
    if path.startswith("/v1/erasures/"):
        return "/v1/erasures/{erasure_id}"
    if path.startswith("/v1/suppressions/"):
        return "/v1/suppressions/{contact_id}"
    return path.split("?")[0]


def test_every_route_and_method_of_the_app_is_documented(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    served = set()
    for route in client.app._starlette.routes:
        assert isinstance(route, Route)
        if not route.include_in_schema:  # the console's pages (HTML, with a session)
            assert getattr(route, "access", None) == "session", route.path
            continue
        for method in route.methods or []:
            if method != "HEAD":
                served.add((method.lower(), route.path))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    # The two contact routes share one Starlette route (ids may contain encoded slashes).
    expected = {(m, _template(p.replace("{rest:path}", "x"))) for m, p in served} | {
        ("get", "/v1/contacts/{contact_id}/history")
    }
    assert documented == expected


def test_every_error_status_the_server_gives_is_documented(client, auth):
    doc = client.get("/openapi.json").json()
    for method, path, headers, body, status in _cases(auth):
        operations = doc["paths"].get(_template(path))
        if operations is None or method.lower() not in operations:
            assert status in (404, 405)
            continue
        r = client.request(method, path, headers=headers, content=body)
        assert str(r.status_code) in operations[method.lower()]["responses"], (method, path)


def test_every_success_answer_matches_its_documented_required_fields(client, auth):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    body = {"contact_id": "c", "event_name": "e", "timestamp": 1, "user_properties": {"a": 1}}
    accepted = client.post("/v1/properties", json=body, headers=auth).json()
    assert set(schemas["Accepted"]["required"]) <= set(accepted)
    batch = client.post("/v1/properties/batch", json={"events": [body]}, headers=auth).json()
    assert set(schemas["BatchAccepted"]["required"]) <= set(batch)
    event = client.get(f"/v1/events/{accepted['event_id']}", headers=auth).json()
    assert set(schemas["Event"]["required"]) <= set(event)
    assert event["status"] in schemas["Event"]["properties"]["status"]["enum"]


def test_docs_page_lists_every_operation_and_loads_nothing_from_elsewhere(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in client.get("/openapi.json").json()["paths"]:
        assert path.replace("{", "").split("}")[0][:12] in page.text.replace("{", "")
    assert "<script" not in page.text and "https://" not in page.text
