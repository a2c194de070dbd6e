"""Byte-level codings of the `compact` frame body: LEB128 varints and sets of voxel indices.

A frame's occupancy (key frames), its toggled voxels (delta frames) and the positions of
changed colours (temporal colours) are all sorted sets of indices, each sent as whichever of
a bitmap, runs or gaps is smallest (docs/frame-format.md, section 4.1). This module writes
and reads those sets, vectorised with numpy, and matches one frame's indices against
another's, which both delta coding and temporal colours need. Kept apart from the stream
logic (compact_codec.py) because it is pure byte coding with no notion of streams or frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compact_message import _U32, FrameFormatError

# Ways to code a set of indices (occupancy, toggles, changed-colour positions).
SET_BITMAP = 0
SET_RUNS = 1
SET_GAPS = 2
SET_METHOD_NAMES = {SET_BITMAP: "bitmap", SET_RUNS: "runs", SET_GAPS: "gaps"}


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
