"""Every console route, one line per page module. A new page is a module beside these with
its ``*_routes(console)``, one line below and one entry in ``NAV`` (web.py)."""

from __future__ import annotations

from profilehook.api.access import ScopedRoute
from profilehook.console.assets import asset_routes
from profilehook.console.contacts import contact_routes
from profilehook.console.destinations import destination_routes
from profilehook.console.keys import key_routes
from profilehook.console.live_events import live_routes
from profilehook.console.overview import Series, overview_routes
from profilehook.console.segments import segment_routes
from profilehook.console.signin import signin_routes
from profilehook.console.sources import source_routes
from profilehook.console.web import Console
from profilehook.erasure import Eraser
from profilehook.segments import Backfiller


def console_routes(
    console: Console, series: Series, eraser: Eraser | None, backfiller: Backfiller | None = None
) -> list[ScopedRoute]:
    return [
        *signin_routes(console),
        *overview_routes(console, series),
        *live_routes(console),
        *contact_routes(console, eraser),
        *segment_routes(console, backfiller),
        *source_routes(console),
        *key_routes(console),
        *destination_routes(console),
        *asset_routes(console),
    ]
