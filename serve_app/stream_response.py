"""A streaming ASGI response that stops its body when the client goes away.

Starlette's StreamingResponse, under ASGI spec 2.4 (which Serve's scope reports), does not
listen for `http.disconnect` and relies on Serve cancelling the replica task; a client that
sends `x-request-disconnect-disabled: ?1` turns that off. Serve's proxy still forwards the
disconnect to the replica's `receive`, so this response watches `receive` itself and
cancels the body, which cancels the pipeline and, through the handles, the GPU stages.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from starlette.responses import Response

log = logging.getLogger("sam3d.stream")


class WatchedStreamingResponse(Response):
    def __init__(self, body: AsyncIterator[bytes], media_type: str, headers: dict[str, str],
                 watch_disconnect: bool = True, status_code: int = 200):
        # Response's own __init__ wants a finished body; set only what Starlette reads.
        self.background = None
        self.body = body
        self.media_type = media_type
        self.extra_headers = headers
        self.watch_disconnect = watch_disconnect
        self.status_code = status_code
        self.disconnected = False

    async def __call__(self, scope, receive, send) -> None:
        raw = [(b"content-type", self.media_type.encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in self.extra_headers.items()]
        await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
        pump = asyncio.create_task(self._pump(send))
        tasks = {pump}
        if self.watch_disconnect:
            tasks.add(asyncio.create_task(self._watch(receive)))
        try:
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
            for t in tasks:
                t.cancel()
            aclose = getattr(self.body, "aclose", None)
            if aclose is not None:
                await aclose()

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
