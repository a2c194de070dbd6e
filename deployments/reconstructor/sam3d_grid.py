"""Numpy geometry for the SAM 3D Objects backend: the model's object-local voxel grid →
our viewer grid, and the Gaussian decoder's per-Gaussian colours → one colour per voxel.

Frames (all column vectors here):
- local: SAM 3D's 64³ sparse-structure grid; voxel (i, j, k) has its centre at
  ((i, j, k) + 0.5) / 64 - 0.5 in the unit cube (as the Gaussian decoder places it).
- camera: PyTorch3D's camera frame, +X left, +Y up, +Z away from the camera into the scene.
  Upstream places an object with `Transform3d().scale(s).rotate(R).translate(t)`, a row-vector
  transform: p_cam = s * p_local @ R + t, R = quaternion_to_matrix(q) of the predicted pose.
- view (ours, the protocol's): x right, y up, z towards the camera. view = diag(-1, 1, -1) · camera.
The predicted scale and translation are dropped: each frame is centred on the object and keeps
the local grid's scale unless the rotated object would not fit, when it is shrunk to fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
CAMERA_TO_VIEW = np.diag([-1.0, 1.0, -1.0])


def quaternion_to_matrix(q) -> np.ndarray:
    """(w, x, y, z) quaternion, any norm → 3x3 rotation matrix (PyTorch3D's convention)."""
    w, x, y, z = np.asarray(q, dtype=np.float64).reshape(4) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def view_from_local(pose_rotation: np.ndarray | None) -> np.ndarray:
    """Column-vector rotation local → view, from upstream's row-vector pose matrix R (None: identity pose)."""
    r = np.eye(3) if pose_rotation is None else np.asarray(pose_rotation, dtype=np.float64)
    return CAMERA_TO_VIEW @ r.T


@dataclass(frozen=True)
class ViewMapping:
    """For each cell of the view grid, the flat index of the local voxel it shows, or -1."""

    source: np.ndarray  # (n, n, n) int64

    @property
    def occupancy(self) -> np.ndarray:
        return self.source >= 0

    def sample(self, local_values: np.ndarray, fill=0) -> np.ndarray:
        """Local (m, m, m, ...) values → view (n, n, n, ...), `fill` where nothing is."""
        flat = local_values.reshape((-1,) + local_values.shape[3:])
        out = np.full(self.source.shape + local_values.shape[3:], fill, dtype=local_values.dtype)
        hit = self.source >= 0
        out[hit] = flat[self.source[hit]]
        return out


def map_to_view(local_occ: np.ndarray, rotation: np.ndarray, n: int) -> ViewMapping:
    """Resample a local occupancy grid into an n³ view grid rotated by `rotation` (local → view).

    Each view cell centre is rotated back into the local grid and takes the voxel it lands in
    (nearest neighbour), so a rotated object has no holes. The object is centred on its
    rotated bounding box; it keeps the local scale (the local cube spans the view grid) unless
    its rotated extent exceeds the cube, when it is shrunk just enough to fit. Only the view
    cells within the object's rotated box are computed (one vectorised pass).
    """
    m = local_occ.shape[0]
    source = np.full((n, n, n), -1, dtype=np.int64)
    idx = np.argwhere(local_occ)
    if len(idx) == 0:
        return ViewMapping(source)
    rot = np.asarray(rotation, dtype=np.float64)
    pts = ((idx + 0.5) / m - 0.5) @ rot.T  # occupied voxel centres in the view frame
    lo = pts.min(axis=0) - 0.5 / m
    hi = pts.max(axis=0) + 0.5 / m
    centre = (lo + hi) / 2
    span = max(1.0, float((hi - lo).max()))
    axis = (np.arange(n) + 0.5) / n * span - span / 2
    # Only view cells near the object's rotated box can land in an occupied voxel: a voxel's
    # cube reaches at most half its diagonal from its centre.
    reach = np.sqrt(3) / 2 / m
    box = [np.flatnonzero((axis + centre[d] >= pts[:, d].min() - reach)
                          & (axis + centre[d] <= pts[:, d].max() + reach)) for d in range(3)]
    if any(len(b) == 0 for b in box):
        return ViewMapping(source)
    gx, gy, gz = np.meshgrid(*(axis[b] + centre[d] for d, b in enumerate(box)), indexing="ij")
    local = np.stack([gx, gy, gz], axis=-1) @ rot  # row form of rot.T @ v: back to local coordinates
    ijk = np.floor((local + 0.5) * m).astype(np.int64)
    inside = ((ijk >= 0) & (ijk < m)).all(axis=-1)
    flat = np.where(inside, (ijk[..., 0] * m + ijk[..., 1]) * m + ijk[..., 2], 0)
    hit = inside & local_occ.reshape(-1)[flat]
    sub = np.full(hit.shape, -1, dtype=np.int64)
    sub[hit] = flat[hit]
    source[np.ix_(*box)] = sub
    return ViewMapping(source)


def surface(occ: np.ndarray) -> np.ndarray:
    """Occupied voxels not enclosed on all 26 sides (grid borders count as empty).

    This is the set upstream's `prune_sparse_structure(max_neighbor_axes_dist=1)` keeps, as
    the pipeline config asks (`downsample_ss_dist: 1`), for the appearance stage.
    """
    return occ & ~ndimage.binary_erosion(occ, structure=np.ones((3, 3, 3), bool), border_value=0)


def voxel_colors(features_dc, opacity, on_host: bool = True):
    """Per-voxel RGB from its Gaussians: degree-0 SH → RGB, averaged with opacity weights.

    features_dc: (V, G, 3) DC coefficients; opacity: (V, G) activated opacities in [0, 1];
    numpy arrays, or torch tensors, which are reduced where they are (on the GPU only the
    (V, 3) result is copied back, not the V·G Gaussians). Returns (V, 3) uint8, as numpy, or
    for torch input with on_host=False as a tensor where the input is.
    """
    if isinstance(features_dc, np.ndarray) or not hasattr(features_dc, "double"):
        xp, dc, w = np, np.asarray(features_dc, np.float64), np.asarray(opacity, np.float64)
    else:  # torch, imported by whoever made the tensors
        import torch as xp

        dc, w = features_dc.double(), opacity.double()
    rgb = (0.5 + SH_C0 * dc).clip(0.0, 1.0)
    w = w.clip(0.0, None)[..., None]
    total = w.sum(1)
    mean = xp.where(total > 1e-8, (rgb * w).sum(1) / total.clip(1e-8, None), rgb.mean(1))
    out = (mean * 255.0 + 0.5).clip(0, 255)
    if xp is np:
        return out.astype(np.uint8)
    out = out.to(xp.uint8)
    return out.cpu().numpy() if on_host else out


def color_order(occ_shape: int, coords: np.ndarray, source: np.ndarray) -> np.ndarray:
    """For each occupied view cell (`source >= 0`, in that order), the row of `coords` whose
    colour it shows: the colour of the coloured voxel nearest the local voxel the cell samples
    (Euclidean distance transform), so that interior voxels and resampled cells all have one.
    Computed once per run, so that each appearance frame is a single gather."""
    m = occ_shape
    c = np.asarray(coords, dtype=np.int64)
    flat = (c[:, 0] * m + c[:, 1]) * m + c[:, 2]
    have = np.zeros(m ** 3, bool)
    have[flat] = True
    row = np.full(m ** 3, -1, np.int64)
    row[flat] = np.arange(len(c))  # a repeated coordinate keeps its last row
    _, near = ndimage.distance_transform_edt(~have.reshape(m, m, m), return_indices=True)
    nearest = ((near[0] * m + near[1]) * m + near[2]).reshape(-1)
    return row[nearest[source[source >= 0]]]
