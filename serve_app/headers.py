"""Browser-facing response headers: a configurable CORS allow-list and security headers.

CORS is off unless `cors_allow_origins` lists origins (the viewer is served from the same
origin and needs none). Every response gets `X-Content-Type-Options: nosniff` (no artifact or
error is ever sniffed as HTML), `Referrer-Policy: no-referrer` and `X-Frame-Options: DENY`.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeadersMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_wrapper)


def install_headers(app: FastAPI, cors_allow_origins: list[str]) -> None:
    """Call after the auth middleware, so CORS preflights and 401s carry the CORS headers."""
    if cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_allow_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type", "accept"],
                           expose_headers=["x-request-id", "x-sam3d-request-id", "retry-after"],
                           max_age=600)
    app.add_middleware(SecurityHeadersMiddleware)
