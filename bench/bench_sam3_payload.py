"""Browser payload build time (embedding_codec.encode, profile "compact") at the full-size SAM 3 shapes, on
the CPU: today's path against each lever, side by side in one run.

Features are random (per-channel scaled and shifted Gaussians, the worst case of the sigma rule for a given
std) at the real shapes: image_embed 1x256x72x72, high_res_feats_0 1x32x288x288, high_res_feats_1
1x64x144x144. Levers:
- stats32: per-channel statistics in float32 instead of a float64 copy;
- huffman: zlib strategy Z_HUFFMAN_ONLY instead of the default (LZ77 + Huffman) at level 1;
- torch: the features handed over as torch tensors (as the server holds them), quantised by torch where
  they live (on a GPU only the u8 codes would cross to the host).
"before" is the previous code (float64 statistics, default strategy), reproduced here.

    python -m bench.bench_sam3_payload [--reps 7] [--out bench/results/sam3_payload.txt]

Nothing here is asserted; every figure comes from the run that prints it.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from deployments.segmenter.sam3 import embedding_codec as codec  # noqa: E402

FULL = {"image_embed": (1, 256, 72, 72), "high_res_feats_0": (1, 32, 288, 288), "high_res_feats_1": (1, 64, 144, 144)}


def features(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in FULL.items():
        scale = rng.uniform(0.01, 2.0, (1, shape[1], 1, 1)).astype(np.float32)
        shift = rng.normal(0, 0.5, (1, shape[1], 1, 1)).astype(np.float32)
        out[name] = rng.standard_normal(shape, dtype=np.float32) * scale + shift
    return out


def quantize_before(x, spec):
    """The previous quantisation: statistics on a float64 copy."""
    x2d = np.asarray(x, dtype=np.float32).reshape(x.shape[1], -1)
    xd = x2d.astype(np.float64)
    mn, mx = xd.min(axis=1), xd.max(axis=1)
    step = np.maximum(np.maximum(xd.std(axis=1) / spec.sigma_steps, (mx - mn) / 255.0), 1e-12)
    lo = np.clip(xd.mean(axis=1) - 127.5 * step, mx - 255.0 * step, mn)
    lo, step = lo.astype(np.float32), step.astype(np.float32)
    codes = np.rint((x2d - lo[:, None]) / step[:, None])
    np.clip(codes, 0, 255, out=codes)
    return codes.astype(np.uint8).reshape(-1), lo, step


@contextmanager
def stats64():
    current = codec.quantize
    codec.quantize = quantize_before
    try:
        yield
    finally:
        codec.quantize = current


def build(feats, strategy):
    return codec.encode(feats, embedding_id="bench", original_size=(720, 1280), input_size=1008,
                        profile="compact", zlib_strategy=strategy)


def timed(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sam3_payload.txt"))
    args = ap.parse_args()
    import torch

    lines = [f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, zlib {zlib.ZLIB_VERSION}, "
             f"{platform.machine()} cpu threads torch={torch.get_num_threads()}; reps={args.reps}, median ms"]
    feats = features()
    feats_t = {k: torch.from_numpy(v) for k, v in feats.items()}
    default, huff = zlib.Z_DEFAULT_STRATEGY, zlib.Z_HUFFMAN_ONLY

    def before():
        with stats64():
            return build(feats, default)

    def before_huffman():
        with stats64():
            return build(feats, huff)

    variants = [
        ("before (float64 stats, zlib default strategy)", before),
        ("stats32 only", lambda: build(feats, default)),
        ("huffman only", before_huffman),
        ("stats32 + huffman (numpy in)", lambda: build(feats, huff)),
        ("stats32 + huffman (torch in, quantised by torch)", lambda: build(feats_t, huff)),
    ]
    results = {}
    for name, fn in variants:
        results[name] = timed(fn, args.reps)
    base_s, _ = results[variants[0][0]]
    lines.append(f"{'variant':50s} {'ms':>8s} {'x faster':>9s} {'bytes':>9s} {'sigma_steps':>12s} {'rms err/std':>12s}")
    for name, (sec, data) in results.items():
        header, out = codec.decode(data)
        k = header["tensors"][0]["rule"]["sigma_steps"]
        # Quantisation error: RMS of decoded - original over all values, per channel relative to its std.
        rel = []
        for t in header["tensors"]:
            c = t["shape"][1]
            x, y = feats[t["name"]].reshape(c, -1), out[t["name"]].reshape(c, -1)
            rel.append(np.sqrt(((x - y) ** 2).mean(1)) / x.std(1))
        err = float(np.mean(np.concatenate(rel)))
        lines.append(f"{name:50s} {1000 * sec:8.1f} {base_s / sec:9.2f} {len(data):9d} {k:12.4f} {err:12.5f}")
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
