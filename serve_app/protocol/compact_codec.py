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
"""
from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from sam3d_common.frames import MAX_GRID_SIZE, VoxelFrame

ENCODING_NAME = "compact"
FORMAT_VERSION = 1
MAGIC = b"VX"

FLAG_KEY = 0x01
FLAG_DEFLATE = 0x02
FLAG_COLORS = 0x04
_KNOWN_FLAGS = FLAG_KEY | FLAG_DEFLATE | FLAG_COLORS

# Ways to code a set of indices (occupancy, toggles, changed-colour positions).
SET_BITMAP = 0
SET_RUNS = 1
SET_GAPS = 2
SET_METHOD_NAMES = {SET_BITMAP: "bitmap", SET_RUNS: "runs", SET_GAPS: "gaps"}

# Colour section modes.
COLOR_SPATIAL = 0  # every voxel, residual against the previous voxel of the frame
COLOR_TEMPORAL = 1  # listed voxels only, residual against the base frame's colour
COLOR_MODE_NAMES = {COLOR_SPATIAL: "spatial", COLOR_TEMPORAL: "temporal"}

# magic, version, flags, grid_size, frame_seq, base_seq, voxel_count, stream id length
_HEADER = struct.Struct("<2sBBHIIIB")
HEADER_SIZE = _HEADER.size  # 19, then the stream id, the body and a CRC-32 trailer
_CRC = struct.Struct("<I")
MAX_BODY_BYTES = 64 << 20  # an inflated body larger than this is refused
_U32 = 0xFFFFFFFF


class FrameFormatError(ValueError):
    """The message is not a valid compact frame: corrupt, truncated, or of an unknown version."""


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


# --------------------------------------------------------------------------- varints

_VARINT_STEPS = (1 << 7, 1 << 14, 1 << 21, 1 << 28)


def _varints_size(v: np.ndarray) -> int:
    """Bytes that _encode_varints(v) takes."""
    if len(v) == 0:
        return 0
    total, top = len(v), int(v.max())
    for step in _VARINT_STEPS:
        if top < step:
            break
        total += int(np.count_nonzero(v >= step))
    return total


def _encode_varints(v: np.ndarray) -> bytes:
    """Unsigned LEB128 of every value (all < 2**32), concatenated."""
    v = np.asarray(v, dtype=np.int64)
    if len(v) == 0:
        return b""
    top = int(v.max())
    if top < 0x80:
        return v.astype(np.uint8).tobytes()
    n = np.ones(len(v), np.int64)
    for step in _VARINT_STEPS:
        if top < step:
            break
        n += v >= step
    longest = int(n.max())
    starts = np.cumsum(n) - n
    out = np.empty(int(starts[-1] + n[-1]), dtype=np.uint8)
    out[starts] = (v & 0x7F) | ((n > 1) << 7)
    for k in range(1, longest):
        sel = np.flatnonzero(n > k)
        out[starts[sel] + k] = ((v[sel] >> (7 * k)) & 0x7F) | ((n[sel] > k + 1) << 7)
    return out.tobytes()


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: np.ndarray, pos: int) -> tuple[int, int]:
    value = 0
    for k in range(5):
        if pos >= len(buf):
            raise FrameFormatError("message ends inside a varint")
        b = int(buf[pos])
        pos += 1
        value |= (b & 0x7F) << (7 * k)
        if b < 0x80:
            if value > _U32:
                raise FrameFormatError("varint larger than 32 bits")
            return value, pos
    raise FrameFormatError("varint longer than 5 bytes")


def _read_varints(buf: np.ndarray, pos: int, count: int) -> tuple[np.ndarray, int]:
    """`count` LEB128 varints from buf[pos:], vectorised; returns (int64 values, new pos)."""
    if count == 0:
        return np.zeros(0, np.int64), pos
    if count > len(buf) - pos:
        raise FrameFormatError("message ends inside a varint list")
    seg = buf[pos:pos + 5 * count]
    ends = np.flatnonzero(seg < 0x80)
    if len(ends) < count:
        raise FrameFormatError("message ends inside a varint list")
    ends = ends[:count]
    end = int(ends[-1]) + 1
    if end == count:  # every value took one byte
        return seg[:count].astype(np.int64), pos + count
    lens = np.diff(ends, prepend=-1)
    if int(lens.max()) > 5:
        raise FrameFormatError("varint longer than 5 bytes")
    starts = ends - lens + 1
    within = np.arange(end) - np.repeat(starts, lens)
    values = np.add.reduceat((seg[:end].astype(np.int64) & 0x7F) << (7 * within), starts)
    if int(values.max()) > _U32:
        raise FrameFormatError("varint larger than 32 bits")
    return values, pos + end


# --------------------------------------------------------------------------- index sets

@dataclass
class _SetPlan:
    method: int
    size: int  # bytes including the method byte
    values: np.ndarray | None  # runs or gaps; None for the bitmap


def _plan_set(idx: np.ndarray, universe: int) -> _SetPlan:
    """Choose the smallest coding of sorted unique indices in [0, universe)."""
    if len(idx) == 0:
        return _SetPlan(SET_RUNS, 2, np.zeros(0, np.int64))
    brk = np.flatnonzero(np.diff(idx) != 1)
    run_starts = idx[np.concatenate(([0], brk + 1))]
    run_ends = idx[np.concatenate((brk, [len(idx) - 1]))] + 1
    runs = np.empty(2 * len(run_starts), np.int64)
    runs[0::2] = run_starts - np.concatenate(([0], run_ends[:-1]))
    runs[1::2] = run_ends - run_starts
    gaps = np.diff(idx, prepend=-1) - 1
    plans = [
        _SetPlan(SET_RUNS, 1 + len(_varint_bytes(len(runs))) + _varints_size(runs), runs),
        _SetPlan(SET_GAPS, 1 + len(_varint_bytes(len(gaps))) + _varints_size(gaps), gaps),
        _SetPlan(SET_BITMAP, 1 + (universe + 7) // 8, None),
    ]
    return min(plans, key=lambda p: p.size)  # first of equals: runs, gaps, bitmap


def _write_set(plan: _SetPlan, idx: np.ndarray, universe: int) -> bytes:
    if plan.method == SET_BITMAP:
        bits = np.zeros(universe, dtype=bool)
        bits[idx] = True
        return bytes([SET_BITMAP]) + np.packbits(bits, bitorder="little").tobytes()
    return bytes([plan.method]) + _varint_bytes(len(plan.values)) + _encode_varints(plan.values)


def _read_set(buf: np.ndarray, pos: int, universe: int) -> tuple[np.ndarray, int]:
    """Decode one index set; returns (sorted unique int64 indices, new pos)."""
    if pos >= len(buf):
        raise FrameFormatError("message ends before an index set")
    method = int(buf[pos])
    pos += 1
    if method == SET_BITMAP:
        nbytes = (universe + 7) // 8
        if pos + nbytes > len(buf):
            raise FrameFormatError("message ends inside a bitmap")
        bits = np.unpackbits(buf[pos:pos + nbytes], bitorder="little")
        if bits[universe:].any():
            raise FrameFormatError("bitmap sets bits past the end of its range")
        return np.flatnonzero(bits[:universe]).astype(np.int64), pos + nbytes
    if method not in (SET_RUNS, SET_GAPS):
        raise FrameFormatError(f"unknown index set method {method}")
    count, pos = _read_varint(buf, pos)
    values, pos = _read_varints(buf, pos, count)
    if method == SET_GAPS:
        idx = np.cumsum(values + 1) - 1
        if count and int(idx[-1]) >= universe:
            raise FrameFormatError("index set runs past the end of its range")
        return idx, pos
    ends = np.cumsum(values)
    if count and int(ends[-1]) > universe:
        raise FrameFormatError("runs cover more than the range")
    lengths = values[1::2]
    starts = ends[0::2][:len(lengths)]
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    idx = np.repeat(starts - offsets, lengths) + np.arange(total)
    return idx, pos


# --------------------------------------------------------------------------- matching frames

_DENSE_LIMIT = 1 << 21  # up to 128^3 a lookup table over the grid is cheaper than sorting


def _positions(base: np.ndarray, lin: np.ndarray, universe: int) -> tuple[np.ndarray, np.ndarray]:
    """For each index in lin: its position in the sorted base (0 where absent) and whether present."""
    if len(base) == 0:
        return np.zeros(len(lin), np.int64), np.zeros(len(lin), bool)
    if universe <= _DENSE_LIMIT:
        rank = np.full(universe, -1, np.int32)
        rank[base] = np.arange(len(base), dtype=np.int32)
        pos = rank[lin]
        kept = pos >= 0
        return np.maximum(pos, 0), kept
    pos = np.minimum(np.searchsorted(base, lin), len(base) - 1)
    return pos, base[pos] == lin


def _apply_toggles(base: np.ndarray, toggles: np.ndarray, universe: int) -> np.ndarray:
    """The sorted set base XOR toggles."""
    if len(toggles) == 0:
        return base
    if universe <= _DENSE_LIMIT:
        occ = np.zeros(universe, bool)
        occ[base] = True
        occ[toggles] ^= True
        return np.flatnonzero(occ).astype(np.int64)
    return np.setxor1d(base, toggles, assume_unique=True)


# --------------------------------------------------------------------------- colours

# Rough cost in bits of a residual byte once deflated: its signed magnitude's bit length,
# with zero (unchanged) nearly free. Only used to choose between codings.
_RESIDUAL_BITS = np.array([0.25] + [1 + min(b, 256 - b).bit_length() for b in range(1, 256)])


def _pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 → (K,) uint32 r | g << 8 | b << 16, for fast compares and gathers."""
    c = colors.astype(np.uint32)
    return c[:, 0] | (c[:, 1] << 8) | (c[:, 2] << 16)


def _spatial_residuals(colors: np.ndarray) -> np.ndarray:
    """(3, K) uint8 planes: each colour minus the previous voxel's, mod 256."""
    res = np.diff(colors, axis=0, prepend=np.zeros((1, 3), np.uint8))
    return np.ascontiguousarray(res.T)


def _residual_planes(current: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(3, M) uint8 planes of packed colours minus packed predictions, per channel mod 256."""
    out = np.empty((3, len(current)), np.uint8)
    for ch in range(3):
        out[ch] = ((current >> (8 * ch)) - (predicted >> (8 * ch))) & 0xFF
    return out


def _planes(buf: np.ndarray, pos: int, count: int) -> tuple[np.ndarray, int]:
    end = pos + 3 * count
    if end > len(buf):
        raise FrameFormatError("message ends inside the colour planes")
    return buf[pos:end].reshape(3, count), end


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
        """Make the next message of `stream_id` (of every stream when None) a key frame."""
        for sid, st in self._streams.items():
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

        spatial = None if cols is None else _spatial_residuals(cols)
        key_occ = _plan_set(lin, universe)

        def key_body() -> tuple[int, bytes]:
            body = _write_set(key_occ, lin, universe)
            if spatial is not None:
                body += bytes([COLOR_SPATIAL]) + spatial.tobytes()
            return self._pack(FLAG_KEY, body)

        if st is None or st.key_requested or st.held.grid_size != n or st.since_key + 1 >= self.key_every:
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
            st.held, st.key_requested = held, False
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
