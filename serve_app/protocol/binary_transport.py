"""The octet-stream transport: the same events as the SSE stream, as length-prefixed binary records.

    stream  = header record*
    header  = "S3DF"  u16 protocol version  u16 reserved (0)            8 bytes
    record  = u8 kind  u32 payload length  payload                      little-endian
    kind 1  EVENT: a UTF-8 JSON object, exactly the event the SSE stream would carry
    kind 2  FRAME: u32 JSON length, the event's JSON object (without frame_data), then the
            compact frame message (serve_app/protocol/compact_codec.py) as raw bytes

Readers skip records of kinds they do not know. docs/frame-format.md has the full layout.
"""
from __future__ import annotations

import json
import struct
from enum import IntEnum

from .events import PROTOCOL_VERSION

MEDIA_TYPE = "application/octet-stream"
STREAM_MAGIC = b"S3DF"
_STREAM_HEADER = struct.Struct("<4sHH")
_RECORD = struct.Struct("<BI")
_JSON_LEN = struct.Struct("<I")
MAX_PAYLOAD_BYTES = 64 << 20


class RecordKind(IntEnum):
    EVENT = 1
    FRAME = 2


def stream_header(version: int = PROTOCOL_VERSION) -> bytes:
    """The 8 bytes a binary stream starts with."""
    return _STREAM_HEADER.pack(STREAM_MAGIC, version, 0)


def pack_message(kind: int, payload: bytes) -> bytes:
    """One record: kind byte, payload length (u32 LE), payload."""
    if not 0 <= int(kind) <= 255:
        raise ValueError(f"record kind {kind} does not fit a byte")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return _RECORD.pack(int(kind), len(payload)) + bytes(payload)


def _json(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def pack_event(event: dict) -> bytes:
    """An EVENT record for a non-frame event (loading, complete, error ...)."""
    return pack_message(RecordKind.EVENT, _json(event))


def pack_frame_event(event: dict, msg: bytes) -> bytes:
    """A FRAME record: the event's fields (frame_data left out) and the binary frame message."""
    meta = _json({k: v for k, v in event.items() if k != "frame_data"})
    return pack_message(RecordKind.FRAME, _JSON_LEN.pack(len(meta)) + meta + bytes(msg))


def split_frame_payload(payload: bytes) -> tuple[dict, bytes]:
    """A FRAME record's payload → (event fields, frame message)."""
    if len(payload) < _JSON_LEN.size:
        raise ValueError("frame record shorter than its JSON length")
    (n,) = _JSON_LEN.unpack_from(payload, 0)
    end = _JSON_LEN.size + n
    if end > len(payload):
        raise ValueError("frame record ends inside its JSON")
    try:
        meta = json.loads(bytes(payload[_JSON_LEN.size:end]))
    except ValueError as exc:
        raise ValueError(f"frame record JSON does not parse: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError("frame record JSON is not an object")
    return meta, bytes(payload[end:])


class BinaryStreamReader:
    """Incremental reader: feed bytes as they arrive, get complete (kind, payload) records back.

    Checks the stream header first (raises ValueError on a wrong magic or protocol version);
    `version` holds the version read. Call `close()` at the end of the body to catch a
    stream that stopped inside a record.
    """

    def __init__(self, expect_version: int | None = PROTOCOL_VERSION,
                 max_payload: int = MAX_PAYLOAD_BYTES):
        self.expect_version = expect_version
        self.max_payload = max_payload
        self.version: int | None = None
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self._buf += chunk
        out: list[tuple[int, bytes]] = []
        pos = 0
        if self.version is None:
            if len(self._buf) < _STREAM_HEADER.size:
                return out
            magic, version, _ = _STREAM_HEADER.unpack_from(self._buf, 0)
            if magic != STREAM_MAGIC:
                raise ValueError("not a sam3d binary frame stream (bad magic)")
            if self.expect_version is not None and version != self.expect_version:
                raise ValueError(f"stream protocol version {version}, this reader speaks {self.expect_version}")
            self.version = version
            pos = _STREAM_HEADER.size
        while len(self._buf) - pos >= _RECORD.size:
            kind, length = _RECORD.unpack_from(self._buf, pos)
            if length > self.max_payload:
                raise ValueError(f"record of {length} bytes exceeds the {self.max_payload}-byte limit")
            end = pos + _RECORD.size + length
            if end > len(self._buf):
                break
            kind = RecordKind(kind) if kind in RecordKind._value2member_map_ else kind
            out.append((kind, bytes(self._buf[pos + _RECORD.size:end])))
            pos = end
        del self._buf[:pos]
        return out

    def close(self) -> None:
        """Raise ValueError if the stream ended inside its header or a record."""
        if self._buf or self.version is None:
            what = "header" if self.version is None else "record"
            raise ValueError(f"stream ended inside a {what} ({len(self._buf)} bytes left)")
