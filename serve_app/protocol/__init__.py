"""The one protocol of sam3d-serve: events, SSE framing and voxel frame encodings.

The server, the Python client and the JavaScript viewer all follow this package;
shared test vectors under tests/vectors keep them in agreement.
"""
from typing import Annotated, Literal

from pydantic import BeforeValidator

from . import compact_codec, full_codec
from .binary_transport import (MEDIA_TYPE as BINARY_MEDIA_TYPE, BinaryStreamReader, RecordKind,
                               pack_event, pack_frame_event, pack_message, split_frame_payload,
                               stream_header)
from .compact_codec import (CompactFrameEncoder, FrameFormatError, ResyncNeeded, StreamDecoder,
                            StreamEncoder, encode_event_fields)
from .events import (
    EVENT_FIELDS,
    EVENT_TYPES,
    FRAME_EVENTS,
    PROTOCOL_VERSION,
    STAGES,
    SSEParser,
    format_sse,
    make_event,
    parse_sse,
)
from sam3d_common.frames import MAX_GRID_SIZE, VoxelFrame

ENCODINGS = ("full", "compact")
# Former names still accepted in requests: "seed" was the name of "full" (the seed app's layout).
ENCODING_ALIASES = {"seed": "full"}


def _canonical_encoding(value):
    return ENCODING_ALIASES.get(value, value) if isinstance(value, str) else value


# The type of a request's `encoding`: validated once, where the request is parsed.
Encoding = Annotated[Literal["full", "compact"], BeforeValidator(_canonical_encoding)]


def encode_frame(frame: VoxelFrame, encoding: str) -> dict:
    """Fields to merge into a geometry/appearance event for the chosen encoding.

    Stateless: for "compact" every call gives a key frame. A stream should use
    frame_encoder(encoding), which sends delta frames between key frames.
    """
    if encoding == "full":
        return full_codec.encode(frame)
    if encoding == "compact":
        return encode_event_fields(StreamEncoder().encode(frame))
    raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


class _FullFrameEncoder:
    encoding = "full"

    def fields(self, frame: VoxelFrame) -> dict:
        return full_codec.encode(frame)

    def request_key(self) -> None:
        """Every full frame is complete; nothing to do."""


def frame_encoder(encoding: str, **options):
    """One per stream: `.fields(frame)` gives the event fields, `.request_key()` forces a key frame.

    For "compact", `.message(frame)` gives the binary message instead (octet-stream transport);
    options go to CompactFrameEncoder (key_every, zlib_level).
    """
    if encoding == "full":
        return _FullFrameEncoder()
    if encoding == "compact":
        return CompactFrameEncoder(**options)
    raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


__all__ = [
    "EVENT_FIELDS", "EVENT_TYPES", "FRAME_EVENTS", "PROTOCOL_VERSION",
    "STAGES", "SSEParser", "format_sse", "make_event", "parse_sse", "MAX_GRID_SIZE",
    "VoxelFrame", "ENCODINGS", "ENCODING_ALIASES", "Encoding", "encode_frame", "full_codec",
    "compact_codec", "frame_encoder", "CompactFrameEncoder", "FrameFormatError", "ResyncNeeded",
    "StreamDecoder", "StreamEncoder", "encode_event_fields",
    "BINARY_MEDIA_TYPE", "BinaryStreamReader", "RecordKind", "pack_event", "pack_frame_event",
    "pack_message", "split_frame_payload", "stream_header",
]
