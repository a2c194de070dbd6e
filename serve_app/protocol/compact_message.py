"""The envelope of a `compact` voxel frame message: header, flags, CRC-32 trailer, deflated body.

Every message of the compact encoding (docs/frame-format.md, section 3) is a fixed 19-byte
header, the stream id, a body that may be deflated, and a CRC-32 of all that. This module
reads and seals that envelope and nothing inside the body, so the encoder and decoder
(compact_codec.py) and the body codings (compact_sets.py, compact_colours.py) share one
definition of the layout and of FrameFormatError, the error every corrupt message raises.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from sam3d_common.frames import MAX_GRID_SIZE

FORMAT_VERSION = 1
MAGIC = b"VX"

FLAG_KEY = 0x01
FLAG_DEFLATE = 0x02
FLAG_COLORS = 0x04
_KNOWN_FLAGS = FLAG_KEY | FLAG_DEFLATE | FLAG_COLORS

# magic, version, flags, grid_size, frame_seq, base_seq, voxel_count, stream id length
_HEADER = struct.Struct("<2sBBHIIIB")
HEADER_SIZE = _HEADER.size  # 19, then the stream id, the body and a CRC-32 trailer
_CRC = struct.Struct("<I")
MAX_BODY_BYTES = 64 << 20  # an inflated body larger than this is refused
_U32 = 0xFFFFFFFF


class FrameFormatError(ValueError):
    """The message is not a valid compact frame: corrupt, truncated, or of an unknown version."""


@dataclass(frozen=True)
class FrameHeader:
    version: int
    flags: int
    grid_size: int
    frame_seq: int
    base_seq: int
    voxel_count: int
    stream_id: str
    body_offset: int  # where the body starts in the message
    body_end: int  # where the CRC trailer starts

    @property
    def key(self) -> bool:
        return bool(self.flags & FLAG_KEY)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_DEFLATE)

    @property
    def has_colors(self) -> bool:
        return bool(self.flags & FLAG_COLORS)


# --------------------------------------------------------------------------- header

def _seal(header: bytes, body: bytes) -> bytes:
    msg = header + body
    return msg + _CRC.pack(zlib.crc32(msg))


def read_header(msg: bytes | bytearray | memoryview) -> FrameHeader:
    """Parse and check a message's header and CRC; raises FrameFormatError."""
    if len(msg) < HEADER_SIZE + _CRC.size:
        raise FrameFormatError(f"message of {len(msg)} bytes is shorter than a header")
    magic, version, flags, n, seq, base, count, sid_len = _HEADER.unpack_from(msg, 0)
    if magic != MAGIC:
        raise FrameFormatError("not a compact voxel frame (bad magic)")
    if version != FORMAT_VERSION:
        raise FrameFormatError(f"frame format version {version} is not supported (this decoder reads {FORMAT_VERSION})")
    body_offset = HEADER_SIZE + sid_len
    body_end = len(msg) - _CRC.size
    if body_offset > body_end:
        raise FrameFormatError("message ends inside its stream id")
    (crc,) = _CRC.unpack_from(msg, body_end)
    if zlib.crc32(memoryview(msg)[:body_end]) != crc:
        raise FrameFormatError("CRC-32 mismatch: the message is truncated or corrupted")
    if flags & ~_KNOWN_FLAGS:
        raise FrameFormatError(f"unknown flags 0x{flags:02x}")
    if not 1 <= n <= MAX_GRID_SIZE:
        raise FrameFormatError(f"grid size {n} outside 1..{MAX_GRID_SIZE}")
    if count > n ** 3:
        raise FrameFormatError(f"{count} voxels do not fit a {n}^3 grid")
    try:
        sid = bytes(msg[HEADER_SIZE:body_offset]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameFormatError("stream id is not UTF-8") from exc
    return FrameHeader(version, flags, n, seq, base, count, sid, body_offset, body_end)


def _inflate(data: memoryview) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_BODY_BYTES)
    except zlib.error as exc:
        raise FrameFormatError(f"body does not inflate: {exc}") from exc
    if d.unconsumed_tail:
        raise FrameFormatError(f"inflated body exceeds {MAX_BODY_BYTES} bytes")
    if not d.eof:
        raise FrameFormatError("deflated body is truncated")
    if d.unused_data:
        raise FrameFormatError("bytes after the end of the deflated body")
    return out


def _body(msg, h: FrameHeader) -> np.ndarray:
    raw = memoryview(msg)[h.body_offset:h.body_end]
    return np.frombuffer(_inflate(raw) if h.compressed else raw, dtype=np.uint8)

