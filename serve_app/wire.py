"""From pipeline events to bytes on the wire: frame encoding and SSE framing."""
from __future__ import annotations

from typing import AsyncIterator

from serve_app.pacing import FramePacer
from serve_app.protocol import FRAME_EVENTS, encode_frame, format_sse
from serve_app.settings import StreamSettings


class FrameWriter:
    """Encodes the `_frame` of geometry/appearance events in the request's encoding."""

    def __init__(self, encoding: str):
        self.encoding = encoding

    def encode(self, event: dict) -> dict:
        frame = event.pop("_frame", None)
        if frame is not None and event["type"] in FRAME_EVENTS:
            event.update(encode_frame(frame, self.encoding))
        return event


    def sse(self, event: dict) -> tuple[bytes, int]:
        data = format_sse(self.encode(event))
        return data, len(data)

    def python(self, event: dict) -> tuple[dict, int]:
        """For DeploymentHandle callers: the event dict, sized as it would be on the wire."""
        event = self.encode(event)
        return event, len(event.get("voxel_data", "")) + len(event.get("frame_data", "")) + 200


def paced(events: AsyncIterator[dict], settings: StreamSettings, encode) -> AsyncIterator:
    return FramePacer(events, settings, encode).__aiter__()
