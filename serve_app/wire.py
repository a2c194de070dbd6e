"""From pipeline events to bytes on the wire, in the request's encoding and transport.

One FrameWriter per stream holds the frame encoder, so `compact` sends delta frames against
what this client has received, and a client may ask for a key frame (resynchronisation).
Transports: SSE (`text/event-stream`, frames base64 inside the JSON) or the binary
length-prefixed records of serve_app.protocol.binary_transport (`application/octet-stream`).
"""
from __future__ import annotations

from typing import AsyncIterator

from serve_app.pacing import FramePacer
from serve_app.protocol import (FRAME_EVENTS, encode_event_fields, format_sse, frame_encoder,
                                pack_event, pack_frame_event, stream_header)
from sam3d_common.settings import StreamSettings


class FrameWriter:
    def __init__(self, encoding: str, settings: StreamSettings | None = None):
        settings = settings or StreamSettings()
        self.encoding = encoding
        options = ({"key_every": settings.compact_key_every, "zlib_level": settings.compact_zlib_level}
                   if encoding == "compact" else {})
        self.encoder = frame_encoder(encoding, **options)

    def request_key(self) -> None:
        self.encoder.request_key()

    def encode(self, event: dict) -> dict:
        """The event with its `_frame` replaced by the encoding's fields (SSE and Python)."""
        frame = event.pop("_frame", None)
        if frame is not None and event["type"] in FRAME_EVENTS:
            event.update(self.encoder.fields(frame))
        return event

    def sse(self, event: dict) -> tuple[bytes, int]:
        data = format_sse(self.encode(event))
        return data, len(data)

    def binary(self, event: dict) -> tuple[bytes, int]:
        frame = event.get("_frame")
        if frame is not None and event["type"] in FRAME_EVENTS and self.encoding == "compact":
            del event["_frame"]
            msg = self.encoder.message(frame)
            data = pack_frame_event({**event, **encode_event_fields(msg, with_data=False)}, msg)
        else:
            data = pack_event(self.encode(event))
        return data, len(data)

    def python(self, event: dict) -> tuple[dict, int]:
        """For DeploymentHandle callers: the event dict, sized as it would be on the wire."""
        event = self.encode(event)
        return event, len(event.get("voxel_data", "")) + len(event.get("frame_data", "")) + 200


def paced(events: AsyncIterator[dict], settings: StreamSettings, encode) -> AsyncIterator:
    return FramePacer(events, settings, encode).__aiter__()


async def binary_body(events: AsyncIterator[dict], settings: StreamSettings,
                      writer: FrameWriter) -> AsyncIterator[bytes]:
    yield stream_header()
    async for chunk in paced(events, settings, writer.binary):
        yield chunk


async def registered(streams: dict, request_id: str, writer: FrameWriter, body):
    """Keep the stream's writer findable by id while it runs (for key-frame requests)."""
    streams[request_id] = writer
    try:
        async for chunk in body:
            yield chunk
    finally:
        streams.pop(request_id, None)
        await body.aclose()
