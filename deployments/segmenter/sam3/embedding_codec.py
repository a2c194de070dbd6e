"""The compact per-image payload a browser needs to decode SAM 3 click masks itself.

Format (little-endian; docs/sam3-embedding-format.md has the full description and a JavaScript reader):

    0   4 bytes  magic b"S3EB"
    4   u16      version (1)
    6   u16      flags: bit 0 = body is zlib-compressed (browsers: DecompressionStream("deflate"))
    8   u32      header length H (JSON, UTF-8, space-padded to a multiple of 8)
    12  u32      body length B as stored
    16  H bytes  header JSON: id, sizes, and per tensor its shape, encoding and offsets into the body
    16+H B bytes body: the tensor sections, each starting at a multiple of 8 of the *decompressed* body

Encodings: "f32", "f16" and "u8". A u8 tensor is per-channel affine: value = lo[c] + q * step[c], with lo and
step float32 arrays of length C (channel axis 1). How lo and step are chosen is the encoder's business; a
reader only applies the formula:
- range rule (`clip`): [lo, lo + 255 step] spans each channel's quantiles clip .. 1 - clip;
- sigma rule (`sigma_steps` k): step = std / k, widened where needed so that no value is clamped. The codes
  then cluster around 128 and deflate stores them in about log2(k) + 2 bits each (for a given std a Gaussian
  is the worst case), which is what makes the "compact" profile small: the 5.3 M values of a full-size
  embedding take about 3.6-3.9 MB at k = 14. A payload still over the profile's byte budget is encoded
  again with coarser steps.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

MAGIC = b"S3EB"
VERSION = 1
FLAG_ZLIB = 1
_PREFIX = struct.Struct("<4sHHII")
TENSOR_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")


@dataclass(frozen=True)
class TensorSpec:
    encoding: str  # f32 | f16 | u8
    clip: float = 0.0  # range rule: share of each channel's values left outside the range, per side
    sigma_steps: float | None = None  # sigma rule: steps per standard deviation


@dataclass(frozen=True)
class Profile:
    tensors: dict[str, TensorSpec]
    zlib: bool = False
    max_bytes: int | None = None  # sigma-rule profiles are encoded again, coarser, until they fit


# Mask agreement of each profile with the uncompressed features is measured in
# tests/test_embedding_codec.py (tiny model, CPU) and bench/bench_sam3_encoder.py (full size, GPU).
PROFILES: dict[str, Profile] = {
    "fp32": Profile({n: TensorSpec("f32") for n in TENSOR_NAMES}),
    "fp16": Profile({n: TensorSpec("f16") for n in TENSOR_NAMES}),
    "int8": Profile({n: TensorSpec("u8", clip=1e-4) for n in TENSOR_NAMES}, zlib=True),
    "compact": Profile({n: TensorSpec("u8", sigma_steps=14.0) for n in TENSOR_NAMES}, zlib=True, max_bytes=4_000_000),
}
DEFAULT_PROFILE = "compact"
# Huffman-only deflate: the u8 codes are noise-like, so LZ77 matching (zlib's default) finds almost nothing
# and costs most of the time; Huffman-only is 2-3x faster and, with memLevel 9's larger blocks, no larger
# (bench/results/sam3_payload.txt). Still a standard zlib stream: readers need no change.
ZLIB_STRATEGY = zlib.Z_HUFFMAN_ONLY
_RETRY_SCALE = 0.8  # sigma_steps multiplier for each new try over the byte budget
_MAX_RETRIES = 4


class CodecError(ValueError):
    pass


def _align(n: int, to: int = 8) -> int:
    return (n + to - 1) // to * to


def _ranges(x2d, spec: TensorSpec):
    """Per channel (rows of x2d, a float32 numpy array or torch tensor): (lo, step) of the 256 levels.

    Statistics in float32: numpy and torch both sum pairwise/in blocks, so 83 k values per channel lose
    nothing that matters at a step of std/14, and float64 copies cost more than the quantisation itself.
    """
    if isinstance(x2d, np.ndarray):
        mn, mx = x2d.min(axis=1), x2d.max(axis=1)
        if spec.sigma_steps:
            step = np.maximum(np.maximum(x2d.std(axis=1) / spec.sigma_steps, (mx - mn) / 255.0), 1e-12)
            lo = np.minimum(np.maximum(x2d.mean(axis=1) - 127.5 * step, mx - 255.0 * step), mn)
            return lo.astype(np.float32), step.astype(np.float32)
        lo, hi = (mn, mx) if spec.clip <= 0 else np.quantile(x2d, [spec.clip, 1.0 - spec.clip], axis=1)
        return lo.astype(np.float32), (np.maximum(hi - lo, 1e-12) / 255.0).astype(np.float32)
    import torch

    mn, mx = torch.aminmax(x2d, dim=1)
    if spec.sigma_steps:
        std, mean = torch.std_mean(x2d, dim=1, correction=0)
        step = torch.clamp(torch.maximum(std / spec.sigma_steps, (mx - mn) / 255.0), min=1e-12)
        lo = torch.minimum(torch.maximum(mean - 127.5 * step, mx - 255.0 * step), mn)
        return lo, step
    if spec.clip > 0:
        q = torch.tensor([spec.clip, 1.0 - spec.clip], device=x2d.device, dtype=x2d.dtype)
        mn, mx = torch.quantile(x2d, q, dim=1)
    return mn, torch.clamp(mx - mn, min=1e-12) / 255.0


def quantize(x, spec: TensorSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel (axis 1) affine u8 quantisation of a 1xCx... array → (codes, lo, step) as numpy arrays.

    x: a numpy array or a torch tensor; a tensor is quantised where it lives (on the GPU only the u8 codes
    cross to the host, a quarter of the float32 bytes).
    """
    if x.ndim < 2 or x.shape[0] != 1:
        raise CodecError(f"expected a 1xCx... array, got shape {tuple(x.shape)}")
    if isinstance(x, np.ndarray):
        x2d = np.asarray(x, dtype=np.float32).reshape(x.shape[1], -1)
        lo, step = _ranges(x2d, spec)
        codes = x2d - lo[:, None]
        codes /= step[:, None]
        np.rint(codes, out=codes)
        np.clip(codes, 0, 255, out=codes)
        return codes.astype(np.uint8).reshape(-1), lo, step
    import torch

    with torch.inference_mode():
        x2d = x.detach().reshape(x.shape[1], -1).float()
        lo, step = _ranges(x2d, spec)
        codes = ((x2d - lo[:, None]) / step[:, None]).round_().clamp_(0, 255).to(torch.uint8)
        return codes.reshape(-1).cpu().numpy(), lo.cpu().numpy(), step.cpu().numpy()


def dequantize(codes: np.ndarray, lo: np.ndarray, step: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x = lo[:, None] + codes.reshape(shape[1], -1).astype(np.float32) * step[:, None]
    return x.reshape(shape)


def encode(
    tensors: dict[str, np.ndarray],
    *,
    embedding_id: str,
    original_size: tuple[int, int],
    input_size: int,
    profile: str = DEFAULT_PROFILE,
    zlib_level: int = 1,
    zlib_strategy: int = ZLIB_STRATEGY,
    max_bytes: int | None = None,
) -> bytes:
    """tensors: name → 1xCxHxW float array (the three click-decoder inputs), numpy or torch (quantised on
    its device). Returns the payload bytes.

    max_bytes overrides the profile's byte budget (which only sigma-rule tensors can be fitted to).
    zlib_strategy: any zlib strategy gives a standard deflate stream (readers are unaffected).
    """
    if profile not in PROFILES:
        raise CodecError(f"unknown embedding profile {profile!r}; one of {sorted(PROFILES)}")
    chosen = PROFILES[profile]
    budget = max_bytes if max_bytes is not None else chosen.max_bytes
    specs = dict(chosen.tensors)
    meta = {"embedding_id": embedding_id, "original_size": original_size, "input_size": input_size, "profile": profile}
    for _ in range(_MAX_RETRIES + 1):
        data = _encode_once(tensors, specs, chosen.zlib, (zlib_level, zlib_strategy), meta)
        coarser = {n: replace(s, sigma_steps=s.sigma_steps * _RETRY_SCALE) for n, s in specs.items() if s.sigma_steps}
        if budget is None or len(data) <= budget or not coarser:
            break
        specs.update(coarser)
    return data


def _encode_once(tensors, specs, use_zlib: bool, deflate: tuple[int, int], meta: dict) -> bytes:
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
        x = tensors[name]
        spec = specs[name]
        entry = {"name": name, "shape": [int(d) for d in x.shape], "encoding": spec.encoding}
        if spec.encoding in ("f32", "f16"):
            blob = _host_float32(x).astype(np.float16 if spec.encoding == "f16" else np.float32).tobytes()
            entry.update(offset=add(blob), nbytes=len(blob))
        elif spec.encoding == "u8":
            codes, lo, step = quantize(x, spec)
            entry.update(offset=add(codes.tobytes()), nbytes=int(codes.size))
            entry.update(lo_offset=add(lo.tobytes()), step_offset=add(step.tobytes()), channel_axis=1)
            entry["rule"] = {"sigma_steps": round(spec.sigma_steps, 4)} if spec.sigma_steps else {"clip": spec.clip}
        else:
            raise CodecError(f"unknown tensor encoding {spec.encoding!r}")
        entries.append(entry)
    body = b"".join(sections)
    flags = 0
    if use_zlib:
        level, strategy = deflate
        packed = zlib_stream(body, level, strategy)
        if len(packed) < len(body):
            body, flags = packed, FLAG_ZLIB
    h, w = meta["original_size"]
    header = {
        "format": "sam3-click-embedding",
        "version": VERSION,
        "embedding_id": meta["embedding_id"],
        "original_size": [int(h), int(w)],
        "input_size": int(meta["input_size"]),
        "profile": meta["profile"],
        "body_bytes": offset,
        "tensors": entries,
    }
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (_align(len(hjson)) - len(hjson))
    return _PREFIX.pack(MAGIC, VERSION, flags, len(hjson), len(body)) + hjson + body


PARALLEL_CHUNK = 1 << 20  # bytes per thread of `zlib_stream`
_DEFLATE_POOL: ThreadPoolExecutor | None = None


def _raw_deflate(chunk: memoryview, level: int, strategy: int, last: bool) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
    return z.compress(chunk) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def zlib_stream(body: bytes, level: int, strategy: int) -> bytes:
    """One standard zlib stream of `body`, its 1 MiB chunks compressed on parallel threads (zlib
    releases the GIL), as pigz does: every chunk but the last ends on a byte-aligned sync flush,
    so the raw deflate pieces concatenate into one stream; the header and the Adler-32 of the
    whole body wrap it. Chunks share no history, which costs nothing with Huffman-only coding
    (no back-references) and a little ratio otherwise. Any zlib reader decodes it."""
    global _DEFLATE_POOL
    view = memoryview(body)
    chunks = [view[i:i + PARALLEL_CHUNK] for i in range(0, len(body), PARALLEL_CHUNK)] or [view]
    if len(chunks) == 1:
        z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
        return z.compress(body) + z.flush()
    if _DEFLATE_POOL is None:
        _DEFLATE_POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                           thread_name_prefix="deflate")
    parts = list(_DEFLATE_POOL.map(
        lambda i: _raw_deflate(chunks[i], level, strategy, i == len(chunks) - 1), range(len(chunks))))
    # zlib header: CM 8 (deflate), CINFO 7 (32 KiB window), FLEVEL from the level, FCHECK.
    level = 6 if level == zlib.Z_DEFAULT_COMPRESSION else level
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    cmf, flg = 0x78, flevel << 6
    flg |= 31 - ((cmf << 8) | flg) % 31
    return bytes((cmf, flg)) + b"".join(parts) + struct.pack(">I", zlib.adler32(body))


def _host_float32(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    return x.detach().float().cpu().numpy()


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
        raw = np.frombuffer(body, np.uint8, t["nbytes"], t["offset"])
        enc = t["encoding"]
        if enc == "f32":
            out[t["name"]] = raw.view(np.float32).reshape(shape).copy()
        elif enc == "f16":
            out[t["name"]] = raw.view(np.float16).reshape(shape).astype(np.float32)
        elif enc == "u8":
            lo = np.frombuffer(body, np.float32, shape[1], t["lo_offset"])
            step = np.frombuffer(body, np.float32, shape[1], t["step_offset"])
            out[t["name"]] = dequantize(raw, lo, step, shape)
        else:
            raise CodecError(f"unknown tensor encoding {enc!r}")
    return header, out


def raw_nbytes(tensors: dict[str, np.ndarray], dtype=np.float16) -> int:
    """What the same tensors take uncompressed in `dtype` (the 10.6 MB fp16 baseline at full size)."""
    return sum(int(np.prod(np.shape(t))) * np.dtype(dtype).itemsize for t in tensors.values())
