"""A's app, served the way ``profilehook serve`` serves it: uvicorn with profilehook's HTTP
protocol (api/protocol.py: one write per response, keep-alive kept by a sweep) and without
proxy-header rewriting. Not a target: a reference for how much of C's ratio to A comes from
serving, not from the app.

    python -m benchmarks.apps.ceiling_on_our_protocol PORT
"""

from __future__ import annotations

import sys

import uvicorn
from benchmarks.apps.ceiling import app

from profilehook.api.protocol import http_protocol
from profilehook.settings import Settings


def main() -> None:
    settings = Settings()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http=http_protocol(settings.header_timeout_s, settings.keep_alive_s),
        access_log=False,
        proxy_headers=False,
        log_level="warning",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
