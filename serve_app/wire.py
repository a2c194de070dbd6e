"""From pipeline events to bytes on the wire: frame encoding and SSE framing."""
from __future__ import annotations

from typing import AsyncIterator

from serve_app.protocol import FRAME_EVENTS, encode_frame, format_sse


class FrameWriter:
    """Encodes the `_frame` of geometry/appearance events in the request's encoding."""

    def __init__(self, encoding: str):
        self.encoding = encoding

    def encode(self, event: dict) -> dict:
        frame = event.pop("_frame", None)
        if frame is not None and event["type"] in FRAME_EVENTS:
            event.update(encode_frame(frame, self.encoding))
        return event


async def sse_stream(events: AsyncIterator[dict], encoding: str) -> AsyncIterator[bytes]:
    writer = FrameWriter(encoding)
    async for event in events:
        yield format_sse(writer.encode(event))
