"""The `compact` voxel frame encoding: binary key and delta frames, lossless, optionally deflated.

One message encodes one frame of one stream. A key frame carries the whole set of occupied
voxels; a delta frame carries the voxels that appeared or vanished (one "toggle" set) and
the colours that changed, against the frame whose sequence number it names. Occupancy and
colours are both lossless (colours are exact RGB888). The byte layout is specified in
docs/frame-format.md; serve_app/static/voxel-codec.js is the JavaScript decoder of the
same format, and tests/vectors pins both.

Encoder:   enc = StreamEncoder(); msg = enc.encode(frame)        # bytes, key or delta
           enc.request_key()                                       # next message is a key frame
Decoder:   dec = StreamDecoder(); frame = dec.decode(msg)          # VoxelFrame; keeps state
           ResyncNeeded: a delta that does not apply to what the decoder holds
           FrameFormatError (a ValueError): a corrupt, truncated or unsupported message
SSE:       encode_event_fields(msg) -> {"encoding": "compact", "frame_data": base64, ...}

This module is the stream logic: choosing key or delta frames, applying deltas, and the event
fields. The message envelope (header, flags, CRC, deflate) is compact_message.py, the index
set and varint codings compact_sets.py, the colour residuals compact_colours.py; their names
that callers use are re-exported here, so `serve_app.protocol.compact_codec` stays the one
import for the format.
"""
from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass

import numpy as np

from sam3d_common.frames import VoxelFrame

from .compact_colours import (COLOR_MODE_NAMES, COLOR_SPATIAL, COLOR_TEMPORAL, _RESIDUAL_BITS, _pack_rgb,
                              _planes, _residual_planes, _spatial_residuals)
from .compact_message import (_HEADER, _U32, FLAG_COLORS, FLAG_DEFLATE, FLAG_KEY, FORMAT_VERSION, HEADER_SIZE,
                              MAGIC, MAX_BODY_BYTES, FrameFormatError, FrameHeader, _body, _seal, read_header)
from .compact_sets import (SET_BITMAP, SET_GAPS, SET_METHOD_NAMES, SET_RUNS, _apply_toggles, _plan_set,
                           _positions, _read_set, _write_set)

__all__ = [
    "ENCODING_NAME", "FORMAT_VERSION", "MAGIC", "HEADER_SIZE", "MAX_BODY_BYTES",
    "FLAG_KEY", "FLAG_DEFLATE", "FLAG_COLORS", "SET_BITMAP", "SET_RUNS", "SET_GAPS", "SET_METHOD_NAMES",
    "COLOR_SPATIAL", "COLOR_TEMPORAL", "COLOR_MODE_NAMES", "FrameFormatError", "ResyncNeeded", "FrameHeader",
    "read_header", "StreamEncoder", "StreamDecoder", "b64decode", "encode_event_fields", "inspect_message",
    "CompactFrameEncoder",
]  # _HEADER is imported here too, for tests/vectors/make_vectors.py

ENCODING_NAME = "compact"


class ResyncNeeded(Exception):
    """A delta frame that does not apply to the decoder's state; ask the server for a key frame."""

    def __init__(self, stream_id: str, held_seq: int | None, base_seq: int, reason: str = ""):
        self.stream_id = stream_id
        self.held_seq = held_seq
        self.base_seq = base_seq
        held = "nothing" if held_seq is None else f"frame {held_seq}"
        why = f" ({reason})" if reason else ""
        super().__init__(f"stream {stream_id!r}: delta applies to frame {base_seq} "
                         f"but the decoder holds {held}{why}; request a key frame")


# --------------------------------------------------------------------------- encoder

@dataclass
class _Held:
    grid_size: int
    linear: np.ndarray  # sorted unique int64
    colors: np.ndarray | None  # (K, 3) uint8 in the same order
    seq: int
    packed: np.ndarray | None = None  # colours as _pack_rgb, kept by the encoder


@dataclass
class _EncStream:
    held: _Held
    since_key: int = 0
    key_requested: bool = False


def _canonical(frame: VoxelFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted unique linear indices and matching colours; a repeated voxel keeps its first colour."""
    lin = frame.linear_indices()
    cols = frame.colors
    if len(lin) > 1 and not (np.diff(lin) > 0).all():
        order = np.argsort(lin, kind="stable")
        lin = lin[order]
        first = np.concatenate(([True], np.diff(lin) != 0))
        lin = lin[first]
        cols = None if cols is None else cols[order][first]
    return lin, (None if cols is None else np.array(cols, dtype=np.uint8, copy=True))


class StreamEncoder:
    """Encodes successive frames of one or more streams (named by stream_id) as key or delta messages.

    A key frame goes out for the first frame of a stream, when `key_every` frames have passed
    since the last key frame, after `request_key()`, when the grid size changes, and when a
    delta would not be smaller than a key frame. zlib_level None sends bodies uncompressed
    (sizes are then known exactly before encoding); otherwise a body is deflated at that level
    when that makes it smaller; as deflate makes the size estimates rough, both frames are
    built and the smaller is sent when the delta's estimate is at least 60 % of the key frame's.
    """

    def __init__(self, key_every: int = 16, zlib_level: int | None = 6):
        if key_every < 1:
            raise ValueError("key_every must be at least 1")
        if zlib_level is not None and not 0 <= zlib_level <= 9:
            raise ValueError("zlib_level must be None or 0..9")
        self.key_every = key_every
        self.zlib_level = zlib_level
        self._streams: dict[str, _EncStream] = {}

    def request_key(self, stream_id: str | None = None) -> None:
        """Make the next message of `stream_id` (of every stream when None) a key frame. Safe to call
        from another thread while `encode` runs (the ingress's event loop, while a worker thread
        encodes the stream's frame): a request that arrives during an encode is kept for the next one."""
        for sid, st in list(self._streams.items()):
            if stream_id is None or sid == stream_id:
                st.key_requested = True

    def encode(self, frame: VoxelFrame, stream_id: str = "voxels") -> bytes:
        sid = stream_id.encode("utf-8")
        if len(sid) > 255:
            raise ValueError("stream_id is longer than 255 UTF-8 bytes")
        n = frame.grid_size
        universe = n ** 3
        lin, cols = _canonical(frame)
        st = self._streams.get(stream_id)
        seq = 0 if st is None else (st.held.seq + 1) & _U32
        asked = st is not None and st.key_requested  # read once: request_key may set it meanwhile

        spatial = None if cols is None else _spatial_residuals(cols)
        key_occ = _plan_set(lin, universe)

        def key_body() -> tuple[int, bytes]:
            body = _write_set(key_occ, lin, universe)
            if spatial is not None:
                body += bytes([COLOR_SPATIAL]) + spatial.tobytes()
            return self._pack(FLAG_KEY, body)

        if st is None or asked or st.held.grid_size != n or st.since_key + 1 >= self.key_every:
            flags, body = key_body()
        else:
            key_cost = key_occ.size + (0 if spatial is None else 1 + self._colour_cost(spatial))
            delta_body, delta_cost = self._delta(st.held, lin, cols, spatial, universe)
            flags, body = self._pack(0, delta_body)
            if self.zlib_level is None:
                if delta_cost >= key_cost:  # the sizes are exact without deflate
                    flags, body = key_body()
            elif delta_cost >= 0.6 * key_cost:
                # Deflate makes the estimates rough; when they are close, compare the real sizes.
                k_flags, k_body = key_body()
                if len(k_body) <= len(body):
                    flags, body = k_flags, k_body
        base = 0 if flags & FLAG_KEY else st.held.seq
        if cols is not None:
            flags |= FLAG_COLORS
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, n, seq, base, len(lin), len(sid)) + sid
        held = _Held(n, lin, cols, seq, None if cols is None else _pack_rgb(cols))
        if st is None:
            self._streams[stream_id] = _EncStream(held)
        else:
            st.held = held
            if asked:  # a request made during this encode stays for the next frame
                st.key_requested = False
            st.since_key = 0 if flags & FLAG_KEY else st.since_key + 1
        return _seal(header, body)

    def _pack(self, flags: int, body: bytes) -> tuple[int, bytes]:
        """Deflate the body when a level is set and that makes it smaller."""
        if self.zlib_level is not None:
            packed = zlib.compress(body, self.zlib_level)
            if len(packed) < len(body):
                return flags | FLAG_DEFLATE, packed
        return flags, body

    def _colour_cost(self, residuals: np.ndarray) -> float:
        """Estimated bytes of colour residuals: exact when not deflating, else a bit-length estimate."""
        if self.zlib_level is None:
            return float(residuals.size)
        return float(np.bincount(residuals.ravel(), minlength=256) @ _RESIDUAL_BITS) / 8.0

    def _delta(self, held: _Held, lin: np.ndarray, cols: np.ndarray | None,
               spatial: np.ndarray | None, universe: int) -> tuple[bytes, float]:
        if len(lin) == len(held.linear) and np.array_equal(lin, held.linear):
            pos, kept, toggles = np.arange(len(lin)), np.ones(len(lin), bool), lin[:0]
        else:
            pos, kept = _positions(held.linear, lin, universe)
            hit = np.zeros(len(held.linear), bool)
            hit[pos[kept]] = True
            toggles = np.sort(np.concatenate((lin[~kept], held.linear[~hit])))
        occ = _plan_set(toggles, universe)
        body = _write_set(occ, toggles, universe)
        cost = float(occ.size)
        if cols is None:
            return body, cost
        spatial_cost = 1 + self._colour_cost(spatial)
        if held.packed is not None:
            packed = _pack_rgb(cols)
            predicted = np.where(kept, held.packed[pos] if len(held.packed) else 0, 0).astype(np.uint32)
            changed = np.flatnonzero(~kept | (packed != predicted))
            ch_plan = _plan_set(changed, len(lin))
            temporal = _residual_planes(packed[changed], predicted[changed])
            temporal_cost = 1 + ch_plan.size + self._colour_cost(temporal)
            if temporal_cost < spatial_cost:
                body += bytes([COLOR_TEMPORAL]) + _write_set(ch_plan, changed, len(lin)) + temporal.tobytes()
                return body, cost + temporal_cost
        return body + bytes([COLOR_SPATIAL]) + spatial.tobytes(), cost + spatial_cost


# --------------------------------------------------------------------------- decoder

class StreamDecoder:
    """Decodes messages in the order the server sent them, keeping one state per stream id.

    A message that fails (FrameFormatError, ResyncNeeded) leaves the state as it was.
    """

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self.last_header: FrameHeader | None = None

    def reset(self, stream_id: str | None = None) -> None:
        if stream_id is None:
            self._held.clear()
        else:
            self._held.pop(stream_id, None)

    def held_seq(self, stream_id: str = "voxels") -> int | None:
        held = self._held.get(stream_id)
        return None if held is None else held.seq

    def decode_event(self, event: dict) -> VoxelFrame:
        """Decode the `frame_data` of a geometry/appearance event in the compact encoding."""
        if event.get("encoding") != ENCODING_NAME:
            raise FrameFormatError(f"event encoding is {event.get('encoding')!r}, not {ENCODING_NAME!r}")
        return self.decode(b64decode(event.get("frame_data")))

    def decode(self, msg: bytes | bytearray | memoryview) -> VoxelFrame:
        h = read_header(msg)
        held = self._held.get(h.stream_id)
        if not h.key:
            if held is None or held.seq != h.base_seq:
                raise ResyncNeeded(h.stream_id, None if held is None else held.seq, h.base_seq)
            if held.grid_size != h.grid_size:
                raise ResyncNeeded(h.stream_id, held.seq, h.base_seq, "grid size differs")
        buf = _body(msg, h)
        n = h.grid_size
        universe = n ** 3
        occ, pos = _read_set(buf, 0, universe)
        lin = occ if h.key else _apply_toggles(held.linear, occ, universe)
        if len(lin) != h.voxel_count:
            raise FrameFormatError(f"frame decodes to {len(lin)} voxels, header says {h.voxel_count}")
        cols = None
        if h.has_colors:
            cols, pos = self._colours(buf, pos, lin, None if h.key else held)
        if pos != len(buf):
            raise FrameFormatError(f"{len(buf) - pos} unexpected bytes after the frame body")
        self._held[h.stream_id] = _Held(n, lin, cols, h.frame_seq)
        self.last_header = h
        coords = np.empty((len(lin), 3), np.uint16)
        coords[:, 0] = lin % n
        coords[:, 1] = (lin // n) % n
        coords[:, 2] = lin // (n * n)
        return VoxelFrame(n, coords, cols)

    @staticmethod
    def _colours(buf: np.ndarray, pos: int, lin: np.ndarray, base: _Held | None) -> tuple[np.ndarray, int]:
        if pos >= len(buf):
            raise FrameFormatError("message ends before the colour section")
        mode = int(buf[pos])
        pos += 1
        k = len(lin)
        if mode == COLOR_SPATIAL:
            planes, pos = _planes(buf, pos, k)
            return np.ascontiguousarray(np.cumsum(planes, axis=1, dtype=np.uint8).T), pos
        if mode != COLOR_TEMPORAL:
            raise FrameFormatError(f"unknown colour mode {mode}")
        if base is None or base.colors is None:
            raise FrameFormatError("temporal colours need a base frame with colours")
        changed, pos = _read_set(buf, pos, k)
        planes, pos = _planes(buf, pos, len(changed))
        cols = np.zeros((k, 3), np.uint8)
        bpos, kept = _positions(base.linear, lin, base.grid_size ** 3)
        cols[kept] = base.colors[bpos[kept]]
        listed = np.zeros(k, bool)
        listed[changed] = True
        if (~kept & ~listed).any():
            raise FrameFormatError("a voxel new in this frame has no colour")
        cols[changed] += planes.T
        return cols, pos


# --------------------------------------------------------------------------- SSE fields

def b64decode(text) -> bytes:
    if not isinstance(text, (str, bytes)):
        raise FrameFormatError("frame_data is missing or not a string")
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise FrameFormatError(f"frame_data is not valid base64: {exc}") from exc


def encode_event_fields(msg: bytes, with_data: bool = True) -> dict:
    """The fields a compact geometry/appearance event carries (frame_data: the message, base64)."""
    h = read_header(msg)
    fields = {
        "encoding": ENCODING_NAME,
        "voxel_count": h.voxel_count,
        "grid_size": h.grid_size,
        "key": h.key,
        "frame_seq": h.frame_seq,
        "base_seq": None if h.key else h.base_seq,
    }
    if with_data:
        fields["frame_data"] = base64.b64encode(msg).decode("ascii")
    return fields


def inspect_message(msg: bytes) -> dict:
    """Header and section codings of a message, for tests, vectors and debugging."""
    h = read_header(msg)
    buf = _body(msg, h)
    info = {"key": h.key, "compressed": h.compressed, "has_colors": h.has_colors,
            "grid_size": h.grid_size, "frame_seq": h.frame_seq, "base_seq": h.base_seq,
            "voxel_count": h.voxel_count, "stream_id": h.stream_id, "bytes": len(msg),
            "body_bytes": len(buf), "occupancy": SET_METHOD_NAMES.get(int(buf[0]), "?") if len(buf) else "?"}
    if h.has_colors:
        _, pos = _read_set(buf, 0, h.grid_size ** 3)
        info["color_mode"] = COLOR_MODE_NAMES.get(int(buf[pos]), "?") if pos < len(buf) else "?"
        if info["color_mode"] == "temporal":
            info["color_set"] = SET_METHOD_NAMES.get(int(buf[pos + 1]), "?")
    return info


class CompactFrameEncoder:
    """Per-request encoder for SSE events: `fields(frame)` gives the fields to merge into the event."""

    encoding = ENCODING_NAME

    def __init__(self, key_every: int = 16, zlib_level: int | None = 6, stream_id: str = "voxels"):
        self.stream = StreamEncoder(key_every, zlib_level)
        self.stream_id = stream_id

    def message(self, frame: VoxelFrame) -> bytes:
        """The binary message, for the octet-stream transport."""
        return self.stream.encode(frame, self.stream_id)

    def fields(self, frame: VoxelFrame) -> dict:
        return encode_event_fields(self.message(frame))

    def request_key(self) -> None:
        self.stream.request_key()
