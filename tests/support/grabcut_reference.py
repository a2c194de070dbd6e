"""The embedded segmenter as it was before issue 12 (cv2.grabCut, 5 iterations at 384 px, the
same seeds and clean-up as GrabCutSegmenter), the reference its masks are compared with by
tests/test_grabcut.py and the benchmarks."""
from __future__ import annotations

import cv2
import numpy as np

from deployments.segmenter.base import SegmentPrompt
from deployments.segmenter.grabcut import GrabCutSegmenter
from sam3d_common.settings import GrabCutSettings


def former_grabcut(img: np.ndarray, prompt: SegmentPrompt, side: int = 384, iterations: int = 5) -> np.ndarray:
    """The former segmenter's mask of an RGB photo: cv2.grabCut, 5 iterations at `side` px
    (other iteration counts: how far its own mask still moves)."""
    seg = GrabCutSegmenter(GrabCutSettings(max_side=side))
    h, w = img.shape[:2]
    scale = min(1.0, side / max(h, w))
    small = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    seeds = seg._seed_mask(prompt, small.shape[:2], scale)
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(small[:, :, ::-1]), seeds, None, np.zeros((1, 65)), np.zeros((1, 65)),
                iterations, cv2.GC_INIT_WITH_MASK)
    fg = seg._clean((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD), prompt, scale)
    return cv2.resize(fg.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))
