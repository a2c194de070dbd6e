"""The respond step: a streaming ASGI response that sends a stream's chunks and, when they
end or the client goes away, closes the stream through its owner (serve_app/stream_owner.py).

Starlette's StreamingResponse, under ASGI spec 2.4 (which Serve's scope reports), does not
listen for `http.disconnect` and relies on Serve cancelling the replica task; a client that
sends `x-request-disconnect-disabled: ?1` turns that off. Serve's proxy still forwards the
disconnect to the replica's `receive`, so this response watches `receive` itself: on a
disconnect it stops sending and closes the stream, which stops the pipeline and, through the
handles, the GPU stages.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from starlette.responses import Response

from serve_app.stream_owner import StreamOwner
from serve_app.wire import MEDIA_TYPES, Transport

log = logging.getLogger("sam3d.stream")


class StreamResponse(Response):
    def __init__(self, stream: StreamOwner, body: AsyncIterator[bytes], transport: Transport,
                 watch_disconnect: bool = True):
        # Response's own __init__ wants a finished body; set only what Starlette reads.
        self.background = None
        self.stream = stream
        self.body = body
        self.media_type = MEDIA_TYPES[transport]
        self.extra_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                              "X-Sam3d-Request-Id": stream.request_id}
        self.watch_disconnect = watch_disconnect
        self.status_code = 200
        self.disconnected = False

    async def __call__(self, scope, receive, send) -> None:
        raw = [(b"content-type", self.media_type.encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in self.extra_headers.items()]
        pump = watch = None
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
            pump = asyncio.create_task(self._pump(send))
            tasks = {pump}
            if self.watch_disconnect:
                watch = asyncio.create_task(self._watch(receive))
                tasks.add(watch)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if pump not in done:
                self.disconnected = True
                log.info("client went away; cancelling the stream")
                pump.cancel()
            try:
                await pump
            except asyncio.CancelledError:
                if not self.disconnected:
                    raise
        finally:
            for t in (pump, watch):
                if t is not None:
                    t.cancel()
            await self.stream.close()

    async def _pump(self, send) -> None:
        async for chunk in self.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch(receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
