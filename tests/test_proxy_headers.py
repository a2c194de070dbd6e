"""Hostile Serve headers (issue 10): through Serve 2.60's own proxy-callback machinery, the
client's `x-request-timeout-seconds` and `x-request-disconnect-disabled` never reach the
proxy's header parsing."""
from __future__ import annotations

import httpx
from ray.serve._private import http_util as serve_http

from serve_app.proxy_headers import proxy_middlewares


async def test_proxy_headers_are_stripped_before_serve_parses_them(monkeypatch):
    seen = {}

    async def proxy(scope, receive, send):  # stands in for Serve's proxy ASGI app
        headers = dict(scope["headers"])
        seen["timeout"] = serve_http.parse_request_timeout_header(headers, 900.0)
        seen["disconnect_disabled"] = serve_http.parse_disconnect_disabled_header(headers)
        seen["other"] = headers.get(b"x-keep")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setattr(serve_http, "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH",
                        "serve_app.proxy_headers.proxy_middlewares")
    options = serve_http.configure_http_middlewares(serve_http.HTTPOptions())
    app = serve_http._apply_middlewares(proxy, options.middlewares)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for value in ("0", "0.001", "1e-9", "1.5"):
            resp = await client.get("/", headers={"x-request-timeout-seconds": value, "x-keep": "1",
                                                  "x-request-disconnect-disabled": "?1"})
            assert resp.status_code == 200
            assert seen == {"timeout": 900.0, "disconnect_disabled": False, "other": b"1"}


def test_proxy_headers_callback_passes_serves_validation():
    assert len(serve_http.validate_http_proxy_callback_return(proxy_middlewares())) == 1
