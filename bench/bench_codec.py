"""Bytes on the wire and codec speed: the compact voxel encoding against the seed encoding.

1. Real photos (scikit-image's coffee, chelsea, astronaut, rocket), segmented by GrabCut and
   reconstructed by the embedded InflationReconstructor (12 geometry + 8 appearance frames on
   a 64^3 grid): the bytes of every geometry/appearance event of the stream as it goes on the
   wire: seed SSE, compact SSE (base64 frame_data) and the compact octet-stream transport.
2. A synthetic worst case: a dense 64^3 grid (all 262,144 voxels) with random colours, 20
   frames, 10 % (or all) of the colours re-drawn at random every frame, 1 % voxels toggled.
3. Python encode time per 64^3 frame of 30,000 voxels (key frame, and a delta frame with
   colour changes), per zlib level; the seed encoder for reference.
4. JavaScript decode time under Node (bench/bench_codec_decode.mjs) of the same frames.

    python -m bench.bench_codec [--reps 50] [--out bench/results/codec.txt]

All figures come from the one run that prints them; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from serve_app.protocol import (VoxelFrame, encode_event_fields, format_sse, make_event,  # noqa: E402
                                pack_frame_event, full_codec, stream_header)
from serve_app.protocol.compact_codec import StreamDecoder, StreamEncoder, read_header  # noqa: E402

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
LEVELS = (6, 1, None)
REQUEST_ID = "5f0c1d9e8a7b4c3d2e1f0a9b8c7d6e5f"


# ----------------------------------------------------------------------------- streams

def photo_streams() -> tuple[dict[str, list], str]:
    """name → [(stage, step, total, VoxelFrame)] from GrabCut + InflationReconstructor."""
    from deployments.reconstructor.base import ReconstructOptions, StepFrame
    from deployments.reconstructor.inflation import InflationReconstructor
    from deployments.segmenter.base import Box, SegmentPrompt
    from deployments.segmenter.grabcut import GrabCutSegmenter
    from tests.photos import ROCKET_BOX, photo_array

    async def run(image, mask):
        out = []
        async for item in InflationReconstructor().stream(image, mask, ReconstructOptions()):
            if isinstance(item, StepFrame):
                out.append((item.stage, item.step, item.total_steps, item.frame))
        return out

    streams = {}
    for name in PHOTOS:
        image = photo_array(name)
        prompt = SegmentPrompt(box=Box(**ROCKET_BOX)) if name == "rocket" else SegmentPrompt()
        mask = GrabCutSegmenter().segment(image, prompt).mask
        streams[name] = asyncio.run(run(image, mask))
    return streams, "GrabCut masks (rocket: its box prompt), InflationReconstructor defaults, 64^3"


def worst_case_stream(share: float, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    n = 64
    occ = np.ones((n, n, n), bool)
    cols = rng.integers(0, 256, (n, n, n, 3), dtype=np.uint8)
    frames = []
    for k in range(20):
        if k:
            pick = rng.random((n, n, n)) < share
            cols[pick] = rng.integers(0, 256, (int(pick.sum()), 3), dtype=np.uint8)
            occ ^= rng.random((n, n, n)) < 0.01
        frames.append(("appearance", k + 1, 20, VoxelFrame.from_occupancy(occ, cols)))
    return frames


def sse_event(stage: str, step: int, total: int, seq: int, fields: dict) -> dict:
    ev = make_event(stage, stage=stage, step=step, total_steps=total, **fields)
    ev.update(request_id=REQUEST_ID, seq=seq, progress=round(0.3 + 0.6 * seq / 20, 4), t=round(0.25 * seq, 3))
    return ev


def wire_bytes(frames: list, level) -> dict:
    """Bytes of the stream's frame events in each encoding, and the compact messages."""
    enc, dec = StreamEncoder(zlib_level=level), StreamDecoder()
    seed_sse = seed_payload = compact_sse = compact_payload = 0
    binary = len(stream_header())
    messages, keys = [], 0
    for seq, (stage, step, total, frame) in enumerate(frames):
        seed_fields = full_codec.encode(frame)
        seed_sse += len(format_sse(sse_event(stage, step, total, seq, seed_fields)))
        seed_payload += len(seed_fields["voxel_data"])
        msg = enc.encode(frame, "voxels")
        got = dec.decode(msg)  # lossless, checked on every frame of the benchmark too
        assert np.array_equal(got.coords, frame.sorted().coords)
        fields = encode_event_fields(msg)
        compact_sse += len(format_sse(sse_event(stage, step, total, seq, fields)))
        compact_payload += len(msg)
        meta = sse_event(stage, step, total, seq, encode_event_fields(msg, with_data=False))
        binary += len(pack_frame_event(meta, msg))
        messages.append(msg)
        keys += read_header(msg).key
    return {"seed_sse": seed_sse, "seed_payload": seed_payload, "compact_sse": compact_sse,
            "compact_payload": compact_payload, "binary": binary, "messages": messages,
            "keys": keys, "frames": len(frames), "voxels": frames[-1][3].count}


# ----------------------------------------------------------------------------- timing frames

def frames_30k() -> dict[str, tuple[VoxelFrame, VoxelFrame]]:
    """Two 30,000-voxel 64^3 cases: (key frame, next frame with changed colours)."""
    import cv2
    from tests.photos import photo_array

    n, target = 64, 30_000
    g = np.indices((n, n, n)).transpose(1, 2, 3, 0) - (n - 1) / 2
    r = np.sqrt(((g / np.array([31.0, 28.0, 25.0])) ** 2).sum(-1))
    inside = np.sort(r[r < 1.0])
    occ = (r < 1.0) & (r >= inside[-target])
    photo = cv2.resize(photo_array("coffee"), (n, n), interpolation=cv2.INTER_AREA)

    def painted(sigma: float) -> np.ndarray:
        img = cv2.GaussianBlur(photo, (0, 0), sigma) if sigma else photo
        cols_xy = np.swapaxes(img[::-1], 0, 1)  # image rows → grid [x, y], y up
        return np.ascontiguousarray(np.broadcast_to(cols_xy[:, :, None, :], (n, n, n, 3)))

    shell = (VoxelFrame.from_occupancy(occ, painted(2.0)), VoxelFrame.from_occupancy(occ, painted(1.5)))
    rng = np.random.default_rng(1)
    flat = np.zeros(n ** 3, bool)
    flat[rng.choice(n ** 3, target, replace=False)] = True
    cols = rng.integers(0, 256, (n, n, n, 3), dtype=np.uint8)
    a = VoxelFrame.from_occupancy(flat.reshape(n, n, n), cols)
    b_cols = a.colors.copy()
    pick = rng.random(len(b_cols)) < 0.1
    b_cols[pick] = rng.integers(0, 256, (int(pick.sum()), 3), dtype=np.uint8)
    rand = (a, VoxelFrame(n, a.coords, b_cols))
    return {"photo-painted shell": shell, "random voxels+colours": rand}


def time_encode(a: VoxelFrame, b: VoxelFrame, level, reps: int) -> tuple[float, float, int, int]:
    keys, deltas = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        key_msg = StreamEncoder(zlib_level=level).encode(a)
        keys.append(time.perf_counter() - t0)
        enc = StreamEncoder(zlib_level=level)
        enc.encode(a)
        t0 = time.perf_counter()
        delta_msg = enc.encode(b)
        deltas.append(time.perf_counter() - t0)
    return (statistics.median(keys) * 1e3, statistics.median(deltas) * 1e3, len(key_msg), len(delta_msg))


def time_seed(a: VoxelFrame, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        full_codec.encode(a)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def js_decode(vectors: dict[str, list[bytes]], reps: int) -> dict | None:
    node = shutil.which("node")
    if node is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, msgs in vectors.items():
            p = Path(tmp) / f"{len(files)}.json"
            p.write_text(json.dumps({"name": name, "messages": [
                {"data": base64.b64encode(m).decode()} for m in msgs]}))
            files.append(str(p))
        out = subprocess.run([node, str(ROOT / "bench/bench_codec_decode.mjs"), *files, "--reps", str(reps)],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# ----------------------------------------------------------------------------- report

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50, help="repetitions per timing (median reported)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/codec.txt")
    a = ap.parse_args()
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    say(f"# compact vs seed voxel frames — python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.machine()} ({platform.processor() or 'cpu'}), one run")
    streams, how = photo_streams()
    say(f"# real photos: {how}")
    say("# bytes of all geometry/appearance events of one stream; ratio = seed SSE / compact")
    say(f"{'stream':<28}{'zlib':>5}{'frames':>7}{'keys':>5}{'voxels':>8}{'seed SSE':>12}"
        f"{'compact SSE':>13}{'binary':>12}{'SSE ratio':>11}{'bin ratio':>11}")
    js_vectors: dict[str, list[bytes]] = {}
    totals = {lvl: [0, 0, 0] for lvl in LEVELS}
    cases = list(streams.items()) + [("worst: dense, 10% recolour", worst_case_stream(0.10)),
                                     ("worst: dense, all recolour", worst_case_stream(1.0))]
    for name, frames in cases:
        for lvl in LEVELS:
            w = wire_bytes(frames, lvl)
            if name in streams:
                t = totals[lvl]
                t[0] += w["seed_sse"]
                t[1] += w["compact_sse"]
                t[2] += w["binary"]
            if lvl == 6:
                js_vectors[f"{name} (zlib 6)"] = w["messages"]
            say(f"{name:<28}{str(lvl):>5}{w['frames']:>7}{w['keys']:>5}{w['voxels']:>8}{w['seed_sse']:>12,}"
                f"{w['compact_sse']:>13,}{w['binary']:>12,}{w['seed_sse'] / w['compact_sse']:>10.1f}x"
                f"{w['seed_sse'] / w['binary']:>10.1f}x")
    for lvl in LEVELS:
        s, c, b = totals[lvl]
        say(f"{'4 photos together':<28}{str(lvl):>5}{'':>7}{'':>5}{'':>8}{s:>12,}{c:>13,}{b:>12,}"
            f"{s / c:>10.1f}x{s / b:>10.1f}x  compact = 1/{s / c:.1f} of seed (goal <= 1/8)")

    say()
    say(f"# Python encode, ms per 64^3 frame of 30,000 voxels (median of {a.reps})")
    say(f"{'frame':<28}{'zlib':>5}{'key ms':>9}{'delta ms':>10}{'key bytes':>11}{'delta bytes':>13}")
    for name, (fa, fb) in frames_30k().items():
        assert fa.count == 30_000
        for lvl in LEVELS:
            key_ms, delta_ms, kb, db = time_encode(fa, fb, lvl, a.reps)
            say(f"{name:<28}{str(lvl):>5}{key_ms:>9.3f}{delta_ms:>10.3f}{kb:>11,}{db:>13,}")
            js_vectors[f"30k {name} (zlib {lvl})"] = [StreamEncoder(zlib_level=lvl).encode(fa),
                                                      _delta(fa, fb, lvl)]
        say(f"{name:<28}{'seed':>5}{time_seed(fa, a.reps):>9.3f}{'':>10}"
            f"{len(full_codec.encode(fa)['voxel_data']):>11,}  (seed encoder, base64 text)")
    say("# goal: <= 1 ms per 30,000-voxel frame")

    say()
    js = js_decode(js_vectors, reps=max(50, a.reps * 2))
    if js is None:
        say("# JS decode: node not found; skipped")
    else:
        say(f"# JavaScript decode under Node {js['node']}, ms per message (median of {js['reps']}; "
            "decode() is async and inflates with DecompressionStream)")
        say(f"{'stream':<40}{'messages':>9}{'key ms':>9}{'delta ms (median of msgs)':>27}{'max ms':>9}"
            f"{'sync ms':>9}")
        for r in js["results"]:
            msgs = r["messages"]
            key_ms = [m["ms_median"] for m in msgs if m["key"]]
            delta_ms = [m["ms_median"] for m in msgs if not m["key"]]
            sync = [m["sync_ms_median"] for m in msgs if m["sync_ms_median"] is not None]
            say(f"{r['name']:<40}{len(msgs):>9}{statistics.median(key_ms):>9.3f}"
                f"{(statistics.median(delta_ms) if delta_ms else float('nan')):>27.3f}"
                f"{max(m['ms_median'] for m in msgs):>9.3f}"
                f"{(max(sync) if sync else float('nan')):>9.3f}")
        say("# goal: <= 2 ms per 64^3 frame")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")


def _delta(fa: VoxelFrame, fb: VoxelFrame, level) -> bytes:
    enc = StreamEncoder(zlib_level=level)
    enc.encode(fa)
    return enc.encode(fb)


if __name__ == "__main__":
    main()
