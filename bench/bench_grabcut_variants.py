"""Why the embedded segmenter's masks on chelsea and astronaut disagree with the former one (issue 12).

For each benchmark photo: the IoU of the segmenter's mask with the former segmenter's
(cv2.grabCut, 5 iterations at 384 px; tests/support/grabcut_reference.py) before and after the
clean-up (largest component, holes filled), and the IoU and this thread's CPU time of variants
that each spend more of the time budget on one suspected cause:

- coarse side 240 px                 the coarse copy too small
- band 16 px, band 24 px x3          the edge re-cut too narrow: a band of 16 px, and of 24 px cut
                                     3 times with the mixtures relearnt between cuts
- fine costs                         the coarse copy's colours blurred: each coarse pixel's cost is
                                     the mean of its 384-px pixels' costs, the mixtures learnt from
                                     every 2nd 384-px pixel
- 384 px x1 / x2 after coarse        the coarse path itself: 1 or 2 GrabCut iterations over the
                                     whole 384-px image, started from the coarse mask and mixtures
- 384 px x5                          the former's own path with this solver (its time is the cost
                                     of reproducing it)

    python -m bench.bench_grabcut_variants [--out bench/results/grabcut_variants.txt]
"""
from __future__ import annotations

import argparse
import os
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


def coarse_start(seg: GrabCutSegmenter, bgr, seeds, prompt, scale):
    """The segmenter's coarse iterations: (384-px rough mask, mixtures, coarse size)."""
    s = seg.settings
    sh, sw = seeds.shape
    f = s.coarse_side / max(sh, sw)
    cw, ch = round(sw * f), round(sh * f)
    coarse = cv2.resize(bgr, (cw, ch), interpolation=cv2.INTER_AREA)
    fg, bgd, fgd, _ = graphcut.iterate(coarse, seg._seed_mask(prompt, (ch, cw), scale * cw / sw),
                                       _GAMMA * cw / sw, s.iterations, s.stable_fraction, s.time_budget_s)
    rough = cv2.resize(fg.astype(np.uint8) * 255, (sw, sh), interpolation=cv2.INTER_LINEAR) >= 128
    return rough, bgd, fgd, (cw, ch)


def recut(bgr, seeds, rough, bgd, fgd, free, passes):
    """`passes` GrabCut iterations at 384 px over `free` (others keep rough's label)."""
    h, w = seeds.shape
    maybe = (seeds == cv2.GC_PR_BGD) | (seeds == cv2.GC_PR_FGD)
    labels = np.where(maybe, np.where(rough, cv2.GC_PR_FGD, cv2.GC_PR_BGD), seeds).astype(np.uint8)
    fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    free = free & maybe
    sub = graphcut.colour_features(bgr[::2, ::2])
    x = graphcut.colour_features(bgr[free])
    cut = graphcut.MinCut(labels, graphcut.neighbour_weights(bgr, _GAMMA), free)
    src, snk = np.zeros((h, w)), np.zeros((h, w))
    for _ in range(passes):
        bgd, fgd = graphcut.relearn(sub, fg[::2, ::2].ravel(), bgd, fgd)
        src[free], snk[free] = bgd.neg_log(x), fgd.neg_log(x)
        fg = cut.solve(src, snk)
    return fg


def band(rough, width):
    u8 = rough.astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(u8, kernel) != cv2.erode(u8, kernel)


def fine_costs(seg, bgr, seeds, prompt, scale):
    """Coarse iterations whose data costs are block means of the 384-px pixels' costs."""
    s = seg.settings
    sh, sw = seeds.shape
    f = s.coarse_side / max(sh, sw)
    cw, ch = round(sw * f), round(sh * f)
    coarse = cv2.resize(bgr, (cw, ch), interpolation=cv2.INTER_AREA)
    cseeds = seg._seed_mask(prompt, (ch, cw), scale * cw / sw)
    bgd, fgd = graphcut.initial_models(np.ascontiguousarray(bgr[::2, ::2]), np.ascontiguousarray(seeds[::2, ::2]))
    sub, every = graphcut.colour_features(bgr[::2, ::2]), graphcut.colour_features(bgr)
    cut = graphcut.MinCut(cseeds, graphcut.neighbour_weights(coarse, _GAMMA * cw / sw),
                          (cseeds == cv2.GC_PR_BGD) | (cseeds == cv2.GC_PR_FGD))
    fg_big, fg = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD), None
    for _ in range(s.iterations):
        bgd, fgd = graphcut.relearn(sub, fg_big[::2, ::2].ravel(), bgd, fgd)
        costs = [cv2.resize(m.neg_log(every).reshape(sh, sw), (cw, ch), interpolation=cv2.INTER_AREA)
                 for m in (bgd, fgd)]
        new = cut.solve(*costs)
        stable = fg is not None and np.count_nonzero(new != fg) <= s.stable_fraction * new.size
        fg = new
        fg_big = cv2.resize(fg.astype(np.uint8) * 255, (sw, sh), interpolation=cv2.INTER_LINEAR) >= 128
        if stable:
            break
    return graphcut.refine_edge(bgr, seeds, fg_big, bgd, fgd, s.edge_band, _GAMMA)


def variants(seg: GrabCutSegmenter):
    def coarse_then(free_of, passes):
        def run(bgr, seeds, prompt, scale):
            rough, bgd, fgd, _ = coarse_start(seg, bgr, seeds, prompt, scale)
            return recut(bgr, seeds, rough, bgd, fgd, free_of(rough), passes)
        return run

    whole = (lambda rough: np.ones_like(rough))
    wide = GrabCutSegmenter(GrabCutSettings(coarse_side=240))
    full = GrabCutSegmenter(GrabCutSettings(coarse_side=384, stable_fraction=0))
    return {
        "as shipped": seg._cut,
        "coarse side 240 px": wide._cut,
        "band 16 px": coarse_then(lambda r: band(r, 16), 1),
        "band 24 px x3": coarse_then(lambda r: band(r, 24), 3),
        "fine costs": lambda *a: fine_costs(seg, *a),
        "384 px x1 after coarse": coarse_then(whole, 1),
        "384 px x2 after coarse": coarse_then(whole, 2),
        "384 px x5": full._cut,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/grabcut_variants.txt")
    a = ap.parse_args()
    seg = GrabCutSegmenter()
    lines = [f"# mask IoU with the former segmenter (cv2.grabCut, 5 iterations at 384 px) and this "
             f"thread's CPU time, one run, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}", ""]
    for name, prompt in PROMPTS.items():
        img = photo_array(name)
        h, w = img.shape[:2]
        scale = 384 / max(h, w)
        small = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        bgr, seeds = np.ascontiguousarray(small[:, :, ::-1]), seg._seed_mask(prompt, small.shape[:2], scale)
        former_raw = seeds.copy()
        cv2.setRNGSeed(0)
        cv2.grabCut(bgr, former_raw, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
        former_raw = (former_raw == cv2.GC_FGD) | (former_raw == cv2.GC_PR_FGD)
        ours_raw = seg._cut(bgr, seeds, prompt, scale)
        lines.append(f"{name:<10} before the clean-up (384 px): IoU {iou(ours_raw, former_raw):.3f}; after it: "
                     f"{iou(seg._clean(ours_raw, prompt, scale), seg._clean(former_raw, prompt, scale)):.3f}")
        ref = former_grabcut(img, prompt)
        for label, cut in variants(seg).items():
            t = time.thread_time()
            fg = seg._clean(cut(bgr, seeds.copy(), prompt, scale), prompt, scale)
            cpu = time.thread_time() - t
            mask = cv2.resize(fg.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
            lines.append(f"{name:<10} {label:<24} IoU {iou(mask, ref):.3f}   {cpu * 1e3:5.0f} ms CPU")
        print("\n".join(lines[-9:]), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
