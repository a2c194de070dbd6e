"""The embedded stages' hot loops in-process, side by side with what they replaced (issue 12).

- GrabCut: iterations run with early stopping vs the former fixed 5, and the mask IoU.
- Inflation: the whole-array red-black sweep vs the former np.pad + boolean-gather sweep,
  800 sweeps on a 64² disc (one request's geometry stage), same numbers.

    python -m bench.bench_embedded_stages [--out bench/results/embedded_stages.txt]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from deployments.reconstructor.inflation import relax  # noqa: E402
from deployments.segmenter import grabcut  # noqa: E402
from deployments.segmenter.base import Box, SegmentPrompt  # noqa: E402
from tests.photos import ROCKET_BOX, photo_array  # noqa: E402
from sam3d_common.settings import GrabCutSettings  # noqa: E402

PROMPTS = {"coffee": SegmentPrompt(), "chelsea": SegmentPrompt(), "astronaut": SegmentPrompt(),
           "rocket": SegmentPrompt(box=Box(**ROCKET_BOX))}


def relax_before(u, inside, sweeps):
    """The former sweep (np.pad and boolean indexing per half-sweep), kept here for comparison."""
    u = u.copy()
    parity = (np.add.outer(np.arange(u.shape[0]), np.arange(u.shape[1])) % 2).astype(bool)
    red, black = inside & ~parity, inside & parity
    for _ in range(sweeps):
        for colour in (red, black):
            p = np.pad(u, 1)
            gs = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + 1.0) * 0.25
            u[colour] += gs[colour] - u[colour]
    return u


def best_of(fn, n=3):
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/embedded_stages.txt")
    a = ap.parse_args()
    lines = [f"# embedded stages in-process, best of 3, load average {os.getloadavg()[0]:.1f}", ""]
    calls = []
    real = cv2.grabCut

    def counting(*args):
        calls.append(1)
        return real(*args)

    grabcut.cv2.grabCut = counting
    for name, prompt in PROMPTS.items():
        img = photo_array(name)
        old = grabcut.GrabCutSegmenter(GrabCutSettings(iterations=5, stable_fraction=0.0))
        new = grabcut.GrabCutSegmenter(GrabCutSettings())
        t_old, m_old = best_of(lambda: old.segment(img, prompt).mask)
        calls.clear()
        t_new, m_new = best_of(lambda: new.segment(img, prompt).mask)
        iters = len(calls) // 3
        iou = (m_old & m_new).sum() / (m_old | m_new).sum()
        lines.append(f"grabcut {name:<10} 5 iterations {t_old:.3f} s   early stop {t_new:.3f} s "
                     f"({iters} iterations, {t_old / t_new:.2f}x)   mask IoU {iou:.4f}")
        print(lines[-1], flush=True)
    grabcut.cv2.grabCut = real
    yy, xx = np.mgrid[:64, :64]
    inside = (yy - 32) ** 2 + (xx - 30) ** 2 < 25 ** 2
    u0 = np.zeros((64, 64), np.float32)
    t_old, r_old = best_of(lambda: relax_before(u0, inside, 800))
    t_new, r_new = best_of(lambda: relax(u0, inside, 800))
    lines.append(f"inflation relax 800 sweeps 64²: before {t_old:.4f} s   now {t_new:.4f} s "
                 f"({t_old / t_new:.1f}x)   max abs difference {np.abs(r_old - r_new).max():.2e}")
    print(lines[-1])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
