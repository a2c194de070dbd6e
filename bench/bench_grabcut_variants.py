"""The embedded segmenter's variants side by side (issue 12): mask IoU with the former segmenter
(cv2.grabCut, 5 iterations at 384 px; tests/support/grabcut_reference.py) and this thread's CPU
time (median of --repeats), per benchmark photo, in one run.

Noise floor first: the former segmenter's own mask at 376 and 392 px (2 % smaller or larger
working size), and after its 4th iteration, against its mask at 384 px after 5, which says how
far apart two equally valid GrabCut masks of the same photo land.

- before: copy ≤160 px, band 4   the segmenter until run 2: GrabCut iterated on a downscaled copy
                                   (its own colours and neighbour weights, gamma scaled by the
                                   size ratio), the edge re-cut at 384 px within 4 px
- blocks ≤N, band B               multigrid.py: iterations on f×f blocks of the 384-px image (f the
                                   smallest leaving ≤ N blocks), block links summed from the pixel
                                   links, the edge re-cut per pixel within B px
- ..., N iterations               fewer (or as many as the former) iterations
- pixels, 5 iterations             every iteration a per-pixel cut of the whole 384-px image: the
                                   former's own path with this solver (its time is the cost of
                                   reproducing it)

Run 1 (bench/results/grabcut_variants.txt) measured other suspects (a larger copy, wider bands,
costs from the working size on the copy); its code is in the history of this file.

    python -m bench.bench_grabcut_variants [--out bench/results/grabcut_variants_run2.txt]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_embedded_stages import PROMPTS  # noqa: E402
from deployments.segmenter import graphcut  # noqa: E402
from deployments.segmenter.grabcut import _GAMMA, GrabCutSegmenter  # noqa: E402
from sam3d_common.settings import GrabCutSettings  # noqa: E402
from tests.photos import photo_array  # noqa: E402
from tests.support.grabcut_reference import former_grabcut, iou  # noqa: E402


def before(seg: GrabCutSegmenter, bgr: np.ndarray, seeds: np.ndarray, prompt, scale: float) -> np.ndarray:
    """The segmenter's cut until run 2: 5 iterations on a copy ≤160 px wide, edge re-cut at 384 px."""
    s = seg.settings
    sh, sw = seeds.shape
    f = 160 / max(sh, sw)
    cw, ch = round(sw * f), round(sh * f)
    coarse = cv2.resize(bgr, (cw, ch), interpolation=cv2.INTER_AREA)
    fg, bgd, fgd, _ = graphcut.iterate(coarse, seg._seed_mask(prompt, (ch, cw), scale * cw / sw),
                                       _GAMMA * cw / sw, 5, s.stable_fraction, s.time_budget_s)
    rough = cv2.resize(fg.astype(np.uint8) * 255, (sw, sh), interpolation=cv2.INTER_LINEAR) >= 128
    maybe = (seeds == cv2.GC_PR_BGD) | (seeds == cv2.GC_PR_FGD)
    fg_now = np.where(maybe, rough, seeds == cv2.GC_FGD)
    bgd, fgd = graphcut.relearn(graphcut.colour_features(bgr[::2, ::2]), fg_now[::2, ::2].ravel(), bgd, fgd)
    return graphcut.refine_edge(bgr, seeds, rough, bgd, fgd, 4, graphcut.neighbour_weights(bgr, _GAMMA))


def variants() -> dict:
    def blocks(max_blocks: int, band: int, iterations: int = 5):
        seg = GrabCutSegmenter(GrabCutSettings(max_blocks=max_blocks, edge_band=band, iterations=iterations))
        return lambda bgr, seeds, prompt, scale: seg._cut(bgr, seeds)

    shipped = GrabCutSegmenter()
    return {
        "before: copy ≤160 px, band 4": lambda *a: before(shipped, *a),
        "blocks ≤40k, band 4, 4 it. (default)": blocks(40_000, 4, 4),
        "blocks ≤40k, band 4, 5 iterations": blocks(40_000, 4, 5),
        "blocks ≤40k, band 4, 3 iterations": blocks(40_000, 4, 3),
        "blocks ≤40k, band 6, 4 iterations": blocks(40_000, 6, 4),
        "blocks ≤40k, band 8, 4 iterations": blocks(40_000, 8, 4),
        "blocks ≤20k, band 4, 4 iterations": blocks(20_000, 4, 4),
        "pixels, 5 iterations": blocks(16_777_216, 4, 5),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/grabcut_variants_run2.txt")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    seg = GrabCutSegmenter()
    lines = [f"# mask IoU with the former segmenter (cv2.grabCut, 5 iterations at 384 px) and this thread's "
             f"CPU time (median of {a.repeats}), {os.cpu_count()} CPU cores shared with other work, load "
             f"average at start {os.getloadavg()[0]:.1f}", ""]
    table = variants()
    for name, prompt in PROMPTS.items():
        img = photo_array(name)
        h, w = img.shape[:2]
        scale = 384 / max(h, w)
        small = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        bgr, seeds = np.ascontiguousarray(small[:, :, ::-1]), seg._seed_mask(prompt, small.shape[:2], scale)
        ref = former_grabcut(img, prompt)
        floor = {side: iou(former_grabcut(img, prompt, side), ref) for side in (376, 392)}
        lines.append(f"{name:<10} noise floor: the former at 376 px IoU {floor[376]:.3f}, at 392 px IoU "
                     f"{floor[392]:.3f}, after 4 iterations IoU {iou(former_grabcut(img, prompt, 384, 4), ref):.3f} "
                     f"(against itself at 384 px, 5 iterations)")
        for label, cut in table.items():
            times = []
            for _ in range(a.repeats):
                t = time.thread_time()
                fg = seg._clean(cut(bgr, seeds.copy(), prompt, scale), prompt, scale)
                times.append(time.thread_time() - t)
            mask = cv2.resize(fg.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
            lines.append(f"{name:<10} {label:<38} IoU {iou(mask, ref):.3f}   "
                         f"{statistics.median(times) * 1e3:5.0f} ms CPU")
        print("\n".join(lines[-len(table) - 1:]), flush=True)
    lines.append(f"load average at the end {os.getloadavg()[0]:.1f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
