"""The console's files (CSS, JS, the vendored libraries: static/vendor/VENDORED.md), served
from the package itself: nothing from a CDN, nothing fetched at run time."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from profilehook.api.access import ScopedRoute
from profilehook.console.web import Console, secured
from profilehook.errors import NotFound

STATIC = Path(str(files("profilehook.console") / "static"))
TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


def asset_path(name: str) -> Path:
    """The file ``name`` under static/. Raises ``NotFound`` for anything else (``..``)."""
    path = (STATIC / name).resolve()
    if STATIC.resolve() not in path.parents or not path.is_file() or path.suffix not in TYPES:
        raise NotFound("Not Found")
    return path


def asset_routes(console: Console) -> list[ScopedRoute]:
    async def asset(request: Request) -> Response:
        try:
            path = asset_path(request.path_params["name"])
        except NotFound:
            return secured(Response("Not Found", status_code=404, media_type="text/plain"))
        response = FileResponse(path, media_type=TYPES[path.suffix])
        response.headers["cache-control"] = "public, max-age=3600"
        return secured(response)

    async def reference(request: Request) -> Response:
        viewer = await console.viewer(request)
        return console.render(request, viewer, "reference.html")

    return [
        console.public("/console/static/{name:path}", asset),
        console.public("/console/reference", reference),
    ]
