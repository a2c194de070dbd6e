"""Fast 503s: at most `limit` streams in flight on one ingress replica.

Without it, a request over capacity learns so only when the reconstructor's queue refuses it,
after segmentation has run (seconds under load). With `limits.max_active_streams` set to what
the replicas behind one ingress can hold (reconstructor slots plus queue, divided by the
ingress replicas), the next `POST /v1/generate` is answered `503 busy` with Retry-After at once,
before its body is read.
"""
from __future__ import annotations

from serve_app.http_util import send_error

STREAM_ROUTE = ("POST", "/v1/generate")


class StreamAdmission:
    def __init__(self, app, limit: int):
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"], scope["path"]) != STREAM_ROUTE:
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            return await send_error(send, 503, "busy", f"this ingress replica already runs {self.limit} "
                                    "streams; retry in a few seconds", {"retry-after": "5"})
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
