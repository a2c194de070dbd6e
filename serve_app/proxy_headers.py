"""A Serve HTTP proxy middleware that removes the per-request Serve headers clients could send.

Serve 2.60's proxy reads `x-request-timeout-seconds` (a timeout of the client's choosing, or
none at all) and `x-request-disconnect-disabled` (keep running after the client leaves) from
every request before any application code runs. Serve installs the middlewares that
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names around its proxy, outermost, so this one
removes both headers before the proxy parses them:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_headers.proxy_middlewares

set in the environment of every Ray node (the proxy actors inherit it). A gateway in front can
strip them as well (cluster/README.md). With the middleware in place the ingress setting
`honor_client_serve_headers` has nothing left to honour.
"""
from __future__ import annotations

from starlette.middleware import Middleware

SERVE_CLIENT_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})


class StripServeHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and any(k.lower() in SERVE_CLIENT_HEADERS for k, _ in scope["headers"]):
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                          if k.lower() not in SERVE_CLIENT_HEADERS]}
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """The callback Serve's proxy calls at start (see the module docstring)."""
    return [Middleware(StripServeHeaders)]
