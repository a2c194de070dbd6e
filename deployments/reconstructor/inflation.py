"""Embedded reconstructor: silhouette inflation with progressive colour refinement.

Geometry: the mask is fitted into the grid and inflated by solving the Poisson problem
∇²u = -1 inside the silhouette with u = 0 on its edge (red-black Gauss-Seidel). The half-thickness
at each pixel is depth_scale * 2 * sqrt(u), which turns a disc into a sphere and a long bar
into a cylinder. Each geometry step runs more relaxation sweeps; plain Gauss-Seidel converges slowly
(about 800 sweeps to within 5 % on a 64-wide silhouette), so the intermediate solutions
are real partial solves and the object visibly swells from a flat cut-out to its volume.

Appearance: colours come from the photo, mask-weighted so the background does not bleed
in at the edges. The front takes the photo's colours and the back the same colours mirrored
through the depth axis. Each appearance step sharpens them: step k blurs the colour map
with a Gaussian whose width falls to zero at the last step.

Limits: the shape is a symmetric "balloon" of the silhouette, so concavities seen only
from the side (the inside of a cup, the gap under a chair) are filled, thin parts are as
deep as they are wide, and the hidden back is a mirror of the front. It is a genuine
single-view reconstruction, not a learned one.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import cv2
import numpy as np

from sam3d_common.errors import BadInput
from sam3d_common.frames import VoxelFrame
from sam3d_common.settings import InflationSettings

from .base import FrameGate, ReconstructOptions, Reconstruction, StepFrame, shell

_TOTAL_SWEEPS_64 = 800  # Gauss-Seidel sweeps that bring a 64-wide silhouette within ~5 % of converged


@dataclass
class _Prepared:
    silhouette: np.ndarray  # (N,N) bool, indexed [x, y]
    colors: np.ndarray  # (N,N,3) float32 mask-weighted colour per column, indexed [x, y]


def _to_grid(a: np.ndarray) -> np.ndarray:
    """Image layout [row, col] (row 0 at the top) → grid layout [x, y] (y up)."""
    return np.ascontiguousarray(np.swapaxes(a[::-1], 0, 1))


def prepare(image: np.ndarray, mask: np.ndarray, n: int, fill: float) -> _Prepared:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise BadInput("the mask is empty")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bw, bh = x1 - x0, y1 - y0
    scale = fill * n / max(bw, bh)
    gw, gh = max(1, round(bw * scale)), max(1, round(bh * scale))
    m = mask[y0:y1, x0:x1].astype(np.float32)
    rgb = image[y0:y1, x0:x1].astype(np.float32)
    # Area-average only object pixels: colour = Σ(rgb·m) / Σ(m) over each voxel's footprint.
    num = cv2.resize(rgb * m[..., None], (gw, gh), interpolation=cv2.INTER_AREA)
    den = cv2.resize(m, (gw, gh), interpolation=cv2.INTER_AREA)
    sil_small = den >= 0.5
    if not sil_small.any():
        sil_small = den >= den.max() * 0.5
    col_small = num / np.maximum(den, 1e-6)[..., None]
    sil_img = np.zeros((n, n), bool)
    col_img = np.zeros((n, n, 3), np.float32)
    ox, oy = (n - gw) // 2, (n - gh) // 2
    sil_img[oy:oy + gh, ox:ox + gw] = sil_small
    col_img[oy:oy + gh, ox:ox + gw] = col_small
    return _Prepared(_to_grid(sil_img), _to_grid(col_img))


def relax(u: np.ndarray, inside: np.ndarray, sweeps: int, omega: float = 1.0) -> np.ndarray:
    """Red-black Gauss-Seidel (SOR when omega > 1) sweeps for ∇²u = -1 on `inside`, u = 0 elsewhere (grid spacing 1).

    Works in place on one zero-bordered buffer with whole-array multiply-adds (a colour's
    weight is 0 off that colour and outside), so a sweep is a handful of array operations
    with no padding copies or boolean gathers: 10x faster than indexing, same numbers.
    """
    n0, n1 = u.shape
    parity = (np.add.outer(np.arange(n0), np.arange(n1)) % 2).astype(bool)
    p = np.zeros((n0 + 2, n1 + 2), u.dtype)
    p[1:-1, 1:-1] = u
    centre = p[1:-1, 1:-1]
    colours = [inside & ~parity, inside & parity]
    gain = [(c * (0.25 * omega)).astype(u.dtype) for c in colours]  # ω/4 on the colour, else 0
    keep = [(1.0 - c * omega).astype(u.dtype) for c in colours]  # 1-ω on the colour, else 1
    acc = np.empty_like(u)
    for _ in range(sweeps):
        for g, k in zip(gain, keep):
            np.add(p[:-2, 1:-1], p[2:, 1:-1], out=acc)
            acc += p[1:-1, :-2]
            acc += p[1:-1, 2:]
            acc += 1.0
            acc *= g
            centre *= k
            centre += acc
    return centre.copy()


def occupancy(u: np.ndarray, silhouette: np.ndarray, depth_scale: float) -> np.ndarray:
    n = u.shape[0]
    half = np.where(silhouette, np.maximum(depth_scale * 2.0 * np.sqrt(np.maximum(u, 0)), 0.5), -1.0)
    z = np.abs(np.arange(n) + 0.5 - n / 2.0)
    return z[None, None, :] <= half[:, :, None]


def refine_colors(prep: _Prepared, sigma: float) -> np.ndarray:
    """(N,N,3) uint8 column colours, blurred by `sigma` voxels inside the silhouette only."""
    if sigma <= 0:
        out = prep.colors
    else:
        w = prep.silhouette.astype(np.float32)
        num = cv2.GaussianBlur(prep.colors * w[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(w, (0, 0), sigma)
        out = num / np.maximum(den, 1e-6)[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class InflationReconstructor:
    name = "inflation"

    def __init__(self, settings: InflationSettings | None = None, grid_size: int = 64):
        self.settings = settings or InflationSettings()
        self.n = grid_size
        self.steps_run = 0  # counted for tests of cancellation

    async def stream(self, image: np.ndarray, mask: np.ndarray, options: ReconstructOptions):
        s = self.settings
        prep = await asyncio.to_thread(prepare, image, mask, self.n, s.fill)
        try:
            async for item in self._steps(prep, options):
                yield item
        finally:
            # Cancelled or done, drop the per-request volumes now rather than at GC time.
            prep.silhouette = prep.colors = None

    async def _steps(self, prep: _Prepared, options: ReconstructOptions):
        s = self.settings
        u = np.zeros((self.n, self.n), np.float32)
        geo_total = options.geometry_steps or s.geometry_steps
        app_total = options.appearance_steps or s.appearance_steps
        sweeps_done = 0
        # Convergence takes O(width²) sweeps; scale from the 64-grid figure.
        total_sweeps = round(_TOTAL_SWEEPS_64 * (self.n / 64) ** 2)
        occ = None
        show = FrameGate(options.geometry_every, options.min_frame_interval_s)
        for k in range(1, geo_total + 1):
            started = time.monotonic()
            target = round(total_sweeps * k / geo_total)
            u = await asyncio.to_thread(relax, u, prep.silhouette, target - sweeps_done)
            sweeps_done = target
            occ = occupancy(u, prep.silhouette, s.depth_scale)
            self.steps_run += 1
            if show(k, geo_total):
                frame = VoxelFrame.from_occupancy(shell(occ))
                yield StepFrame("geometry", k, geo_total, frame)
            await self._pace(started)
        surface = shell(occ)
        sigma0 = self.n / 10.0
        cols = None
        show = FrameGate(options.colors_every, options.min_frame_interval_s)
        for k in range(1, app_total + 1):
            started = time.monotonic()
            sigma = sigma0 * (1.0 - k / app_total)
            cols = await asyncio.to_thread(refine_colors, prep, sigma)
            self.steps_run += 1
            if show(k, app_total):
                col_vol = np.broadcast_to(cols[:, :, None, :], (self.n, self.n, self.n, 3))
                yield StepFrame("appearance", k, app_total, VoxelFrame.from_occupancy(surface, col_vol))
            await self._pace(started)
        colors = np.ascontiguousarray(np.broadcast_to(cols[:, :, None, :], (self.n,) * 3 + (3,)))
        yield Reconstruction(occupancy=occ, colors=colors, backend=self.name)

    async def _pace(self, started: float) -> None:
        left = self.settings.min_step_s - (time.monotonic() - started)
        # Always yield to the loop so a cancellation lands between steps.
        await asyncio.sleep(max(0.0, left))
