"""The encode-and-pace step: a stream's events → what its transport sends, paced.

One FrameWriter per stream holds the frame encoder, so `compact` sends delta frames against
what this client has received, and a client may ask for a key frame (resynchronisation).
Transports: SSE (`text/event-stream`, frames base64 inside the JSON), the binary
length-prefixed records of serve_app.protocol.binary_transport (`application/octet-stream`),
or event dicts for the Python API. A resumed job's key frame carries `_cursor`, the SSE id
to send with it; binary records carry no SSE id (clients resume from the highest seq).
"""
from __future__ import annotations

from typing import AsyncIterator, Literal

from starlette.requests import Request

from serve_app.pacing import FramePacer
from serve_app.protocol import (BINARY_MEDIA_TYPE, FRAME_EVENTS, encode_event_fields, format_sse,
                                frame_encoder, pack_event, pack_frame_event, stream_header)
from serve_app.stream_owner import StreamOwner
from sam3d_common.settings import StreamSettings

Transport = Literal["sse", "binary", "python"]
MEDIA_TYPES = {"sse": "text/event-stream", "binary": BINARY_MEDIA_TYPE}


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
        cursor = event.pop("_cursor", None)
        data = format_sse(self.encode(event), cursor)
        return data, len(data)

    def binary(self, event: dict) -> tuple[bytes, int]:
        event.pop("_cursor", None)
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


def transport_of(request: Request) -> Transport:
    """Binary records for `Accept: application/octet-stream`, else SSE."""
    return "binary" if BINARY_MEDIA_TYPE in request.headers.get("accept", "") else "sse"


def encode_and_pace(stream: StreamOwner, encoding: str, transport: Transport, settings: StreamSettings,
                    streams: dict[str, FrameWriter] | None = None) -> AsyncIterator:
    """The owner's events encoded for `transport` and paced (serve_app.pacing); binary streams
    open with the stream header. While the stream runs its writer is in `streams` under the
    stream's id (POST /v1/streams/{id}/keyframe); the owner's close stops the pacer and takes
    the writer out again."""
    writer = FrameWriter(encoding, settings)
    opening = stream_header() if transport == "binary" else None
    body = FramePacer(stream.events, settings, getattr(writer, transport), opening=opening).__aiter__()
    stream.on_close(body.aclose)
    if streams is not None:
        streams[stream.request_id] = writer
        stream.on_close(lambda: streams.pop(stream.request_id, None))
    return body
