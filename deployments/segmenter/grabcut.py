"""Embedded segmenter: GrabCut seeded from clicks, a box, a user mask, or the border.

Speed: GrabCut's iterations cut blocks of the working image (`max_side`), 2×2 pixels on the
benchmark photos (single pixels where a box leaves few undecided), with the working size's own
neighbour weights summed onto the blocks, and only the band along the object's edge is cut again
per pixel (multigrid.py; graphcut.py has the energy and the solver). On the benchmark photos this
takes 60-190 ms of CPU time, against 0.3-1.9 s for cv2.grabCut's 5 iterations at the working
size, with masks that agree with its masks at IoU 0.940-0.991
(bench/results/grabcut_variants_run2.txt).

Limits: GrabCut models the object and background as colour mixtures, so it separates an
object from a background of different colours well and fails where they share colours
(a white cup on a white table). It cannot read a text label; the label is ignored, and
without clicks or a box it assumes the object is inside the frame and the image border is
background. It reports no `score` (None): GrabCut has no confidence figure, and the share of
pixels it marked certain is 0 on every photo sent without prompts, which reads as failure.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from sam3d_common.errors import BadInput
from sam3d_common.settings import GrabCutSettings

from . import multigrid
from .base import SegmentPrompt, SegmentResult

_MIN_OBJECT_FRACTION = 0.002
_GAMMA = 50.0  # GrabCut's smoothness weight at the working size (cv2.grabCut's constant)


def _no_object_message(prompt: SegmentPrompt) -> str:
    """Why the cut kept (next to) nothing, and what the person can do about it. After a click
    or a box, "add a click" would ask for what they already did: the cut separates by colour,
    and around their prompt the object's colours were also the background's (say, one coin
    among others like it)."""
    if prompt.box is not None:
        return ("the object could not be told from the rest of the box by colour; "
                "click on the object inside the box (and on what is not the object)")
    if any(p.label == 1 for p in prompt.points):
        return ("the object could not be told from its background by colour around the click; "
                "draw a box around the object, or click on the background next to it")
    return "segmentation found no object; add a click on the object or a box around it"


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
        if not ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).any():
            raise BadInput("the prompt leaves no pixel that could be the object")
        if not ((seeds == cv2.GC_BGD) | (seeds == cv2.GC_PR_BGD)).any():
            # GrabCut needs a background model; the user claimed the whole frame.
            return SegmentResult(mask=np.ones((h, w), bool), score=None, backend=self.name)
        fg = self._cut(np.ascontiguousarray(small[:, :, ::-1]), seeds)
        fg = self._clean(fg, prompt, scale)
        if fg.sum() < _MIN_OBJECT_FRACTION * fg.size:
            raise BadInput(_no_object_message(prompt))
        mask = cv2.resize(fg.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
        return SegmentResult(mask=mask, score=None, backend=self.name)

    def _cut(self, bgr: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """GrabCut's iterations on blocks of the working image as small as max_blocks allows,
        then the block cut's edge re-cut per pixel (multigrid.py).

        The iterations stop once the mask is stable (stable_fraction) or after time_budget_s of
        this thread's CPU time, so no input holds the replica near the stage limit and a busy
        machine does not change which iterations run (nor the mask)."""
        s = self.settings
        return multigrid.iterate(bgr, seeds, _GAMMA, s.iterations, s.max_blocks, s.edge_band,
                                 s.stable_fraction, s.time_budget_s)[0]

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
        """Keep the component the user pointed at (or the largest) and fill its holes, except
        holes under a background click."""
        labels, n = ndimage.label(fg)
        if n == 0:
            return fg

        def at(label: int) -> list[tuple[int, int]]:
            return [(int(p.y * scale), int(p.x * scale)) for p in prompt.points if p.label == label
                    and 0 <= int(p.y * scale) < fg.shape[0] and 0 <= int(p.x * scale) < fg.shape[1]]

        wanted = {int(labels[y, x]) for y, x in at(1)} - {0}
        if not wanted:
            sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
            wanted = {int(np.argmax(sizes)) + 1}
        keep = np.isin(labels, list(wanted))
        filled = ndimage.binary_fill_holes(keep)
        holes, _ = ndimage.label(filled & ~keep)
        clicked = {int(holes[y, x]) for y, x in at(0)} - {0}
        return filled & ~np.isin(holes, list(clicked)) if clicked else filled
