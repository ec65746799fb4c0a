"""Who may call each route. Every route of the app is a ``ScopedRoute``, which declares its
access where it is listed, and enforces it: a route cannot be built without one, and one that
needs a key scope runs its endpoint only for a key with that scope, handing it the key's grant
(so an endpoint has no workspace but the one its key was checked for).

* ``ingest``, ``read``, ``admin``: a key with that scope (``admin`` implies the others);
  without a valid key ``401``, with a key that lacks it ``403`` (errors.MissingScope).
* ``source``: the webhook route; the source named in its path authenticates the call.
* ``public``: health, metrics and the API description.
* ``session``: the console's routes (console/), left out of /openapi.json: its pages need a
  signed-in browser session whose key is still live and has ``read`` (``admin`` for every form
  that changes something), checked on each request by console/web.py; its sign-in form, files
  and API reference page need none.

The raw-ASGI ingest handlers (api/ingest.py) check their scope on the same cached lookup that
finds the key; their routes here (``raw=True``) declare it and answer other methods 405.
tests/test_access.py walks every route of the app and fails on one without a declared access.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, get_args

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from profilehook import keys
from profilehook.constants import SCOPES
from profilehook.stores.base import Catalog, KeyGrant

Access = Literal["ingest", "read", "admin", "source", "public", "session"]
ACCESSES: tuple[str, ...] = get_args(Access)
assert set(SCOPES) <= set(ACCESSES)

Endpoint = Callable[[Request], Awaitable[Response]]
KeyEndpoint = Callable[[Request, KeyGrant], Awaitable[Response]]


async def grant_of(store: Catalog, request: Request, scope: str) -> KeyGrant:
    """The request's key's grant, when it has ``scope``. Raises 401, 403."""
    found = request.headers.getlist("authorization")
    header = found[0] if len(found) == 1 else None  # two keys: refused, not one chosen
    return await keys.authorize(store, header.encode("latin-1") if header else None, scope)


class ScopedRoute(Route):
    """A route and the access it declares (see the module's docstring).

    For a key scope, ``endpoint`` takes ``(request, grant)`` and ``store`` is where keys are
    looked up; ``bound`` wraps the whole (the check included), e.g. in a deadline."""

    def __init__(
        self,
        path: str,
        endpoint: Any,
        *,
        access: Access,
        methods: Sequence[str] = ("GET",),
        store: Catalog | None = None,
        bound: Callable[[Endpoint], Endpoint] | None = None,
        raw: bool = False,
        include_in_schema: bool = True,
    ):
        if access not in ACCESSES:
            raise ValueError(f"{path}: unknown access {access!r}")
        if access in SCOPES and not raw:
            if store is None:
                raise ValueError(f"{path}: a route that needs a key scope needs the store")
            endpoint = _checked(store, access, endpoint)
        if bound is not None:
            endpoint = bound(endpoint)
        super().__init__(path, endpoint, methods=list(methods), include_in_schema=include_in_schema)
        self.access: Access = access
        self.raw = raw


def _checked(store: Catalog, scope: str, endpoint: KeyEndpoint) -> Endpoint:
    async def checked(request: Request) -> Response:
        return await endpoint(request, await grant_of(store, request, scope))

    checked.__name__ = getattr(endpoint, "__name__", "endpoint")
    return checked
