"""The one protocol of sam3d-serve: events, SSE framing and voxel frame encodings.

The server, the Python client and the JavaScript viewer all follow this package;
shared test vectors under tests/vectors keep them in agreement.
"""
from . import seed_codec
from .events import (
    COMMON_FIELDS,
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
from .frames import MAX_GRID_SIZE, VoxelFrame

ENCODINGS = ("seed",)


def encode_frame(frame: VoxelFrame, encoding: str) -> dict:
    """Fields to merge into a geometry/appearance event for the chosen encoding."""
    if encoding == "seed":
        return seed_codec.encode(frame)
    raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


__all__ = [
    "COMMON_FIELDS", "EVENT_FIELDS", "EVENT_TYPES", "FRAME_EVENTS", "PROTOCOL_VERSION",
    "STAGES", "SSEParser", "format_sse", "make_event", "parse_sse", "MAX_GRID_SIZE",
    "VoxelFrame", "ENCODINGS", "encode_frame", "seed_codec",
]
