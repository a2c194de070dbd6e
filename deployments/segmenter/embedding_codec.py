"""The compact per-image payload a browser needs to decode SAM 3 click masks itself.

Format (little-endian; docs/sam3-embedding-format.md has the full description and a JavaScript reader):

    0   4 bytes  magic b"S3EB"
    4   u16      version (1)
    6   u16      flags: bit 0 = body is zlib-compressed (browsers: DecompressionStream("deflate"))
    8   u32      header length H (JSON, UTF-8, space-padded to a multiple of 8)
    12  u32      body length B as stored
    16  H bytes  header JSON: id, sizes, and per tensor its shape, encoding and offsets into the body
    16+H B bytes body: the tensor sections, each starting at a multiple of 8 of the *decompressed* body

Encodings: "f32", "f16", "u8" and "u4" (two values a byte, even element in the low nibble). Quantised tensors
are per-channel affine: value = lo[c] + q * step[c], with lo and step stored as float32 arrays of length C.
The range [lo, lo + step * (2^bits - 1)] covers each channel's quantile `clip` .. `1 - clip` (min..max when
clip is 0); values outside are clamped.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"S3EB"
VERSION = 1
FLAG_ZLIB = 1
_PREFIX = struct.Struct("<4sHHII")
TENSOR_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")


@dataclass(frozen=True)
class TensorSpec:
    encoding: str  # f32 | f16 | u8 | u4
    clip: float = 0.0  # share of each channel's values allowed outside the quantised range, per side


# image_embed 1x256x72x72, high_res_feats_1 1x64x144x144 (1.3 M values each), high_res_feats_0 1x32x288x288
# (2.7 M values): u8 + u8 + u4 is 3.98 MB before zlib. Mask agreement with the uncompressed features is
# measured in tests/test_embedding_codec.py and bench/bench_sam3_encoder.py.
PROFILES: dict[str, tuple[dict[str, TensorSpec], bool]] = {
    "fp32": ({n: TensorSpec("f32") for n in TENSOR_NAMES}, False),
    "fp16": ({n: TensorSpec("f16") for n in TENSOR_NAMES}, False),
    "int8": ({n: TensorSpec("u8", 1e-4) for n in TENSOR_NAMES}, True),
    "compact": (
        {
            "image_embed": TensorSpec("u8", 1e-4),
            "high_res_feats_1": TensorSpec("u8", 1e-4),
            "high_res_feats_0": TensorSpec("u4", 1e-3),
        },
        True,
    ),
}
DEFAULT_PROFILE = "compact"
_BITS = {"u8": 8, "u4": 4}


class CodecError(ValueError):
    pass


def _align(n: int, to: int = 8) -> int:
    return (n + to - 1) // to * to


def _channel_ranges(x2d: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    if clip <= 0:
        return x2d.min(axis=1), x2d.max(axis=1)
    lo, hi = np.quantile(x2d, [clip, 1.0 - clip], axis=1)
    return lo, hi


def quantize(x: np.ndarray, bits: int, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel (axis 1) affine quantisation of a 1xCx... array → (codes uint8 C-order, lo, step)."""
    if x.ndim < 2 or x.shape[0] != 1:
        raise CodecError(f"expected a 1xCx... array, got shape {x.shape}")
    channels = x.shape[1]
    x2d = np.asarray(x, dtype=np.float32).reshape(channels, -1)
    lo, hi = _channel_ranges(x2d, clip)
    levels = (1 << bits) - 1
    step = np.maximum(hi - lo, 1e-12).astype(np.float32) / levels
    lo = lo.astype(np.float32)
    codes = np.rint((x2d - lo[:, None]) / step[:, None])
    np.clip(codes, 0, levels, out=codes)
    return codes.astype(np.uint8).reshape(-1), lo, step


def dequantize(codes: np.ndarray, lo: np.ndarray, step: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    channels = shape[1]
    x = lo[:, None] + codes.reshape(channels, -1).astype(np.float32) * step[:, None]
    return x.reshape(shape)


def _pack_u4(codes: np.ndarray) -> np.ndarray:
    if codes.size % 2:
        codes = np.concatenate([codes, np.zeros(1, np.uint8)])
    return (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)


def _unpack_u4(packed: np.ndarray, count: int) -> np.ndarray:
    out = np.empty(packed.size * 2, np.uint8)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    return out[:count]


def encode(
    tensors: dict[str, np.ndarray],
    *,
    embedding_id: str,
    original_size: tuple[int, int],
    input_size: int,
    profile: str = DEFAULT_PROFILE,
    zlib_level: int = 1,
) -> bytes:
    """tensors: name → 1xCxHxW float array (the three click-decoder inputs). Returns the payload bytes."""
    if profile not in PROFILES:
        raise CodecError(f"unknown embedding profile {profile!r}; one of {sorted(PROFILES)}")
    specs, use_zlib = PROFILES[profile]
    sections: list[bytes] = []
    entries = []
    offset = 0

    def add(blob: bytes) -> int:
        nonlocal offset
        start = offset
        pad = _align(len(blob)) - len(blob)
        sections.append(blob + b"\0" * pad)
        offset += len(blob) + pad
        return start

    for name in TENSOR_NAMES:
        if name not in tensors:
            raise CodecError(f"missing tensor {name!r}")
        x = np.ascontiguousarray(tensors[name], dtype=np.float32)
        spec = specs[name]
        entry = {"name": name, "shape": list(x.shape), "encoding": spec.encoding}
        if spec.encoding in ("f32", "f16"):
            blob = x.astype(np.float16 if spec.encoding == "f16" else np.float32).tobytes()
            entry.update(offset=add(blob), nbytes=len(blob))
        else:
            codes, lo, step = quantize(x, _BITS[spec.encoding], spec.clip)
            data = _pack_u4(codes) if spec.encoding == "u4" else codes
            blob = data.tobytes()
            entry.update(offset=add(blob), nbytes=len(blob))
            entry["lo_offset"] = add(lo.tobytes())
            entry["step_offset"] = add(step.tobytes())
            entry["channel_axis"] = 1
            entry["clip"] = spec.clip
        entries.append(entry)
    body = b"".join(sections)
    flags = 0
    if use_zlib:
        packed = zlib.compress(body, zlib_level)
        if len(packed) < len(body):
            body, flags = packed, FLAG_ZLIB
    header = {
        "format": "sam3-click-embedding",
        "version": VERSION,
        "embedding_id": embedding_id,
        "original_size": [int(original_size[0]), int(original_size[1])],
        "input_size": int(input_size),
        "profile": profile,
        "body_bytes": offset,
        "tensors": entries,
    }
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (_align(len(hjson)) - len(hjson))
    return _PREFIX.pack(MAGIC, VERSION, flags, len(hjson), len(body)) + hjson + body


def read_header(data: bytes) -> tuple[dict, int, int]:
    """→ (header, flags, body start). Raises CodecError on anything malformed."""
    if len(data) < _PREFIX.size:
        raise CodecError("payload too short")
    magic, version, flags, hlen, blen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CodecError("not a SAM 3 embedding payload (bad magic)")
    if version != VERSION:
        raise CodecError(f"unsupported payload version {version}")
    start = _PREFIX.size + hlen
    if len(data) != start + blen:
        raise CodecError("payload length does not match its header")
    try:
        header = json.loads(data[_PREFIX.size:start])
    except ValueError as exc:
        raise CodecError(f"bad payload header: {exc}") from None
    return header, flags, start


def decode(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Payload → (header, name → float32 array). The inverse of `encode`, up to quantisation."""
    header, flags, start = read_header(data)
    body = data[start:]
    if flags & FLAG_ZLIB:
        body = zlib.decompress(body)
    if len(body) != header["body_bytes"]:
        raise CodecError("decompressed body has the wrong length")
    out = {}
    for t in header["tensors"]:
        shape = tuple(t["shape"])
        count = int(np.prod(shape))
        raw = np.frombuffer(body, np.uint8, t["nbytes"], t["offset"])
        enc = t["encoding"]
        if enc == "f32":
            out[t["name"]] = raw.view(np.float32).reshape(shape).copy()
        elif enc == "f16":
            out[t["name"]] = raw.view(np.float16).reshape(shape).astype(np.float32)
        elif enc in _BITS:
            channels = shape[1]
            lo = np.frombuffer(body, np.float32, channels, t["lo_offset"])
            step = np.frombuffer(body, np.float32, channels, t["step_offset"])
            codes = _unpack_u4(raw, count) if enc == "u4" else raw
            out[t["name"]] = dequantize(codes, lo, step, shape)
        else:
            raise CodecError(f"unknown tensor encoding {enc!r}")
    return header, out


def raw_nbytes(tensors: dict[str, np.ndarray], dtype=np.float16) -> int:
    """What the same tensors take uncompressed in `dtype` (the 10.6 MB fp16 baseline at full size)."""
    return sum(int(np.prod(np.shape(t))) * np.dtype(dtype).itemsize for t in tensors.values())
