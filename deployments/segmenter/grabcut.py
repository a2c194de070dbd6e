"""Embedded segmenter: OpenCV GrabCut seeded from clicks, a box, a user mask, or the border.

Limits: GrabCut models the object and background as colour mixtures, so it separates an
object from a background of different colours well and fails where they share colours
(a white cup on a white table). It cannot read a text label; the label is ignored, and
without clicks or a box it assumes the object is inside the frame and the image border is
background. It reports no `score` (None): GrabCut has no confidence figure, and the share of
pixels it marked certain is 0 on every photo sent without prompts, which reads as failure.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
from scipy import ndimage

from sam3d_common.errors import BadInput
from sam3d_common.settings import GrabCutSettings

from .base import SegmentPrompt, SegmentResult

_MIN_OBJECT_FRACTION = 0.002


class GrabCutSegmenter:
    name = "grabcut"

    def __init__(self, settings: GrabCutSettings | None = None):
        self.settings = settings or GrabCutSettings()

    def segment(self, image: np.ndarray, prompt: SegmentPrompt) -> SegmentResult:
        h, w = image.shape[:2]
        scale = min(1.0, self.settings.max_side / max(h, w))
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else image
        sh, sw = small.shape[:2]
        seeds = self._seed_mask(prompt, (sh, sw), scale)
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        if not ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).any():
            raise BadInput("the prompt leaves no pixel that could be the object")
        if not ((seeds == cv2.GC_BGD) | (seeds == cv2.GC_PR_BGD)).any():
            # GrabCut needs a background model; the user claimed the whole frame.
            return SegmentResult(mask=np.ones((h, w), bool), score=None, backend=self.name)
        # GrabCut seeds its colour models' k-means from OpenCV's thread-local RNG; fix it so
        # the same photo and prompt always give the same mask, whichever thread runs it.
        cv2.setRNGSeed(0)
        fg = self._iterate(bgr, seeds, bgd, fgd)
        fg = self._clean(fg, prompt, scale)
        if fg.sum() < _MIN_OBJECT_FRACTION * fg.size:
            raise BadInput("segmentation found no object; add a click on the object or a box around it")
        mask = cv2.resize(fg.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
        return SegmentResult(mask=mask, score=None, backend=self.name)

    def _iterate(self, bgr: np.ndarray, seeds: np.ndarray, bgd: np.ndarray, fgd: np.ndarray) -> np.ndarray:
        """GrabCut one iteration at a time: stop once the mask is stable (few pixels change) or
        the time budget is spent, so no input can hold the replica near the stage limit.

        The budget counts this thread's CPU time, not the wall clock: the same photo then runs
        the same iterations (and gives the same mask) however busy the machine is. It is checked
        between iterations; one iteration on a degenerate image can take seconds by itself."""
        s = self.settings
        started = time.thread_time()
        fg = None
        for i in range(s.iterations):
            cv2.grabCut(bgr, seeds, None, bgd, fgd, 1, cv2.GC_INIT_WITH_MASK if i == 0 else cv2.GC_EVAL)
            new = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
            stable = fg is not None and np.count_nonzero(new != fg) <= s.stable_fraction * new.size
            fg = new
            if stable or time.thread_time() - started > s.time_budget_s:
                break
        return fg

    def _seed_mask(self, prompt: SegmentPrompt, shape: tuple[int, int], scale: float) -> np.ndarray:
        sh, sw = shape
        seeds = np.full(shape, cv2.GC_PR_BGD, np.uint8)
        if prompt.mask is not None:
            user = cv2.resize(prompt.mask.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST) > 0
            # Trust the user's interior and far background; let GrabCut settle the edge band.
            band = max(2, round(0.015 * max(sh, sw)))
            inner = ndimage.binary_erosion(user, iterations=band)
            outer = ndimage.binary_dilation(user, iterations=band)
            seeds[:] = cv2.GC_BGD
            seeds[outer] = cv2.GC_PR_BGD
            seeds[user] = cv2.GC_PR_FGD
            seeds[inner] = cv2.GC_FGD
        elif prompt.box is not None:
            b = prompt.box
            x0, y0 = int(np.clip(b.x_min * scale, 0, sw - 1)), int(np.clip(b.y_min * scale, 0, sh - 1))
            x1, y1 = int(np.clip(b.x_max * scale, x0 + 1, sw)), int(np.clip(b.y_max * scale, y0 + 1, sh))
            seeds[:] = cv2.GC_BGD
            seeds[y0:y1, x0:x1] = cv2.GC_PR_FGD
        else:
            band = max(1, round(self.settings.border_fraction * min(sh, sw)))
            seeds[:] = cv2.GC_PR_FGD
            seeds[:band, :] = seeds[-band:, :] = cv2.GC_BGD
            seeds[:, :band] = seeds[:, -band:] = cv2.GC_BGD
            if any(p.label == 1 for p in prompt.points):
                # Clicks given without a box: the object is near them, not everywhere.
                seeds[seeds == cv2.GC_PR_FGD] = cv2.GC_PR_BGD
        radius = max(2, round(0.012 * max(sh, sw)))
        for p in prompt.points:
            cx, cy = int(np.clip(p.x * scale, 0, sw - 1)), int(np.clip(p.y * scale, 0, sh - 1))
            if p.label == 1 and prompt.box is None and prompt.mask is None:
                cv2.circle(seeds, (cx, cy), round(0.25 * max(sh, sw)), int(cv2.GC_PR_FGD), -1)
        for p in prompt.points:
            cx, cy = int(np.clip(p.x * scale, 0, sw - 1)), int(np.clip(p.y * scale, 0, sh - 1))
            value = cv2.GC_FGD if p.label == 1 else cv2.GC_BGD
            cv2.circle(seeds, (cx, cy), radius, int(value), -1)
        return seeds

    @staticmethod
    def _clean(fg: np.ndarray, prompt: SegmentPrompt, scale: float) -> np.ndarray:
        """Keep the component the user pointed at (or the largest) and fill its holes."""
        labels, n = ndimage.label(fg)
        if n == 0:
            return fg
        wanted = {int(labels[int(p.y * scale), int(p.x * scale)])
                  for p in prompt.points if p.label == 1
                  and 0 <= int(p.y * scale) < fg.shape[0] and 0 <= int(p.x * scale) < fg.shape[1]}
        wanted.discard(0)
        if not wanted:
            sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
            wanted = {int(np.argmax(sizes)) + 1}
        keep = np.isin(labels, list(wanted))
        return ndimage.binary_fill_holes(keep)
